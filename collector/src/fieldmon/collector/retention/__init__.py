"""Retention and rollups: raw rows for weeks, per-measurement rollups for years.

`config` is the collector file's `retention:` section, `rollups` what a rollup row holds,
`influxql` its InfluxDB 1.x form (retention policies, continuous queries), `flux` its 2.x form
(buckets, tasks) and `command` the `fieldmon-collector retention` command.
"""
