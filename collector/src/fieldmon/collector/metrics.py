"""The collector's Prometheus metrics, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CollectorMetrics:
    """Counters for what came in, what was refused and what reached storage."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "fieldmon_envelopes_received",
            "MQTT messages received on samples topics",
            registry=self.registry,
        )
        self.rejected = Counter(
            "fieldmon_envelopes_rejected",
            "Messages refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.samples_accepted = Counter(
            "fieldmon_samples_accepted",
            "Samples decoded and queued for storage",
            registry=self.registry,
        )
        self.samples_refused = Counter(
            "fieldmon_samples_refused",
            "Samples of accepted envelopes not stored, by reason (tag_mismatch, "
            "measurement_not_allowed, unknown_target); site and agent are the envelope's",
            ["site", "agent", "reason"],
            registry=self.registry,
        )
        self.points_written = Counter(
            "fieldmon_points_written", "Points stored by the database", registry=self.registry
        )
        self.points_dead_lettered = Counter(
            "fieldmon_points_dead_lettered",
            "Points the database refused as bad data, kept in the dead-letter file",
            registry=self.registry,
        )
        self.samples_time_ahead = Counter(
            "fieldmon_samples_time_ahead",
            "Samples dated further ahead of the collector's clock than max_time_ahead (the "
            "agent's clock is wrong), dead-lettered instead of stored",
            ["site", "agent"],
            registry=self.registry,
        )
        self.write_errors = Counter(
            "fieldmon_write_errors",
            "Failed write requests, by kind (retryable, rejected)",
            ["kind"],
            registry=self.registry,
        )
        self.write_latency = Histogram(
            "fieldmon_write_latency_seconds",
            "Duration of one successful write request",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.pending_points = Gauge(
            "fieldmon_pending_points", "Points waiting to be written", registry=self.registry
        )
        self.mqtt_connected = Gauge(
            "fieldmon_mqtt_connected", "1 while connected to the broker", registry=self.registry
        )
        self.subscriptions_refused = Counter(
            "fieldmon_subscriptions_refused",
            "SUBACKs in which the broker refused a subscription (an ACL), by topic filter",
            ["topic"],
            registry=self.registry,
        )
        self.envelopes_duplicate = Counter(
            "fieldmon_envelopes_duplicate",
            "Envelopes received again (re-sends after a lost ack); stored again harmlessly",
            ["site", "agent"],
            registry=self.registry,
        )
        self.envelopes_lost = Counter(
            "fieldmon_envelopes_lost",
            "Seqs that never arrived within the loss grace (AgentDataLoss)",
            ["site", "agent"],
            registry=self.registry,
        )
        self.envelopes_missing = Gauge(
            "fieldmon_envelopes_missing",
            "Seqs not yet arrived behind newer ones (a replay in progress, or loss to come)",
            ["site", "agent"],
            registry=self.registry,
        )
        self.acks_published = Counter(
            "fieldmon_acks_published", "Ack messages sent to agents", registry=self.registry
        )
        self.spool_bytes = Gauge(
            "fieldmon_spool_bytes",
            "Bytes the disk spool takes (batches the database did not take in time)",
            registry=self.registry,
        )
        self.spool_batches_spooled = Counter(
            "fieldmon_spool_batches_spooled",
            "Batches written to the disk spool (and then acknowledged)",
            registry=self.registry,
        )
        self.spool_points_spooled = Counter(
            "fieldmon_spool_points_spooled",
            "Points written to the disk spool",
            registry=self.registry,
        )
        self.spool_batches_drained = Counter(
            "fieldmon_spool_batches_drained",
            "Spooled batches written to the database and removed from the spool",
            registry=self.registry,
        )
        self.spool_full = Gauge(
            "fieldmon_spool_full",
            "1 while the spool refuses batches (full or failing): acknowledgements are held",
            registry=self.registry,
        )
        self.spool_torn_records = Gauge(
            "fieldmon_spool_torn_records",
            "Torn or corrupt spool records skipped since start (never acknowledged batches)",
            registry=self.registry,
        )
