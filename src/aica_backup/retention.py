"""Which archives to keep: a pure function of the archives, the policy and the time.

``apply_policy`` never touches the disk, so every rule is tested against tables. Rules follow
restic's ``forget``: the newest N (``keep_last``), the newest archive of each of the last N
days / ISO weeks / months / years that have one, and everything younger than ``keep_within``.
Four guarantees hold whatever the policy: pinned archives are kept, the newest good archive
is kept, an archive whose verification failed never fills a slot of the policy, and an
archive whose last verification did not finish (``unsure``: a full disk, an I/O error, an
interruption, recorded by an older release as a failure) is neither deleted for it nor
counted as good: it is kept until a verification finishes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*([hdwmy])\s*$")
_UNIT_HOURS = {"h": 1, "d": 24, "w": 24 * 7, "m": 24 * 31, "y": 24 * 366}


def parse_duration(text: str) -> timedelta:
    """``"12h"``, ``"7d"``, ``"2w"``, ``"6m"``, ``"1y"`` → timedelta (months 31 d, years 366 d)."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not a duration like 7d, 12h, 2w, 6m or 1y: {text!r}")
    return timedelta(hours=int(m[1]) * _UNIT_HOURS[m[2]])


@dataclass(frozen=True)
class Policy:
    keep_last: int = 7
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None

    def is_empty(self) -> bool:
        counts = (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)
        return not any(counts) and not self.keep_yearly and not self.keep_within


@dataclass(frozen=True)
class Candidate:
    name: str
    time: datetime  # timezone-aware
    pinned: bool = False
    failed: bool = False  # its last verification finished and found it damaged
    unsure: bool = False  # its last verification did not finish: neither good nor failed


@dataclass
class Decision:
    keep: list[Candidate] = field(default_factory=list)
    remove: list[Candidate] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)


_BUCKETS: tuple[tuple[str, str, Callable[[datetime], object]], ...] = (
    ("keep_daily", "daily", lambda t: t.date()),
    ("keep_weekly", "weekly", lambda t: t.isocalendar()[:2]),
    ("keep_monthly", "monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly", lambda t: t.year),
)


def apply_policy(archives: Sequence[Candidate], policy: Policy, now: datetime) -> Decision:
    """Split ``archives`` into keep and remove, with the reasons for every decision.

    Archives of the same time (several backups in one second) keep their given order, which
    is newest first when it comes from the catalog.
    """
    ordered = sorted(archives, key=lambda a: a.time, reverse=True)  # stable: ties keep order
    rank = {a.name: i for i, a in enumerate(ordered)}  # 0 is the newest
    reasons: dict[str, list[str]] = {a.name: [] for a in ordered}
    good = [a for a in ordered if not a.failed and not a.unsure]

    for i, a in enumerate(good):
        if i < policy.keep_last:
            reasons[a.name].append(f"last {policy.keep_last}")
        if policy.keep_within is not None and now - a.time <= policy.keep_within:
            reasons[a.name].append("within keep_within")
    for attr, label, bucket_of in _BUCKETS:
        limit: int = getattr(policy, attr)
        seen: set[object] = set()
        for a in good:
            if len(seen) >= limit:
                break
            bucket = bucket_of(a.time.astimezone())
            if bucket not in seen:
                seen.add(bucket)
                reasons[a.name].append(f"{label} {len(seen)}/{limit}")
    if good and not reasons[good[0].name]:
        reasons[good[0].name].append("newest good backup")
    for a in ordered:
        if a.pinned:
            reasons[a.name].append("pinned")
        if a.unsure and not a.failed:
            reasons[a.name].append("last verification did not finish: verify it again")

    kept_good = [a for a in good if reasons[a.name]]
    # By rank, not time: a failed archive made in the same second as the oldest kept one
    # but after it compared "not newer" by time and was deleted.
    oldest_kept = rank[kept_good[-1].name] if kept_good else None
    decision = Decision(reasons=reasons)
    for a in ordered:
        if a.failed and not a.pinned:
            if oldest_kept is None or rank[a.name] < oldest_kept:
                reasons[a.name].append("failed verification, newer than the oldest kept backup")
            else:
                decision.remove.append(a)
                reasons[a.name].append("failed verification")
                continue
        if reasons[a.name]:
            decision.keep.append(a)
        else:
            decision.remove.append(a)
            reasons[a.name].append("outside the policy")
    return decision
