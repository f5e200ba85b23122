"""The gateway database and auth layer against a real, migrated SQLite file.

pytest-asyncio is not installed: each test is sync and runs its body with ``asyncio.run``,
creating and disposing the ``Database`` inside that one event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from sqlalchemy import inspect, select

from nightshift.api.auth import (
    AuthError,
    Principal,
    RateLimited,
    authenticate,
    check_rate_limit,
    create_api_key,
    generate_api_key,
    hash_key,
    issue_jwt,
    revoke_api_key,
    revoke_token,
)
from nightshift.api.db import (
    ApiKey,
    AuditLog,
    Base,
    Conflict,
    Database,
    NotFound,
    add_batch,
    add_file,
    audit,
    create_org,
    get_batch,
    get_file,
    list_batches,
    list_files,
    mark_file_deleted,
    unfinished_batches,
    update_batch,
)
from nightshift.settings import ApiConfig

TABLES = {"orgs", "api_keys", "revoked_tokens", "files", "batches", "rate_usage", "audit_log"}
SECRET = "nightshift-test-secret-" * 4  # 92 bytes: long enough even for the HS512 case


@asynccontextmanager
async def migrated(url: str) -> AsyncIterator[Database]:
    """A migrated database, disposed at the end."""
    db = Database(url)
    await db.migrate()
    try:
        yield db
    finally:
        await db.dispose()


def run(url: str, body: Callable[[Database], Awaitable[Any]]) -> Any:
    """Run ``body(db)`` on a freshly migrated database in a new event loop."""

    async def main() -> Any:
        async with migrated(url) as db:
            return await body(db)

    return asyncio.run(main())


async def _org(db: Database, name: str = "acme", tier: str = "free") -> str:
    async with db.session() as s:
        return (await create_org(s, name, tier)).id


def _hs256_with_key(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 JWT signed by hand (PyJWT itself refuses a PEM as an HMAC key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = {k: int(v.timestamp()) if isinstance(v, datetime) else v for k, v in claims.items()}
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def _rsa_pair() -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    )
    return private_pem, public_pem


# --- schema ---------------------------------------------------------------------------------


def test_migrations_create_every_table_match_the_models_and_rerun_as_no_op(database_url):
    async def body(db: Database) -> None:
        async with db.engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert TABLES | {"alembic_version"} == tables
            # The hand-written migration and the models describe the same schema.
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
            assert diff == []
        async with db.session() as s:
            await create_org(s, "acme")
        await db.migrate()  # second run: nothing to do, data kept
        async with db.engine.connect() as conn:
            versions = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalars().all()
            assert versions == ["0003"]
            assert (await conn.exec_driver_sql("SELECT count(*) FROM orgs")).scalar_one() == 1
            if db.is_sqlite:
                assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one() == "wal"

    run(database_url, body)


def test_postgres_url_is_accepted_without_connecting():
    db = Database("postgresql://user:p%40ss@db.invalid:5432/nightshift")
    assert db.url.startswith("postgresql+asyncpg://")
    assert not db.is_sqlite
    asyncio.run(db.dispose())


# --- API keys -------------------------------------------------------------------------------


def test_api_key_shape_and_hash():
    secret = generate_api_key()
    assert secret.startswith("ns-") and len(secret) == 43
    assert hash_key(secret) == hash_key(secret) and len(hash_key(secret)) == 64
    assert generate_api_key() != secret


def test_api_key_round_trip_and_revocation(database_url):
    config = ApiConfig()

    async def body(db: Database) -> None:
        async with db.session() as s:
            org = await create_org(s, "acme", "premium")
            key, secret = await create_api_key(s, org, "ci", default_webhook_url="https://hooks.example/x")
        assert key.tier == "premium" and key.prefix == secret[:12]
        async with db.session() as s:
            stored = (await s.execute(select(ApiKey))).scalar_one()
            assert secret not in (stored.key_hash, stored.prefix) and stored.key_hash == hash_key(secret)
            who = await authenticate(s, f"Bearer {secret}", config)
        assert who == Principal(org_id=org.id, org_name="acme", key_id=key.id, tier="premium", subject="ci")
        async with db.session() as s:
            await revoke_api_key(s, key.prefix)
            await revoke_api_key(s, key.id)  # idempotent
        async with db.session() as s:
            with pytest.raises(AuthError, match="revoked"):
                await authenticate(s, f"Bearer {secret}", config)
            with pytest.raises(NotFound):
                await revoke_api_key(s, "key_missing")

    run(database_url, body)


def test_key_tier_overrides_org_tier(database_url):
    async def body(db: Database) -> None:
        async with db.session() as s:
            org = await create_org(s, "acme", "free")
            _, secret = await create_api_key(s, org, "batch", tier="enterprise")
            who = await authenticate(s, f"bearer {secret}", ApiConfig())
        assert who.tier == "enterprise"

    run(database_url, body)


def test_bad_headers_and_unknown_keys_are_refused(database_url):
    config = ApiConfig(jwt_secret=SECRET)

    async def body(db: Database) -> None:
        async with db.session() as s:
            org = await create_org(s, "acme")
            await create_api_key(s, org, "ci")
        async with db.session() as s:
            cases = {
                None: "missing Authorization",
                "": "missing Authorization",
                "Basic abc": "malformed Authorization",
                "Bearer": "malformed Authorization",
                f"Bearer {generate_api_key()}": "unknown API key",
                "Bearer not-a-jwt": "malformed bearer token",
            }
            for header, message in cases.items():
                with pytest.raises(AuthError, match=message):
                    await authenticate(s, header, config)

    run(database_url, body)


def test_org_names_are_unique(database_url):
    async def body(db: Database) -> None:
        await _org(db, "acme")
        async with db.session() as s:
            with pytest.raises(Conflict):
                await create_org(s, "acme")
            with pytest.raises(ValueError, match="unknown tier"):
                await create_org(s, "other", "platinum")

    run(database_url, body)


# --- JWTs -----------------------------------------------------------------------------------


def test_hs256_jwt_accepted_and_each_failure_named(database_url):
    config = ApiConfig(jwt_secret=SECRET, jwt_audience="nightshift")

    async def body(db: Database) -> None:
        org_id = await _org(db, "acme", "basic")
        async with db.session() as s:
            token = issue_jwt(config, org="acme", sub="alice", jti="jti-1")
            who = await authenticate(s, f"Bearer {token}", config)
            assert who == Principal(org_id=org_id, org_name="acme", key_id="jwt:jti-1", tier="basic", subject="alice")
            token = issue_jwt(config, org="acme", sub="bob", tier="enterprise")
            assert (await authenticate(s, f"Bearer {token}", config)).tier == "enterprise"

            now = datetime.now(UTC)
            base = {"sub": "alice", "org": "acme", "aud": "nightshift", "exp": now + timedelta(hours=1), "jti": "j"}
            failures = {
                "token expired": issue_jwt(config, org="acme", sub="alice", ttl_seconds=-60),
                "audience is not 'nightshift'": issue_jwt(
                    ApiConfig(jwt_secret=SECRET, jwt_audience="other"), org="acme", sub="a"
                ),
                "signature does not verify": issue_jwt(
                    ApiConfig(jwt_secret="another-secret-with-enough-bytes!!"), org="acme", sub="a"
                ),
                "unknown organization 'globex'": issue_jwt(config, org="globex", sub="alice"),
                "lacks the required 'jti' claim": jwt.encode({k: v for k, v in base.items() if k != "jti"}, SECRET),
                "lacks the required 'org' claim": jwt.encode({k: v for k, v in base.items() if k != "org"}, SECRET),
                "unsupported token algorithm 'HS512'": jwt.encode(base, SECRET, algorithm="HS512"),
                "not a known tier": jwt.encode({**base, "tier": "gold"}, SECRET),
            }
            messages = set()
            for message, bad in failures.items():
                with pytest.raises(AuthError, match=message) as info:
                    await authenticate(s, f"Bearer {bad}", config)
                messages.add(str(info.value))
            assert len(messages) == len(failures)

            revoked = issue_jwt(config, org="acme", sub="alice", jti="jti-gone")
            await revoke_token(s, "jti-gone", now + timedelta(hours=1))
            await revoke_token(s, "jti-gone", now + timedelta(hours=1))  # idempotent
            with pytest.raises(AuthError, match="token was revoked"):
                await authenticate(s, f"Bearer {revoked}", config)

        async with db.session() as s:  # without a configured secret, HS256 is refused outright
            with pytest.raises(AuthError, match="no jwt_secret"):
                await authenticate(s, f"Bearer {token}", ApiConfig())

    run(database_url, body)


def test_rs256_jwt_with_generated_key_pair(database_url):
    private_pem, public_pem = _rsa_pair()
    config = ApiConfig(jwt_public_key=public_pem)
    now = datetime.now(UTC)
    claims = {
        "sub": "svc",
        "org": "acme",
        "aud": "nightshift",
        "exp": now + timedelta(minutes=5),
        "jti": "rs-1",
        "tier": "premium",
    }

    async def body(db: Database) -> None:
        await _org(db, "acme")
        async with db.session() as s:
            who = await authenticate(s, f"Bearer {jwt.encode(claims, private_pem, algorithm='RS256')}", config)
            assert (who.subject, who.tier, who.key_id) == ("svc", "premium", "jwt:rs-1")
            other_private, _ = _rsa_pair()
            with pytest.raises(AuthError, match="signature does not verify"):
                await authenticate(s, f"Bearer {jwt.encode(claims, other_private, algorithm='RS256')}", config)
            # Algorithm confusion: an HS256 token whose HMAC key is the public PEM must never verify.
            forged = _hs256_with_key(claims, public_pem.encode())
            with pytest.raises(AuthError, match="no jwt_secret"):
                await authenticate(s, f"Bearer {forged}", config)
            with pytest.raises(AuthError, match="signature does not verify"):
                await authenticate(s, f"Bearer {forged}", config.model_copy(update={"jwt_secret": SecretStr(SECRET)}))

    run(database_url, body)


# --- files and batches ----------------------------------------------------------------------


async def _file(s: Any, org_id: str, name: str = "in.jsonl") -> str:
    row = await add_file(
        s, org_id=org_id, filename=name, purpose="batch", bytes=10, lines=1, uri=f"mem://{name}", sha256="0" * 64
    )
    return row.id


def test_other_orgs_objects_are_invisible(database_url):
    async def body(db: Database) -> None:
        a, b = await _org(db, "a"), await _org(db, "b")
        async with db.session() as s:
            file_id = await _file(s, a)
            batch = await add_batch(
                s, org_id=a, input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", tier="free"
            )
            await audit(s, a, None, "batch.create", batch.id, {"input_file_id": file_id})
        assert file_id.startswith("file-") and len(file_id) == 29
        assert batch.id.startswith("batch_") and len(batch.id) == 30
        async with db.session() as s:
            assert (await get_file(s, a, file_id)).filename == "in.jsonl"
            assert await get_file(s, b, file_id) is None
            assert await get_batch(s, b, batch.id) is None
            assert (await get_batch(s, a, batch.id)).created_at.tzinfo is not None
            assert await list_files(s, b) == ([], False) and (await list_batches(s, b)) == ([], False)
            await mark_file_deleted(s, file_id)
        async with db.session() as s:
            assert await get_file(s, a, file_id) is None
            assert (await get_file(s, a, file_id, include_deleted=True)).deleted_at is not None
            assert await list_files(s, a) == ([], False)
            entry = (await s.execute(select(AuditLog))).scalar_one()
            assert (entry.action, entry.object_id, entry.detail) == ("batch.create", batch.id, {"input_file_id": file_id})

    run(database_url, body)


def test_list_files_filters_by_purpose_and_pages(database_url):
    async def body(db: Database) -> None:
        org = await _org(db)
        async with db.session() as s:
            ids = [await _file(s, org, f"f{i}.jsonl") for i in range(3)]
            await add_file(s, org_id=org, filename="out", purpose="batch_output", bytes=1, lines=1, uri="mem://o")
        async with db.session() as s:
            assert [f.id for f in (await list_files(s, org, purpose="batch"))[0]] == ids[::-1]
            assert [f.id for f in (await list_files(s, org, purpose="batch", order="asc", after=ids[0]))[0]] == ids[1:]
            rows, more = await list_files(s, org, limit=2)
            assert len(rows) == 2 and more

    run(database_url, body)


def test_list_batches_pages_newest_first_with_after_cursor(database_url):
    async def body(db: Database) -> None:
        org, other = await _org(db, "a"), await _org(db, "b")
        start = datetime(2026, 1, 1, tzinfo=UTC)
        async with db.session() as s:
            ids = []
            for i in range(5):
                created = start + timedelta(minutes=i)
                row = await add_batch(
                    s,
                    org_id=org,
                    input_file_id="file-x",
                    endpoint="/v1/embeddings",
                    completion_window="24h",
                    tier="free",
                    created_at=created,
                )
                ids.append(row.id)
            # Same timestamp as the newest: the id breaks the tie, so nothing is skipped or repeated.
            twin = await add_batch(
                s,
                org_id=org,
                input_file_id="f",
                endpoint="/v1/embeddings",
                completion_window="24h",
                tier="free",
                created_at=created,
            )
            await add_batch(s, org_id=other, input_file_id="f", endpoint="/v1/embeddings", completion_window="24h", tier="free")
        async with db.session() as s:
            seen: list[str] = []
            after = None
            while True:
                page, has_more = await list_batches(s, org, after=after, limit=2)
                seen += [b.id for b in page]
                if not has_more:
                    break
                after = page[-1].id
            assert len(seen) == 6 and set(seen) == {*ids, twin.id}
            assert seen[2:] == ids[3::-1]  # older ones in creation order, newest first
            page, has_more = await list_batches(s, org, after=ids[2], limit=10)
            assert ([b.id for b in page], has_more) == ([ids[1], ids[0]], False)
            assert (await list_batches(s, org, after=ids[1], limit=1)) == ([await get_batch(s, org, ids[0])], False)
            with pytest.raises(NotFound):
                await list_batches(s, other, after=ids[0])

    run(database_url, body)


def test_update_batch_stamps_status_times_and_unfinished_batches(database_url):
    async def body(db: Database) -> None:
        org, other = await _org(db, "a"), await _org(db, "b")
        async with db.session() as s:
            rows = {}
            for status in (
                "validating",
                "in_progress",
                "finalizing",
                "cancelling",
                "completed",
                "failed",
                "expired",
                "cancelled",
            ):
                owner = other if status == "finalizing" else org
                rows[status] = await add_batch(
                    s,
                    org_id=owner,
                    input_file_id="f",
                    endpoint="/v1/completions",
                    completion_window="24h",
                    tier="basic",
                    status=status,
                )
        async with db.session() as s:
            unfinished = await unfinished_batches(s)
            assert {b.status for b in unfinished} == {"validating", "in_progress", "finalizing", "cancelling"}
            assert {b.org_id for b in unfinished} == {org, other}

            batch = await update_batch(s, rows["validating"], status="in_progress", metadata={"k": "v"}, webhook_attempts=1)
            assert batch.in_progress_at is not None and batch.metadata_ == {"k": "v"}
            done = datetime(2026, 2, 1, tzinfo=UTC)
            batch = await update_batch(s, batch.id, status="completed", completed_at=done, request_counts={"total": 1})
            assert batch.completed_at == done
            with pytest.raises(ValueError, match="unknown batch status"):
                await update_batch(s, batch, status="done")
            with pytest.raises(TypeError, match="no settable column"):
                await update_batch(s, batch, colour="red")
            with pytest.raises(NotFound):
                await update_batch(s, "batch_missing", status="failed")
        async with db.session() as s:
            again = await get_batch(s, org, rows["validating"].id)
            assert (again.status, again.completed_at, again.request_counts) == ("completed", done, {"total": 1})
            assert {b.status for b in await unfinished_batches(s)} == {"in_progress", "finalizing", "cancelling"}

    run(database_url, body)


# --- rate limits ----------------------------------------------------------------------------


def test_rate_limit_refuses_over_limit_until_the_next_window(database_url):
    config = ApiConfig(free_requests_per_hour=3)
    who = Principal(org_id="org_x", org_name="x", key_id="key_x", tier="free", subject="ci")
    now = datetime(2026, 3, 1, 10, 59, 58, 500_000, tzinfo=UTC)

    async def body(db: Database) -> None:
        left = []
        for _ in range(3):
            async with db.session() as s:
                left.append((await check_rate_limit(s, who, config, now=now)).remaining)
        assert left == [2, 1, 0]
        with pytest.raises(RateLimited) as info:
            async with db.session() as s:
                await check_rate_limit(s, who, config, now=now)
        assert 1 <= info.value.retry_after <= 3600 and info.value.retry_after == 2
        with pytest.raises(RateLimited) as info:
            async with db.session() as s:
                await check_rate_limit(s, who, config, now=now.replace(minute=0, second=0))
        assert info.value.retry_after == 3600
        async with db.session() as s:
            assert (await check_rate_limit(s, who, config, now=now + timedelta(hours=1))).remaining == 2
            # The budget is the org's: its other keys and tokens draw on it; another org has its own.
            assert (
                await check_rate_limit(s, Principal("org_x", "x", "jwt:t2", "free", "ci"), config, now=now + timedelta(hours=1))
            ).remaining == 1
            assert (await check_rate_limit(s, Principal("org_y", "y", "key_z", "free", "ci"), config, now=now)).remaining == 2

    run(database_url, body)


def test_rate_limit_is_atomic_under_concurrent_requests(database_url):
    config = ApiConfig(free_requests_per_hour=10)
    who = Principal(org_id="org_x", org_name="x", key_id="key_x", tier="free", subject="ci")

    async def body(db: Database) -> None:
        async def one() -> bool:
            try:
                async with db.session() as s:
                    await s.execute(select(1))  # a read first: the upgrade to a write must not fail with "locked"
                    await check_rate_limit(s, who, config)
                return True
            except RateLimited:
                return False

        results = await asyncio.gather(*(one() for _ in range(25)))
        assert results.count(True) == 10

    run(database_url, body)
