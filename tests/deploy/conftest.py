"""The agent's install bundle, built once per session for this machine's platform, and fresh
Pi-like roots to install it into (fieldmon.lab.piroot)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from fieldmon.lab.bundle import Bundle, build_bundle, host_platform
from fieldmon.lab.piroot import PiRoot

TOOLS = ("unshare", "chroot", "setpriv", "useradd", "systemctl", "sha256sum", "flock")


def _debian_python_311() -> bool:
    python = Path("/usr/bin/python3")
    if not python.exists():
        return False
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return version.stdout.strip() == "True"


def needs_root_and_tools() -> None:
    """Skip unless this is root on a Debian 12-like host (what installing into a root needs)."""
    if os.geteuid() != 0:
        pytest.skip("installing into a root needs root (chroot, mount namespaces, useradd)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    if not _debian_python_311():
        pytest.skip("the root's Python is the host's /usr/bin/python3, which must be 3.11")


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


@pytest.fixture
def pi_root(tmp_path: Path) -> PiRoot:
    """A fresh Pi-like root in the test's temporary folder."""
    needs_root_and_tools()
    return PiRoot(tmp_path / "pi").create()
