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
    c.accept(MAX_TOKEN_GAPS + 10, 0.0)
    assert c.token() == "0"  # resends from the start of the gaps: nothing lost


@pytest.mark.parametrize(
    ("token", "high", "gaps"),
    [
        ("104", 104, []),
        ("104~101.103", 104, [101, 103]),
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


@pytest.mark.parametrize("bad", ["", "abc", "-1", "10~", "10~x", "10~11", "10~3.x", "1.5"])
def test_parse_refuses_what_is_not_a_cursor(bad: str) -> None:
    assert Cursor.parse(bad, 0.0) is None
