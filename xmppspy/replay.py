"""Client replay, sans-IO: what to send again, how to rewrite it, and how the replies compare.

A plan takes one connection of a capture: the client's stanzas after its resource was bound
(message, presence, iq), and the server's stanzas of the same period, which are what the
replay expects back. Stanzas are rewritten on their bytes (only the ``from``/``to`` attribute
values of the top-level start tag change), so that everything else goes out as recorded.

The comparison is IQ by IQ (matched by ``id``) and, for messages, presences and IQ requests
from the server, in order by kind, type and (mapped) sender.
"""

from __future__ import annotations

import copy
import difflib
import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, unescape

from lxml import etree

from xmppspy.events import Bound, Direction, Kind, Record, Stanza
from xmppspy.parser import START_TAG

STANZA_KINDS = (Kind.MESSAGE, Kind.PRESENCE, Kind.IQ)
DIFF_LINES = 12
"""Lines of a payload diff shown per differing reply."""
_ADDRESS = re.compile(rb"""(\s)(from|to)(\s*=\s*)(?:"([^"]*)"|'([^']*)')""")
_QUOTES = {'"': "&quot;", "'": "&apos;"}
_UNQUOTES = {"&quot;": '"', "&apos;": "'"}


class ReplayError(Exception):
    """The replay cannot be planned; the message says why, for a person."""


# -- JIDs -----------------------------------------------------------------------------------------


def _bare(jid: str) -> str:
    return jid.partition("/")[0]


def _domain(jid: str) -> str:
    return _bare(jid).rpartition("@")[2]


def parse_maps(texts: Iterable[str]) -> dict[str, str]:
    """``--map OLD=NEW`` options as a dict; raises ``ReplayError`` for a malformed one."""
    maps: dict[str, str] = {}
    for text in texts:
        old, sep, new = text.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new or "=" in new:
            raise ReplayError(f"--map {text!r}: write OLD=NEW, e.g. bob@example.org=bob@test.org")
        maps[old] = new
    return maps


@dataclass(frozen=True)
class JidMap:
    """Which JID becomes which: the recorded account to the replaying one, and ``--map``."""

    old_jid: str
    new_jid: str
    extra: dict[str, str] = field(default_factory=dict)

    def __call__(self, jid: str) -> str:
        """The JID to use instead of ``jid`` (itself when nothing maps it)."""
        if jid in self.extra:
            return self.extra[jid]
        bare, slash, resource = jid.partition("/")
        if slash and bare in self.extra and "/" not in self.extra[bare]:
            return f"{self.extra[bare]}/{resource}"
        if jid == self.old_jid:
            return self.new_jid
        if bare == _bare(self.old_jid):
            return _bare(self.new_jid) + (slash + resource if jid != bare else "")
        old_domain, new_domain = _domain(self.old_jid), _domain(self.new_jid)
        if jid == old_domain and old_domain != new_domain:
            return new_domain
        return jid


@dataclass(frozen=True)
class Rewrite:
    attribute: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.attribute}: {self.old} → {self.new}"


def rewrite(raw: bytes, jids: Callable[[str], str]) -> tuple[bytes, list[Rewrite]]:
    """The stanza's bytes with its top-level ``from`` and ``to`` mapped; and what changed."""
    tag = START_TAG.match(raw)
    if tag is None:
        return raw, []
    changes: list[Rewrite] = []

    def replace(match: re.Match[bytes]) -> bytes:
        double = match.group(4) is not None
        quote = '"' if double else "'"
        value = unescape((match.group(4) if double else match.group(5)).decode(), _UNQUOTES)
        new = jids(value)
        if new == value:
            return match.group(0)
        attribute = match.group(2).decode()
        changes.append(Rewrite(attribute, value, new))
        escaped = escape(new, {quote: _QUOTES[quote]})
        return (
            match.group(1) + match.group(2) + match.group(3) + f"{quote}{escaped}{quote}".encode()
        )

    start = _ADDRESS.sub(replace, raw[: tag.end()])
    return start + raw[tag.end() :], changes


# -- the plan -----------------------------------------------------------------------------------


@dataclass
class Plan:
    conn: str
    jid: str
    """The full JID the recorded connection was bound to."""
    sends: list[Record]
    """Client stanzas to send again, in order."""
    expected: list[Stanza]
    """Server stanzas recorded in the same period: the replies to compare with."""

    @property
    def resource(self) -> str | None:
        _, slash, resource = self.jid.partition("/")
        return resource if slash else None


def choose_connection(
    records: Sequence[Record], keep: Callable[[Record], bool] = lambda _: True
) -> str:
    """The connection to replay: the only one with stanzas the filter keeps.

    ``--conn`` is the ordinary filter flag; without it a capture of several connections is
    refused with a ``ReplayError`` that lists them.
    """
    conns = list(dict.fromkeys(record.conn for record in records))
    kept = list(dict.fromkeys(r.conn for r in records if isinstance(r.event, Stanza) and keep(r)))
    if len(kept) == 1:
        return kept[0]
    if not kept:
        raise ReplayError(
            "no stanza of the capture matches the filters"
            if conns
            else "the capture holds no connection"
        )
    bound = {r.conn: r.event.jid for r in records if isinstance(r.event, Bound)}
    which = ", ".join(f"{c} ({bound[c]})" if c in bound else c for c in kept)
    raise ReplayError(
        f"the capture holds {len(kept)} connections: choose one with --conn ({which})"
    )


def make_plan(records: Sequence[Record], keep: Callable[[Record], bool]) -> Plan:
    """The stanzas of one connection to send again and to expect back.

    ``keep`` is the filter: only the records it selects are sent or expected.
    """
    chosen = choose_connection(records, keep)
    jid: str | None = None
    sends: list[Record] = []
    expected: list[Stanza] = []
    for record in records:
        if record.conn != chosen:
            continue
        event = record.event
        if isinstance(event, Bound):
            jid = event.jid
            continue
        if jid is None or not isinstance(event, Stanza) or event.kind not in STANZA_KINDS:
            continue
        if not keep(record):
            continue
        if event.dir is Direction.C2S:
            sends.append(record)
        else:
            expected.append(event)
    if jid is None:
        raise ReplayError(
            f"connection {chosen} never bound a resource in the capture: there is nothing to "
            "replay (was it recorded from the start, without TLS?)"
        )
    return Plan(chosen, jid, sends, expected)


# -- the comparison -----------------------------------------------------------------------------


class Status(enum.Enum):
    MATCH = "match"
    DIFFER = "differ"
    MISSING = "missing"
    NEW = "new"


@dataclass(frozen=True)
class Outcome:
    status: Status
    what: str
    detail: str = ""


def _requests(sent: Iterable[Stanza]) -> dict[str, Stanza]:
    return {
        s.id: s for s in sent if s.kind is Kind.IQ and s.type in ("get", "set") and s.id is not None
    }


def _is_reply(stanza: Stanza, requests: dict[str, Stanza]) -> bool:
    return stanza.kind is Kind.IQ and stanza.type in ("result", "error") and stanza.id in requests


def _is_reply_like(stanza: Stanza) -> bool:
    return stanza.kind is Kind.IQ and stanza.type in ("result", "error")


class Progress:
    """Tells the driver when every reply that can be expected has arrived."""

    def __init__(self, sent: Sequence[Stanza], expected: Sequence[Stanza]) -> None:
        self._waiting = set(_requests(sent))
        self._others = sum(1 for s in expected if not _is_reply_like(s))

    def received(self, stanza: Stanza) -> None:
        if _is_reply_like(stanza) and stanza.id in self._waiting:
            self._waiting.discard(stanza.id)
        elif not _is_reply_like(stanza):
            self._others -= 1

    @property
    def done(self) -> bool:
        return not self._waiting and self._others <= 0


def _label(stanza: Stanza) -> str:
    payload = stanza.child or ""
    if payload.startswith("{"):
        namespace, _, local = payload[1:].partition("}")
        payload = f"{local} ({namespace})"
    return f"iq {stanza.type} {payload} id={stanza.id}".replace("  ", " ")


def _normal(stanza: Stanza) -> list[str]:
    """The stanza as indented XML lines, without from/to/id, whitespace-only text or unused
    namespace declarations: what two servers' equivalent replies have in common."""
    try:
        element = copy.deepcopy(stanza.element)
    except ValueError:
        return stanza.raw.decode("utf-8", "replace").splitlines()
    for name in ("from", "to", "id"):
        element.attrib.pop(name, "")
    for node in element.iter():
        if node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
    etree.cleanup_namespaces(element)
    etree.indent(element, space="  ")
    return etree.tostring(element, encoding="unicode").splitlines()


def _error_condition(stanza: Stanza) -> str:
    try:
        element = stanza.element
    except ValueError:
        return "?"
    for error in element:
        if isinstance(error.tag, str) and etree.QName(error).localname == "error":
            for child in error:
                if isinstance(child.tag, str) and etree.QName(child).localname != "text":
                    return etree.QName(child).localname
    return "no condition"


def _what_type(stanza: Stanza) -> str:
    return f"error ({_error_condition(stanza)})" if stanza.type == "error" else str(stanza.type)


def _diff(expected: Stanza, actual: Stanza) -> str | None:
    if expected.type != actual.type:
        return f"recorded {_what_type(expected)}, got {_what_type(actual)}"
    before, after = _normal(expected), _normal(actual)
    if before == after:
        return None
    lines = [
        line
        for line in difflib.unified_diff(before, after, lineterm="", n=0)
        if not line.startswith(("---", "+++", "@@"))
    ]
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"… {len(lines) - DIFF_LINES} more lines differ"]
    return "\n".join(lines)


def compare(
    sent: Sequence[Stanza],
    expected: Sequence[Stanza],
    actual: Sequence[Stanza],
    jids: Callable[[str], str],
) -> list[Outcome]:
    """Recorded replies (``expected``) against the live ones (``actual``) to what was ``sent``."""
    requests = _requests(sent)
    recorded = {s.id: s for s in expected if _is_reply(s, requests)}
    live = {s.id: s for s in actual if _is_reply(s, requests)}
    outcomes: list[Outcome] = []
    for id_, request in requests.items():
        what = _label(request)
        before, after = recorded.get(id_), live.get(id_)
        if before is not None and after is not None:
            diff = _diff(before, after)
            if diff is None:
                outcomes.append(Outcome(Status.MATCH, what, _what_type(after)))
            else:
                outcomes.append(Outcome(Status.DIFFER, what, diff))
        elif before is not None:
            outcomes.append(
                Outcome(Status.MISSING, what, f"recorded {_what_type(before)}, no reply")
            )
        elif after is not None:
            outcomes.append(
                Outcome(Status.NEW, what, f"no reply recorded, got {_what_type(after)}")
            )

    def key(stanza: Stanza, mapped: bool) -> tuple[str, str | None, str | None]:
        sender = jids(stanza.from_) if mapped and stanza.from_ is not None else stanza.from_
        return stanza.kind.value, stanza.type, sender

    others_before = [s for s in expected if not _is_reply_like(s)]
    others_after = [s for s in actual if not _is_reply_like(s)]
    keys_before = [key(s, True) for s in others_before]
    keys_after = [key(s, False) for s in others_after]
    matcher = difflib.SequenceMatcher(a=keys_before, b=keys_after, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            outcomes += [Outcome(Status.MATCH, _describe(k)) for k in keys_after[b0:b1]]
            continue
        outcomes += [Outcome(Status.MISSING, _describe(k)) for k in keys_before[a0:a1]]
        outcomes += [Outcome(Status.NEW, _describe(k)) for k in keys_after[b0:b1]]
    return outcomes


def _describe(key: tuple[str, str | None, str | None]) -> str:
    kind, type_, sender = key
    parts = [kind]
    if type_ is not None:
        parts.append(f"type={type_}")
    parts.append(f"from {sender or '(server)'}")
    return " ".join(parts)


def all_match(outcomes: Iterable[Outcome]) -> bool:
    return all(outcome.status is Status.MATCH for outcome in outcomes)
