"""Which queued jobs may start now: a pure function of the queue head, what is
already running (in every process), and the per-backend limits."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# (group key, maximum active) pairs a job counts against, e.g.
# [("flux", 24), ("flux:flux-kontext-max", 6)].
LimitGroups = Callable[[str, str], Sequence[tuple[str, int]]]


@dataclass(frozen=True)
class Candidate:
    id: str
    backend: str
    model: str


def group_usage(running: Mapping[tuple[str, str], int], groups: LimitGroups) -> dict[str, int]:
    usage: dict[str, int] = {}
    for (backend, model), count in running.items():
        for key, _limit in groups(backend, model):
            usage[key] = usage.get(key, 0) + count
    return usage


def pick(
    candidates: Sequence[Candidate],
    running: Mapping[tuple[str, str], int],
    groups: LimitGroups,
    capacity: int,
) -> list[str]:
    """Ids to claim, in queue order. A job blocked by its own limit does not block
    jobs behind it that count against other limits."""
    usage = group_usage(running, groups)
    chosen: list[str] = []
    for cand in candidates:
        if len(chosen) >= capacity:
            break
        limits = groups(cand.backend, cand.model)
        if all(usage.get(key, 0) < limit for key, limit in limits):
            chosen.append(cand.id)
            for key, _limit in limits:
                usage[key] = usage.get(key, 0) + 1
    return chosen
