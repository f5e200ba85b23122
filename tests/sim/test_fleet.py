"""Fleet simulator: seeded runs repeat exactly, a tiny scenario matches a hand computation, and the
product's own policy code and settings decide what the simulation does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nightshift.fleet import Fleet, ScenarioError, load_scenario, run_scenario
from nightshift.fleet.report import summarize
from nightshift.fleet.scenario import arrivals
from nightshift.settings import PoolsConfig, Settings


def _scenario(tmp_path: Path, trace: list[dict] | None = None, **overrides) -> Path:
    """Write a scenario YAML (and its JSONL trace) under tmp_path; overrides replace top-level keys."""
    doc = {
        "name": "tiny",
        "seed": 1,
        "duration_hours": 1,
        "pools": {
            "spot": {"gpus": 1, "price_per_gpu_hour": 1.0, "notice_seconds": 60, "replacement_seconds": 300},
            "dedicated": {"gpus": 1, "price_per_gpu_hour": 3.0},
        },
        "model": {"requests_per_second": 1.0, "startup_seconds": 100},
        "arrivals": {"trace": "trace.jsonl"},
        # Placement's guesses equal the true speed, so its estimates are exact until measured.
        "settings": {
            "storage": {"shard_size": 100},
            "pools": {"spot_requests_per_second": 1.0, "dedicated_requests_per_second": 1.0},
        },
    }
    doc.update(overrides)
    (tmp_path / "trace.jsonl").write_text("".join(json.dumps(row) + "\n" for row in trace or []))
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_two_batches_and_one_reclaim_match_the_hand_computation(tmp_path):
    trace = [
        {"submitted_at": 0, "tier": "basic", "requests": 1000, "tokens": 0, "name": "a"},
        {"submitted_at": 10, "tier": "basic", "requests": 200, "tokens": 0, "name": "b"},
    ]
    path = _scenario(tmp_path, trace)
    doc = yaml.safe_load(path.read_text())
    doc["pools"]["spot"]["reclaims"] = [{"at_seconds": 1000, "gpu": 0}]
    path.write_text(yaml.safe_dump(doc))
    sc = load_scenario(path)

    report, runs = run_scenario(sc, base_settings=Settings())
    a, b = runs["policy"].batches
    # a: spot (1000 s x 1.5 fits 24 h), start-up 100 s, shard k written at 100 + 100k. Notice at
    # 1000, reclaimed at 1060: shards 1-9 kept (900 requests), the 10th lost. It resumes at once
    # on the dedicated GPU, warm since b, and runs the last 100 requests: done at 1160.
    assert a.placement.kind == "spot"
    assert [(r.pool, r.started, r.ended, r.outcome, r.requests) for r in a.runs] == [
        ("spot", 0, 1060, "preempted", 900),
        ("dedicated", 1060, 1160, "finished", 100),
    ]
    assert a.report.slack_seconds == 86_400 - 1160 and a.report.met
    # b: the only spot slot is taken, so dedicated: start-up 100 s + 200 s, done at 310.
    assert b.placement.kind == "dedicated" and b.placement.reason == "spot pool has no free slot"
    assert [(r.pool, r.started, r.ended, r.outcome) for r in b.runs] == [("dedicated", 10, 310, "finished")]
    assert b.report.slack_seconds == 86_410 - 310

    policy = report.policy
    assert (policy.preempted_runs, policy.reclaims, policy.escalations) == (1, 1, 0)
    assert policy.pools["spot"].busy_gpu_hours * 3600 == pytest.approx(1060)
    assert policy.pools["dedicated"].busy_gpu_hours * 3600 == pytest.approx(300 + 100)
    assert policy.cost == pytest.approx((1060 * 1.0 + 400 * 3.0) / 3600)
    # All-dedicated: two dedicated GPUs, a done at 1100, b at 310, nothing lost.
    assert report.baselines["all-dedicated"].cost == pytest.approx((1100 + 300) * 3.0 / 3600)
    # All-spot: two spot GPUs; a loses its 10th shard at 1060 and resumes on b's warm GPU.
    spot = runs["all-spot"].batches[0]
    assert [(r.started, r.ended, r.outcome) for r in spot.runs] == [(0, 1060, "preempted"), (1060, 1160, "finished")]
    assert report.baselines["all-spot"].cost == pytest.approx((1060 + 300 + 100) * 1.0 / 3600)
    assert report.cost_vs_all_dedicated == pytest.approx(2260 / 4200)


def _generated(tmp_path: Path, seed: int) -> Path:
    return _scenario(
        tmp_path,
        seed=seed,
        duration_hours=24,
        pools={
            "spot": {"gpus": 6, "price_per_gpu_hour": 1.0, "preemptions_per_gpu_hour": 0.3},
            "dedicated": {"gpus": 2, "price_per_gpu_hour": 3.0},
        },
        model={"requests_per_second": 2.0, "startup_seconds": 60, "speed_sigma": 0.3},
        arrivals={
            "generator": {
                "batches": 150,
                "tier_mix": {"enterprise": 0.3, "premium": 0.2, "basic": 0.3, "free": 0.2},
                "median_requests": 1500,
            },
            "nightly": [{"name": "scoring", "hour": 1, "requests": 20000}],
        },
    )


def test_seeded_runs_are_identical_and_the_seed_matters(tmp_path):
    sc = load_scenario(_generated(tmp_path, seed=5))
    first, _ = run_scenario(sc, base_settings=Settings())
    again, _ = run_scenario(sc, base_settings=Settings())
    assert first.policy.reclaims > 0 and first.policy.preempted_runs > 0
    assert first.model_dump(exclude={"wall_seconds"}) == again.model_dump(exclude={"wall_seconds"})

    other, _ = run_scenario(sc.model_copy(update={"seed": 6}), base_settings=Settings())
    assert other.policy.model_dump() != first.policy.model_dump()


def test_the_safety_factor_setting_changes_the_simulated_placement(tmp_path):
    # 10,000 requests at 1 req/s against the enterprise tier's 6 h (21,600 s): 15,000 s at the
    # default factor 1.5 fits on spot; at 2.5, 25,000 s does not.
    trace = [{"submitted_at": 0, "tier": "enterprise", "requests": 10_000, "tokens": 0}]
    sc = load_scenario(_scenario(tmp_path, trace))
    arrived = arrivals(sc)

    default = Fleet(sc, sc.build_settings(Settings()), arrived).run().batches[0]
    cautious_settings = sc.build_settings(Settings(pools=PoolsConfig(safety_factor=2.5)))
    cautious = Fleet(sc, cautious_settings, arrived).run().batches[0]

    assert default.placement.kind == "spot" and "x 1.5 safety" in default.placement.reason
    assert cautious.placement.kind == "dedicated"
    assert cautious.placement.reason.startswith("deadline too tight for spot: 10000s x 2.5 safety")
    assert [r.pool for r in cautious.runs] == ["dedicated"]


def test_the_sla_watch_escalates_a_spot_run_whose_measured_rate_says_it_will_be_late(tmp_path):
    # Placed on spot at the assumed 1 req/s (10,000 s x 1.5 fits 6 h), but this batch runs at 0.4
    # req/s: the product's watch measures that over its rate window and the at-risk verdict moves
    # it to dedicated, where it keeps the shards it finished.
    trace = [{"submitted_at": 0, "tier": "enterprise", "requests": 10_000, "tokens": 0}]
    path = _scenario(tmp_path, trace)
    doc = yaml.safe_load(path.read_text())
    doc["pools"]["spot"]["requests_per_second"] = 0.4
    path.write_text(yaml.safe_dump(doc))
    sc = load_scenario(path)
    batch = Fleet(sc, sc.build_settings(Settings()), arrivals(sc)).run().batches[0]

    assert batch.escalated and [r.outcome for r in batch.runs] == ["escalated", "finished"]
    spot_run, dedicated_run = batch.runs
    assert spot_run.requests % 100 == 0 and spot_run.requests > 0  # whole shards only
    assert dedicated_run.requests == 10_000 - spot_run.requests
    # With the margin raised past the whole lateness, the same run stays on spot and is late.
    relaxed = sc.build_settings(Settings()).model_copy(deep=True)
    relaxed.sla.at_risk_margin_seconds = 86_400
    late = Fleet(sc, relaxed, arrivals(sc)).run().batches[0]
    assert not late.escalated and not late.report.met


def test_waiting_runs_start_by_queue_priority_then_fifo(tmp_path):
    trace = [
        {"submitted_at": 0, "tier": "free", "requests": 100, "tokens": 0, "name": "first"},
        {"submitted_at": 1, "tier": "free", "requests": 100, "tokens": 0, "name": "low", "priority": "low"},
        {"submitted_at": 2, "tier": "free", "requests": 100, "tokens": 0, "name": "normal"},
        {"submitted_at": 3, "tier": "free", "requests": 100, "tokens": 0, "name": "high", "priority": "high"},
    ]
    path = _scenario(tmp_path, trace)
    doc = yaml.safe_load(path.read_text())
    doc["pools"]["spot"]["gpus"] = 0  # everything on the one dedicated GPU
    path.write_text(yaml.safe_dump(doc))
    sc = load_scenario(path)
    queues = {"dedicated": {"high": 1, "normal": 2, "low": 3}}

    run = Fleet(sc, sc.build_settings(Settings()), arrivals(sc), queue_priorities=queues).run()
    order = [b.arrival.name for b in sorted(run.batches, key=lambda b: b.runs[0].started)]
    assert order == ["first", "high", "normal", "low"]
    fifo = Fleet(sc, sc.build_settings(Settings()), arrivals(sc)).run()
    assert [b.arrival.name for b in sorted(fifo.batches, key=lambda b: b.runs[0].started)] == ["first", "low", "normal", "high"]
    dedicated = summarize(run, sc).pools["dedicated"]
    assert dedicated.queue_depth_max == 3 and dedicated.queue_depth_hourly_max == [3]


def test_a_bad_trace_row_names_its_line_and_field(tmp_path):
    path = _scenario(
        tmp_path, [{"submitted_at": 0, "tier": "basic", "requests": 5}, {"submitted_at": 3, "tier": "gold", "requests": 5}]
    )
    with pytest.raises(ScenarioError, match=r"trace.jsonl, line 2, field 'tier'"):
        arrivals(load_scenario(path))


def test_plots_and_a_sweep_are_written(tmp_path):
    sc = load_scenario(_generated(tmp_path, seed=5))
    report, runs = run_scenario(sc, base_settings=Settings(), sweep=("dedicated_gpus", [1, 4]))
    assert [p["value"] for p in report.sweep] == [1, 4]
    from nightshift.fleet.plots import write_plots

    written = write_plots(report, runs, tmp_path / "out")
    assert sorted(p.name for p in written) == ["cost.png", "queue.png", "slack.png", "sweep.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_the_simulator_imports_neither_plotting_nor_the_gpu_or_orchestration_stack():
    import subprocess
    import sys

    heavy = ("matplotlib", "prefect", "ray", "vllm", "torch")
    code = f"import sys, nightshift.fleet; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing nightshift.fleet pulled in: {out}"


def test_an_unknown_sweep_knob_is_refused_before_simulating(tmp_path):
    sc = load_scenario(_scenario(tmp_path, [{"submitted_at": 0, "tier": "basic", "requests": 5}]))
    with pytest.raises(ScenarioError, match=r"--sweep, field 'price': unknown knob; one of safety_factor"):
        run_scenario(sc, base_settings=Settings(), sweep=("price", [1.0]))


def test_model_speed_from_the_throughput_the_product_measured_and_a_csv_trace(tmp_path):
    from datetime import UTC, datetime

    from nightshift.core.placement import ThroughputSample
    from nightshift.settings import StorageConfig
    from nightshift.storage import ArtifactStore
    from nightshift.storage.pools import record_throughput

    store = ArtifactStore.from_config(StorageConfig(root=str(tmp_path / "store")))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    record_throughput(store, "gpu-spot", "m", ThroughputSample(at=at, requests=400, seconds=200))  # 2 req/s
    record_throughput(store, "gpu-dedicated", "m", ThroughputSample(at=at, requests=400, seconds=100))  # 4 req/s
    record_throughput(store, "gpu-spot", "other", ThroughputSample(at=at, requests=10, seconds=100))  # another model's speed
    (tmp_path / "trace.csv").write_text("submitted_at,tier,requests,tokens\n2026-01-05T00:00:10Z,free,200,0\n")
    model = {"store": str(tmp_path / "store"), "name": "m", "startup_seconds": 0}
    path = _scenario(tmp_path, model=model, arrivals={"trace": "trace.csv"})
    sc = load_scenario(path)

    (batch,) = Fleet(sc, sc.build_settings(Settings()), arrivals(sc)).run().batches
    # Placed with the measured 2 req/s (not the settings' guess) and run at it: 100 s.
    assert batch.placement.kind == "spot" and batch.placement.estimated_seconds == 100
    assert [(r.started, r.ended) for r in batch.runs] == [(10, 110)]
