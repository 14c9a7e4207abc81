"""The broker's ACL and password files, generated from site_configs (`fieldmon-collector
broker-acl`).

Mosquitto runs two listeners (deploy/mosquitto.conf, `per_listener_settings true`): the agents'
TLS listener, where an agent's client id is its username (`use_username_as_clientid`), and the
collector's own listener on loopback. Each has its own password file and ACL:

- `agents.acl`: per site file, `user <agent id>` with exactly its own topics, no wildcard:
  `topic write fieldmon/v1/<site>/<agent>/samples` (and `status`, `events`), `topic read
  fieldmon/v1/<site>/<agent>/ack`. A stolen Pi can neither write under another site or an
  invented one (retained messages included) nor read another agent's acks.
- `agents.passwd`: one line per agent, `<agent>:$7$...` (PBKDF2-SHA512, Mosquitto's own format).
  Each agent's password is kept in `secrets/<agent>.mqtt.pass` (0600, the Pi's
  `agent.broker.password_file`): kept when it exists, generated for a new agent.
- `collector.acl`, `collector.passwd`: the collector's user (collector file `broker.username`,
  password from its `broker.password_file`): reads every agent's samples, status and events,
  writes acks and the sites' alerts topics.

`write_broker_files` is the reusable part (site provisioning builds on it); the CLI prints what
it wrote and which secret files are new.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fieldmon.collector.config import CollectorBrokerConfig
from fieldmon.collector.inventory import Inventory
from fieldmon.core.config.types import read_secret
from fieldmon.core.wire.topics import TopicKind, agent_topic

# Mosquitto's default for `mosquitto_passwd` ($7$: PBKDF2-HMAC-SHA512). The passwords are 32
# random bytes, so the hash's work factor adds nothing against guessing them.
PASSWD_ITERATIONS = 101
_SALT_BYTES = 12
PASSWORD_BYTES = 32
AGENT_WRITES = (TopicKind.SAMPLES, TopicKind.STATUS, TopicKind.EVENTS)
AGENT_READS = (TopicKind.ACK,)
SECRETS_DIR = "secrets"


class BrokerAclError(Exception):
    """The inventory cannot be turned into broker files; `problems` says why, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class BrokerFiles:
    """What `write_broker_files` wrote."""

    directory: Path
    agents: list[str]  # every agent in agents.acl / agents.passwd
    new_secrets: list[Path] = field(default_factory=list)  # generated for new agents
    stale_secrets: list[Path] = field(default_factory=list)  # agents no longer in site_configs


def password_line(username: str, password: str, *, salt: bytes | None = None) -> str:
    """One password-file line in Mosquitto's `$7$` format, as `mosquitto_passwd` writes it."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PASSWD_ITERATIONS)
    encoded = [base64.b64encode(part).decode("ascii") for part in (salt, digest)]
    return f"{username}:$7${PASSWD_ITERATIONS}${encoded[0]}${encoded[1]}"


def identity_problems(inventory: Inventory, broker: CollectorBrokerConfig) -> list[str]:
    """Site files whose agent would collide with the collector at the broker.

    Client ids are one namespace across listeners: an agent whose id (= its client id) is the
    collector's client id would take over the collector's persistent session at every connect.
    """
    problems = []
    for site, config in sorted(inventory.sites.items()):
        where = inventory.paths.get(site, Path(f"{site}.yaml"))
        if config.agent.id == broker.client_id:
            problems.append(
                f"{where}: agent id {config.agent.id!r} is the collector's MQTT client id "
                "(broker.client_id): its login would take over the collector's session; "
                "rename the agent"
            )
    return problems


def agents_acl(inventory: Inventory) -> str:
    """The agents' listener ACL: each agent, exactly its own topics."""
    sites = len(inventory.sites)
    lines = [
        f"# fieldmon: the agents' listener ACL, generated from site_configs ({sites} sites)",
        "# by `fieldmon-collector broker-acl`. Do not edit it: change the site files, run again.",
        "# Each agent writes only its own site's and its own id's topics and reads only its own",
        "# acks; Mosquitto drops a PUBLISH the ACL denies and withholds what a reader may not see.",
    ]
    for site, config in sorted(inventory.sites.items()):
        agent = config.agent.id
        source = inventory.paths.get(site)
        lines += ["", f"# site {site}" + (f" ({source.name})" if source else ""), f"user {agent}"]
        lines += [f"topic write {agent_topic(site, agent, kind)}" for kind in AGENT_WRITES]
        lines += [f"topic read {agent_topic(site, agent, kind)}" for kind in AGENT_READS]
    return "\n".join(lines) + "\n"


def collector_acl(username: str) -> str:
    """The collector's listener ACL: read what agents send, write acks and alerts."""
    return (
        "# fieldmon: the collector's listener ACL (loopback), generated by\n"
        "# `fieldmon-collector broker-acl`. Do not edit it: run that again.\n"
        f"user {username}\n"
        "topic read fieldmon/v1/+/+/samples\n"
        "topic read fieldmon/v1/+/+/status\n"
        "topic read fieldmon/v1/+/+/events\n"
        "topic write fieldmon/v1/+/+/ack\n"
        "topic write fieldmon/v1/+/alerts\n"
    )


def write_file(path: Path, text: str, mode: int) -> None:
    """Replace `path` atomically, created with `mode` (never readable by others meanwhile).

    A file replaced keeps its owner and group where we may set them: after the `chown
    root:mosquitto` of deploy/README.md, Mosquitto (its own user on SIGHUP) still reads it.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, mode)  # O_CREAT's mode is masked by the umask; the mode is the point
    try:
        before = path.stat()
    except FileNotFoundError:
        before = None
    if before is not None:
        with contextlib.suppress(PermissionError):
            os.chown(temporary, before.st_uid, before.st_gid)
    os.replace(temporary, path)


def agent_password(directory: Path, agent: str) -> tuple[str, Path, bool]:
    """The agent's broker password, its secret file and whether it was generated just now.

    Kept when `directory/secrets/<agent>.mqtt.pass` exists (a re-run changes no agent's login);
    generated and written 0600 otherwise.
    """
    path = directory / SECRETS_DIR / f"{agent}.mqtt.pass"
    if path.exists():
        return read_secret(path), path, False
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(path, password + "\n", 0o600)
    return password, path, True


def _collector_login(broker: CollectorBrokerConfig) -> tuple[str, str]:
    if broker.username is None or broker.password_file is None:
        raise BrokerAclError(
            [
                "the collector file's broker section needs `username` and `password_file`: "
                "the collector's listener refuses anonymous logins"
            ]
        )
    return broker.username, read_secret(broker.password_file)


def write_broker_files(
    inventory: Inventory, broker: CollectorBrokerConfig, directory: Path
) -> BrokerFiles:
    """Write agents.acl, agents.passwd, collector.acl, collector.passwd and the agents' secret
    files into `directory`; raises BrokerAclError (writing nothing) when the inventory has
    problems: a site file left out would lock its agent out of the broker."""
    problems = [*inventory.problems, *identity_problems(inventory, broker)]
    if problems:
        raise BrokerAclError(problems)
    collector_user, collector_password = _collector_login(broker)
    directory.mkdir(parents=True, exist_ok=True)
    agents = sorted(config.agent.id for config in inventory.sites.values())
    result = BrokerFiles(directory, agents)
    passwd = []
    for agent in agents:
        password, path, generated = agent_password(directory, agent)
        passwd.append(password_line(agent, password))
        if generated:
            result.new_secrets.append(path)
    result.stale_secrets = _stale(directory / SECRETS_DIR, agents)
    # Hashes, not secrets, but nobody else needs them; deploy/README.md: root:mosquitto, 0640
    # (Mosquitto re-reads them on SIGHUP as its own user).
    write_file(directory / "agents.passwd", "\n".join(passwd) + "\n" if passwd else "", 0o640)
    write_file(directory / "agents.acl", agents_acl(inventory), 0o644)
    write_file(
        directory / "collector.passwd",
        password_line(collector_user, collector_password) + "\n",
        0o640,
    )
    write_file(directory / "collector.acl", collector_acl(collector_user), 0o644)
    return result


def _stale(folder: Path, agents: Iterable[str]) -> list[Path]:
    wanted = {f"{agent}.mqtt.pass" for agent in agents}
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob("*.mqtt.pass") if path.name not in wanted)


def without_agent_acl(text: str, agent: str) -> str:
    """`agents.acl` text without `agent`'s block (its `user` line, its topic lines and the
    `# site` comment above them), the rest unchanged."""
    blocks = text.split("\n\n")
    kept = [
        block
        for block in blocks
        if f"user {agent}" not in (line.strip() for line in block.splitlines())
    ]
    result = "\n\n".join(block.rstrip("\n") for block in kept)
    return result + "\n" if result else ""


def revoke_agent(directory: Path, agent: str) -> list[Path]:
    """Remove `agent` from the agents' password file and ACL in `directory` in place, and delete
    its secret file; returns the files changed.

    For `decommission` when the inventory cannot be regenerated (another site file is invalid
    and `write_broker_files` refuses): a stolen Pi's login must go anyway. Every other line stays.
    """
    changed = []
    passwd = directory / "agents.passwd"
    if passwd.exists():
        lines = passwd.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.partition(":")[0] != agent]
        if kept != lines:
            write_file(passwd, "".join(f"{line}\n" for line in kept), 0o640)
            changed.append(passwd)
    acl = directory / "agents.acl"
    if acl.exists():
        text = acl.read_text(encoding="utf-8")
        new_text = without_agent_acl(text, agent)
        if new_text != text:
            write_file(acl, new_text, 0o644)
            changed.append(acl)
    secret = directory / SECRETS_DIR / f"{agent}.mqtt.pass"
    if secret.exists():
        secret.unlink()
        changed.append(secret)
    return changed
