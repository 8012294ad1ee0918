"""A position in the job event log that cannot skip a late commit: a pure decision.

Event ids come from a sequence (PostgreSQL) and are handed out when a row is inserted,
not when its transaction commits: id 103 may become visible after 104. A reader that
remembered only "the last id I saw" (``id > 104``) would never see 103. So a cursor is
``high`` (the largest id seen) plus the **gaps** below it: ids not seen yet, which may
still commit. A gap is given up after a grace period longer than any transaction (a
rolled-back insert consumes an id for good).

The cursor travels to clients as the SSE ``id:`` (and comes back as ``Last-Event-ID``):
``"104"`` without gaps, ``"104~101.103"`` with them, ``"104~90-95.101"`` with a run of
them. A plain number is a cursor too, so ``?after=N`` and the ids of older clients keep
working.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Runs of gaps a token carries at most; with more (a storm of rolled-back inserts), the
# token falls back to just below the oldest gap: some events are sent again, none is lost.
MAX_TOKEN_GAPS = 40
MAX_GAPS = 10_000
MAX_ID = 2**62


@dataclass
class Cursor:
    high: int = 0
    # id -> when it was first missed (a monotonic clock reading)
    gaps: dict[int, float] = field(default_factory=dict)
    # the token's gap part and the sorted gaps, kept until the gaps change (a reader
    # asks for a token after every event: with many gaps, rebuilding it each time
    # would cost more than the events)
    _gap_part: str | None = field(default=None, repr=False, compare=False)
    _sorted: list[int] | None = field(default=None, repr=False, compare=False)

    def accept(self, event_id: int, now: float) -> bool:
        """Record that ``event_id`` was read; True when it is new to this cursor."""
        if event_id > self.high:
            jump = event_id - self.high - 1
            if jump and jump + len(self.gaps) <= MAX_GAPS:
                for missing in range(self.high + 1, event_id):
                    self.gaps[missing] = now
                self._changed()
            self.high = event_id
            return True
        if self.gaps.pop(event_id, None) is None:
            return False
        self._changed()
        return True

    def expire(self, now: float, grace_s: float) -> None:
        """Give up gaps older than ``grace_s``: their transactions rolled back."""
        old = [g for g, since in self.gaps.items() if now - since > grace_s]
        for gap in old:
            del self.gaps[gap]
        if old:
            self._changed()

    def drop_seen_by(self, other: Cursor) -> None:
        """Forget the gaps ``other`` has seen (committed ids, read by another reader):
        they are not going to commit late."""
        if not self.gaps:
            return
        seen = [g for g in self.gaps if g <= other.high and g not in other.gaps]
        for g in seen:
            del self.gaps[g]
        if seen:
            self._changed()

    def open_gaps(self) -> list[int]:
        if self._sorted is None:
            self._sorted = sorted(self.gaps)
        return list(self._sorted)

    def token(self) -> str:
        if not self.gaps:
            return str(self.high)
        if self._gap_part is None:
            self._gap_part = _encode_gaps(self.open_gaps())
        if not self._gap_part:  # too many runs: from just below the oldest gap
            return str(self.open_gaps()[0] - 1)
        return f"{self.high}~{self._gap_part}"

    def _changed(self) -> None:
        self._gap_part = None
        self._sorted = None

    @classmethod
    def parse(cls, token: str, now: float) -> Cursor | None:
        """The cursor a token stands for; None when it is not one."""
        high_part, tilde, gap_part = token.partition("~")
        if not _is_id(high_part) or (tilde and not gap_part):
            return None
        high = min(int(high_part), MAX_ID)
        gaps: list[int] = []
        for raw in gap_part.split(".") if gap_part else []:
            first, dash, last = raw.partition("-")
            if not _is_id(first) or (dash and not _is_id(last)):
                return None
            lo = int(first)
            hi = int(last) if dash else lo
            if hi < lo or hi >= high:
                return None
            if len(gaps) + hi - lo + 1 > MAX_GAPS:
                # more gaps than a cursor keeps: resend from just below the oldest
                return cls(min([lo, *gaps]) - 1)
            gaps.extend(range(lo, hi + 1))
        return cls(high, dict.fromkeys(gaps, now))


def _is_id(raw: str) -> bool:
    return raw.isdigit() and len(raw) <= 19


def _encode_gaps(gaps: list[int]) -> str:
    """``[90, 91, 92, 101, 103, 104]`` -> ``"90-92.101.103.104"``; ``""`` when there are
    more than ``MAX_TOKEN_GAPS`` runs."""
    runs: list[str] = []
    start = prev = gaps[0]
    for g in [*gaps[1:], None]:
        if g is not None and g == prev + 1:
            prev = g
            continue
        if prev - start >= 2:
            runs.append(f"{start}-{prev}")
        else:
            runs.extend(str(i) for i in range(start, prev + 1))
        if len(runs) > MAX_TOKEN_GAPS:
            return ""
        if g is not None:
            start = prev = g
    return ".".join(runs)
