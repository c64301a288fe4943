"""A minimal XMPP client: stream negotiation as a sans-IO state machine, and a trio driver.

``ClientStream`` is fed the server's bytes and says what to send back: stream header, STARTTLS
when the server offers it, SASL SCRAM-SHA-1 (RFC 5802, without channel binding) or PLAIN, the
restart after ``<success/>``, resource binding. Once bound it passes the server's events through.

It knows no sockets. After ``<proceed/>`` it says "start TLS now" (``wants_tls``), like h11's
protocol switch: the caller wraps its transport in TLS and calls ``tls_started()``, which gives
the new stream header to send. ``play`` is the only code here that does I/O, and it only moves
bytes between a TCP (then TLS) stream and a ``ClientStream``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
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
from xmppspy.reasons import reason

READ_SIZE = 64 * 1024
CONNECT_TIMEOUT = 10.0
NEGOTIATION_TIMEOUT = 15.0
CLOSE_TIMEOUT = 1.0
BIND_ID = "xmppspy-bind"
SESSION_ID = "xmppspy-session"


class ClientError(Exception):
    """The replay client cannot go on; the message says why, in one line, for a person."""


MECHANISMS = ("SCRAM-SHA-1", "PLAIN")
"""The SASL mechanisms the client does, most preferred first (never a -PLUS one)."""


class Phase(enum.Enum):
    AUTH = "auth"
    """Waiting for features, then the outcome of SASL."""
    STARTTLS = "starttls"
    """``<starttls/>`` sent: waiting for ``<proceed/>``."""
    TLS = "tls"
    """``<proceed/>`` received: the caller must start TLS, then call ``tls_started()``."""
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

    def __init__(
        self,
        jid: str,
        password: str,
        *,
        resource: str | None = None,
        mechanism: str | None = None,
        nonce: str | None = None,
    ) -> None:
        local, self.domain, own_resource = split_jid(jid)
        if not local or not self.domain:
            raise ClientError(f"--jid {jid!r}: write user@domain")
        if mechanism is not None and mechanism not in MECHANISMS:
            raise ClientError(f"--sasl {mechanism}: choose one of {', '.join(MECHANISMS)}")
        self.user = local
        self.password = password
        self.resource = own_resource or resource
        self.wanted_mechanism = mechanism
        """The SASL mechanism to use; None chooses the best one offered."""
        self.mechanism: str | None = None
        """The SASL mechanism used, once chosen."""
        self.secure = False
        """Whether the stream runs over TLS (set by ``tls_started``)."""
        self._nonce = nonce
        self._scram: Scram | None = None
        self.phase = Phase.AUTH
        self.jid: str | None = None
        """The full JID the server bound, once ready."""
        self.warnings: list[str] = []
        self._session = False
        self._parser = self._new_parser()

    @staticmethod
    def _new_parser() -> StreamParser:
        return StreamParser(Direction.S2C, pause_after=(Kind.SASL_SUCCESS, Kind.PROCEED))

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def wants_tls(self) -> bool:
        """The server said ``<proceed/>``: start TLS on the transport now, then ``tls_started()``.

        Until then nothing more may be read from (or fed to) the plain transport.
        """
        return self.phase is Phase.TLS

    def tls_started(self) -> bytes:
        """TLS is up: the stream starts over; return the new stream header to send (over TLS)."""
        if self.phase is not Phase.TLS:
            raise RuntimeError("tls_started() without a <proceed/>")
        if self._parser.pending:
            raise ClientError("the server sent unencrypted data after <proceed/>")
        self._parser = self._new_parser()
        self.secure = True
        self.phase = Phase.AUTH
        return stream_header(self.domain)

    def start(self) -> bytes:
        """The first bytes to send: the stream header."""
        return stream_header(self.domain)

    def receive(self, data: bytes) -> tuple[bytes, list[WireEvent]]:
        """Take the server's bytes; return what to send, and the events seen once ready.

        Raises ``ClientError`` when negotiation fails (the server's reason in the message).
        """
        if self.phase is Phase.TLS:
            raise RuntimeError("receive() while TLS is due: call tls_started() first")
        return self._handle(self._parser.feed(data))

    def close(self) -> list[WireEvent]:
        """The server closed the connection: fail if that happened before we were ready."""
        events = self._parser.close()
        if self.phase not in (Phase.READY, Phase.CLOSED):
            raise ClientError(f"the server closed the connection during {self._doing()}")
        self.phase = Phase.CLOSED
        return events

    def _doing(self) -> str:
        if self.phase in (Phase.STARTTLS, Phase.TLS):
            return "STARTTLS"
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
            if self.phase is Phase.TLS:
                break  # the parser is paused after <proceed/>: nothing more until TLS is up
        return bytes(out), passed

    def _negotiate(self, stanza: Stanza) -> bytes:
        kind, phase = stanza.kind, self.phase
        if kind is Kind.FEATURES and phase is Phase.AUTH:
            if not self.secure and stanza.element.find(f"{{{TLS}}}starttls") is not None:
                self.phase = Phase.STARTTLS
                return f"<starttls xmlns='{TLS}'/>".encode()
            return self._authenticate(stanza.element)
        if kind is Kind.PROCEED and phase is Phase.STARTTLS:
            self.phase = Phase.TLS
            return b""
        if kind is Kind.TLS_FAILURE and phase is Phase.STARTTLS:
            raise ClientError("the server refused STARTTLS (<failure/>)")
        if kind is Kind.SASL_FAILURE:
            reason = _condition(stanza.element, SASL)
            raise ClientError(f"authentication failed for {self.user}@{self.domain}: {reason}")
        if kind is Kind.SASL_CHALLENGE and phase is Phase.AUTH:
            return self._challenge(_sasl_data(stanza.element))
        if kind is Kind.SASL_SUCCESS and phase is Phase.AUTH:
            if self._scram is not None:
                data = _sasl_data(stanza.element)
                if data:
                    self._scram.server_final(data)
                if not self._scram.verified:
                    raise ClientError(
                        "the server's SASL success does not prove that it knows the password"
                    )
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
        offered = [
            (m.text or "").strip()
            for m in features.iterfind(f"{{{SASL}}}mechanisms/{{{SASL}}}mechanism")
        ]
        wanted = [self.wanted_mechanism] if self.wanted_mechanism else list(MECHANISMS)
        mechanism = next((m for m in wanted if m in offered), None)
        if mechanism is None:
            listed = ", ".join(offered) or "none"
            does = " or ".join(wanted) if self.wanted_mechanism else ", ".join(MECHANISMS)
            raise ClientError(
                f"the server offers no SASL mechanism the replay client supports: it offers "
                f"{listed}; xmppspy does {does}"
            )
        self.mechanism = mechanism
        if mechanism == "SCRAM-SHA-1":
            self._scram = Scram(self.user, self.password, nonce=self._nonce)
            initial = self._scram.client_first()
        else:
            initial = f"\0{self.user}\0{self.password}".encode()
        return (
            f"<auth xmlns='{SASL}' mechanism='{mechanism}'>".encode()
            + base64.b64encode(initial)
            + b"</auth>"
        )

    def _challenge(self, data: bytes) -> bytes:
        scram = self._scram
        if scram is None:
            raise ClientError(f"the server sent a SASL challenge to {self.mechanism}")
        if scram.final is None:
            answer = scram.client_final(data)
        elif not scram.verified:
            scram.server_final(data)  # RFC 6120 6.3.10: the outcome data in a last challenge
            answer = b""
        else:
            raise ClientError("the server sent a SASL challenge after SCRAM was complete")
        return f"<response xmlns='{SASL}'>".encode() + base64.b64encode(answer) + b"</response>"

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


def _sasl_data(element: etree._Element) -> bytes:
    """The base64 payload of a SASL challenge or success (``=`` means empty)."""
    text = (element.text or "").strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ClientError("the server sent SASL data that is not base64") from None


class Scram:
    """SCRAM-SHA-1 (RFC 5802) for a client without channel binding (gs2 header ``n,,``).

    The password is used as UTF-8 without SASLprep (the same for ASCII passwords).
    """

    GS2_HEADER = "n,,"

    def __init__(self, user: str, password: str, *, nonce: str | None = None) -> None:
        name = user.replace("=", "=3D").replace(",", "=2C")
        self.password = password
        self.nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n={name},r={self.nonce}"
        self.final: str | None = None
        """The client-final message, once the server-first one came."""
        self.verified = False
        """Whether the server proved it knows the password (its signature was right)."""
        self._server_signature = b""

    def client_first(self) -> bytes:
        return (self.GS2_HEADER + self.first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        text = _scram_text(server_first)
        attributes = _scram_attributes(text)
        if "m" in attributes:
            raise ClientError("the server's SCRAM message needs an extension xmppspy lacks")
        nonce, salt, count = attributes.get("r", ""), attributes.get("s"), attributes.get("i")
        if not nonce.startswith(self.nonce) or nonce == self.nonce:
            raise ClientError("the server's SCRAM nonce does not extend the client's")
        if salt is None or count is None or not count.isdigit() or int(count) < 1:
            raise ClientError(f"the server's first SCRAM message is malformed: {text!r}")
        try:
            salt_bytes = base64.b64decode(salt, validate=True)
        except ValueError:
            raise ClientError("the server's SCRAM salt is not base64") from None
        channel = base64.b64encode(self.GS2_HEADER.encode()).decode()
        without_proof = f"c={channel},r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        salted = hashlib.pbkdf2_hmac("sha1", self.password.encode(), salt_bytes, int(count))
        client_key = _hmac(salted, b"Client Key")
        signature = _hmac(hashlib.sha1(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        self.final = f"{without_proof},p={base64.b64encode(proof).decode()}"
        return self.final.encode()

    def server_final(self, data: bytes) -> None:
        """Check the server's signature; raise ``ClientError`` when it is wrong or an error."""
        if self.final is None:
            raise ClientError("the server ended SCRAM before its first message")
        attributes = _scram_attributes(_scram_text(data))
        if "e" in attributes:
            raise ClientError(f"the server refused the SCRAM proof: {attributes['e']}")
        try:
            signature = base64.b64decode(attributes.get("v", ""), validate=True)
        except ValueError:
            signature = b""
        if not signature or not hmac.compare_digest(signature, self._server_signature):
            raise ClientError(
                "the server's SCRAM signature is wrong: it does not know the password "
                "(or something altered the exchange)"
            )
        self.verified = True


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha1).digest()


def _scram_text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ClientError("the server's SCRAM message is not UTF-8") from None


def _scram_attributes(text: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for part in text.split(","):
        name, equals, value = part.partition("=")
        if len(name) != 1 or not equals:
            raise ClientError(f"the server's SCRAM message is malformed: {text!r}")
        attributes.setdefault(name, value)
    return attributes


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _error(iq: etree._Element) -> str:
    error = iq.find(f"{{{CLIENT}}}error")
    return "no reason given" if error is None else _condition(error, STANZA_ERRORS)


# -- I/O ----------------------------------------------------------------------------------------


def _why(exc: BaseException) -> str:
    return reason(exc, timeout=CONNECT_TIMEOUT)


def tls_context(ca: Path | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """A client TLS context: the system trust store, plus ``ca`` (PEM); or no checks at all."""
    context = ssl.create_default_context()
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ClientError(
                f"--server-ca {ca}: cannot load it as PEM certificates: {reason}"
            ) from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _tls_why(exc: BaseException) -> str:
    """Why a TLS handshake failed, in one line (with what to do when it is the certificate)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = cause.verify_message or cause.reason or "unknown reason"
        return f"certificate verify failed: {detail}; use --server-ca FILE or --server-insecure"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    if isinstance(exc, trio.BrokenResourceError):
        return "the server closed the connection during the handshake"
    return _why(exc)


def tls_version(transport: trio.abc.Stream) -> str | None:
    """The TLS version of ``transport`` ("TLSv1.3"), or None when it is not TLS."""
    if isinstance(transport, trio.SSLStream):
        version = transport.version()
        return str(version) if version else "TLS"
    return None


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
    tls: ssl.SSLContext | None = None,
    on_tls: Callable[[str], None] = lambda version: None,
) -> None:
    """Connect, negotiate, send what ``on_ready(bound JID)`` returns, collect replies, close.

    ``on_ready`` gives the stanzas to send, each after its delay in seconds.
    Server events after binding go to ``on_received`` as they arrive. After the last stanza,
    waits up to ``wait`` seconds for replies (less once ``done()`` says nothing more is due).
    STARTTLS uses ``tls`` (the default context when None), checking the certificate against
    the JID's domain; ``on_tls`` is told the TLS version once the handshake is done.
    """
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            sock = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise ClientError(f"cannot connect to {host}:{port}: {_why(exc)}") from None
    async with sock:
        transport: trio.abc.Stream = sock
        try:
            transport = await _negotiate(sock, stream, tls, on_tls)
            outgoing = on_ready(stream.jid or "")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read, transport, stream, on_received)
                for index, (delay, raw) in enumerate(outgoing):
                    await trio.sleep(delay)
                    if stream.phase is Phase.CLOSED:
                        stream.warnings.append(
                            f"the server closed the stream: {len(outgoing) - index} stanzas "
                            "were not sent"
                        )
                        break
                    on_sent(index)  # shown first: the reply may be read before send_all returns
                    await transport.send_all(raw)
                with trio.move_on_after(wait):
                    while not done() and stream.phase is not Phase.CLOSED:
                        await trio.sleep(0.02)
                if stream.phase is not Phase.CLOSED:
                    await transport.send_all(b"</stream:stream>")
                with trio.move_on_after(CLOSE_TIMEOUT):
                    while stream.phase is not Phase.CLOSED:
                        await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ClientError(f"the connection to {host}:{port} broke: {_why(exc)}") from None
        finally:
            if transport is not sock:
                await trio.aclose_forcefully(transport)


async def _negotiate(
    sock: trio.SocketStream,
    stream: ClientStream,
    tls: ssl.SSLContext | None,
    on_tls: Callable[[str], None],
) -> trio.abc.Stream:
    """Log in; return the transport to go on with (``sock``, or TLS over it)."""
    transport: trio.abc.Stream = sock
    await transport.send_all(stream.start())
    with trio.move_on_after(NEGOTIATION_TIMEOUT) as scope:
        while not stream.ready:
            data = bytes(await transport.receive_some(READ_SIZE))
            if not data:
                stream.close()  # raises: not ready
            reply, _ = stream.receive(data)
            if reply:
                await transport.send_all(reply)
            if stream.wants_tls:
                context = tls if tls is not None else tls_context()
                secure = trio.SSLStream(
                    sock, context, server_hostname=stream.domain, https_compatible=True
                )
                try:
                    await secure.do_handshake()
                except (trio.BrokenResourceError, OSError) as exc:
                    raise ClientError(f"TLS with {stream.domain} failed: {_tls_why(exc)}") from None
                transport = secure
                on_tls(tls_version(secure) or "TLS")
                await transport.send_all(stream.tls_started())
    if scope.cancelled_caught:
        raise ClientError(f"the server did not finish negotiating within {NEGOTIATION_TIMEOUT:g} s")
    return transport


async def _read(
    transport: trio.abc.Stream,
    stream: ClientStream,
    on_received: Callable[[WireEvent], None],
) -> None:
    while True:
        data = bytes(await transport.receive_some(READ_SIZE))
        events = stream.receive(data)[1] if data else stream.close()
        for event in events:
            on_received(event)
        if not data or stream.phase is Phase.CLOSED:
            return
