"""install.sh into a fresh Pi-like root, with no network at all (`unshare --net`).

One root goes through a site's life: a first install whose check fails (nothing reachable), the
same with --force, the same again (nothing changes), an upgrade (new venv swapped in, outbox and
config kept), uninstall (config and outbox kept) and purge. Damaged bundles and bundles for
another platform are refused before anything changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from fieldmon.lab.bundle import host_platform
from fieldmon.lab.piroot import PiRoot
from fieldmon.lab.secretfiles import write_secret

pytestmark = pytest.mark.bundle

UNIT = "fieldmon-agent.service"
DROPIN = f"/etc/systemd/system/{UNIT}.d/50-fieldmon-bundle.conf"
WANTS = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"


def _install(pi: PiRoot, bundle: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    command = ["bash", bundle / "install.sh", "--root", pi.path, *args]
    return subprocess.run(
        pi.command(command), capture_output=True, text=True, timeout=300, check=False
    )


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def _handover(folder: Path) -> Path:
    (folder / "secrets").mkdir(parents=True)
    (folder / "credentials").mkdir()
    (folder / "hooks").mkdir()
    (folder / "site.yaml").write_text(
        """\
site: lifecycle-site
name: "Install test site"
parent_hospital: test-hospital
agent:
  id: lifecycle-pi1
  broker: {host: 127.0.0.1, port: 1883, username: lifecycle-pi1,
           password_file: secrets/lifecycle-pi1.mqtt.pass, connect_timeout: 2s}
  outbox: {path: /var/lib/fieldmon/outbox.db}
links:
  - {name: site-gateway, address: 127.0.0.1, role: gateway, count: 3}
host: {disk_path: /var/lib/fieldmon}
""",
        encoding="utf-8",
    )
    write_secret(folder / "secrets" / "lifecycle-pi1.mqtt.pass", "pi-secret-lifecycle")
    write_secret(folder / "credentials" / "uplink.key", "cred-secret-uplink")
    hook = folder / "hooks" / "link-down"
    hook.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    hook.chmod(0o700)
    return folder


def _stat(pi: PiRoot, inner: str) -> tuple[str, int, int]:
    status = os.lstat(pi.host_path(inner))
    return stat.filemode(status.st_mode), status.st_uid, status.st_gid


def _snapshot(pi: PiRoot) -> dict[str, object]:
    """What install.sh controls: accounts, config, unit, links, releases (not their files)."""
    state: dict[str, object] = {}
    for name in ("passwd", "group", "shadow", "gshadow"):
        state[f"/etc/{name}"] = pi.host_path(f"/etc/{name}").read_text(encoding="utf-8")
    for top in ("/etc/fieldmon", "/etc/systemd", "/opt", "/usr/local/bin", "/var/lib/fieldmon"):
        base = pi.host_path(top)
        if not base.exists():
            continue
        for path in sorted([base, *base.rglob("*")]):
            if top == "/usr/local/bin":
                inner = f"/usr/local/{path.relative_to(pi.usr_local)}"
            else:
                inner = f"/{path.relative_to(pi.path)}"
            if "/releases/" in inner and inner.count("/") > 5:
                continue  # the venv's own files
            if inner.startswith("/var/lib/fieldmon/."):
                continue  # caches under the service user's home
            status = os.lstat(path)
            if path.is_symlink():
                what = f"-> {os.readlink(path)}"
            elif path.is_file():
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            state[inner] = (stat.filemode(status.st_mode), status.st_uid, status.st_gid, what)
    return state


def _as_service(pi: PiRoot, *argv: str) -> subprocess.CompletedProcess[str]:
    command = pi.chroot(
        ["setpriv", "--reuid=fieldmon", "--regid=fieldmon", "--init-groups", "--reset-env", *argv]
    )
    return subprocess.run(
        pi.command(command), capture_output=True, text=True, timeout=120, check=False
    )


def _another_bundle(unpacked: Path, into: Path) -> Path:
    """A copy of the bundle with other content (another bundle id), as a rebuild would give."""
    copy = shutil.copytree(unpacked, into / unpacked.name)
    with (copy / "README.txt").open("a", encoding="utf-8") as readme:
        readme.write("rebuilt\n")
    lines = [
        line
        for line in (copy / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
        if not line.endswith("  README.txt")
    ]
    digest = hashlib.sha256((copy / "README.txt").read_bytes()).hexdigest()
    (copy / "SHA256SUMS").write_text("\n".join([*lines, f"{digest}  README.txt"]) + "\n")
    return copy


def test_a_site_from_first_install_to_purge(
    pi_root: PiRoot, unpacked_bundle: Path, tmp_path: Path
) -> None:
    pi = pi_root
    handover = _handover(tmp_path / "handover")

    # 1. Nothing answers (no network): check fails, the agent is installed but not enabled.
    first = _install(pi, unpacked_bundle, "--handover", handover)
    assert first.returncode == 1, _output(first)
    assert "check reported a FAIL (above): the agent was NOT (re)started" in first.stdout
    assert "FAIL    broker" in first.stdout
    assert not pi.host_path(WANTS).is_symlink()
    uid, gid = pi.user("fieldmon") or (None, None)
    assert uid is not None and 100 <= uid < 1000, "a system user"
    passwd = pi.host_path("/etc/passwd").read_text(encoding="utf-8")
    assert "fieldmon:x:" in passwd and ":/var/lib/fieldmon:/usr/sbin/nologin" in passwd
    assert pi.group_members("video") == ["fieldmon"]
    assert _stat(pi, "/etc/fieldmon") == ("drwxr-x---", 0, gid)
    assert _stat(pi, "/etc/fieldmon/site.yaml") == ("-rw-r-----", 0, gid)
    assert _stat(pi, "/etc/fieldmon/secrets") == ("drwxr-x---", 0, gid)
    assert _stat(pi, "/etc/fieldmon/secrets/lifecycle-pi1.mqtt.pass") == ("-rw-------", uid, gid)
    assert _stat(pi, "/etc/fieldmon/credentials") == ("drwx------", 0, 0)
    assert _stat(pi, "/etc/fieldmon/credentials/uplink.key") == ("-rw-------", 0, 0)
    assert _stat(pi, "/etc/fieldmon/hooks/link-down") == ("-rwxr-xr-x", 0, 0)
    assert _stat(pi, "/var/lib/fieldmon") == ("drwxr-x---", uid, gid)
    release = os.readlink(pi.host_path("/opt/fieldmon/agent/current"))
    assert release.startswith("releases/0.2.0-")
    assert os.readlink(pi.host_path("/opt/fieldmon/.venv")) == "agent/current"
    assert pi.host_path("/opt/fieldmon/.venv/bin/fieldmon-agent").is_file()
    assert not pi.host_path("/opt/fieldmon/.venv/bin/pip").exists(), "pip stays in the bundle"

    # 2. --force: enabled offline (systemctl --root), with a loud warning; the venv is reused.
    forced = _install(pi, unpacked_bundle, "--handover", handover, "--force")
    assert forced.returncode == 0, _output(forced)
    assert "--force starts the agent anyway" in forced.stderr
    assert "the venv of this bundle is in place" in forced.stdout
    assert os.readlink(pi.host_path(WANTS)) == f"/etc/systemd/system/{UNIT}"
    assert os.readlink(pi.host_path("/opt/fieldmon/agent/current")) == release
    unit = pi.host_path(f"/etc/systemd/system/{UNIT}").read_bytes()
    assert unit == (unpacked_bundle / "systemd" / UNIT).read_bytes()
    dropin = pi.host_path(DROPIN).read_text(encoding="utf-8")
    for line in ("User=fieldmon", "Group=fieldmon", "DynamicUser=no", "ProtectSystem=strict",
                 "LoadCredential=uplink.key:/etc/fieldmon/credentials/uplink.key"):  # fmt: skip
        assert f"\n{line}\n" in dropin
    assert os.readlink(pi.usr_local / "bin" / "fieldmon-agent") == (
        "../../../opt/fieldmon/agent/current/bin/fieldmon-agent"
    )

    # 3. The same again: the same result, no second user, line or release.
    before = _snapshot(pi)
    again = _install(pi, unpacked_bundle, "--handover", handover, "--force")
    assert again.returncode == 0, _output(again)
    assert _snapshot(pi) == before
    assert pi.host_path("/etc/passwd").read_text(encoding="utf-8").count("\nfieldmon:") == 1

    # 4. An upgrade: a new venv beside the old one, swapped in; outbox and config untouched.
    outbox = pi.host_path("/var/lib/fieldmon/outbox.db")
    outbox.write_bytes(b"envelopes not yet acknowledged")
    os.chown(outbox, uid, gid)
    site_before = pi.host_path("/etc/fieldmon/site.yaml").read_bytes()
    newer = _another_bundle(unpacked_bundle, tmp_path / "newer")
    refused = _install(pi, newer)
    assert refused.returncode == 2, _output(refused)
    assert "run ./install.sh --upgrade" in refused.stderr
    upgraded = _install(pi, newer, "--upgrade", "--no-check")
    assert upgraded.returncode == 0, _output(upgraded)
    assert "--no-check: fieldmon-agent check was NOT run" in upgraded.stderr
    new_release = os.readlink(pi.host_path("/opt/fieldmon/agent/current"))
    assert new_release != release
    releases = sorted(p.name for p in pi.host_path("/opt/fieldmon/agent/releases").iterdir())
    assert sorted([release, new_release]) == [f"releases/{name}" for name in releases]
    assert outbox.read_bytes() == b"envelopes not yet acknowledged"
    assert pi.host_path("/etc/fieldmon/site.yaml").read_bytes() == site_before
    validated = _as_service(pi, "/opt/fieldmon/.venv/bin/fieldmon-agent", "validate",
                            "/etc/fieldmon/site.yaml")  # fmt: skip
    assert validated.returncode == 0, _output(validated)
    assert validated.stdout.startswith("OK  /etc/fieldmon/site.yaml")

    # 5. Uninstall: venv, unit, links and user go; config and outbox stay.
    removed = _install(pi, newer, "--uninstall")
    assert removed.returncode == 0, _output(removed)
    assert pi.user("fieldmon") is None
    assert pi.group_members("fieldmon") is None
    assert pi.group_members("video") == []
    for inner in ("/opt/fieldmon", f"/etc/systemd/system/{UNIT}", DROPIN, WANTS):
        assert not os.path.lexists(pi.host_path(inner)), inner
    assert not os.path.lexists(pi.usr_local / "bin" / "fieldmon-agent")
    assert outbox.read_bytes() == b"envelopes not yet acknowledged"
    assert pi.host_path("/etc/fieldmon/site.yaml").read_bytes() == site_before

    # 6. Purge: the rest goes too.
    purged = _install(pi, newer, "--uninstall", "--purge")
    assert purged.returncode == 0, _output(purged)
    assert not pi.host_path("/etc/fieldmon").exists()
    assert not pi.host_path("/var/lib/fieldmon").exists()


def test_a_damaged_bundle_changes_nothing(
    pi_root: PiRoot, unpacked_bundle: Path, tmp_path: Path
) -> None:
    damaged = shutil.copytree(unpacked_bundle, tmp_path / unpacked_bundle.name)
    wheel = next((damaged / "wheels").glob("fieldmon_agent-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    done = _install(pi_root, damaged, "--handover", _handover(tmp_path / "handover"))
    assert done.returncode == 3, _output(done)
    assert "the bundle is damaged" in done.stderr
    assert pi_root.user("fieldmon") is None
    assert not pi_root.host_path("/opt/fieldmon").exists()


def test_a_bundle_for_another_platform_says_why_it_cannot_install(
    pi_root: PiRoot, unpacked_bundle: Path, tmp_path: Path
) -> None:
    other = shutil.copytree(unpacked_bundle, tmp_path / unpacked_bundle.name)
    env = other / "bundle.env"
    text = env.read_text(encoding="utf-8").replace(
        f"BUNDLE_PLATFORMS={host_platform()}", "BUNDLE_PLATFORMS=riscv64"
    )
    reason = "psutil 7.2.2: no wheel for this machine"
    env.write_text(text + f"BUNDLE_NOT_SHIPPED_{host_platform()}='{reason}'\n", encoding="utf-8")
    sums = [
        line
        for line in (other / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
        if not line.endswith("  bundle.env")
    ]
    digest = hashlib.sha256(env.read_bytes()).hexdigest()
    (other / "SHA256SUMS").write_text("\n".join([*sums, f"{digest}  bundle.env"]) + "\n")
    done = _install(pi_root, other, "--handover", _handover(tmp_path / "handover"))
    assert done.returncode == 3, _output(done)
    assert f"this bundle has no wheels for {host_platform()}" in done.stderr
    assert reason in done.stderr
    assert pi_root.user("fieldmon") is None
