"""SMTP e-mail to on-call: one message per transition, its subject readable on a lock screen.

Subject: `[CRITICAL] pavilion-2: parent link wan down since 14:02:00 UTC (loss 100 %)`, or
`[RESOLVED] ...` when it clears (`[REPLACED] ...` when another alert of the link takes over, as
degraded -> down); a plain-text body carries every detail and the dashboard link.
smtplib runs in a worker thread so the event loop never waits on the mail server.

Sends one plain-text message per transition to every address in `to`, over one SMTP
connection per batch: Subject the lock-screen headline; body the summary, state, alert,
severity, site, parent hospital, link or target, since (and resolved at), the measured values,
the description and the dashboard link.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections import OrderedDict
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from fieldmon.collector.alerts.model import AlertState, Transition, iso_time
from fieldmon.collector.config import EmailConfig
from fieldmon.collector.notify.base import (
    Notifier,
    NotifierContext,
    NotifierKind,
    PermanentNotifyError,
    RetryableNotifyError,
    dashboard_link,
    headline,
    measured_values,
)
from fieldmon.core.config.types import read_secret

_REMEMBERED = 1000  # delivered transitions remembered, so a retried batch sends no duplicates


def message_for(
    transition: Transition, sender: str, to: list[str], dashboard: str | None
) -> EmailMessage:
    """The e-mail for one transition."""
    message = EmailMessage()
    message["Subject"] = headline(transition)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message.set_content(body_text(transition, dashboard_link(dashboard, transition)))
    return message


def body_text(transition: Transition, link: str | None) -> str:
    """Plain text: what, where, how bad, since when, where to look."""
    labels, notes = transition.labels, transition.annotations
    lines = [
        notes.get("summary", headline(transition)),
        "",
        f"State:           {transition.state.value}",
        f"Alert:           {labels['alertname']}",
        f"Severity:        {labels['severity']}",
        f"Site:            {labels['site']} ({notes.get('site_name', '')})",
        f"Parent hospital: {notes.get('parent_hospital', '')}",
        f"Link / target:   {labels['target']}",
        f"Since:           {iso_time(transition.starts_at)}",
    ]
    if transition.state is AlertState.RESOLVED and transition.ends_at is not None:
        lines.append(f"Resolved at:     {iso_time(transition.ends_at)}")
    lines.append("")
    lines.append("Measured:")
    lines += [f"  {name}: {value}" for name, value in measured_values(transition).items()]
    lines.append(f"  value: {transition.value:g}")
    if notes.get("description"):
        lines += ["", notes["description"]]
    lines += ["", f"Dashboard: {link}" if link else "Dashboard: (no dashboard_url configured)"]
    return "\n".join(lines) + "\n"


def _identity(transition: Transition) -> tuple[object, ...]:
    return (*transition.key, transition.state.value, transition.starts_at)


class EmailNotifier:
    """Sends one message per transition over one SMTP connection per batch."""

    name = "email"

    def __init__(self, config: EmailConfig, *, dashboard_url: str | None = None) -> None:
        self.config = config
        self.timeout = config.timeout
        self.dashboard_url = dashboard_url
        self._password = read_secret(config.password_file) if config.password_file else None
        self._delivered: OrderedDict[tuple[object, ...], None] = OrderedDict()

    async def send(self, transitions: list[Transition]) -> None:
        """Deliver the batch; on a retry, messages already accepted are not sent again."""
        todo = [t for t in transitions if _identity(t) not in self._delivered]
        if todo:
            await asyncio.to_thread(self._send_blocking, todo)

    def _send_blocking(self, transitions: list[Transition]) -> None:
        config = self.config
        where = f"{config.smtp_host}:{config.smtp_port}"
        try:
            with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=self.timeout) as smtp:
                if config.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if config.username is not None:
                    smtp.login(config.username, self._password or "")
                for transition in transitions:
                    message = message_for(transition, config.from_, config.to, self.dashboard_url)
                    smtp.send_message(message)
                    self._remember(transition)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            raise PermanentNotifyError(self.name, f"{where} refused the addresses: {exc}") from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentNotifyError(self.name, f"{where} refused the login: {exc}") from exc
        except smtplib.SMTPResponseException as exc:
            error = f"{where} answered {exc.smtp_code}: {exc.smtp_error!r}"
            if 400 <= exc.smtp_code < 500:
                raise RetryableNotifyError(self.name, error) from exc
            raise PermanentNotifyError(self.name, error) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Connection refused or reset, timeout, TLS failure, server disconnected.
            raise RetryableNotifyError(self.name, f"{where}: {exc}") from exc

    def _remember(self, transition: Transition) -> None:
        self._delivered[_identity(transition)] = None
        while len(self._delivered) > _REMEMBERED:
            self._delivered.popitem(last=False)

    async def close(self) -> None:
        """Nothing held open between batches."""


def _build(config: EmailConfig | None, context: NotifierContext) -> list[Notifier]:
    if config is None:
        return []
    return [EmailNotifier(config, dashboard_url=context.dashboard_url)]


KIND = NotifierKind(
    name="email",
    config_model=EmailConfig,
    section="email",
    notifier=EmailNotifier,
    build=_build,
)
