"""The event cursor: a position that cannot skip a late commit."""

from __future__ import annotations

import pytest

from orchestrator.domain.event_cursor import MAX_GAPS, MAX_ID, MAX_TOKEN_GAPS, Cursor


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


def test_the_newest_id_again_is_not_new() -> None:
    c = Cursor(high=10)
    assert c.accept(12, 0.0)
    assert not c.accept(12, 1.0)
    assert c.high == 12 and c.open_gaps() == [11]


@pytest.mark.parametrize(
    ("held", "skipped", "kept"),
    [
        # a cursor keeps at most MAX_GAPS gaps: a jump that would pass it records none
        # of the skipped ids (given up at once, as if expired), but still moves on
        (0, MAX_GAPS, MAX_GAPS),
        (0, MAX_GAPS + 1, 0),
        (5, MAX_GAPS - 5, MAX_GAPS),
        (5, MAX_GAPS - 4, 5),
        (5, 0, 5),
    ],
)
def test_gap_count_is_bounded(held: int, skipped: int, kept: int) -> None:
    c = Cursor(high=100, gaps=dict.fromkeys(range(1, held + 1), 0.0))
    assert c.accept(100 + skipped + 1, 0.0)
    assert c.high == 100 + skipped + 1
    assert len(c.gaps) == kept


@pytest.mark.parametrize(
    ("now", "grace_s", "open_gaps"),
    [
        (100.0, 10.0, [11, 12]),  # missed at 100: young
        (105.0, 10.0, [11, 12]),
        (110.0, 10.0, [11, 12]),  # exactly the grace: still waited for
        (110.5, 10.0, [12]),  # 11 was missed at 100, 12 at 101
        (111.5, 10.0, []),
    ],
)
def test_expire_gives_up_only_gaps_older_than_the_grace(
    now: float, grace_s: float, open_gaps: list[int]
) -> None:
    c = Cursor(high=10)
    c.accept(12, 100.0)
    c.gaps[12] = 101.0
    c.expire(now, grace_s)
    assert c.open_gaps() == open_gaps


@pytest.mark.parametrize(
    ("other", "left", "token"),
    [
        # the other reader saw up to 13 with no gaps: 11, 12, 13 committed
        (Cursor(high=13), [15], "16~15"),
        (Cursor(high=20), [], "16"),
        (Cursor(high=12), [13, 15], "16~13.15"),  # 12 included
        (Cursor(high=10), [11, 12, 13, 15], "16~11-13.15"),  # saw none of them
        # ids the other one also misses may still commit late
        (Cursor(high=20, gaps={12: 0.0, 15: 0.0}), [12, 15], "16~12.15"),
        (Cursor(high=14, gaps={11: 0.0}), [11, 15], "16~11.15"),
    ],
)
def test_drop_seen_by_forgets_ids_another_reader_saw(
    other: Cursor, left: list[int], token: str
) -> None:
    c = Cursor(high=16, gaps={11: 0.0, 12: 0.0, 13: 0.0, 15: 0.0})
    assert c.token() == "16~11-13.15"
    c.drop_seen_by(other)
    assert c.open_gaps() == left
    assert c.token() == token


def test_drop_seen_by_without_gaps_changes_nothing() -> None:
    c = Cursor(high=16)
    c.drop_seen_by(Cursor(high=20))
    assert c == Cursor(high=16) and c.token() == "16"


@pytest.mark.parametrize(
    ("token", "high", "n_gaps"),
    [
        (f"{MAX_GAPS + 1}~1-{MAX_GAPS}", MAX_GAPS + 1, MAX_GAPS),  # as many as a cursor keeps
        (f"{MAX_GAPS + 5}~1-{MAX_GAPS - 1}.{MAX_GAPS + 2}", MAX_GAPS + 5, MAX_GAPS),
        # one more: resend from just below the oldest gap
        (f"{MAX_GAPS + 2}~1-{MAX_GAPS + 1}", 0, 0),
        (f"{MAX_GAPS + 5}~3.5-{MAX_GAPS + 4}", 2, 0),
        (f"{MAX_GAPS + 10}~7-{MAX_GAPS + 6}.3", 2, 0),  # the oldest may come last
    ],
)
def test_parse_bounds_the_gaps(token: str, high: int, n_gaps: int) -> None:
    c = Cursor.parse(token, 0.0)
    assert c is not None and c.high == high and len(c.gaps) == n_gaps


def test_parsed_gaps_are_dated_now() -> None:
    c = Cursor.parse("104~101.103", 5.0)
    assert c is not None and c.gaps == {101: 5.0, 103: 5.0}
    c.expire(15.0, grace_s=10.0)
    assert c.open_gaps() == [101, 103]
    c.expire(15.5, grace_s=10.0)
    assert c.open_gaps() == []


@pytest.mark.parametrize(
    ("token", "high"),
    [
        ("9" * 19, MAX_ID),  # 19 digits: an id, capped
        ("1" + "0" * 18, 10**18),
        ("1" + "0" * 19, None),  # 20 digits: not an id
        ("104~" + "1" * 20, None),
    ],
)
def test_ids_have_at_most_19_digits(token: str, high: int | None) -> None:
    c = Cursor.parse(token, 0.0)
    assert (c.high if c is not None else None) == high


@pytest.mark.parametrize(
    ("gaps", "token"),
    [
        ([90], "100~90"),
        ([90, 91], "100~90.91"),  # two in a row: listed
        ([90, 91, 92], "100~90-92"),  # three or more: a run
        ([90, 91, 92, 93, 95, 97, 98], "100~90-93.95.97.98"),
    ],
)
def test_token_spelling(gaps: list[int], token: str) -> None:
    c = Cursor(high=100, gaps=dict.fromkeys(gaps, 0.0))
    assert c.token() == token


@pytest.mark.parametrize(("runs", "carried"), [(MAX_TOKEN_GAPS, True), (MAX_TOKEN_GAPS + 1, False)])
def test_token_carries_at_most_max_token_gaps_runs(runs: int, carried: bool) -> None:
    gaps = [10 * (i + 1) for i in range(runs)]  # every gap a run of its own
    c = Cursor(high=10 * (runs + 1), gaps=dict.fromkeys(gaps, 0.0))
    if carried:
        assert c.token() == f"{c.high}~" + ".".join(map(str, gaps))
    else:
        assert c.token() == "9"  # from just below the oldest gap
