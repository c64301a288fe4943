"""A corpus of hostile input: what a broken or malicious peer may send instead of XMPP.

Each ``Case`` is everything one peer sends on a connection before it shuts down its write side:
most start with a valid stream header and then misbehave, some never send one. The other peer
sends nothing. ``reason`` is text the resulting ``ParseError``'s reason must contain (it names
the problem), ``events`` the kinds of the events before the error (or of all events when no
error is expected), and ``at`` the offset of the offending byte when it is well defined.

Two cases point at a local file (an external entity, an external DTD): build them with
``cases(secret_path)``; the file's content must never appear anywhere.

Used by ``tests/test_hostile.py`` (through the relay, in memory and through the real process).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from xmppspy.events import Direction
from xmppspy.parser import DEFAULT_MAX_STANZA_SIZE

C2S = Direction.C2S
S2C = Direction.S2C

SECRET = "TOP-SECRET-8d1f27c4e9"
"""The content of the local file the external-entity cases point at."""

CLIENT_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>"
)
CLIENT_HEADER_NO_DECL = CLIENT_HEADER[len(b"<?xml version='1.0'?>") :]
SERVER_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='s1' version='1.0'>"
)
PRESENCE = b"<presence/>"
MESSAGE = b"<message to='juliet@example.test' type='chat' id='m1'><body>hi</body></message>"
CLOSE = b"</stream:stream>"
FEATURES = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
)

SMALL_LIMIT = 1024
"""A small ``--max-stanza-size`` (the command line's minimum)."""
MIB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    what: str
    """One line, for people (docs/reliability.md)."""
    reason: str | None
    """Text the ParseError's reason contains; None when no parse error is expected."""
    events: tuple[str, ...]
    """Kinds of the events of this direction before the error (all of them if no error).

    Stanzas by kind (``presence``, ``sasl:success``), otherwise ``open``, ``close``,
    ``keepalive``, ``tls``; a run of keepalives counts as one.
    """
    direction: Direction = C2S
    max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE
    at: int | None = None
    """Offset of the byte where the problem is, when it is well defined."""

    @property
    def big(self) -> bool:
        """Too big to send one byte at a time (more than 4 KiB)."""
        return len(self.data) > 4096


def _at(data: bytes, needle: bytes, start: int = 0) -> int:
    return data.index(needle, start)


def _tls_client_hello(server_name: bytes) -> bytes:
    """A plausible TLS 1.2/1.3 ClientHello record (what a client expecting direct TLS sends)."""
    sni = struct.pack("!HBH", len(server_name) + 3, 0, len(server_name)) + server_name
    alpn_name = b"xmpp-client"
    alpn = struct.pack("!HB", len(alpn_name) + 1, len(alpn_name)) + alpn_name
    extensions = (
        struct.pack("!HH", 0, len(sni))
        + sni
        + struct.pack("!HH", 16, len(alpn))
        + alpn
        + struct.pack("!HHB", 43, 5, 4)
        + b"\x03\x04\x03\x03"  # supported_versions: TLS 1.3, 1.2
    )
    ciphers = b"\x13\x01\x13\x02\xc0\x2b\xc0\x2f\x00\x9e"
    body = (
        b"\x03\x03"
        + bytes(range(32))  # client random
        + b"\x20"
        + bytes(range(32, 64))  # session id
        + struct.pack("!H", len(ciphers))
        + ciphers
        + b"\x01\x00"  # compression: null
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


TLS_CLIENT_HELLO = _tls_client_hello(b"example.test")
TLS_SERVER_BYTES = b"\x16\x03\x03\x00\x31\x02\x00\x00\x2d\x03\x03" + bytes(range(45))

BILLION_LAUGHS = (
    b"<?xml version='1.0'?>\n<!DOCTYPE stream:stream [\n <!ENTITY lol 'lol'>\n"
    + b"".join(
        b" <!ENTITY lol%d '%s'>\n" % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n"
    + CLIENT_HEADER_NO_DECL
    + b"<message to='juliet@example.test'><body>&lol9;</body></message>"
)

TEN_MB_STANZA = (
    CLIENT_HEADER
    + b"<message to='juliet@example.test' id='big'><body>"
    + b"0123456789abcdef" * (10 * MIB // 16)
    + b"</body></message>"
    + PRESENCE
)
DEPTH = 10_000
DEEP_STANZA = (
    CLIENT_HEADER + b"<message>" + b"<x>" * DEPTH + b"deep" + b"</x>" * DEPTH + b"</message>"
)
OVER_SMALL_LIMIT = (
    CLIENT_HEADER
    + PRESENCE
    + b"<message to='juliet@example.test'><body>"
    + b"x" * (2 * SMALL_LIMIT)
    + b"</body></message>"
    + PRESENCE
)
ENDLESS_HEADER = CLIENT_HEADER_NO_DECL[:-1] + b" x-pad='" + b"a" * (2 * MIB)
SERVER_HUGE_ROSTER = (
    SERVER_HEADER
    + b"<iq type='result' id='roster1'><query xmlns='jabber:iq:roster'>"
    + b"".join(
        b"<item jid='contact%07d@example.test' subscription='both'/>" % i for i in range(60_000)
    )
    + b"</query></iq>"
)


def _case_list(secret: Path) -> list[Case]:
    uri = secret.as_uri().encode()
    external_entity = (
        b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY xxe SYSTEM '"
        + uri
        + b"'>]>"
        + CLIENT_HEADER_NO_DECL
        + b"<message to='juliet@example.test'><body>&xxe;</body></message>"
    )
    external_dtd = (
        b"<?xml version='1.0'?><!DOCTYPE stream:stream SYSTEM '"
        + uri
        + b"'>"
        + CLIENT_HEADER_NO_DECL
        + MESSAGE
    )
    entity_without_dtd = CLIENT_HEADER + b"<message><body>&xxe;</body></message>"
    invalid_utf8 = CLIENT_HEADER + PRESENCE + b"<message><body>caf\xe9 \xff\xfe</body></message>"
    nul = CLIENT_HEADER + b"<message><body>a\x00b</body></message>"
    comment = CLIENT_HEADER + PRESENCE + b"<!-- a comment -->" + PRESENCE
    pi = CLIENT_HEADER + PRESENCE + b"<?php system('id'); ?>" + PRESENCE
    latin1 = (
        b"<?xml version='1.0' encoding='ISO-8859-1'?>"
        + CLIENT_HEADER_NO_DECL
        + b"<message><body>caf\xe9</body></message>"
    )
    xml11 = b"<?xml version='1.1'?>" + CLIENT_HEADER_NO_DECL + PRESENCE
    nbsp = CLIENT_HEADER + b"<message><body>Romeo&nbsp;Montague</body></message>"
    unbound = CLIENT_HEADER + PRESENCE + b"<foo:message><body>x</body></foo:message>"
    duplicated = CLIENT_HEADER + b"<message to='a@example.test' to='b@example.test'/>"
    after_close = CLIENT_HEADER + PRESENCE + CLOSE + b"<presence type='unavailable'/>"
    garbage = b"hello?\r\n" + CLIENT_HEADER
    http = (
        b"GET / HTTP/1.1\r\nHost: localhost:5222\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    )
    text = CLIENT_HEADER + PRESENCE + b"hello there" + PRESENCE
    cdata = CLIENT_HEADER + PRESENCE + b"<![CDATA[hello]]>" + PRESENCE
    mismatched = CLIENT_HEADER + b"<message><body>x</bdy></message>"
    declaration_again = CLIENT_HEADER + PRESENCE + CLIENT_HEADER
    cut = CLIENT_HEADER + PRESENCE + b"<message to='juliet@example.test'><body>I am cut o"
    header_cut = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' to='exam"
    self_closing = CLIENT_HEADER_NO_DECL[:-1] + b"/>"
    server_doctype = b"<!DOCTYPE html>" + SERVER_HEADER[len(b"<?xml version='1.0'?>") :]
    server_cut = SERVER_HEADER + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:"
    server_http = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    server_html = b"<html><body><h1>400 Bad Request</h1></body></html>"
    success = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    server_success_garbage = SERVER_HEADER + FEATURES + success + b"<<<not a header>>>"
    proceed = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    server_tls = (
        SERVER_HEADER
        + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
        + proceed
        + TLS_SERVER_BYTES
    )
    return [
        Case(
            "invalid-utf8",
            invalid_utf8,
            "invalid UTF-8 (a Latin-1 é, then 0xFF 0xFE) in a message body",
            "invalid UTF-8 (byte 0xe9)",
            ("open", "presence"),
            at=_at(invalid_utf8, b"\xe9"),
        ),
        Case(
            "nul-byte",
            nul,
            "a NUL byte in a message body",
            "a NUL byte (XML does not allow it)",
            ("open",),
            at=_at(nul, b"\x00"),
        ),
        Case(
            "billion-laughs",
            BILLION_LAUGHS,
            "a DOCTYPE with nested internal entities (billion laughs) before the header",
            "DOCTYPE",
            (),
            at=_at(BILLION_LAUGHS, b"<!DOCTYPE"),
        ),
        Case(
            "external-entity",
            external_entity,
            "a DOCTYPE declaring an external entity on a local file, used in a body",
            "DOCTYPE",
            (),
            at=_at(external_entity, b"<!DOCTYPE"),
        ),
        Case(
            "external-dtd",
            external_dtd,
            "a DOCTYPE whose external DTD is a local file",
            "DOCTYPE",
            (),
            at=_at(external_dtd, b"<!DOCTYPE"),
        ),
        Case(
            "entity-without-dtd",
            entity_without_dtd,
            "a reference to an entity nobody declared (&xxe;)",
            "undefined entity",
            ("open",),
            at=_at(entity_without_dtd, b"&xxe;"),
        ),
        Case(
            "comment",
            comment,
            "a comment between stanzas",
            "comments are not allowed",
            ("open", "presence"),
            at=_at(comment, b"<!--"),
        ),
        Case(
            "processing-instruction",
            pi,
            "a processing instruction between stanzas",
            "processing instruction <?php?> is not allowed",
            ("open", "presence"),
            at=_at(pi, b"<?php"),
        ),
        Case(
            "encoding-latin1",
            latin1,
            "encoding='ISO-8859-1' in the XML declaration, then Latin-1 bytes",
            "encoding 'ISO-8859-1'",
            (),
            at=0,
        ),
        Case(
            "xml-1.1",
            xml11,
            "version='1.1' in the XML declaration",
            "XML version '1.1'",
            (),
            at=0,
        ),
        Case(
            "undeclared-entity",
            nbsp,
            "an HTML entity, &nbsp;, in a body",
            "undefined entity",
            ("open",),
            at=_at(nbsp, b"&nbsp;"),
        ),
        Case(
            "unbound-prefix",
            unbound,
            "an element with a namespace prefix never declared (<foo:message>)",
            "unbound prefix",
            ("open", "presence"),
            at=_at(unbound, b"<foo:"),
        ),
        Case(
            "duplicated-attribute",
            duplicated,
            "the same attribute twice on a stanza",
            "duplicate attribute",
            ("open",),
        ),
        Case(
            "bytes-after-close",
            after_close,
            "a stanza after </stream:stream>",
            "data after </stream:stream>",
            ("open", "presence", "close"),
            at=len(CLIENT_HEADER + PRESENCE + CLOSE),
        ),
        Case(
            "garbage-before-header",
            garbage,
            "text before the stream header",
            "syntax error",
            (),
            at=0,
        ),
        Case(
            "http-request",
            http,
            "an HTTP request (a browser or curl pointed at the port)",
            "HTTP request",
            (),
            at=0,
        ),
        Case(
            "tls-client-hello",
            TLS_CLIENT_HELLO,
            "a TLS ClientHello (a client expecting direct TLS)",
            "TLS handshake",
            (),
            at=0,
        ),
        Case(
            "text-between-stanzas",
            text,
            "text between top-level elements",
            "text between stanzas",
            ("open", "presence"),
            at=_at(text, b"hello"),
        ),
        Case(
            "cdata-between-stanzas",
            cdata,
            "a CDATA section between top-level elements",
            "text between stanzas",
            ("open", "presence"),
            at=_at(cdata, b"<![CDATA["),
        ),
        Case(
            "mismatched-end-tag",
            mismatched,
            "an end tag that does not match its start tag",
            "mismatched tag",
            ("open",),
        ),
        Case(
            "xml-declaration-mid-stream",
            declaration_again,
            "a second <?xml?> and header in the middle of the stream, unprompted",
            "XML or text declaration not at start of entity",
            ("open", "presence"),
            at=len(CLIENT_HEADER + PRESENCE),
        ),
        Case(
            "stanza-10mb",
            TEN_MB_STANZA,
            "one 10 MB message (over the default 1 MiB limit)",
            f"larger than {DEFAULT_MAX_STANZA_SIZE} bytes",
            ("open",),
            at=len(CLIENT_HEADER) + DEFAULT_MAX_STANZA_SIZE,
        ),
        Case(
            "nested-10000",
            DEEP_STANZA,
            f"a message nested {DEPTH:,} elements deep (70 KB, under the limit)",
            None,
            ("open", "message"),
        ),
        Case(
            "over-small-limit",
            OVER_SMALL_LIMIT,
            f"a 2 KB message with --max-stanza-size {SMALL_LIMIT}",
            f"larger than {SMALL_LIMIT} bytes",
            ("open", "presence"),
            max_stanza_size=SMALL_LIMIT,
            at=len(CLIENT_HEADER + PRESENCE) + SMALL_LIMIT,
        ),
        Case(
            "closes-mid-stanza",
            cut,
            "the peer shuts down in the middle of a message",
            "the connection ended in the middle of an element",
            ("open", "presence"),
            at=len(cut),
        ),
        Case(
            "header-never-completes",
            header_cut,
            "the peer shuts down in the middle of its stream header",
            "the connection ended in the middle of a stream header",
            (),
            at=len(header_cut),
        ),
        Case(
            "endless-header",
            ENDLESS_HEADER,
            "a stream header that never ends (a 2 MB attribute)",
            f"stream header larger than {DEFAULT_MAX_STANZA_SIZE} bytes",
            (),
            at=DEFAULT_MAX_STANZA_SIZE,
        ),
        Case(
            "self-closing-header",
            self_closing,
            "<stream:stream .../>: opened and closed at once",
            None,
            ("open", "close"),
        ),
        Case(
            "server-doctype",
            server_doctype,
            "the server sends a DOCTYPE before its header",
            "DOCTYPE",
            (),
            direction=S2C,
            at=0,
        ),
        Case(
            "server-http-response",
            server_http,
            "the upstream is an HTTP server: it answers with an HTTP response",
            "this is an HTTP response, not an XMPP stream",
            (),
            direction=S2C,
        ),
        Case(
            "server-tls-alert",
            b"\x15\x03\x03\x00\x02\x02\x46",
            "the upstream is a direct-TLS port: it answers the XML header with a TLS alert",
            "the server expects direct TLS on this port",
            (),
            direction=S2C,
            at=0,
        ),
        Case(
            "server-html",
            server_html,
            "the upstream answers with an HTML page",
            "expected a <stream:stream> header, got <html>",
            (),
            direction=S2C,
        ),
        Case(
            "server-closes-mid-stanza",
            server_cut,
            "the server shuts down in the middle of its features",
            "the connection ended in the middle of an element",
            ("open",),
            direction=S2C,
            at=len(server_cut),
        ),
        Case(
            "server-huge-roster",
            SERVER_HUGE_ROSTER,
            "a 3.5 MB roster result from the server (over the 1 MiB limit)",
            f"larger than {DEFAULT_MAX_STANZA_SIZE} bytes",
            ("open",),
            direction=S2C,
            at=len(SERVER_HEADER) + DEFAULT_MAX_STANZA_SIZE,
        ),
        Case(
            "server-success-then-garbage",
            server_success_garbage,
            "SASL <success/> (the stream restarts) followed by junk instead of a new header",
            "not well-formed",
            ("open", "stream:features", "sasl:success"),
            direction=S2C,
            at=len(SERVER_HEADER + FEATURES + success) + 1,
        ),
        Case(
            "server-proceed-then-tls",
            server_tls,
            "<proceed/> then TLS bytes: relayed as encrypted, not parsed",
            None,
            ("open", "stream:features", "tls:proceed", "tls"),
            direction=S2C,
        ),
    ]


def cases(secret: Path) -> list[Case]:
    """Every case; the external-entity ones point at ``secret`` (which should hold SECRET)."""
    return _case_list(secret)


_ALL = _case_list(Path("/nonexistent/secret.txt"))
NAMES = tuple(case.name for case in _ALL)
BIG = frozenset(case.name for case in _ALL if case.big)
"""Cases too big to send one byte at a time."""
SERVER_NAMES = tuple(case.name for case in _ALL if case.direction is S2C)
"""Cases a server plays."""
del _ALL
