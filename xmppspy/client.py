"""A minimal XMPP client: stream negotiation as a sans-IO state machine, and a trio driver.

``ClientStream`` is fed the server's bytes and says what to send back: stream header, SASL
PLAIN (only when the server offers it), the restart after ``<success/>``, resource binding.
Once bound it passes the server's events through. It knows no sockets; ``play`` is the only
code here that does I/O, and it only moves bytes between a TCP stream and a ``ClientStream``.

There is no TLS: a server that requires STARTTLS is refused with a clear ``ClientError``.
"""

from __future__ import annotations

import base64
import enum
import os
import socket
from collections.abc import Callable, Sequence
from xml.sax.saxutils import quoteattr

import trio
from lxml import etree

from xmppspy.events import Direction, Kind, ParseError, Stanza, StreamClosed, WireEvent
from xmppspy.namespaces import (
    BIND,
    CLIENT,
    SASL,
    SESSION,
    STANZA_ERRORS,
    STREAM_ERRORS,
    STREAMS,
    TLS,
)
from xmppspy.parser import StreamParser

READ_SIZE = 64 * 1024
CONNECT_TIMEOUT = 10.0
NEGOTIATION_TIMEOUT = 15.0
CLOSE_TIMEOUT = 1.0
BIND_ID = "xmppspy-bind"
SESSION_ID = "xmppspy-session"


class ClientError(Exception):
    """The replay client cannot go on; the message says why, in one line, for a person."""


class Phase(enum.Enum):
    AUTH = "auth"
    """Waiting for features, then the outcome of SASL."""
    BIND = "bind"
    """Authenticated: waiting for the new stream's features, then the bind result."""
    SESSION = "session"
    READY = "ready"
    CLOSED = "closed"


def split_jid(jid: str) -> tuple[str | None, str, str | None]:
    """``local@domain/resource`` into its three parts (local and resource may be None)."""
    bare, slash, resource = jid.partition("/")
    local, at, domain = bare.rpartition("@")
    return (local if at else None), domain, (resource if slash else None)


def stream_header(domain: str) -> bytes:
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='{STREAMS}' to={quoteattr(domain)} version='1.0' xml:lang='en'>"
    ).encode()


def _condition(element: etree._Element, namespace: str) -> str:
    """The defined condition of a stream, stanza or SASL error, plus its text if any."""
    names = [etree.QName(child).localname for child in element if isinstance(child.tag, str)]
    condition = next((name for name in names if name != "text"), "undefined-condition")
    text = element.findtext(f"{{{namespace}}}text")
    return f"{condition} ({text.strip()})" if text and text.strip() else condition


class ClientStream:
    """One client's stream to a server: feed the server's bytes, send what ``receive`` returns."""

    def __init__(self, jid: str, password: str, *, resource: str | None = None) -> None:
        local, self.domain, own_resource = split_jid(jid)
        if not local or not self.domain:
            raise ClientError(f"--jid {jid!r}: write user@domain")
        self.user = local
        self.password = password
        self.resource = own_resource or resource
        self.phase = Phase.AUTH
        self.jid: str | None = None
        """The full JID the server bound, once ready."""
        self.warnings: list[str] = []
        self._session = False
        self._parser = StreamParser(Direction.S2C, pause_after=(Kind.SASL_SUCCESS,))

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def start(self) -> bytes:
        """The first bytes to send: the stream header."""
        return stream_header(self.domain)

    def receive(self, data: bytes) -> tuple[bytes, list[WireEvent]]:
        """Take the server's bytes; return what to send, and the events seen once ready.

        Raises ``ClientError`` when negotiation fails (the server's reason in the message).
        """
        return self._handle(self._parser.feed(data))

    def close(self) -> list[WireEvent]:
        """The server closed the connection: fail if that happened before we were ready."""
        events = self._parser.close()
        if self.phase not in (Phase.READY, Phase.CLOSED):
            raise ClientError(f"the server closed the connection during {self._doing()}")
        self.phase = Phase.CLOSED
        return events

    def _doing(self) -> str:
        return "authentication" if self.phase is Phase.AUTH else "resource binding"

    def _handle(self, events: list[WireEvent]) -> tuple[bytes, list[WireEvent]]:
        out, passed = bytearray(), list[WireEvent]()
        queue = list(events)
        while queue:
            event = queue.pop(0)
            if self.phase in (Phase.READY, Phase.CLOSED):
                passed.append(event)
                if isinstance(event, StreamClosed):
                    self.phase = Phase.CLOSED
                continue
            if isinstance(event, ParseError):
                raise ClientError(f"the server sent bad XML during {self._doing()}: {event.reason}")
            if isinstance(event, StreamClosed):
                raise ClientError(f"the server closed the stream during {self._doing()}")
            if not isinstance(event, Stanza):
                continue
            if event.kind is Kind.STREAM_ERROR:
                reason = _condition(event.element, STREAM_ERRORS)
                raise ClientError(f"the server ended the stream with an error: {reason}")
            out += self._negotiate(event)
            if event.kind is Kind.SASL_SUCCESS:
                queue.extend(self._parser.restart())
        return bytes(out), passed

    def _negotiate(self, stanza: Stanza) -> bytes:
        kind, phase = stanza.kind, self.phase
        if kind is Kind.FEATURES and phase is Phase.AUTH:
            return self._authenticate(stanza.element)
        if kind is Kind.SASL_FAILURE:
            reason = _condition(stanza.element, SASL)
            raise ClientError(f"authentication failed for {self.user}@{self.domain}: {reason}")
        if kind is Kind.SASL_SUCCESS:
            self.phase = Phase.BIND
            return stream_header(self.domain)
        if kind is Kind.FEATURES and phase is Phase.BIND:
            features = stanza.element
            if features.find(f"{{{BIND}}}bind") is None:
                raise ClientError("the server offers no resource binding after authentication")
            session = features.find(f"{{{SESSION}}}session")
            self._session = session is not None and session.find(f"{{{SESSION}}}optional") is None
            return self._bind_request(self.resource)
        if kind is Kind.IQ and stanza.id == BIND_ID and phase is Phase.BIND:
            return self._bound(stanza)
        if kind is Kind.IQ and stanza.id == SESSION_ID and phase is Phase.SESSION:
            if stanza.type != "result":
                reason = _error(stanza.element)
                raise ClientError(f"the server refused to establish a session: {reason}")
            self.phase = Phase.READY
        return b""

    def _authenticate(self, features: etree._Element) -> bytes:
        mechanisms = [
            (m.text or "").strip()
            for m in features.iterfind(f"{{{SASL}}}mechanisms/{{{SASL}}}mechanism")
        ]
        starttls = features.find(f"{{{TLS}}}starttls")
        if starttls is not None and starttls.find(f"{{{TLS}}}required") is not None:
            raise ClientError(
                "the server requires STARTTLS, which the replay client does not do "
                "(TLS interception is not supported yet): use a server without mandatory TLS"
            )
        if "PLAIN" not in mechanisms:
            offered = ", ".join(mechanisms) or "none"
            hint = " (it may offer PLAIN only over TLS)" if starttls is not None else ""
            raise ClientError(
                f"the server offers no SASL mechanism the replay client supports: it offers "
                f"{offered}; xmppspy does PLAIN{hint}"
            )
        credentials = f"\0{self.user}\0{self.password}".encode()
        return (
            f"<auth xmlns='{SASL}' mechanism='PLAIN'>".encode()
            + base64.b64encode(credentials)
            + b"</auth>"
        )

    def _bind_request(self, resource: str | None) -> bytes:
        inner = (
            f"<resource>{_escape(resource)}</resource>".encode() if resource is not None else b""
        )
        return (
            f"<iq type='set' id='{BIND_ID}'><bind xmlns='{BIND}'>".encode()
            + inner
            + b"</bind></iq>"
        )

    def _bound(self, stanza: Stanza) -> bytes:
        if stanza.type != "result":
            reason = _error(stanza.element)
            if self.resource is not None and reason.startswith("conflict"):
                self.warnings.append(
                    f"resource {self.resource!r} is taken: the server chose another one"
                )
                self.resource = None
                return self._bind_request(None)
            raise ClientError(f"the server refused to bind a resource: {reason}")
        jid = (stanza.element.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid") or "").strip()
        if not jid:
            raise ClientError("the server's bind result holds no JID")
        self.jid = jid
        if self._session:
            self.phase = Phase.SESSION
            return f"<iq type='set' id='{SESSION_ID}'><session xmlns='{SESSION}'/></iq>".encode()
        self.phase = Phase.READY
        return b""


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _error(iq: etree._Element) -> str:
    error = iq.find(f"{{{CLIENT}}}error")
    return "no reason given" if error is None else _condition(error, STANZA_ERRORS)


# -- I/O ----------------------------------------------------------------------------------------


def _why(exc: BaseException) -> str:
    """An OS error in a person's words."""
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(_why(inner) for inner in cause.exceptions))
    if cause is not None:
        return _why(cause)
    return str(exc) or type(exc).__name__


async def play(
    host: str,
    port: int,
    stream: ClientStream,
    *,
    wait: float,
    on_ready: Callable[[str], Sequence[tuple[float, bytes]]],
    on_sent: Callable[[int], None],
    on_received: Callable[[WireEvent], None],
    done: Callable[[], bool] = lambda: False,
) -> None:
    """Connect, negotiate, send what ``on_ready(bound JID)`` returns, collect replies, close.

    ``on_ready`` gives the stanzas to send, each after its delay in seconds.
    Server events after binding go to ``on_received`` as they arrive. After the last stanza,
    waits up to ``wait`` seconds for replies (less once ``done()`` says nothing more is due).
    """
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            sock = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise ClientError(f"cannot connect to {host}:{port}: {_why(exc)}") from None
    async with sock:
        try:
            await _negotiate(sock, stream)
            outgoing = on_ready(stream.jid or "")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read, sock, stream, on_received)
                for index, (delay, raw) in enumerate(outgoing):
                    await trio.sleep(delay)
                    if stream.phase is Phase.CLOSED:
                        stream.warnings.append(
                            f"the server closed the stream: {len(outgoing) - index} stanzas "
                            "were not sent"
                        )
                        break
                    on_sent(index)  # shown first: the reply may be read before send_all returns
                    await sock.send_all(raw)
                with trio.move_on_after(wait):
                    while not done() and stream.phase is not Phase.CLOSED:
                        await trio.sleep(0.02)
                if stream.phase is not Phase.CLOSED:
                    await sock.send_all(b"</stream:stream>")
                with trio.move_on_after(CLOSE_TIMEOUT):
                    while stream.phase is not Phase.CLOSED:
                        await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ClientError(f"the connection to {host}:{port} broke: {_why(exc)}") from None


async def _negotiate(sock: trio.SocketStream, stream: ClientStream) -> None:
    await sock.send_all(stream.start())
    with trio.move_on_after(NEGOTIATION_TIMEOUT) as scope:
        while not stream.ready:
            data = await sock.receive_some(READ_SIZE)
            if not data:
                stream.close()  # raises: not ready
            reply, _ = stream.receive(data)
            if reply:
                await sock.send_all(reply)
    if scope.cancelled_caught:
        raise ClientError(f"the server did not finish negotiating within {NEGOTIATION_TIMEOUT:g} s")


async def _read(
    sock: trio.SocketStream,
    stream: ClientStream,
    on_received: Callable[[WireEvent], None],
) -> None:
    while True:
        data = await sock.receive_some(READ_SIZE)
        events = stream.receive(data)[1] if data else stream.close()
        for event in events:
            on_received(event)
        if not data or stream.phase is Phase.CLOSED:
            return
