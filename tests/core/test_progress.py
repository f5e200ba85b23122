from datetime import UTC, datetime, timedelta

import pytest

from nightshift.core.progress import (
    DEFAULT_THRESHOLDS,
    RateSample,
    RateWindow,
    Risk,
    RiskThresholds,
    assess_progress,
)

NOW = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)
T0 = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)


def snapshot(*, remaining: float = 3600.0, **kw):
    """A batch of 10 000 requests, 4 000 done at 10 req/s (ETA 600 s) with an hour left, unless overridden."""
    args = {
        "batch_id": "b-1",
        "version": "v1",
        "tier": "premium",
        "pool": "gpu-spot",
        "total": 10_000,
        "completed": 4_000,
        "failed": 0,
        "now": NOW,
        "deadline": NOW + timedelta(seconds=remaining),
        "requests_per_second": 10.0,
        **kw,
    }
    return assess_progress(**args)


# (id, snapshot kwargs, risk, pending, percent, eta_seconds, slack_seconds, warning codes)
CASES = [
    ("on track", {}, Risk.ON_TRACK, 6_000, 40.0, 600.0, 3_000.0, []),
    # ETA 600 s; remaining chosen so ETA = remaining + 361 / + 359 / + 360 (the 0.1 h margin).
    ("at risk: ETA 1 s over the margin", {"remaining": 239.0}, Risk.AT_RISK, 6_000, 40.0, 600.0, -361.0, []),
    ("on track: ETA 1 s under the margin", {"remaining": 241.0}, Risk.ON_TRACK, 6_000, 40.0, 600.0, -359.0, []),
    ("on track: ETA exactly at the margin", {"remaining": 240.0}, Risk.ON_TRACK, 6_000, 40.0, 600.0, -360.0, []),
    ("breached: deadline passed with work left", {"remaining": -60.0}, Risk.BREACHED, 6_000, 40.0, 600.0, -660.0, []),
    ("breached: deadline is now with work left", {"remaining": 0.0}, Risk.BREACHED, 6_000, 40.0, 600.0, -600.0, []),
    (
        "finished on time",
        {"completed": 9_990, "failed": 10, "remaining": 100.0},
        Risk.ON_TRACK,
        0,
        100.0,
        0.0,
        100.0,
        [],
    ),
    (
        "finished after the deadline",
        {"completed": 10_000, "remaining": -500.0},
        Risk.ON_TRACK,
        0,
        100.0,
        0.0,
        -500.0,
        [],
    ),
    ("no rate, no fallback", {"requests_per_second": None}, Risk.ON_TRACK, 6_000, 40.0, None, None, []),
    (
        # The fallback is not a measurement of this batch, so 2 req/s raises no low-throughput warning.
        "no rate, slow fallback still fits",
        {"requests_per_second": None, "fallback_requests_per_second": 2.0},
        Risk.ON_TRACK,
        6_000,
        40.0,
        3_000.0,
        600.0,
        [],
    ),
    (
        "no rate, fallback too slow",
        {"requests_per_second": None, "fallback_requests_per_second": 1.0},
        Risk.AT_RISK,
        6_000,
        40.0,
        6_000.0,
        -2_400.0,
        [],
    ),
    (
        "measured rate wins over the fallback",
        {"requests_per_second": 20.0, "fallback_requests_per_second": 1.0},
        Risk.ON_TRACK,
        6_000,
        40.0,
        300.0,
        3_300.0,
        [],
    ),
    # Nothing finished in the window (engine loading, long shards): unknown, not at risk by itself.
    ("no progress in the window", {"requests_per_second": 0.0}, Risk.ON_TRACK, 6_000, 40.0, None, None, ["low-throughput"]),
    (
        "no progress in the window: the fallback estimates",
        {"requests_per_second": 0.0, "fallback_requests_per_second": 50.0},
        Risk.ON_TRACK,
        6_000,
        40.0,
        120.0,
        3_480.0,
        ["low-throughput"],
    ),
    (
        "no progress in the window: a slow fallback puts it at risk",
        {"requests_per_second": 0.0, "fallback_requests_per_second": 1.0},
        Risk.AT_RISK,
        6_000,
        40.0,
        6_000.0,
        -2_400.0,
        ["low-throughput"],
    ),
    ("throughput exactly at the minimum", {"requests_per_second": 5.0}, Risk.ON_TRACK, 6_000, 40.0, 1_200.0, 2_400.0, []),
    (
        "throughput just under the minimum",
        {"requests_per_second": 4.8},
        Risk.ON_TRACK,
        6_000,
        40.0,
        1_250.0,
        2_350.0,
        ["low-throughput"],
    ),
    (
        "slow but finished: no throughput warning",
        {"completed": 10_000, "requests_per_second": 1.0},
        Risk.ON_TRACK,
        0,
        100.0,
        0.0,
        3_600.0,
        [],
    ),
    ("error rate exactly 5 %", {"completed": 3_800, "failed": 200}, Risk.ON_TRACK, 6_000, 40.0, 600.0, 3_000.0, []),
    (
        "error rate just over 5 %",
        {"completed": 3_796, "failed": 204},
        Risk.ON_TRACK,
        6_000,
        40.0,
        600.0,
        3_000.0,
        ["high-error-rate"],
    ),
    (
        "nothing done yet: no error rate",
        {"completed": 0, "failed": 0, "requests_per_second": None},
        Risk.ON_TRACK,
        10_000,
        0.0,
        None,
        None,
        [],
    ),
    ("utilisation exactly 90 %", {"accelerator_utilisation": 0.9}, Risk.ON_TRACK, 6_000, 40.0, 600.0, 3_000.0, []),
    (
        "utilisation just over 90 %",
        {"accelerator_utilisation": 0.91},
        Risk.ON_TRACK,
        6_000,
        40.0,
        600.0,
        3_000.0,
        ["accelerator-saturated"],
    ),
    (
        "empty batch",
        {"total": 0, "completed": 0, "failed": 0, "requests_per_second": None},
        Risk.ON_TRACK,
        0,
        100.0,
        0.0,
        3_600.0,
        [],
    ),
    (
        "every warning at once, at risk",
        {"completed": 100, "failed": 100, "requests_per_second": 1.0, "accelerator_utilisation": 0.99},
        Risk.AT_RISK,
        9_800,
        2.0,
        9_800.0,
        -6_200.0,
        ["low-throughput", "high-error-rate", "accelerator-saturated"],
    ),
]


@pytest.mark.parametrize(("case", "kw", "risk", "pending", "percent", "eta", "slack", "codes"), CASES, ids=[c[0] for c in CASES])
def test_progress_table(case, kw, risk, pending, percent, eta, slack, codes):
    p = snapshot(**kw)
    assert p.risk is risk
    assert p.pending == pending
    assert p.percent == pytest.approx(percent)
    assert p.eta_seconds == (pytest.approx(eta) if eta is not None else None)
    assert p.slack_seconds == (pytest.approx(slack) if slack is not None else None)
    assert p.remaining_seconds == pytest.approx(kw.get("remaining", 3600.0))
    assert [w.code for w in p.warnings] == codes


def test_snapshot_carries_identity_and_rates():
    p = snapshot(requests_per_second=12.5, tokens_per_second=800.0, pool=None)
    assert (p.batch_id, p.version, p.tier, p.pool) == ("b-1", "v1", "premium", None)
    assert (p.total, p.completed, p.failed) == (10_000, 4_000, 0)
    assert p.requests_per_second == pytest.approx(12.5)
    assert p.tokens_per_second == pytest.approx(800.0)
    assert p.deadline == NOW + timedelta(hours=1)
    assert p.updated_at == NOW


def test_warnings_carry_value_threshold_and_numbers():
    p = snapshot(completed=3_796, failed=204, requests_per_second=4.8, accelerator_utilisation=0.95)
    by_code = {w.code: w for w in p.warnings}
    assert (by_code["low-throughput"].value, by_code["low-throughput"].threshold) == (pytest.approx(4.8), 5.0)
    assert "4.80" in by_code["low-throughput"].message and "5.00" in by_code["low-throughput"].message
    assert by_code["high-error-rate"].value == pytest.approx(0.051)
    assert by_code["high-error-rate"].threshold == 0.05
    assert "204 of 4000" in by_code["high-error-rate"].message and "5.1%" in by_code["high-error-rate"].message
    assert by_code["accelerator-saturated"].value == pytest.approx(0.95)
    assert "95%" in by_code["accelerator-saturated"].message and "90%" in by_code["accelerator-saturated"].message


def test_custom_thresholds():
    strict = RiskThresholds(
        at_risk_margin_seconds=0, min_requests_per_second=20, max_error_rate=0, max_accelerator_utilisation=0.5
    )
    # ETA 600 s against 599 s left: on track with the default 360 s margin, at risk with none.
    assert snapshot(remaining=599.0).risk is Risk.ON_TRACK
    p = snapshot(remaining=599.0, failed=1, accelerator_utilisation=0.6, thresholds=strict)
    assert p.risk is Risk.AT_RISK
    assert [w.code for w in p.warnings] == ["low-throughput", "high-error-rate", "accelerator-saturated"]


def test_default_thresholds():
    assert DEFAULT_THRESHOLDS.at_risk_margin_seconds == 360.0
    assert DEFAULT_THRESHOLDS.min_requests_per_second == 5.0
    assert DEFAULT_THRESHOLDS.max_error_rate == 0.05
    assert DEFAULT_THRESHOLDS.max_accelerator_utilisation == 0.9
    with pytest.raises(ValueError):
        RiskThresholds(max_error_rate=-0.1)


def sample(seconds: float, requests: int, tokens: int | None = None) -> RateSample:
    return RateSample(
        at=T0 + timedelta(seconds=seconds), requests=requests, tokens=tokens if tokens is not None else 50 * requests
    )


def window(*samples: RateSample, seconds: float = 120.0) -> RateWindow:
    w = RateWindow(seconds=seconds)
    for s in samples:
        w = w.add(s)
    return w


def test_rates_over_the_window():
    w = window(sample(0, 0), sample(30, 300), sample(60, 600))
    rps, tps = w.rates()
    assert rps == pytest.approx(10.0)
    assert tps == pytest.approx(500.0)


def test_add_returns_a_new_window():
    w = window(sample(0, 0))
    w2 = w.add(sample(10, 100))
    assert len(w.samples) == 1
    assert [s.requests for s in w2.samples] == [0, 100]


def test_old_samples_dropped_but_newest_older_one_kept_as_anchor():
    # Window start = 150 - 120 = 30: samples at 0 and 10 go, 20 stays as the anchor.
    w = window(sample(0, 0), sample(10, 100), sample(20, 200), sample(150, 1_500))
    assert [s.at for s in w.samples] == [T0 + timedelta(seconds=20), T0 + timedelta(seconds=150)]
    rps, tps = w.rates()
    assert rps == pytest.approx(1_300 / 130)
    assert tps == pytest.approx(50 * 1_300 / 130)


def test_sample_exactly_at_the_window_start_is_the_anchor():
    w = window(sample(0, 0), sample(30, 300), sample(150, 1_500))
    assert [s.at for s in w.samples] == [T0 + timedelta(seconds=30), T0 + timedelta(seconds=150)]
    assert w.rates()[0] == pytest.approx(10.0)


def test_samples_inside_the_window_are_all_kept():
    w = window(sample(0, 0), sample(40, 400), sample(80, 800), sample(120, 1_200))
    assert len(w.samples) == 4
    assert w.rates()[0] == pytest.approx(10.0)


def test_rate_zero_when_nothing_moved():
    # Progress stopped at 100 requests; the anchor (at 60) keeps the window measuring, now 0 req/s.
    w = window(sample(0, 0), sample(60, 100), sample(300, 100))
    assert [s.at for s in w.samples] == [T0 + timedelta(seconds=60), T0 + timedelta(seconds=300)]
    assert w.rates() == (pytest.approx(0.0), pytest.approx(0.0))
    assert w.rates()[0] is not None


def test_fewer_than_two_samples_or_zero_span_has_no_rate():
    assert RateWindow().rates() == (None, None)
    assert window(sample(0, 0)).rates() == (None, None)
    assert window(sample(5, 0), sample(5, 100)).rates() == (None, None)


def test_late_sample_is_sorted_into_place():
    w = window(sample(0, 0), sample(60, 600), sample(30, 300))
    assert [s.requests for s in w.samples] == [0, 300, 600]
    assert w.rates()[0] == pytest.approx(10.0)


def test_counter_reset_reads_as_no_progress():
    w = window(sample(0, 500), sample(60, 100))
    assert w.rates() == (pytest.approx(0.0), pytest.approx(0.0))


def test_window_rate_feeds_assess_progress():
    w = window(sample(0, 0), sample(60, 600), sample(120, 1_200))
    rps, tps = w.rates()
    p = snapshot(completed=1_200, requests_per_second=rps, tokens_per_second=tps)
    assert p.eta_seconds == pytest.approx(8_800 / 10.0)
    assert p.tokens_per_second == pytest.approx(500.0)
    assert p.risk is Risk.ON_TRACK
