"""Recovery decision for a job whose worker vanished: all 8 input combinations."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.engine.recovery import Action, decide

# (has_handle, submitting, cancel_requested) -> action
TABLE: dict[tuple[bool, bool, bool], Action] = {
    # an upstream handle exists: always reattach, never resubmit (even when
    # cancelling -- the worker reattaches and cancels from there)
    (True, False, False): Action.REATTACH,
    (True, False, True): Action.REATTACH,
    (True, True, False): Action.REATTACH,
    (True, True, True): Action.REATTACH,
    # no handle, cancel requested: nothing runs upstream that we know of
    (False, False, True): Action.CANCEL,
    (False, True, True): Action.CANCEL,
    # no handle, submit was in flight: may have reached upstream, never resend
    (False, True, False): Action.FAIL_SUBMIT_INTERRUPTED,
    # nothing was sent: run it again
    (False, False, False): Action.REQUEUE,
}


def test_table_is_complete() -> None:
    assert set(TABLE) == set(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize(
    ("has_handle", "submitting", "cancel_requested", "expected"),
    [(*k, v) for k, v in TABLE.items()],
)
def test_decide(
    has_handle: bool, submitting: bool, cancel_requested: bool, expected: Action
) -> None:
    assert (
        decide(has_handle=has_handle, submitting=submitting, cancel_requested=cancel_requested)
        is expected
    )
