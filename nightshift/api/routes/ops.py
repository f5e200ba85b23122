"""Operator routes: ``/health`` (each dependency, named without server details) and ``/metrics``."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from nightshift.api import db, metrics
from nightshift.api.deps import Gw
from nightshift.api.schemas import Health

router = APIRouter(tags=["ops"])
log = logging.getLogger("nightshift.api")


@router.get("/metrics", include_in_schema=False)
async def prometheus() -> Response:
    """Prometheus exposition of the gateway's metrics."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


@router.get("/health", response_model=Health)
async def health(gw: Gw) -> JSONResponse:
    """200 when the database, the store and Prefect answer; 503 naming the one that does not."""
    checks: dict[str, str] = {}
    try:
        async with gw.database.session() as session:
            await db.ping(session)
        checks["database"] = "ok"
    except Exception:  # noqa: BLE001 - reported, not raised; the detail goes to the log only
        log.exception("health: database")
        checks["database"] = "error"
    try:
        await asyncio.to_thread(gw.store.fs.ls, gw.store.root)
        checks["storage"] = "ok"
    except FileNotFoundError:
        checks["storage"] = "ok (empty)"
    except Exception:  # noqa: BLE001
        log.exception("health: storage")
        checks["storage"] = "error"
    checks["prefect"] = await asyncio.to_thread(_prefect_health)
    ok = all(v.startswith("ok") for v in checks.values())
    body = Health(status="ok" if ok else "degraded", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _prefect_health() -> str:
    """Whether the Prefect API the gateway triggers deployments on answers."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return "error: PREFECT_API_URL is not set"
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=5)
    except httpx.HTTPError:
        return "error: unreachable"
    return "ok" if response.status_code == 200 else f"error: HTTP {response.status_code}"
