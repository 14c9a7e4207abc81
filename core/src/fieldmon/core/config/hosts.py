"""Whether a configured host is this machine: the line between lab settings and real ones."""

from __future__ import annotations

import ipaddress

# Names every system resolves to loopback without asking DNS (RFC 6761 reserves `localhost.`).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (bracketed or not), `localhost` and `*.localhost`.

    By the name as written, never by resolving it: a name that resolves to loopback today may not
    on the site's network tomorrow, and the answer must not depend on where `validate` runs.
    """
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
