"""The offline install bundle holds exactly what uv.lock pins for the agent, per platform.

The wheel each platform gets is the one pip on that platform would pick; a platform a package
has no wheel for is left out with the reason (armv7l today); an sdist-only package is built into
a wheel once; every file's hash is uv.lock's, or recorded where we built it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from fieldmon.lab.bundle import (
    AGENT_PARTS,
    PLATFORMS,
    Artifact,
    Bundle,
    Requirement,
    agent_requirements,
    best_wheel,
    build_bundle,
    find_uv,
    host_platform,
    plan_platforms,
    wheel_from_sdist,
)
from fieldmon.lab.unitfile import read_unit

REPO = Path(__file__).resolve().parents[2]
BUILD_STEPS_S = 120  # a whole multi-platform build, cold cache included


def _artifact(filename: str) -> Artifact:
    return Artifact(
        filename, f"https://files.example/{filename}", hashlib.sha256(filename.encode()).hexdigest()
    )


def _lock_hashes() -> dict[tuple[str, str], set[str]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    hashes: dict[tuple[str, str], set[str]] = {}
    for entry in lock["package"]:
        files = [*entry.get("wheels", []), *([entry["sdist"]] if "sdist" in entry else [])]
        key = (str(canonicalize_name(entry["name"])), str(entry.get("version", "")))
        hashes[key] = {str(f["hash"]).removeprefix("sha256:") for f in files}
    return hashes


CRYPTOGRAPHY = [
    "cryptography-50.0.2-cp311-abi3-manylinux2014_aarch64.manylinux_2_17_aarch64.whl",
    "cryptography-50.0.2-cp311-abi3-manylinux_2_34_aarch64.whl",
    "cryptography-50.0.2-cp311-abi3-musllinux_1_2_aarch64.whl",
    "cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl",
    "cryptography-50.0.2-cp39-abi3-manylinux_2_34_x86_64.whl",
    "cryptography-50.0.2-cp311-abi3-manylinux_2_31_armv7l.whl",
    "cryptography-50.0.2-cp315-abi3.abi3t-manylinux_2_34_x86_64.whl",
    "cryptography-50.0.2-pp311-pypy311_pp73-manylinux_2_34_x86_64.whl",
    "cryptography-50.0.2-cp311-abi3-manylinux_2_39_x86_64.whl",  # too new for bookworm's glibc
]


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("x86_64", "cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl"),
        ("aarch64", "cryptography-50.0.2-cp311-abi3-manylinux_2_34_aarch64.whl"),
        ("armv7l", "cryptography-50.0.2-cp311-abi3-manylinux_2_31_armv7l.whl"),
    ],
)
def test_each_platform_gets_the_wheel_its_pip_would_pick(platform: str, expected: str) -> None:
    wheels = [_artifact(name) for name in CRYPTOGRAPHY]
    chosen = best_wheel(wheels, PLATFORMS[platform])
    assert chosen is not None
    assert chosen.filename == expected


def test_a_pure_python_wheel_serves_every_platform_and_a_foreign_one_none() -> None:
    pure = _artifact("scapy-2.8.0-py3-none-any.whl")
    windows = _artifact("psutil-7.2.2-cp37-abi3-win_arm64.whl")
    for platform in PLATFORMS.values():
        assert best_wheel([pure, windows], platform) == pure
        assert best_wheel([windows], platform) is None


def _no_fetch(artifact: Artifact) -> Path:
    raise AssertionError(f"nothing should be fetched, asked for {artifact.filename}")


def test_a_platform_a_package_has_no_wheel_for_is_left_out_with_the_reason(
    tmp_path: Path,
) -> None:
    fetched: list[str] = []

    def fetch(artifact: Artifact) -> Path:
        fetched.append(artifact.filename)
        path = tmp_path / artifact.filename
        path.write_bytes(b"wheel")
        return path

    def no_build(sdist: Path) -> Path:
        raise AssertionError(f"C extensions are never built here, asked for {sdist}")

    psutil = Requirement(
        "psutil",
        "7.2.2",
        None,
        (
            _artifact("psutil-7.2.2-cp36-abi3-manylinux2014_aarch64.manylinux_2_17_aarch64.whl"),
            _artifact("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.whl"),
        ),
        _artifact("psutil-7.2.2.tar.gz"),
    )
    windows_only = Requirement("pywin32-ctypes", "1.0", "sys_platform == 'win32'", (), None)
    plans = plan_platforms(
        [psutil, windows_only],
        list(PLATFORMS.values()),
        fetch_artifact=fetch,
        build_sdist=no_build,
    )
    assert plans["x86_64"].complete
    assert plans["aarch64"].complete
    assert [w.name for w in plans["x86_64"].wheels] == ["psutil"]
    assert not plans["armv7l"].complete
    (reason,) = plans["armv7l"].missing
    assert reason.startswith("psutil 7.2.2: no wheel for CPython 3.11 on linux armv7l")
    assert "only its sdist" in reason
    assert "psutil-7.2.2.tar.gz" not in fetched


def test_an_sdist_only_package_is_built_once_and_serves_the_platforms_its_wheel_runs_on(
    tmp_path: Path,
) -> None:
    builds: list[Path] = []

    def fetch(artifact: Artifact) -> Path:
        path = tmp_path / artifact.filename
        path.write_bytes(b"sdist")
        return path

    def build(wheel_name: str):  # type: ignore[no-untyped-def]
        def builder(sdist: Path) -> Path:
            builds.append(sdist)
            wheel = tmp_path / wheel_name
            wheel.write_bytes(b"a wheel built here")
            return wheel

        return builder

    pure = Requirement("tinyconf", "1.0", None, (), _artifact("tinyconf-1.0.tar.gz"))
    plans = plan_platforms(
        [pure],
        list(PLATFORMS.values()),
        fetch_artifact=fetch,
        build_sdist=build("tinyconf-1.0-py3-none-any.whl"),
    )
    assert len(builds) == 1
    for plan in plans.values():
        assert plan.complete
        (wheel,) = plan.wheels
        assert wheel.filename == "tinyconf-1.0-py3-none-any.whl"
        assert wheel.source.startswith("built from the locked sdist (sha256 ")
        assert wheel.sha256 == hashlib.sha256(b"a wheel built here").hexdigest()

    builds.clear()
    native = Requirement("tinyext", "1.0", None, (), _artifact("tinyext-1.0.tar.gz"))
    plans = plan_platforms(
        [native],
        list(PLATFORMS.values()),
        fetch_artifact=fetch,
        build_sdist=build("tinyext-1.0-cp311-cp311-linux_x86_64.whl"),
    )
    assert len(builds) == 1
    assert plans["x86_64"].complete
    for name in ("aarch64", "armv7l"):
        (reason,) = plans[name].missing
        assert "tinyext-1.0-cp311-cp311-linux_x86_64.whl) does not run on linux" in reason


def test_a_wheel_is_built_from_an_sdist_with_uv(tmp_path: Path) -> None:
    uv = find_uv(REPO)
    subprocess.run(
        [uv, "build", "--sdist", "--out-dir", tmp_path / "sdist", "--package",
         "fieldmon-firmware-hooks"],
        cwd=REPO, check=True, capture_output=True,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": ""},
    )  # fmt: skip
    (sdist,) = (tmp_path / "sdist").glob("*.tar.gz")
    wheel = wheel_from_sdist(sdist, tmp_path / "wheels", uv, REPO)
    name, _version, _, tags = parse_wheel_filename(wheel.name)
    assert name == "fieldmon-firmware-hooks"
    assert {str(tag) for tag in tags} == {"py3-none-any"}
    assert wheel.parent == tmp_path / "wheels"


def _members(bundle: Bundle) -> dict[str, bytes]:
    with tarfile.open(bundle.path) as tar:
        names = tar.getnames()
        tops = {name.split("/", 1)[0] for name in names}
        assert tops == {f"fieldmon-agent-bundle-{bundle.version}"}, tops
        return {
            member.name.split("/", 1)[1]: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }


def _env(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            (values[key],) = shlex.split(value)
    return values


def _check_platform(
    files: dict[str, bytes], platform: str, lock: dict[tuple[str, str], set[str]]
) -> set[str]:
    """Every requirement line names a wheel in wheels/ with that hash, and the lock's hash."""
    lines = [
        line
        for line in files[f"requirements/{platform}.txt"].decode().splitlines()
        if line and not line.startswith("#")
    ]
    wheels = {
        parse_wheel_filename(name.removeprefix("wheels/"))[0]: name
        for name in files
        if name.startswith("wheels/") and name.endswith(".whl")
    }
    named = set()
    for line in lines:
        match = re.fullmatch(r"(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
        assert match, line
        name, version, digest = match.groups()
        named.add(name)
        candidates = [
            path
            for path, data in files.items()
            if path.startswith("wheels/") and hashlib.sha256(data).hexdigest() == digest
        ]
        assert len(candidates) == 1, f"{line}: no single wheel with that hash"
        assert parse_wheel_filename(candidates[0].removeprefix("wheels/"))[1].public == version
        if name not in AGENT_PARTS:
            assert digest in lock[(name, version)], f"{line}: not uv.lock's hash"
        assert name in wheels
    return named


def test_the_host_bundle_holds_the_locked_wheels_the_unit_and_the_installer(
    host_bundle: Bundle,
) -> None:
    files = _members(host_bundle)
    platform = host_platform()
    lock = _lock_hashes()
    # SHA256SUMS covers every other file, and install.sh checks it before anything.
    sums = dict(reversed(line.split("  ", 1)) for line in files["SHA256SUMS"].decode().splitlines())
    assert set(sums) == set(files) - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    # Exactly what uv.lock pins for the agent, plus its own three wheels.
    expected = {req.name for req in agent_requirements(REPO, find_uv(REPO))} | set(AGENT_PARTS)
    assert _check_platform(files, platform, lock) == expected
    # pip comes from the lock's `bundle` group and is not installed into the venv.
    env = _env(files["bundle.env"].decode())
    pip = files[env["BUNDLE_PIP"]]
    pip_version = parse_wheel_filename(env["BUNDLE_PIP"].removeprefix("wheels/"))[1].public
    assert hashlib.sha256(pip).hexdigest() in lock[("pip", pip_version)]
    # The unit as deploy/systemd has it, and what install.sh reads from it.
    unit_path = REPO / "deploy" / "systemd" / "fieldmon-agent.service"
    assert files["systemd/fieldmon-agent.service"] == unit_path.read_bytes()
    unit = read_unit(unit_path, dropins=[])
    assert env["UNIT_AGENT"] == unit.exec_start()[0]
    assert env["UNIT_CONFIG"] == unit.option("--config")
    assert env["UNIT_CAPS"] == ",".join(unit.capabilities())
    assert env["BUNDLE_PLATFORMS"] == platform
    assert files["install.sh"] == (REPO / "deploy" / "bundle" / "install.sh").read_bytes()
    with tarfile.open(host_bundle.path) as tar:
        installer = tar.getmember(f"fieldmon-agent-bundle-{host_bundle.version}/install.sh")
        assert installer.mode & 0o111
    manifest = json.loads(files["bundle.json"])
    assert set(manifest["platforms"]) == {platform}
    assert manifest["uv_lock_sha256"] == hashlib.sha256((REPO / "uv.lock").read_bytes()).hexdigest()
    assert host_bundle.path.name == f"fieldmon-agent-bundle-{host_bundle.version}-{platform}.tar"


def test_the_full_bundle_ships_64_bit_pcs_and_pis_and_says_why_not_32_bit_pis(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    bundle = build_bundle(out_dir=tmp_path, log=lines.append)
    print("\n".join(lines))
    assert bundle.seconds < BUILD_STEPS_S
    assert bundle.path.name == f"fieldmon-agent-bundle-{bundle.version}.tar"
    files = _members(bundle)
    manifest = json.loads(files["bundle.json"])
    lock = _lock_hashes()
    expected = {req.name for req in agent_requirements(REPO, find_uv(REPO))} | set(AGENT_PARTS)
    assert {"x86_64", "aarch64"} <= set(manifest["platforms"])
    for platform in manifest["platforms"]:
        assert _check_platform(files, platform, lock) == expected
    # Which packages lack a 32-bit ARM wheel, read straight from the lock's file names.
    without_armv7 = sorted(
        req.name
        for req in agent_requirements(REPO, find_uv(REPO))
        if not any(
            re.search(r"(manylinux\S*_armv7l|linux_armv7l|none-any)\.whl$", w.filename)
            and "musllinux" not in w.filename
            and "pp3" not in w.filename
            for w in req.wheels
        )
    )
    if without_armv7:
        assert "armv7l" not in manifest["platforms"]
        reasons = manifest["not_shipped"]["armv7l"]
        assert sorted(reason.split(" ", 1)[0] for reason in reasons) == without_armv7
        env = _env(files["bundle.env"].decode())
        assert env["BUNDLE_NOT_SHIPPED_armv7l"] == "; ".join(reasons)
    else:
        assert "armv7l" in manifest["platforms"]
    # Pure-Python wheels are stored once and serve both platforms.
    wheels = [name for name in files if name.startswith("wheels/")]
    assert len(wheels) == len(set(wheels))
    assert sum(name.endswith("-none-any.whl") for name in wheels) >= 8
