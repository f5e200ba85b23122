"""The gateway app in-process (httpx ``ASGITransport``, lifespan run) with its outside collaborators
passed in: an orchestrator that records what it is asked and answers as a test scripts it. The
database (SQLite), the store (a local folder) and the egress path are the real ones."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from nightshift.api import db
from nightshift.api.app import create_app
from nightshift.api.auth import create_api_key
from nightshift.api.tracker import RunState
from nightshift.core.estimate import BatchEstimate
from nightshift.core.placement import Placement, PoolState
from nightshift.orchestration.submit import Submission
from nightshift.settings import ApiConfig, LimitsConfig, Settings, StorageConfig

JWT_SECRET = "in-process-test-secret-0123456789abcdef"


@dataclass
class ScriptedOrchestrator:
    """Records submits and cancels; ``fail`` makes submit raise; ``states`` answers run_state;
    ``pools`` answers pool_states (both online with free slots unless a test scripts them)."""

    fail: BaseException | None = None
    submits: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    states: dict[str, RunState] = field(default_factory=dict)
    estimate: BatchEstimate | None = None  # the forecast submit answers with
    pools: tuple[PoolState, PoolState] = (
        PoolState(name="gpu-spot", kind="spot", online_workers=1, requests_per_second=5.0),
        PoolState(name="gpu-dedicated", kind="dedicated", online_workers=1, requests_per_second=5.0),
    )

    def submit(self, source_uri: str, **params: Any) -> Submission:
        if self.fail is not None:
            raise self.fail
        self.submits.append({"source_uri": source_uri, **params})
        run_id = f"run-{len(self.submits)}"
        placement = Placement(pool="gpu-spot", kind="spot", reason="scripted", estimated_seconds=60, remaining_seconds=3600)
        return Submission(
            flow_run_id=run_id,
            flow_run_name=run_id,
            deployment="process-batch/spot",
            batch_id=params["batch_id"],
            requests=1,
            deadline=params["deadline"],
            placement=placement,
            estimate=self.estimate,
        )

    def run_state(self, flow_run_id: str) -> RunState:
        return self.states.get(flow_run_id, RunState(flow_run_id=flow_run_id, name="Scheduled"))

    def cancel(self, flow_run_id: str) -> None:
        self.cancels.append(flow_run_id)

    def pool_states(self, settings: Settings) -> tuple[PoolState, PoolState]:
        if self.fail is not None:
            raise self.fail
        return self.pools


@dataclass
class Gateway:
    """One in-process gateway: its app, an httpx client, and the keys of orgs acme and globex."""

    app: Any
    client: httpx.AsyncClient
    orchestrator: ScriptedOrchestrator
    settings: Settings
    keys: dict[str, str]

    def auth(self, org: str = "acme") -> dict[str, str]:
        """The Authorization header of ``org``'s key."""
        return {"Authorization": f"Bearer {self.keys[org]}"}

    async def upload(self, data: bytes, org: str = "acme", name: str = "in.jsonl") -> httpx.Response:
        """``POST /v1/files`` as the openai client sends it."""
        return await self.client.post(
            "/v1/files", headers=self.auth(org), data={"purpose": "batch"}, files={"file": (name, data, "application/jsonl")}
        )

    async def create_batch(self, file_id: str, org: str = "acme", **extra: Any) -> httpx.Response:
        """``POST /v1/batches`` for a chat batch."""
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
        return await self.client.post("/v1/batches", headers=self.auth(org), json=body)

    async def rows(self) -> list[db.Batch]:
        """Every batch row, straight from the database."""
        from sqlalchemy import select

        async with self.app.state.database.session() as session:
            return list((await session.execute(select(db.Batch))).scalars())


def settings_for(tmp_path: Path, **api: Any) -> Settings:
    """Settings of a gateway on a SQLite file and a local store under ``tmp_path``."""
    limits = api.pop("limits", None) or LimitsConfig()
    storage = api.pop("storage", None) or StorageConfig(root=str(tmp_path / "store"))
    return Settings(
        storage=storage,
        limits=limits,
        api=ApiConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", jwt_secret=JWT_SECRET, **api),
    )


def run_gateway(
    settings: Settings,
    body: Callable[[Gateway], Awaitable[None]],
    *,
    orchestrator: ScriptedOrchestrator | None = None,
    send_webhook: Any = None,
    tiers: dict[str, str] | None = None,
    batch_events: Any = None,
) -> None:
    """Start the app (lifespan included), make orgs acme and globex with one key each, run ``body``."""
    orchestrator = orchestrator or ScriptedOrchestrator()
    tiers = tiers or {"acme": "premium", "globex": "free"}

    async def main() -> None:
        app = create_app(
            settings, orchestrator=orchestrator, send_webhook=send_webhook, batch_events=batch_events, track_every=3600
        )
        async with app.router.lifespan_context(app):
            keys = {}
            async with app.state.database.session() as session:
                for name, tier in tiers.items():
                    org = await db.create_org(session, name, tier)
                    _, keys[name] = await create_api_key(session, org, "test", tier=tier)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
                await body(Gateway(app, client, orchestrator, settings, keys))
            await app.state.gateway.lifecycle.drain()

    asyncio.run(main())


def chat_lines(n: int, *, model: str = "tiny") -> bytes:
    """``n`` chat request lines."""
    import json

    lines = [
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]},
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def now() -> datetime:
    """The current UTC time."""
    return datetime.now(UTC)
