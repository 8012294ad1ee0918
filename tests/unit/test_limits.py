"""Which queued jobs may start: ``pick`` and ``group_usage``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from orchestrator.domain.limits import Candidate, group_usage, pick

FLUX_MAX = 4
KONTEXT_MAX = 2
COMFY_MAX = 1


def groups(backend: str, model: str) -> Sequence[tuple[str, int]]:
    """Shaped like the real backends: flux-wide limit, kontext-max sub-limit."""
    if backend == "flux":
        out = [("flux", FLUX_MAX)]
        if model == "flux-kontext-max":
            out.append(("flux:flux-kontext-max", KONTEXT_MAX))
        return out
    if backend == "comfy":
        return [("comfy", COMFY_MAX)]
    return []


def c(id_: str, backend: str = "flux", model: str = "flux-pro-1.1") -> Candidate:
    return Candidate(id=id_, backend=backend, model=model)


def km(id_: str) -> Candidate:
    return c(id_, "flux", "flux-kontext-max")


def comfy(id_: str) -> Candidate:
    return c(id_, "comfy", "sdxl")


PICK_CASES: list[tuple[str, list[Candidate], Mapping[tuple[str, str], int], int, list[str]]] = [
    ("empty queue", [], {}, 10, []),
    ("all fit, queue order kept", [c("a"), c("b"), c("c")], {}, 10, ["a", "b", "c"]),
    ("priority order preserved when mixed", [comfy("x"), c("a"), km("k")], {}, 10, ["x", "a", "k"]),
    ("capacity caps the batch", [c("a"), c("b"), c("c")], {}, 2, ["a", "b"]),
    ("zero capacity", [c("a")], {}, 0, []),
    (
        "backend limit caps within one call",
        [c(str(i)) for i in range(6)],
        {},
        10,
        ["0", "1", "2", "3"],
    ),
    (
        "running jobs from other processes count",
        [c("a"), c("b"), c("c")],
        {("flux", "flux-dev"): 3},
        10,
        ["a"],
    ),
    ("backend full: nothing of it starts", [c("a")], {("flux", "flux-pro"): FLUX_MAX}, 10, []),
    (
        "blocked job does not block other groups behind it",
        [c("a"), comfy("x"), c("b")],
        {("flux", "flux-pro"): FLUX_MAX},
        10,
        ["x"],
    ),
    (
        "comfy blocked by its own limit, flux behind it still runs",
        [comfy("x1"), comfy("x2"), c("a")],
        {},
        10,
        ["x1", "a"],
    ),
    (
        "kontext-max sub-limit inside the flux-wide limit",
        [km("k1"), km("k2"), km("k3"), c("a"), c("b")],
        {},
        10,
        ["k1", "k2", "a", "b"],
    ),
    (
        "kontext-max sub-limit already used by running jobs",
        [km("k1"), c("a")],
        {("flux", "flux-kontext-max"): KONTEXT_MAX},
        10,
        ["a"],
    ),
    (
        "running kontext-max also uses the flux-wide limit",
        [c("a"), c("b"), c("c")],
        {("flux", "flux-kontext-max"): 2, ("flux", "flux-pro-1.1"): 1},
        10,
        ["a"],
    ),
    (
        "flux-wide limit full blocks kontext-max despite free sub-limit",
        [km("k1")],
        {("flux", "flux-pro"): FLUX_MAX},
        10,
        [],
    ),
    (
        "capacity counts only chosen jobs, not skipped ones",
        [comfy("x1"), comfy("x2"), comfy("x3"), c("a"), c("b")],
        {},
        2,
        ["x1", "a"],
    ),
    (
        "backend with no limit groups is unlimited",
        [c("u1", "other", "m"), c("u2", "other", "m")],
        {("other", "m"): 100},
        10,
        ["u1", "u2"],
    ),
]


@pytest.mark.parametrize(
    ("candidates", "running", "capacity", "expected"),
    [case[1:] for case in PICK_CASES],
    ids=[case[0] for case in PICK_CASES],
)
def test_pick(
    candidates: list[Candidate],
    running: Mapping[tuple[str, str], int],
    capacity: int,
    expected: list[str],
) -> None:
    assert pick(candidates, running, groups, capacity) == expected


def test_pick_does_not_mutate_running() -> None:
    running = {("flux", "flux-pro"): 1}
    pick([c("a"), c("b")], running, groups, 10)
    assert running == {("flux", "flux-pro"): 1}


USAGE_CASES: list[tuple[str, Mapping[tuple[str, str], int], dict[str, int]]] = [
    ("nothing running", {}, {}),
    ("one model", {("flux", "flux-pro"): 3}, {"flux": 3}),
    (
        "models of one backend add up",
        {("flux", "flux-pro"): 3, ("flux", "flux-dev"): 2},
        {"flux": 5},
    ),
    (
        "kontext-max counts in both groups",
        {("flux", "flux-kontext-max"): 2, ("flux", "flux-pro-1.1"): 1},
        {"flux": 3, "flux:flux-kontext-max": 2},
    ),
    (
        "backends kept apart",
        {("flux", "flux-dev"): 1, ("comfy", "sdxl"): 4},
        {"flux": 1, "comfy": 4},
    ),
    ("ungrouped backend contributes nothing", {("other", "m"): 7}, {}),
]


@pytest.mark.parametrize(
    ("running", "expected"),
    [case[1:] for case in USAGE_CASES],
    ids=[case[0] for case in USAGE_CASES],
)
def test_group_usage(running: Mapping[tuple[str, str], int], expected: dict[str, int]) -> None:
    assert group_usage(running, groups) == expected
