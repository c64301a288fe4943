"""trio: accept clients, connect each to the upstream server, move bytes both ways.

Each read is fed to the session (which only observes), its records go to the sink, and then the
bytes are forwarded unchanged. Feeding before forwarding means the capture holds every byte a
peer was sent, and that the session's restart rules (after ``<proceed/>`` or ``<success/>``) are
applied before the other peer can possibly answer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from xml.sax.saxutils import escape

import trio

from xmppspy.events import (
    Connected,
    Direction,
    Disconnected,
    Event,
    Keepalive,
    Opaque,
    ParseError,
    Record,
    Rewritten,
    Stanza,
    StreamClosed,
    StreamOpened,
    TlsStarted,
)
from xmppspy.parser import DEFAULT_MAX_STANZA_SIZE
from xmppspy.reasons import reason
from xmppspy.session import Session

T = TypeVar("T")
READ_SIZE = 64 * 1024
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
"""Resource exhaustion: wait and accept again rather than stop serving everyone."""
CONNECT_TIMEOUT = 10.0
VIEW_BYTES = 16 * 1024 * 1024
"""The wire bytes the view may have waiting: a slow terminal must not hold a stream's worth."""
REFUSE_TIMEOUT = 2.0


def stream_error(text: str) -> bytes:
    """A whole stream that only says the server cannot be had (RFC 6120 4.9.3.16), and why."""
    return (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        b"<stream:error><remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>"
        + escape(text).encode()
        + b"</text></stream:error></stream:stream>"
    )


UPSTREAM_FAILED = stream_error("xmppspy could not reach the server")
"""What a client is told when the upstream server cannot be reached."""


class Sink(Protocol):
    """Receives records as they happen. Must not block: it runs on the relay's path."""

    def accept(self, records: Sequence[Record]) -> None: ...


class FilteredSink:
    """Passes on only the records ``keep`` accepts (``--record-filtered``)."""

    def __init__(self, sink: Sink, keep: Callable[[Record], bool]) -> None:
        self.sink = sink
        self.keep = keep

    def accept(self, records: Sequence[Record]) -> None:
        kept = [record for record in records if self.keep(record)]
        if kept:
            self.sink.accept(kept)


class FanOut:
    """Gives every record to several sinks, in order."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def accept(self, records: Sequence[Record]) -> None:
        for sink in self.sinks:
            sink.accept(records)


class ChannelSink(Generic[T]):
    """Hands what ``select`` makes of each record to a slower consumer (the view), never waiting.

    When the channel is full, or the records waiting hold ``max_bytes`` (1 MiB stanzas fill
    memory long before the channel's count does), the item is dropped and counted: the relay
    goes on, the view says how many it skipped, and the capture (a separate sink) still gets
    every record. The consumer calls ``done`` for each record it has finished with.
    """

    def __init__(
        self,
        channel: trio.MemorySendChannel[T],
        select: Callable[[Record], T | None],
        *,
        max_bytes: int = VIEW_BYTES,
    ) -> None:
        self.channel = channel
        self.select = select
        self.max_bytes = max_bytes
        self.queued = 0
        """Bytes of the records handed over and not yet ``done``."""
        self.dropped = 0

    def accept(self, records: Sequence[Record]) -> None:
        select, send = self.select, self.channel.send_nowait
        for record in records:
            item = select(record)
            if item is None:
                continue
            size = record_bytes(record)
            if self.queued and self.queued + size > self.max_bytes:
                self.dropped += 1  # one record larger than the budget still goes, alone
                continue
            try:
                send(item)
            except trio.WouldBlock:
                self.dropped += 1
                continue
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return  # the view has stopped; the relay does not care
            self.queued += size

    def done(self, record: Record) -> None:
        """The consumer has finished with this record: its bytes no longer count."""
        self.queued -= record_bytes(record)

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped


def record_bytes(record: Record) -> int:
    """What a record keeps alive, roughly: the bytes it carries, and a little for itself."""
    match record.event:
        case StreamOpened() | Stanza() | Keepalive() | StreamClosed() | ParseError() | Opaque():
            size = len(record.event.raw)
        case Rewritten():
            size = len(record.event.sent)
        case _:
            size = 0
    return size + 256


@dataclass(frozen=True)
class RelayConfig:
    upstream: str
    """``HOST:PORT`` as the person wrote it, for messages."""
    max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE
    show_secrets: bool = False
    tls: TlsSetup | None = None
    """How to intercept STARTTLS; None relays TLS opaquely (passthrough)."""
    sasl_mechanisms: tuple[str, ...] | None = None
    """Offer clients only these SASL mechanisms (``--sasl-mechanisms``)."""
    starttls_upstream: bool = False
    """xmppspy asks the server for STARTTLS itself and hides it from the client (``--tls
    strip``, and direct-TLS clients of a STARTTLS server). Needs ``tls``."""

    def __post_init__(self) -> None:
        if self.starttls_upstream and self.tls is None:
            raise ValueError("starttls_upstream needs tls: whom to trust upstream")


@dataclass
class ConnectionStats:
    conn: str
    client: str
    started: float
    bytes: dict[Direction, int] = field(default_factory=lambda: dict.fromkeys(Direction, 0))
    stanzas: dict[Direction, int] = field(default_factory=lambda: dict.fromkeys(Direction, 0))
    jid: str | None = None
    reason: str = "open"

    def summary(self) -> Disconnected:
        return Disconnected(
            reason=self.reason,
            c2s_bytes=self.bytes[Direction.C2S],
            s2c_bytes=self.bytes[Direction.S2C],
            c2s_stanzas=self.stanzas[Direction.C2S],
            s2c_stanzas=self.stanzas[Direction.S2C],
            jid=self.jid,
        )


OpenUpstream = Callable[[], Awaitable[trio.abc.Stream]]


@dataclass
class _Held:
    """The client's first TLS bytes, read by its pump after <proceed/> and kept back."""

    data: bytes = b""


class _Replayed(trio.abc.Stream):
    """A stream that first gives back bytes already read from it (the client's TLS hello)."""

    def __init__(self, stream: trio.abc.Stream, first: bytes) -> None:
        self.stream = stream
        self.first = first

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.first:
            await trio.lowlevel.checkpoint()
            size = len(self.first) if max_bytes is None else max_bytes
            data, self.first = self.first[:size], self.first[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass(frozen=True)
class TlsSetup:
    """What intercepting STARTTLS takes: our certificate per domain, and how to trust servers."""

    server_context: Callable[[str], ssl.SSLContext]
    """The client-facing context for a domain (xmppspy's leaf for it, or the person's own)."""
    upstream_context: ssl.SSLContext
    direct_context: Callable[[str], ssl.SSLContext] | None = None
    """For direct-TLS clients: picks the certificate by SNI, ``domain`` when there is none."""
    direct_upstream_context: ssl.SSLContext | None = None
    """For a direct-TLS server (XEP-0368): the same trust, offering ALPN ``xmpp-client``."""


def tls_facts(stream: trio.SSLStream[trio.abc.Stream], *, stripped: bool = False) -> TlsStarted:
    """What a person wants to know about the TLS session with the server."""
    verified = stream.context.verify_mode != ssl.CERT_NONE  # a failed check ends the handshake
    der = stream.getpeercert(binary_form=True) or b""
    fingerprint = hashlib.sha256(der).hexdigest()
    cert = stream.getpeercert() if verified else {}

    def name(field: str) -> str | None:
        parts = cert.get(field) if cert else None
        if not parts:
            return None
        return ", ".join(f"{k}={v}" for rdn in parts for k, v in rdn)

    cipher = stream.cipher()
    return TlsStarted(
        Direction.S2C,
        intercepted=True,
        version=stream.version(),
        cipher=cipher[0] if cipher else None,
        server_subject=name("subject"),
        server_issuer=name("issuer"),
        server_fingerprint=":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)),
        verified=verified,
        stripped=stripped,
    )


class _PeerGone(Exception):
    """One side reset or broke the connection; the whole connection ends."""

    def __init__(self, reason: str, ended: Direction | None = None) -> None:
        super().__init__(reason)
        self.ended = ended
        """The direction whose peer ended it (a reset or EOF read), when that is what happened:
        it is closed first, so the session knows which side left first."""


class _ServerTlsFailed(Exception):
    """The TLS handshake with the server failed; the message says why, in one line."""


class Relay:
    """Proxies client connections to one upstream. ``connections`` keeps every one's stats."""

    def __init__(
        self,
        config: RelayConfig,
        open_upstream: OpenUpstream,
        sink: Sink,
        *,
        ids: Iterator[int] | None = None,
    ) -> None:
        self.config = config
        self.open_upstream = open_upstream
        self.sink = sink
        self.connections: list[ConnectionStats] = []
        self._ids = ids if ids is not None else itertools.count(1)
        """Connection numbers; relays of one proxy share them so that ids stay unique."""

    async def serve(
        self,
        listeners: Sequence[Listener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept clients until cancelled."""
        await accept_clients(listeners, self.handle, task_status=task_status)

    async def handle(self, client: trio.abc.Stream, client_name: str) -> None:
        """Proxy one client until both sides are done, or one breaks."""
        stats = ConnectionStats(f"c{next(self._ids)}", client_name, time.time())
        self.connections.append(stats)
        stats.reason = "proxy stopped"
        session: Session | None = None
        first = Direction.C2S
        try:
            async with client:
                if isinstance(client, trio.SSLStream) and not await _client_tls(client, stats):
                    return
                try:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        upstream = await self.open_upstream()
                except (OSError, trio.TooSlowError) as exc:
                    stats.reason = f"upstream {self.config.upstream} unreachable: {_why(exc)}"
                    await _refuse(client)
                    return
                self._emit(stats.conn, [Connected(client_name, self.config.upstream)])
                direct = isinstance(upstream, trio.SSLStream)
                if isinstance(upstream, trio.SSLStream):  # direct TLS (XEP-0368) on both sides
                    self._emit(stats.conn, [tls_facts(upstream)])
                session = Session(
                    max_stanza_size=self.config.max_stanza_size,
                    show_secrets=self.config.show_secrets,
                    intercept_tls=self.config.tls is not None,
                    sasl_mechanisms=self.config.sasl_mechanisms,
                    direct_tls=direct,
                    starttls_upstream=self.config.starttls_upstream and not direct,
                )
                try:
                    async with upstream:
                        await self._relay(client, upstream, session, stats)
                    stats.reason = "closed by both sides"
                except* _PeerGone as group:
                    gone = group.exceptions[0]
                    assert isinstance(gone, _PeerGone)
                    stats.reason = str(gone)
                    first = gone.ended or first
        finally:
            # One summary per connection, however it ended (also when the proxy stops mid-connect).
            leftovers: list[Event] = []
            if session is not None:
                leftovers = session.close(first) + session.close(first.other)
                stats.jid = session.jid
            self._emit(stats.conn, [*leftovers, stats.summary()])

    async def _relay(
        self,
        client: trio.abc.Stream,
        upstream: trio.abc.Stream,
        session: Session,
        stats: ConnectionStats,
    ) -> None:
        """Pump both ways; at an intercepted STARTTLS, do both handshakes and pump on in TLS."""
        secured: list[trio.SSLStream[trio.abc.Stream]] = []
        try:
            if session.negotiating is not None:
                upstream = await self._starttls_upstream(client, upstream, session, stats)
                if isinstance(upstream, trio.SSLStream):
                    secured.append(upstream)
            while True:
                hello = _Held()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        self._pump, client, upstream, Direction.C2S, session, stats, hello
                    )
                    nursery.start_soon(
                        self._pump, upstream, client, Direction.S2C, session, stats, hello
                    )
                if not (session.tls_pending and hello.data):
                    return
                client, upstream = await self._intercept(
                    client, upstream, hello.data, session, stats
                )
                secured += [client, upstream]  # type: ignore[list-item]
        finally:
            for stream in secured:  # a close_notify each, if the peer still listens
                with (
                    trio.move_on_after(1) as scope,
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    scope.shield = True
                    await stream.aclose()

    async def _intercept(
        self,
        client: trio.abc.Stream,
        upstream: trio.abc.Stream,
        client_hello: bytes,
        session: Session,
        stats: ConnectionStats,
    ) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        """TLS with the server as its client, then with the client as the server it asked for."""
        tls = self.config.tls
        assert tls is not None
        domain = self._domain(session)
        client_side = trio.SSLStream(
            _Replayed(client, client_hello),
            tls.server_context(domain),
            server_side=True,
            https_compatible=True,
        )
        try:
            server_side = await self._server_tls(upstream, domain)
        except _ServerTlsFailed as exc:
            await _tell_why(client_side, str(exc))  # inside the TLS the client asked for
            raise _PeerGone(str(exc)) from exc
        try:
            await client_side.do_handshake()
        except trio.BrokenResourceError as exc:
            raise _PeerGone(
                f"the client refused xmppspy's certificate for {domain} ({_why(exc)}): "
                "make it trust xmppspy's CA (xmppspy ca)"
            ) from exc
        started = tls_facts(server_side)
        self._emit(stats.conn, session.tls_established(started))
        return client_side, server_side

    def _domain(self, session: Session) -> str:
        """The name TLS with the server is for: the client's ``to``, else the upstream host."""
        return session.domain or self.config.upstream.rsplit(":", 1)[0]

    async def _server_tls(
        self, upstream: trio.abc.Stream, domain: str
    ) -> trio.SSLStream[trio.abc.Stream]:
        """TLS with the server as its client, for ``domain`` (the SNI and the name verified)."""
        tls = self.config.tls
        assert tls is not None
        server_side = trio.SSLStream(
            upstream, tls.upstream_context, server_hostname=domain, https_compatible=True
        )
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await server_side.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise _ServerTlsFailed(f"TLS with the server failed: {_why(exc)}") from exc
        return server_side

    async def _starttls_upstream(
        self,
        client: trio.abc.Stream,
        upstream: trio.abc.Stream,
        session: Session,
        stats: ConnectionStats,
    ) -> trio.abc.Stream:
        """xmppspy's own STARTTLS with the server, before both ways are pumped.

        One side at a time (``Session.negotiating`` says which), so that only this task writes
        to the server: the client's header goes up, the server's header and features are held
        back, xmppspy sends ``<starttls/>``, and after ``<proceed/>`` and the handshake it sends
        the client's header again. The client gets the server's stream from inside TLS on. A
        server that stays silent gives up the negotiation: what was held goes on, as it came.
        """
        while (direction := session.negotiating) is not None:
            source, dest = (client, upstream) if direction is Direction.C2S else (upstream, client)
            reader, writer = _names(direction)
            waiting = trio.fail_after(CONNECT_TIMEOUT) if direction is Direction.S2C else None
            try:
                with waiting or contextlib.nullcontext():
                    data = await source.receive_some(READ_SIZE)
            except trio.TooSlowError:
                # Not an XMPP server, or one waiting for the client: relay as a plain proxy would.
                why = f"the server sent nothing more for {CONNECT_TIMEOUT:g} s"
                self._emit(stats.conn, session.give_up(why))
                await _send(client, session.forward(Direction.S2C, b""), "client")
                await _send(upstream, session.take_injected(), "server")
                break
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _PeerGone(f"{reader} reset the connection: {_why(exc)}", direction) from exc
            if not data:  # the held bytes are the client's; the teardown closes this side first
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    if held := session.release(Direction.S2C):
                        await client.send_all(held)
                raise _PeerGone(
                    f"{reader} closed the connection while xmppspy negotiated STARTTLS", direction
                )
            chunk = bytes(data)
            self._observe(session, direction, chunk, stats)
            await _send(dest, session.forward(direction, chunk), writer)
            await _send(upstream, session.take_injected(), "server")
            if session.tls_pending:
                try:
                    upstream = await self._server_tls(upstream, self._domain(session))
                except _ServerTlsFailed as exc:
                    await _tell_why(client, str(exc))
                    raise _PeerGone(str(exc)) from exc
                assert isinstance(upstream, trio.SSLStream)
                started = tls_facts(upstream, stripped=not isinstance(client, trio.SSLStream))
                self._emit(stats.conn, session.tls_established(started))
                await _send(upstream, session.take_injected(), "server")
        return upstream

    async def _pump(
        self,
        source: trio.abc.Stream,
        dest: trio.abc.Stream,
        direction: Direction,
        session: Session,
        stats: ConnectionStats,
        hello: _Held,
    ) -> None:
        reader, writer = _names(direction)
        while True:
            try:
                data = await source.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _PeerGone(f"{reader} reset the connection: {_why(exc)}", direction) from exc
            if not data:
                if leftovers := session.close(direction):
                    self._emit(stats.conn, leftovers)
                if rest := session.release(direction):
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await dest.send_all(rest)
                break
            if session.tls_pending and direction is Direction.C2S:
                hello.data = bytes(data)  # the client's TLS hello: for us, not the server
                return
            chunk = bytes(data)
            self._observe(session, direction, chunk, stats)
            try:
                if out := session.forward(direction, chunk):
                    await dest.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _PeerGone(f"{writer} went away: {_why(exc)}") from exc
            if session.tls_pending and direction is Direction.S2C:
                return  # <proceed/> is on its way; the server's next bytes are TLS
        if isinstance(dest, trio.abc.HalfCloseableStream):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await dest.send_eof()

    def _observe(
        self, session: Session, direction: Direction, data: bytes, stats: ConnectionStats
    ) -> None:
        """Parse and record one read.

        A function of its own so that no event outlives it: a read's events must not stay
        alive while its bytes wait in ``send_all`` (200 slow clients held 80,000 stanzas so).
        """
        events = session.feed(direction, data)
        stats.bytes[direction] += len(data)
        stats.stanzas[direction] += sum(1 for e in events if isinstance(e, Stanza))
        if events:
            self._emit(stats.conn, events)

    def _emit(self, conn: str, events: Sequence[Event]) -> None:
        now = time.time()
        self.sink.accept([Record(now, conn, event) for event in events])


Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]
Accepted = trio.SocketStream | trio.SSLStream[trio.SocketStream]


def _socket_of(stream: Accepted) -> trio.socket.SocketType:
    return stream.transport_stream.socket if isinstance(stream, trio.SSLStream) else stream.socket


async def accept_clients(
    listeners: Sequence[Listener],
    handle: Callable[[Any, str], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener until cancelled, handing each client and its address to handle."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, nursery, handle)
        task_status.started()


async def _accept_loop(
    listener: Listener,
    nursery: trio.Nursery,
    handle: Callable[[Any, str], Awaitable[None]],
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY:
                    raise
                await trio.sleep(0.1)
                continue
            try:
                host, port = _socket_of(stream).getpeername()[:2]
            except OSError:  # it reset between the kernel's accept and ours: nothing to do
                await stream.aclose()
                continue
            nursery.start_soon(handle, stream, f"{host}:{port}")


async def _client_tls(client: trio.SSLStream[Any], stats: ConnectionStats) -> bool:
    """A direct-TLS client's handshake, before the server is dialled: a client that will not
    have xmppspy's certificate is told apart from one that leaves later."""
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await client.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        stats.reason = (
            f"TLS with the client failed ({_why(exc)}): if it refused xmppspy's certificate, "
            "make it trust xmppspy's CA (xmppspy ca)"
        )
        return False
    return True


async def _send(stream: trio.abc.Stream, data: bytes, who: str) -> None:
    if not data:
        return
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise _PeerGone(f"{who} went away: {_why(exc)}") from exc


def _names(direction: Direction) -> tuple[str, str]:
    return ("client", "server") if direction is Direction.C2S else ("server", "client")


def _why(exc: BaseException) -> str:
    return reason(exc, timeout=CONNECT_TIMEOUT)


async def _tell_why(client: trio.abc.Stream, reason: str) -> None:
    """The server cannot be had: tell the client so in XMPP, a whole stream with its error.

    Over TLS (the client's own, or the one it just asked for) the first send does the
    handshake, and closing sends close_notify after the error."""
    with (
        trio.move_on_after(REFUSE_TIMEOUT),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await client.send_all(stream_error(f"xmppspy: {reason}"))
        if isinstance(client, trio.SSLStream):
            await client.aclose()


async def _refuse(client: trio.abc.Stream) -> None:
    """Tell the client the server is unreachable, and close so that it can read that.

    Closing with unread input makes the kernel reset the connection, and a reset may discard
    the error before the client reads it: so shut down our side, then drain what the client
    already sent (its stream header), for a bounded time.
    """
    with (
        trio.move_on_after(REFUSE_TIMEOUT),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await client.send_all(UPSTREAM_FAILED)
        if isinstance(client, trio.abc.HalfCloseableStream):
            await client.send_eof()
        while await client.receive_some(READ_SIZE):
            pass


class UpstreamTlsError(OSError):
    """The direct-TLS handshake with the server failed; the message says why."""


def tls_upstream(host: str, port: int, context: ssl.SSLContext, name: str) -> OpenUpstream:
    """Opens a direct-TLS (XEP-0368) connection to the configured upstream.

    ``name`` is what its certificate must be for (and the SNI): the XMPP domain.
    """

    async def open_upstream() -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(host, port)
        tls = trio.SSLStream(stream, context, server_hostname=name, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            await stream.aclose()
            raise UpstreamTlsError(None, f"TLS with the server failed: {_why(exc)}") from exc
        return tls

    return open_upstream


def tcp_upstream(host: str, port: int) -> OpenUpstream:
    """Opens a TCP connection to the configured upstream, and nowhere else."""

    async def open_upstream() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    return open_upstream
