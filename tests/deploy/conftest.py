"""The agent's install bundle, built once per session for this machine's platform."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from fieldmon.lab.bundle import Bundle, build_bundle, host_platform


@pytest.fixture(scope="session")
def host_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The bundle for this machine's platform alone, built once (downloads are cached in
    build/bundle-cache/ across sessions)."""
    lines: list[str] = []
    bundle = build_bundle(
        out_dir=tmp_path_factory.mktemp("bundle"),
        platforms=[host_platform()],
        require_all=True,
        log=lines.append,
    )
    print("\n".join(lines))
    return bundle


@pytest.fixture(scope="session")
def unpacked_bundle(host_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host bundle unpacked once (tests that change it work on a copy)."""
    into = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(host_bundle.path) as tar:
        tar.extractall(into, filter="tar")
    (folder,) = into.iterdir()
    return folder
