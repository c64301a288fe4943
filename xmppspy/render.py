"""How records look in a terminal: one header line each, stanzas as indented, highlighted XML.

The same ``View`` serves the live proxy and offline replay, so a capture looks exactly like the
session it recorded. The caller owns the rich ``Console``.
"""

from __future__ import annotations

import copy
from datetime import datetime, tzinfo

from lxml import etree
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.rule import Rule
from rich.syntax import Syntax
from rich.text import Text

from xmppspy.events import (
    Bound,
    Connected,
    Direction,
    Disconnected,
    Keepalive,
    Notice,
    Opaque,
    OpaqueReason,
    ParseError,
    Record,
    Rewritten,
    Stanza,
    StreamClosed,
    StreamOpened,
    TlsStarted,
)
from xmppspy.selection import Shown
from xmppspy.xml import context_tag, parse_stanza

ARROWS = {Direction.C2S: "C→S", Direction.S2C: "S→C"}
STYLES = {Direction.C2S: "bold cyan", Direction.S2C: "bold magenta"}
PRETTY_LIMIT = 16 * 1024
"""Pretty XML is cut after this many characters (``--raw`` shows everything)."""
EXCERPT = 200


_UNPRINTABLE = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (
        *range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0),
        *range(0x202A, 0x202F), *range(0x2066, 0x206A),
    )
}  # fmt: skip
"""Control characters (and bidi overrides) a peer could use to drive the person's terminal."""


def printable(raw: bytes) -> str:
    """Wire bytes as text that is safe to print: invalid UTF-8 and controls shown escaped."""
    return raw.decode("utf-8", "backslashreplace").translate(_UNPRINTABLE)


def pretty_xml(stanza: Stanza) -> str:
    """The stanza indented for reading, or its raw text when it cannot be parsed."""
    return _pretty(stanza.context, stanza.raw)


def _pretty(context: bytes, raw: bytes) -> str:
    try:
        element = parse_stanza(context, raw)
    except ValueError:
        return printable(raw)
    wrapper = copy.deepcopy(element.getparent())
    assert wrapper is not None
    etree.indent(wrapper, space="  ")
    lines = etree.tostring(wrapper, encoding="unicode").splitlines()[1:-1]
    return "\n".join(line[2:] for line in lines).translate(_UNPRINTABLE)


_CLIENT_CONTEXT = context_tag({None: "jabber:client", "stream": "http://etherx.jabber.org/streams"})
"""The namespaces of a client stream, to show bytes xmppspy sent (a rewritten element)."""


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


def _excerpt(raw: bytes, limit: int | None) -> str:
    text = printable(raw)
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}… ({len(raw)} bytes in all)"
    return text


def _xml(code: str) -> Syntax:
    return Syntax(code, "xml", theme="ansi_dark", background_color="default", word_wrap=True)


class View:
    """Renders records to a console; keeps each connection's label (its JID once bound)."""

    def __init__(self, console: Console, *, raw: bool = False, tz: tzinfo | None = None) -> None:
        self.console = console
        self.raw = raw
        self.tz = tz
        self.labels: dict[str, str] = {}

    def show(self, shown: Shown) -> None:
        record = shown.record
        if isinstance(record.event, Bound):
            self.labels[record.conn] = f"{record.conn} {record.event.jid}"
        if shown.visible:
            self.console.print(self.render(record, shown.reply_to))

    def unanswered(self, requests: list[Record]) -> None:
        """Flag IQ requests that never got a reply (``--with-replies``)."""
        for request in requests:
            head = self._head(request)
            head.append("no reply: ", "bold red")
            self.console.print(self._stanza(head, request.event))  # type: ignore[arg-type]

    def skipped(self, count: int) -> None:
        self.console.print(
            Text(
                f"… {count} events not shown: the terminal could not keep up "
                "(the capture has them all)",
                style="bold yellow",
            )
        )

    def _head(self, record: Record) -> Text:
        when = datetime.fromtimestamp(record.t, self.tz).strftime("%H:%M:%S.%f")[:-3]
        label = self.labels.get(record.conn, record.conn)
        head = Text.assemble((when, "dim"), " ", (label, "bold"), " ")
        direction = getattr(record.event, "dir", None)
        if direction is not None:
            head.append(ARROWS[direction], STYLES[direction])
            head.append(" ")
        return head

    def render(self, record: Record, reply_to: Record | None = None) -> RenderableType:
        event = record.event
        head = self._head(record)
        match event:
            case Stanza():
                return self._stanza(head, event, _reply_note(record, reply_to))
            case StreamOpened():
                what = "stream restarted" if event.restart else "stream opened"
                attrs = " ".join(
                    f"{name}={value}"
                    for name, value in (
                        ("to", event.to),
                        ("from", event.from_),
                        ("id", event.id),
                        ("version", event.version),
                        ("lang", event.lang),
                    )
                    if value is not None
                )
                rule = Rule(head + Text(f"{what} {attrs}".strip(), "bold"), align="left")
                return self._with_raw(rule, event.raw)
            case StreamClosed():
                return self._with_raw(
                    Rule(head + Text("stream closed", "bold"), align="left"), event.raw
                )
            case Keepalive():
                return head + Text(f"keepalive ({_bytes(len(event.raw))})", "dim")
            case ParseError():
                head.append(f"parse error at byte {event.at}: {event.reason}", "bold red")
                if event.redacted:
                    head.append("  (secrets redacted)", "yellow")
                body = Text(_excerpt(event.raw, None if self.raw else EXCERPT), "red")
                return Group(head, Padding(body, (0, 0, 0, 4)))
            case Opaque():
                if event.reason is OpaqueReason.TLS:
                    return head + Text(f"{_bytes(len(event.raw))} encrypted", "dim")
                if event.reason is OpaqueReason.BEFORE_TLS:
                    head.append(
                        f"{_bytes(len(event.raw))} after STARTTLS and before TLS: part of neither "
                        "stream",
                        "red",
                    )
                else:
                    head.append(f"{_bytes(len(event.raw))} relayed, not parsed", "red")
                if event.redacted:
                    head.append("  (secrets redacted)", "yellow")
                body = Text(_excerpt(event.raw, None if self.raw else EXCERPT), "dim")
                return Group(head, Padding(body, (0, 0, 0, 4)))
            case TlsStarted():
                if not event.intercepted:
                    return Rule(
                        head + Text("TLS started: encrypted from here", "bold yellow"),
                        align="left",
                    )
                what = (
                    "TLS to the server only (--tls strip)" if event.stripped else "TLS intercepted"
                )
                rule = Rule(
                    head + Text(f"{what}: {event.version} {event.cipher}", "bold yellow"),
                    align="left",
                )
                trust = {True: "verified", False: "NOT VERIFIED", None: "unknown"}[event.verified]
                facts = Text.assemble(
                    ("server certificate ", "yellow"),
                    (trust, "bold green" if event.verified else "bold red"),
                    (f": {event.server_subject}\nissued by {event.server_issuer}", "yellow"),
                    (f"\nSHA-256 {event.server_fingerprint}", "dim"),
                )
                if event.stripped:
                    facts.append("\nthe client's side of the stream stays plaintext", "yellow")
                return Group(rule, Padding(facts, (0, 0, 0, 4)))
            case Bound():
                return head + Text(f"bound as {event.jid}", "bold green")
            case Rewritten():
                if not event.sent:
                    return head + Text(f"xmppspy: {event.reason}", "bold yellow")
                head.append(f"xmppspy: {event.reason}; the peer got", "bold yellow")
                code = (
                    _excerpt(event.sent, None) if self.raw else _pretty(_CLIENT_CONTEXT, event.sent)
                )
                return Group(head, Padding(_xml(code), (0, 0, 0, 4)))
            case Notice():
                return head + Text(f"xmppspy: {event.text}", "bold yellow")
            case Connected():
                return head + Text(f"connected {event.client} → {event.upstream}", "green")
            case Disconnected():
                clean = event.reason in ("closed by both sides", "proxy stopped")
                return head + Text(summary(event), "green" if clean else "bold yellow")

    def _with_raw(self, renderable: RenderableType, raw: bytes) -> RenderableType:
        if not self.raw:
            return renderable
        return Group(renderable, Padding(_xml(_excerpt(raw, None)), (0, 0, 0, 4)))

    def _stanza(self, head: Text, stanza: Stanza, note: str | None = None) -> RenderableType:
        head.append(stanza.kind.value if stanza.kind.value != "other" else stanza.name, "bold")
        details = [
            f"{name}={value}"
            for name, value in (("type", stanza.type), ("id", stanza.id))
            if value is not None
        ]
        if stanza.from_ or stanza.to:
            details.append(f"{stanza.from_ or '·'} → {stanza.to or '·'}")
        if details:
            head.append("  " + "  ".join(details))
        if stanza.redacted:
            head.append("  (secrets redacted)", "yellow")
        if note:
            head.append(f"  {note}", "bold blue")
        if self.raw:
            code = _excerpt(stanza.raw, None)
        else:
            code = pretty_xml(stanza)
            if len(code) > PRETTY_LIMIT:
                code = f"{code[:PRETTY_LIMIT]}\n… ({len(stanza.raw)} bytes in all; --raw shows all)"
        return Group(head, Padding(_xml(code), (0, 0, 0, 4)))


def _reply_note(record: Record, request: Record | None) -> str | None:
    if request is None or not isinstance(request.event, Stanza):
        return None
    milliseconds = (record.t - request.t) * 1000
    return f"↩ {request.event.type} answered in {milliseconds:.1f} ms"


def summary(event: Disconnected) -> str:
    """One line that says what crossed a connection."""
    who = f" {event.jid}" if event.jid else ""
    return (
        f"closed{who}: {event.reason}; C→S {event.c2s_stanzas} stanzas {event.c2s_bytes} bytes, "
        f"S→C {event.s2c_stanzas} stanzas {event.s2c_bytes} bytes"
    )
