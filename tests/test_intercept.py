"""STARTTLS interception over trio's memory streams, with real TLS on both sides."""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass

import pytest
import trio
import trio.testing
import trustme
from streams import HEADER_C, HEADER_S

from xmppspy import relay as relay_module
from xmppspy.events import (
    Direction,
    Notice,
    Opaque,
    ParseError,
    Rewritten,
    Stanza,
    StreamOpened,
    TlsStarted,
)
from xmppspy.relay import Relay, RelayConfig, TlsSetup

FEATURES = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
SECRET = b"<message to='bob@example.test' type='chat'><body>seen only inside TLS</body></message>"
REPLY = b"<message from='bob@example.test' type='chat'><body>and back</body></message>"
PLUS_FEATURES = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>PLAIN</mechanism></mechanisms>"
    b"</stream:features>"
)


class Records:
    def __init__(self) -> None:
        self.records: list = []

    def accept(self, records: list) -> None:
        self.records.extend(records)

    def events(self, kind: type) -> list:
        return [r.event for r in self.records if isinstance(r.event, kind)]


async def receive_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    data = b""
    with trio.fail_after(5):
        while marker not in data:
            chunk = await stream.receive_some()
            assert chunk, f"EOF before {marker!r}; got {data!r}"
            data += chunk
    return data


async def agree_to_starttls(server: trio.abc.Stream, context: ssl.SSLContext) -> trio.SSLStream:
    """A server that requires STARTTLS, up to its <proceed/>: the TLS stream it then speaks."""
    assert await receive_until(server, b"version='1.0'>") == HEADER_C
    await server.send_all(HEADER_S + FEATURES)
    assert await receive_until(server, STARTTLS) == STARTTLS
    await server.send_all(PROCEED)
    return trio.SSLStream(server, context, server_side=True, https_compatible=True)


def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    """The real server's CA and xmppspy's CA: server and client contexts for each."""
    server_ca, proxy_ca = trustme.CA(), trustme.CA()
    real_server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("example.test").configure_cert(real_server)
    proxy_trusts_server = ssl.create_default_context()
    server_ca.configure_trust(proxy_trusts_server)
    proxy_as_server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    proxy_ca.issue_cert("example.test").configure_cert(proxy_as_server)
    client_trusts_proxy = ssl.create_default_context()
    proxy_ca.configure_trust(client_trusts_proxy)
    return real_server, proxy_trusts_server, proxy_as_server, client_trusts_proxy


async def test_intercepted_starttls_shows_the_stanzas_inside_and_relays_them() -> None:
    real_server, proxy_trusts_server, proxy_as_server, client_trusts_proxy = contexts()
    client, relay_client = trio.testing.memory_stream_pair()
    server, relay_server = trio.testing.memory_stream_pair()
    sink = Records()

    async def open_upstream() -> trio.abc.Stream:
        return relay_server

    domains: list[str] = []

    def server_context(domain: str) -> ssl.SSLContext:
        domains.append(domain)
        return proxy_as_server

    relay = Relay(
        RelayConfig("example.test:5222", tls=TlsSetup(server_context, proxy_trusts_server)),
        open_upstream,
        sink,
    )

    async def play_server() -> None:
        tls = await agree_to_starttls(server, real_server)
        await tls.do_handshake()
        await receive_until(tls, b"version='1.0'>")
        await tls.send_all(HEADER_S + PLUS_FEATURES)  # the restarted stream's features
        await receive_until(tls, SECRET)
        await tls.send_all(REPLY)
        await receive_until(tls, b"</stream:stream>")
        await tls.send_all(b"</stream:stream>")
        await tls.aclose()

    received = b""

    async def play_client() -> None:
        nonlocal received
        await client.send_all(HEADER_C)
        await receive_until(client, FEATURES)
        await client.send_all(STARTTLS)
        await receive_until(client, PROCEED)
        tls = trio.SSLStream(
            client, client_trusts_proxy, server_hostname="example.test", https_compatible=True
        )
        await tls.do_handshake()  # verifies xmppspy's certificate for example.test
        await tls.send_all(HEADER_C)
        offered = await receive_until(tls, b"</stream:features>")
        assert b"SCRAM-SHA-1-PLUS" not in offered and b"<mechanism>PLAIN</mechanism>" in offered
        await tls.send_all(SECRET)
        received = await receive_until(tls, REPLY)
        await tls.send_all(b"</stream:stream>")
        await receive_until(tls, b"</stream:stream>")
        await tls.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "test-client")
            nursery.start_soon(play_server)
            await play_client()

    assert received.endswith(REPLY)  # what the server sent inside TLS reached the client
    assert domains == ["example.test"]
    (rewrite,) = sink.events(Rewritten)  # shown: the client did not get what the server sent
    assert rewrite.reason == "removed SASL mechanisms SCRAM-SHA-1-PLUS"
    (started,) = sink.events(TlsStarted)
    assert started.intercepted and started.verified is True
    assert started.version and started.version.startswith("TLSv1.")
    assert started.server_fingerprint and len(started.server_fingerprint) == 95
    assert sink.events(Opaque) == [] and sink.events(ParseError) == []
    # both streams restart inside TLS and their stanzas are seen in clear, exactly
    restarts = [e for e in sink.events(StreamOpened) if e.restart]
    assert {e.dir for e in restarts} == {Direction.C2S, Direction.S2C}
    raws = [(s.dir, s.raw) for s in sink.events(Stanza)]
    assert (Direction.C2S, SECRET) in raws and (Direction.S2C, REPLY) in raws
    order = [type(r.event).__name__ for r in sink.records]
    assert order.index("TlsStarted") < order.index("StreamOpened", order.index("TlsStarted"))


async def test_an_untrusted_server_certificate_ends_the_connection_with_a_reason() -> None:
    real_server, _, proxy_as_server, client_trusts_proxy = contexts()
    proxy_trusts_nobody = ssl.create_default_context()  # the server's CA is not in it
    proxy_trusts_nobody.load_verify_locations(cadata=trustme.CA().cert_pem.bytes().decode())
    client, relay_client = trio.testing.memory_stream_pair()
    server, relay_server = trio.testing.memory_stream_pair()
    sink = Records()

    async def open_upstream() -> trio.abc.Stream:
        return relay_server

    relay = Relay(
        RelayConfig(
            "example.test:5222", tls=TlsSetup(lambda _: proxy_as_server, proxy_trusts_nobody)
        ),
        open_upstream,
        sink,
    )

    async def play_server() -> None:
        tls = await agree_to_starttls(server, real_server)
        with contextlib.suppress(trio.BrokenResourceError):  # the proxy hangs up on us
            await tls.do_handshake()

    told = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "test-client")
            nursery.start_soon(play_server)
            await client.send_all(HEADER_C)
            await receive_until(client, FEATURES)
            await client.send_all(STARTTLS)
            await receive_until(client, PROCEED)
            tls = trio.SSLStream(
                client, client_trusts_proxy, server_hostname="example.test", https_compatible=True
            )
            await tls.do_handshake()
            told = await receive_until(tls, b"</stream:stream>")
    # the client hears why, in XMPP, inside the TLS it asked for
    assert b"<remote-connection-failed" in told
    assert b"certificate verify failed" in told
    (done,) = [r.event for r in sink.records if type(r.event).__name__ == "Disconnected"]
    assert done.reason.startswith("TLS with the server failed: ")
    assert "certificate verify failed: unable to get local issuer certificate" in done.reason


# -- xmppspy's own STARTTLS with the server: --tls strip, and direct-TLS clients ---------------

HEADER_S2 = HEADER_S.replace(b"id='s1'", b"id='s2'")


@dataclass
class StarttlsRelay:
    """A relay that does STARTTLS with the server itself, and the test's ends of its streams.

    It must never need a certificate for plaintext clients: ``asked`` records every request.
    """

    relay: Relay
    sink: Records
    asked: list[str]
    client: trio.abc.Stream
    """The client's end; ``relay_client`` is the relay's (what a listener hands it)."""
    relay_client: trio.abc.Stream
    server: trio.abc.Stream


def starttls_relay(proxy_trusts: ssl.SSLContext) -> StarttlsRelay:
    client, relay_client = trio.testing.memory_stream_pair()
    server, relay_server = trio.testing.memory_stream_pair()
    asked: list[str] = []

    def server_context(domain: str) -> ssl.SSLContext:
        asked.append(domain)
        raise AssertionError("a stripped session needs no certificate of xmppspy's")

    async def open_upstream() -> trio.abc.Stream:
        return relay_server

    config = RelayConfig(
        "example.test:5222", tls=TlsSetup(server_context, proxy_trusts), starttls_upstream=True
    )
    sink = Records()
    relay = Relay(config, open_upstream, sink)
    return StarttlsRelay(relay, sink, asked, client, relay_client, server)


async def play_starttls_server(server: trio.abc.Stream, context: ssl.SSLContext) -> bytes:
    """A server that requires STARTTLS; returns what it got inside TLS."""
    tls = await agree_to_starttls(server, context)
    await tls.do_handshake()
    inside = await receive_until(tls, b"version='1.0'>")
    await tls.send_all(HEADER_S2 + PLUS_FEATURES)
    inside += await receive_until(tls, SECRET)
    await tls.send_all(REPLY)
    inside += await receive_until(tls, b"</stream:stream>")
    await tls.send_all(b"</stream:stream>")
    await tls.aclose()
    return inside


async def chat_with_starttls_server(
    relay: Relay,
    relay_client: trio.abc.Stream,
    client: trio.abc.Stream,
    server: trio.abc.Stream,
    real_server: ssl.SSLContext,
) -> tuple[bytes, bytes]:
    """A client that sends its header and one stanza, then closes, through ``relay`` to a server
    that requires STARTTLS; returns what the client saw and what the server got inside TLS."""
    inside = b""

    async def server_side() -> None:
        nonlocal inside
        inside = await play_starttls_server(server, real_server)

    seen = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "test-client")
            nursery.start_soon(server_side)
            await client.send_all(HEADER_C)
            seen = await receive_until(client, b"</stream:features>")
            await client.send_all(SECRET)
            seen += await receive_until(client, REPLY)
            await client.send_all(b"</stream:stream>")
            seen += await receive_until(client, b"</stream:stream>")
            await client.aclose()
    return seen, inside


async def test_strip_hides_starttls_and_encrypts_to_the_server_in_the_clients_place() -> None:
    real_server, proxy_trusts_server, _, _ = contexts()
    h = starttls_relay(proxy_trusts_server)
    relay, sink, asked, client, relay_client, server = (
        h.relay,
        h.sink,
        h.asked,
        h.client,
        h.relay_client,
        h.server,
    )
    # a plaintext client that never heard of STARTTLS
    seen, inside = await chat_with_starttls_server(relay, relay_client, client, server, real_server)
    # the client saw one stream: the server's stream from inside TLS, without -PLUS
    assert (
        seen
        == HEADER_S2
        + PLUS_FEATURES.replace(b"<mechanism>SCRAM-SHA-1-PLUS</mechanism>", b"")
        + REPLY
        + b"</stream:stream>"
    )
    # the server got the client's header again and its stanza, inside TLS
    assert inside == HEADER_C + SECRET + b"</stream:stream>"
    assert asked == []
    (started,) = sink.events(TlsStarted)
    assert started.stripped and started.verified is True
    assert [r.dir for r in sink.events(Rewritten)] == [
        Direction.S2C,  # the server's first stream, held back
        Direction.C2S,  # <starttls/> from xmppspy
        Direction.C2S,  # the client's header again
        Direction.S2C,  # -PLUS removed
    ]
    raws = [(s.dir, s.raw) for s in sink.events(Stanza)]
    assert (Direction.C2S, SECRET) in raws and (Direction.S2C, REPLY) in raws
    assert (Direction.S2C, PROCEED) in raws  # recorded, though the client never got it
    assert sink.events(Opaque) == [] and sink.events(ParseError) == []
    (done,) = [r.event for r in sink.records if type(r.event).__name__ == "Disconnected"]
    assert done.reason == "closed by both sides"


async def test_strip_against_an_untrusted_server_tells_the_client_why() -> None:
    real_server, _, _, _ = contexts()
    proxy_trusts_nobody = ssl.create_default_context()
    proxy_trusts_nobody.load_verify_locations(cadata=trustme.CA().cert_pem.bytes().decode())
    h = starttls_relay(proxy_trusts_nobody)
    relay, sink, client, relay_client, server = h.relay, h.sink, h.client, h.relay_client, h.server

    async def server_side() -> None:
        with contextlib.suppress(trio.BrokenResourceError, AssertionError):
            await play_starttls_server(server, real_server)

    told = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "test-client")
            nursery.start_soon(server_side)
            await client.send_all(HEADER_C)
            told = await receive_until(client, b"</stream:stream>")
    assert told.startswith(b"<?xml version='1.0'?><stream:stream ")
    assert b"<remote-connection-failed" in told and b"certificate verify failed" in told
    assert b"starttls" not in told
    (done,) = [r.event for r in sink.records if type(r.event).__name__ == "Disconnected"]
    assert done.reason.startswith("TLS with the server failed: certificate verify failed")


async def test_a_direct_tls_client_reaches_a_starttls_server() -> None:
    """XEP-0368 to xmppspy, STARTTLS from xmppspy to the server: both sides seen in clear."""
    real_server, proxy_trusts_server, proxy_as_server, client_trusts_proxy = contexts()
    h = starttls_relay(proxy_trusts_server)
    relay, sink, client_raw, relay_client_raw, server = (
        h.relay,
        h.sink,
        h.client,
        h.relay_client,
        h.server,
    )
    # what the --listen-tls listener hands the relay: a server-side TLS stream
    relay_client = trio.SSLStream(
        relay_client_raw, proxy_as_server, server_side=True, https_compatible=True
    )
    client = trio.SSLStream(
        client_raw, client_trusts_proxy, server_hostname="example.test", https_compatible=True
    )
    seen, inside = await chat_with_starttls_server(relay, relay_client, client, server, real_server)
    assert seen.startswith(HEADER_S2) and b"starttls" not in seen and b"-PLUS" not in seen
    assert inside == HEADER_C + SECRET + b"</stream:stream>"
    (started,) = sink.events(TlsStarted)
    assert started.intercepted and not started.stripped and started.verified is True


async def test_strip_with_a_server_that_offers_no_starttls_relays_it_as_it_is() -> None:
    _, proxy_trusts_server, _, _ = contexts()
    h = starttls_relay(proxy_trusts_server)
    relay, sink, client, relay_client, server = h.relay, h.sink, h.client, h.relay_client, h.server

    async def plaintext_server() -> None:
        await receive_until(server, b"version='1.0'>")
        await server.send_all(HEADER_S + PLUS_FEATURES)
        await receive_until(server, SECRET)
        await server.send_all(REPLY + b"</stream:stream>")
        await server.aclose()

    seen = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "test-client")
            nursery.start_soon(plaintext_server)
            await client.send_all(HEADER_C)
            seen = await receive_until(client, b"</stream:features>")
            await client.send_all(SECRET)
            seen += await receive_until(client, b"</stream:stream>")
            await client.aclose()
    assert seen == HEADER_S + PLUS_FEATURES + REPLY + b"</stream:stream>"  # untouched
    (notice,) = [r.event for r in sink.records if type(r.event).__name__ == "Notice"]
    assert notice.text.startswith("xmppspy did not start TLS with the server: the server offered")
    assert sink.events(TlsStarted) == []


async def test_a_server_that_hangs_up_before_proceed_leaves_the_client_what_it_sent() -> None:
    _, proxy_trusts_server, _, _ = contexts()
    h = starttls_relay(proxy_trusts_server)
    relay, sink, client, relay_client, server = h.relay, h.sink, h.client, h.relay_client, h.server

    async def vanishing_server() -> None:
        await receive_until(server, b"version='1.0'>")
        await server.send_all(HEADER_S + FEATURES)
        await receive_until(server, STARTTLS)
        await server.aclose()

    seen = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "test-client")
            nursery.start_soon(vanishing_server)
            await client.send_all(HEADER_C)
            while chunk := await client.receive_some():
                seen += chunk
    assert seen == HEADER_S + FEATURES  # held back for TLS that never came: now the client's
    (done,) = [r.event for r in sink.records if type(r.event).__name__ == "Disconnected"]
    assert done.reason == "server closed the connection while xmppspy negotiated STARTTLS"


async def test_strip_with_a_silent_server_gives_up_and_relays_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream that waits for the client (here an echo) would otherwise stall the session:
    after the timeout xmppspy stops negotiating and relays everything, as a plain proxy would."""
    monkeypatch.setattr(relay_module, "CONNECT_TIMEOUT", 0.3)
    _, proxy_trusts_server, _, _ = contexts()
    h = starttls_relay(proxy_trusts_server)

    async def echo() -> None:
        while data := await h.server.receive_some():
            await h.server.send_all(data)
        await h.server.aclose()

    seen = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
            nursery.start_soon(echo)
            await h.client.send_all(HEADER_C + SECRET)  # the header and a stanza, one write
            seen = await receive_until(h.client, SECRET)
            await h.client.send_all(b"</stream:stream>")
            seen += await receive_until(h.client, b"</stream:stream>")
            await h.client.aclose()
    assert seen == HEADER_C + SECRET + b"</stream:stream>"  # all of it, in order, unchanged
    (notice,) = h.sink.events(Notice)
    assert "the server sent nothing more for 0.3 s" in notice.text


async def test_a_direct_tls_client_that_refuses_the_certificate_is_explained() -> None:
    """--listen-tls: the handshake comes first; the server is not even dialled."""
    _, _, proxy_as_server, _ = contexts()
    trusts_someone_else = ssl.create_default_context()
    trustme.CA().configure_trust(trusts_someone_else)
    client_raw, relay_client_raw = trio.testing.memory_stream_pair()
    dialled: list[str] = []

    async def open_upstream() -> trio.abc.Stream:
        dialled.append("server")
        raise AssertionError("no server for a client that refused TLS")

    relay = Relay(RelayConfig("example.test:5222"), open_upstream, Records())
    relay_client = trio.SSLStream(
        relay_client_raw, proxy_as_server, server_side=True, https_compatible=True
    )
    client = trio.SSLStream(
        client_raw, trusts_someone_else, server_hostname="example.test", https_compatible=True
    )

    async def refuse() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await client.do_handshake()
        await client_raw.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "test-client")
            nursery.start_soon(refuse)
    assert dialled == []
    reason = relay.connections[0].reason
    assert reason.startswith("TLS with the client failed (") and "(xmppspy ca)" in reason
