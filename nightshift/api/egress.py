"""The one way out of the gateway: every outbound request (webhooks, https input downloads) goes here.

Two checks, because a host name is not an address until it is resolved:

- ``check_url`` at create time, from the URL alone: scheme (https; http only when the operator
  allows it), no credentials, a length cap, a host, and for IP literals in any spelling
  (``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``) and
  ``localhost`` the address rules at once, so a bad URL is a 400 naming its field.
- ``resolve`` at use time: the host is resolved once and refused when ANY of its addresses is
  loopback, private, link-local, multicast, reserved or unspecified (IPv4 inside IPv6 included),
  unless the host or the address is on the operator's allow-list. An attacker who controls the
  DNS answer controls which address comes first, so one bad address refuses the whole host.

``post_json`` and ``stream_get`` then connect to that very address: the URL's host travels only in
the ``Host`` header and as TLS SNI (``sni_hostname``; the certificate is still checked against the
name), so a second resolution cannot swap in 127.0.0.1 between check and connect (DNS rebinding).
Redirects are never followed, proxy and netrc settings from the environment are ignored (they
would route around the pinned address), and bodies are read streamed up to a cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nightshift.core.errors import EgressFailed, EgressRefused

if TYPE_CHECKING:
    from nightshift.settings import ApiConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``(host, port) -> addresses``: the system resolver by default; tests pass their own DNS.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

MAX_URL_LENGTH = 2048
# IPv6 ranges that carry an IPv4 address in their low bits: the embedded address is what a
# translator (NAT64) or the kernel (IPv4-compatible) would reach.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPAT = ipaddress.IPv6Network("::/96")
_CONTROL = re.compile(r"[\x00-\x20\x7f\\]")
_HOST_CHARS = re.compile(r"[a-z0-9._\-]+|\[[0-9a-f:.%a-z]+\]")


class EgressPolicy(BaseModel):
    """What the gateway may call: schemes, admitted hosts/networks, timeouts and size caps."""

    model_config = ConfigDict(frozen=True)

    allow_http: bool = Field(default=False, description="Accept http:// besides https://.")
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host names (exact), IP addresses or CIDRs admitted despite the address rules."
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=300, description="Connect/read/write timeout; whole POST deadline.")
    download_seconds: float = Field(default=300.0, gt=0, le=86_400, description="Deadline of a whole streamed download.")
    max_response_bytes: int = Field(default=1024**2, ge=0, description="Bytes of a reply read before stopping.")
    ca_file: str | None = Field(default=None, description="PEM bundle trusted for https (default: certifi's public CAs).")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _normalise_hosts(cls, value: Any) -> tuple[str, ...]:
        entries = []
        for raw in value or ():
            entry = str(raw).strip().lower().rstrip(".")
            if entry.startswith("[") and entry.endswith("]"):
                entry = entry[1:-1]
            if not entry or _CONTROL.search(entry):
                raise ValueError(f"allowed host {raw!r} is empty or has spaces")
            if "/" in entry:
                ipaddress.ip_network(entry, strict=False)  # a CIDR must parse; raises ValueError otherwise
            entries.append(entry)
        return tuple(entries)

    @classmethod
    def from_settings(cls, api: ApiConfig) -> EgressPolicy:
        """The policy the operator configured in ``settings.api``."""
        return cls(
            allow_http=api.webhook_allow_http,
            allowed_hosts=tuple(api.egress_allowed_hosts),
            timeout_seconds=api.egress_timeout_seconds,
            download_seconds=api.egress_download_seconds,
            max_response_bytes=api.egress_max_response_bytes,
            ca_file=str(api.egress_ca_file) if api.egress_ca_file else None,
        )

    def admits_host(self, host: str) -> bool:
        """True when the host name (or literal) is on the allow-list as written."""
        return host.lower().rstrip(".") in self.allowed_hosts

    def admits_address(self, address: IPAddress) -> bool:
        """True when the address (or the IPv4 address inside it) is in an allow-listed network."""
        candidates = [address, *([inner] if (inner := _embedded_ipv4(address)) else [])]
        for entry in self.allowed_hosts:
            try:
                network = ipaddress.ip_network(entry.split("%")[0], strict=False)
            except ValueError:
                continue  # a host name
            if any(a.version == network.version and a in network for a in candidates):
                return True
        return False


@dataclass(frozen=True)
class Destination:
    """A URL whose host was resolved and checked: requests go to ``address``, nowhere else."""

    url: str
    host: str
    address: IPAddress

    def pinned_url(self) -> httpx.URL:
        """The URL with its host replaced by the checked address (port, path and query kept)."""
        return httpx.URL(self.url).copy_with(host=str(self.address))


@dataclass(frozen=True)
class EgressReply:
    """What an outbound POST got back: the status (3xx included: never followed) and at most
    ``max_response_bytes`` of the body."""

    status_code: int
    content: bytes
    truncated: bool


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes as a literal, in every spelling resolvers accept, else None.

    IPv4 follows ``inet_aton``: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x); the last
    part fills the remaining bytes (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``).
    """
    host = host.strip("[]").rstrip(".")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            return None
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        if re.fullmatch(r"0[xX][0-9a-fA-F]*", part):
            numbers.append(int(part[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]+", part):
            numbers.append(int(part, 8))
        elif re.fullmatch(r"[0-9]+", part):
            numbers.append(int(part))
        else:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64) or (address in _IPV4_COMPAT and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why the gateway will not call this address (``loopback``, ``private``...), or None when it is public.

    Checked on the address and on any IPv4 address inside it: Python 3.11 does not call
    ``::ffff:127.0.0.1`` loopback, but the kernel connects it to 127.0.0.1.
    """
    inner = _embedded_ipv4(address)
    # A mapped or NAT64 address reaches exactly its IPv4 address, so that one alone is judged (their
    # IPv6 ranges are never "global" themselves); the other forms must pass on both counts.
    translated = isinstance(address, ipaddress.IPv6Address) and (
        address.ipv4_mapped is not None or any(address in net for net in _NAT64)
    )
    for candidate in (inner,) if translated else (address, inner):
        if candidate is None:
            continue
        for rule, hit in (
            ("loopback", candidate.is_loopback),
            ("unspecified", candidate.is_unspecified),
            ("link-local", candidate.is_link_local),
            ("multicast", candidate.is_multicast),
            ("private", candidate.is_private),
            ("reserved", candidate.is_reserved or not candidate.is_global),
        ):
            if hit:
                return rule
    return None


def _refused_address(rule: str, *, param: str, url: str, resolved: bool) -> EgressRefused:
    verb = "resolves to" if resolved else "names"
    return EgressRefused(
        f"the host {verb} a {rule} address, which the gateway does not call (an operator can allow-list it)",
        param=param,
        rule="address",
        value=url,
    )


def check_url(url: str, policy: EgressPolicy, *, param: str) -> str:
    """Check an outbound URL from its text alone (at create time); returns it unchanged.

    Raises:
        EgressRefused: over 2048 characters, spaces or control characters, a scheme other than
            https (or http when allowed), credentials, no host, a bad port, or a host that is an
            IP literal or ``localhost`` outside the address rules and not allow-listed.
    """
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise EgressRefused(f"is longer than {MAX_URL_LENGTH} characters", param=param, rule="length")
    if _CONTROL.search(url):
        raise EgressRefused("has spaces, control characters or backslashes", param=param, rule="malformed", value=url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise EgressRefused("is not a valid URL", param=param, rule="malformed", value=url) from None
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme.lower() not in schemes:
        wanted = "an http:// or https:// URL" if policy.allow_http else "an https:// URL"
        raise EgressRefused(f"must be {wanted}", param=param, rule="scheme", value=url)
    if "@" in parts.netloc:
        raise EgressRefused("must not carry credentials (user:password@)", param=param, rule="credentials", value=url)
    host = parts.hostname or ""
    netloc = parts.netloc.lower()
    if not host or port == 0 or not _HOST_CHARS.fullmatch(netloc.rsplit(":", 1)[0] if port else netloc):
        raise EgressRefused("must name a host", param=param, rule="host", value=url)
    if policy.admits_host(host):
        return url
    literal = parse_ip_literal(host)
    if literal is not None:
        if not policy.admits_address(literal) and (rule := address_refusal(literal)):
            raise _refused_address(rule, param=param, url=url, resolved=False)
    elif host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
        # RFC 6761: resolvers answer loopback for every *.localhost name without asking DNS.
        raise _refused_address("loopback", param=param, url=url, resolved=False)
    return url


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (in a thread: getaddrinfo blocks)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve(url: str, policy: EgressPolicy, *, param: str, resolver: Resolver | None = None) -> Destination:
    """Check ``url`` again, resolve its host once and check every address (at use time).

    Raises:
        EgressRefused: the static rules, or any address outside the address rules.
        EgressFailed: the host does not resolve (retryable: DNS trouble may pass).
    """
    check_url(url, policy, param=param)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        answers = await (resolver or system_resolver)(host, port)
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in answers]
    except (OSError, ValueError, UnicodeError):
        addresses = []
    if not addresses:
        raise EgressFailed("the host could not be resolved", param=param, retryable=True)
    if not policy.admits_host(host):
        for address in addresses:
            if not policy.admits_address(address) and (rule := address_refusal(address)):
                raise _refused_address(rule, param=param, url=url, resolved=True)
    return Destination(url=url, host=host, address=addresses[0])


def _failure(exc: BaseException, *, param: str) -> EgressFailed:
    """A transport error as a short outcome a tenant may read (never the library's text)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return EgressFailed("the TLS handshake failed (certificate or protocol)", param=param, retryable=False)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        return EgressFailed("could not connect", param=param, retryable=True)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return EgressFailed("timed out", param=param, retryable=True)
    return EgressFailed("the connection failed", param=param, retryable=True)


@asynccontextmanager
async def _exchange(
    method: str,
    destination: Destination,
    policy: EgressPolicy,
    *,
    param: str,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.Response]:
    """One request to the pinned address, its response open for streaming."""
    parts = urlsplit(destination.url)
    sent = {"Host": parts.netloc, "Accept-Encoding": "identity", **(headers or {})}
    extensions: dict[str, Any] = {}
    if parts.scheme.lower() == "https" and parse_ip_literal(destination.host) is None:
        extensions["sni_hostname"] = destination.host
    # A fresh client per request: no pooled connection made for one name is reused for another.
    # trust_env=False: proxy variables would route around the pinned address, and SSL_CERT_FILE
    # would change whom the gateway trusts behind the operator's back (ca_file says it instead).
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=policy.ca_file) if policy.ca_file else True
    async with httpx.AsyncClient(
        follow_redirects=False, trust_env=False, verify=verify, timeout=policy.timeout_seconds
    ) as client:
        request = client.build_request(method, destination.pinned_url(), content=content, headers=sent, extensions=extensions)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _failure(exc, param=param) from None
        try:
            yield response
        finally:
            await response.aclose()


async def post_json(
    url: str,
    payload: bytes | Mapping[str, Any],
    policy: EgressPolicy,
    *,
    param: str,
    headers: Mapping[str, str] | None = None,
    resolver: Resolver | None = None,
) -> EgressReply:
    """POST a JSON body through the policy; the whole exchange must end within ``timeout_seconds``.

    ``payload`` as bytes is sent verbatim (what a signature covers). A redirect is returned as its
    3xx status, never followed; the body is read up to ``max_response_bytes``.

    Raises:
        EgressRefused: the URL or the address it resolves to is refused (nothing was sent).
        EgressFailed: no connection, a timeout, a TLS failure.
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    destination = await resolve(url, policy, param=param, resolver=resolver)
    sent = {"Content-Type": "application/json", **(headers or {})}
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            async with _exchange("POST", destination, policy, param=param, content=body, headers=sent) as response:
                content, truncated = bytearray(), False
                try:
                    async for chunk in response.aiter_bytes():
                        content += chunk
                        if len(content) > policy.max_response_bytes:
                            truncated = True
                            break
                except httpx.HTTPError:
                    truncated = True  # the status arrived; a broken body does not change the outcome
                return EgressReply(response.status_code, bytes(content[: policy.max_response_bytes]), truncated)
    except TimeoutError:
        raise EgressFailed("timed out", param=param, retryable=True) from None


async def stream_get(
    url: str,
    policy: EgressPolicy,
    *,
    param: str,
    max_bytes: int | None = None,
    chunk_size: int = 64 * 1024,
    resolver: Resolver | None = None,
) -> AsyncIterator[bytes]:
    """GET ``url`` through the policy and yield its body in chunks, at most ``max_bytes`` in all
    (default ``max_response_bytes``), within ``download_seconds``. Nothing happens until iterated.

    Raises:
        EgressRefused: the URL or the address it resolves to is refused (nothing was sent).
        EgressFailed: any status but 200 (a redirect included), a body over the cap (announced or
            streamed), no connection, a timeout.
    """
    cap = policy.max_response_bytes if max_bytes is None else max_bytes
    destination = await resolve(url, policy, param=param, resolver=resolver)
    deadline = time.monotonic() + policy.download_seconds
    async with _exchange("GET", destination, policy, param=param) as response:
        status = response.status_code
        if 300 <= status < 400:
            raise EgressFailed(f"redirected (HTTP {status}); redirects are not followed", param=param, retryable=False)
        if status != 200:
            retryable = status == 429 or status >= 500
            raise EgressFailed(f"HTTP {status}", param=param, retryable=retryable, status_code=status)
        announced = response.headers.get("content-length", "")
        if announced.isdigit() and int(announced) > cap:
            raise EgressFailed(f"is larger than {cap:,} bytes", param=param, retryable=False)
        received = 0
        try:
            async for chunk in response.aiter_bytes(chunk_size):
                received += len(chunk)
                if received > cap:
                    raise EgressFailed(f"is larger than {cap:,} bytes", param=param, retryable=False)
                if time.monotonic() > deadline:
                    raise EgressFailed("timed out", param=param, retryable=True)
                yield chunk
        except httpx.HTTPError as exc:
            raise _failure(exc, param=param) from None
