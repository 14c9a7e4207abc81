"""The collector's own config file."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    Field,
    HttpUrl,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fieldmon.collector.retention.config import RetentionConfig
from fieldmon.collector.storage.config import InfluxConfig
from fieldmon.core.config.errors import FieldValueError
from fieldmon.core.config.hosts import is_loopback_host
from fieldmon.core.config.loader import load_model
from fieldmon.core.config.types import Duration, SecretFile, StrictModel, read_secret
from fieldmon.core.linkstate import DEFAULT_RULES, DEFAULT_THRESHOLDS
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.wire.codec import DEFAULT_MAX_PAYLOAD_BYTES

# Deliberately loose: the SMTP server judges an address; this catches typos like a missing @.
EmailAddress = Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]

# Samples dated further ahead of the collector's clock than this are refused (see CollectorConfig).
DEFAULT_MAX_TIME_AHEAD_S = 600.0


class Role(StrEnum):
    """What this collector process does (docs/contract.md, Scaling out)."""

    INGEST = "ingest"
    ALERTS = "alerts"


class CollectorBrokerConfig(BrokerConfig):
    """Broker settings plus the persistent session the broker keeps while we are down."""

    client_id: str = "fieldmon-collector"
    session_expiry: Annotated[Duration, Field(ge=0)] = 86400.0
    shared_group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    max_payload_bytes: Annotated[int, Field(ge=1024)] = DEFAULT_MAX_PAYLOAD_BYTES
    # Messages the broker may send before we acknowledge; we ack only after a durable write.
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 2000


class AlertingConfig(StrictModel):
    """Collector-wide alert defaults; a link's own thresholds in its site file win.

    The link rules start from the contract's defaults in fieldmon.core.linkstate, which the
    agent's own judgement of its links (the hooks' link events) uses too: a value overridden
    here changes what the collector pages on, not what the agents' hooks see.
    """

    silence_timeout: Annotated[Duration, Field(gt=0)] = 60.0
    for_rounds: Annotated[int, Field(ge=1, le=100)] = DEFAULT_RULES.for_rounds
    clear_rounds: Annotated[int, Field(ge=1, le=100)] = DEFAULT_RULES.clear_rounds
    loss_pct: Annotated[float, Field(gt=0, le=100)] = DEFAULT_THRESHOLDS.loss_pct
    rtt_ms: Annotated[float, Field(gt=0)] = DEFAULT_THRESHOLDS.rtt_ms
    jitter_ms: Annotated[float, Field(gt=0)] = DEFAULT_THRESHOLDS.jitter_ms
    # More than flap_changes state changes within flap_window make a link `flapping`.
    flap_changes: Annotated[int, Field(ge=2, le=1000)] = DEFAULT_RULES.flap_changes
    flap_window: Annotated[Duration, Field(gt=0)] = DEFAULT_RULES.flap_window_ns / 10**9
    # A round arriving later than its link's interval plus this is history: it never pages.
    late_after: Annotated[Duration, Field(ge=0)] = 30.0
    # A last-will `offline` pages only if no birth follows within this (agent restarts stay quiet).
    offline_grace: Annotated[Duration, Field(ge=0)] = 15.0
    # A gap in an agent's seqs counts as lost (AgentDataLoss) once open this long; shorter gaps
    # are a fresh-first replay still draining.
    data_loss_grace: Annotated[Duration, Field(gt=0)] = 3600.0
    # AgentDataLoss resolves once this long passes without another envelope or sample lost.
    data_loss_clear: Annotated[Duration, Field(gt=0)] = 3600.0
    # Device and agent alerts (fieldmon.collector.alerts.kinds); a site file's `alerting`
    # section overrides the thresholds and durations (not the clear settings) for its site.
    ap_down_polls: Annotated[int, Field(ge=1, le=100)] = 3  # up=0 (or no row) this many polls
    interface_down_polls: Annotated[int, Field(ge=1, le=100)] = 3  # oper_up=0 this many polls
    device_clear_polls: Annotated[int, Field(ge=1, le=100)] = 2  # ApDown/InterfaceDown clear
    uplink_util_pct: Annotated[float, Field(gt=0, le=100)] = 90.0
    uplink_saturated_for: Annotated[Duration, Field(ge=0)] = 300.0
    backlog_depth: Annotated[int, Field(ge=1)] = 5000  # samples waiting in the agent's outbox
    # ...or the oldest unacknowledged sample this old (`outbox_age_s`, where the agent reports it)
    backlog_age: Annotated[Duration, Field(gt=0)] = 900.0
    backlog_for: Annotated[Duration, Field(ge=0)] = 300.0
    power_for: Annotated[Duration, Field(ge=0)] = 60.0  # under-voltage / throttled this long
    # UplinkSaturated, AgentBacklog and AgentPower clear after this long under 80 % / unset.
    condition_clear_for: Annotated[Duration, Field(ge=0)] = 120.0


class AlertmanagerConfig(StrictModel):
    """Prometheus Alertmanager API v2."""

    url: HttpUrl
    # Firing alerts are re-sent this often, with endsAt four intervals ahead (notify/alertmanager).
    resend_interval: Annotated[Duration, Field(gt=0)] = 60.0
    timeout: Annotated[Duration, Field(gt=0)] = 10.0  # per HTTP request


_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def read_url_file(path: Path) -> str:
    """The URL held by a secret file (`url_file`); ValueError, never quoting it, when it is not
    an http(s) URL."""
    text = read_secret(path).strip()
    try:
        return str(_HTTP_URL.validate_python(text))
    except ValidationError:
        # The content is a secret: say what is wrong without repeating it.
        raise ValueError(
            f"{str(path)!r} does not hold an http:// or https:// URL on its first line"
        ) from None


class WebhookConfig(StrictModel):
    """A generic JSON webhook, HMAC-SHA256 signed with secrets from files."""

    # Where to POST: `url`, or `url_file` when the URL carries a token (most do: keep it out of
    # the config file, which is not secret).
    url: HttpUrl | None = None
    url_file: SecretFile | None = None
    # The signing secret; `secret_files` adds more, for rotation: every request is signed with
    # each (X-Fieldmon-Signatures), so receivers move to the new one at their own pace.
    secret_file: SecretFile | None = None
    secret_files: list[SecretFile] = Field(default_factory=list)
    timeout: Annotated[Duration, Field(gt=0)] = 10.0  # per HTTP request

    @model_validator(mode="after")
    def _one_url(self, info: ValidationInfo) -> WebhookConfig:
        if (self.url is None) == (self.url_file is None):
            raise FieldValueError(
                ("url",), "give url or url_file (a secret file holding the URL), not both"
            )
        context = info.context or {}
        checked = context.get("check_files") is not False and not context.get("shape_only")
        if self.url_file is not None and checked:
            try:
                read_url_file(self.url_file)
            except (OSError, ValueError) as exc:
                raise FieldValueError(("url_file",), str(exc)) from exc
        return self

    @property
    def secrets(self) -> list[Path]:
        """Every signing secret file: secret_file first, then secret_files."""
        return [*([self.secret_file] if self.secret_file else []), *self.secret_files]

    def target(self) -> str:
        """The URL to POST to, read from url_file when given (a secret: never log it whole)."""
        if self.url_file is not None:
            return read_url_file(self.url_file)
        return str(self.url)


class EmailConfig(StrictModel):
    """SMTP e-mail to on-call."""

    smtp_host: Annotated[str, Field(min_length=1)]
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    from_: EmailAddress = Field(alias="from")
    to: Annotated[list[EmailAddress], Field(min_length=1)]
    starttls: bool = False
    username: str | None = None
    password_file: SecretFile | None = None
    timeout: Annotated[Duration, Field(gt=0)] = 30.0  # per SMTP conversation


class MqttAlertsConfig(StrictModel):
    """The retained alerts topic per site, on the collector's own broker connection."""

    enabled: bool = True
    # The published sets are rebuilt from the alert engine's this often (after a restart, a
    # missed publish); only a site whose set differs is published again.
    refresh_interval: Annotated[Duration, Field(gt=0)] = 300.0


class NotifyConfig(StrictModel):
    """Where notifications go; each notifier is optional."""

    alertmanager: AlertmanagerConfig | None = None
    mqtt: MqttAlertsConfig = Field(default_factory=MqttAlertsConfig)  # on unless disabled
    webhook: list[WebhookConfig] = Field(default_factory=list)
    email: EmailConfig | None = None
    dashboard_url: HttpUrl | None = None  # base link put in every notification
    # Per notifier: transitions kept while it is slow or down; past this the oldest are dropped.
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8  # per batch, then it is dropped (logged)
    backoff_max: Annotated[Duration, Field(gt=0)] = 60.0  # cap of the jittered retry backoff


class HttpAuthConfig(StrictModel):
    """Who may read the status page, the API and /metrics; /healthz stays open (it carries no
    address and no credential)."""

    token_file: SecretFile | None = None  # `Authorization: Bearer <token>`: Prometheus, scripts
    username: Annotated[str, Field(min_length=1, pattern=r"^[^:]+$")] | None = None  # basic auth
    password_file: SecretFile | None = None  # basic auth, for a browser on the status page

    @model_validator(mode="after")
    def _a_method(self) -> HttpAuthConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together (basic authentication)")
        if self.token_file is None and self.username is None:
            raise ValueError("give token_file, or username and password_file, or both")
        return self


class HttpConfig(StrictModel):
    """The collector's HTTP endpoint: status page, health, metrics, API."""

    listen: str = "127.0.0.1:8480"
    auth: HttpAuthConfig | None = None  # required when listen is beyond loopback

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT (for example 127.0.0.1:8480)")
        return value

    @model_validator(mode="after")
    def _auth_beyond_loopback(self) -> HttpConfig:
        if self.auth is None and not is_loopback_host(self.host):
            raise FieldValueError(
                ("listen",),
                f"{self.listen!r} is reachable from other machines, and the status page, the "
                "API and /metrics show every site and alert: add http.auth (token_file, or "
                "username and password_file), or listen on 127.0.0.1 behind a reverse proxy "
                "that authenticates",
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class SpoolConfig(StrictModel):
    """The disk spool: batches InfluxDB does not take within `retry_budget` wait here, durably.

    A spooled batch is acknowledged to the broker and the agents (it is fsync'd first) and
    written to InfluxDB, oldest first, once it answers again. When the spool is full the
    collector stops acknowledging, so the broker and the agents' outboxes keep the data.
    """

    enabled: bool = True
    dir: Path | None = None  # default: data_dir/spool; relative paths are relative to this file
    max_mb: Annotated[float, Field(gt=0)] = 1024.0  # disk the spool may take, in MiB
    segment_mb: Annotated[float, Field(gt=0, le=1024)] = 16.0  # size of one segment file
    # In-memory retries of a batch (429 / 5xx / timeouts / refused) before it is spooled.
    retry_budget: Annotated[Duration, Field(ge=0)] = 5.0


class CollectorConfig(StrictModel):
    """Everything the collector daemon needs."""

    broker: CollectorBrokerConfig
    influxdb: InfluxConfig
    site_configs: Path  # the inventory: which agents belong to which site
    roles: Annotated[list[Role], Field(min_length=1)] = [Role.INGEST, Role.ALERTS]
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    data_dir: Path = Path("/var/lib/fieldmon-collector")  # dead letters, alert state, the spool
    # Samples dated further ahead of this collector's clock are dead-lettered, not stored or
    # judged: the agent's clock is wrong (see ingest.split_by_clock).
    max_time_ahead: Annotated[Duration, Field(gt=0)] = DEFAULT_MAX_TIME_AHEAD_S
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    # Raw rows' retention and the rollups kept longer: `fieldmon-collector retention --apply`
    # sets them up in InfluxDB (the daemon itself never changes them).
    retention: RetentionConfig | None = None

    @property
    def spool_dir(self) -> Path:
        """Where the spool's segment files live."""
        return self.spool.dir if self.spool.dir is not None else self.data_dir / "spool"


def load_collector_config(path: Path | str, *, shape_only: bool = False) -> CollectorConfig:
    """Load and validate the collector file; site_configs is relative to the file.

    `shape_only=True` checks that secret files exist, not what they hold or their modes: for the
    example in deploy/, whose secrets are placeholders.
    """
    path = Path(path)
    config = load_model(path, CollectorConfig, shape_only=shape_only)
    if not config.site_configs.is_absolute():
        config.site_configs = (path.parent / config.site_configs).resolve()
    if not config.data_dir.is_absolute():
        config.data_dir = (path.parent / config.data_dir).resolve()
    if config.spool.dir is not None and not config.spool.dir.is_absolute():
        config.spool.dir = (path.parent / config.spool.dir).resolve()
    return config
