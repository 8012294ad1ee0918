"""The event cursor: a position that cannot skip a late commit."""

from __future__ import annotations

import pytest

from orchestrator.domain.event_cursor import MAX_TOKEN_GAPS, Cursor


def test_ids_in_order_leave_no_gaps() -> None:
    c = Cursor(high=10)
    assert [c.accept(i, 0.0) for i in (11, 12, 13)] == [True, True, True]
    assert c.token() == "13" and c.open_gaps() == []


def test_a_skipped_id_is_a_gap_until_it_commits() -> None:
    c = Cursor(high=10)
    assert c.accept(13, 0.0)
    assert c.open_gaps() == [11, 12] and c.token() == "13~11.12"
    assert c.accept(12, 1.0)  # committed late: new, delivered
    assert c.token() == "13~11"
    assert not c.accept(12, 1.0)  # not twice
    assert not c.accept(9, 1.0)  # below the cursor, never missed
    assert c.accept(11, 2.0) and c.token() == "13"


def test_gaps_expire_after_the_grace() -> None:
    c = Cursor(high=10)
    c.accept(12, 0.0)
    c.expire(30.0, grace_s=60.0)
    assert c.open_gaps() == [11]
    c.expire(61.0, grace_s=60.0)
    assert c.open_gaps() == [] and c.token() == "12"


def test_too_many_gaps_fall_back_to_just_below_the_oldest() -> None:
    c = Cursor(high=0)
    for i in range(2, 2 * MAX_TOKEN_GAPS + 4, 2):  # every other id missing: one run each
        c.accept(i, 0.0)
    assert c.token() == "0"  # resends from the start of the gaps: nothing lost


def test_a_run_of_gaps_travels_as_a_range() -> None:
    """A reader that starts with thousands of ids below the newest still unseen (some
    may commit late) hands out tokens that carry them all, briefly."""
    c = Cursor(high=10)
    c.accept(5000, 0.0)
    c.accept(5003, 0.0)
    assert c.token() == "5003~11-4999.5001.5002"
    back = Cursor.parse(c.token(), 0.0)
    assert back is not None and back.open_gaps() == c.open_gaps() and back.high == 5003
    assert c.accept(4000, 0.0) and c.token() == "5003~11-3999.4001-4999.5001.5002"


def test_a_token_is_rebuilt_when_its_gaps_change() -> None:
    c = Cursor(high=10)
    c.accept(13, 0.0)
    assert c.token() == "13~11.12"
    c.accept(14, 0.0)
    assert c.token() == "14~11.12"
    c.accept(11, 0.0)
    assert c.token() == "14~12"
    c.expire(100.0, grace_s=60.0)
    assert c.token() == "14"


def test_a_token_with_more_gaps_than_a_cursor_keeps_resends_from_below_them() -> None:
    c = Cursor.parse("20000000~5-19999999", 0.0)
    assert c is not None and c.high == 4 and c.gaps == {}


@pytest.mark.parametrize(
    ("token", "high", "gaps"),
    [
        ("104", 104, []),
        ("104~101.103", 104, [101, 103]),
        ("104~90-92.101", 104, [90, 91, 92, 101]),
        ("0", 0, []),
        (str(2**70), 2**62, None),  # too long: not a cursor
    ],
)
def test_parse(token: str, high: int, gaps: list[int] | None) -> None:
    c = Cursor.parse(token, 5.0)
    if gaps is None:
        assert c is None
        return
    assert c is not None and c.high == high and c.open_gaps() == gaps
    assert Cursor.parse(c.token(), 5.0) == c


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "-1",
        "10~",
        "10~x",
        "10~11",
        "10~3.x",
        "1.5",
        "10~5-3",
        "10~5-10",
        "10~5-",
        "10~-5",
    ],
)
def test_parse_refuses_what_is_not_a_cursor(bad: str) -> None:
    assert Cursor.parse(bad, 0.0) is None
