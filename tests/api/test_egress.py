"""The egress policy: static URL rules, address rules at use time, pinning, no redirects, caps.

Every request goes to a real HTTP server on 127.0.0.1 (``loopback.LoopbackServer``), which the
policy refuses like any loopback address unless a test allow-lists it. Names other than IP
literals are answered by a resolver passed in (the gateway's DNS is the outside system here).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator, Sequence

import pytest

from nightshift.api.egress import (
    EgressPolicy,
    address_refusal,
    check_url,
    parse_ip_literal,
    post_json,
    resolve,
    stream_get,
    system_resolver,
)
from nightshift.core.errors import EgressFailed, EgressRefused, JobRequestError
from nightshift.settings import ApiConfig
from tests.api.loopback import LoopbackServer, Reply

# Every way to write a loopback / this-host address that some resolver or browser accepts.
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "0x7f000001",
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "localhost",
    "LOCALHOST",
    "api.localhost",
    "0.0.0.0",
    "0",
    "[::]",
]

OPEN = EgressPolicy(allow_http=True, allowed_hosts=("127.0.0.1",), timeout_seconds=2)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer().running() as running:
        yield running


def fake_dns(table: dict[str, Sequence[str]], calls: list[str] | None = None):
    """A resolver answering from ``table`` (names missing from it do not resolve)."""

    async def answer(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return list(table[host])

    return answer


def run(coro):
    return asyncio.run(coro)


async def collect(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


# -- the static check ------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_loopback_spelling_is_refused_at_create(host):
    with pytest.raises(EgressRefused) as exc:
        check_url(f"https://{host}/hook", EgressPolicy(), param="webhook_url")
    assert exc.value.param == exc.value.field == "webhook_url" and exc.value.rule == "address"
    assert str(exc.value).startswith("webhook_url: ") and "127.0.0.1" not in str(exc.value)


@pytest.mark.parametrize("host", [h for h in LOOPBACK_SPELLINGS if "localhost" not in h.lower() and not h.endswith(".")])
def test_the_literal_parser_agrees_with_the_system_resolver(host):
    """Whatever the static parser makes of a literal is what getaddrinfo connects to (a trailing
    dot sends the name to DNS here, which browsers would not: refused statically, above)."""
    ours = parse_ip_literal(host.strip("[]"))
    system = run(system_resolver(host.strip("[]"), 443))
    assert ours is not None and {ipaddress.ip_address(a) for a in system} == {ours}
    assert all(address_refusal(ipaddress.ip_address(a)) for a in system)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://example.com/hook", "scheme"),
        ("ftp://example.com/hook", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("example.com/hook", "scheme"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https://user@example.com/hook", "credentials"),
        ("https:///hook", "host"),
        ("https://:443/hook", "host"),
        ("https://exa%6dple.com/hook", "host"),
        ("https://example.com:0/hook", "host"),
        ("https://example.com:99999/hook", "malformed"),
        ("https://exa mple.com/hook", "malformed"),
        ("https://example.com\\@127.0.0.1/hook", "malformed"),
        ("https://example.com/\x00", "malformed"),
        ("https://example.com/" + "a" * 2048, "length"),
        ("https://10.0.0.1/hook", "address"),
        ("https://169.254.169.254/latest/meta-data", "address"),
        ("https://[fe80::1]/hook", "address"),
        ("https://[::ffff:192.168.0.1]/hook", "address"),
    ],
)
def test_static_rules_name_the_field_and_the_rule(url, rule):
    with pytest.raises(EgressRefused) as exc:
        check_url(url, EgressPolicy(), param="metadata.webhook_url")
    assert exc.value.rule == rule and exc.value.field == "metadata.webhook_url"
    assert isinstance(exc.value, JobRequestError)  # the gateway's 400 handler names the param


def test_public_https_urls_pass_and_http_only_when_allowed():
    assert check_url("https://hooks.example.com:8443/x?y=1", EgressPolicy(), param="p") == "https://hooks.example.com:8443/x?y=1"
    assert check_url("https://93.184.216.34/x", EgressPolicy(), param="p")
    assert check_url("https://[2606:4700::1111]/x", EgressPolicy(), param="p")
    with pytest.raises(EgressRefused, match="must be an https:// URL"):
        check_url("http://hooks.example.com/x", EgressPolicy(), param="p")
    assert check_url("http://hooks.example.com/x", EgressPolicy(allow_http=True), param="p")


def test_the_allow_list_admits_hosts_addresses_and_networks():
    policy = EgressPolicy(allowed_hosts=["Hooks.Internal.", "[::1]", "10.0.0.0/8", "127.0.0.1"])
    assert policy.allowed_hosts == ("hooks.internal", "::1", "10.0.0.0/8", "127.0.0.1")
    for url in ("https://hooks.internal/x", "https://[::1]/x", "https://10.1.2.3/x", "https://127.1/x", "https://0x7f000001/x"):
        assert check_url(url, policy, param="p") == url
    assert policy.admits_address(ipaddress.ip_address("::ffff:10.0.0.5"))
    with pytest.raises(EgressRefused):
        check_url("https://192.168.0.1/x", policy, param="p")
    with pytest.raises(ValueError):
        EgressPolicy(allowed_hosts=["10.0.0.0/33"])


def test_policy_from_settings():
    api = ApiConfig(
        webhook_allow_http=True,
        egress_allowed_hosts=["127.0.0.1"],
        egress_timeout_seconds=3,
        egress_download_seconds=30,
        egress_max_response_bytes=10,
    )
    policy = EgressPolicy.from_settings(api)
    assert (policy.allow_http, policy.allowed_hosts, policy.timeout_seconds) == (True, ("127.0.0.1",), 3)
    assert (policy.download_seconds, policy.max_response_bytes) == (30, 10)
    assert EgressPolicy.from_settings(ApiConfig()) == EgressPolicy()


# -- the address rules at use time -----------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "::ffff:127.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "0.0.0.0",
        "::",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "169.254.169.254",
        "fe80::1",
        "fe80::1%eth0",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "100.64.0.1",
        "192.0.2.1",
        "2001:db8::1",
    ],
)
def test_a_name_resolving_to_a_refused_address_is_refused_at_use(address, server):
    """The name passes the static check; its DNS answer is what gets refused, before any request
    (several of these would reach the loopback server if they were sent)."""
    url = server.url("/hook", host="rebind.example.com")
    policy = EgressPolicy(allow_http=True)
    assert check_url(url, policy, param="webhook_url") == url
    with pytest.raises(EgressRefused) as exc:
        run(post_json(url, b"{}", policy, param="webhook_url", resolver=fake_dns({"rebind.example.com": [address]})))
    assert exc.value.rule == "address" and "resolves to" in str(exc.value)
    assert address.split("%")[0] not in str(exc.value)
    assert server.hits == []


def test_one_bad_address_among_good_ones_refuses_the_host():
    dns = fake_dns({"mixed.example.com": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(EgressRefused, match="loopback"):
        run(resolve("https://mixed.example.com/x", EgressPolicy(), param="p", resolver=dns))
    good = run(
        resolve(
            "https://mixed.example.com/x", EgressPolicy(), param="p", resolver=fake_dns({"mixed.example.com": ["93.184.216.34"]})
        )
    )
    assert str(good.address) == "93.184.216.34" and str(good.pinned_url()) == "https://93.184.216.34/x"


def test_an_unresolvable_host_is_a_retryable_failure():
    with pytest.raises(EgressFailed) as exc:
        run(resolve("https://nowhere.example.com/x", EgressPolicy(), param="p", resolver=fake_dns({})))
    assert exc.value.retryable and exc.value.outcome == "the host could not be resolved"


def test_the_system_resolver_refuses_localhost_spellings_at_use(server):
    """Bypassing the static check (a name that only the resolver maps to loopback) still refuses."""
    with pytest.raises(EgressRefused, match="loopback"):
        run(resolve(server.url("/hook", host="127.0.0.1"), EgressPolicy(allow_http=True), param="p"))
    assert server.hits == []


# -- pinned connections ----------------------------------------------------------------------


def test_the_request_goes_to_the_checked_address_with_the_name_as_host(server):
    """DNS is asked once; the connection uses that answer (an unknown name could not connect otherwise)."""
    server.script["/hook"] = [Reply(204)]
    calls: list[str] = []
    policy = EgressPolicy(allow_http=True, allowed_hosts=["hooks.internal"])
    dns = fake_dns({"hooks.internal": ["127.0.0.1"]}, calls)
    reply = run(post_json(server.url("/hook", host="hooks.internal"), {"a": 1}, policy, param="webhook_url", resolver=dns))
    assert reply.status_code == 204 and calls == ["hooks.internal"]
    (hit,) = server.hits
    assert (hit.method, hit.path, hit.body) == ("POST", "/hook", b'{"a":1}')
    assert hit.headers["host"] == f"hooks.internal:{server.port}" and hit.headers["content-type"] == "application/json"


def test_an_allow_listed_address_admits_any_spelling_of_it(server):
    server.script["/in"] = [Reply(200, b"x" * 10)]
    for host in ("127.0.0.1", "127.1", "0x7f000001", "2130706433"):
        assert run(collect(stream_get(server.url("/in", host=host), OPEN, param="input_file_url"))) == b"x" * 10
    assert server.paths() == ["/in"] * 4


def test_proxy_settings_in_the_environment_are_ignored(server, monkeypatch):
    server.script["/hook"] = [Reply(200)]
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.255.255.1:3128")
    assert run(post_json(server.url("/hook"), b"{}", OPEN, param="p")).status_code == 200


# -- no redirects, caps, timeouts --------------------------------------------------------------


def test_redirects_are_not_followed(server):
    server.script["/moved"] = [Reply(302, headers={"Location": server.url("/target")})]
    server.script["/target"] = [Reply(200, b"secret")]
    reply = run(post_json(server.url("/moved"), b"{}", OPEN, param="webhook_url"))
    assert reply.status_code == 302
    with pytest.raises(EgressFailed, match="redirects are not followed") as exc:
        run(collect(stream_get(server.url("/moved"), OPEN, param="input_file_url")))
    assert not exc.value.retryable
    assert server.paths() == ["/moved", "/moved"]  # the target got NO request


def test_download_status_other_than_200_fails(server):
    server.script["/gone"] = [Reply(404)]
    server.script["/busy"] = [Reply(503)]
    with pytest.raises(EgressFailed, match="HTTP 404") as gone:
        run(collect(stream_get(server.url("/gone"), OPEN, param="input_file_url")))
    with pytest.raises(EgressFailed, match="HTTP 503") as busy:
        run(collect(stream_get(server.url("/busy"), OPEN, param="input_file_url")))
    assert (gone.value.retryable, busy.value.retryable, gone.value.status_code) == (False, True, 404)


def test_the_size_cap_holds_declared_or_not(server):
    server.script["/declared"] = [Reply(200, b"a" * 5000)]
    server.script["/undeclared"] = [Reply(200, b"b" * 300_000, length=False)]
    server.script["/small"] = [Reply(200, b"c" * 1000, length=False)]
    with pytest.raises(EgressFailed, match="larger than 4,000 bytes"):
        run(collect(stream_get(server.url("/declared"), OPEN, param="input_file_url", max_bytes=4000)))
    received = bytearray()

    async def read_until_refused() -> None:
        async for chunk in stream_get(server.url("/undeclared"), OPEN, param="input_file_url", max_bytes=100_000):
            received.extend(chunk)

    with pytest.raises(EgressFailed, match="larger than 100,000 bytes"):
        run(read_until_refused())
    assert len(received) <= 100_000
    assert run(collect(stream_get(server.url("/small"), OPEN, param="input_file_url", max_bytes=1000))) == b"c" * 1000
    capped = OPEN.model_copy(update={"max_response_bytes": 100})
    reply = run(post_json(server.url("/declared"), b"{}", capped, param="webhook_url"))
    assert (reply.status_code, len(reply.content), reply.truncated) == (200, 100, True)


def test_timeouts_and_refused_connections_are_retryable_failures(server):
    server.script["/slow"] = [Reply(200, delay=1.5)]
    quick = OPEN.model_copy(update={"timeout_seconds": 0.3})
    with pytest.raises(EgressFailed) as slow:
        run(post_json(server.url("/slow"), b"{}", quick, param="webhook_url"))
    assert slow.value.outcome == "timed out" and slow.value.retryable
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(EgressFailed) as refused:
        run(post_json(f"http://127.0.0.1:{closed}/x", b"{}", OPEN, param="webhook_url"))
    assert refused.value.outcome == "could not connect" and refused.value.retryable
    assert str(refused.value) == "webhook_url: could not connect"


def test_http_is_refused_at_use_unless_allowed(server):
    server.script["/hook"] = [Reply(200)]
    https_only = EgressPolicy(allowed_hosts=["127.0.0.1"])
    with pytest.raises(EgressRefused, match="https"):
        run(post_json(server.url("/hook"), b"{}", https_only, param="webhook_url"))
    assert server.hits == []


# -- https to a pinned address: the certificate is still checked against the name -----------------


@pytest.fixture
def tls_server(tmp_path) -> Iterator[tuple[LoopbackServer, str]]:
    """An https server on 127.0.0.1 whose self-signed certificate names only ``hooks.internal``."""
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.internal")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.internal")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    with LoopbackServer(tls=context).running() as running:
        yield running, str(cert_file)


def test_https_is_pinned_and_verified_against_the_name(tls_server):
    server, ca_file = tls_server
    server.script["/hook"] = [Reply(200, b"ok")]
    policy = EgressPolicy(allowed_hosts=["hooks.internal", "impostor.internal"], ca_file=ca_file)
    dns = fake_dns({"hooks.internal": ["127.0.0.1"], "impostor.internal": ["127.0.0.1"]})
    reply = run(post_json(server.url("/hook", host="hooks.internal", scheme="https"), b"{}", policy, param="p", resolver=dns))
    assert (reply.status_code, reply.content) == (200, b"ok")
    assert server.hits[0].headers["host"] == f"hooks.internal:{server.port}"
    # Same address, a name the certificate does not cover: refused in the handshake, not sent.
    with pytest.raises(EgressFailed, match="TLS handshake failed") as exc:
        run(post_json(server.url("/hook", host="impostor.internal", scheme="https"), b"{}", policy, param="p", resolver=dns))
    assert not exc.value.retryable and len(server.hits) == 1
    # The public CAs (the default) do not trust a self-signed certificate.
    with pytest.raises(EgressFailed, match="TLS handshake failed"):
        run(
            post_json(
                server.url("/hook", host="hooks.internal", scheme="https"),
                b"{}",
                policy.model_copy(update={"ca_file": None}),
                param="p",
                resolver=dns,
            )
        )


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]
)
def test_public_addresses_pass_in_every_form(address):
    dns = fake_dns({"public.example.com": [address]})
    destination = run(resolve("https://public.example.com/x", EgressPolicy(), param="p", resolver=dns))
    assert destination.address == ipaddress.ip_address(address) and destination.host == "public.example.com"
