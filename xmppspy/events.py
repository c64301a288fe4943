"""Events: what the sans-IO core reports about one XML stream, and the records built from them.

Every event that came off the wire carries ``raw``, the exact bytes it covers, so that joining
the ``raw`` of one direction's events gives back exactly the bytes that crossed the wire.
Notices (``TlsStarted``, ``Notice``, ``Bound``, ``Connected``, ``Disconnected``) carry no bytes:
they are what the proxy concluded, not what it saw.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property

from lxml import etree

from xmppspy.xml import parse_stanza


class Direction(enum.Enum):
    """Which way bytes travelled: client to server, or server to client."""

    C2S = "c2s"
    S2C = "s2c"

    @property
    def other(self) -> Direction:
        return Direction.S2C if self is Direction.C2S else Direction.C2S


class Kind(enum.Enum):
    """What a top-level element of the stream is. The part before ``:`` names its group."""

    MESSAGE = "message"
    PRESENCE = "presence"
    IQ = "iq"
    FEATURES = "stream:features"
    STREAM_ERROR = "stream:error"
    STARTTLS = "tls:starttls"
    PROCEED = "tls:proceed"
    TLS_FAILURE = "tls:failure"
    SASL_AUTH = "sasl:auth"
    SASL_CHALLENGE = "sasl:challenge"
    SASL_RESPONSE = "sasl:response"
    SASL_SUCCESS = "sasl:success"
    SASL_FAILURE = "sasl:failure"
    SASL_ABORT = "sasl:abort"
    SM_ENABLE = "sm:enable"
    SM_ENABLED = "sm:enabled"
    SM_REQUEST = "sm:r"
    SM_ANSWER = "sm:a"
    SM_RESUME = "sm:resume"
    SM_RESUMED = "sm:resumed"
    SM_FAILED = "sm:failed"
    OTHER = "other"

    @property
    def group(self) -> str:
        return self.value.split(":", 1)[0]


class OpaqueReason(enum.Enum):
    """Why bytes were relayed without being parsed."""

    TLS = "tls"
    AFTER_ERROR = "after-error"
    BEFORE_TLS = "before-tls"
    """Read after STARTTLS was agreed and before TLS began: part of neither stream."""


@dataclass(frozen=True)
class StreamOpened:
    """A ``<stream:stream>`` header (with any XML declaration and whitespace before it)."""

    dir: Direction
    raw: bytes
    to: str | None
    from_: str | None
    id: str | None
    version: str | None
    lang: str | None
    xmlns: str | None
    restart: bool
    """True for every header after the first of this direction (after STARTTLS or SASL)."""
    context: bytes = field(repr=False, compare=False, default=b"")
    """The header's namespace declarations as an open tag; stanzas are parsed inside it."""


@dataclass(frozen=True)
class Stanza:
    """A complete top-level element of the stream, with its exact wire bytes."""

    dir: Direction
    raw: bytes
    kind: Kind
    name: str
    """Clark notation, ``{namespace}local``."""
    type: str | None
    from_: str | None
    to: str | None
    id: str | None
    child: str | None
    """Clark name of the first child element, if any: the payload that says what an IQ is."""
    context: bytes = field(repr=False, compare=False, default=b"")
    redacted: bool = False
    """True when ``raw`` had secrets replaced and so is not what crossed the wire."""

    @cached_property
    def element(self) -> etree._Element:
        """The stanza parsed with lxml, on first use only (the relay never needs it)."""
        return parse_stanza(self.context, self.raw)


@dataclass(frozen=True)
class Keepalive:
    """Whitespace between top-level elements."""

    dir: Direction
    raw: bytes


@dataclass(frozen=True)
class StreamClosed:
    """``</stream:stream>``."""

    dir: Direction
    raw: bytes


@dataclass(frozen=True)
class ParseError:
    """Bytes that are not a well-formed, restricted XMPP stream. Later bytes come as ``Opaque``."""

    dir: Direction
    raw: bytes
    offset: int
    """Offset in this direction's byte stream of the first byte of ``raw``."""
    at: int
    """Offset in this direction's byte stream of the byte where the problem was found."""
    reason: str
    redacted: bool = False
    """True when ``raw`` had bytes that may hold secrets replaced."""


@dataclass(frozen=True)
class Opaque:
    """Bytes relayed but not parsed (encrypted, or after a parse error)."""

    dir: Direction
    raw: bytes
    reason: OpaqueReason
    redacted: bool = False
    """True when ``raw`` had bytes that may hold secrets replaced."""


@dataclass(frozen=True)
class TlsStarted:
    """STARTTLS succeeded. Intercepted, the proxy sees inside (with the TLS facts below);
    passed through, it relays the encrypted bytes without seeing inside."""

    dir: Direction
    intercepted: bool = False
    version: str | None = None
    cipher: str | None = None
    server_subject: str | None = None
    server_issuer: str | None = None
    server_fingerprint: str | None = None
    """SHA-256 of the server's certificate, hex with colons."""
    verified: bool | None = None
    """Whether the server's certificate verified (None: passed through, unknown)."""
    stripped: bool = False
    """xmppspy did TLS with the server only; the client's side stays plaintext (--tls strip)."""


@dataclass(frozen=True)
class Rewritten:
    """xmppspy changed an element on its way (the wire bytes are in the element's own event)."""

    dir: Direction
    sent: bytes
    """What the other peer got instead."""
    reason: str


@dataclass(frozen=True)
class Notice:
    """Something about the connection the person should know that no other event says."""

    text: str


@dataclass(frozen=True)
class Bound:
    """The server bound a resource: the connection's full JID."""

    dir: Direction
    jid: str


@dataclass(frozen=True)
class Connected:
    """A client connected to the proxy and the proxy reached the upstream server."""

    client: str
    upstream: str


@dataclass(frozen=True)
class Disconnected:
    """A proxied connection ended, with what crossed it."""

    reason: str
    c2s_bytes: int
    s2c_bytes: int
    c2s_stanzas: int
    s2c_stanzas: int
    jid: str | None


WireEvent = StreamOpened | Stanza | Keepalive | StreamClosed | ParseError | Opaque
"""Events that cover bytes of one direction of the stream."""

Event = WireEvent | TlsStarted | Rewritten | Notice | Bound | Connected | Disconnected


@dataclass(frozen=True)
class Record:
    """One event as observed by the proxy: when, on which connection."""

    t: float
    """Seconds since the Unix epoch (UTC)."""
    conn: str
    event: Event
