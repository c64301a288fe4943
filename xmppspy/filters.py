"""Which records a person wants to see: ``--kind`` and ``--type`` for now.

Same flag repeated means *or*; different flags mean *and*. Filters decide what is shown, never
what is relayed or recorded.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from xmppspy.events import (
    Bound,
    Connected,
    Disconnected,
    Event,
    Keepalive,
    Kind,
    Opaque,
    ParseError,
    Record,
    Stanza,
    StreamClosed,
    StreamOpened,
    TlsStarted,
)

Predicate = Callable[[Record], bool]

EVENT_KINDS: dict[type, tuple[str, ...]] = {
    StreamOpened: ("header",),
    StreamClosed: ("close",),
    Keepalive: ("keepalive",),
    ParseError: ("parse-error",),
    Opaque: ("opaque",),
    TlsStarted: ("tls", "tls-started"),
    Bound: ("bound",),
    Connected: ("connect",),
    Disconnected: ("disconnect",),
}
"""Kind names of events that are not stanzas."""


def _stanza_names(kind: Kind) -> tuple[str, ...]:
    group, _, local = kind.value.partition(":")
    return (kind.value, group, local) if local else (kind.value,)


STANZA_KINDS: dict[Kind, tuple[str, ...]] = {kind: _stanza_names(kind) for kind in Kind}
"""Each stanza kind answers to its full name (``sasl:auth``), group (``sasl``) and local name."""

KIND_NAMES: frozenset[str] = frozenset(
    name for names in (*STANZA_KINDS.values(), *EVENT_KINDS.values()) for name in names
)

TYPE_DEFAULTS = {Kind.MESSAGE: "normal", Kind.PRESENCE: "available"}
"""RFC 6120: a message without ``type`` is ``normal``; a presence without one is available."""

KNOWN_TYPES = frozenset(
    {
        "chat", "error", "groupchat", "headline", "normal",
        "available", "probe", "subscribe", "subscribed", "unavailable", "unsubscribe",
        "unsubscribed", "get", "set", "result",
    }
)  # fmt: skip


class FilterError(ValueError):
    """A filter a person wrote that cannot work; the message says what would."""


def kind_names(event: Event) -> tuple[str, ...]:
    if isinstance(event, Stanza):
        return STANZA_KINDS[event.kind]
    return EVENT_KINDS[type(event)]


def stanza_type(stanza: Stanza) -> str | None:
    """The stanza's ``type``, or the RFC 6120 default where it has none."""
    return stanza.type if stanza.type is not None else TYPE_DEFAULTS.get(stanza.kind)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Filter:
    kinds: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def __call__(self, record: Record) -> bool:
        event = record.event
        if self.kinds and self.kinds.isdisjoint(kind_names(event)):
            return False
        return not self.types or (isinstance(event, Stanza) and stanza_type(event) in self.types)


def make_filter(kinds: Iterable[str] = (), types: Iterable[str] = ()) -> Filter:
    """Check the words a person gave and build the predicate; raises ``FilterError``."""
    kinds, types = frozenset(kinds), frozenset(types)
    for kind in sorted(kinds - KIND_NAMES):
        raise FilterError(
            f"unknown kind {kind!r}{_suggest(kind, KIND_NAMES)}; "
            f"kinds are: {', '.join(sorted(KIND_NAMES))}"
        )
    for type_ in sorted(types - KNOWN_TYPES):
        raise FilterError(
            f"unknown type {type_!r}{_suggest(type_, KNOWN_TYPES)}; "
            f"types are: {', '.join(sorted(KNOWN_TYPES))}"
        )
    return Filter(kinds, types)
