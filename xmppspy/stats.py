"""Statistics of a stream of records: what ``xmppspy stats`` counts, per connection and in total.

Sans-IO: feed ``Stats`` the records a filter selected, in order, then take its ``report()``, a
tree of frozen dataclasses (rendered by ``stats_view``, serialised as they are for ``--json``).

- Stanzas and bytes by kind, type and direction. The type is the one the filters see: RFC 6120's
  default where a message or presence has none (``normal``, ``available``). Bytes are the
  recorded ``raw`` (for a redacted stanza, the redacted bytes).
- Wire bytes per direction: every event that covers bytes (headers, stanzas, keepalives, closes,
  parse errors, opaque bytes).
- Payload namespaces: for each stanza, the namespaces of its child elements, each counted once
  per stanza; the stanza namespaces (``jabber:client``, ...) are not payload (every ``<body/>``).
- IQ round trips, by the request's payload namespace: a get or set is paired with the result or
  error answering it (same connection, other direction, same ``id``), when both were fed.
- Errors: the defined condition of a stanza of type ``error`` and of a ``<stream:error/>``.
- Stanzas per second, from the first record fed to the last.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from xmppspy.events import (
    Bound,
    Direction,
    Keepalive,
    Kind,
    Opaque,
    ParseError,
    Record,
    Stanza,
    StreamClosed,
    StreamOpened,
)
from xmppspy.filters import stanza_type
from xmppspy.namespaces import STANZA_ERRORS, STANZA_NAMESPACES, STREAM_ERRORS
from xmppspy.selection import IqPairs

LARGEST = 5
"""How many of the largest stanzas a summary keeps."""
NO_PAYLOAD = "(none)"
"""The namespace an IQ without a child element is grouped under."""
UNDEFINED_CONDITION = "(undefined)"
"""The condition of an error without a defined condition element (or that does not parse)."""

_WIRE = (StreamOpened, Stanza, Keepalive, StreamClosed, ParseError, Opaque)
_KIND_ORDER = {kind: index for index, kind in enumerate(Kind)}
_DIR_ORDER = {Direction.C2S: 0, Direction.S2C: 1}
_ERROR_STANZAS = (Kind.MESSAGE, Kind.PRESENCE, Kind.IQ)


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindCount:
    """Stanzas of one kind, type and direction."""

    kind: str
    type: str | None
    dir: str
    stanzas: int
    bytes: int


@dataclass(frozen=True)
class NamespaceCount:
    namespace: str
    stanzas: int


@dataclass(frozen=True)
class LargeStanza:
    bytes: int
    t: float
    conn: str
    dir: str
    kind: str
    id: str | None


@dataclass(frozen=True)
class Latency:
    """IQ round trips (seconds) of one request payload namespace."""

    namespace: str
    replies: int
    median: float | None
    p95: float | None
    """Nearest rank: the smallest round trip that at least 95% of them do not exceed."""
    max: float | None
    unanswered: int
    """Requests whose reply was not fed (never came, or the filter left it out)."""


@dataclass(frozen=True)
class ErrorCount:
    kind: str
    condition: str
    count: int


@dataclass(frozen=True)
class Summary:
    """The numbers of one connection, or of all of them (``conn`` is None)."""

    conn: str | None
    jid: str | None
    stanzas: int
    c2s_bytes: int
    s2c_bytes: int
    by_kind: tuple[KindCount, ...]
    namespaces: tuple[NamespaceCount, ...]
    """Most frequent first."""
    largest: tuple[LargeStanza, ...]
    """Largest first; equal sizes in the order they came."""
    latency: tuple[Latency, ...]
    stanza_errors: tuple[ErrorCount, ...]
    stream_errors: tuple[ErrorCount, ...]
    parse_errors: int
    opaque_bytes: int


@dataclass(frozen=True)
class Report:
    connections: tuple[Summary, ...]
    """In the order the connections were first seen."""
    total: Summary
    start: float | None
    """``t`` of the first record fed (None when nothing was)."""
    end: float | None
    per_second: tuple[int, ...]
    """Stanzas in each whole second from ``start``; the last bucket holds ``end``."""


# -- the accumulator ------------------------------------------------------------------------------


def _namespace(clark: str) -> str:
    return clark[1:].partition("}")[0] if clark.startswith("{") else ""


def _tags(stanza: Stanza) -> list[tuple[str, list[str]]]:
    """The Clark names of the stanza's child elements, each with its own children's names."""
    try:
        element = stanza.element
    except ValueError:
        return []
    return [
        (
            child.tag,
            [tag for tag in (grandchild.tag for grandchild in child) if isinstance(tag, str)],
        )
        for child in element
        if isinstance(child.tag, str)
    ]


def _condition(tags: list[str], namespace: str) -> str:
    """The local name of the first of ``tags`` in ``namespace`` other than ``text``."""
    prefix = "{" + namespace + "}"
    for tag in tags:
        if tag.startswith(prefix) and tag != prefix + "text":
            return tag[len(prefix) :]
    return UNDEFINED_CONDITION


def _error_condition(stanza: Stanza, tags: list[tuple[str, list[str]]]) -> str:
    if stanza.kind is Kind.STREAM_ERROR:
        return _condition([tag for tag, _ in tags], STREAM_ERRORS)
    for tag, children in tags:
        if tag.endswith("}error") and _namespace(tag) in STANZA_NAMESPACES:
            return _condition(children, STANZA_ERRORS)
    return UNDEFINED_CONDITION


def _payload_namespaces(tags: list[tuple[str, list[str]]]) -> set[str]:
    namespaces = {_namespace(tag) for tag, _ in tags}
    return {ns for ns in namespaces if ns and ns not in STANZA_NAMESPACES}


def _p95(ordered: list[float]) -> float:
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass
class _Tally:
    """The running numbers of one connection or of the total."""

    conn: str | None
    by_kind: Counter[tuple[Kind, str | None, Direction]] = field(default_factory=Counter)
    kind_bytes: Counter[tuple[Kind, str | None, Direction]] = field(default_factory=Counter)
    wire_bytes: Counter[Direction] = field(default_factory=Counter)
    namespaces: Counter[str] = field(default_factory=Counter)
    largest: list[tuple[int, int, LargeStanza]] = field(default_factory=list)
    round_trips: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stanza_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    stream_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    parse_errors: int = 0
    opaque_bytes: int = 0

    def summary(self, unanswered: Counter[str]) -> Summary:
        keys = sorted(
            self.by_kind,
            key=lambda k: (_KIND_ORDER[k[0]], k[1] is not None, k[1] or "", _DIR_ORDER[k[2]]),
        )
        latency = []
        for namespace in sorted(set(self.round_trips) | set(unanswered)):
            trips = sorted(self.round_trips.get(namespace, []))
            latency.append(
                Latency(
                    namespace,
                    replies=len(trips),
                    median=statistics.median(trips) if trips else None,
                    p95=_p95(trips) if trips else None,
                    max=trips[-1] if trips else None,
                    unanswered=unanswered[namespace],
                )
            )
        return Summary(
            conn=self.conn,
            jid=None,
            stanzas=sum(self.by_kind.values()),
            c2s_bytes=self.wire_bytes[Direction.C2S],
            s2c_bytes=self.wire_bytes[Direction.S2C],
            by_kind=tuple(
                KindCount(k.value, t, d.value, self.by_kind[k, t, d], self.kind_bytes[k, t, d])
                for k, t, d in keys
            ),
            namespaces=tuple(
                NamespaceCount(ns, n)
                for ns, n in sorted(self.namespaces.items(), key=lambda item: (-item[1], item[0]))
            ),
            largest=tuple(
                entry for _, _, entry in sorted(self.largest, key=lambda e: (-e[0], -e[1]))
            ),
            latency=tuple(latency),
            stanza_errors=_errors(self.stanza_errors),
            stream_errors=_errors(self.stream_errors),
            parse_errors=self.parse_errors,
            opaque_bytes=self.opaque_bytes,
        )


def _errors(counts: Counter[tuple[str, str]]) -> tuple[ErrorCount, ...]:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(ErrorCount(kind, condition, n) for (kind, condition), n in ordered)


class Stats:
    """Feed it records in order; ``report()`` gives the numbers so far."""

    def __init__(self) -> None:
        self._total = _Tally(None)
        self._conns: dict[str, _Tally] = {}
        self._pairs = IqPairs()
        self._seq = 0
        self._start: float | None = None
        self._end: float | None = None
        self._seconds: Counter[int] = Counter()
        self._jids: dict[str, str] = {}

    def feed(self, record: Record) -> None:
        event = record.event
        if isinstance(event, Bound):
            # A label, not a count: it names its connection, and starts or moves nothing.
            self._jids[record.conn] = event.jid
            return
        if self._start is None:
            self._start = record.t
        self._end = record.t if self._end is None else max(self._end, record.t)
        tally = self._conns.get(record.conn)
        if tally is None:
            tally = self._conns[record.conn] = _Tally(record.conn)
        if not isinstance(event, _WIRE):
            return
        for each in (tally, self._total):
            each.wire_bytes[event.dir] += len(event.raw)
        if isinstance(event, ParseError):
            tally.parse_errors += 1
            self._total.parse_errors += 1
        elif isinstance(event, Opaque):
            tally.opaque_bytes += len(event.raw)
            self._total.opaque_bytes += len(event.raw)
        elif isinstance(event, Stanza):
            self._stanza(record, event, tally)

    def _stanza(self, record: Record, stanza: Stanza, tally: _Tally) -> None:
        self._seconds[max(0, math.floor(record.t - (self._start or 0.0)))] += 1
        self._seq += 1
        size = len(stanza.raw)
        key = (stanza.kind, stanza_type(stanza), stanza.dir)
        large = LargeStanza(
            size, record.t, record.conn, stanza.dir.value, stanza.kind.value, stanza.id
        )
        tags = _tags(stanza)
        namespaces = _payload_namespaces(tags)
        error: tuple[str, str] | None = None
        if stanza.kind is Kind.STREAM_ERROR or (
            stanza.kind in _ERROR_STANZAS and stanza.type == "error"
        ):
            error = (stanza.kind.value, _error_condition(stanza, tags))
        round_trip: tuple[str, float] | None = None
        if stanza.kind is Kind.IQ:
            if stanza.type in ("get", "set"):
                self._pairs.request(record)
            elif stanza.type in ("result", "error"):
                request = self._pairs.reply(record)
                if request is not None:
                    round_trip = (_iq_namespace(request), record.t - request.t)
        for each in (tally, self._total):
            each.by_kind[key] += 1
            each.kind_bytes[key] += size
            each.namespaces.update(namespaces)
            entry = (size, -self._seq, large)
            if len(each.largest) < LARGEST:
                heapq.heappush(each.largest, entry)
            else:
                heapq.heappushpop(each.largest, entry)
            if error is not None:
                if stanza.kind is Kind.STREAM_ERROR:
                    each.stream_errors[error] += 1
                else:
                    each.stanza_errors[error] += 1
            if round_trip is not None:
                each.round_trips[round_trip[0]].append(round_trip[1])

    def report(self) -> Report:
        unanswered: dict[str | None, Counter[str]] = defaultdict(Counter)
        for request in self._pairs.unanswered():
            namespace = _iq_namespace(request)
            unanswered[request.conn][namespace] += 1
            unanswered[None][namespace] += 1
        buckets: tuple[int, ...] = ()
        if self._start is not None and self._end is not None:
            length = math.floor(self._end - self._start) + 1
            buckets = tuple(self._seconds[second] for second in range(length))
        return Report(
            connections=tuple(
                dataclasses.replace(tally.summary(unanswered[conn]), jid=self._jids.get(conn))
                for conn, tally in self._conns.items()
            ),
            total=self._total.summary(unanswered[None]),
            start=self._start,
            end=self._end,
            per_second=buckets,
        )


def _iq_namespace(request: Record) -> str:
    stanza = request.event
    assert isinstance(stanza, Stanza)
    return _namespace(stanza.child) if stanza.child else NO_PAYLOAD
