"""Hostile input through the relay: whatever a peer sends, the other side gets it unchanged.

Every case of ``tests/hostile.py`` goes through ``xmppspy.relay.Relay`` over trio's in-memory
streams, in several chunkings (all at once; one byte at a time for the small cases; 4 KiB and
64 KiB reads in lockstep, each read delivered before the next is sent, which also shows that the
relay never waits for a stanza to complete before forwarding). For each one:

(a) the bytes reach the other side unchanged, and the end of the stream too;
(b) the records hold exactly those bytes (the join of ``raw``), with one ``ParseError`` whose
    reason names the problem (or the expected events), then only ``Opaque``; the view shows it;
(c) no exception escapes ``Relay.handle``: the connection ends "closed by both sides";
(d) the parser never holds more than ``max_stanza_size`` plus one read; for the big cases the
    peak memory traced while relaying stays a few MB, whatever the size of the input.

One end-to-end test runs the real ``python -m xmppspy proxy`` on every case, one connection
each, to an echo server, then a normal stream: still alive, every byte back, capture exact.

Set ``XMPPSPY_HOSTILE_REPORT=FILE`` to write the table of results used in docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import ssl
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from hostile import (
    BIG,
    CLIENT_HEADER,
    CLOSE,
    MESSAGE,
    NAMES,
    PRESENCE,
    SECRET,
    SERVER_HEADER,
    SERVER_NAMES,
    Case,
    cases,
)
from rich.console import Console
from support.proxy import ProxyProcess

import xmppspy.relay
from xmppspy.capture import encode_record, open_capture
from xmppspy.events import (
    Connected,
    Direction,
    Disconnected,
    Event,
    Keepalive,
    Opaque,
    OpaqueReason,
    ParseError,
    Record,
    Stanza,
    StreamClosed,
    StreamOpened,
    TlsStarted,
)
from xmppspy.relay import READ_SIZE, Relay, RelayConfig
from xmppspy.render import View
from xmppspy.session import Session

C2S, S2C = Direction.C2S, Direction.S2C

CHUNKINGS: dict[str, int | None] = {"whole": None, "1-byte": 1, "4KiB": 4096, "64KiB": 65536}
PARAMS = [
    pytest.param(name, chunking, id=f"{name}-{chunking}")
    for name in NAMES
    for chunking in CHUNKINGS
    if not (chunking == "1-byte" and name in BIG)
]
RESULTS: dict[str, dict[str, object]] = {}
"""What each case gave, for the table in docs/reliability.md (see the module docstring)."""


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    target = os.environ.get("XMPPSPY_HOSTILE_REPORT")
    if target and RESULTS:
        Path(target).write_text(
            json.dumps({n: RESULTS[n] for n in NAMES if n in RESULTS}, indent=1)
        )


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


def the_case(name: str, secret: Path) -> Case:
    return {case.name: case for case in cases(secret)}[name]


class Recorder:
    """A sink that keeps every record, but of ``Opaque`` bytes only a digest (big cases)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.digest = {d: hashlib.sha256() for d in Direction}
        self.size = dict.fromkeys(Direction, 0)

    def accept(self, records: Sequence[Record]) -> None:
        for record in records:
            event = record.event
            raw = getattr(event, "raw", None)
            if raw is not None:
                self.digest[event.dir].update(raw)
                self.size[event.dir] += len(raw)
            if isinstance(event, Opaque):
                record = Record(record.t, record.conn, dataclasses.replace(event, raw=b""))
            self.records.append(record)

    def events(self, direction: Direction) -> list[object]:
        return [r.event for r in self.records if getattr(r.event, "dir", None) is direction]


class PendingWatch(Session):
    """The relay's session, watched: the most bytes a parser held after any read."""

    most = 0

    def feed(self, direction: Direction, data: bytes) -> list[Event]:
        events = super().feed(direction, data)
        PendingWatch.most = max(PendingWatch.most, self.parsers[direction].pending)
        return events


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> type[PendingWatch]:
    PendingWatch.most = 0
    monkeypatch.setattr(xmppspy.relay, "Session", PendingWatch)
    return PendingWatch


def kind(event: object) -> str:
    match event:
        case Stanza():
            return event.kind.value
        case StreamOpened():
            return "open"
        case StreamClosed():
            return "close"
        case Keepalive():
            return "keepalive"
        case TlsStarted():
            return "tls"
        case ParseError():
            return "parse-error"
        case Opaque():
            return "opaque"
    return type(event).__name__


def kinds(events: Sequence[object]) -> tuple[str, ...]:
    out: list[str] = []
    for event in events:
        name = kind(event)
        if name != "opaque" and not (name == "keepalive" and out and out[-1] == name):
            out.append(name)
    return tuple(out)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


async def drain(stream: trio.abc.ReceiveStream) -> tuple[str, int]:
    """Read to EOF; the digest and size of what came (a 10 MB case is not kept)."""
    digest, size = hashlib.sha256(), 0
    while chunk := await stream.receive_some(READ_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


async def relay_case(case: Case, chunk: int | None, sink: Recorder) -> Relay:
    """One connection through a relay: the case's peer sends its bytes and shuts down writing.

    ``chunk=None`` sends everything at once; otherwise each piece must reach the other side
    before the next is sent. Then the other peer shuts down too. Asserts (a) along the way.
    """
    client, relay_client = trio.testing.memory_stream_pair()
    server, relay_server = trio.testing.memory_stream_pair()

    async def open_upstream() -> trio.abc.Stream:
        return relay_server

    config = RelayConfig("example.test:5222", max_stanza_size=case.max_stanza_size)
    relay = Relay(config, open_upstream, sink)
    sender, receiver = (client, server) if case.direction is C2S else (server, client)

    async def send_all_then_eof() -> None:
        await sender.send_all(case.data)
        await sender.send_eof()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "127.0.0.1:40000")
            if chunk is None:
                nursery.start_soon(send_all_then_eof)
                got = await drain(receiver)
                assert got == (hashlib.sha256(case.data).hexdigest(), len(case.data))
            else:
                for i in range(0, len(case.data), chunk):
                    piece = case.data[i : i + chunk]
                    await sender.send_all(piece)
                    assert await receive_exactly(receiver, len(piece)) == piece, f"at byte {i}"
                await sender.send_eof()
                assert await receiver.receive_some() == b"", "more bytes than were sent"
            await receiver.send_eof()
            assert await sender.receive_some() == b""
    return relay


def check_records(case: Case, sink: Recorder) -> ParseError | None:
    """(b): exact bytes, the expected events, one ParseError naming the problem, then Opaque."""
    other = case.direction.other
    assert sink.size[case.direction] == len(case.data)
    assert sink.digest[case.direction].digest() == hashlib.sha256(case.data).digest()
    assert sink.size[other] == 0
    assert not sink.events(other)
    events = sink.events(case.direction)
    errors = [e for e in events if isinstance(e, ParseError)]
    assert len(errors) <= 1
    assert not any(getattr(e, "redacted", False) for e in events)
    for event in events:
        assert SECRET.encode() not in getattr(event, "raw", b"")
    if case.reason is None:
        assert not errors, errors[0].reason
        assert kinds(events) == case.events
        assert all(e.reason is OpaqueReason.TLS for e in events if isinstance(e, Opaque))
        return None
    assert errors, f"no parse error; events: {kinds(events)}"
    (error,) = errors
    where = events.index(error)
    assert kinds(events[:where]) == case.events
    assert case.reason in error.reason
    assert "\n" not in error.reason and SECRET not in error.reason
    assert error.offset == sum(len(getattr(e, "raw", b"")) for e in events[:where])
    assert error.offset <= error.at <= len(case.data)
    if case.at is not None:
        assert error.at == case.at
    later = events[where + 1 :]
    assert all(isinstance(e, Opaque) and e.reason is OpaqueReason.AFTER_ERROR for e in later)
    return error


def check_connection(case: Case, relay: Relay, sink: Recorder) -> None:
    """(c): the connection ended normally, with the right summary."""
    (stats,) = relay.connections
    assert stats.reason == "closed by both sides"
    assert stats.bytes[case.direction] == len(case.data)
    assert stats.bytes[case.direction.other] == 0
    assert isinstance(sink.records[0].event, Connected)
    assert isinstance(sink.records[-1].event, Disconnected)
    assert sink.records[-1].event.reason == "closed by both sides"


def shown(sink: Recorder) -> str:
    """What the live view prints for these records (and each encodes as a capture line)."""
    out = io.StringIO()
    console = Console(file=out, width=1000, no_color=True, highlight=False)
    view = View(console)
    for record in sink.records:
        console.print(view.render(record))
        assert encode_record(record).endswith(b"\n")
    return out.getvalue()


@pytest.mark.parametrize(("name", "chunking"), PARAMS)
async def test_case_through_the_relay(
    name: str, chunking: str, secret: Path, watch: type[PendingWatch]
) -> None:
    case = the_case(name, secret)
    sink = Recorder()
    relay = await relay_case(case, CHUNKINGS[chunking], sink)  # (a), and (c): nothing escaped
    error = check_records(case, sink)  # (b)
    check_connection(case, relay, sink)  # (c)
    assert watch.most <= case.max_stanza_size + READ_SIZE  # (d)
    text = shown(sink)
    assert SECRET not in text
    if error is not None:
        assert f"parse error at byte {error.at}: {error.reason}" in text
    if chunking == "64KiB":
        RESULTS.setdefault(name, {}).update(
            dir=case.direction.value,
            size=len(case.data),
            events=list(kinds(sink.events(case.direction))),
            reason=error.reason if error else None,
            offset=error.offset if error else None,
            at=error.at if error else None,
            most_pending=watch.most,
            records=len(sink.records),
        )


@pytest.mark.parametrize("name", sorted(BIG))
async def test_big_case_memory_stays_bounded(name: str, secret: Path) -> None:
    """(d) measured: the peak of Python memory while relaying, above what was there before.

    Nothing but the relay and an in-memory pair of streams allocates here; the test's own
    copy of the input was made before tracing started. The peak does not depend on the size of
    the input: it is the parser's buffer (the limit plus one read), expat's (which doubles as it
    grows, so up to twice the limit for one long token), the ParseError's copy of the bytes and
    a transient copy: about five times the limit for a 1 MiB start tag. The bound is four
    times the limit plus 2 MiB.
    """
    case = the_case(name, secret)
    sink = Recorder()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        await relay_case(case, 65536, sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check_records(case, sink)
    growth = peak - before
    RESULTS.setdefault(name, {})["peak_mib"] = round(growth / 2**20, 2)
    assert growth < 4 * case.max_stanza_size + 2 * 2**20, f"{growth / 2**20:.1f} MiB"


async def test_the_relay_forwards_an_incomplete_header_at_once(secret: Path) -> None:
    """A header that never completes still reaches the server, read by read, and stays open."""
    case = the_case("header-never-completes", secret)
    sink = Recorder()
    client, relay_client = trio.testing.memory_stream_pair()
    server, relay_server = trio.testing.memory_stream_pair()

    async def open_upstream() -> trio.abc.Stream:
        return relay_server

    relay = Relay(RelayConfig("example.test:5222"), open_upstream, sink)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "127.0.0.1:40000")
            await client.send_all(case.data)
            assert await receive_exactly(server, len(case.data)) == case.data
            await trio.sleep(0.05)
            # nothing is reported yet: the header may still complete
            assert [kind(r.event) for r in sink.records] == ["Connected"]
            await server.send_all(SERVER_HEADER)
            assert await receive_exactly(client, len(SERVER_HEADER)) == SERVER_HEADER
            nursery.cancel_scope.cancel()
    # cancelled (the proxy stopped): what the client left unfinished is still recorded
    (error,) = [r.event for r in sink.records if isinstance(r.event, ParseError)]
    assert error.raw == case.data
    assert relay.connections[0].reason == "proxy stopped"


async def test_wrong_root_element_is_reported_at_its_start_tag(secret: Path) -> None:
    """``at`` is the first byte of what was refused (as for a DOCTYPE, comment or PI).

    For a root element that is not ``<stream:stream>`` it is the byte after the start tag:
    6 for ``<html><body>``, 26 for ``<?xml version='1.0'?><iq/>``.
    """
    case = the_case("server-html", secret)
    sink = Recorder()
    await relay_case(case, None, sink)
    error = check_records(case, sink)
    assert error is not None
    assert error.at == 0


async def test_a_long_start_tag_in_small_reads_costs_linear_time(
    watch: type[PendingWatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing a stanza must cost about the same whatever the size of the peer's reads.

    A start tag is one expat token; expat 2.5 (no reparse deferral) scans an unfinished token
    again from its start on every feed. A 1 MB attribute value (under the default limit) in
    256-byte reads makes every read cost a scan of up to 1 MB: quadratic, about 1 s of CPU in
    which the single-threaded relay serves no other connection (hours in 1-byte reads). The
    same bytes as a text node cost milliseconds. Measured as time spent in ``Session.feed``.
    """
    spent: dict[str, float] = {}

    class Timed(PendingWatch):
        label = ""

        def feed(self, direction: Direction, data: bytes) -> list[Event]:
            started = time.perf_counter()
            try:
                return super().feed(direction, data)
            finally:
                spent[Timed.label] = spent.get(Timed.label, 0.0) + time.perf_counter() - started

    monkeypatch.setattr(xmppspy.relay, "Session", Timed)
    size = 600 * 1000
    shapes = {
        "text": b"<message><body>" + b"a" * size + b"</body></message>",
        "attribute": b"<message id='" + b"a" * size + b"'/>",
    }
    for label, stanza in shapes.items():
        Timed.label = label
        data = CLIENT_HEADER + stanza + PRESENCE
        case = Case(label, data, label, None, ("open", "message", "presence"))
        sink = Recorder()
        await relay_case(case, 256, sink)
        check_records(case, sink)
    assert spent["attribute"] < 5 * spent["text"] + 0.1, spent


# -- the real process ---------------------------------------------------------------------------


NORMAL_STREAM = (
    CLIENT_HEADER
    + PRESENCE
    + b" "
    + MESSAGE
    + b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
    + CLOSE
)


async def echo(stream: trio.SocketStream) -> None:
    """The upstream: sends back every byte, and shuts down writing when the client has."""
    async with stream:
        try:
            while data := await stream.receive_some(READ_SIZE):
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass


async def exchange(port: int, data: bytes) -> bytes:
    """Connect, send ``data`` and shut down writing while reading everything that comes back."""
    received = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:

        async def send() -> None:
            await stream.send_all(data)
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while chunk := await stream.receive_some(READ_SIZE):
                received += chunk
    return bytes(received)


@pytest.mark.e2e
async def test_the_real_proxy_survives_the_corpus(tmp_path: Path, secret: Path) -> None:
    corpus = cases(secret)
    payloads = [case.data for case in corpus] + [NORMAL_STREAM]
    capture = tmp_path / "hostile.jsonl"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1")
            )
            echo_port = listeners[0].socket.getsockname()[1]
            proxy = ProxyProcess(tmp_path, f"127.0.0.1:{echo_port}", ("--record", str(capture)))
            proxy.start()  # the view is on: it renders every event of every case
            assert proxy.process is not None
            try:
                for number, data in enumerate(payloads, start=1):
                    back = await exchange(proxy.port, data)
                    assert back == data, f"connection c{number}: {len(back)} of {len(data)} bytes"
                    assert proxy.process.poll() is None, f"died after c{number}:\n{proxy.stderr()}"
                await trio.sleep(0.2)  # the last connection's summary follows its EOF
                assert proxy.process.poll() is None
            finally:
                proxy.kill()  # SIGKILL: no orderly shutdown, the capture must be whole anyway
            nursery.cancel_scope.cancel()

    with open_capture(capture) as reader:
        records = list(reader)
    assert not reader.truncated
    connects = [r.conn for r in records if isinstance(r.event, Connected)]
    assert connects == [f"c{n}" for n in range(1, len(payloads) + 1)]
    wire: dict[tuple[str, Direction], bytearray] = {}
    for record in records:
        raw = getattr(record.event, "raw", None)
        if raw is not None:
            assert not getattr(record.event, "redacted", False)
            wire.setdefault((record.conn, record.event.dir), bytearray()).extend(raw)
    for number, data in enumerate(payloads, start=1):
        for direction in Direction:  # the echo sent each case back: both directions carry it
            assert wire.get((f"c{number}", direction)) == data, (number, direction)
    errors = {r.conn: r.event for r in records if isinstance(r.event, ParseError)}
    client_errors = {
        r.conn: r.event
        for r in records
        if isinstance(r.event, ParseError) and r.event.dir is Direction.C2S
    }
    for number, case in enumerate(corpus, start=1):
        if case.direction is C2S and case.max_stanza_size == 1024 * 1024 and case.reason:
            assert case.reason in client_errors[f"c{number}"].reason, case.name
    assert f"c{len(payloads)}" not in errors  # the normal stream parsed cleanly
    output = proxy.stdout() + proxy.stderr()
    assert "Traceback" not in output
    assert SECRET not in output
    assert SECRET.encode() not in capture.read_bytes()
    assert "parse error at byte" in proxy.stdout()


@pytest.mark.parametrize("name", SERVER_NAMES)
async def test_server_cases_under_strip(name: str, secret: Path) -> None:
    """--tls strip holds the server's first bytes back while it negotiates: whatever a hostile
    server sends, the client gets it unchanged (or, if TLS was agreed and then failed, a stream
    error saying so), the capture holds every byte, and the relay ends the connection cleanly."""
    case = the_case(name, secret)
    client, relay_client = trio.testing.memory_stream_pair()
    server, relay_server = trio.testing.memory_stream_pair()

    async def open_upstream() -> trio.abc.Stream:
        return relay_server

    tls = xmppspy.relay.TlsSetup(
        lambda _: ssl.create_default_context(), ssl.create_default_context()
    )
    config = RelayConfig(
        "example.test:5222", max_stanza_size=case.max_stanza_size, tls=tls, starttls_upstream=True
    )
    sink = Recorder()
    relay = Relay(config, open_upstream, sink)

    async def play_server() -> None:
        await receive_exactly(server, len(CLIENT_HEADER))
        await server.send_all(case.data)
        await server.send_eof()
        await drain(server)  # whatever xmppspy says (<starttls/>, a ClientHello), until it hangs up

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.handle, relay_client, "127.0.0.1:40000")
            nursery.start_soon(play_server)
            await client.send_all(CLIENT_HEADER)
            got = bytearray()
            while chunk := await client.receive_some(READ_SIZE):
                got += chunk
            await client.send_eof()
    (stats,) = relay.connections
    if name == "server-proceed-then-tls":  # STARTTLS agreed, then no TLS: said, in XMPP
        assert bytes(got).startswith(b"<?xml version='1.0'?><stream:stream ")
        assert b"TLS with the server failed" in got
        assert stats.reason.startswith("TLS with the server failed")
    else:
        assert hashlib.sha256(got).digest() == hashlib.sha256(case.data).digest()
    assert sink.size[S2C] == len(case.data)
    assert sink.digest[S2C].digest() == hashlib.sha256(case.data).digest()
    assert stats.reason != "proxy stopped"
