"""Retention as a pure function, tested against tables (restic's ``forget`` rules)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aica_backup.retention import Candidate, Policy, apply_policy, parse_duration

JST = ZoneInfo("Asia/Tokyo")
NOW = datetime(2024, 10, 10, 12, 0, tzinfo=JST)


@pytest.fixture(autouse=True)
def tokyo_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Buckets use the machine's local time; pin it to the guide's zone (JST, UTC+9)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(spec: str) -> datetime:
    """``"10-09 03:00"`` → that local time in October 2024 (JST)."""
    return datetime.strptime(f"2024-{spec}", "%Y-%m-%d %H:%M").replace(tzinfo=JST)


def arc(
    spec: str, *, pinned: bool = False, failed: bool = False, unsure: bool = False
) -> Candidate:
    return Candidate(f"backup_{spec}", at(spec), pinned=pinned, failed=failed, unsure=unsure)


def daily(days: int, hour: str = "03:00") -> list[Candidate]:
    """One archive a day at ``hour`` for ``days`` days up to 10 October."""
    return [
        Candidate(f"d{i}", datetime(2024, 10, 10, int(hour[:2]), tzinfo=JST) - timedelta(days=i))
        for i in range(days)
    ]


@dataclass
class Case:
    archives: list[Candidate]
    policy: Policy
    keep: set[str]
    reasons: dict[str, str] = field(default_factory=dict)  # name -> a reason it must carry
    now: datetime = NOW


CASES: dict[str, Case] = {
    "default keeps the newest 7 (the guide)": Case(
        daily(10), Policy(), {f"d{i}" for i in range(7)}, {"d0": "last 7", "d9": "outside"}
    ),
    "fewer than the policy: all kept": Case(daily(3), Policy(), {"d0", "d1", "d2"}),
    "nothing at all": Case([], Policy(), set()),
    "keep_last=1": Case(daily(5), Policy(keep_last=1), {"d0"}),
    "daily keeps the newest of each day": Case(
        [
            arc("10-10 03:00"),
            arc("10-10 01:00"),
            arc("10-09 23:00"),
            arc("10-09 02:00"),
            arc("10-08 12:00"),
        ],
        Policy(keep_last=0, keep_daily=2),
        {"backup_10-10 03:00", "backup_10-09 23:00"},
        {"backup_10-10 03:00": "daily 1/2", "backup_10-09 23:00": "daily 2/2"},
    ),
    "daily buckets follow local midnight, not UTC": Case(
        # 08:30 JST on the 10th is 23:30 UTC on the 9th: still the 10th here.
        [arc("10-10 08:30"), arc("10-10 00:30"), arc("10-09 23:30")],
        Policy(keep_last=0, keep_daily=2),
        {"backup_10-10 08:30", "backup_10-09 23:30"},
    ),
    "a day without backups does not use up a slot": Case(
        [arc("10-10 03:00"), arc("10-07 03:00"), arc("10-05 03:00"), arc("10-04 03:00")],
        Policy(keep_last=0, keep_daily=3),
        {"backup_10-10 03:00", "backup_10-07 03:00", "backup_10-05 03:00"},
    ),
    "weekly uses ISO weeks (Monday to Sunday)": Case(
        # 10-07 is a Monday, 10-06 a Sunday.
        [
            arc("10-08 03:00"),
            arc("10-07 03:00"),
            arc("10-06 03:00"),
            arc("09-30 03:00"),
            arc("09-29 03:00"),
        ],
        Policy(keep_last=0, keep_weekly=2),
        {"backup_10-08 03:00", "backup_10-06 03:00"},
        {"backup_10-06 03:00": "weekly 2/2"},
    ),
    "monthly keeps the newest of each month": Case(
        [
            arc("10-02 03:00"),
            arc("10-01 03:00"),
            arc("09-30 03:00"),
            arc("09-01 03:00"),
            arc("08-31 03:00"),
        ],
        Policy(keep_last=0, keep_monthly=3),
        {"backup_10-02 03:00", "backup_09-30 03:00", "backup_08-31 03:00"},
    ),
    "monthly at a local month boundary": Case(
        # 10-01 05:00 JST is still September in UTC.
        [arc("10-01 05:00"), arc("09-30 20:00")],
        Policy(keep_last=0, keep_monthly=1),
        {"backup_10-01 05:00"},
    ),
    "yearly": Case(
        [
            Candidate("y2024", datetime(2024, 1, 5, tzinfo=JST)),
            Candidate("y2023b", datetime(2023, 12, 31, 23, tzinfo=JST)),
            Candidate("y2023a", datetime(2023, 6, 1, tzinfo=JST)),
            Candidate("y2022", datetime(2022, 6, 1, tzinfo=JST)),
        ],
        Policy(keep_last=0, keep_yearly=2),
        {"y2024", "y2023b"},
        {"y2023b": "yearly 2/2"},
    ),
    "tiers combine (union)": Case(
        daily(40),
        Policy(keep_last=2, keep_weekly=3, keep_monthly=2),
        # last 2: d0 d1; weeks: Thu 10-10 (d0), Sun 10-06 (d4), Sun 09-29 (d11);
        # months: October (d0), September 30 (d10).
        {"d0", "d1", "d4", "d11", "d10"},
    ),
    "keep_within keeps everything younger": Case(
        daily(10, "12:00"),
        Policy(keep_last=0, keep_within=timedelta(days=3)),
        {"d0", "d1", "d2", "d3"},
        {"d3": "within keep_within"},
    ),
    "keep_within bound is inclusive": Case(
        [
            Candidate("edge", NOW - timedelta(hours=12)),
            Candidate("older", NOW - timedelta(hours=13)),
        ],
        Policy(keep_last=0, keep_within=timedelta(hours=12)),
        {"edge"},
    ),
    "pinned is always kept": Case(
        [*daily(5), Candidate("old-pinned", NOW - timedelta(days=400), pinned=True)],
        Policy(keep_last=2),
        {"d0", "d1", "old-pinned"},
        {"old-pinned": "pinned"},
    ),
    "newest good is kept even by a policy that keeps nothing else": Case(
        daily(3),
        Policy(keep_last=0, keep_within=timedelta(hours=1)),
        {"d0"},
        {"d0": "newest good backup"},
    ),
    "failed archives never fill a slot": Case(
        [
            arc("10-10 03:00", failed=True),
            arc("10-09 03:00"),
            arc("10-08 03:00"),
            arc("10-07 03:00"),
        ],
        Policy(keep_last=2),
        # the two slots go to good archives; the failed one is newer than the oldest kept
        {"backup_10-10 03:00", "backup_10-09 03:00", "backup_10-08 03:00"},
        {"backup_10-10 03:00": "failed verification, newer", "backup_10-07 03:00": "outside"},
    ),
    "failed older than every kept archive is removed": Case(
        [arc("10-10 03:00"), arc("10-09 03:00"), arc("10-08 03:00", failed=True)],
        Policy(keep_last=2),
        {"backup_10-10 03:00", "backup_10-09 03:00"},
        {"backup_10-08 03:00": "failed verification"},
    ),
    "newest good is kept when newer ones failed": Case(
        [arc("10-10 03:00", failed=True), arc("10-09 03:00", failed=True), arc("10-01 03:00")],
        Policy(keep_last=0, keep_within=timedelta(hours=1)),
        {"backup_10-10 03:00", "backup_10-09 03:00", "backup_10-01 03:00"},
        {"backup_10-01 03:00": "newest good backup"},
    ),
    "no good archive: failed ones are all kept": Case(
        [arc("10-10 03:00", failed=True), arc("10-09 03:00", failed=True)],
        Policy(keep_last=1),
        {"backup_10-10 03:00", "backup_10-09 03:00"},
    ),
    # Issue 14.1: a full disk made verify record three good archives as FAILED; the next
    # backup's retention then removed all three. A verification that did not finish is no
    # ground for deleting anything, and such archives are not counted as good either.
    "unfinished verifications delete nothing (the full-disk case)": Case(
        [
            arc("10-10 03:00"),
            arc("10-09 03:00", unsure=True),
            arc("10-08 03:00", unsure=True),
            arc("10-07 03:00", unsure=True),
        ],
        Policy(),
        {"backup_10-10 03:00", "backup_10-09 03:00", "backup_10-08 03:00", "backup_10-07 03:00"},
        {"backup_10-08 03:00": "did not finish", "backup_10-10 03:00": "last 7"},
    ),
    "unsure archives do not fill the slots of good ones": Case(
        [
            arc("10-10 03:00", unsure=True),
            arc("10-09 03:00"),
            arc("10-08 03:00"),
            arc("10-07 03:00"),
        ],
        Policy(keep_last=2),
        {"backup_10-10 03:00", "backup_10-09 03:00", "backup_10-08 03:00"},
        {"backup_10-10 03:00": "did not finish", "backup_10-07 03:00": "outside"},
    ),
    "unsure older than every kept archive is still kept": Case(
        [arc("10-10 03:00"), arc("10-09 03:00"), arc("10-01 03:00", unsure=True)],
        Policy(keep_last=1),
        {"backup_10-10 03:00", "backup_10-01 03:00"},
        {"backup_10-09 03:00": "outside", "backup_10-01 03:00": "verify it again"},
    ),
    "only unsure archives: all kept": Case(
        [arc("10-10 03:00", unsure=True), arc("10-09 03:00", unsure=True)],
        Policy(keep_last=1),
        {"backup_10-10 03:00", "backup_10-09 03:00"},
    ),
    "pinned failed archive is kept": Case(
        [arc("10-10 03:00"), arc("10-01 03:00", failed=True, pinned=True)],
        Policy(keep_last=1),
        {"backup_10-10 03:00", "backup_10-01 03:00"},
        {"backup_10-01 03:00": "pinned"},
    ),
}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_policy_table(name: str) -> None:
    case = CASES[name]
    decision = apply_policy(case.archives, case.policy, case.now)
    kept = {c.name for c in decision.keep}
    removed = {c.name for c in decision.remove}
    assert kept == case.keep
    assert removed == {c.name for c in case.archives} - case.keep
    assert set(decision.reasons) == {c.name for c in case.archives}
    for arc_name in kept | removed:
        assert decision.reasons[arc_name], f"{arc_name} has no reason"
    for arc_name, reason in case.reasons.items():
        assert any(reason in r for r in decision.reasons[arc_name]), decision.reasons[arc_name]


def test_same_second_keeps_the_given_order() -> None:
    """Several backups in one second: the catalog passes them newest first (by sequence)."""
    t = at("10-10 03:00")
    newest_first = [
        Candidate("s3", t, failed=True),
        Candidate("s2", t),
        Candidate("s1", t),
        Candidate("s0", t),
    ]
    decision = apply_policy(newest_first, Policy(keep_last=2), NOW)
    assert {c.name for c in decision.keep} == {"s3", "s2", "s1"}  # the failed one is newer
    assert any("newer" in r for r in decision.reasons["s3"])
    assert [c.name for c in decision.remove] == ["s0"]


def test_input_order_does_not_matter() -> None:
    archives = daily(10)
    forward = apply_policy(archives, Policy(keep_last=3, keep_weekly=2), NOW)
    backward = apply_policy(list(reversed(archives)), Policy(keep_last=3, keep_weekly=2), NOW)
    assert {c.name for c in forward.keep} == {c.name for c in backward.keep}
    assert [c.name for c in forward.keep] == [c.name for c in backward.keep]  # newest first


candidates_st = st.lists(
    st.builds(
        Candidate,
        name=st.uuids().map(str),
        time=st.integers(0, 400 * 24 * 3600).map(lambda s: NOW - timedelta(seconds=s)),
        pinned=st.booleans(),
        failed=st.booleans(),
        unsure=st.booleans(),
    ),
    max_size=40,
    unique_by=lambda c: c.name,
)
policy_st = st.builds(
    Policy,
    keep_last=st.integers(0, 10),
    keep_daily=st.integers(0, 10),
    keep_weekly=st.integers(0, 6),
    keep_monthly=st.integers(0, 6),
    keep_yearly=st.integers(0, 3),
    keep_within=st.one_of(st.none(), st.integers(1, 1000).map(lambda h: timedelta(hours=h))),
)


@settings(max_examples=200, deadline=None)
@given(candidates_st, policy_st)
def test_guarantees_hold_for_any_policy(archives: list[Candidate], policy: Policy) -> None:
    decision = apply_policy(archives, policy, NOW)
    kept = {c.name for c in decision.keep}
    removed = {c.name for c in decision.remove}
    assert kept | removed == {c.name for c in archives} and not kept & removed
    assert all(c.name in kept for c in archives if c.pinned)
    # never deleted on the strength of a verification that did not finish
    assert all(c.name in kept for c in archives if c.unsure and not c.failed)
    good = sorted(
        (c for c in archives if not c.failed and not c.unsure), key=lambda c: c.time, reverse=True
    )
    if good:
        assert good[0].name in kept
        kept_good = [c for c in good if c.name in kept]
        oldest = min(c.time for c in kept_good)
        # a failed archive newer than the oldest kept good one is never removed
        assert not any(c.failed and c.time > oldest and c.name in removed for c in archives)
    else:
        assert removed == set()
    slots = policy.keep_last
    assert len([c for c in good[:slots] if c.name in kept]) == min(slots, len(good))
    # a bigger policy never removes more
    bigger = Policy(
        keep_last=policy.keep_last + 1,
        keep_daily=policy.keep_daily,
        keep_weekly=policy.keep_weekly,
        keep_monthly=policy.keep_monthly,
        keep_yearly=policy.keep_yearly,
        keep_within=policy.keep_within,
    )
    assert {c.name for c in apply_policy(archives, bigger, NOW).keep} >= kept


def test_is_empty() -> None:
    assert Policy(keep_last=0).is_empty()
    assert not Policy().is_empty()
    assert not Policy(keep_last=0, keep_yearly=1).is_empty()
    assert not Policy(keep_last=0, keep_within=timedelta(hours=1)).is_empty()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("6m", timedelta(days=6 * 31)),
        ("1y", timedelta(days=366)),
        (" 3 d ", timedelta(days=3)),
        ("0d", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "1.5d", "7 days", "7D", "1d2h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_tz_fixture_is_in_effect() -> None:
    assert os.environ["TZ"] == "Asia/Tokyo"
    assert datetime(2024, 1, 1, tzinfo=UTC).astimezone().utcoffset() == timedelta(hours=9)
