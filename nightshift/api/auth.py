"""Who is calling, and may they call again this hour: API keys, bearer JWTs and per-key rate limits.

Two credentials are accepted in ``Authorization: Bearer ...``: nightshift API keys (``ns-`` +
40 random characters, stored only as a sha256) and JWTs signed by an identity provider (HS256
with ``ApiConfig.jwt_secret`` or RS256 with ``ApiConfig.jwt_public_key``). Both resolve to a
``Principal``; the HTTP layer chooses the status codes for ``AuthError`` and ``RateLimited``.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nightshift.api.db import ApiKey, NotFound, Org, RateUsage, RevokedToken, check_tier, get_org_by_name, new_id, utcnow
from nightshift.core.errors import NightshiftError
from nightshift.settings import ApiConfig

API_KEY_PREFIX = "ns-"
#: Characters of the secret kept in clear for display and revocation (``ns-`` + 9 random).
DISPLAY_PREFIX_LENGTH = 12
RATE_WINDOW = timedelta(hours=1)


class AuthError(NightshiftError):
    """The request carries no usable credential (missing, malformed, unknown, revoked or expired)."""


class RateLimited(NightshiftError):
    """The caller used up its requests for this hourly window."""

    def __init__(self, message: str, *, retry_after: int, budget: RateBudget | None = None) -> None:
        self.retry_after = retry_after
        self.budget = budget
        super().__init__(message)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the org it acts for, the key (or ``jwt:<jti>``) it used, its tier."""

    org_id: str
    org_name: str
    key_id: str | None
    tier: str
    subject: str


def generate_api_key() -> str:
    """A new API key secret: ``ns-`` + 40 URL-safe characters (240 random bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(30)


def hash_key(secret: str) -> str:
    """The sha256 hex digest under which an API key is stored and looked up.

    A plain fast hash is right here, unlike for passwords: a key carries 240 random bits, so
    nothing can be guessed from the digest, and a deliberately slow hash (bcrypt, argon2) would
    add its cost to every request and rule out the indexed lookup by digest.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_api_key(
    session: AsyncSession,
    org: Org,
    name: str,
    tier: str | None = None,
    default_webhook_url: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``org`` (tier defaults to the org's); returns the row and the secret, shown only once."""
    secret = generate_api_key()
    key = ApiKey(
        id=new_id("key_"),
        org_id=org.id,
        name=name,
        tier=check_tier(tier or org.tier),
        key_hash=hash_key(secret),
        prefix=secret[:DISPLAY_PREFIX_LENGTH],
        created_at=utcnow(),
        default_webhook_url=default_webhook_url,
    )
    session.add(key)
    await session.flush()
    return key, secret


async def revoke_api_key(session: AsyncSession, key_id_or_prefix: str) -> ApiKey:
    """Revoke the key with this id or display prefix (idempotent); raises ``NotFound`` if none matches."""
    query = select(ApiKey).where(or_(ApiKey.id == key_id_or_prefix, ApiKey.prefix == key_id_or_prefix))
    keys = list((await session.execute(query)).scalars())
    if not keys:
        raise NotFound(f"no API key with id or prefix {key_id_or_prefix!r}")
    if len(keys) > 1:
        # 54 random bits make a prefix collision unlikely, but revoking the wrong key would be worse.
        raise NotFound(f"{len(keys)} API keys share the prefix {key_id_or_prefix!r}; revoke by key id")
    key = keys[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    return key


async def revoke_token(session: AsyncSession, jti: str, expires_at: datetime | None = None) -> None:
    """Refuse the JWT with this ``jti`` from now on (idempotent); ``expires_at`` allows pruning later."""
    if await session.get(RevokedToken, jti) is None:
        session.add(RevokedToken(jti=jti, revoked_at=utcnow(), expires_at=expires_at))
        await session.flush()


def issue_jwt(
    config: ApiConfig,
    *,
    org: str,
    sub: str,
    tier: str | None = None,
    ttl_seconds: int = 3600,
    jti: str | None = None,
) -> str:
    """Sign an HS256 bearer token with ``config.jwt_secret`` for org name ``org`` (tests, ``nightshift keys token``)."""
    if config.jwt_secret is None:
        raise AuthError("cannot issue tokens: no jwt_secret is configured")
    now = utcnow()
    claims: dict[str, Any] = {
        "sub": sub,
        "org": org,
        "aud": config.jwt_audience,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds),
        "jti": jti or uuid.uuid4().hex,
    }
    if tier is not None:
        claims["tier"] = check_tier(tier)
    return jwt.encode(claims, config.jwt_secret.get_secret_value(), algorithm="HS256")


async def authenticate(session: AsyncSession, authorization_header: str | None, config: ApiConfig) -> Principal:
    """Resolve an ``Authorization`` header to a ``Principal``; raises ``AuthError`` saying what is wrong."""
    if not authorization_header or not authorization_header.strip():
        raise AuthError("missing Authorization header: send 'Authorization: Bearer <API key or JWT>'")
    scheme, _, credential = authorization_header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise AuthError("malformed Authorization header: expected 'Bearer <API key or JWT>'")
    if credential.startswith(API_KEY_PREFIX):
        return await _authenticate_key(session, credential)
    return await _authenticate_jwt(session, credential, config)


async def _authenticate_key(session: AsyncSession, secret: str) -> Principal:
    """The principal of an API key secret."""
    query = select(ApiKey, Org).join(Org, Org.id == ApiKey.org_id).where(ApiKey.key_hash == hash_key(secret))
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise AuthError("unknown API key")
    key, org = row
    if key.revoked_at is not None:
        raise AuthError(f"API key {key.prefix}... was revoked")
    return Principal(org_id=org.id, org_name=org.name, key_id=key.id, tier=key.tier, subject=key.name)


def _verification_key(token: str, config: ApiConfig) -> tuple[str, str]:
    """The algorithm and key to check ``token`` with, from its header and what is configured.

    Each algorithm is paired with its own key only, so an HS256 token "signed" with the public
    RSA key (the classic algorithm-confusion attack) never verifies.
    """
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
    except jwt.DecodeError:
        raise AuthError("malformed bearer token: neither an API key (ns-...) nor a JWT") from None
    if algorithm == "HS256":
        if config.jwt_secret is None:
            raise AuthError("HS256 tokens are not accepted: no jwt_secret is configured")
        return algorithm, config.jwt_secret.get_secret_value()
    if algorithm == "RS256":
        if not config.jwt_public_key:
            raise AuthError("RS256 tokens are not accepted: no jwt_public_key is configured")
        return algorithm, config.jwt_public_key
    raise AuthError(f"unsupported token algorithm {algorithm!r}: use HS256 or RS256")


def _decode(token: str, config: ApiConfig) -> dict[str, Any]:
    """Verify signature, expiry, audience and required claims; the claims, or ``AuthError``."""
    algorithm, key = _verification_key(token, config)
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=config.jwt_audience,
            options={"require": ["exp", "aud", "sub", "org", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidAudienceError:
        raise AuthError(f"token audience is not {config.jwt_audience!r}") from None
    except jwt.InvalidSignatureError:
        raise AuthError("token signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the required {exc.claim!r} claim") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("token is not valid yet") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None


async def _authenticate_jwt(session: AsyncSession, token: str, config: ApiConfig) -> Principal:
    """The principal of a bearer JWT."""
    claims = _decode(token, config)
    org_name, subject, jti = claims["org"], claims["sub"], claims["jti"]
    for name, value in (("org", org_name), ("sub", subject), ("jti", jti)):
        if not isinstance(value, str) or not value:
            raise AuthError(f"token claim {name!r} must be a non-empty string")
    if await session.get(RevokedToken, jti) is not None:
        raise AuthError("token was revoked")
    org = await get_org_by_name(session, org_name)
    if org is None:
        raise AuthError(f"token names unknown organization {org_name!r}")
    tier = claims.get("tier")
    if tier is None:
        tier = org.tier
    else:
        try:
            tier = check_tier(tier)
        except (ValueError, TypeError):
            raise AuthError(f"token claim 'tier' is not a known tier: {tier!r}") from None
    # Rate limits count per token: a token is the JWT counterpart of one API key.
    return Principal(org_id=org.id, org_name=org.name, key_id=f"jwt:{jti}", tier=tier, subject=subject)


def _window_start(now: datetime) -> datetime:
    """The start of the fixed hourly (UTC) window ``now`` falls in."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def _increment(session: AsyncSession, key_id: str, window_start: datetime) -> int:
    """Add one request to the key's window and return the new count, atomically."""
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        # One INSERT ... ON CONFLICT DO UPDATE ... RETURNING: no lost updates between concurrent requests.
        from sqlalchemy.dialects import postgresql, sqlite

        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        values = insert(RateUsage).values(key_id=key_id, window_start=window_start, count=1)
        upsert = values.on_conflict_do_update(
            index_elements=[RateUsage.key_id, RateUsage.window_start], set_={"count": RateUsage.count + 1}
        ).returning(RateUsage.count)
        return int((await session.execute(upsert)).scalar_one())
    # Other backends: UPDATE first, INSERT if the window is new (row locks keep the UPDATE atomic).
    where = (RateUsage.key_id == key_id) & (RateUsage.window_start == window_start)
    result = await session.execute(update(RateUsage).where(where).values(count=RateUsage.count + 1).returning(RateUsage.count))
    count = result.scalar_one_or_none()
    if count is None:
        session.add(RateUsage(key_id=key_id, window_start=window_start, count=1))
        await session.flush()
        count = 1
    return int(count)


@dataclass(frozen=True)
class RateBudget:
    """Where the caller's org stands in this hourly window (sent as OpenAI's ``x-ratelimit-*``)."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit response headers for requests."""
        minutes, seconds = divmod(self.reset_seconds, 60)
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(max(0, self.remaining)),
            "x-ratelimit-reset-requests": f"{minutes}m{seconds}s" if minutes else f"{seconds}s",
        }


async def check_rate_limit(
    session: AsyncSession, principal: Principal, config: ApiConfig, now: datetime | None = None
) -> RateBudget:
    """Count one request against the hourly limit of the principal's org and tier.

    The budget belongs to the organization: every key and token of the org draws on one counter
    (per tier, so a premium key is not starved by the org's free-tier tokens), so minting new
    JWTs or keys does not buy more calls.

    Raises:
        RateLimited: over ``config.requests_per_hour()[principal.tier]``; ``retry_after`` is the
            seconds until the window ends (at least 1), ``budget`` the headers' values.
    """
    now = now or utcnow()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    limit = config.requests_per_hour()[principal.tier]
    window_start = _window_start(now)
    count = await _increment(session, f"org:{principal.org_id}:{principal.tier}", window_start)
    reset = max(1, math.ceil((window_start + RATE_WINDOW - now).total_seconds()))
    budget = RateBudget(limit=limit, remaining=limit - count, reset_seconds=reset)
    if count > limit:
        raise RateLimited(
            f"rate limit of {limit} requests per hour for tier {principal.tier!r} reached; retry in {reset} s",
            retry_after=reset,
            budget=budget,
        )
    return budget


async def prune_auth_tables(session: AsyncSession, now: datetime | None = None) -> int:
    """Delete finished rate windows and revocations of tokens that have expired anyway; returns rows deleted."""
    now = now or utcnow()
    windows = await session.execute(delete(RateUsage).where(RateUsage.window_start < _window_start(now)))
    tokens = await session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    return int(windows.rowcount or 0) + int(tokens.rowcount or 0)  # type: ignore[attr-defined]
