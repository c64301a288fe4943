"""One direction of an XMPP stream: bytes in, events out, nothing else (sans-IO).

expat frames the stream: its ``CurrentByteIndex`` tells where each top-level element starts and
ends, so every event carries the exact bytes it covers, whatever the chunking. Only restricted
XML (RFC 6120 section 11) is accepted; a DOCTYPE, comment, processing instruction, undeclared
entity, non-UTF-8 encoding or over-long element ends parsing for this direction with a
``ParseError`` and every later byte is reported as ``Opaque``: the bytes are never held back.

After a ``<proceed/>`` or SASL ``<success/>`` the stream restarts; which elements pause the parser
is the caller's choice (``pause_after``), and ``restart()`` / ``go_opaque()`` resume it with the
bytes that arrived after the pausing element, like h11's ``trailing_data``.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Collection
from xml.parsers import expat

from xmppspy.events import (
    Direction,
    Keepalive,
    Kind,
    Opaque,
    OpaqueReason,
    ParseError,
    Stanza,
    StreamClosed,
    StreamOpened,
    WireEvent,
)
from xmppspy.namespaces import STREAMS, classify
from xmppspy.xml import context_tag

DEFAULT_MAX_STANZA_SIZE = 1024 * 1024
"""Bytes one top-level element (or stream header) may take before it is reported, not parsed."""

_XML_LANG = "http://www.w3.org/XML/1998/namespace lang"
_STREAM = STREAMS + " stream"
_WHITESPACE = b" \t\r\n"
_HOLD = 64 * 1024
"""Bytes held back from expat while no ``>`` arrives (see ``StreamParser._parse``)."""
_SPENT = expat.ParserCreate()
"""Stands in for the expat parser of a direction that failed; never fed."""
# A start tag as bytes, attribute values quoted (they may hold ">"); group 1 is "/" if self-closing.
START_TAG = re.compile(rb"""<[^\s/>]+(?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*\s*(/?)>""")


class State(enum.Enum):
    HEADER = "header"
    """Waiting for a ``<stream:stream>`` header."""
    STREAM = "stream"
    PAUSED = "paused"
    """Stopped after an element in ``pause_after``; later bytes are held until resumed."""
    CLOSED = "closed"
    OPAQUE = "opaque"


class _Stop(Exception):
    """Raised inside an expat handler to stop at an element boundary."""


class _Violation(Exception):
    """Raised inside an expat handler for XML that XMPP forbids, found at byte ``at``."""

    def __init__(self, reason: str, at: int | None = None) -> None:
        super().__init__(reason)
        self.at = at


def _sniff(direction: Direction, first_bytes: bytes) -> str | None:
    """Name the protocol a peer speaks instead of XMPP, from its first bytes."""
    if direction is Direction.S2C:
        if first_bytes[:1] in (b"\x15", b"\x16"):  # a TLS alert or handshake record
            return (
                "this is TLS, not XML: the server expects direct TLS on this port (give it as "
                "--upstream-tls with --listen-tls, or give --upstream its STARTTLS port, "
                "usually 5222)"
            )
        if first_bytes.startswith(b"HTTP/"):
            return "this is an HTTP response, not an XMPP stream: the upstream is a web server"
        return None
    if first_bytes[:1] == b"\x16":
        return (
            "this is a TLS handshake, not XML: the peer expects direct TLS on this port "
            "(xmppspy proxy --listen-tls serves such clients)"
        )
    if re.match(rb"(GET|POST|PUT|HEAD|OPTIONS|CONNECT|DELETE|PATCH|TRACE) ", first_bytes):
        return "this is an HTTP request, not an XMPP stream"
    return None


_INVALID_TOKEN = expat.errors.codes[expat.errors.XML_ERROR_INVALID_TOKEN]


def _invalid_token(raw: bytes | bytearray, index: int) -> str:
    """expat's "not well-formed (invalid token)" says nothing of the usual causes: name them."""
    bad = raw[index : index + 4]
    if bad[:1] == b"\x00":
        return "a NUL byte (XML does not allow it)"
    if bad[:1] >= b"\x80":
        try:
            bad.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start == 0 and exc.reason != "unexpected end of data":
                return f"invalid UTF-8 (byte 0x{bad[0]:02x})"
    return "not well-formed (invalid token)"


def _clark(expat_name: str) -> str:
    namespace, sep, local = expat_name.rpartition(" ")
    return f"{{{namespace}}}{local}" if sep else local


@functools.lru_cache(maxsize=4096)  # bounded: a hostile peer may invent names without end
def _names(expat_name: str) -> tuple[Kind, str]:
    """The kind and Clark name of an element, from expat's ``"namespace local"`` name."""
    namespace, _, local = expat_name.rpartition(" ")
    return classify(namespace, local), _clark(expat_name)


class StreamParser:
    """Parses one direction of one XMPP stream. Feed bytes in any chunking; get events."""

    def __init__(
        self,
        direction: Direction,
        *,
        max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE,
        pause_after: Collection[Kind] = (),
    ) -> None:
        self.direction = direction
        self.max_stanza_size = max_stanza_size
        # A tuple: membership by identity, where a set would call Enum's Python-level __hash__.
        self._pause_after = tuple(pause_after)
        self.state = State.HEADER
        self._opaque_reason = OpaqueReason.AFTER_ERROR
        self._fed = 0
        """Bytes fed so far: the absolute offset of the next byte."""
        self._buf = bytearray()
        self._buf_start = 0
        self._emitted = 0
        self._headers = 0
        self._events: list[WireEvent] = []
        self._new_expat()

    def _new_expat(self) -> None:
        parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.StartNamespaceDeclHandler = self._namespace
        parser.XmlDeclHandler = self._xml_declaration
        parser.StartDoctypeDeclHandler = self._doctype
        parser.CommentHandler = self._comment
        parser.ProcessingInstructionHandler = self._processing_instruction
        parser.EntityDeclHandler = self._entity_declaration
        self._expat = parser
        self._expat_base = self._parsed = self._emitted
        self._depth = 0
        self._declarations: dict[str | None, str] = {}
        self._context = b""
        self._stanza_start = 0
        self._stanza_name = ""
        self._stanza_attrs: dict[str, str] = {}
        self._first_child: str | None = None

    # -- public API ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[WireEvent]:
        """Take the next bytes of the stream; return the events they complete."""
        if not data:
            return []
        self._fed += len(data)
        if self.state is State.OPAQUE:
            self._emitted = self._fed
            return [Opaque(self.direction, bytes(data), self._opaque_reason)]
        self._buf += data
        if self.state is State.PAUSED:
            if self.pending <= self.max_stanza_size:
                return []
            self._events = events = list[WireEvent]()
            self._fail(f"more than {self.max_stanza_size} bytes while paused", self._emitted)
            return events
        return self._parse(data)

    def restart(self, *, tls: bool = False) -> list[WireEvent]:
        """Expect a new stream header (after STARTTLS or SASL success), parsing held bytes.

        After STARTTLS (``tls``) the held bytes came before TLS and cannot belong to the new
        stream: they are reported as ``Opaque`` (``BEFORE_TLS``), not parsed. A direction that
        failed stays opaque: its bytes are shown raw from the error on.
        """
        if self.state is State.OPAQUE:
            return []
        trailing = self._take_unemitted()
        self.state = State.HEADER
        if trailing and tls:
            self._emitted = self._buf_start = self._fed
            self._new_expat()
            return [Opaque(self.direction, trailing, OpaqueReason.BEFORE_TLS)]
        self._new_expat()
        if not trailing:
            return []
        self._buf += trailing
        return self._parse(trailing)

    def go_opaque(self, reason: OpaqueReason) -> list[WireEvent]:
        """Stop parsing: from here on every byte is reported as ``Opaque`` (e.g. TLS)."""
        trailing = self._take_unemitted()
        self.state = State.OPAQUE
        self._opaque_reason = reason
        self._emitted = self._parsed = self._fed
        self._expat = _SPENT
        return [Opaque(self.direction, trailing, reason)] if trailing else []

    def close(self) -> list[WireEvent]:
        """The stream ended (EOF or reset): report bytes that never became a whole event.

        Nothing observed may go missing from a capture, so an element cut off by a closing
        peer comes out as a ``ParseError`` with its bytes. Calling it again returns nothing.
        """
        events = []
        if self.state in (State.HEADER, State.STREAM) and self._fed > self._parsed:
            events = self._parse(b"", flush=True)  # held bytes may hold the real error
        self._events = events
        if self.state in (State.HEADER, State.STREAM, State.PAUSED) and self.pending:
            trailing = bytes(self._buf[self._emitted - self._buf_start :])
            if not trailing.strip(_WHITESPACE):
                events.append(Keepalive(self.direction, trailing))
                self._emitted = self._fed
            else:
                what = "a stream header" if self._depth == 0 else "an element"
                self._fail(f"the connection ended in the middle of {what}", self._fed)
        self._buf.clear()
        self._buf_start = self._emitted = self._parsed = self._fed
        self.state = State.CLOSED
        self._events = []
        return events

    @property
    def fed(self) -> int:
        """Bytes fed so far, over the whole stream."""
        return self._fed

    @property
    def pending(self) -> int:
        """Bytes fed but not yet part of any event (an incomplete element)."""
        return self._fed - self._emitted

    # -- parsing ------------------------------------------------------------------------------

    def _take_unemitted(self) -> bytes:
        trailing = bytes(self._buf[self._emitted - self._buf_start :])
        self._buf.clear()
        self._buf_start = self._emitted
        return trailing

    def _parse(self, data: bytes, *, flush: bool = False) -> list[WireEvent]:
        """Parse what was fed; ``data`` is the newest part of it.

        expat 2.5 re-scans an unfinished token from its start on every call, so a long tag fed
        in small reads costs quadratic time, and the relay is one thread for all connections.
        No element event can complete without a ``>``: reads without one are held (up to
        ``_HOLD`` bytes) and given to expat together with the read that brings one.
        """
        self._events = events = list[WireEvent]()
        if self.state is State.CLOSED:
            self._after_close()
            return events
        held = self._fed - self._parsed
        if not flush and b">" not in data and held < _HOLD and not self._not_a_header():
            self._end_of_feed()
            return self._done(events)
        chunk = bytes(self._buf[self._parsed - self._buf_start :])
        self._parsed = self._fed
        try:
            self._expat.Parse(chunk, False)
        except _Stop:
            self._stopped()
        except _Violation as exc:
            at = exc.at if exc.at is not None else self._expat_base + self._expat.CurrentByteIndex
            self._fail(str(exc), at)
        except expat.ExpatError as exc:
            at = self._expat_base + self._expat.ErrorByteIndex
            reason = expat.errors.messages[exc.code] if exc.code else str(exc)
            if exc.code == _INVALID_TOKEN:
                reason = _invalid_token(self._buf, at - self._buf_start)
            self._fail(reason, at)
        else:
            self._end_of_feed()
        return self._done(events)

    def _not_a_header(self) -> bool:
        """Bytes before the header that cannot start one (TLS, HTTP): report them at once."""
        if self._depth != 0:
            return False
        start = self._buf.lstrip(b" \t\r\n\xef\xbb\xbf")[:1]
        return bool(start) and start != b"<"

    def _end_of_feed(self) -> None:
        """Whitespace and stray text between stanzas, and the size limit, checked on bytes."""
        try:
            if self._depth == 1:
                self._between(self._fed, end_of_feed=True)
            self._check_size(self._emitted, self._fed)
        except _Violation as exc:
            self._fail(str(exc), exc.at if exc.at is not None else self._emitted)

    def _done(self, events: list[WireEvent]) -> list[WireEvent]:
        """Drop the bytes both the events and expat are done with; keep no events alive."""
        keep_from = min(self._emitted, self._parsed)
        if keep_from > self._buf_start:
            del self._buf[: keep_from - self._buf_start]
            self._buf_start = keep_from
        self._events = []
        return events

    def _check_size(self, start: int, end: int) -> None:
        """Refuse an element (or header) over the limit, however the bytes were read."""
        if end - start > self.max_stanza_size:
            what = "stream header" if self._depth == 0 else "element"
            raise _Violation(
                f"{what} larger than {self.max_stanza_size} bytes: relayed, not parsed",
                start + self.max_stanza_size,
            )

    def _slice(self, start: int, end: int) -> bytes:
        return bytes(self._buf[start - self._buf_start : end - self._buf_start])

    def _tag_end(self, start: int) -> tuple[int, bool]:
        """End offset of the start tag at ``start``, and whether it is self-closing."""
        match = START_TAG.match(self._buf, start - self._buf_start)
        assert match is not None, "expat reported a start tag the framer cannot see"
        return match.end() + self._buf_start, bool(match.group(1))

    def _end_tag_end(self, start: int) -> int:
        return self._buf.index(b">", start - self._buf_start) + 1 + self._buf_start

    def _between(self, until: int, *, end_of_feed: bool = False) -> None:
        """Report bytes between top-level elements: whitespace keepalives, or stray text."""
        start = self._emitted
        if until <= start:
            return
        gap = self._slice(start, until)
        if end_of_feed:
            lt = gap.find(b"<")
            if lt != -1:
                gap = gap[:lt]
            if not gap:
                return
        text = gap.lstrip(_WHITESPACE)
        spaces = len(gap) - len(text)
        if spaces:
            self._events.append(Keepalive(self.direction, gap[:spaces]))
            self._emitted = start + spaces
        if text:
            raise _Violation("text between stanzas (only whitespace is allowed)", start + spaces)

    def _fail(self, reason: str, at: int) -> None:
        raw = self._take_unemitted()
        offset = self._emitted
        if offset == 0:
            reason = _sniff(self.direction, raw) or reason
        self.state = State.OPAQUE
        self._opaque_reason = OpaqueReason.AFTER_ERROR
        self._emitted = self._parsed = self._fed
        self._expat = _SPENT  # let go of the failed parser's buffers (megabytes, after a big one)
        self._events.append(ParseError(self.direction, raw, offset, max(at, offset), reason))

    def _stopped(self) -> None:
        """A handler stopped expat at an element boundary: pause, or the stream closed."""
        if self.state is State.CLOSED:
            self._after_close()

    def _after_close(self) -> None:
        trailing = self._buf[self._emitted - self._buf_start :]
        if not trailing.strip(_WHITESPACE):
            self._between(self._fed)
        else:
            self._fail("data after </stream:stream>", self._emitted)

    # -- expat handlers -----------------------------------------------------------------------

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        # Called for every element: the common cases (a stanza's children) come first.
        depth = self._depth
        self._depth = depth + 1
        if depth == 2:
            if self._first_child is None:
                self._first_child = name
        elif depth == 1:
            start = self._expat_base + self._expat.CurrentByteIndex
            if start > self._emitted:
                self._between(start)
            self._stanza_start = start
            self._stanza_name = name
            self._stanza_attrs = attrs
            self._first_child = None
        elif depth == 0:
            self._header(name, attrs)

    def _header(self, name: str, attrs: dict[str, str]) -> None:
        start = self._expat_base + self._expat.CurrentByteIndex
        if name != _STREAM:
            raise _Violation(f"expected a <stream:stream> header, got <{_clark(name)}>", start)
        end, self_closing = self._tag_end(start)
        self._check_size(self._emitted, end)
        self._context = context_tag(self._declarations)
        self._events.append(
            StreamOpened(
                self.direction,
                self._slice(self._emitted, end),
                to=attrs.get("to"),
                from_=attrs.get("from"),
                id=attrs.get("id"),
                version=attrs.get("version"),
                lang=attrs.get(_XML_LANG),
                xmlns=self._declarations.get(None),
                restart=self._headers > 0,
                context=self._context,
            )
        )
        self._headers += 1
        self._emitted = end
        self.state = State.STREAM
        if self_closing:
            self._depth = 0
            self._events.append(StreamClosed(self.direction, b""))
            self.state = State.CLOSED
            raise _Stop

    def _end(self, name: str) -> None:
        depth = self._depth - 1
        self._depth = depth
        if depth == 1:
            here = self._expat_base + self._expat.CurrentByteIndex
            # expat reports the end of <x/> just past "/>", of <x></x> at "</": only an element
            # without children can be the first kind, and only its start tag can tell.
            if self._first_child is None and self._tag_end(self._stanza_start)[1]:
                self._stanza(here)
            else:
                self._stanza(self._end_tag_end(here))
        elif depth == 0:
            here = self._expat_base + self._expat.CurrentByteIndex
            self._between(here)
            end = self._end_tag_end(here)
            self._events.append(StreamClosed(self.direction, self._slice(self._emitted, end)))
            self._emitted = end
            self.state = State.CLOSED
            raise _Stop

    def _stanza(self, end: int) -> None:
        start = self._stanza_start
        if end - start > self.max_stanza_size:
            self._check_size(start, end)
        kind, name = _names(self._stanza_name)
        attrs = self._stanza_attrs
        child = self._first_child
        offset = self._buf_start
        self._events.append(
            Stanza(
                self.direction,
                bytes(self._buf[start - offset : end - offset]),
                kind,
                name,
                attrs.get("type"),
                attrs.get("from"),
                attrs.get("to"),
                attrs.get("id"),
                _names(child)[1] if child is not None else None,
                self._context,
            )
        )
        self._emitted = end
        if kind in self._pause_after:
            self.state = State.PAUSED
            raise _Stop

    def _namespace(self, prefix: str | None, uri: str) -> None:
        if self._depth == 0:
            self._declarations[prefix] = uri

    def _xml_declaration(self, version: str, encoding: str | None, standalone: int) -> None:
        if version != "1.0":
            raise _Violation(f"XML version {version!r}: XMPP streams are XML 1.0")
        if encoding is not None and encoding.upper().replace("_", "-") not in {"UTF-8", "UTF8"}:
            raise _Violation(f"encoding {encoding!r}: XMPP streams are UTF-8")

    def _opening(self, token: bytes) -> int:
        """Where the construct that expat just reported (at its end) began."""
        here = self._expat_base + self._expat.CurrentByteIndex - self._buf_start
        found = self._buf.rfind(token, 0, max(here, 0) + len(token))
        return self._buf_start + found if found != -1 else here + self._buf_start

    def _doctype(self, *_: object) -> None:
        at = self._opening(b"<!DOCTYPE")
        raise _Violation("DOCTYPE is not allowed in XMPP (RFC 6120 section 11.1)", at)

    def _comment(self, _: str) -> None:
        at = self._opening(b"<!--")
        raise _Violation("comments are not allowed in XMPP (RFC 6120 section 11.1)", at)

    def _processing_instruction(self, target: str, _: str) -> None:
        raise _Violation(
            f"processing instruction <?{target}?> is not allowed in XMPP (RFC 6120 section 11.1)",
            self._opening(b"<?"),
        )

    def _entity_declaration(self, *_: object) -> None:
        at = self._opening(b"<!ENTITY")
        raise _Violation("entity declarations are not allowed in XMPP (RFC 6120 section 11.1)", at)
