"""A mock XMPP server played from a capture: client bytes in, server bytes out (sans-IO).

``script_for`` turns one recorded connection into a ``Script``: the server's features before and
after authentication, the bound JID, and the recorded client stanzas after the bind, each with
the server stanzas that followed it. ``MockServer`` plays one live client against scripts:

- it answers the stream header (fresh id, ``from`` = the client's ``to``), offers the recorded
  features with SASL PLAIN as the only mechanism (the mock knows no password, so it cannot do
  SCRAM) and without STARTTLS, accepts any PLAIN credentials, and restarts the stream;
- it answers bind (the requested resource; the user from the PLAIN authcid, else the recorded
  one; the client's domain) and session requests itself;
- then each client stanza is matched to the next recorded client stanza by kind, and for IQs by
  type and payload (``Stanza.child``). Without ``strict`` the search goes forward through the
  rest of the script (recorded stanzas passed over are skipped); with ``strict`` only the very
  next one matches, and the first departure ends the stream with ``<undefined-condition/>``;
- the server stanzas recorded after a matched client stanza are sent back, with the recorded
  request ids replaced by the live ones and the recorded bound JID (full and bare) by the live
  one. A stanza whose ``id`` is that of a recorded client stanza is a reply: it goes at once.
  Any other (a pushed message or presence) is unsolicited: it goes once its client stanza
  matched and no earlier than its recorded offset from the end of the bind, measured from the
  live bind. Stanzas go out in recorded order, so a reply may wait behind an earlier push;
  pushes not yet due when the client closes its stream are dropped;
- an unmatched IQ get/set gets ``<service-unavailable/>``; other unmatched stanzas get nothing.

Which recorded connection a client gets: the one asked for, else the one whose bound user is the
client's PLAIN authcid, else the first. Time is the caller's (``now`` in seconds, any origin).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from xmppspy.events import (
    Bound,
    Direction,
    Event,
    Keepalive,
    Kind,
    Opaque,
    ParseError,
    Record,
    Stanza,
    StreamClosed,
    StreamOpened,
    WireEvent,
)
from xmppspy.namespaces import BIND, SASL, SESSION, STANZA_ERRORS, STREAM_ERRORS, TLS
from xmppspy.parser import START_TAG, StreamParser
from xmppspy.redact import mechanism, redact

_BIND = "{" + BIND + "}bind"
_SESSION = "{" + SESSION + "}session"
_MECHANISMS = "{" + SASL + "}mechanisms"
_STARTTLS = "{" + TLS + "}starttls"
_ID_ATTR = re.compile(rb"""(\sid\s*=\s*)(['"])(.*?)\2""", re.DOTALL)


class ScriptError(Exception):
    """A recorded connection that cannot be served; the message says why, for a person."""


@dataclass(frozen=True)
class Push:
    """A recorded server stanza to send back."""

    stanza: Stanza
    offset: float
    """Seconds after the recorded bind result."""
    reply: bool
    """Its ``id`` is that of a recorded client stanza: it answers it, and goes at once."""


@dataclass(frozen=True)
class Step:
    """A recorded client stanza after the bind, and the server stanzas that followed it."""

    number: int
    """1-based, among the recorded client stanzas after the bind."""
    request: Stanza
    then: tuple[Push, ...]


@dataclass(frozen=True)
class Script:
    """What one recorded connection says a server does."""

    conn: str
    domain: str
    jid: str
    """The full JID the recorded connection bound."""
    features: Stanza
    """The features offered before authentication."""
    bound_features: Stanza
    """The features offered after authentication (bind, session...)."""
    prelude: tuple[Push, ...]
    """Server stanzas after the bind result and before the client's next stanza."""
    steps: tuple[Step, ...]

    @property
    def user(self) -> str:
        return self.jid.partition("@")[0] if "@" in self.jid else ""


def script_for(records: Iterable[Record], conn: str) -> Script:
    """The script of connection ``conn`` among ``records``; raises ``ScriptError``."""
    events = [(r.t, r.event) for r in records if r.conn == conn]
    if not events:
        raise ScriptError(f"the capture has no connection {conn!r}")
    features: list[Stanza] = []
    domain: str | None = None
    jid: str | None = None
    bound_at: float | None = None
    bind_ids: set[str | None] = set()
    skip_ids: set[str | None] = set()
    client_ids: set[str] = set()
    prelude: list[Push] = []
    steps: list[tuple[Stanza, list[Push]]] = []
    for t, event in events:
        if isinstance(event, StreamOpened):
            if event.dir is Direction.S2C and event.from_:
                domain = domain or event.from_
            elif event.dir is Direction.C2S and event.to:
                domain = domain or event.to
        elif isinstance(event, Opaque | ParseError) and jid is None:
            why = "it went TLS" if isinstance(event, Opaque) else "of a parse error"
            raise ScriptError(f"connection {conn} cannot be served: {why} before the bind")
        elif isinstance(event, StreamClosed) and event.dir is Direction.C2S:
            break
        elif not isinstance(event, Stanza):
            continue
        elif jid is None:
            if event.dir is Direction.S2C and event.kind is Kind.FEATURES:
                features.append(event)
            elif event.kind is Kind.IQ and event.dir is Direction.C2S and event.child == _BIND:
                bind_ids.add(event.id)
            elif event.kind is Kind.IQ and event.dir is Direction.S2C and event.id in bind_ids:
                jid = _bound_jid(event)
                bound_at = t
        elif event.dir is Direction.C2S:
            if event.kind is Kind.IQ and event.child == _SESSION:
                skip_ids.add(event.id)  # answered by the mock itself
                continue
            if event.id is not None:
                client_ids.add(event.id)
            steps.append((event, []))
        elif event.kind is Kind.IQ and event.type in ("result", "error") and event.id in skip_ids:
            continue
        else:
            assert bound_at is not None
            push = Push(event, t - bound_at, event.id is not None and event.id in client_ids)
            (steps[-1][1] if steps else prelude).append(push)
    if jid is None or bound_at is None:
        raise ScriptError(f"connection {conn} never bound a resource in the clear: nothing to play")
    if len(features) < 2:
        raise ScriptError(f"connection {conn} lacks the server's stream features")
    return Script(
        conn=conn,
        domain=domain or jid.partition("@")[2].partition("/")[0],
        jid=jid,
        features=features[0],
        bound_features=features[-1],
        prelude=tuple(prelude),
        steps=tuple(Step(i, s, tuple(p)) for i, (s, p) in enumerate(steps, 1)),
    )


def scripts_from(records: Iterable[Record]) -> tuple[dict[str, Script], dict[str, str]]:
    """Every connection's script, and why the others cannot be played (conn -> reason)."""
    records = list(records)
    conns = list(dict.fromkeys(r.conn for r in records))
    scripts: dict[str, Script] = {}
    problems: dict[str, str] = {}
    for conn in conns:
        try:
            scripts[conn] = script_for(records, conn)
        except ScriptError as exc:
            problems[conn] = str(exc)
    return scripts, problems


def _bound_jid(result: Stanza) -> str | None:
    try:
        text = result.element.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid")
    except ValueError:
        return None
    return text.strip() if text else None


def describe(stanza: Stanza) -> str:
    """A stanza in a few words, for one-line messages: ``<iq get {urn:xmpp:ping}ping>``."""
    name = stanza.kind.value if stanza.kind is not Kind.OTHER else stanza.name
    parts = [name] + [p for p in (stanza.type, stanza.child) if p]
    return "<" + " ".join(parts) + ">"


def _same(recorded: Stanza, live: Stanza) -> bool:
    if recorded.kind is not live.kind:
        return False
    if recorded.kind is Kind.IQ:
        return recorded.type == live.type and recorded.child == live.child
    if recorded.kind is Kind.OTHER:
        return recorded.name == live.name
    return True


def _xml_text(text: str) -> bytes:
    return escape(text, {"'": "&apos;", '"': "&quot;"}).encode()


def _attr(name: str, value: str | None) -> str:
    return f" {name}={quoteattr(value)}" if value is not None else ""


def stream_error(condition: str, text: str) -> bytes:
    return (
        f"<stream:error><{condition} xmlns='{STREAM_ERRORS}'/>"
        f"<text xmlns='{STREAM_ERRORS}'>{escape(text)}</text></stream:error></stream:stream>"
    ).encode()


@dataclass
class Output:
    """What the mock wants done: bytes to send, events to show (both ways), notes to print."""

    data: bytes = b""
    events: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log: list[Event | str] = field(default_factory=list)
    """Events and notes together, in the order they happened: what a view shows."""

    def event(self, event: Event) -> None:
        self.events.append(event)
        self.log.append(event)

    def note(self, note: str) -> None:
        self.notes.append(note)
        self.log.append(note)


@dataclass
class Counts:
    matched: int = 0
    unmatched: int = 0
    skipped: int = 0
    c2s_stanzas: int = 0
    s2c_stanzas: int = 0


class MockServer:
    """One live client connection against a capture's scripts."""

    def __init__(
        self,
        scripts: Mapping[str, Script],
        *,
        conn: str | None = None,
        strict: bool = False,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        assert scripts, "a mock needs at least one script"
        self.scripts = scripts
        self.script = scripts[conn] if conn is not None else next(iter(scripts.values()))
        self.fixed = conn is not None
        self.strict = strict
        self.new_id = new_id
        self.jid: str | None = None
        self.domain: str | None = None
        self.user: str | None = None
        self.authenticated = False
        self.closed = False
        """The mock sent ``</stream:stream>``: send what is left, then end the connection."""
        self.departure: str | None = None
        self.counts = Counts()
        self._c2s = StreamParser(Direction.C2S, pause_after=(Kind.SASL_AUTH,))
        self._s2c = StreamParser(Direction.S2C, pause_after=(Kind.SASL_SUCCESS,))
        self._cursor = 0
        self._ids: dict[str, str] = {}
        """Recorded client stanza id -> the live id of the stanza it matched."""
        self._queue: deque[tuple[float, bytes]] = deque()
        self._bound_at: float | None = None
        self._out = Output()

    # -- public API ---------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> Output:
        """The client sent ``data``."""
        pending = deque(self._c2s.feed(data))
        while pending:
            event = pending.popleft()
            self._show(event)
            if not self.closed:
                pending.extend(self._handle(event, now))
                self._drain(now)
        return self._flush()

    def poll(self, now: float) -> Output:
        """Time passed: send the pushes now due."""
        self._drain(now)
        return self._flush()

    def eof(self, now: float) -> Output:
        """The client closed its side of the connection."""
        for event in self._c2s.close():
            self._show(event)
        if not self.closed:
            self._out.note("the client closed the connection without closing its stream")
            self.closed = True
        return self._flush()

    @property
    def next_due(self) -> float | None:
        """When ``poll`` has something to send, if anything is waiting."""
        return self._queue[0][0] if self._queue and not self.closed else None

    @property
    def progress(self) -> str:
        return (
            f"{self.counts.matched}/{len(self.script.steps)} recorded client stanzas of "
            f"{self.script.conn} matched, {self.counts.skipped} skipped, "
            f"{self.counts.unmatched} unmatched"
        )

    # -- handling -----------------------------------------------------------------------------

    def _handle(self, event: WireEvent, now: float) -> list[WireEvent]:
        """Act on one client event; return client events that a stream restart released."""
        match event:
            case StreamOpened():
                self._open(event)
            case Stanza():
                self.counts.c2s_stanzas += 1
                return self._stanza(event, now)
            case StreamClosed():
                self._drain(now)  # what is due goes out first; later pushes are dropped
                self._send(b"</stream:stream>")
                self.closed = True
            case ParseError():
                self._end("not-well-formed", f"xmppspy serve could not parse: {event.reason}")
            case Opaque():
                self._end("not-well-formed", "xmppspy serve could not parse the client's bytes")
            case Keepalive():
                pass
        return []

    def _open(self, header: StreamOpened) -> None:
        if self.domain is None:
            self.domain = header.to or self.script.domain
        self._send(
            (
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                "xmlns:stream='http://etherx.jabber.org/streams'"
                f"{_attr('id', self.new_id())}{_attr('from', self.domain)}"
                " version='1.0' xml:lang='en'>"
            ).encode()
        )
        if self.authenticated:
            self._send(self.script.bound_features.raw)
        else:
            self._send(_plain_features(self.script.features))

    def _stanza(self, stanza: Stanza, now: float) -> list[WireEvent]:
        if not self.authenticated:
            if stanza.kind is not Kind.SASL_AUTH:
                self._end(
                    "not-authorized", f"xmppspy serve expected SASL PLAIN, got {describe(stanza)}"
                )
                return []
            return self._auth(stanza)
        if stanza.kind is Kind.IQ and stanza.type == "set" and stanza.child == _BIND:
            self._bind(stanza, now)
        elif stanza.kind is Kind.IQ and stanza.type == "set" and stanza.child == _SESSION:
            self._send(f"<iq type='result'{_attr('id', stanza.id)}/>".encode())
        else:
            self._match(stanza, now)
        return []

    def _auth(self, auth: Stanza) -> list[WireEvent]:
        if mechanism(auth) != "PLAIN":
            self._send(f"<failure xmlns='{SASL}'><invalid-mechanism/></failure>".encode())
            self._end("policy-violation", "xmppspy serve accepts SASL PLAIN only")
            return []
        self.user = _plain_authcid(auth)
        if not self.fixed and self.user is not None:
            for script in self.scripts.values():
                if script.user == self.user:
                    self.script = script
                    break
        self.authenticated = True
        self._send(f"<success xmlns='{SASL}'/>".encode())
        self._out.note(
            f"authenticated {self.user or '(no readable PLAIN user)'}: "
            f"playing recorded connection {self.script.conn} ({self.script.jid})"
        )
        return list(self._c2s.restart())

    def _bind(self, request: Stanza, now: float) -> None:
        recorded_local, _, rest = self.script.jid.partition("@")
        recorded_resource = rest.partition("/")[2] or "xmppspy"
        resource = recorded_resource
        try:
            asked = request.element.findtext(f"{{{BIND}}}bind/{{{BIND}}}resource")
        except ValueError:
            asked = None
        if asked and asked.strip():
            resource = asked.strip()
        self.jid = f"{self.user or recorded_local}@{self.domain}/{resource}"
        self._send(
            f"<iq type='result'{_attr('id', request.id)}><bind xmlns='{BIND}'>"
            f"<jid>{escape(self.jid)}</jid></bind></iq>".encode()
        )
        self._out.event(Bound(Direction.S2C, self.jid))
        self._bound_at = now
        self._enqueue(self.script.prelude, now)

    def _match(self, stanza: Stanza, now: float) -> None:
        steps = self.script.steps
        last = self._cursor + 1 if self.strict else len(steps)
        found = next(
            (
                i
                for i in range(self._cursor, min(last, len(steps)))
                if _same(steps[i].request, stanza)
            ),
            None,
        )
        if found is None:
            self._unmatched(stanza)
            return
        for skipped in steps[self._cursor : found]:
            self.counts.skipped += 1
            self._out.note(
                f"skipped recorded client stanza {skipped.number} {describe(skipped.request)}"
            )
            self._enqueue([p for p in skipped.then if not p.reply], now)
        step = steps[found]
        self._cursor = found + 1
        self.counts.matched += 1
        if step.request.id is not None and stanza.id is not None:
            self._ids[step.request.id] = stanza.id
        self._out.note(
            f"matched recorded client stanza {step.number} {describe(step.request)}"
            f" → {len(step.then)} recorded server stanzas"
        )
        self._enqueue(step.then, now)

    def _unmatched(self, stanza: Stanza) -> None:
        number = self._cursor + 1
        if self._cursor < len(self.script.steps):
            expected = f"the capture has {describe(self.script.steps[self._cursor].request)}"
            expected += f" next (recorded client stanza {number} of {self.script.conn})"
        else:
            expected = f"the capture of {self.script.conn} has no more client stanzas"
        if self.strict:
            self.departure = (
                f"client stanza {describe(stanza)} departs from the capture: {expected}"
            )
            self._out.note(self.departure)
            self._end("undefined-condition", f"xmppspy serve --strict: {self.departure}")
            return
        self.counts.unmatched += 1
        self._out.note(f"no recorded match for {describe(stanza)}: {expected}")
        if stanza.kind is Kind.IQ and stanza.type in ("get", "set"):
            self._queue.append(
                (
                    0.0,
                    (
                        f"<iq type='error'{_attr('id', stanza.id)}{_attr('from', stanza.to)}"
                        f"{_attr('to', self.jid)}><error type='cancel'>"
                        f"<service-unavailable xmlns='{STANZA_ERRORS}'/></error></iq>"
                    ).encode(),
                )
            )

    def _enqueue(self, pushes: Iterable[Push], now: float) -> None:
        bound_at = self._bound_at if self._bound_at is not None else now
        for push in pushes:
            raw = push.stanza.raw
            if push.stanza.id is not None and push.stanza.id in self._ids:
                raw = _replace_id(raw, self._ids[push.stanza.id])
            elif push.reply:
                continue  # it answers a recorded stanza this client never sent
            raw = self._rewrite_jids(raw)
            due = 0.0 if push.reply else max(now, bound_at + push.offset)
            self._queue.append((due, raw))

    def _rewrite_jids(self, raw: bytes) -> bytes:
        if self.jid is None or self.jid == self.script.jid:
            return raw
        recorded_bare = self.script.jid.partition("/")[0]
        live_bare = self.jid.partition("/")[0]
        for old, new in ((self.script.jid, self.jid), (recorded_bare, live_bare)):
            pattern = rb"(?<![\w.@-])" + re.escape(_xml_text(old)) + rb"(?![\w.@-])"
            raw = re.sub(pattern, _xml_text(new).replace(b"\\", b"\\\\"), raw)
        return raw

    def _drain(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now and not self.closed:
            self._send(self._queue.popleft()[1])

    def _end(self, condition: str, text: str) -> None:
        """Close the stream with a stream error."""
        self._send(stream_error(condition, text))
        self.closed = True
        self._queue.clear()

    # -- output -------------------------------------------------------------------------------

    def _send(self, raw: bytes) -> None:
        self._out.data += raw
        for event in self._s2c.feed(raw):
            if isinstance(event, Stanza):
                self.counts.s2c_stanzas += 1
                if event.kind is Kind.SASL_SUCCESS:
                    self._out.event(event)
                    for restarted in self._s2c.restart():
                        self._out.event(restarted)
                    continue
            self._out.event(event)

    def _show(self, event: Event) -> None:
        if isinstance(event, Stanza) and event.kind is Kind.SASL_AUTH:
            event = redact(event, "PLAIN")
        self._out.event(event)

    def _flush(self) -> Output:
        out, self._out = self._out, Output()
        return out


def _plain_features(recorded: Stanza) -> bytes:
    """The recorded pre-auth features, with PLAIN as the only mechanism and no STARTTLS."""
    children = [f"<mechanisms xmlns='{SASL}'><mechanism>PLAIN</mechanism></mechanisms>".encode()]
    try:
        element = recorded.element
    except ValueError:
        element = None
    if element is not None:
        for child in element:
            if isinstance(child.tag, str) and child.tag not in (_MECHANISMS, _STARTTLS):
                children.append(etree.tostring(child))
    return b"<stream:features>" + b"".join(children) + b"</stream:features>"


def _plain_authcid(auth: Stanza) -> str | None:
    """The user name of a SASL PLAIN ``<auth/>`` (``authzid NUL authcid NUL password``)."""
    try:
        text = (auth.element.text or "").strip()
        fields = base64.b64decode(text, validate=True).split(b"\0")
        user = fields[1].decode() if len(fields) == 3 else ""
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return user or None


def _replace_id(raw: bytes, live_id: str) -> bytes:
    """The stanza with the ``id`` of its start tag set to ``live_id``."""
    start = START_TAG.match(raw)
    if start is None:
        return raw
    value = _xml_text(live_id)
    tag = _ID_ATTR.sub(lambda m: m[1] + m[2] + value + m[2], raw[: start.end()], count=1)
    return tag + raw[start.end() :]
