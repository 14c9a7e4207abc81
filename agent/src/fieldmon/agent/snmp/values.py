"""The Python values SNMP answers become, shared without importing pysnmp."""

from __future__ import annotations

Value = int | bytes | str  # integers of every SNMP kind, octet strings, OIDs in dotted form
Column = dict[str, Value]  # row index ("1", "0.12.34.56.78.90.1") -> value
