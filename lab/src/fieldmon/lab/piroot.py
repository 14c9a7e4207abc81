"""A Raspberry Pi OS-like root file system on this machine, for installing the agent's bundle.

The root starts as a fresh image would before the agent: an /etc with root and the `video`
group only, empty /opt and /var/lib, and the host's /usr (Debian 12: python3.11, useradd,
setpriv, systemd's tools), read-only, with `ensurepip` hidden so the install cannot lean on
python3-venv. `command()` runs a command on the host with that /usr, /dev, /proc and /sys bound
into the root, in a mount namespace of its own (so nothing stays mounted and the host's /usr is
never writable through the root), and with no network, or only a test's network namespace:

    pi = PiRoot(tmp_path / "pi").create()
    subprocess.run(pi.command(["bash", "install.sh", "--root", str(pi.path), ...]))
    agent = start(pi.command(pi.service_command("fieldmon-agent.service"), netns=ns.name), log)

`service_command()` is the unit's ExecStart as systemd would run it (there is no systemd as
PID 1 here): chrooted, as the unit's User= and Group= with their supplementary groups, with its
AmbientCapabilities=, CapabilityBoundingSet=, NoNewPrivileges= and Environment=, in a clean
environment, with its RuntimeDirectory= made and LoadCredential= files copied where systemd
puts them.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from fieldmon.lab.unitfile import UnitError, read_unit

UNIT_DIR = "/etc/systemd/system"
# Bind the host's /usr (read-only), a private /usr/local, /dev, /proc and /sys into the root;
# then run the command. Arguments: ROOT USR_LOCAL EMPTY_DIR COMMAND...
_ENTER = r"""
set -e
root=$1 usr_local=$2 empty=$3
shift 3
mount --rbind /usr "$root/usr"
mount -o remount,bind,ro "$root/usr"
mount --bind "$usr_local" "$root/usr/local"
for dir in "$root"/usr/lib/python3*/ensurepip; do
  if [ -d "$dir" ]; then mount --bind "$empty" "$dir"; fi
done
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
exec "$@"
"""
_BASE_ETC = {
    "passwd": ("root:x:0:0:root:/root:/bin/bash\n", 0o644),
    "group": ("root:x:0:\nvideo:x:44:\n", 0o644),
    "shadow": ("root:*:20000:0:99999:7:::\n", 0o640),
    "gshadow": ("root:*::\nvideo:!::\n", 0o640),
}


class PiRoot:
    """A fresh root under `directory/root` (with `directory/usr-local` as its /usr/local)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "root"
        self.usr_local = self.directory / "usr-local"
        self._empty = self.directory / "empty"

    def create(self) -> Self:
        """Lay out the root: folders, usrmerge links, a minimal /etc."""
        for inner in ("etc", "usr", "dev", "proc", "sys", "run", "opt", "root", "var/lib"):
            (self.path / inner).mkdir(parents=True, exist_ok=True)
        for inner in ("tmp", "var/tmp"):
            (self.path / inner).mkdir(parents=True, exist_ok=True)
            (self.path / inner).chmod(0o1777)
        for link in ("bin", "sbin", "lib", "lib64"):
            if not (self.path / link).is_symlink():
                (self.path / link).symlink_to(f"usr/{link}")
        for name, (text, mode) in _BASE_ETC.items():
            (self.path / "etc" / name).write_text(text, encoding="utf-8")
            (self.path / "etc" / name).chmod(mode)
        if Path("/etc/login.defs").is_file():
            shutil.copyfile("/etc/login.defs", self.path / "etc" / "login.defs")
        (self.usr_local / "bin").mkdir(parents=True, exist_ok=True)
        self._empty.mkdir(exist_ok=True)
        return self

    def host_path(self, inner: str | os.PathLike[str]) -> Path:
        """Where `/inner` of the root is on the host."""
        text = os.fspath(inner)
        if text.startswith("/usr/local/"):
            return self.usr_local / text.removeprefix("/usr/local/")
        return self.path / text.lstrip("/")

    def command(
        self, argv: Sequence[str | os.PathLike[str]], *, netns: str | None = None
    ) -> list[str]:
        """`argv` with the root's file systems bound in: in namespace `netns` (`ip netns exec`),
        or with no network at all (`unshare --net`: not even loopback is up).

        The command runs on the host; it reaches the root through `chroot` (as install.sh
        --root does) or host paths under `self.path`. Every program in the chain execs the
        next, so the PID a caller starts is the command's own.
        """
        enter = [
            "sh",
            "-c",
            _ENTER,
            "piroot",
            str(self.path),
            str(self.usr_local),
            str(self._empty),
        ]
        private = ["unshare", "--mount", "--propagation", "private"]
        network = ["ip", "netns", "exec", netns] if netns else ["unshare", "--net"]
        return [*network, *private, *enter, *(os.fspath(part) for part in argv)]

    def chroot(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """`argv` run inside the root (wrap it in `command()`)."""
        return ["chroot", str(self.path), *(os.fspath(part) for part in argv)]

    def user(self, name: str) -> tuple[int, int] | None:
        """(uid, gid) of `name` in the root's /etc/passwd, or None."""
        for line in self.host_path("/etc/passwd").read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2]), int(fields[3])
        return None

    def group_members(self, name: str) -> list[str] | None:
        """The members of group `name` in the root's /etc/group, or None without the group."""
        for line in self.host_path("/etc/group").read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return [member for member in fields[3].split(",") if member]
        return None

    def service_command(self, unit_name: str, *, unit_dir: str = UNIT_DIR) -> list[str]:
        """The unit's ExecStart= as systemd runs it, from the unit and drop-ins in the root."""
        unit = read_unit(self.host_path(f"{unit_dir}/{unit_name}"))
        user = unit.value("Service", "User")
        if user is None or self.user(user) is None:
            raise UnitError(f"{unit_name}: User= names no user of this root ({user!r})")
        group = unit.value("Service", "Group") or user
        options = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"]
        ambient = ",".join(f"+{cap}" for cap in unit.capabilities())
        if ambient:
            options += [f"--inh-caps=-all,{ambient}", f"--ambient-caps=-all,{ambient}"]
        bounding = ",".join(f"+{cap}" for cap in unit.capabilities("CapabilityBoundingSet"))
        if bounding:
            options.append(f"--bounding-set=-all,{bounding}")
        if unit.flag("Service", "NoNewPrivileges"):
            options.append("--no-new-privs")
        options.append("--reset-env")
        environment = [
            word for value in unit.values("Service", "Environment") for word in shlex.split(value)
        ]
        credentials = self._load_credentials(
            unit_name, unit.values("Service", "LoadCredential"), user
        )
        if credentials:
            environment.append(f"CREDENTIALS_DIRECTORY={credentials}")
        state = unit.state_directory()
        if state:
            environment.append(f"STATE_DIRECTORY={state}")
        runtime = self._runtime_directories(unit.values("Service", "RuntimeDirectory"), user, group)
        if runtime:
            environment.append(f"RUNTIME_DIRECTORY={':'.join(runtime)}")
        return self.chroot([*options, "env", *environment, *unit.exec_start()])

    def _runtime_directories(self, entries: list[str], user: str, group: str) -> list[str]:
        """Make RuntimeDirectory= folders under /run, owned by the unit's user, as systemd does."""
        made = []
        owner = self.user(user)
        assert owner is not None
        gid = self._group_id(group)
        for name in " ".join(entries).split():
            inner = f"/run/{name}"
            folder = self.host_path(inner)
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, owner[0], owner[1] if gid is None else gid)
            folder.chmod(0o755)
            made.append(inner)
        return made

    def _group_id(self, name: str) -> int | None:
        for line in self.host_path("/etc/group").read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
        return None

    def _load_credentials(self, unit_name: str, entries: list[str], user: str) -> str | None:
        """Copy LoadCredential= files to /run/credentials/UNIT/, readable by `user` alone."""
        if not entries:
            return None
        inner = f"/run/credentials/{unit_name}"
        folder = self.host_path(inner)
        folder.mkdir(parents=True, exist_ok=True)
        owner = self.user(user)
        assert owner is not None
        for entry in entries:
            name, _, source = entry.partition(":")
            target = folder / name
            shutil.copyfile(self.host_path(source), target)
            os.chown(target, *owner)
            target.chmod(0o400)
        os.chown(folder, *owner)
        folder.chmod(0o500)
        return inner
