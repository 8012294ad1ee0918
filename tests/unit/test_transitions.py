"""Job state machine: every (current, target) pair, and which states are terminal."""

from __future__ import annotations

import itertools

import pytest

from orchestrator import errors
from orchestrator.domain.jobs import JobStatus, can_transition, transition

Q, R, S, F, C = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELED,
)

# The complete list of legal moves, written out independently of the source table.
LEGAL: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {
        (Q, R),
        (Q, C),
        (Q, F),
        (R, S),
        (R, F),
        (R, C),
        (R, Q),  # the one backwards step: nothing was sent upstream yet
    }
)

ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))


def test_table_covers_all_25_pairs() -> None:
    assert len(JobStatus) == 5
    assert len(ALL_PAIRS) == 25
    assert LEGAL.issubset(ALL_PAIRS)


@pytest.mark.parametrize(
    ("current", "target"), ALL_PAIRS, ids=[f"{c.value}->{t.value}" for c, t in ALL_PAIRS]
)
def test_transition(current: JobStatus, target: JobStatus) -> None:
    if (current, target) in LEGAL:
        assert can_transition(current, target) is True
        assert transition(current, target) is target
    else:
        assert can_transition(current, target) is False
        with pytest.raises(errors.InvalidTransition) as info:
            transition(current, target)
        assert info.value.extra == {"current": current.value, "target": target.value}
        assert info.value.status == 409


@pytest.mark.parametrize("status", list(JobStatus))
def test_self_transition_never_allowed(status: JobStatus) -> None:
    with pytest.raises(errors.InvalidTransition):
        transition(status, status)


@pytest.mark.parametrize(
    ("status", "terminal"),
    [(Q, False), (R, False), (S, True), (F, True), (C, True)],
)
def test_terminal(status: JobStatus, terminal: bool) -> None:
    assert status.terminal is terminal


@pytest.mark.parametrize("status", [S, F, C])
def test_terminal_states_have_no_way_out(status: JobStatus) -> None:
    assert not any(can_transition(status, t) for t in JobStatus)


@pytest.mark.parametrize(
    ("current", "target", "detail"),
    [
        (JobStatus.QUEUED, JobStatus.SUCCEEDED, "a queued job cannot become succeeded"),
        (JobStatus.CANCELED, JobStatus.RUNNING, "a canceled job cannot become running"),
    ],
)
def test_refusal_says_which_move(current: JobStatus, target: JobStatus, detail: str) -> None:
    with pytest.raises(errors.InvalidTransition) as info:
        transition(current, target)
    assert info.value.detail == detail
