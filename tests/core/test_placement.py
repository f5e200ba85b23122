from datetime import UTC, datetime, timedelta

import pytest

from nightshift.core.placement import PoolState, PoolThroughput, ThroughputSample, choose_pool
from nightshift.core.sla import Tier, deadline_for

NOW = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)


def spot(**kw):
    return PoolState(
        **{
            "name": "gpu-spot",
            "kind": "spot",
            "online_workers": 1,
            "concurrency_limit": 2,
            "running": 0,
            "requests_per_second": 10.0,
            **kw,
        }
    )


def dedicated(**kw):
    return PoolState(
        **{
            "name": "gpu-dedicated",
            "kind": "dedicated",
            "online_workers": 1,
            "concurrency_limit": 1,
            "running": 0,
            "requests_per_second": 20.0,
            **kw,
        }
    )


CASES = [
    # (case, tier, requests, spot kwargs, dedicated kwargs, expected pool, reason fragment)
    ("enterprise, small batch: slack covers spot", Tier.ENTERPRISE, 1_000, {}, {}, "gpu-spot", "slack covers"),
    ("free, huge batch: 72h still covers spot", Tier.FREE, 1_000_000, {}, {}, "gpu-spot", "slack covers"),
    ("basic, huge batch: too tight for spot", Tier.BASIC, 1_000_000, {}, {}, "gpu-dedicated", "too tight"),
    ("premium, tight with the safety factor", Tier.PREMIUM, 300_000, {}, {}, "gpu-dedicated", "too tight"),
    ("premium, loose", Tier.PREMIUM, 200_000, {}, {}, "gpu-spot", "slack covers"),
    ("spot offline", Tier.FREE, 10, {"online_workers": 0}, {}, "gpu-dedicated", "no online worker"),
    ("spot full", Tier.FREE, 10, {"running": 2}, {}, "gpu-dedicated", "no free slot"),
    ("spot slot taken by a run already due", Tier.FREE, 10, {"running": 1, "queued": 1}, {}, "gpu-dedicated", "no free"),
    ("both full", Tier.FREE, 10, {"running": 2}, {"running": 1}, "gpu-dedicated", "both pools are full"),
    ("spot without a limit is never full", Tier.BASIC, 10, {"concurrency_limit": None, "running": 9}, {}, "gpu-spot", "slack"),
    ("deadline already passed", Tier.ENTERPRISE, 10, {}, {}, "gpu-dedicated", "too tight"),
]


@pytest.mark.parametrize(
    ("case", "tier", "requests", "spot_kw", "dedicated_kw", "pool", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_placement_table(case, tier, requests, spot_kw, dedicated_kw, pool, reason):
    submitted = NOW - timedelta(hours=7) if case == "deadline already passed" else NOW
    decision = choose_pool(
        requests=requests,
        now=NOW,
        deadline=deadline_for(submitted, tier),
        spot=spot(**spot_kw),
        dedicated=dedicated(**dedicated_kw),
    )
    assert decision.pool == pool and reason in decision.reason
    assert decision.estimated_seconds == requests / (10.0 if pool == "gpu-spot" else 20.0)


def test_safety_factor_moves_the_boundary():
    deadline = NOW + timedelta(seconds=1_000)
    kw = dict(requests=6_000, now=NOW, deadline=deadline, spot=spot(), dedicated=dedicated())  # spot: 600 s
    assert choose_pool(**kw, safety_factor=1.5).pool == "gpu-spot"  # 900 s fits
    assert choose_pool(**kw, safety_factor=2.0).pool == "gpu-dedicated"  # 1200 s does not


def test_throughput_log_weighs_by_work_and_keeps_the_newest():
    log = PoolThroughput(pool="gpu-spot")
    assert log.requests_per_second() is None  # nothing measured: placement uses the configured guess
    log = log.record(ThroughputSample(at=NOW, requests=100, seconds=10)).record(ThroughputSample(at=NOW, requests=10, seconds=10))
    assert log.requests_per_second() == pytest.approx(110 / 20)  # not the mean of 10 and 1 req/s
    for i in range(30):
        log = log.record(ThroughputSample(at=NOW + timedelta(minutes=i), requests=2, seconds=1), keep=20)
    assert len(log.samples) == 20 and log.requests_per_second() == 2.0
