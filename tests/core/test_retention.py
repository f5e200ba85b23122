from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from nightshift.core.retention import (
    EXPIRES_AFTER_MAX_SECONDS,
    EXPIRES_AFTER_MIN_SECONDS,
    ExpiresAfter,
    VersionInfo,
    expired,
    is_expired,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _v(name: str, age: timedelta) -> VersionInfo:
    return VersionInfo(batch_id="b", version=name, path=f"/s/batches/b/{name}", last_modified=NOW - age)


@pytest.mark.parametrize(
    ("age", "max_age", "gone"),
    [
        (timedelta(0), 7 * DAY, False),  # just written
        (6 * DAY, 7 * DAY, False),
        (7 * DAY - timedelta(seconds=1), 7 * DAY, False),
        (7 * DAY, 7 * DAY, True),  # exactly at the limit: its retention has ended
        (30 * DAY, 7 * DAY, True),
        (timedelta(hours=2), timedelta(hours=1), True),
        (timedelta(0), timedelta(0), True),  # 0 means everything...
        (-timedelta(minutes=5), timedelta(0), True),  # ...even a store clock running ahead of ours
        (-timedelta(minutes=5), timedelta(seconds=1), False),
    ],
)
def test_is_expired(age, max_age, gone):
    assert is_expired(NOW - age, NOW, max_age) is gone


def test_expired_keeps_the_given_order_and_only_old_versions():
    versions = [_v("new", timedelta(hours=1)), _v("old", 8 * DAY), _v("edge", 7 * DAY), _v("mid", 3 * DAY)]
    assert [v.version for v in expired(versions, NOW, 7 * DAY)] == ["old", "edge"]
    assert [v.version for v in expired(versions, NOW, 2 * DAY)] == ["old", "edge", "mid"]
    assert [v.version for v in expired(versions, NOW, timedelta(0))] == ["new", "old", "edge", "mid"]
    assert expired([], NOW, DAY) == []


def test_age_is_timezone_aware():
    # 16:59 at UTC+5 on the 3rd is 11:59 UTC: one minute over 7 days before NOW, not 5 h under.
    written = datetime(2026, 3, 3, 16, 59, tzinfo=timezone(timedelta(hours=5)))
    assert expired([VersionInfo(batch_id="b", version="v", path="p", last_modified=written)], NOW, 7 * DAY)
    with pytest.raises(ValidationError):
        VersionInfo(batch_id="b", version="v", path="p", last_modified=datetime(2026, 3, 1))  # naive: ambiguous


def test_negative_max_age_is_refused():
    with pytest.raises(ValueError, match="negative"):
        expired([_v("x", DAY)], NOW, -DAY)


def test_expires_after_counts_from_the_anchor_within_openais_bounds():
    created = datetime(2026, 1, 1, tzinfo=UTC)
    rule = ExpiresAfter.model_validate({"anchor": "created_at", "seconds": "3600"})  # a form field arrives as text
    assert rule.expires_at(created) == created + timedelta(hours=1)
    assert (EXPIRES_AFTER_MIN_SECONDS, EXPIRES_AFTER_MAX_SECONDS) == (3600, 2_592_000)
    longest = ExpiresAfter(anchor="created_at", seconds=EXPIRES_AFTER_MAX_SECONDS)
    assert longest.expires_at(created) == created + timedelta(days=30)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"anchor": "created_at", "seconds": 3599}, "seconds"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "seconds"),
        ({"anchor": "created_at", "seconds": "soon"}, "seconds"),
        ({"anchor": "last_active_at", "seconds": 3600}, "anchor"),
        ({"seconds": 3600}, "anchor"),
        ({"anchor": "created_at", "seconds": 3600, "extra": 1}, "extra"),
    ],
)
def test_expires_after_outside_the_rule_names_the_field(value, field):
    with pytest.raises(ValidationError) as caught:
        ExpiresAfter.model_validate(value)
    assert caught.value.errors()[0]["loc"] == (field,)
