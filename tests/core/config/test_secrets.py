"""Secret files: who may read them, example placeholders, and systemd credentials."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldmon.core.config.errors import ConfigError
from fieldmon.core.config.loader import load_model
from fieldmon.core.config.types import CertFile, SecretFile, StrictModel
from fieldmon.lab.process import closed_to_others, script
from fieldmon.lab.secretfiles import write_secret

AGENT = script("fieldmon-agent")
COLLECTOR = script("fieldmon-collector")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown and switching users need root")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian 12's 3.11, as scripts/setup.sh installs


class _Root(StrictModel):
    secret: SecretFile
    certificate: CertFile | None = None


def _load(folder: Path, secret: str, certificate: str | None = None, **kwargs: bool) -> _Root:
    text = f"secret: {secret}\n" + (f"certificate: {certificate}\n" if certificate else "")
    (folder / "case.yaml").write_text(text, encoding="utf-8")
    return load_model(folder / "case.yaml", _Root, **kwargs)


def _issue(folder: Path, secret: str, **kwargs: bool) -> str:
    with pytest.raises(ConfigError) as raised:
        _load(folder, secret, **kwargs)
    (issue,) = raised.value.issues
    assert issue.kind == "secret", issue
    return str(issue)


def _site(folder: Path, password_file: str) -> Path:
    path = folder / "site.yaml"
    site = {
        "site": "cred-site",
        "name": "Credentials",
        "parent_hospital": "hospital-a",
        "agent": {
            "id": "cred-site-pi1",
            "broker": {
                "host": "127.0.0.1",
                "username": "cred-site-pi1",
                "password_file": password_file,
            },
            "outbox": {"path": str(folder / "outbox.db")},
        },
    }
    path.write_text(json.dumps(site), encoding="utf-8")
    return path


# -- who may read a secret file ------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_a_secret_others_may_read_is_refused_with_the_chmod_to_run(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "mqtt.pass"
    write_secret(path)
    path.chmod(mode)
    message = _issue(tmp_path, "mqtt.pass")
    assert f"case.yaml:1: secret: secret file '{path}'" in message
    assert f"(mode {mode:04o}): run `chmod 600 {path}`" in message
    whom = "every user on this machine" if mode & 0o007 else "its group"
    assert f"is readable or writable by {whom}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_secret_loads(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "mqtt.pass"
    write_secret(path)
    path.chmod(mode)
    assert _load(tmp_path, "mqtt.pass").secret == path


def test_certificates_are_public(tmp_path: Path) -> None:
    write_secret(tmp_path / "key")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    (tmp_path / "ca.pem").chmod(0o644)
    assert _load(tmp_path, "key", "ca.pem").certificate == tmp_path / "ca.pem"


@needs_root
def test_a_file_of_another_owner_may_be_read_through_its_group(tmp_path: Path) -> None:
    path = tmp_path / "mqtt.pass"
    write_secret(path)
    os.chown(path, 65534, 65534)  # nobody's: read by root here, as by a member of its group
    path.chmod(0o640)
    assert _load(tmp_path, "mqtt.pass").secret == path
    path.chmod(0o644)
    message = _issue(tmp_path, "mqtt.pass")
    assert "is owned by another user and readable or writable beyond its owner and group" in message
    assert f"(mode 0644): run `chmod 640 {path}`" in message
    assert "LoadCredential=" in message


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder another user can enter (pytest's own temporary folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="fieldmon-secrets-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@needs_root
@pytest.mark.skipif(
    (closed := closed_to_others(Path(sys.prefix))) is not None,
    reason=f"runs this checkout as nobody, but {closed} is closed to others (chmod o+x it)",
)
def test_a_service_user_reads_a_root_owned_secret_as_a_member_of_its_group(
    shared_folder: Path,
) -> None:
    # The deployment without systemd credentials: root:fieldmon 0640, the service user in group
    # fieldmon. Here: root:4242 0640, the check run as `nobody` with 4242 as an extra group.
    path = shared_folder / "mqtt.pass"
    write_secret(path)
    os.chown(path, 0, 4242)
    path.chmod(0o640)
    site = _site(shared_folder, str(path))
    site.chmod(0o644)

    # Debian's python3 with this checkout's packages: the venv's interpreter may live where
    # `nobody` cannot go (a pyenv build under /root).
    program = (
        "import site, sys; site.addsitedir(sys.argv[1]); from fieldmon.agent.cli import main; "
        "raise SystemExit(main(['validate', sys.argv[2]]))"
    )
    packages = next(Path(sys.prefix).glob("lib/python3*/site-packages"))

    def validate(**user: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SYSTEM_PYTHON, "-c", program, str(packages), str(site)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            user=65534,
            group=65534,
            cwd=shared_folder,
            **user,  # type: ignore[arg-type]
        )

    member = validate(extra_groups=[4242])
    assert member.returncode == 0, member.stderr
    assert member.stdout.startswith(f"OK  {site}: site cred-site")
    stranger = validate(extra_groups=[])
    assert stranger.returncode == 1
    assert f"secret file '{path}' is not readable by this user" in stranger.stderr


# -- example placeholders ------------------------------------------------------------------


def test_a_placeholder_is_refused_and_says_to_put_the_real_secret_there(tmp_path: Path) -> None:
    path = tmp_path / "mqtt.pass"
    write_secret(path, "CHANGE-ME: example only - put the MQTT password here")
    message = _issue(tmp_path, "mqtt.pass")
    assert message.endswith(
        f"secret file '{path}' still holds the example's placeholder (a line starting "
        "CHANGE-ME): put the real secret there"
    )


def test_a_placeholder_certificate_is_refused(tmp_path: Path) -> None:
    write_secret(tmp_path / "key")
    (tmp_path / "ca.pem").write_text("  CHANGE-ME: not a certificate\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="put the real certificate there") as raised:
        _load(tmp_path, "key", "ca.pem")
    assert [issue.path for issue in raised.value.issues] == ["certificate"]


def test_a_readable_placeholder_gets_both_fixes_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mqtt.pass"
    write_secret(path, "CHANGE-ME please")
    path.chmod(0o644)
    message = _issue(tmp_path, "mqtt.pass")
    assert "put the real secret there; and it is readable or writable by every user" in message


def test_shape_only_checks_existence_but_not_content_or_mode(tmp_path: Path) -> None:
    path = tmp_path / "mqtt.pass"
    write_secret(path, "CHANGE-ME please")
    path.chmod(0o644)
    assert _load(tmp_path, "mqtt.pass", shape_only=True).secret == path
    with pytest.raises(ConfigError, match="does not exist or is not a file"):
        _load(tmp_path, "nothing-here", shape_only=True)


def test_the_agent_refuses_to_start_on_a_placeholder(tmp_path: Path) -> None:
    write_secret(tmp_path / "mqtt.pass", "CHANGE-ME: example only")
    completed = subprocess.run(
        [AGENT, "run", "--config", _site(tmp_path, "mqtt.pass")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    (line,) = [json.loads(line) for line in completed.stderr.splitlines() if "invalid" in line]
    assert line["msg"] == "invalid site file"
    (error,) = line["errors"]
    assert "agent.broker.password_file" in error
    assert "put the real secret there" in error


def test_the_collector_refuses_to_start_on_a_readable_secret(tmp_path: Path) -> None:
    write_secret(tmp_path / "collector.pass")
    (tmp_path / "collector.pass").chmod(0o644)
    config = tmp_path / "collector.yaml"
    config.write_text(
        "broker: {host: 127.0.0.1, username: collector, password_file: collector.pass}\n"
        "influxdb: {api: v1, url: 'http://127.0.0.1:1', database: x}\n"
        "site_configs: .\n",
        encoding="utf-8",
    )
    completed = subprocess.run(
        [COLLECTOR, "run", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert f"run `chmod 600 {tmp_path / 'collector.pass'}`" in completed.stderr
    validated = subprocess.run(
        [COLLECTOR, "validate", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert validated.returncode == 1
    assert validated.stderr.splitlines()[-1].startswith("only secret files not ready")


# -- systemd credentials -------------------------------------------------------------------


def _validate(site: Path, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "CREDENTIALS_DIRECTORY"}
    return subprocess.run(
        [AGENT, "validate", site],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, **environment},
    )


def test_a_credential_is_read_from_the_units_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_secret(credentials / "mqtt.pass")
    # systemd makes the directory private to the unit; the file's own mode is systemd's business.
    (credentials / "mqtt.pass").chmod(0o440)
    site = _site(tmp_path, "credential:mqtt.pass")
    completed = _validate(site, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"OK  {site}: site cred-site")


def test_a_credential_outside_its_unit_says_how_to_provide_it(tmp_path: Path) -> None:
    site = _site(tmp_path, "credential:mqtt.pass")
    completed = _validate(site, {})
    assert completed.returncode == 1
    first = completed.stderr.splitlines()[0]
    assert first.startswith(f"{site}:1: agent.broker.password_file: credential:mqtt.pass is a ")
    assert "$CREDENTIALS_DIRECTORY is not set" in first
    assert "LoadCredential=mqtt.pass:/etc/fieldmon/credentials/mqtt.pass" in first


def test_a_credential_placeholder_is_refused_and_a_missing_one_named(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_secret(credentials / "mqtt.pass", "CHANGE-ME: example only")
    site = _site(tmp_path, "credential:mqtt.pass")
    completed = _validate(site, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert completed.returncode == 1
    assert "put the real secret there" in completed.stderr
    (credentials / "mqtt.pass").unlink()
    completed = _validate(site, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert f"'{credentials / 'mqtt.pass'}' does not exist or is not a file" in completed.stderr


@pytest.mark.parametrize("name", ["", "../etc/shadow", "a/b", ".."])
def test_a_credential_name_is_a_plain_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="is not a credential name"):
        _load(tmp_path, f"'credential:{name}'")


def test_the_inventory_reads_credentials_without_the_directory(tmp_path: Path) -> None:
    loaded = _load(tmp_path, "credential:mqtt.pass", check_files=False)
    assert loaded.secret.name == "mqtt.pass"
