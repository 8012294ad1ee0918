"""Recovery decision for a job whose lease holder vanished: all 16 input combinations."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.engine.recovery import Action, decide

# (has_handle, submitting, cancel_requested, holder_may_live) -> action
TABLE: dict[tuple[bool, bool, bool, bool], Action] = {}
for live in (False, True):
    TABLE.update(
        {
            # an upstream handle exists: always reattach, never resubmit (even when
            # cancelling -- the worker reattaches and cancels from there)
            (True, False, False, live): Action.REATTACH,
            (True, False, True, live): Action.REATTACH,
            (True, True, False, live): Action.REATTACH,
            (True, True, True, live): Action.REATTACH,
            # no handle, cancel requested: nothing runs upstream that we know of
            (False, False, True, live): Action.CANCEL,
            (False, True, True, live): Action.CANCEL,
            # nothing was sent: run it again
            (False, False, False, live): Action.REQUEUE,
        }
    )
# no handle, a submit was in flight: may have reached upstream, never resend. A holder
# that may still live records its handle even after losing the lease: wait for it.
TABLE[(False, True, False, False)] = Action.FAIL_SUBMIT_INTERRUPTED
TABLE[(False, True, False, True)] = Action.AWAIT_HANDLE


def test_table_is_complete() -> None:
    assert set(TABLE) == set(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize(
    ("has_handle", "submitting", "cancel_requested", "holder_may_live", "expected"),
    [(*k, v) for k, v in TABLE.items()],
)
def test_decide(
    has_handle: bool,
    submitting: bool,
    cancel_requested: bool,
    holder_may_live: bool,
    expected: Action,
) -> None:
    assert (
        decide(
            has_handle=has_handle,
            submitting=submitting,
            cancel_requested=cancel_requested,
            holder_may_live=holder_may_live,
        )
        == expected
    )
