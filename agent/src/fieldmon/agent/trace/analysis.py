"""What a path trace measured, hop by hop, and what it means: mtr's figures and a one-line summary.

Pure data and logic, standard library only (it runs in the trace subprocess and in the daemon).
A `Trace` holds one `Hop` per TTL up to the far end (or one past the last hop that answered),
each with mtr's report figures: sent, loss %, last, avg, best, worst, stdev, plus p50 and p95.

`summarize` reads the hops as mtr's users learn to: loss that starts at a hop and carries on
to the far end is on the path from that hop on; loss at one hop while later hops are clean is
that router declining to answer probes addressed to itself (ICMP rate limiting), not loss of
traffic through it. `route_change` compares two traces' hop lists (a route change).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from fieldmon.agent.stats import percentile

NO_ANSWER = "*"  # a hop's address when nothing answered at that TTL
LOSS_FLOOR_PCT = 2.0  # a hop losing less than this is clean (one probe in fifty)


@dataclass(frozen=True, slots=True)
class Hop:
    """One TTL of a trace: who answered, how often, how fast (RTTs in ms, in send order)."""

    ttl: int
    address: str  # the most frequent responder; NO_ANSWER when none answered
    sent: int
    rtts_ms: tuple[float, ...] = ()
    others: tuple[str, ...] = ()  # further responders at this TTL (load balancing, a change)

    @property
    def received(self) -> int:
        """Probes answered in time."""
        return len(self.rtts_ms)

    @property
    def loss_pct(self) -> float:
        """Percent of this TTL's probes that got no answer."""
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0

    @property
    def answered(self) -> bool:
        """True when anything answered at this TTL."""
        return bool(self.rtts_ms)

    @property
    def lossy(self) -> bool:
        """Lost probes beyond the noise floor."""
        return self.answered and self.loss_pct >= LOSS_FLOOR_PCT

    def figures(self) -> dict[str, float]:
        """mtr's report columns and our percentiles; empty when nothing answered."""
        if not self.rtts_ms:
            return {}
        ordered = sorted(self.rtts_ms)
        avg = math.fsum(ordered) / len(ordered)
        stdev = (
            math.sqrt(math.fsum((x - avg) ** 2 for x in ordered) / (len(ordered) - 1))
            if len(ordered) > 1
            else 0.0
        )
        return {
            "rtt_last_ms": self.rtts_ms[-1],
            "rtt_avg_ms": avg,
            "rtt_best_ms": ordered[0],
            "rtt_worst_ms": ordered[-1],
            "rtt_stdev_ms": stdev,
            "rtt_p50_ms": percentile(ordered, 50),
            "rtt_p95_ms": percentile(ordered, 95),
        }


@dataclass(frozen=True, slots=True)
class Trace:
    """One trace of one destination, by one protocol; `reached` when the far end answered."""

    destination: str
    protocol: str  # icmp, udp, tcp
    cycles: int
    hops: tuple[Hop, ...]
    reached: bool
    port: int | None = None  # udp / tcp
    interface: str | None = None
    started_ns: int = 0
    duration_s: float = 0.0
    fallback_from: str | None = None  # the protocol tried first, when it got no further
    errors: dict[str, int] = field(default_factory=dict)  # send errors by errno name

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (the trace subprocess prints this)."""
        data = asdict(self)
        data["hops"] = [
            {**asdict(hop), "rtts_ms": list(hop.rtts_ms), "others": list(hop.others)}
            for hop in self.hops
        ]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trace:
        """The inverse of `to_json`."""
        hops = tuple(
            Hop(
                ttl=int(hop["ttl"]),
                address=str(hop["address"]),
                sent=int(hop["sent"]),
                rtts_ms=tuple(float(x) for x in hop.get("rtts_ms", ())),
                others=tuple(str(x) for x in hop.get("others", ())),
            )
            for hop in data["hops"]
        )
        return cls(
            destination=str(data["destination"]),
            protocol=str(data["protocol"]),
            cycles=int(data["cycles"]),
            hops=hops,
            reached=bool(data["reached"]),
            port=data.get("port"),
            interface=data.get("interface"),
            started_ns=int(data.get("started_ns", 0)),
            duration_s=float(data.get("duration_s", 0.0)),
            fallback_from=data.get("fallback_from"),
            errors={str(k): int(v) for k, v in (data.get("errors") or {}).items()},
        )

    @property
    def route(self) -> tuple[str, ...]:
        """The hop list: each TTL's address, NO_ANSWER where none answered."""
        return tuple(hop.address for hop in self.hops)


def build_hops(
    sent: dict[int, int], answers: dict[int, list[tuple[str, float]]], last_ttl: int
) -> tuple[Hop, ...]:
    """Hops 1..last_ttl from probes sent per TTL and (responder, rtt_ms) answers per TTL."""
    hops = []
    for ttl in range(1, last_ttl + 1):
        got = answers.get(ttl, [])
        counts = Counter(address for address, _ in got)
        ranked = [address for address, _ in counts.most_common()]
        hops.append(
            Hop(
                ttl=ttl,
                address=ranked[0] if ranked else NO_ANSWER,
                sent=sent.get(ttl, 0),
                rtts_ms=tuple(rtt for _, rtt in got),
                others=tuple(ranked[1:]),
            )
        )
    return tuple(hops)


# --- what it means -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathSummary:
    """The one line for the NOC and on-call, and what it is based on."""

    text: str
    verdict: str  # clean, far_end, loss_from, no_answer_beyond, silent
    loss_hop: int | None = None  # where loss starts (or the first hop that never answers)
    loss_address: str | None = None
    rate_limited: tuple[int, ...] = ()  # hops that drop only probes addressed to themselves


def _name(hop: Hop) -> str:
    return f"hop {hop.ttl} ({hop.address})"


def _rate_limit_words(hops: list[Hop]) -> str:
    if not hops:
        return ""
    names = ", ".join(_name(hop) for hop in hops)
    verb, pronoun = ("drops", "itself") if len(hops) == 1 else ("drop", "themselves")
    return f"{names} {verb} only probes addressed to {pronoun} (rate limiting)"


def _exceeds(hop: Hop, other: Hop) -> bool:
    """True when `hop` lost clearly more than `other`: by 10 points and two standard errors."""
    lost = (hop.sent - hop.received, other.sent - other.received)
    if not hop.sent or not other.sent or hop.loss_pct - other.loss_pct < 10:
        return False
    pooled = sum(lost) / (hop.sent + other.sent)
    error = math.sqrt(pooled * (1 - pooled) * (1 / hop.sent + 1 / other.sent))
    return (hop.loss_pct - other.loss_pct) / 100 > 2 * error


def _rate_limited(answered: list[Hop]) -> list[Hop]:
    """Hops that lose clearly more than some hop after them: loss that does not carry on
    along the path is the router declining to answer, not traffic lost through it."""
    return [
        hop
        for index, hop in enumerate(answered[:-1])
        if hop.lossy and _exceeds(hop, min(answered[index + 1 :], key=lambda h: h.loss_pct))
    ]


def summarize(trace: Trace) -> PathSummary:
    """Where on the path the loss is, in one line (see the module docstring)."""
    hops = list(trace.hops)
    answered = [hop for hop in hops if hop.answered]
    if not answered:
        return PathSummary(
            f"no hop answered {trace.protocol} probes (not even the first router)",
            "silent",
            loss_hop=1,
            loss_address=NO_ANSWER,
        )
    if not trace.reached:
        last = answered[-1]
        limited = _rate_limited(answered)
        text = (
            f"no answer beyond {_name(last)}: the path breaks after it "
            f"({trace.protocol} probes to {trace.destination} never arrived)"
        )
        if limited:
            text += "; " + _rate_limit_words(limited)
        return PathSummary(
            text,
            "no_answer_beyond",
            loss_hop=last.ttl + 1,
            loss_address=NO_ANSWER,
            rate_limited=tuple(hop.ttl for hop in limited),
        )
    end = hops[-1]
    if not end.lossy:
        # Whatever loss a hop shows, none of it reaches the far end.
        limited = [hop for hop in answered[:-1] if hop.lossy]
        if limited:
            words = _rate_limit_words(limited)
            beyond = "it" if len(limited) == 1 else "them"
            return PathSummary(
                f"{words}; the path beyond {beyond} is clean, no loss at the far end",
                "clean",
                rate_limited=tuple(hop.ttl for hop in limited),
            )
        return PathSummary(
            f"no loss on the path ({trace.cycles} cycles, {len(hops)} hops)", "clean"
        )
    limited = _rate_limited(answered)
    # The run of lossy hops that reaches the far end (hops that never answer say nothing);
    # it starts at its first hop whose loss is not mostly rate limiting.
    run = [end]
    for hop in reversed(answered[:-1]):
        if not hop.lossy:
            break
        run.insert(0, hop)
    onset = next(hop for hop in run if hop is end or hop not in limited)
    limited = [hop for hop in limited if hop.ttl < onset.ttl]
    extra = f"; {_rate_limit_words(limited)}" if limited else ""
    if onset is end:
        return PathSummary(
            f"no loss on the path; the loss is at the far end "
            f"({end.address}, {end.loss_pct:.0f} %){extra}",
            "far_end",
            loss_hop=end.ttl,
            loss_address=end.address,
            rate_limited=tuple(hop.ttl for hop in limited),
        )
    before = "hop 1 clean" if onset.ttl == 2 else f"hops 1-{onset.ttl - 1} clean"
    if onset.ttl == 1:
        before = "from the first router on"
    elif any(hop.lossy for hop in answered if hop.ttl < onset.ttl):
        before = "hops before it clean but for rate limiting"
    return PathSummary(
        f"loss starts at hop {onset.ttl}, {onset.address}: {onset.loss_pct:.0f} % there, "
        f"{end.loss_pct:.0f} % at the far end; {before}{extra}",
        "loss_from",
        loss_hop=onset.ttl,
        loss_address=onset.address,
        rate_limited=tuple(hop.ttl for hop in limited),
    )


def route_change(old: tuple[str, ...], new: tuple[str, ...]) -> str | None:
    """Words for how the hop list changed, or None when it did not.

    A hop that did not answer in one of them is no evidence of a change; a different
    address at the same TTL, or a different number of hops to the far end, is.
    """
    differs = len(old) != len(new) or any(
        a != b and NO_ANSWER not in (a, b) for a, b in zip(old, new, strict=False)
    )
    if not differs:
        return None
    return f"was {' > '.join(old)}, now {' > '.join(new)}"


def render_table(trace: Trace) -> str:
    """An mtr --report style table: one line per hop."""
    header = (
        f"{'HOP':>3}  {'ADDRESS':<39} {'LOSS%':>6} {'SNT':>4} {'LAST':>7} {'AVG':>7} "
        f"{'BEST':>7} {'WRST':>7} {'STDEV':>7}"
    )
    lines = [header]
    for hop in trace.hops:
        f = hop.figures()
        cells = [f"{hop.ttl:>3}.", f"{hop.address:<39}", f"{hop.loss_pct:>5.1f}%", f"{hop.sent:>4}"]
        for key in ("rtt_last_ms", "rtt_avg_ms", "rtt_best_ms", "rtt_worst_ms", "rtt_stdev_ms"):
            cells.append(f"{f[key]:>7.1f}" if key in f else f"{'':>7}")
        lines.append(" ".join(cells))
    return "\n".join(lines)
