"""The demand rule: replica targets from remaining work and deadlines, scale-down between shards,
and spot or dedicated capacity by the placement rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nightshift.core.demand import ReplicaState, WorkItem, capacity_for, plan_scale, replica_target, required_rate

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _work(*items: tuple[float, float]) -> list[WorkItem]:
    """(remaining, seconds until the deadline) → work items keyed b0, b1..."""
    return [WorkItem(key=f"b{i}", remaining=r, deadline=NOW + timedelta(seconds=s)) for i, (r, s) in enumerate(items)]


def _target(work: list[WorkItem], *, rate: float = 10.0, safety: float = 1.0, minimum: int = 0, maximum: int = 8) -> int:
    return replica_target(work, now=NOW, rate_per_replica=rate, safety_factor=safety, minimum=minimum, maximum=maximum).replicas


def test_the_rate_is_the_worst_deadline_under_earliest_deadline_first():
    # 600 due in 60 s, then 600 more due in 300 s: 10/s for the first, 1200/300 = 4/s for both.
    assert required_rate(_work((600, 60), (600, 300)), NOW) == (10.0, "b0")
    # A big batch due later can bind: 100 due in 100 s (1/s) but 2000 more by 200 s (10.5/s).
    rate, binding = required_rate(_work((100, 100), (2000, 200)), NOW)
    assert rate == pytest.approx(10.5) and binding == "b1"
    # Summing each batch's own rate (1 + 10) would ask for more than the deadlines need.


@pytest.mark.parametrize(
    ("work", "kwargs", "replicas"),
    [
        pytest.param([], {}, 0, id="no-work-scales-to-zero"),
        pytest.param([], {"minimum": 2}, 2, id="no-work-keeps-the-minimum"),
        pytest.param(_work((10, 86_400)), {}, 1, id="lax-work-still-gets-one"),
        pytest.param(_work((1200, 60)), {}, 2, id="20-per-s-over-10-per-replica"),
        pytest.param(_work((1200, 60)), {"safety": 1.5}, 3, id="safety-factor-adds-room"),
        pytest.param(_work((1210, 60)), {}, 3, id="rounds-up"),
        pytest.param(_work((10_000, 10)), {"maximum": 4}, 4, id="capped-at-the-maximum"),
        pytest.param(_work((10, -5)), {"maximum": 4}, 4, id="past-deadline-asks-for-everything"),
        pytest.param(_work((0, 60), (0, 10)), {}, 0, id="finished-batches-ask-nothing"),
        pytest.param(_work((600, 60), (600, 300)), {}, 1, id="edf-one-replica-each-in-turn"),
    ],
)
def test_replica_targets(work, kwargs, replicas):
    assert _target(work, **kwargs) == replicas


def test_the_target_says_why():
    target = replica_target(_work((10_000, 10)), now=NOW, rate_per_replica=10, safety_factor=1.5, minimum=0, maximum=4)
    assert target.binding == "b0" and "capped at the maximum 4" in target.reason


@pytest.mark.parametrize(("rate", "minimum", "maximum"), [(0.0, 0, 1), (1.0, 3, 2), (1.0, -1, 2)])
def test_bad_bounds_are_refused(rate, minimum, maximum):
    with pytest.raises(ValueError):
        replica_target([], now=NOW, rate_per_replica=rate, safety_factor=1, minimum=minimum, maximum=maximum)


def _replica(name: str, in_flight: int = 0, idle: float | None = None, age: float = 1000) -> ReplicaState:
    idle_since = NOW - timedelta(seconds=idle) if idle is not None else None
    return ReplicaState(name=name, in_flight=in_flight, idle_since=idle_since, started_at=NOW - timedelta(seconds=age))


def test_scaling_up_is_at_once():
    assert plan_scale(3, [_replica("a", in_flight=2)], now=NOW, idle_seconds=60).add == 2


def test_scaling_down_waits_for_idle_replicas_and_never_takes_one_with_shards():
    replicas = [_replica("busy", in_flight=1), _replica("fresh", idle=5), _replica("old", idle=120), _replica("older", idle=600)]
    plan = plan_scale(1, replicas, now=NOW, idle_seconds=60)
    assert plan.add == 0 and plan.retire == ["older", "old"]  # longest idle first; "fresh" stays warm
    assert plan_scale(0, replicas, now=NOW, idle_seconds=60).retire == ["older", "old"]  # "busy" finishes first
    assert plan_scale(0, replicas, now=NOW, idle_seconds=0).retire == ["older", "old", "fresh"]


def test_a_replica_never_fed_counts_its_idle_time_from_its_start():
    young, old = _replica("young", age=10), _replica("old", age=100)
    assert plan_scale(0, [young, old], now=NOW, idle_seconds=60).retire == ["old"]


@pytest.mark.parametrize(
    ("work", "spot_available", "kind"),
    [
        pytest.param(_work((100, 3600)), True, "spot", id="slack-covers-spot"),
        pytest.param(_work((100, 3600)), False, "dedicated", id="spot-lost-moves-to-dedicated"),
        pytest.param(_work((3000, 60)), True, "dedicated", id="deadline-too-tight-for-spot"),
        pytest.param([], True, "spot", id="no-work"),
    ],
)
def test_capacity_follows_the_placement_rule(work, spot_available, kind):
    chosen, reason = capacity_for(
        work, now=NOW, replicas=2, rate_per_replica=10, spot_available=spot_available, safety_factor=1.5
    )
    assert chosen == kind, reason
