"""Real Mosquitto, influxd and VictoriaMetrics processes on loopback ports, for tests, bench, demo.

Each server runs from a directory of our own (its config, data and log live there), listens on
an ephemeral port on 127.0.0.1 and is stopped by the PID we started: SIGTERM, a wait, then
SIGKILL of that same PID. Nothing here ever signals a process it did not start.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fieldmon.lab.process import stop_process, tail

LOOPBACK = "127.0.0.1"
_BIND_FAILURE_MARKERS = ("already in use", "bind: permission denied")
_START_ATTEMPTS = 4
_LOG_TAIL_CHARS = 4000


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


class ServerQueryError(RuntimeError):
    """A server answered a helper's request with an error."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the caller retries if another process takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listens_on(pid: int, port: int, host: str = LOOPBACK) -> bool:
    """True when process `pid` itself holds a listening TCP socket on host:port (Linux /proc).

    Readiness checks use it so that another program that grabbed the port between free_port()
    and the server's bind is never mistaken for our server.
    """
    ip_hex = socket.inet_aton(host)[::-1].hex().upper()
    wanted = f"{ip_hex}:{port:04X}"
    inodes = set()
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
        fds = Path(f"/proc/{pid}/fd")
        return any(os.readlink(fd) in inodes for fd in fds.iterdir()) if inodes else False
    except (FileNotFoundError, ProcessLookupError):
        return False


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class _ServerProcess:
    """Start / wait-until-ready / stop-by-PID, shared by every server kind."""

    name = "server"

    def __init__(self, directory: Path | str, *, startup_timeout: float = 30.0) -> None:
        self.directory = Path(directory)
        self.startup_timeout = startup_timeout
        self.host = LOOPBACK
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None  # how long the last start() took
        self._fixed_ports = False

    # Subclasses fill these in.
    def _choose_ports(self) -> None:
        raise NotImplementedError

    def _prepare(self) -> list[str]:
        """Write the config for the chosen ports; return the command line."""
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        """The server's log: its captured stdout and stderr, unless it writes a log of its own."""
        return self.directory / f"{self.name}.log"

    @property
    def _output_path(self) -> Path:
        return self.log_path

    @property
    def pid(self) -> int | None:
        """The PID of the running server, or None when it is not running."""
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        """True while the process we started has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Start the server and return once it answers; retries on a port taken meanwhile."""
        if self.running():
            raise ServerStartError(f"{self.name} is already running as PID {self.pid}")
        self.directory.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for attempt in range(_START_ATTEMPTS):
            if attempt or not self._has_ports():
                self._choose_ports()
            if self._launch_and_wait():
                self.startup_seconds = time.monotonic() - started
                return self
            if self._fixed_ports:
                break
        raise ServerStartError(
            f"{self.name} could not bind its ports after {_START_ATTEMPTS} attempts\n"
            + self._log_tails()
        )

    def _has_ports(self) -> bool:
        return getattr(self, "port", None) is not None

    def _launch_and_wait(self) -> bool:
        """True when ready; False when it exited because a port was taken; raises otherwise."""
        command = self._prepare()
        offsets = {path: _size(path) for path in (self.log_path, self._output_path)}
        with self._output_path.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                # Only this launch's output counts: an earlier run may have logged a bind error.
                fresh = "".join(_read_from(path, offset) for path, offset in offsets.items())
                if any(marker in fresh.lower() for marker in _BIND_FAILURE_MARKERS):
                    return False
                logs = self._log_tails()
                raise ServerStartError(f"{self.name} exited during start-up\n{logs}")
            if self._ready():
                return True
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"{self.name} did not answer within {self.startup_timeout:g}s\n{self._log_tails()}"
        )

    def _log_tails(self) -> str:
        parts = []
        for path in dict.fromkeys((self.log_path, self._output_path)):
            text = tail(path, _LOG_TAIL_CHARS)
            if text:
                parts.append(f"--- tail of {path} ---\n{text}")
        return "\n".join(parts) or f"(no log output in {self.directory})"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM our PID, wait up to `timeout`, then SIGKILL that PID; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        return stop_process(process, timeout)

    def kill(self) -> int | None:
        """SIGKILL our PID at once, as a crash would (no clean shutdown, no final save)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# PBKDF2-SHA512 rounds for dynamic-security passwords: the value `mosquitto_ctrl dynsec init`
# writes. Test passwords need no more.
_DYNSEC_ITERATIONS = 101


def dynamic_security(
    *, deny_subscribe: Iterable[str] = (), users: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A document for Mosquitto's dynamic-security plugin: every client (anonymous, and each of
    `users`, username -> password) may publish, receive and subscribe to anything except the
    `deny_subscribe` topic patterns, whose SUBSCRIBE the broker refuses (SUBACK 0x87 Not
    authorized to MQTT v5 clients, 0x80 to 3.1.1 ones).

    Tests use it because Mosquitto's `acl_file` never refuses a SUBSCRIBE: it grants every one
    and withholds at delivery the messages the ACL denies.
    """
    acls = [
        {"acltype": "subscribePattern", "topic": topic, "allow": False, "priority": 1}
        for topic in deny_subscribe
    ]
    acls += [
        {"acltype": kind, "topic": "#", "allow": True, "priority": 0}
        for kind in ("subscribePattern", "publishClientSend", "publishClientReceive")
    ]
    clients = []
    for username, password in (users or {}).items():
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _DYNSEC_ITERATIONS)
        clients.append(
            {
                "username": username,
                "password": base64.b64encode(digest).decode("ascii"),
                "salt": base64.b64encode(salt).decode("ascii"),
                "iterations": _DYNSEC_ITERATIONS,
                "roles": [{"rolename": "everyone"}],
            }
        )
    return {
        "clients": clients,
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "everyone"}]}],
        "anonymousGroup": "anonymous",
        "roles": [{"rolename": "everyone", "acls": acls}],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def _dynsec_plugin() -> str:
    """Debian's mosquitto package ships the plugin under its multiarch library directory."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    if not found:
        raise ServerStartError("mosquitto_dynamic_security.so not found (Debian: mosquitto)")
    return found[0]


class MosquittoServer(_ServerProcess):
    """`mosquitto -c FILE` with a listener on 127.0.0.1, persistence and its log in `directory`.

    Settings are attributes read at each start(), so a test can change one and restart; a
    restart keeps the port, so clients reconnect to the same address. `dynamic_security` (see
    `dynamic_security()`) loads Mosquitto's dynamic-security plugin with that document, for a
    broker that refuses chosen subscriptions at SUBSCRIBE.
    """

    name = "mosquitto"

    def __init__(
        self,
        directory: Path | str,
        *,
        port: int | None = None,
        allow_anonymous: bool = True,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        persistence: bool = True,
        max_queued_messages: int | None = None,
        dynamic_security: dict[str, Any] | None = None,
        extra_config: str = "",
        startup_timeout: float = 15.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.port = port
        self._fixed_ports = port is not None
        self.allow_anonymous = allow_anonymous
        self.password_file = password_file
        self.acl_file = acl_file
        self.dynamic_security = dynamic_security
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.extra_config = extra_config

    @property
    def config_path(self) -> Path:
        """The config file written at each start."""
        return self.directory / "mosquitto.conf"

    @property
    def _output_path(self) -> Path:
        # Mosquitto logs to log_path itself; stdout/stderr only carry early config errors.
        return self.directory / "mosquitto.out"

    @property
    def dynamic_security_path(self) -> Path:
        """The dynamic-security document written at each start (the plugin saves changes)."""
        return self.directory / "dynamic-security.json"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def config_text(self) -> str:
        """The mosquitto.conf this server starts with."""
        lines = [
            f"listener {self.port} {LOOPBACK}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto would switch to the `mosquitto` user, which cannot write our
            # (root-owned, private) temporary directory; "root" tells it to stay as it is.
            lines.append("user root")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.dynamic_security is not None:
            lines.append(f"plugin {_dynsec_plugin()}")
            lines.append(f"plugin_opt_config_file {self.dynamic_security_path}")
        if self.max_queued_messages is not None:
            lines.append(f"max_queued_messages {self.max_queued_messages}")
        if self.extra_config:
            lines.append(self.extra_config.strip())
        return "\n".join(lines) + "\n"

    def _prepare(self) -> list[str]:
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        if self.dynamic_security is not None:
            text = json.dumps(self.dynamic_security, indent=1)
            self.dynamic_security_path.write_text(text, encoding="utf-8")
        return ["mosquitto", "-c", str(self.config_path)]

    def _ready(self) -> bool:
        assert self.process is not None and self.port is not None
        return listens_on(self.process.pid, self.port)


# mosquitto.conf options whose value is a file or directory (ConfiguredMosquitto maps each).
_MOSQUITTO_PATH_OPTIONS = frozenset(
    {
        "acl_file",
        "cafile",
        "capath",
        "certfile",
        "keyfile",
        "password_file",
        "persistence_location",
        "psk_file",
        "crlfile",
        "dhparamfile",
        "plugin",
        "auth_plugin",
        "plugin_opt_config_file",
        "pid_file",
    }
)


class ConfiguredMosquitto(_ServerProcess):
    """Mosquitto started from a given mosquitto.conf (deploy/mosquitto.conf, say), changed only
    where a test must: every `listener PORT [ADDRESS]` gets an ephemeral port on 127.0.0.1
    (`port_for(PORT)` tells which), every file path is mapped through `paths` (a path, or a
    directory ending in `/`, to the test's own), and logging to `directory` is added (plus
    `user root` when run as root, see MosquittoServer). A path option whose value `paths` does
    not map is an error: the conf must not reach outside the test's directory unnoticed.

    `uncomment` names options whose commented lines (`#option value`) become active, for a
    documented variant of the conf (mutual TLS, say).
    """

    name = "mosquitto"

    def __init__(
        self,
        directory: Path | str,
        conf_text: str,
        paths: Mapping[str, Path],
        *,
        uncomment: Iterable[str] = (),
        startup_timeout: float = 15.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.conf_text = conf_text
        self.paths = dict(paths)
        self.uncomment = frozenset(uncomment)
        self.ports: dict[int, int] = {}  # the conf's port -> ours

    @property
    def config_path(self) -> Path:
        """The rewritten config file written at each start."""
        return self.directory / "mosquitto.conf"

    @property
    def _output_path(self) -> Path:
        return self.directory / "mosquitto.out"

    def port_for(self, conf_port: int) -> int:
        """Where the conf's `listener conf_port` listens in this run."""
        return self.ports[conf_port]

    def _listener_ports(self) -> list[int]:
        return [int(line.split()[1]) for line in self._lines() if line.split()[:1] == ["listener"]]

    def _lines(self) -> list[str]:
        lines = []
        for line in self.conf_text.splitlines():
            text = line.strip()
            if (
                text.startswith("#")
                and text[1:].split()[:1]
                and text[1:].split()[0] in (self.uncomment)
            ):
                text = text[1:].strip()
            lines.append(text)
        return lines

    def _has_ports(self) -> bool:
        return bool(self.ports)

    def _choose_ports(self) -> None:
        self.ports = {port: free_port() for port in self._listener_ports()}

    def _map_path(self, option: str, value: str) -> str:
        if value in self.paths:
            return str(self.paths[value])
        for prefix, target in self.paths.items():
            if prefix.endswith("/") and value.startswith(prefix):
                mapped = str(Path(target) / value[len(prefix) :])
                return mapped + "/" if value.endswith("/") else mapped  # a directory stays one
        raise ServerStartError(f"{option} {value}: the test maps no path for it")

    def config_text(self) -> str:
        """The conf as this server runs it."""
        out = []
        for text in self._lines():
            words = text.split()
            if not words or text.startswith("#"):
                out.append(text)
            elif words[0] == "listener":
                out.append(f"listener {self.ports[int(words[1])]} {LOOPBACK}")
            elif words[0] in _MOSQUITTO_PATH_OPTIONS and len(words) == 2:
                out.append(f"{words[0]} {self._map_path(words[0], words[1])}")
            else:
                out.append(text)
        out += [
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            out.append("user root")
        return "\n".join(out) + "\n"

    def _prepare(self) -> list[str]:
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        return ["mosquitto", "-c", str(self.config_path)]

    def _ready(self) -> bool:
        assert self.process is not None
        return all(listens_on(self.process.pid, port) for port in self.ports.values())


class InfluxdServer(_ServerProcess):
    """InfluxDB 1.6 (`influxd -config FILE`): HTTP API on 127.0.0.1, data in `directory`."""

    name = "influxd"

    def __init__(
        self,
        directory: Path | str,
        *,
        port: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.port = port
        self.rpc_port: int | None = None
        self._fixed_ports = port is not None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, e.g. http://127.0.0.1:40123."""
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        """The config file written at each start."""
        return self.directory / "influxd.conf"

    def _choose_ports(self) -> None:
        if not self._fixed_ports or self.port is None:
            self.port = free_port()
        self.rpc_port = free_port()

    def _has_ports(self) -> bool:
        return self.port is not None and self.rpc_port is not None

    def config_text(self) -> str:
        """The influxd.conf this server starts with."""
        data = self.directory
        return f"""\
reporting-disabled = true
# The RPC service (backup/restore) defaults to :8088 on every address; keep it on loopback.
bind-address = "{LOOPBACK}:{self.rpc_port}"

[meta]
  dir = "{data / "meta"}"

[data]
  dir = "{data / "data"}"
  wal-dir = "{data / "wal"}"
  query-log-enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{self.port}"
  log-enabled = false

[monitor]
  store-enabled = false
"""

    def _prepare(self) -> list[str]:
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        return ["influxd", "-config", str(self.config_path)]

    def _ready(self) -> bool:
        assert self.process is not None and self.port is not None
        return listens_on(self.process.pid, self.port) and _http_status(f"{self.url}/ping") == 204

    def _post(self, path: str, params: dict[str, str], body: bytes | None = None) -> bytes:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, data=body or b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return bytes(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise ServerQueryError(f"influxd {path} answered {exc.code}: {detail}") from exc

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Rows of every series the InfluxQL query returns, each as {column: value}.

        `time` is integer nanoseconds since the epoch. With `GROUP BY *` (or `GROUP BY tag`)
        InfluxDB moves the grouped tags out of the columns into each series' `tags`; they are
        merged back into every row, so a row always carries its tags either way. Statements that
        return no series (CREATE, DROP) give []. An error in any statement raises.
        """
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        answer = json.loads(self._post("/query", params))
        rows: list[dict[str, Any]] = []
        for result in answer.get("results", []):
            if "error" in result:
                raise ServerQueryError(f"influxd query {q!r}: {result['error']}")
            for series in result.get("series", []):
                tags = series.get("tags") or {}
                for values in series.get("values", []):
                    row = dict(zip(series["columns"], values, strict=True))
                    row.update(tags)
                    rows.append(row)
        return rows

    def create_database(self, name: str) -> None:
        """CREATE DATABASE (idempotent in InfluxDB 1.x)."""
        self.query(f'CREATE DATABASE "{_influxql_ident(name)}"')

    def write(self, lines: str, db: str, rp: str | None = None) -> None:
        """POST line protocol (nanosecond timestamps) to /write, into retention policy `rp`
        (default: the database's default policy)."""
        params = {"db": db, "precision": "ns"} | ({"rp": rp} if rp else {})
        self._post("/write", params, lines.encode("utf-8"))


def _influxql_ident(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


class VictoriaMetricsServer(_ServerProcess):
    """Debian's `victoria-metrics`: a real server for InfluxDB line protocol on /api/v2/write.

    VictoriaMetrics names each influx field `{measurement}_{field}`, keeps tags as labels (plus
    a `db` label from the `db` query parameter), stores millisecond timestamps and turns
    booleans into 1/0 and strings into 0, and keeps about 12 significant digits of a float. It
    silently drops rows older than its retention (we set 100 years) and lines it cannot parse,
    except a line longer than 256 KiB, which it refuses with a 400. Deduplication is on, so a
    point written twice (same series, same millisecond) is one sample, as InfluxDB keeps one
    point per series and time.
    """

    name = "victoria-metrics"

    def __init__(
        self,
        directory: Path | str,
        *,
        port: int | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.port = port
        self._fixed_ports = port is not None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.host}:{self.port}"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _prepare(self) -> list[str]:
        return [
            "victoria-metrics",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            f"-storageDataPath={self.directory / 'data'}",
            # Tests write and read back at once: no stale cached answers between them.
            "-search.disableCache",
            # Keep rows of any age, so tests and the demo may write fixed, old timestamps.
            "-retentionPeriod=100y",
            "-dedup.minScrapeInterval=1ms",  # one sample per series and time, as in InfluxDB
            "-loggerOutput=stderr",
        ]

    def _ready(self) -> bool:
        assert self.process is not None and self.port is not None
        return listens_on(self.process.pid, self.port) and _http_status(f"{self.url}/health") == 200

    def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> bytes:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                return bytes(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise ServerQueryError(
                f"victoria-metrics {path} answered {exc.code}: {detail}"
            ) from exc

    def flush(self) -> None:
        """Make everything written so far searchable (VictoriaMetrics buffers new rows ~1 s)."""
        self._get("/internal/force_flush")

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """Every series matching the selector: {"metric": labels, "values", "timestamps" (ms)}."""
        self.flush()
        # start=0: without it the export covers only recent data on some versions.
        body = self._get("/api/v1/export", [("match[]", match), ("start", "0")])
        return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]


def stop_quietly(server: _ServerProcess) -> None:
    """Stop a server from a finalizer without masking the test's own failure."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        server.stop()


def udp_bound_by(pid: int, port: int, host: str = LOOPBACK) -> bool:
    """True when process `pid` itself holds a UDP socket bound to host:port (Linux /proc)."""
    ip_hex = socket.inet_aton(host)[::-1].hex().upper()
    wanted = f"{ip_hex}:{port:04X}"
    try:
        # The process's own view: right also when it runs in another network namespace.
        with open(f"/proc/{pid}/net/udp", encoding="ascii") as table:
            inodes = {
                f"socket:[{fields[9]}]"
                for fields in (line.split() for line in table.readlines()[1:])
                if fields[1] == wanted
            }
        fds = Path(f"/proc/{pid}/fd")
        return any(os.readlink(fd) in inodes for fd in fds.iterdir()) if inodes else False
    except (FileNotFoundError, ProcessLookupError):
        return False


# net-snmp's names for the protocols a site file names (fieldmon.core.site.snmp).
_NET_SNMP_AUTH = {
    "md5": "MD5",
    "sha": "SHA",
    "sha224": "SHA-224",
    "sha256": "SHA-256",
    "sha384": "SHA-384",
    "sha512": "SHA-512",
}
_NET_SNMP_PRIV = {"des": "DES", "aes": "AES", "aes192": "AES-192", "aes256": "AES-256"}


@dataclass(frozen=True)
class SnmpV3User:
    """An SNMPv3 user for SnmpdServer, with the protocols named as in a site file.

    `aes_key_extension` "reeder" makes aes192/aes256 net-snmp's AES-192-C / AES-256-C (Cisco's
    key extension); "blumenthal" is net-snmp's plain AES-192 / AES-256. `access` is what the
    user's `rouser` line demands (noauth, auth, priv); by default the level the user has.
    """

    name: str
    auth: str | None = None
    auth_key: str = "auth-secret-1"
    priv: str | None = None
    priv_key: str = "priv-secret-1"
    aes_key_extension: str = "blumenthal"
    access: str | None = None

    def config_lines(self) -> list[str]:
        """Its `createUser` and `rouser` lines for snmpd.conf."""
        create = f"createUser {self.name}"
        if self.auth is not None:
            create += f' {_NET_SNMP_AUTH[self.auth]} "{self.auth_key}"'
            if self.priv is not None:
                priv = _NET_SNMP_PRIV[self.priv]
                if self.aes_key_extension == "reeder":
                    priv += "-C"
                create += f' {priv} "{self.priv_key}"'
        level = "priv" if self.priv else "auth" if self.auth else "noauth"
        return [create, f"rouser {self.name} {self.access or level}"]


class SnmpdServer(_ServerProcess):
    """net-snmp `snmpd -f` on a UDP port of 127.0.0.1; config and state in `directory`.

    SNMPCONFPATH makes it read only our snmpd.conf (`-c`) and its persistent file, never the
    system's; SNMP_PERSISTENT_DIR keeps its state in our directory, never in /var/lib/snmp.
    So a restart keeps the engine ID and counts engineBoots up, as a real device's does (with
    `-C` snmpd skipped the persistent file and came back as a new engine). A v2c community
    and a v3 authPriv (SHA/AES) user are configured, `v3_users` adds more (other protocols,
    levels and access rules), and `extra_config` adds lines such as `pass_persist`.

    `namespace` runs it inside that network namespace (`ip netns exec`, which keeps the PID),
    so its IF-MIB shows that namespace's interfaces; `listen` are the addresses it serves on
    (default 127.0.0.1) and `allow_from` the source network its community and user accept.
    """

    name = "snmpd"

    def __init__(
        self,
        directory: Path | str,
        *,
        port: int | None = None,
        community: str = "fieldmon-test",
        v3_user: str = "fieldmon",
        v3_auth_key: str = "auth-secret-1",
        v3_priv_key: str = "priv-secret-1",
        v3_users: Sequence[SnmpV3User] = (),
        extra_config: str = "",
        startup_timeout: float = 15.0,
        namespace: str | None = None,
        listen: tuple[str, ...] = (LOOPBACK,),
        allow_from: str = LOOPBACK,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        if not listen:
            raise ValueError("snmpd needs at least one address to listen on")
        self.namespace = namespace
        self.listen = listen
        self.allow_from = allow_from
        self.host = listen[0]
        self.port = port
        self._fixed_ports = port is not None
        self.community = community
        self.v3_user = v3_user
        self.v3_auth_key = v3_auth_key
        self.v3_priv_key = v3_priv_key
        self.v3_users = tuple(v3_users)
        self.extra_config = extra_config

    @property
    def config_path(self) -> Path:
        """The snmpd.conf written at each start."""
        return self.directory / "snmpd.conf"

    @property
    def persistent_dir(self) -> Path:
        """Where snmpd keeps its engine ID and USM users."""
        return self.directory / "persist"

    def _choose_ports(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            self.port = int(sock.getsockname()[1])

    def config_text(self) -> str:
        """The snmpd.conf this server starts with."""
        lines = [
            f"rocommunity {self.community} {self.allow_from}",
            f'createUser {self.v3_user} SHA "{self.v3_auth_key}" AES "{self.v3_priv_key}"',
            f"rouser {self.v3_user} priv",
            "sysLocation fieldmon test",
            "sysContact nobody",
        ]
        for user in self.v3_users:
            lines.extend(user.config_lines())
        if self.extra_config:
            lines.append(self.extra_config.strip())
        return "\n".join(lines) + "\n"

    def _prepare(self) -> list[str]:
        self.persistent_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        pidfile = self.directory / "snmpd.pid"
        # `env` (and `ip netns exec`) exec snmpd, so the PID we hold is snmpd's own.
        inside = ["ip", "netns", "exec", self.namespace] if self.namespace else []
        if ":" in str(self.directory):
            raise ValueError(
                f"snmpd's directory may not contain ':' (SNMPCONFPATH): {self.directory}"
            )
        return [
            *inside,
            "env",
            # Replaces the default search path (the persistent directory included): snmpd reads
            # its persistent file and, with -c, our config; /etc/snmp never.
            f"SNMPCONFPATH={self.persistent_dir}",
            f"SNMP_PERSISTENT_DIR={self.persistent_dir}",
            "snmpd",
            "-f",
            "-Lo",
            "-m",
            "",  # load no MIB files: numeric OIDs only, and no parse noise in the log
            "-c",
            str(self.config_path),  # also the lab's marker for this process (stop by PID)
            "-p",
            str(pidfile),
            ",".join(f"udp:{address}:{self.port}" for address in self.listen),
        ]

    def _launch_and_wait(self) -> bool:
        try:
            return super()._launch_and_wait()
        except ServerStartError as exc:
            # snmpd's words for a taken port; the base class then picks another one.
            if "Error opening specified endpoint" in str(exc):
                return False
            raise

    def _ready(self) -> bool:
        assert self.process is not None and self.port is not None
        return udp_bound_by(self.process.pid, self.port, self.listen[0])


class AlertmanagerServer(_ServerProcess):
    """Debian's `prometheus-alertmanager` on 127.0.0.1, clustering off, its data in `directory`.

    `config_text` is the alertmanager.yml written at each start (a test routes it to its own
    webhook receiver); `alerts()` reads back what Alertmanager holds via GET /api/v2/alerts.
    """

    name = "alertmanager"

    def __init__(
        self,
        directory: Path | str,
        config_text: str,
        *,
        port: int | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.config_text = config_text
        self.port = port
        self._fixed_ports = port is not None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        """The alertmanager.yml written at each start."""
        return self.directory / "alertmanager.yml"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _prepare(self) -> list[str]:
        self.config_path.write_text(self.config_text, encoding="utf-8")
        return [
            "prometheus-alertmanager",
            f"--config.file={self.config_path}",
            f"--storage.path={self.directory / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            # Empty: no gossip listener, so nothing binds beyond our one loopback port.
            "--cluster.listen-address=",
        ]

    def _ready(self) -> bool:
        assert self.process is not None and self.port is not None
        return (
            listens_on(self.process.pid, self.port) and _http_status(f"{self.url}/-/ready") == 200
        )

    def alerts(self, *, active: bool = True, silenced: bool = True) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: the alerts Alertmanager holds (resolved ones are left out)."""
        params = urllib.parse.urlencode(
            {"active": str(active).lower(), "silenced": str(silenced).lower()}
        )
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{params}", timeout=30) as reply:
                return list(json.loads(reply.read()))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise ServerQueryError(
                f"alertmanager /api/v2/alerts answered {exc.code}: {detail}"
            ) from exc


class BlackboxExporterServer(_ServerProcess):
    """Debian's `prometheus-blackbox-exporter` on 127.0.0.1 with `config_text` as blackbox.yml.

    ICMP modules need root or CAP_NET_RAW, as the fieldmon agent does.
    """

    name = "blackbox-exporter"

    def __init__(
        self,
        directory: Path | str,
        config_text: str,
        *,
        port: int | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.config_text = config_text
        self.port = port
        self._fixed_ports = port is not None

    @property
    def address(self) -> str:
        """host:port, as a Prometheus scrape target."""
        return f"{self.host}:{self.port}"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _prepare(self) -> list[str]:
        config = self.directory / "blackbox.yml"
        config.write_text(self.config_text, encoding="utf-8")
        return [
            "prometheus-blackbox-exporter",
            f"--config.file={config}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
        ]

    def _ready(self) -> bool:
        assert self.process is not None and self.port is not None
        return (
            listens_on(self.process.pid, self.port)
            and _http_status(f"http://{self.address}/-/healthy") == 200
        )


class PrometheusServer(_ServerProcess):
    """Debian's `prometheus` on 127.0.0.1: `config_text` as prometheus.yml, `rules_text` as
    rules.yml beside it (the config refers to it as `rules.yml`), its TSDB in `directory`."""

    name = "prometheus"

    def __init__(
        self,
        directory: Path | str,
        config_text: str,
        rules_text: str = "",
        *,
        port: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.config_text = config_text
        self.rules_text = rules_text
        self.port = port
        self._fixed_ports = port is not None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.host}:{self.port}"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _prepare(self) -> list[str]:
        config = self.directory / "prometheus.yml"
        config.write_text(self.config_text, encoding="utf-8")
        (self.directory / "rules.yml").write_text(self.rules_text, encoding="utf-8")
        return [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
        ]

    def _ready(self) -> bool:
        assert self.process is not None and self.port is not None
        return (
            listens_on(self.process.pid, self.port) and _http_status(f"{self.url}/-/ready") == 200
        )
