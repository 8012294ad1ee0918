"""What to do with a job whose previous worker vanished: a pure decision."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    REATTACH = "reattach"  # upstream handle stored: resume waiting, never resubmit
    REQUEUE = "requeue"  # nothing was sent upstream: safe to run again
    FAIL_SUBMIT_INTERRUPTED = "fail_submit_interrupted"  # may have been sent: never resend
    CANCEL = "cancel"  # the user asked to cancel and nothing runs upstream


def decide(*, has_handle: bool, submitting: bool, cancel_requested: bool) -> Action:
    if has_handle:
        return Action.REATTACH
    if cancel_requested:
        return Action.CANCEL
    if submitting:
        return Action.FAIL_SUBMIT_INTERRUPTED
    return Action.REQUEUE
