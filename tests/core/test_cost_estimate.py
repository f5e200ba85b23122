"""The one cost rule (engine-hours × the pool's price for the model) and the estimate rule, on plain values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from nightshift.core.catalogue import AdapterEntry, Catalogue, EngineHourPrices, ModelEntry
from nightshift.core.cost import batch_cost, engine_cost, engine_seconds
from nightshift.core.estimate import batch_model, count_lines, estimate_batch, throughput_basis
from nightshift.core.placement import Placement, PoolThroughput, ThroughputSample

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)

CATALOGUE = Catalogue(
    default="small",
    models={
        "small": ModelEntry(source="/m/small", price_per_engine_hour=EngineHourPrices(spot=0.10, dedicated=0.40)),
        "big": ModelEntry(
            source="/m/big",
            price_per_engine_hour=EngineHourPrices(spot=1.0, dedicated=3.0),
            adapters={"big-sql": AdapterEntry(source="/m/big-sql")},
        ),
    },
)


def _line(body: dict, url: str = "/v1/chat/completions") -> bytes:
    return json.dumps({"custom_id": "x", "method": "POST", "url": url, "body": body}).encode() + b"\n"


def test_cost_is_engine_hours_times_the_pools_price_and_the_saving_is_against_dedicated():
    prices = EngineHourPrices(spot=0.12, dedicated=0.40)
    spot = engine_cost(engine_seconds=1800, model="m", pool="spot", prices=prices)
    assert spot.usd == pytest.approx(0.5 * 0.12) and spot.dedicated_usd == pytest.approx(0.5 * 0.40)
    assert spot.spot_saving_usd == pytest.approx(0.5 * (0.40 - 0.12)) and spot.engine_hours == 0.5
    assert spot.price_per_engine_hour == 0.12 and spot.pool == "spot"
    dedicated = engine_cost(engine_seconds=1800, model="m", pool="dedicated", prices=prices)
    assert dedicated.usd == pytest.approx(0.2) and dedicated.spot_saving_usd == 0
    assert engine_cost(engine_seconds=0, model="m", pool="spot", prices=prices).usd == 0


def test_engine_seconds_are_busy_seconds_times_replicas():
    assert engine_seconds(90.0, 1) == 90.0
    assert engine_seconds(90.0, 4) == 360.0
    assert engine_seconds(-1.0, 2) == 0.0  # a clock step never makes a refund


def test_batch_cost_prices_the_catalogue_model_an_adapter_a_folder_and_no_pool():
    assert batch_cost(CATALOGUE, model_id="big", pool="spot", engine_seconds=3600).usd == pytest.approx(1.0)
    adapter = batch_cost(CATALOGUE, model_id="big-sql", pool="dedicated", engine_seconds=3600)
    assert adapter.model == "big" and adapter.usd == pytest.approx(3.0)  # an adapter runs on its base model's engine
    folder = batch_cost(CATALOGUE, model_id="/somewhere/else", pool="spot", engine_seconds=3600)
    assert folder.model == "small" and folder.usd == pytest.approx(0.10)  # outside the catalogue: the default's prices
    direct = batch_cost(CATALOGUE, model_id=None, pool=None, engine_seconds=7200)
    assert direct.pool == "dedicated" and direct.usd == pytest.approx(0.80)


def test_token_count_prompt_from_characters_completion_from_each_lines_budget():
    lines = [
        _line({"model": "big", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 10}),
        # max_completion_tokens wins over max_tokens; n answers each cost the budget
        _line(
            {
                "messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 8}]}],
                "max_completion_tokens": 5,
                "max_tokens": 50,
                "n": 2,
            }
        ),  # fmt: skip
        _line({"model": "big", "messages": [{"role": "user", "content": "z" * 4}]}),  # no budget: engine default
        _line({"model": "big", "prompt": "p" * 12}, url="/v1/completions"),  # OpenAI's default 16
        _line({"model": "small", "input": "e" * 4}, url="/v1/embeddings"),  # nothing generated
        _line({"input": "r" * 4, "instructions": "i" * 4, "max_output_tokens": 7}, url="/v1/responses"),
        b"{not json\n",
        b"   \n",
    ]
    count = count_lines(lines, default_max_tokens=100, max_model_len=2048)
    assert count.requests == 7 and count.unreadable_lines == 1  # the blank line is no request
    # characters of every string in messages/prompt/input/instructions (roles included), / 4 rounded up per line
    chars = [len("user") + 40, len("user") + len("text") + 8, len("user") + 4, 12, 4, 8]
    assert count.prompt_chars == sum(chars)
    assert count.prompt_tokens == sum(-(-c // 4) for c in chars)
    assert count.completion_tokens == 10 + 5 * 2 + 100 + 16 + 0 + 7
    assert count.lines_without_budget == 3
    assert count.models == {"big": 3, "": 2, "small": 1}


def test_a_chat_line_without_budget_is_cut_to_what_fits_the_context():
    long = _line({"messages": [{"role": "user", "content": "w" * 396}]})  # (4 + 396) / 4 = 100 prompt tokens
    assert count_lines([long], default_max_tokens=256, max_model_len=150).completion_tokens == 50


def test_the_batch_model_is_the_first_catalogue_id_a_line_names_as_the_run_picks_it():
    count = count_lines(
        [_line({"model": "big-sql", "messages": []})] * 3 + [_line({"messages": []})] * 2 + [_line({"model": "nope"})] * 9,
        default_max_tokens=1,
        max_model_len=16,
    )
    assert batch_model(count, CATALOGUE) == "big-sql"  # unknown names are error lines, not votes
    empty = count_lines([], default_max_tokens=1, max_model_len=16)
    assert batch_model(empty, CATALOGUE) == "small"


def test_throughput_basis_is_the_models_history_on_the_pool_else_the_stated_default():
    log = PoolThroughput(pool="gpu-spot")
    default = throughput_basis(log, model="big", default_rps=5.0, default_setting="pools.spot_requests_per_second")
    assert (default.confidence, default.batches, default.requests_per_second) == ("default", 0, 5.0)
    assert "pools.spot_requests_per_second = 5 req/s" in default.basis and "big" in default.basis
    for requests, seconds in ((100, 50), (300, 50)):
        log = log.record(ThroughputSample(at=T0, requests=requests, seconds=seconds))
    measured = throughput_basis(log, model="big", default_rps=5.0, default_setting="pools.spot_requests_per_second")
    assert (measured.confidence, measured.batches, measured.requests_per_second) == ("measured", 2, 4.0)
    assert "last 2 batches of big on gpu-spot" in measured.basis


def test_estimate_prices_the_placed_eta_times_replicas_on_the_chosen_capacity():
    count = count_lines([_line({"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})] * 40,
                        default_max_tokens=1, max_model_len=64)  # fmt: skip
    basis = throughput_basis(
        PoolThroughput(pool="gpu-spot").record(ThroughputSample(at=T0, requests=20, seconds=10)),
        model="big",
        default_rps=5.0,
        default_setting="pools.spot_requests_per_second",
    )
    placement = Placement(pool="gpu-spot", kind="spot", reason="slack", estimated_seconds=40 / 2.0, remaining_seconds=3600)
    est = estimate_batch(count, model="big", catalogue=CATALOGUE, placement=placement, basis=basis, replicas=2, made_at=T0)
    assert est.requests == 40 and est.completion_tokens == 320 and est.model == "big"
    assert est.eta_seconds == 20 and est.engine_hours == pytest.approx(40 / 3600)
    assert est.cost.usd == pytest.approx(40 / 3600 * 1.0) and est.cost.spot_saving_usd == pytest.approx(40 / 3600 * 2.0)
    assert est.placement.pool == "gpu-spot" and est.confidence == "measured" and est.basis_batches == 1
    assert "characters" in est.token_rule and "upper bound" in est.token_rule
    assert est.made_at == T0 and est.placement.remaining_seconds == timedelta(hours=1).total_seconds()
