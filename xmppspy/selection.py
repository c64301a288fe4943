"""What the view shows of a stream of records: the filter, plus IQ replies when asked.

IQs are request/response pairs joined by ``id``: with ``with_replies`` every matched IQ get/set
brings its result or error along, even if the reply itself does not match, annotated with the
round trip. Sans-IO: records in, decisions out; the same pairing serves later statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

from xmppspy.events import Bound, Direction, Kind, Record, Stanza
from xmppspy.filters import Filter


@dataclass(frozen=True)
class Shown:
    """A record the view should know about: shown (``visible``), or only for its label."""

    record: Record
    visible: bool = True
    reply_to: Record | None = None
    """The IQ request this record answers, when pairing is on."""

    @property
    def round_trip(self) -> float | None:
        return None if self.reply_to is None else self.record.t - self.reply_to.t


class IqPairs:
    """IQ requests waiting for their reply, per connection and direction."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, Direction, str | None], Record] = {}

    def request(self, record: Record) -> None:
        stanza = record.event
        assert isinstance(stanza, Stanza)
        self._waiting[(record.conn, stanza.dir, stanza.id)] = record

    def reply(self, record: Record) -> Record | None:
        """The request this IQ result or error answers, if one is waiting."""
        stanza = record.event
        assert isinstance(stanza, Stanza)
        return self._waiting.pop((record.conn, stanza.dir.other, stanza.id), None)

    def unanswered(self) -> list[Record]:
        return sorted(self._waiting.values(), key=lambda record: record.t)


class Selector:
    """Decides, record by record and in order, what the view gets."""

    def __init__(self, predicate: Filter, *, with_replies: bool = False) -> None:
        self.predicate = predicate
        self.pairs = IqPairs() if with_replies else None

    def __call__(self, record: Record) -> Shown | None:
        matched = self.predicate(record)
        event = record.event
        if self.pairs is not None and type(event) is Stanza and event.kind is Kind.IQ:
            if event.type in ("result", "error"):
                request = self.pairs.reply(record)
                if request is not None:
                    return Shown(record, reply_to=request)
            elif matched and event.type in ("get", "set"):
                self.pairs.request(record)
        if matched:
            return Shown(record)
        if isinstance(record.event, Bound):
            return Shown(record, visible=False)
        return None

    def unanswered(self) -> list[Record]:
        """Matched IQ requests that never got a reply (empty without pairing)."""
        return self.pairs.unanswered() if self.pairs is not None else []
