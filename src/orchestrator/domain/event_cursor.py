"""A position in the job event log that cannot skip a late commit: a pure decision.

Event ids come from a sequence (PostgreSQL) and are handed out when a row is inserted,
not when its transaction commits: id 103 may become visible after 104. A reader that
remembered only "the last id I saw" (``id > 104``) would never see 103. So a cursor is
``high`` (the largest id seen) plus the **gaps** below it: ids not seen yet, which may
still commit. A gap is given up after a grace period longer than any transaction (a
rolled-back insert consumes an id for good).

The cursor travels to clients as the SSE ``id:`` (and comes back as ``Last-Event-ID``):
``"104"`` without gaps, ``"104~101.103"`` with them. A plain number is a cursor too, so
``?after=N`` and the ids of older clients keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Gaps a token carries at most; with more (a storm of rolled-back inserts), the token
# falls back to just below the oldest gap: some events are sent again, none is lost.
MAX_TOKEN_GAPS = 40
MAX_GAPS = 10_000
MAX_ID = 2**62


@dataclass
class Cursor:
    high: int = 0
    # id -> when it was first missed (a monotonic clock reading)
    gaps: dict[int, float] = field(default_factory=dict)

    def accept(self, event_id: int, now: float) -> bool:
        """Record that ``event_id`` was read; True when it is new to this cursor."""
        if event_id > self.high:
            if event_id - self.high - 1 + len(self.gaps) <= MAX_GAPS:
                for missing in range(self.high + 1, event_id):
                    self.gaps[missing] = now
            self.high = event_id
            return True
        return self.gaps.pop(event_id, None) is not None

    def expire(self, now: float, grace_s: float) -> None:
        """Give up gaps older than ``grace_s``: their transactions rolled back."""
        for gap in [g for g, since in self.gaps.items() if now - since > grace_s]:
            del self.gaps[gap]

    def open_gaps(self) -> list[int]:
        return sorted(self.gaps)

    def token(self) -> str:
        if not self.gaps:
            return str(self.high)
        gaps = self.open_gaps()
        if len(gaps) > MAX_TOKEN_GAPS:
            return str(gaps[0] - 1)
        return f"{self.high}~" + ".".join(str(g) for g in gaps)

    @classmethod
    def parse(cls, token: str, now: float) -> Cursor | None:
        """The cursor a token stands for; None when it is not one."""
        high_part, tilde, gap_part = token.partition("~")
        if not high_part.isdigit() or len(high_part) > 19 or (tilde and not gap_part):
            return None
        high = min(int(high_part), MAX_ID)
        gaps: dict[int, float] = {}
        for raw in gap_part.split(".") if gap_part else []:
            if not raw.isdigit() or len(raw) > 19 or int(raw) >= high:
                return None
            gaps[int(raw)] = now
        return cls(high, gaps)
