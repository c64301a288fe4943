"""The relay over trio's in-memory streams: bytes unchanged, events recorded, ends handled."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from streams import HEADER_C, HEADER_S

from xmppspy.events import (
    Connected,
    Direction,
    Disconnected,
    Kind,
    Opaque,
    OpaqueReason,
    ParseError,
    Record,
    Stanza,
    TlsStarted,
)
from xmppspy.relay import UPSTREAM_FAILED, ChannelSink, FanOut, Relay, RelayConfig

FEATURES_TLS = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
)


class ListSink:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def accept(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    def events(self, kind: type) -> list:
        return [r.event for r in self.records if isinstance(r.event, kind)]

    def raw(self, direction: Direction) -> bytes:
        return b"".join(
            r.event.raw
            for r in self.records
            if getattr(r.event, "dir", None) is direction and hasattr(r.event, "raw")
        )


class Harness:
    """A relay between a test 'client' and a test 'server', both in memory."""

    def __init__(self, sink: ListSink | None = None) -> None:
        self.client, relay_client = trio.testing.memory_stream_pair()
        self.server, relay_server = trio.testing.memory_stream_pair()
        self.sink = sink or ListSink()

        async def open_upstream() -> trio.abc.Stream:
            return relay_server

        self.relay = Relay(RelayConfig("example.test:5222"), open_upstream, self.sink)
        self.relay_client = relay_client


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    with trio.fail_after(5):
        while len(data) < size:
            chunk = await stream.receive_some()
            assert chunk, f"EOF after {len(data)} of {size} bytes"
            data += chunk
    return data


async def test_bytes_cross_unchanged_and_are_recorded_in_both_directions() -> None:
    h = Harness()
    c2s = (
        HEADER_C
        + b"<message to='bob@example.test' type='chat'><body>h\xc3\xa9 &amp; &lt;</body></message>"
    )
    s2c = HEADER_S + b"<stream:features/>" + b" "
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
        for i in range(0, len(c2s), 7):  # arbitrary chunking on the way in
            await h.client.send_all(c2s[i : i + 7])
        assert await receive_exactly(h.server, len(c2s)) == c2s
        await h.server.send_all(s2c)
        assert await receive_exactly(h.client, len(s2c)) == s2c
        await h.client.send_eof()
        with trio.fail_after(5):
            assert await h.server.receive_some() == b""
        await h.server.send_eof()
    assert h.sink.raw(Direction.C2S) == c2s
    assert h.sink.raw(Direction.S2C) == s2c
    message = h.sink.events(Stanza)[0]
    assert message.dir is Direction.C2S
    assert message.type == "chat"
    assert message.element.findtext("{jabber:client}body") == "hé & <"
    assert isinstance(h.sink.records[0].event, Connected)
    (done,) = h.sink.events(Disconnected)
    assert done.reason == "closed by both sides"
    assert (done.c2s_bytes, done.s2c_bytes) == (len(c2s), len(s2c))
    assert (done.c2s_stanzas, done.s2c_stanzas) == (1, 1)
    assert {r.conn for r in h.sink.records} == {"c1"}


async def test_half_close_is_propagated_and_the_other_direction_keeps_flowing() -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
        await h.client.send_all(HEADER_C + b"</stream:stream>")
        await h.client.send_eof()
        await receive_exactly(h.server, len(HEADER_C) + 16)
        with trio.fail_after(5):
            assert await h.server.receive_some() == b""  # the client's FIN reached the server
        # the server may still talk after the client half-closed
        await h.server.send_all(HEADER_S + b"</stream:stream>")
        assert await receive_exactly(h.client, len(HEADER_S) + 16) == HEADER_S + b"</stream:stream>"
        await h.server.send_eof()
        with trio.fail_after(5):
            assert await h.client.receive_some() == b""
    (done,) = h.sink.events(Disconnected)
    assert done.reason == "closed by both sides"


async def test_starttls_proceed_makes_the_rest_opaque_but_relayed() -> None:
    h = Harness()
    tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256))
    starttls = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    proceed = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
        await h.client.send_all(HEADER_C)
        await h.server.send_all(HEADER_S + FEATURES_TLS)
        await h.client.send_all(starttls)
        # like a real server, answer <starttls/> only once it has arrived
        await receive_exactly(h.server, len(HEADER_C + starttls))
        await h.server.send_all(proceed)
        await receive_exactly(h.client, len(HEADER_S + FEATURES_TLS + proceed))
        await h.client.send_all(tls_hello)
        assert await receive_exactly(h.server, len(tls_hello)) == tls_hello
        await h.client.send_eof()
        await h.server.send_eof()
    assert len(h.sink.events(TlsStarted)) == 1
    opaque = h.sink.events(Opaque)  # one event per read: the bytes may come in several
    assert {o.reason for o in opaque} == {OpaqueReason.TLS}
    assert b"".join(o.raw for o in opaque) == tls_hello


async def test_unreachable_upstream_gets_the_client_a_stream_error() -> None:
    sink = ListSink()

    async def refuse() -> trio.abc.Stream:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    relay = Relay(RelayConfig("example.test:5222"), refuse, sink)
    client, relay_client = trio.testing.memory_stream_pair()
    await relay.handle(relay_client, "test-client")
    answer = await receive_exactly(client, len(UPSTREAM_FAILED))
    assert b"<remote-connection-failed" in answer
    assert answer.endswith(b"</stream:stream>")
    (done,) = sink.events(Disconnected)
    assert done.reason == "upstream example.test:5222 unreachable: Connection refused"


async def test_a_peer_that_breaks_ends_the_connection_with_a_reason() -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
        await h.client.send_all(HEADER_C)
        await receive_exactly(h.server, len(HEADER_C))
        await h.server.aclose()  # the server vanishes: the relay's next write to it fails
        await h.client.send_all(b"<presence/>")
    (done,) = h.sink.events(Disconnected)
    assert done.reason.startswith("server went away")


async def test_cancelling_the_relay_records_each_connection_as_stopped() -> None:
    h = Harness()
    with trio.move_on_after(0.2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
            await h.client.send_all(HEADER_C)
    (done,) = h.sink.events(Disconnected)
    assert done.reason == "proxy stopped"
    assert done.c2s_bytes == len(HEADER_C)


async def test_a_full_view_channel_drops_view_records_but_never_capture_records() -> None:
    send, receive = trio.open_memory_channel[Record](1)
    view = ChannelSink(send, lambda record: record)
    capture = ListSink()
    h = Harness(capture)
    h.relay.sink = FanOut([capture, view])
    stanzas = b"".join(b"<presence id='p%d'/>" % i for i in range(50))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
        await h.client.send_all(HEADER_C + stanzas)
        await receive_exactly(h.server, len(HEADER_C + stanzas))
        await h.client.send_eof()
        await h.server.send_eof()
    assert len(capture.events(Stanza)) == 50
    assert view.take_dropped() == len(capture.records) - 1
    assert view.take_dropped() == 0
    async with receive:
        first = receive.receive_nowait()
    assert isinstance(first.event, Connected)


async def test_the_view_is_bounded_by_bytes_not_only_by_count() -> None:
    """Big stanzas for a terminal that does not keep up: memory stays near the byte budget."""
    send, receive = trio.open_memory_channel[Record](1000)
    view = ChannelSink(send, lambda record: record, max_bytes=300_000)
    capture = ListSink()
    h = Harness(capture)
    h.relay.sink = FanOut([capture, view])
    big = b"".join(
        b"<message id='m%d'><body>%s</body></message>" % (i, b"x" * 100_000) for i in range(20)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
        await h.client.send_all(HEADER_C + big)
        await receive_exactly(h.server, len(HEADER_C + big))
        await h.client.send_eof()
        await h.server.send_eof()
    assert len(capture.events(Stanza)) == 20  # the capture gets everything, always
    assert view.queued <= 300_000
    waiting = []
    while True:
        try:
            waiting.append(receive.receive_nowait())
        except trio.WouldBlock:
            break
    stanzas = [r for r in waiting if isinstance(r.event, Stanza)]
    assert 1 <= len(stanzas) <= 3
    assert view.take_dropped() == 20 - len(stanzas)
    for record in waiting:  # the consumer catches up: room again
        view.done(record)
    assert view.queued == 0
    view.accept(capture.records[-1:])
    assert view.queued > 0 and view.take_dropped() == 0


def test_one_record_larger_than_the_budget_still_reaches_an_idle_view() -> None:
    send, receive = trio.open_memory_channel[Record](10)
    view = ChannelSink(send, lambda record: record, max_bytes=1000)
    raw = b"<x>" + b"y" * 5000 + b"</x>"
    huge = Record(
        0.0, "c1", Stanza(Direction.C2S, raw, Kind.OTHER, "x", None, None, None, None, None)
    )
    view.accept([huge, huge])
    assert receive.receive_nowait() is huge
    assert view.take_dropped() == 1


@pytest.mark.parametrize("chunk", [1, 3, 64 * 1024])
async def test_any_read_size_gives_the_same_stanzas(chunk: int) -> None:
    h = Harness()
    body = HEADER_C + b"".join(
        b"<message id='m%d'><body>\xe2\x98\x83 %d</body></message>" % (i, i) for i in range(20)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
        for i in range(0, len(body), chunk):
            await h.client.send_all(body[i : i + chunk])
        assert await receive_exactly(h.server, len(body)) == body
        await h.client.send_eof()
        await h.server.send_eof()
    assert [s.id for s in h.sink.events(Stanza)] == [f"m{i}" for i in range(20)]


async def test_a_peer_closing_mid_stanza_leaves_its_bytes_in_the_record() -> None:
    h = Harness()
    cut = b"<message to='bob@example.test'><body>never fini"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.relay.handle, h.relay_client, "test-client")
        await h.client.send_all(HEADER_C + cut)
        assert await receive_exactly(h.server, len(HEADER_C + cut)) == HEADER_C + cut
        await h.client.send_eof()
        await h.server.send_eof()
    assert h.sink.raw(Direction.C2S) == HEADER_C + cut
    (error,) = h.sink.events(ParseError)
    assert error.raw == cut
    assert error.reason == "the connection ended in the middle of an element"
