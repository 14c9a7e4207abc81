"""Opening and closing a site from the NOC: `fieldmon-collector provision` and `decommission`.

`provision` takes a new site file (prepared with its secrets beside it: `secrets/NAME` for the
files it names as `secrets/NAME`, `credentials/NAME` for `credential:NAME`), checks it fully
before anything changes, then:

- generates the agent's MQTT password (kept in the broker folder's `secrets/AGENT.mqtt.pass`,
  0600, as `broker-acl` keeps every agent's), copies the site file into site_configs/ and
  regenerates the broker's password files and ACLs from site_configs (fieldmon.collector.brokeracl);
- writes the handover folder the field engineer carries to the Pi: `site.yaml`, `secrets/` and
  `credentials/` (0600 files, 0700 folders: every file the site file names, the new password
  and the broker's CA certificate among them), the agent bundle, and `HANDOVER.txt`, a sheet in
  plain words. `install.sh --handover DIR` on the Pi reads exactly this layout.

Running it again with the same site file rebuilds the handover (a lost USB stick) with the same
password; a different file for a site id or agent id already taken, open or closed, is refused.

`decommission` closes a site: its file moves to `site_configs/closed/` (the inventory reads it as
known but closed: no alerts, its agent's envelopes refused, its id never reused), its agent's
password entry and ACL lines are removed (and its secret file deleted), and nothing is deleted
in InfluxDB. Running it again on a closed site only makes sure the login is gone.

Neither stops or starts anything: the broker and the collector re-read their files on SIGHUP.
The CLI sends it to the PIDs or systemd units it is given, and otherwise prints the commands.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets as secrets_module
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fieldmon.collector import brokeracl
from fieldmon.collector.config import CollectorConfig, load_collector_config
from fieldmon.collector.inventory import CLOSED_DIR, Inventory, load_inventory
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.config.loader import load_yaml, place_of, validate_document
from fieldmon.core.config.secrets import CREDENTIAL_PREFIX, CREDENTIALS_DIRECTORY
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.validate import check_site_file

# Where deploy/mosquitto.conf reads the generated files (`broker-acl --out`).
DEFAULT_BROKER_FILES = Path("/etc/mosquitto/fieldmon")
SITE_FILE = "site.yaml"  # install.sh --handover reads DIR/site.yaml
SECRETS = "secrets"  # DIR/secrets/NAME -> the Pi's /etc/fieldmon/secrets/NAME
CREDENTIALS = "credentials"  # DIR/credentials/NAME -> /etc/fieldmon/credentials/NAME
SHEET = "HANDOVER.txt"
SHEET_TITLE = "fieldmon handover for site {site} (agent {agent})"
PASSWORD_FIELD = ("agent", "broker", "password_file")
BROKER_CA_FIELD = ("agent", "broker", "tls", "ca_file")
CLIENT_CERT_FIELD = ("agent", "broker", "tls", "cert_file")
# Every key of a site file whose value names a secret or certificate file (SecretFile /
# CertFile in fieldmon.core; tests/collector/test_provision.py checks the list is complete).
FILE_KEYS = frozenset(
    {"password_file", "ca_file", "cert_file", "key_file"}
    | {"community_file", "auth_key_file", "priv_key_file"}
)
PUBLIC_KEYS = frozenset({"ca_file", "cert_file"})  # certificates: not secret
BUNDLE_PREFIX = "fieldmon-agent-bundle-"
BUNDLE_MEMBERS = ("install.sh", "bundle.json", "SHA256SUMS")


class ProvisionError(Exception):
    """`problems` says why, one line each (file:line where there is one); nothing was changed
    unless `changed` (then the last problem says what was done and how to finish)."""

    def __init__(self, problems: list[str], *, changed: bool = False) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.changed = changed


Location = tuple[str | int, ...]


@dataclass
class FileReference:
    """One file a site file names, and where the handover puts it."""

    location: Location
    value: str  # as written in the site file
    line: int | None
    handover: PurePosixPath  # secrets/NAME or credentials/NAME, inside the handover
    source: Path | None = None  # where the NOC holds it; None for the generated password

    @property
    def field(self) -> str:
        text = ""
        for part in self.location:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text

    @property
    def generated(self) -> bool:
        return self.location == PASSWORD_FIELD

    @property
    def private(self) -> bool:
        return self.location[-1] not in PUBLIC_KEYS


@dataclass
class BundleInfo:
    """An agent bundle file (`fieldmon-lab bundle`, deploy/bundle/build.sh) and its version."""

    path: Path
    top: str  # the folder it unpacks to
    version: str


@dataclass
class ProvisionPlan:
    """Everything checked; what `provision` will do."""

    config: CollectorConfig
    site_file: Path
    site_text: bytes
    site: SiteConfig
    references: list[FileReference]
    broker_files: Path
    out: Path
    bundle: BundleInfo | None
    again: bool  # the same site file is provisioned already: rebuild its handover
    warnings: list[str] = field(default_factory=list)

    @property
    def agent(self) -> str:
        return self.site.agent.id

    @property
    def secret_path(self) -> Path:
        return self.broker_files / brokeracl.SECRETS_DIR / f"{self.agent}.mqtt.pass"

    @property
    def target(self) -> Path:
        """Where the site file goes in site_configs/."""
        return self.config.site_configs / f"{self.site.site}.yaml"


@dataclass
class ProvisionResult:
    """What `provision` did."""

    plan: ProvisionPlan
    handover: Path
    site_path: Path  # the site file in site_configs/
    new_password: bool
    broker: brokeracl.BrokerFiles


# --- checks -------------------------------------------------------------------------------------


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line else str(path)


def _walk(node: Any, at: Location = ()) -> Iterator[tuple[Location, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*at, key), value
            yield from _walk(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*at, index))


def file_references(site_file: Path, document: Any) -> tuple[list[FileReference], list[str]]:
    """The files a (shape-valid) site file names, each with its place in the handover, and the
    problems: a file the handover cannot carry (install.sh places `secrets/NAME` and
    `credential:NAME` only)."""
    references: list[FileReference] = []
    problems: list[str] = []
    for location, value in _walk(document):
        if location[-1] not in FILE_KEYS or not isinstance(value, str):
            continue
        line = place_of(document, location).line
        reference = FileReference(location, value, line, PurePosixPath())
        if value.startswith(CREDENTIAL_PREFIX):
            name = value[len(CREDENTIAL_PREFIX) :]
            reference.handover = PurePosixPath(CREDENTIALS, name)
        else:
            parts = PurePosixPath(value).parts
            if len(parts) != 2 or parts[0] != SECRETS or parts[1] in (".", ".."):
                problems.append(
                    f"{_where(site_file, line)}: {reference.field}: {value!r}: the handover "
                    f"carries a site's files as {SECRETS}/NAME (installed in "
                    f"/etc/fieldmon/{SECRETS}/ on the Pi) or {CREDENTIAL_PREFIX}NAME (a systemd "
                    f"credential); write it as {SECRETS}/{PurePosixPath(value).name}"
                )
                continue
            reference.handover = PurePosixPath(*parts)
        references.append(reference)
    return references, problems


def _sources(site_file: Path, references: list[FileReference], ca: Path | None) -> list[str]:
    """Fill in each reference's source at the NOC; the problems (missing files, clashes)."""
    problems: list[str] = []
    folder = site_file.parent
    by_name: dict[PurePosixPath, FileReference] = {}
    for reference in references:
        where = f"{_where(site_file, reference.line)}: {reference.field}"
        if reference.generated:
            reference.source = None
        elif reference.location == BROKER_CA_FIELD and ca is not None:
            reference.source = ca
        else:
            reference.source = folder / reference.handover
        other = by_name.setdefault(reference.handover, reference)
        if other is not reference and (other.generated or reference.generated):
            problems.append(
                f"{where}: {reference.value!r} is also {other.field} (the agent's MQTT password, "
                "which provision generates): give each its own file"
            )
            continue
        if other is not reference and other.source != reference.source:
            problems.append(f"{where}: {reference.value!r} is also {other.field}, from elsewhere")
            continue
        if reference.source is None:
            continue
        source = reference.source
        kind = "secret file" if reference.private else "certificate file"
        if not source.is_file():
            hint = (
                " (or give the broker's CA with --ca FILE)"
                if reference.location == BROKER_CA_FIELD
                else ""
            )
            problems.append(
                f"{where}: {kind} {str(source)!r} does not exist: put it there, beside the site "
                f"file, for the handover{hint}"
            )
        elif not os.access(source, os.R_OK):
            problems.append(f"{where}: {kind} {str(source)!r} is not readable by this user")
    return problems


def _password_problems(
    site_file: Path, document: Any, references: list[FileReference]
) -> list[str]:
    named = {reference.location for reference in references}
    if PASSWORD_FIELD in named or CLIENT_CERT_FIELD in named:
        return []
    line = place_of(document, ("agent", "broker")).line
    return [
        f"{_where(site_file, line)}: agent.broker.password_file: missing: the agents' listener "
        f"needs a login; name the file provision generates, e.g. "
        f"password_file: {SECRETS}/AGENT.mqtt.pass (or credential:mqtt.pass)"
    ]


def _inventory_problems(
    site_file: Path, text: bytes, document: Any, site: SiteConfig, inventory: Inventory
) -> tuple[bool, list[str]]:
    """Whether this exact file is provisioned already, and why the site cannot be added."""
    problems: list[str] = []
    site_line = place_of(document, ("site",)).line
    agent_line = place_of(document, ("agent", "id")).line
    existing = inventory.paths.get(site.site)
    if existing is not None:
        if existing.read_bytes() == text:
            return True, []
        problems.append(
            f"{_where(site_file, site_line)}: site: {site.site!r} exists already ({existing}): "
            "to change that site, edit its file and run `broker-acl`; to rebuild its handover, "
            "give the same file again"
        )
    if site.site in inventory.closed:
        problems.append(
            f"{_where(site_file, site_line)}: site: {site.site!r} was closed "
            f"({inventory.closed_paths[site.site]}); its rows in InfluxDB stay under that id: "
            "give the new site another id"
        )
    for other, config in sorted([*inventory.sites.items(), *inventory.closed.items()]):
        if other != site.site and config.agent.id == site.agent.id:
            where = inventory.paths.get(other) or inventory.closed_paths[other]
            problems.append(
                f"{_where(site_file, agent_line)}: agent.id: {site.agent.id!r} is already the "
                f"agent of site {other!r} ({where}): an agent id is its MQTT login and "
                "belongs to one site"
            )
    return False, problems


def read_bundle(path: Path) -> BundleInfo:
    """The bundle's folder and version; ProvisionError when `path` is not an agent bundle."""
    problem = (
        f"--bundle {path}: not an agent bundle (fieldmon-agent-bundle-VERSION.tar, from "
        "`bash deploy/bundle/build.sh` or `fieldmon-lab bundle`)"
    )
    try:
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
            tops = {name.split("/", 1)[0] for name in names}
            top = next(iter(tops)) if len(tops) == 1 else ""
            if not top.startswith(BUNDLE_PREFIX) or any(
                f"{top}/{member}" not in names for member in BUNDLE_MEMBERS
            ):
                raise ProvisionError([f"{problem}: no {top or 'single'} folder with install.sh"])
            manifest = tar.extractfile(f"{top}/bundle.json")
            assert manifest is not None  # a member listed above, a regular file
            version = str(json.loads(manifest.read()).get("version", ""))
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise ProvisionError([f"{problem}: {exc}"]) from exc
    return BundleInfo(path, top, version)


def _handover_problems(out: Path, site: str) -> list[str]:
    if not out.exists():
        return [] if out.parent.is_dir() else [f"--out {out}: {out.parent} does not exist"]
    if not out.is_dir():
        return [f"--out {out}: exists and is not a folder"]
    if not any(out.iterdir()) or _sheet_site(out) == site:
        return []
    return [
        f"--out {out}: the folder is not empty and holds no handover of site {site!r}: give a "
        "new folder (handover-SITE, say)"
    ]


def _sheet_site(folder: Path) -> str | None:
    try:
        first = (folder / SHEET).read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    title_start = SHEET_TITLE.partition("{site}")[0]
    if not first.startswith(title_start):
        return None
    return first[len(title_start) :].split(" ", 1)[0]


def plan_provision(
    config_path: Path,
    site_file: Path,
    out: Path,
    *,
    broker_files: Path = DEFAULT_BROKER_FILES,
    ca: Path | None = None,
    bundle: Path | None = None,
) -> ProvisionPlan:
    """Check everything `provision` needs; ProvisionError (every problem found) otherwise."""
    try:
        config = load_collector_config(config_path)
    except ConfigError as exc:
        raise ProvisionError([str(issue) for issue in exc.issues]) from exc
    try:
        text = site_file.read_bytes()
        document = load_yaml(site_file)
        site = validate_document(site_file, document, SiteConfig, check_files=False)
    except OSError as exc:
        raise ProvisionError([f"{site_file}: cannot read it: {exc.strerror}"]) from exc
    except ConfigError as exc:
        raise ProvisionError([str(issue) for issue in exc.issues]) from exc
    references, problems = file_references(site_file, document)
    problems += _password_problems(site_file, document, references)
    if ca is not None and BROKER_CA_FIELD not in {r.location for r in references}:
        problems.append(
            f"--ca {ca}: the site file names no agent.broker.tls.ca_file to put it in "
            f"(ca_file: {SECRETS}/noc-ca.pem, say)"
        )
    problems += _sources(site_file, references, ca)
    inventory = load_inventory(config.site_configs)
    again, clashes = _inventory_problems(site_file, text, document, site, inventory)
    problems += clashes
    target = config.site_configs / f"{site.site}.yaml"
    if not again and site.site not in inventory.paths and target.exists():
        problems.append(f"{target} exists already and is not this site's file: rename it")
    # broker-acl's own refusals: an invalid site file would be left out of the broker's files.
    problems += [
        f"{problem} (fix it first: the broker's files are regenerated from every site file)"
        for problem in inventory.problems
    ]
    if site.agent.id == config.broker.client_id:
        line = place_of(document, ("agent", "id")).line
        problems.append(
            f"{_where(site_file, line)}: agent.id: {site.agent.id!r} is the collector's MQTT "
            "client id (broker.client_id): its login would take over the collector's session"
        )
    if config.broker.username is None or config.broker.password_file is None:
        problems.append(
            f"{config_path}: broker: needs username and password_file (the collector's login, "
            "written into collector.passwd)"
        )
    problems += _handover_problems(out, site.site)
    info = None
    if bundle is not None:
        try:
            info = read_bundle(bundle)
        except ProvisionError as exc:
            problems += exc.problems
    if problems:
        raise ProvisionError(problems)
    return ProvisionPlan(config, site_file, text, site, references, broker_files, out, info, again)


# --- the handover -------------------------------------------------------------------------------


def _existing_password(plan: ProvisionPlan) -> str | None:
    """The agent's password when re-provisioning the same site; a new site gets a new one even
    when a stale secret file of that agent id is left over (an earlier Pi may still hold it)."""
    if plan.again and plan.secret_path.exists():
        return brokeracl.read_secret(plan.secret_path)
    return None


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


_PURPOSES = {
    PASSWORD_FIELD: "the Pi's login to the NOC's broker (MQTT password)",
    BROKER_CA_FIELD: "the CA certificate the Pi checks the broker's certificate against",
    CLIENT_CERT_FIELD: "the Pi's client certificate for the broker",
    ("agent", "broker", "tls", "key_file"): "the private key of that client certificate",
}
_KEY_PURPOSES = {
    "community_file": "SNMP community (read-only)",
    "auth_key_file": "SNMPv3 authentication key",
    "priv_key_file": "SNMPv3 privacy key",
    "ca_file": "a CA certificate the services are checked against",
}


def _purpose(reference: FileReference) -> str:
    return _PURPOSES.get(reference.location) or _KEY_PURPOSES.get(
        str(reference.location[-1]), "a file the site file names"
    )


def sheet_text(plan: ProvisionPlan, now: datetime.datetime) -> str:
    """HANDOVER.txt: what the folder holds and what to do with it, in plain words."""
    site, agent, name = plan.site.site, plan.agent, plan.out.name
    files: dict[PurePosixPath, list[FileReference]] = {}
    for reference in plan.references:
        files.setdefault(reference.handover, []).append(reference)
    rows = [(SITE_FILE, f"the site's configuration: {plan.site.name} (holds no secret)")]
    for handover, references in sorted(files.items()):
        fields = ", ".join(sorted({reference.field for reference in references}))
        rows.append((str(handover), f"{_purpose(references[0])} ({fields})"))
    if plan.bundle is not None:
        rows.append(
            (plan.bundle.path.name, f"the agent {plan.bundle.version} and all it needs, offline")
        )
    rows.append((SHEET, "this sheet"))
    width = max(len(row[0]) for row in rows) + 2
    table = "\n".join(f"  {path.ljust(width)}{what}" for path, what in rows)
    if plan.bundle is not None:
        tar_name, top = plan.bundle.path.name, plan.bundle.top
    else:
        tar_name, top = f"{BUNDLE_PREFIX}VERSION.tar", f"{BUNDLE_PREFIX}VERSION"
    unpack = f"tar -xf {name}/{tar_name}" if plan.bundle is not None else f"tar -xf {tar_name}"
    bring = (
        ""
        if plan.bundle is not None
        else f"\nThe agent bundle is not in this folder: bring {tar_name} beside it.\n"
    )
    credentials = (
        f"\n{CREDENTIALS}/ goes to /etc/fieldmon/{CREDENTIALS}/ (root only); the agent's unit\n"
        "gets each file as a systemd credential.\n"
        if any(ref.handover.parts[0] == CREDENTIALS for ref in plan.references)
        else ""
    )
    return f"""\
{SHEET_TITLE.format(site=site, agent=agent)}
Written by the NOC (`fieldmon-collector provision`) on {now:%Y-%m-%d %H:%M} UTC.

In this folder:
{table}

Keep it private: it holds the site's passwords. Carry it on a USB stick to the Pi and delete it
from the stick once the Pi is installed. The broker at {plan.site.agent.broker.host} already knows
this Pi's login.
{bring}{credentials}
On the Pi (the README's "Deploying a site" says more; a blank Raspberry Pi OS Lite 64-bit):
  1. copy this folder from the USB stick to your home folder:
       sudo mount /dev/sda1 /mnt && cp -r /mnt/{name} ~/ && sudo umount /mnt
  2. unpack the bundle:
       {unpack}
  3. install; it checks every link, device and the broker and starts the agent when none fails:
       sudo ./{top}/install.sh --handover {name}
  4. see it run:
       systemctl status fieldmon-agent
  5. write the handover report and leave it with the site's papers:
       sudo fieldmon-agent check --config /etc/fieldmon/site.yaml --report {name}.md

install.sh puts site.yaml in /etc/fieldmon/ and {SECRETS}/ in /etc/fieldmon/{SECRETS}/ (readable by
the agent alone). A FAIL row says what to fix; run the same install command again after.
"""


@contextlib.contextmanager
def _credentials_directory(folder: Path) -> Iterator[None]:
    before = os.environ.get(CREDENTIALS_DIRECTORY)
    os.environ[CREDENTIALS_DIRECTORY] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CREDENTIALS_DIRECTORY, None)
        else:
            os.environ[CREDENTIALS_DIRECTORY] = before


def _staged_problems(plan: ProvisionPlan, staged: Path) -> list[str]:
    """The staged handover's site file checked in full, as the Pi's `validate` will (secrets
    included: placeholders, empty files); paths named as the operator knows them. Its exposing
    settings go to `plan.warnings`, as `validate` prints them."""
    with _credentials_directory((staged / CREDENTIALS).absolute()):
        result = check_site_file(staged / SITE_FILE)
    for warning in result.warnings:
        line = place_of(result.document, warning.at).line
        where = _where(plan.site_file, line)
        plan.warnings.append(f"WARN  {where}: {warning.path}: {warning.message}")
    names = {
        str((staged / str(reference.handover)).absolute()): str(reference.source or "(generated)")
        for reference in plan.references
    }
    problems = []
    for issue in result.issues:
        message = issue.message
        for staged_path, source in names.items():
            message = message.replace(staged_path, source)
        field_text = f" {issue.path}:" if issue.path else ""
        problems.append(f"{_where(plan.site_file, issue.line)}:{field_text} {message}")
    return problems


def stage_handover(
    plan: ProvisionPlan, staged: Path, password: str, now: datetime.datetime
) -> None:
    """Write the whole handover into `staged` (a new folder)."""
    staged.mkdir(mode=0o700)
    _write_private(staged / SITE_FILE, plan.site_text)
    for reference in plan.references:
        target = staged / str(reference.handover)
        if reference.generated:
            _write_private(target, (password + "\n").encode())
        elif reference.source is not None:
            _write_private(target, reference.source.read_bytes())
    if plan.bundle is not None:
        shutil.copyfile(plan.bundle.path, staged / plan.bundle.path.name)
    (staged / SHEET).write_text(sheet_text(plan, now), encoding="utf-8")


def provision(plan: ProvisionPlan, now: datetime.datetime | None = None) -> ProvisionResult:
    """Stage and check the handover, then register the site and write the broker's files.

    Nothing at the NOC changes until the staged handover passed the full check; a failure
    after that (the broker's files cannot be written) puts site_configs back as it was.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    kept = _existing_password(plan)
    password = kept if kept is not None else secrets_module.token_urlsafe(brokeracl.PASSWORD_BYTES)
    staged = plan.out.with_name(f".{plan.out.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        stage_handover(plan, staged, password, now)
        problems = _staged_problems(plan, staged)
        if problems:
            raise ProvisionError(problems)
        site_path = _register(plan, password, kept is None)
        broker = _broker_files(plan, site_path, kept is None)
        try:
            _swap_in(staged, plan.out)
        except OSError as exc:
            finish = "the site is registered: run the same command again to write its handover"
            raise ProvisionError([f"--out {plan.out}: {exc}", finish], changed=True) from exc
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return ProvisionResult(plan, plan.out, site_path, kept is None, broker)


def _register(plan: ProvisionPlan, password: str, new: bool) -> Path:
    """The password into the broker folder, the site file into site_configs/."""
    if new:
        plan.secret_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        brokeracl.write_file(plan.secret_path, password + "\n", 0o600)
    if plan.again:
        return load_inventory(plan.config.site_configs).paths[plan.site.site]
    brokeracl.write_file(plan.target, plan.site_text.decode("utf-8"), 0o644)
    return plan.target


def _broker_files(plan: ProvisionPlan, site_path: Path, new: bool) -> brokeracl.BrokerFiles:
    inventory = load_inventory(plan.config.site_configs)
    try:
        return brokeracl.write_broker_files(inventory, plan.config.broker, plan.broker_files)
    except (brokeracl.BrokerAclError, OSError) as exc:
        if not plan.again:
            site_path.unlink(missing_ok=True)
        if new:
            plan.secret_path.unlink(missing_ok=True)
        problems = exc.problems if isinstance(exc, brokeracl.BrokerAclError) else [str(exc)]
        raise ProvisionError([*problems, "nothing changed: site_configs is as it was"]) from exc


def _swap_in(staged: Path, out: Path) -> None:
    """`staged` becomes `out`; a previous handover there is replaced whole."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staged.rename(out)
        shutil.rmtree(old)
    else:
        staged.rename(out)
    out.chmod(0o700)


# --- decommission -------------------------------------------------------------------------------


@dataclass
class DecommissionResult:
    """What `decommission` did."""

    site: str
    agent: str
    closed_file: Path
    moved_from: Path | None  # None: the site was closed already
    broker_changed: list[Path]
    regenerated: bool  # the broker's files rewritten from site_configs (else edited in place)
    warnings: list[str] = field(default_factory=list)


CLOSED_HEADER = (
    "# Closed on {date} by `fieldmon-collector decommission`: no alerts, no broker login, its\n"
    "# rows in InfluxDB kept. Its site and agent ids stay taken.\n"
)


def decommission(
    config_path: Path,
    site: str,
    *,
    broker_files: Path = DEFAULT_BROKER_FILES,
    now: datetime.datetime | None = None,
) -> DecommissionResult:
    """Close `site`: its file to site_configs/closed/, its agent's broker login removed."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        config = load_collector_config(config_path)
    except ConfigError as exc:
        raise ProvisionError([str(issue) for issue in exc.issues]) from exc
    if not (broker_files / "agents.passwd").is_file():
        raise ProvisionError(
            [
                f"{broker_files}/agents.passwd does not exist: give --broker-files the folder "
                "deploy/mosquitto.conf reads (`broker-acl --out`)"
            ]
        )
    inventory = load_inventory(config.site_configs)
    moved_from = inventory.paths.get(site)
    if moved_from is None and site in inventory.closed:
        agent, closed_file = inventory.closed[site].agent.id, inventory.closed_paths[site]
    elif moved_from is None:
        known = ", ".join(sorted(inventory.sites)) or "none"
        raise ProvisionError(
            [f"no open site {site!r} in {config.site_configs} (open sites: {known})"]
        )
    else:
        agent = inventory.sites[site].agent.id
        closed_file = config.site_configs / CLOSED_DIR / moved_from.name
        if closed_file.exists():
            raise ProvisionError(
                [f"{closed_file} exists already (another closed site's file): rename one"]
            )
        closed_file.parent.mkdir(exist_ok=True)
        text = CLOSED_HEADER.format(date=f"{now:%Y-%m-%d %H:%M} UTC")
        brokeracl.write_file(closed_file, text + moved_from.read_text(encoding="utf-8"), 0o644)
        moved_from.unlink()
    result = DecommissionResult(site, agent, closed_file, moved_from, [], regenerated=False)
    _revoke(result, config, broker_files)
    return result


def _revoke(result: DecommissionResult, config: CollectorConfig, broker_files: Path) -> None:
    """Regenerate the broker's files without the agent; where another site file keeps that from
    working, remove the agent's lines in place: the login must go either way."""
    inventory = load_inventory(config.site_configs)
    secret = broker_files / brokeracl.SECRETS_DIR / f"{result.agent}.mqtt.pass"
    try:
        try:
            files = brokeracl.write_broker_files(inventory, config.broker, broker_files)
        except brokeracl.BrokerAclError as exc:
            result.warnings += [
                *exc.problems,
                f"so {result.agent}'s lines were removed from the existing files instead",
            ]
            result.broker_changed = brokeracl.revoke_agent(broker_files, result.agent)
            return
    except OSError as exc:
        finish = (
            f"site {result.site} is closed but {result.agent}'s login is not revoked yet: "
            "fix that and run decommission again"
        )
        raise ProvisionError([f"{broker_files}: {exc}", finish], changed=True) from exc
    result.regenerated = True
    result.broker_changed = [files.directory / "agents.passwd", files.directory / "agents.acl"]
    if secret.exists():
        secret.unlink()
        result.broker_changed.append(secret)


# --- reloads ------------------------------------------------------------------------------------


class ReloadError(Exception):
    """A reload asked for could not be done; the message says what to do by hand."""


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def reload_pid(pid: int, program: str) -> None:
    """SIGHUP to `pid`, only when it runs `program` (a wrong PID would take SIGHUP's default:
    the end of whatever process that is)."""
    arguments = _command_line(pid)
    if not any(Path(argument).name == program for argument in arguments[:2]):
        found = " ".join(arguments)[:120] or "no such process"
        raise ReloadError(f"PID {pid} is not {program} ({found}): nothing sent; reload it yourself")
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ReloadError(f"SIGHUP to {program} (PID {pid}): {exc.strerror}") from exc


def reload_unit(unit: str) -> None:
    """`systemctl reload UNIT`."""
    try:
        done = subprocess.run(
            ["systemctl", "reload", unit], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReloadError(f"systemctl reload {unit}: {exc}") from exc
    if done.returncode != 0:
        raise ReloadError(f"systemctl reload {unit}: {done.stderr.strip() or done.returncode}")
