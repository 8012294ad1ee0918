"""What to do with a job whose previous lease holder vanished: a pure decision."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    REATTACH = "reattach"  # upstream handle stored: resume waiting, never resubmit
    REQUEUE = "requeue"  # nothing was sent upstream: safe to run again
    # A submit had started and the previous holder may still be alive (its lease ran
    # out under lock contention, a stalled loop or a paused VM): it records the handle
    # even after losing the lease, so wait for it before calling the submit lost.
    AWAIT_HANDLE = "await_handle"
    FAIL_SUBMIT_INTERRUPTED = "fail_submit_interrupted"  # may have been sent: never resend
    CANCEL = "cancel"  # the user asked to cancel and nothing runs upstream


def decide(
    *,
    has_handle: bool,
    submitting: bool,
    cancel_requested: bool,
    holder_may_live: bool = False,
) -> Action:
    if has_handle:
        return Action.REATTACH
    if cancel_requested:
        return Action.CANCEL
    if submitting:
        return Action.AWAIT_HANDLE if holder_may_live else Action.FAIL_SUBMIT_INTERRUPTED
    return Action.REQUEUE
