"""The installed version of a fieldmon part, as its distribution's metadata records it."""

from __future__ import annotations

from importlib import metadata


def part_version(distribution: str) -> str:
    """`fieldmon-agent` -> "0.2.0"; "unknown" when run from a tree that is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
