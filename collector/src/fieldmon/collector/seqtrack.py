"""Per-agent envelope seq accounting: duplicates, gaps still expected, and gaps given up as lost.

Agents replay fresh-first after an outage, so a gap in seqs is normal for a while: the newest
envelopes arrive before the backlog. A gap counts as lost only when it has stayed open for
`loss_grace` seconds; a late envelope that fills it after that is counted as recovered.
State lives in memory: after a collector restart counting begins again at the first seq seen.

A coalesced envelope (an agent's backlog replay) stands for several seqs, each counted as if it
had come alone (`observe_seqs`). After a day-long outage tens of thousands of gaps are open at
once, so nothing here scans them per envelope: gaps are given up only once the oldest of them
can have outlived the grace (`AgentSeqs.next_expiry`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# A jump further than this is a restarted count (an agent whose outbox was lost), not a gap.
MAX_GAP = 100_000


@dataclass
class AgentSeqs:
    """What one agent's seqs look like from here."""

    contiguous: int  # every seq <= this has been received (or given up as lost)
    above: set[int] = field(default_factory=set)  # received seqs beyond `contiguous`
    gap_since: dict[int, float] = field(default_factory=dict)  # missing seq -> first noticed
    received: int = 0
    duplicates: int = 0
    lost: int = 0
    recovered: int = 0
    lost_seqs: set[int] = field(default_factory=set)
    # No gap can be given up before this (collector clock); 0: not known, look at every gap.
    next_expiry: float = field(default=0.0, compare=False)

    @property
    def missing(self) -> int:
        """Seqs between `contiguous` and the highest seen that have not arrived (yet)."""
        return len(self.gap_since)


@dataclass(frozen=True)
class SeqVerdict:
    """What one envelope's seqs meant."""

    duplicates: int = 0  # seqs already received (re-sends; still stored, they overwrite)
    newly_lost: int = 0  # gaps given up by this observation

    @property
    def duplicate(self) -> bool:
        """True when any seq had been received before."""
        return self.duplicates > 0


class SeqTracker:
    """Counts envelopes per (site, agent) by seq."""

    def __init__(self, loss_grace: float) -> None:
        self._loss_grace = loss_grace
        self.agents: dict[tuple[str, str], AgentSeqs] = {}

    def observe(self, site: str, agent: str, seq: int, now: float) -> SeqVerdict:
        """Account for one envelope; duplicates are still stored (they overwrite themselves)."""
        return self.observe_seqs(site, agent, (seq,), now)

    def observe_seqs(self, site: str, agent: str, seqs: Sequence[int], now: float) -> SeqVerdict:
        """Account for the seqs one (coalesced) envelope stands for, ascending, each as if it
        had come alone."""
        state = self.agents.get((site, agent))
        if state is None:
            state = self.agents[(site, agent)] = AgentSeqs(contiguous=seqs[0] - 1)
        duplicates = 0
        # The highest seq received, kept here rather than taken from `above` for every seq.
        highest = max(state.above, default=state.contiguous)
        for seq in seqs:
            if seq in state.lost_seqs:
                state.lost_seqs.discard(seq)
                state.recovered += 1
                state.received += 1
                continue
            if seq - highest > MAX_GAP:
                # The agent lost its outbox and restarted its seqs from a time base: a new
                # count, not a trillion missing envelopes.
                state = self.agents[(site, agent)] = AgentSeqs(
                    contiguous=seq - 1, received=state.received, duplicates=state.duplicates,
                    lost=state.lost, recovered=state.recovered,
                )  # fmt: skip
                highest = seq - 1
            if seq <= state.contiguous or seq in state.above:
                state.duplicates += 1
                duplicates += 1
                continue
            state.received += 1
            if seq > highest + 1:
                for missing in range(highest + 1, seq):
                    state.gap_since.setdefault(missing, now)
                if state.next_expiry:  # 0: not known yet, the next expiry looks at them all
                    state.next_expiry = min(state.next_expiry, now + self._loss_grace)
            state.gap_since.pop(seq, None)
            state.above.add(seq)
            highest = max(highest, seq)
            _advance(state)
        return SeqVerdict(duplicates=duplicates, newly_lost=self.expire_agent(state, now))

    def expire(self, now: float) -> int:
        """Give up gaps older than the grace across all agents; returns how many."""
        return sum(self.expire_agent(state, now) for state in self.agents.values())

    def expire_agent(self, state: AgentSeqs, now: float) -> int:
        """Give up one agent's gaps older than the grace; returns how many."""
        if now < state.next_expiry:
            return 0
        grace = self._loss_grace
        expired = [seq for seq, since in state.gap_since.items() if now - since >= grace]
        # A gap opened later expires later still, so this holds until the oldest left expires.
        pending = (since for since in state.gap_since.values() if now - since < grace)
        state.next_expiry = min(pending, default=math.inf) + grace
        for seq in expired:
            del state.gap_since[seq]
            state.lost_seqs.add(seq)
            state.above.add(seq)  # treated as settled so `contiguous` can move past it
        state.lost += len(expired)
        if expired:
            _advance(state)
        return len(expired)


def _advance(state: AgentSeqs) -> None:
    while state.contiguous + 1 in state.above:
        state.contiguous += 1
        state.above.discard(state.contiguous)
