"""E-mail notifier against a real SMTP server (aiosmtpd): lock-screen subject, full body."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
    iso_time,
)
from fieldmon.collector.config import EmailConfig
from fieldmon.collector.notify import PermanentNotifyError, RetryableNotifyError
from fieldmon.collector.notify.email import EmailNotifier
from fieldmon.lab.servers import free_port

STARTS = 1_764_338_520 * 10**9  # 2025-11-28 14:02:00 UTC


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps every accepted message; refuses recipients in `refuse`."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, _server: SMTP, _session: Session, envelope: Envelope, address: str, _options: list
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, _server: SMTP, _session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or envelope.content
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Controller, Mailbox]]:
    """aiosmtpd on an ephemeral loopback port, in its own thread."""
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, mailbox
    finally:
        controller.stop()


def _config(port: int, to: list[str] | None = None) -> EmailConfig:
    return EmailConfig.model_validate(
        {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "from": "fieldmon@hospital.test",
            "to": to or ["oncall@hospital.test"],
            "timeout": 5,
        }
    )


def _transition(state: AlertState) -> Transition:
    return Transition(
        alertname=AlertName.LINK_DOWN,
        labels=alert_labels(AlertName.LINK_DOWN, "pavilion-2", "parent-gw", Severity.CRITICAL),
        annotations={
            "summary": (
                "pavilion-2: parent link parent-gw down since 14:02:00 UTC (loss 100 %)"
                if state is AlertState.FIRING
                else (
                    "pavilion-2: parent link parent-gw recovered at 14:12:00 UTC "
                    "(down from 14:02:00 UTC; loss 0 %)"
                )
            ),
            "description": "every probe lost; the agent still reports through a backup path",
            "loss_pct": "100.0" if state is AlertState.FIRING else "0.0",
            "rtt_p95_ms": "n/a",
            "since": iso_time(STARTS),
            "parent_hospital": "city-general",
            "site_name": "Pavilion 2",
        },
        state=state,
        starts_at=STARTS,
        ends_at=None if state is AlertState.FIRING else STARTS + 600 * 10**9,
        value=100.0,
        page=True,
    )


def test_firing_and_resolved_mails_read_well_on_a_phone(smtp_server) -> None:
    controller, mailbox = smtp_server
    notifier = EmailNotifier(
        _config(controller.port), dashboard_url="https://grafana.test/d/fieldmon"
    )
    asyncio.run(notifier.send([_transition(AlertState.FIRING)]))
    asyncio.run(notifier.send([_transition(AlertState.RESOLVED)]))

    firing, resolved = mailbox.messages
    assert firing["Subject"] == (
        "[CRITICAL] pavilion-2: parent link parent-gw down since 14:02:00 UTC (loss 100 %)"
    )
    assert resolved["Subject"].startswith("[RESOLVED] pavilion-2: parent link parent-gw")
    assert mailbox.envelopes[0] == ("fieldmon@hospital.test", ["oncall@hospital.test"])
    body = firing.get_content()
    for line in (
        "Site:            pavilion-2 (Pavilion 2)",
        "Parent hospital: city-general",
        "Link / target:   parent-gw",
        "Severity:        critical",
        "Since:           2025-11-28T14:02:00Z",
        "  loss_pct: 100.0",
        "Dashboard: https://grafana.test/d/fieldmon?site=pavilion-2&link=parent-gw",
    ):
        assert line in body.splitlines()
    assert "Resolved at:     2025-11-28T14:12:00Z" in resolved.get_content()


def test_a_retried_batch_sends_no_duplicates(smtp_server) -> None:
    controller, mailbox = smtp_server
    notifier = EmailNotifier(_config(controller.port))
    batch = [_transition(AlertState.FIRING), _transition(AlertState.RESOLVED)]
    asyncio.run(notifier.send(batch))
    asyncio.run(notifier.send(batch))
    assert len(mailbox.messages) == 2


def test_refused_recipient_is_permanent_and_no_server_retryable(smtp_server) -> None:
    controller, mailbox = smtp_server
    mailbox.refuse.add("nobody@hospital.test")
    refused = EmailNotifier(_config(controller.port, to=["nobody@hospital.test"]))
    with pytest.raises(PermanentNotifyError, match="refused"):
        asyncio.run(refused.send([_transition(AlertState.FIRING)]))
    nobody_home = EmailNotifier(_config(free_port()))
    with pytest.raises(RetryableNotifyError):
        asyncio.run(nobody_home.send([_transition(AlertState.FIRING)]))
    assert mailbox.messages == []
