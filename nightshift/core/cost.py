"""What a batch costs: the one cost rule, used by the manifest, the ``/v1/batches`` object, the
``/v1/jobs`` stats, ``nightshift ls`` and the estimate alike.

A batch is charged for the engine time it held, not for its tokens: engine-hours times the price
of an engine-hour of its model on the capacity it ran on (the catalogue's
``price_per_engine_hour``). The spot saving is what the same engine-hours would have cost on
dedicated capacity minus what they cost.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from nightshift.core.catalogue import Catalogue, EngineHourPrices, PoolKind


class BatchCost(BaseModel):
    """Engine time, where it ran, and what it cost (actual in the manifest, forecast in the estimate)."""

    model: str = Field(description="Catalogue model whose engine-hour price applies.")
    pool: PoolKind = Field(description="Capacity the engine time was on: spot or dedicated.")
    engine_seconds: float = Field(ge=0, description="Engine-seconds charged: busy seconds times engine replicas.")
    price_per_engine_hour: float = Field(ge=0, description="USD per engine-hour of the model on this capacity.")
    usd: float = Field(ge=0, description="engine_seconds / 3600 × price_per_engine_hour.")
    dedicated_usd: float = Field(ge=0, description="What the same engine-seconds cost on dedicated capacity.")
    spot_saving_usd: float = Field(ge=0, description="dedicated_usd − usd (0 on dedicated).")

    @property
    def engine_hours(self) -> float:
        return self.engine_seconds / 3600


def engine_seconds(busy_seconds: float, replicas: int) -> float:
    """Engine-seconds a batch held: the wall time its shards kept the engines busy (the run's
    inference time less the wait for an engine to come up, the same measure throughput is recorded
    on) times the engine replicas serving it."""
    return max(busy_seconds, 0.0) * max(replicas, 1)


def engine_cost(*, engine_seconds: float, model: str, pool: PoolKind, prices: EngineHourPrices) -> BatchCost:
    """The cost of ``engine_seconds`` of ``model`` on ``pool``: engine-hours × the pool's price."""
    hours = max(engine_seconds, 0.0) / 3600
    usd = hours * prices.for_pool(pool)
    dedicated = hours * prices.dedicated
    return BatchCost(
        model=model,
        pool=pool,
        engine_seconds=max(engine_seconds, 0.0),
        price_per_engine_hour=prices.for_pool(pool),
        usd=usd,
        dedicated_usd=dedicated,
        spot_saving_usd=max(dedicated - usd, 0.0),
    )


def priced_model(catalogue: Catalogue, model_id: str | None) -> str:
    """The catalogue model whose prices apply to ``model_id``: an adapter runs on (and is priced as)
    its base model; a model outside the catalogue (a folder passed with ``--model``) is priced as
    the catalogue's default."""
    ref = catalogue.resolve(model_id)
    return ref.model if ref is not None else catalogue.default


def batch_cost(catalogue: Catalogue, *, model_id: str | None, pool: PoolKind | None, engine_seconds: float) -> BatchCost:
    """The cost rule over the catalogue: ``engine_seconds`` of the model ``model_id`` runs on, on
    ``pool`` (None: a run with no placement, such as a flow called directly, is priced as dedicated)."""
    model = priced_model(catalogue, model_id)
    return engine_cost(
        engine_seconds=engine_seconds, model=model, pool=pool or "dedicated", prices=catalogue.models[model].price_per_engine_hour
    )
