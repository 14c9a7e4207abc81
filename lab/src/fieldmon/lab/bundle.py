"""The agent's offline install bundle: one tar file a Raspberry Pi installs the agent from, offline.

`fieldmon-lab bundle` (or `bash deploy/bundle/build.sh`) writes
`dist/bundle/fieldmon-agent-bundle-VERSION.tar` and prints its size. Inside, under one folder:

    install.sh             the installer (deploy/bundle/install.sh)
    bundle.env             what install.sh reads (version, platforms, the unit's paths)
    bundle.json            the manifest: every wheel, its hash and where it came from
    wheels/                the agent's own wheels (built from this tree), every dependency's
                           wheel for each platform at uv.lock's version and hash, and pip
    requirements/P.txt     `name==version --hash=sha256:...` of every wheel platform P installs
    systemd/               deploy/systemd/fieldmon-agent.service as it is at build time
    README.txt, SHA256SUMS

Platforms are CPython 3.11 on Debian 12 / Raspberry Pi OS bookworm (glibc 2.36): `x86_64`,
`aarch64` (64-bit Raspberry Pi OS) and `armv7l` (32-bit). A platform is shipped only when every
dependency has a wheel for it on PyPI (pure-Python wheels serve every platform); otherwise the
build says which packages lack one and leaves the platform out rather than ship a bundle that
would need a compiler and the network on the Pi. A package published only as an sdist is built
into a wheel here, once, from the sdist whose hash uv.lock pins. Wheels come from PyPI through a
cache (`build/bundle-cache/`, keyed by hash) and are checked against uv.lock's sha256 before use.

`build_bundle()` is the same build as a function, for a provisioning command that writes a
site's handover folder.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform as host
import shlex
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from fieldmon.lab.unitfile import UnitError, read_unit

AGENT = "fieldmon-agent"
AGENT_PARTS = ("fieldmon-core", "fieldmon-firmware-hooks", AGENT)
BUNDLE_GROUP = "bundle"  # the root pyproject's dependency group that pins the bundled pip
UNIT_FILE = Path("deploy/systemd/fieldmon-agent.service")
INSTALLER = Path("deploy/bundle/install.sh")
DEFAULT_OUT = Path("dist/bundle")
DEFAULT_CACHE = Path("build/bundle-cache")
PYTHON = (3, 11)
_DOWNLOAD_TIMEOUT_S = 120.0
_COMMAND_TIMEOUT_S = 600.0
MIB = 1024 * 1024


class BundleError(RuntimeError):
    """The bundle cannot be built as asked; the message says what is missing and where."""


@dataclass(frozen=True)
class Platform:
    """A machine the bundle installs on: CPython 3.11, glibc `glibc`, architecture `arch`."""

    name: str  # install.sh's name for it, from the Pi's own python3
    arch: str  # the architecture in wheel platform tags
    description: str
    glibc: tuple[int, int] = (2, 36)  # Debian 12 and Raspberry Pi OS bookworm

    def platform_tags(self) -> list[str]:
        """Platform tags this machine's pip accepts, best first (as packaging orders them)."""
        newest = self.glibc[1]
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(newest, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        for minor, alias in legacy.items():
            tags.insert(tags.index(f"manylinux_2_{minor}_{self.arch}") + 1, f"{alias}_{self.arch}")
        return [*tags, f"linux_{self.arch}"]

    def supported_tags(self) -> list[Tag]:
        """Every wheel tag CPython 3.11 accepts here, in pip's order of preference."""
        platforms = self.platform_tags()
        abis = [f"cp{PYTHON[0]}{PYTHON[1]}"]
        return [
            *cpython_tags(PYTHON, abis=abis, platforms=platforms),
            *compatible_tags(PYTHON, "cp311", platforms=platforms),
        ]

    def environment(self) -> dict[str, str]:
        """Marker values for this platform, to evaluate `; platform_machine == ...` and the like."""
        version = f"{PYTHON[0]}.{PYTHON[1]}"
        return {
            "implementation_name": "cpython",
            "implementation_version": f"{version}.2",
            "os_name": "posix",
            "platform_machine": self.arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": f"{version}.2",
            "python_version": version,
            "sys_platform": "linux",
        }


PLATFORMS = {
    "x86_64": Platform("x86_64", "x86_64", "64-bit PC (Debian 12)"),
    "aarch64": Platform("aarch64", "aarch64", "64-bit Raspberry Pi OS bookworm (Pi 3, 4, 5)"),
    "armv7l": Platform("armv7l", "armv7l", "32-bit Raspberry Pi OS bookworm (armhf)"),
}


def host_platform() -> str:
    """This machine's platform name as install.sh computes it (a 32-bit Python on a 64-bit
    ARM kernel is armv7l, like pip's armv8l)."""
    machine = host.machine()
    if struct.calcsize("P") == 4 and machine in ("aarch64", "armv8l", "armv7l"):
        return "armv7l"
    return machine


@dataclass(frozen=True)
class Artifact:
    """A file uv.lock names for a package version, with its hash."""

    filename: str
    url: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class Requirement:
    """One third-party package the agent installs, at uv.lock's version, with its files."""

    name: str
    version: str
    marker: str | None
    wheels: tuple[Artifact, ...]
    sdist: Artifact | None

    def applies_to(self, target: Platform) -> bool:
        """False when its environment marker (`; sys_platform == 'win32'`) excludes `target`."""
        return self.marker is None or Marker(self.marker).evaluate(target.environment())


@dataclass
class Shipped:
    """A wheel in the bundle: where it came from and its hash (checked against uv.lock)."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int
    source: str  # "uv.lock", "built from the locked sdist", "workspace"
    path: Path = field(repr=False, compare=False)

    def manifest(self) -> dict[str, object]:
        """The manifest entry: everything but the local path."""
        entry = asdict(self)
        del entry["path"]
        return entry


@functools.cache
def _tag_order(target: Platform) -> dict[Tag, int]:
    return {tag: index for index, tag in enumerate(target.supported_tags())}


def wheel_rank(filename: str, target: Platform) -> int | None:
    """How much pip on `target` prefers this wheel (0 = most), or None if it cannot install it."""
    order = _tag_order(target)
    ranks = [order[tag] for tag in parse_wheel_filename(filename)[3] if tag in order]
    return min(ranks) if ranks else None


def best_wheel(wheels: Iterable[Artifact], target: Platform) -> Artifact | None:
    """The wheel pip on `target` would pick among `wheels`, or None."""
    ranked = [
        (rank, wheel)
        for wheel in wheels
        if (rank := wheel_rank(wheel.filename, target)) is not None
    ]
    return min(ranked, key=lambda pair: pair[0])[1] if ranked else None


def missing_reason(requirement: Requirement, target: Platform) -> str:
    """Why `requirement` has no wheel for `target`, in words for the README and the build log."""
    what = f"{requirement.name} {requirement.version}"
    place = f"CPython 3.11 on linux {target.arch} (glibc)"
    if requirement.sdist is not None:
        return (
            f"{what}: no wheel for {place} on PyPI, only its sdist, which the Pi would have to "
            "compile (a C compiler, headers and the network on the day)"
        )
    return f"{what}: no wheel for {place} on PyPI and no sdist"


# -- what uv.lock says ---------------------------------------------------------------------------


def find_repo(start: Path | None = None) -> Path:
    """The workspace root: the first folder up from `start` (or this file) with uv.lock and the
    installer."""
    here = (start or Path(__file__)).resolve()
    for folder in (here, *here.parents):
        if (folder / "uv.lock").is_file() and (folder / INSTALLER).is_file():
            return folder
    raise BundleError(f"no fieldmon workspace (uv.lock and {INSTALLER}) above {here}")


def find_uv(repo: Path) -> str:
    """The uv that scripts/setup.sh installed, else one on PATH."""
    pinned = repo / ".tools" / "uv" / "bin" / "uv"
    found = str(pinned) if pinned.is_file() else shutil.which("uv")
    if not found:
        raise BundleError("uv is not installed; run bash scripts/setup.sh")
    return found


def _run(command: Sequence[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    args = [str(part) for part in command]
    environment = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": "", **(env or {})}
    try:
        completed = subprocess.run(
            args,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
            env=environment,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"{' '.join(args)}: {exc}") from exc
    if completed.returncode != 0:
        raise BundleError(f"{' '.join(args)} failed:\n{completed.stdout}{completed.stderr}")
    return completed.stdout


def _artifact(entry: dict[str, object]) -> Artifact:
    url = str(entry["url"])
    digest = str(entry["hash"])
    if not digest.startswith("sha256:"):
        raise BundleError(f"uv.lock: {url} has no sha256 hash")
    size = entry.get("size")
    return Artifact(
        url.rsplit("/", 1)[1], url, digest.removeprefix("sha256:"), int(str(size)) if size else None
    )


def _exported(uv: str, repo: Path, *selection: str) -> list[tuple[str, str, str | None]]:
    """(name, version, marker) of each line `uv export --frozen SELECTION` prints."""
    text = _run(
        [uv, "export", "--frozen", "--no-hashes", "--no-header", "--no-annotate", *selection],
        repo,
    )
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        spec, _, marker = line.partition(";")
        name, sep, version = spec.strip().partition("==")
        if not sep:
            raise BundleError(f"uv export gave {line!r}, not name==version")
        found.append((str(canonicalize_name(name)), version.strip(), marker.strip() or None))
    return found


def locked_requirements(repo: Path, uv: str, *selection: str) -> list[Requirement]:
    """The packages `uv export SELECTION` names, with the files uv.lock pins for them."""
    lock = tomllib.loads((repo / "uv.lock").read_text(encoding="utf-8"))
    packages = {
        (str(canonicalize_name(entry["name"])), str(entry.get("version", ""))): entry
        for entry in lock.get("package", [])
    }
    requirements = []
    for name, version, marker in _exported(uv, repo, *selection):
        entry = packages.get((name, version))
        if entry is None:
            raise BundleError(f"uv export names {name}=={version}, which uv.lock does not hold")
        sdist = entry.get("sdist")
        requirements.append(
            Requirement(
                name,
                version,
                marker,
                tuple(_artifact(wheel) for wheel in entry.get("wheels", [])),
                _artifact(sdist) if sdist else None,
            )
        )
    return requirements


def agent_requirements(repo: Path, uv: str) -> list[Requirement]:
    """What the agent installs besides its own three wheels, exactly as uv.lock pins it."""
    return locked_requirements(repo, uv, "--package", AGENT, "--no-dev", "--no-emit-workspace")


def bundled_pip(repo: Path, uv: str) -> Requirement:
    """The pip the bundle ships, pinned in the root pyproject's `bundle` dependency group."""
    found = [
        r for r in locked_requirements(repo, uv, "--only-group", BUNDLE_GROUP) if r.name == "pip"
    ]
    if len(found) != 1:
        raise BundleError(f"uv.lock pins no pip in the `{BUNDLE_GROUP}` dependency group")
    return found[0]


# -- fetching and building wheels ----------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """The file's sha256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(artifact: Artifact, cache: Path) -> Path:
    """`artifact` from the cache, else downloaded into it; its sha256 must match uv.lock's."""
    folder = cache / artifact.sha256
    path = folder / artifact.filename
    if path.is_file() and sha256_of(path) == artifact.sha256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{artifact.filename}.partial"
    try:
        with (
            urllib.request.urlopen(artifact.url, timeout=_DOWNLOAD_TIMEOUT_S) as reply,
            partial.open("wb") as out,
        ):
            shutil.copyfileobj(reply, out)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise BundleError(f"downloading {artifact.url}: {exc}") from exc
    got = sha256_of(partial)
    if got != artifact.sha256:
        partial.unlink()
        raise BundleError(
            f"{artifact.url}: sha256 {got} is not uv.lock's {artifact.sha256}; not used"
        )
    partial.replace(path)
    return path


def wheel_from_sdist(sdist: Path, out: Path, uv: str, repo: Path) -> Path:
    """Build a wheel from a (hash-checked) sdist, once: the Pi never builds anything."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fieldmon-sdist-") as scratch:
        _run([uv, "build", "--wheel", "--out-dir", scratch, sdist], repo)
        built = sorted(Path(scratch).glob("*.whl"))
        if len(built) != 1:
            raise BundleError(f"building {sdist.name} gave {len(built)} wheels")
        target = out / built[0].name
        shutil.copyfile(built[0], target)
    return target


def build_workspace_wheels(repo: Path, uv: str, out: Path, source_date_epoch: int) -> list[Path]:
    """The agent's own wheels (core, firmware hooks, agent), built from this tree."""
    out.mkdir(parents=True, exist_ok=True)
    # Hatchling honours SOURCE_DATE_EPOCH: the same tree gives byte-identical wheels.
    env = {"SOURCE_DATE_EPOCH": str(source_date_epoch)}
    for part in AGENT_PARTS:
        _run([uv, "build", "--wheel", "--out-dir", out, "--package", part], repo, env)
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != len(AGENT_PARTS):
        raise BundleError(f"uv build gave {[w.name for w in wheels]}, not the {AGENT_PARTS} wheels")
    return wheels


def _shipped_from_wheel(path: Path, source: str) -> Shipped:
    name, version, _, _ = parse_wheel_filename(path.name)
    return Shipped(
        str(name), str(version), path.name, sha256_of(path), path.stat().st_size, source, path
    )


# -- the plan: which wheel each platform installs ------------------------------------------------


@dataclass
class PlatformPlan:
    """One platform's wheels, or why it cannot be shipped."""

    platform: Platform
    wheels: list[Shipped] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every requirement has a wheel here."""
        return not self.missing

    def glibc(self) -> str:
        """The newest glibc any of its wheels needs (install.sh checks the Pi has it)."""
        newest = (2, 17)
        for wheel in self.wheels:
            for tag in parse_wheel_filename(wheel.filename)[3]:
                parts = tag.platform.split("_")
                if tag.platform.startswith("manylinux_") and len(parts) >= 3:
                    newest = max(newest, (int(parts[1]), int(parts[2])))
        return f"{newest[0]}.{newest[1]}"

    def install_bytes(self) -> int:
        """What the platform's wheels weigh together."""
        return sum(wheel.size for wheel in self.wheels)


def plan_platforms(
    requirements: Sequence[Requirement],
    platforms: Sequence[Platform],
    *,
    fetch_artifact: Callable[[Artifact], Path],
    build_sdist: Callable[[Path], Path],
) -> dict[str, PlatformPlan]:
    """Choose each platform's wheel for every requirement, fetching (and building) what it needs.

    A requirement with wheels but none for a platform makes that platform incomplete: its wheels
    are C extensions, which are not cross-compiled here. A requirement with no wheel at all (an
    sdist-only package) is built once on this machine; a pure-Python result serves every
    platform, anything else only this machine's.
    """
    plans = {target.name: PlatformPlan(target) for target in platforms}
    built: dict[str, Shipped] = {}
    for requirement in requirements:
        for target in platforms:
            plan = plans[target.name]
            if not requirement.applies_to(target):
                continue
            chosen = best_wheel(requirement.wheels, target)
            if chosen is not None:
                path = fetch_artifact(chosen)
                plan.wheels.append(
                    Shipped(
                        requirement.name,
                        requirement.version,
                        chosen.filename,
                        chosen.sha256,
                        path.stat().st_size,
                        "uv.lock",
                        path,
                    )
                )
                continue
            if requirement.wheels or requirement.sdist is None:
                plan.missing.append(missing_reason(requirement, target))
                continue
            if requirement.name not in built:
                sdist = fetch_artifact(requirement.sdist)
                built[requirement.name] = _shipped_from_wheel(
                    build_sdist(sdist),
                    f"built from the locked sdist (sha256 {requirement.sdist.sha256})",
                )
            wheel = built[requirement.name]
            if wheel_rank(wheel.filename, target) is None:
                plan.missing.append(
                    f"{requirement.name} {requirement.version}: sdist only on PyPI, and its wheel "
                    f"built here ({wheel.filename}) does not run on linux {target.arch}"
                )
            else:
                plan.wheels.append(wheel)
    return plans


# -- the bundle ----------------------------------------------------------------------------------


@dataclass
class Bundle:
    """A built bundle: the file, its hash and size, and what it holds."""

    path: Path
    sha256: str
    size: int
    version: str
    platforms: dict[str, PlatformPlan]
    not_shipped: dict[str, list[str]]
    pip: Shipped
    seconds: float

    def summary(self) -> dict[str, object]:
        """What `fieldmon-lab bundle --json` prints, for a provisioning command."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "version": self.version,
            "platforms": {
                name: {"wheels": len(plan.wheels), "install_bytes": plan.install_bytes()}
                for name, plan in self.platforms.items()
            },
            "not_shipped": self.not_shipped,
            "seconds": round(self.seconds, 1),
        }


def _source_date_epoch(repo: Path) -> int:
    """The commit time of HEAD (reproducible builds), else uv.lock's modification time."""
    try:
        return int(_run(["git", "log", "-1", "--format=%ct"], repo).strip())
    except (BundleError, ValueError):
        return int((repo / "uv.lock").stat().st_mtime)


def _describe_tree(repo: Path) -> str:
    try:
        return _run(["git", "describe", "--always", "--dirty"], repo).strip()
    except BundleError:
        return "unknown"


def _project_version(repo: Path) -> str:
    project = tomllib.loads((repo / "agent" / "pyproject.toml").read_text(encoding="utf-8"))
    return str(project["project"]["version"])


def _unit_settings(unit_path: Path) -> dict[str, str]:
    """What install.sh needs from the unit: its program, config, capabilities, state folder."""
    try:
        unit = read_unit(unit_path, dropins=[])
        agent, config = unit.exec_start()[0], unit.option("--config")
    except UnitError as exc:
        raise BundleError(f"{unit_path}: {exc}") from exc
    if Path(agent).name != AGENT or Path(agent).parent.name != "bin":
        raise BundleError(f"{unit_path}: ExecStart= runs {agent}, not a venv's bin/{AGENT}")
    return {
        "UNIT_NAME": unit.name,
        "UNIT_AGENT": agent,
        "UNIT_CONFIG": config,
        "UNIT_CAPS": ",".join(unit.capabilities()),
        "UNIT_BOUNDING_CAPS": ",".join(unit.capabilities("CapabilityBoundingSet")),
        "UNIT_NO_NEW_PRIVILEGES": "yes" if unit.flag("Service", "NoNewPrivileges") else "no",
        "UNIT_DYNAMIC_USER": "yes" if unit.flag("Service", "DynamicUser") else "no",
        "UNIT_STATE_DIR": unit.state_directory() or "/var/lib/fieldmon",
    }


def _requirements_text(plan: PlatformPlan, version: str) -> str:
    lines = [
        f"# fieldmon-agent {version} for CPython 3.11 on linux {plan.platform.arch}: every wheel",
        "# install.sh installs, at uv.lock's version, with the sha256 pip must find",
        "# (--require-hashes).",
    ]
    for wheel in sorted(plan.wheels, key=lambda w: w.name):
        lines.append(f"{wheel.name}=={wheel.version} --hash=sha256:{wheel.sha256}")
    return "\n".join(lines) + "\n"


def _readme_text(
    version: str, plans: dict[str, PlatformPlan], not_shipped: dict[str, list[str]]
) -> str:
    lines = [
        f"fieldmon agent {version}: offline install bundle",
        "",
        "Install (as root, no network needed):",
        "    sudo ./install.sh --handover /path/to/handover-folder",
        "Then the handover report:",
        "    sudo fieldmon-agent check --config /etc/fieldmon/site.yaml --report handover.md",
        "Options: ./install.sh --help. Step by step for a field engineer: the fieldmon",
        'README, "Deploying a site".',
        "",
        "Platforms (CPython 3.11, Debian 12 / Raspberry Pi OS bookworm):",
    ]
    for plan in plans.values():
        lines.append(f"  {plan.platform.name:8} {plan.platform.description}")
    for name, reasons in not_shipped.items():
        lines.append(f"  not {name} ({PLATFORMS[name].description}):")
        lines.extend(f"    - {reason}" for reason in reasons)
    return "\n".join(lines) + "\n"


def _write_tar(tree: Path, out: Path, mtime: int) -> None:
    """A reproducible tar of `tree` (sorted, owner root, one mtime), uncompressed: the wheels
    inside are zip files already, and gzip would save about 2 %."""
    partial = out.with_name(f".{out.name}.partial")
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in [tree, *sorted(tree.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(tree.parent)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            executable = path.is_dir() or os.access(path, os.X_OK)
            info.mode = 0o755 if executable else 0o644
            if path.is_file():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    partial.replace(out)


def _checksums(tree: Path) -> str:
    lines = [
        f"{sha256_of(path)}  {path.relative_to(tree)}"
        for path in sorted(tree.rglob("*"))
        if path.is_file()
    ]
    return "\n".join(lines) + "\n"


def _env_file(values: dict[str, str]) -> str:
    lines = ["# Written by `fieldmon-lab bundle`; install.sh reads it (sh syntax)."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _pip(repo: Path, uv: str, cache: Path, target: Platform) -> Shipped:
    requirement = bundled_pip(repo, uv)
    wheel = best_wheel(requirement.wheels, target)
    if wheel is None:
        raise BundleError(f"uv.lock has no pure-Python wheel of pip {requirement.version}")
    path = fetch(wheel, cache)
    return Shipped(
        "pip", requirement.version, wheel.filename, wheel.sha256, path.stat().st_size, "uv.lock",
        path,
    )  # fmt: skip


@dataclass
class _Contents:
    """What goes into the bundle's folder."""

    repo: Path
    version: str
    epoch: int
    shipped: dict[str, PlatformPlan]
    not_shipped: dict[str, list[str]]
    pip: Shipped
    unit_env: dict[str, str]

    def env(self) -> dict[str, str]:
        """bundle.env: what install.sh reads."""
        return {
            "BUNDLE_VERSION": self.version,
            "BUNDLE_PYTHON": f"{PYTHON[0]}.{PYTHON[1]}",
            "BUNDLE_PLATFORMS": " ".join(self.shipped),
            "BUNDLE_PIP": f"wheels/{self.pip.filename}",
            **{f"BUNDLE_GLIBC_{name}": plan.glibc() for name, plan in self.shipped.items()},
            **{
                f"BUNDLE_NOT_SHIPPED_{name}": "; ".join(reasons)
                for name, reasons in self.not_shipped.items()
            },
            **self.unit_env,
        }

    def manifest(self) -> dict[str, object]:
        """bundle.json: every wheel with its hash and where it came from."""
        return {
            "name": AGENT,
            "version": self.version,
            "tree": _describe_tree(self.repo),
            "source_date_epoch": self.epoch,
            "uv_lock_sha256": sha256_of(self.repo / "uv.lock"),
            "python": f"CPython {PYTHON[0]}.{PYTHON[1]}",
            "platforms": {
                name: {
                    "description": plan.platform.description,
                    "glibc": plan.glibc(),
                    "requirements": f"requirements/{name}.txt",
                    "install_bytes": plan.install_bytes(),
                    "wheels": [wheel.manifest() for wheel in plan.wheels],
                }
                for name, plan in self.shipped.items()
            },
            "not_shipped": self.not_shipped,
            "pip": self.pip.manifest(),
            "unit": self.unit_env,
        }

    def write(self, top: Path) -> None:
        """Lay the bundle's folder out at `top`, SHA256SUMS last."""
        for folder in ("wheels", "requirements", "systemd"):
            (top / folder).mkdir(parents=True)
        for plan in self.shipped.values():
            for wheel in plan.wheels:
                shutil.copyfile(wheel.path, top / "wheels" / wheel.filename)
            text = _requirements_text(plan, self.version)
            (top / "requirements" / f"{plan.platform.name}.txt").write_text(text, encoding="utf-8")
        shutil.copyfile(self.pip.path, top / "wheels" / self.pip.filename)
        shutil.copyfile(self.repo / UNIT_FILE, top / "systemd" / UNIT_FILE.name)
        shutil.copyfile(self.repo / INSTALLER, top / "install.sh")
        (top / "install.sh").chmod(0o755)
        (top / "bundle.env").write_text(_env_file(self.env()), encoding="utf-8")
        manifest = json.dumps(self.manifest(), indent=1) + "\n"
        (top / "bundle.json").write_text(manifest, encoding="utf-8")
        readme = _readme_text(self.version, self.shipped, self.not_shipped)
        (top / "README.txt").write_text(readme, encoding="utf-8")
        (top / "SHA256SUMS").write_text(_checksums(top), encoding="utf-8")


def build_bundle(
    *,
    repo: Path | None = None,
    out_dir: Path | None = None,
    platforms: Sequence[str] | None = None,
    require_all: bool = False,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> Bundle:
    """Build the offline install bundle and return what it holds.

    `platforms` defaults to every known one; a platform that lacks a wheel is left out (and said
    so in `not_shipped`), or fails the build when `require_all`. The file lands in `out_dir`
    (default `dist/bundle/`), named `fieldmon-agent-bundle-VERSION.tar`, or
    `fieldmon-agent-bundle-VERSION-PLATFORM....tar` when built for fewer platforms.
    """
    started = time.monotonic()
    repo = repo or find_repo()
    uv = find_uv(repo)
    names = list(platforms or PLATFORMS)
    unknown = [name for name in names if name not in PLATFORMS]
    if unknown:
        raise BundleError(f"unknown platform {unknown}; known: {', '.join(PLATFORMS)}")
    targets = [PLATFORMS[name] for name in names]
    cache = (cache_dir or repo / DEFAULT_CACHE).resolve()
    out = (out_dir or repo / DEFAULT_OUT).resolve()
    version = _project_version(repo)
    epoch = _source_date_epoch(repo)
    unit_env = _unit_settings(repo / UNIT_FILE)

    log(f"bundle: fieldmon-agent {version} for {', '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="fieldmon-bundle-") as scratch_name:
        scratch = Path(scratch_name)
        own = [
            _shipped_from_wheel(path, "workspace")
            for path in build_workspace_wheels(repo, uv, scratch / "own", epoch)
        ]
        plans = plan_platforms(
            agent_requirements(repo, uv),
            targets,
            fetch_artifact=lambda artifact: fetch(artifact, cache),
            build_sdist=lambda sdist: wheel_from_sdist(sdist, scratch / "sdist-built", uv, repo),
        )
        not_shipped = {name: plan.missing for name, plan in plans.items() if not plan.complete}
        for name, reasons in not_shipped.items():
            log(f"bundle: {name} is not shipped:")
            for reason in reasons:
                log(f"  - {reason}")
        if not_shipped and require_all:
            raise BundleError(f"asked for {', '.join(not_shipped)}, which cannot be shipped")
        shipped = {name: plan for name, plan in plans.items() if plan.complete}
        if not shipped:
            raise BundleError("no platform can be shipped")
        for plan in shipped.values():
            plan.wheels.extend(own)
        pip = _pip(repo, uv, cache, targets[0])
        base = f"fieldmon-agent-bundle-{version}"
        contents = _Contents(repo, version, epoch, shipped, not_shipped, pip, unit_env)
        contents.write(scratch / "tree" / base)
        out.mkdir(parents=True, exist_ok=True)
        suffix = "" if set(names) == set(PLATFORMS) else "-" + "-".join(shipped)
        path = out / f"{base}{suffix}.tar"
        _write_tar(scratch / "tree" / base, path, epoch)
    seconds = time.monotonic() - started
    bundle = Bundle(
        path, sha256_of(path), path.stat().st_size, version, shipped, not_shipped, pip, seconds
    )
    for name, plan in shipped.items():
        log(
            f"bundle: {name}: {len(plan.wheels)} wheels, {plan.install_bytes() / MIB:.1f} MiB "
            f"(glibc >= {plan.glibc()})"
        )
    log(
        f"bundle: {path} ({bundle.size / MIB:.1f} MiB, sha256 {bundle.sha256[:16]}...) "
        f"in {seconds:.1f} s"
    )
    return bundle


def main(argv: Sequence[str] | None = None) -> int:
    """`fieldmon-lab bundle`: build the bundle, print where it is and its size."""
    parser = argparse.ArgumentParser(
        prog="fieldmon-lab bundle", description="Build the agent's offline install bundle."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bundle` command's options (shared with `fieldmon-lab bundle`)."""
    parser.add_argument(
        "--platform", action="append", dest="platforms", metavar="NAME",
        help=f"only this platform (repeatable): {', '.join(PLATFORMS)}, or `host`; "
        "a platform asked for by name must be complete (default: every one that is)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--cache", type=Path, help=f"download cache (default {DEFAULT_CACHE})")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")


def run(args: argparse.Namespace) -> int:
    """Build the bundle the parsed arguments ask for; 0 when built, 1 when it cannot be."""
    names = [host_platform() if name == "host" else name for name in args.platforms or []]
    try:
        bundle = build_bundle(
            out_dir=args.out,
            platforms=names or None,
            require_all=bool(names),
            cache_dir=args.cache,
            log=(lambda line: print(line, file=sys.stderr)) if args.json else print,
        )
    except BundleError as exc:
        print(f"fieldmon-lab bundle: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(bundle.summary(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
