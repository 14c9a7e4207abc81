"""Files that hold secrets or certificates: where they are, who may read them, placeholders.

A config names a secret by path (relative to the config file, or absolute) or as a systemd
credential, `credential:NAME`, which is `$CREDENTIALS_DIRECTORY/NAME` (`LoadCredential=` in the
unit: the file stays root-owned and 0600, the service keeps `DynamicUser=`, and systemd hands a
copy to the unit alone).

A secret file is refused when someone besides its owner can read it (`chmod 600 FILE`), except a
file owned by another user that we read through its group: `root:fieldmon 0640` is how a service
user reads a root-owned secret without systemd credentials. A secret or certificate file that
still holds an example's placeholder (a line starting `CHANGE-ME`) is refused too: the examples in
the repository validate in shape only (`shape_only`), never as a running configuration.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, ValidationInfo

from fieldmon.core.redact import register_secret

PLACEHOLDER_MARK = b"CHANGE-ME"  # an example file's placeholder line starts with this
CREDENTIAL_PREFIX = "credential:"
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"  # set by systemd for a unit with credentials
# How much of a file is searched for the placeholder mark: an example puts it on the first line;
# a CA bundle may be large and need not be read whole at every start.
_PLACEHOLDER_SCAN_BYTES = 64 * 1024


class SecretFileError(ValueError):
    """A secret or certificate file that exists but must not be used as it is: readable by
    others, still an example's placeholder, or a credential outside its systemd unit.

    The loader reports these as their own class of issue (`ConfigIssue.kind == "secret"`), so
    `validate` can tell a file whose secrets are not in place from a file that is wrong.
    """


def _context(info: ValidationInfo) -> dict[str, object]:
    return info.context or {}


def _credential_path(name: str) -> tuple[Path, bool]:
    """`$CREDENTIALS_DIRECTORY/NAME` and whether the directory is known."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(
            f"{CREDENTIAL_PREFIX}{name!r} is not a credential name: use the name given to "
            "LoadCredential= in the unit, without '/' (for example credential:mqtt.pass)"
        )
    directory = os.environ.get(CREDENTIALS_DIRECTORY, "")
    if directory:
        return Path(directory) / name, True
    return Path(f"${CREDENTIALS_DIRECTORY}") / name, False


def _resolve(value: object, info: ValidationInfo) -> tuple[Path, bool, bool]:
    """The path, whether it is a systemd credential, and whether it can be looked at."""
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"expected the path of a file, got {type(value).__name__}")
    text = os.fspath(value)
    if isinstance(text, str) and text.startswith(CREDENTIAL_PREFIX):
        path, known = _credential_path(text[len(CREDENTIAL_PREFIX) :])
        return path, True, known
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # "~nobody/x" when that user has no home directory
        raise ValueError(f"cannot expand {str(value)!r}: {exc}") from exc
    # Relative paths are relative to the config file, so a site folder can be moved as a whole.
    config_dir = _context(info).get("config_dir")
    if not path.is_absolute() and isinstance(config_dir, str | os.PathLike):
        # absolute(), so a daemon that later changes directory still finds the file.
        path = (Path(config_dir) / path).absolute()
    return path, False, True


def _exposure(path: Path, status: os.stat_result) -> str | None:
    """Why the file is not private enough, with the chmod that fixes it; None when it is."""
    mode = stat.S_IMODE(status.st_mode)
    if status.st_uid == os.geteuid():
        # Ours: nobody else needs it. (Root reading a root-owned file lands here too.)
        if mode & 0o077:
            whom = "every user on this machine" if mode & 0o007 else "its group"
            return f"is readable or writable by {whom} (mode {mode:04o}): run `chmod 600 {path}`"
        return None
    # Owned by someone else (root, typically), read by us as a member of its group: the group
    # may read it, nobody may change it but the owner, and others get nothing.
    if mode & 0o027:
        return (
            f"is owned by another user and readable or writable beyond its owner and group "
            f"(mode {mode:04o}): run `chmod 640 {path}` (or `chmod 600` and give it to the "
            "service with systemd's LoadCredential=)"
        )
    return None


def _holds_placeholder(path: Path) -> bool:
    with path.open("rb") as file:
        head = file.read(_PLACEHOLDER_SCAN_BYTES)
    return any(line.lstrip().startswith(PLACEHOLDER_MARK) for line in head.splitlines())


def _checked_file(value: object, info: ValidationInfo, *, private: bool, holds: str) -> Path:
    path, credential, known = _resolve(value, info)
    context = _context(info)
    if context.get("check_files") is False:
        return path
    if not known:
        if context.get("shape_only"):
            return path  # a credential cannot be looked at outside its unit
        raise SecretFileError(
            f"{CREDENTIAL_PREFIX}{path.name} is a systemd credential, but "
            f"${CREDENTIALS_DIRECTORY} is not set: run under the unit "
            f"(LoadCredential={path.name}:/etc/fieldmon/credentials/{path.name}), or set "
            f"{CREDENTIALS_DIRECTORY} to a folder that holds {path.name}"
        )
    kind = "secret file" if private else "certificate file"
    try:
        status = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{kind} {str(path)!r} does not exist or is not a file") from None
    except (OSError, ValueError) as exc:  # name too long, embedded NUL byte, no permission
        raise ValueError(f"{kind} {str(path)!r} cannot be checked: {exc}") from exc
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{kind} {str(path)!r} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{kind} {str(path)!r} is not readable by this user")
    if context.get("shape_only"):
        return path
    problems = []
    try:
        if _holds_placeholder(path):
            problems.append(
                f"still holds the example's placeholder (a line starting CHANGE-ME): "
                f"put the real {holds} there"
            )
    except OSError as exc:
        raise ValueError(f"{kind} {str(path)!r} cannot be read: {exc}") from exc
    # systemd makes a unit's credential directory private to the unit, whatever the modes.
    exposure = _exposure(path, status) if private and not credential else None
    if exposure:
        problems.append(exposure)
    if problems:
        raise SecretFileError(f"{kind} {str(path)!r} " + "; and it ".join(problems))
    return path


def _secret_file(value: object, info: ValidationInfo) -> Path:
    return _checked_file(value, info, private=True, holds="secret")


def _certificate_file(value: object, info: ValidationInfo) -> Path:
    return _checked_file(value, info, private=False, holds="certificate")


# A path to a file holding a secret; the config never carries the secret itself. Private to its
# owner (or its owner's group), never an example's placeholder; `credential:NAME` is a systemd
# credential.
SecretFile = Annotated[Path, BeforeValidator(_secret_file)]

# A certificate (a CA bundle, a client certificate): public, so any mode, but never a placeholder.
CertFile = Annotated[Path, BeforeValidator(_certificate_file)]


def read_secret(path: Path) -> str:
    """The secret in `path`, without the trailing newline editors add.

    The value is registered with `fieldmon.core.redact`, so a log line that would carry it shows
    `***` instead.
    """
    secret = path.read_text(encoding="utf-8").strip("\r\n")
    register_secret(secret)
    return secret
