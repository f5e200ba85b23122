"""Estimate a batch file without running it: count it, read its model's measured throughput on each
pool, place it as ``submit_batch`` would, and price it (``core.estimate``). No flow run, no engine.

``submit_batch`` places every batch through ``estimate_input`` (so the estimate a run keeps in its
manifest is the one its placement was decided on); ``nightshift estimate`` and
``POST /v1/batches/estimate`` call it on its own.
"""

from __future__ import annotations

from datetime import UTC, datetime

from nightshift.core.catalogue import Catalogue, PoolKind
from nightshift.core.cost import priced_model
from nightshift.core.errors import BatchFileError
from nightshift.core.estimate import (
    BatchEstimate,
    ThroughputBasis,
    TokenCount,
    batch_model,
    count_lines,
    estimate_batch,
    throughput_basis,
)
from nightshift.core.jsonl import iter_lines
from nightshift.core.placement import Placement, PoolState, PoolThroughput, choose_pool
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore
from nightshift.storage.io import INPUT_CHUNK, read_chunks
from nightshift.storage.pools import read_throughput


def count_input(input_uri: str, settings: Settings) -> TokenCount:
    """Count the batch file's requests and tokens, streamed (the file may be hundreds of MB).

    Raises:
        BatchFileError: the file does not exist.
    """
    engine = settings.engine
    storage = settings.storage
    options = storage.storage_options(input_uri)
    chunks = read_chunks(input_uri, chunk_size=INPUT_CHUNK, retry_seconds=storage.retry_seconds, **options)
    lines = (text for _, text in iter_lines(chunks))  # the one line rule (core.jsonl), as validation reads it
    try:
        return count_lines(lines, default_max_tokens=engine.default_max_tokens, max_model_len=engine.max_model_len)
    except BatchFileError as exc:  # read_chunks: the file is not there
        raise BatchFileError(f"batch file not found: {input_uri}") from exc


def _replicas(catalogue: Catalogue, model: str, settings: Settings) -> int:
    """Engine replicas serving ``model``: its catalogue entry's override, else the engine setting."""
    return int(catalogue.models[model].engine.get("replicas", settings.engine.replicas))


def measured_basis(store: ArtifactStore | None, pool: PoolState, model: str, settings: Settings) -> ThroughputBasis:
    """``model``'s measured throughput on ``pool``, else the pool kind's default setting (always the
    default without a store to read: a run on no work pool has no history)."""
    cfg = settings.pools
    default, name = (
        (cfg.spot_requests_per_second, "pools.spot_requests_per_second")
        if pool.kind == "spot"
        else (cfg.dedicated_requests_per_second, "pools.dedicated_requests_per_second")
    )
    log = read_throughput(store, pool.name, model) if store is not None else PoolThroughput(pool=pool.name)
    return throughput_basis(log, model=model, default_rps=default, default_setting=name)


def estimate_input(
    input_uri: str,
    *,
    settings: Settings,
    deadline: datetime,
    pools: tuple[PoolState, PoolState] | None,
    pool: str | None = None,
    capacity: PoolKind | None = None,
    now: datetime | None = None,
    count: TokenCount | None = None,
) -> BatchEstimate:
    """The estimate of the batch file at ``input_uri``.

    Args:
        deadline: the batch's deadline: placement chooses spot only when spot's ETA fits it.
        pools: (spot, dedicated) as Prefect sees them (``submit.read_pool_states``); their
            ``requests_per_second`` is replaced by the batch model's own measured throughput.
            None: the batch is not placed here (a flow called directly): it is estimated on
            ``pool`` (a work pool name, or None) at ``capacity`` (dedicated when None).
        count: the file's count when the caller already has it.

    Raises:
        BatchFileError: the file does not exist or has no request line.
    """
    now = now or datetime.now(UTC)
    count = count or count_input(input_uri, settings)
    if count.requests == 0:
        raise BatchFileError("the batch file has no request lines")
    catalogue = settings.catalogue()
    model = batch_model(count, catalogue)
    measured_as = priced_model(catalogue, model)  # adapters run, and are measured, on their base model's engine
    store = ArtifactStore.from_config(settings.storage)
    if pools is not None:
        spot, dedicated = pools
        bases = {p.kind: measured_basis(store, p, measured_as, settings) for p in pools}
        placement = choose_pool(
            requests=count.requests,
            now=now,
            deadline=deadline,
            spot=spot.model_copy(update={"requests_per_second": bases["spot"].requests_per_second}),
            dedicated=dedicated.model_copy(update={"requests_per_second": bases["dedicated"].requests_per_second}),
            safety_factor=settings.pools.safety_factor,
        )
        basis = bases[placement.kind]
    else:
        kind: PoolKind = capacity or "dedicated"
        fixed = PoolState(name=pool or f"none ({kind})", kind=kind, online_workers=1, requests_per_second=1.0)
        basis = measured_basis(store if pool else None, fixed, measured_as, settings)
        placement = Placement(
            pool=fixed.name,
            kind=kind,
            reason="not placed: the run was started on this pool directly",
            estimated_seconds=count.requests / basis.requests_per_second,
            remaining_seconds=(deadline - now).total_seconds(),
        )
    return estimate_batch(
        count,
        model=model,
        catalogue=catalogue,
        placement=placement,
        basis=basis,
        replicas=_replicas(catalogue, measured_as, settings),
        made_at=now,
    )
