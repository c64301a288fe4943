"""Which records a person wants to see: atoms, an expression language, and the flags.

An *atom* tests one thing about a record (``kind:message``, ``from:alice@example.test``,
``ns:urn:xmpp:ping``). Atoms combine with ``and``, ``or``, ``not`` and parentheses; the command
line flags are the same atoms (``--from X`` is ``from:X``): the same flag repeated means *or*,
different flags mean *and*, ``--not-FLAG`` negates. The expression is parsed once into a tree
and compiled to a predicate; filters decide what is shown, never what is relayed.

The atom table below is the one source of the filter documentation (docs/filters.md is checked
against ``atoms_markdown()``).
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lxml import etree

from xmppspy.events import (
    Bound,
    Connected,
    Direction,
    Disconnected,
    Event,
    Keepalive,
    Kind,
    Notice,
    Opaque,
    ParseError,
    Record,
    Rewritten,
    Stanza,
    StreamClosed,
    StreamOpened,
    TlsStarted,
)
from xmppspy.namespaces import PREFIXES, STANZA_NAMESPACES

# -- what the atoms look at -----------------------------------------------------------------------

EVENT_KINDS: dict[type, tuple[str, ...]] = {
    StreamOpened: ("header",),
    StreamClosed: ("close",),
    Keepalive: ("keepalive",),
    ParseError: ("parse-error", "error"),
    Opaque: ("opaque",),
    TlsStarted: ("tls", "tls-started"),
    Bound: ("bound",),
    Rewritten: ("rewrite",),
    Notice: ("notice",),
    Connected: ("connect",),
    Disconnected: ("disconnect",),
}
"""Kind names of events that are not stanzas."""

_ERROR_KINDS = {Kind.STREAM_ERROR, Kind.SASL_FAILURE, Kind.TLS_FAILURE, Kind.SM_FAILED}


def _stanza_names(kind: Kind) -> tuple[str, ...]:
    group, _, local = kind.value.partition(":")
    names = (kind.value, group, local) if local else (kind.value,)
    return (*names, "error") if kind in _ERROR_KINDS else names


STANZA_KINDS: dict[Kind, tuple[str, ...]] = {kind: _stanza_names(kind) for kind in Kind}
"""Each stanza kind answers to its full name (``sasl:auth``), group (``sasl``) and local name
(``auth``); stream errors and failures also to ``error``."""

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


def kind_names(event: Event) -> tuple[str, ...]:
    if isinstance(event, Stanza):
        return STANZA_KINDS[event.kind]
    return EVENT_KINDS[type(event)]


def stanza_type(stanza: Stanza) -> str | None:
    """The stanza's ``type``, or the RFC 6120 default where it has none."""
    return stanza.type if stanza.type is not None else TYPE_DEFAULTS.get(stanza.kind)


class FilterError(ValueError):
    """A filter a person wrote that cannot work; the message says what would."""


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- connection context: who "no from" and "no to" are ---------------------------------------------


@dataclass
class _Peers:
    jid: str | None = None
    server: str | None = None


@dataclass
class Context:
    """What the records so far said about each connection, for atoms that need it.

    On a client stream a stanza without ``from`` comes from the connection's own JID (c2s) or
    from the server (s2c), and one without ``to`` goes to the server (c2s) or to the client
    (s2c), as RFC 6120 section 8.1 says; the bound JID and the server's domain come from the
    ``bound`` event and the stream headers.
    """

    peers: dict[str, _Peers] = field(default_factory=dict)

    def see(self, record: Record) -> None:
        event = record.event
        if isinstance(event, Bound):
            self.peers.setdefault(record.conn, _Peers()).jid = event.jid
        elif isinstance(event, StreamOpened):
            domain = event.to if event.dir is Direction.C2S else event.from_
            if domain:
                self.peers.setdefault(record.conn, _Peers()).server = domain

    def sender(self, conn: str, stanza: Stanza) -> str | None:
        if stanza.from_ is not None or stanza.kind not in _ADDRESSED:
            return stanza.from_
        peers = self.peers.get(conn)
        if peers is None:
            return None
        return peers.jid if stanza.dir is Direction.C2S else peers.server

    def recipient(self, conn: str, stanza: Stanza) -> str | None:
        if stanza.to is not None or stanza.kind not in _ADDRESSED:
            return stanza.to
        peers = self.peers.get(conn)
        if peers is None:
            return None
        return peers.server if stanza.dir is Direction.C2S else peers.jid


_ADDRESSED = (Kind.MESSAGE, Kind.PRESENCE, Kind.IQ)
"""Stanzas proper, which RFC 6120's implicit from and to apply to (not <r/>, <auth/>, ...)."""


# -- atoms ----------------------------------------------------------------------------------------

Test = Callable[[Record, Context], bool]


@dataclass(frozen=True)
class Atom:
    name: str
    metavar: str
    help: str
    compile: Callable[[str], Test]


def _kind(value: str) -> Test:
    value = value.lower()
    if value not in KIND_NAMES:
        raise FilterError(
            f"unknown kind {value!r}{_suggest(value, KIND_NAMES)}; "
            f"kinds are: {', '.join(sorted(KIND_NAMES))}"
        )
    # Resolved once to the stanza kinds and event types the name covers. Tuples: membership
    # tests identity first, where a set would call Enum's Python-level __hash__ every record.
    stanza_kinds = tuple(kind for kind, names in STANZA_KINDS.items() if value in names)
    event_types = tuple(cls for cls, names in EVENT_KINDS.items() if value in names)

    def test(record: Record, _: Context) -> bool:
        event = record.event
        if type(event) is Stanza:
            return event.kind in stanza_kinds
        return type(event) in event_types

    return test


def _type(value: str) -> Test:
    if value not in KNOWN_TYPES:
        raise FilterError(
            f"unknown type {value!r}{_suggest(value, KNOWN_TYPES)}; "
            f"types are: {', '.join(sorted(KNOWN_TYPES))}"
        )

    def test(record: Record, _: Context) -> bool:
        event = record.event
        return isinstance(event, Stanza) and stanza_type(event) == value

    return test


def _jid_matcher(pattern: str) -> Callable[[str | None], bool]:
    """A full JID matches itself, a bare JID every resource, a domain every JID at it.

    Local parts and domains compare case-insensitively (as after nodeprep and nameprep);
    resources exactly.
    """
    if not pattern or pattern.startswith(("@", "/")):
        raise FilterError(
            f"{pattern!r} is not a JID: write user@domain, user@domain/resource or domain"
        )
    bare, slash, resource = pattern.partition("/")
    bare = bare.lower()

    def matches(jid: str | None) -> bool:
        if jid is None:
            return False
        candidate_bare, candidate_slash, candidate_resource = jid.partition("/")
        candidate_bare = candidate_bare.lower()
        if slash:
            return (
                candidate_bare == bare and candidate_slash == "/" and candidate_resource == resource
            )
        if "@" in bare:
            return candidate_bare == bare
        return candidate_bare == bare or candidate_bare.endswith("@" + bare)

    return matches


def _addressed(value: str, side: Callable[[Context, str, Stanza], str | None]) -> Test:
    matches = _jid_matcher(value)

    def test(record: Record, context: Context) -> bool:
        event = record.event
        return isinstance(event, Stanza) and matches(side(context, record.conn, event))

    return test


def _from(value: str) -> Test:
    return _addressed(value, Context.sender)


def _to(value: str) -> Test:
    return _addressed(value, Context.recipient)


def _jid(value: str) -> Test:
    sender, recipient = _from(value), _to(value)
    return lambda record, context: sender(record, context) or recipient(record, context)


def _element(stanza: Stanza) -> etree._Element | None:
    try:
        return stanza.element
    except ValueError:
        return None


def _ns(value: str) -> Test:
    needle = value.encode()
    prefix = "{" + value + "}"

    def test(record: Record, _: Context) -> bool:
        event = record.event
        if not isinstance(event, Stanza):
            return False
        if event.name.startswith(prefix):
            return True  # a stream-level element (sasl, sm, ...) in that namespace
        if value in STANZA_NAMESPACES:
            return False  # every <body/> is in jabber:client: that is no payload
        # The namespace must be written in the stanza or its header: a cheap test first.
        if needle not in event.raw and needle not in event.context:
            return False
        element = _element(event)
        return element is not None and any(
            isinstance(child.tag, str) and child.tag.startswith(prefix)
            for child in element.iterdescendants()
        )

    return test


def _id(value: str) -> Test:
    def test(record: Record, _: Context) -> bool:
        event = record.event
        return isinstance(event, Stanza) and event.id == value

    return test


def _dir(value: str) -> Test:
    try:
        direction = Direction(value.lower())
    except ValueError:
        raise FilterError(f"direction {value!r}: write c2s or s2c") from None
    return lambda record, _: getattr(record.event, "dir", None) is direction


def _conn(value: str) -> Test:
    return lambda record, _: record.conn == value


def _grep(value: str) -> Test:
    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise FilterError(f"regular expression {value!r}: {exc}") from None

    def test(record: Record, _: Context) -> bool:
        raw = getattr(record.event, "raw", None)
        return raw is not None and pattern.search(raw.decode("utf-8", "replace")) is not None

    return test


def _xpath_true(result: object) -> bool:
    """XPath's boolean(): a number is true unless it is zero or NaN (Python's bool(nan) is True)."""
    if isinstance(result, float):
        return result == result and result != 0
    return bool(result)


def _xpath(value: str) -> Test:
    try:
        query = etree.XPath(value, namespaces=PREFIXES)
        query(etree.Element("probe"))  # an unknown prefix or function fails here, not silently
    except (etree.XPathSyntaxError, etree.XPathEvalError) as exc:
        raise FilterError(f"XPath {value!r}: {exc}") from None

    def test(record: Record, _: Context) -> bool:
        event = record.event
        if not isinstance(event, Stanza):
            return False
        element = _element(event)
        if element is None:
            return False
        # A copy of its own, so that "/" is the stanza, not the namespace wrapper it was read in.
        try:
            return _xpath_true(query(copy.deepcopy(element)))
        except etree.XPathEvalError:
            return False

    return test


ATOMS: dict[str, Atom] = {
    atom.name: atom
    for atom in (
        Atom("kind", "KIND", "events of this kind: message, presence, iq; a stream-level kind "
             "(stream:features, sasl:auth, tls:proceed, sm:r, ...) or its group (stream, sasl, "
             "tls, sm); error (stream errors, SASL/TLS/SM failures, parse errors); or an event "
             "that is not a stanza (header, close, keepalive, parse-error, opaque, "
             "tls-started, rewrite, notice, bound, connect, disconnect)", _kind),
        Atom("type", "TYPE", "stanzas of this type (chat, groupchat, get, set, result, error, "
             "unavailable, ...); a message without a type is normal, a presence without one "
             "available", _type),
        Atom("jid", "JID", "stanzas from or to this JID: a full JID matches itself, a bare JID "
             "all its resources, a domain every JID at it; on a client stream a message, "
             "presence or iq without from or to counts as from or to the connection's bound JID "
             "or the server", _jid),
        Atom("from", "JID", "stanzas from this JID (matched as for jid)", _from),
        Atom("to", "JID", "stanzas to this JID (matched as for jid)", _to),
        Atom("ns", "NAMESPACE", "elements in this namespace, or with a payload in it "
             "(urn:xmpp:ping, jabber:iq:roster, http://jabber.org/protocol/disco#info, ...; "
             "urn:ietf:params:xml:ns:xmpp-sasl is the SASL elements, jabber:client the client "
             "stanzas)", _ns),
        Atom("id", "ID", "stanzas with this id", _id),
        Atom("dir", "DIR", "events in this direction: c2s (client to server) or s2c", _dir),
        Atom("conn", "ID", "events of this connection (c1, c2, ...)", _conn),
        Atom("grep", "REGEX", "events whose raw bytes match this regular expression (Python "
             "syntax, searched anywhere)", _grep),
        Atom("xpath", "EXPR", "stanzas on which this XPath expression is true (lxml; prefixes "
             + ", ".join(sorted(PREFIXES)) + ")", _xpath),
    )
}  # fmt: skip

_BARE_WORDS = {"c2s": ("dir", "c2s"), "s2c": ("dir", "s2c")}
"""Words that stand alone for an atom, besides the kind names."""


# -- the expression language ---------------------------------------------------------------


@dataclass(frozen=True)
class AtomNode:
    name: str
    value: str


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


Node = AtomNode | Not | And | Or


@dataclass(frozen=True)
class _Token:
    kind: str
    """``(``, ``)``, ``and``, ``or``, ``not``, ``word`` or ``end``."""
    text: str
    column: int


_OPERATORS = {"&": "and", "&&": "and", "|": "or", "||": "or", "!": "not"}
_KEYWORDS = {"and", "or", "not"}


def _tokens(text: str) -> list[_Token]:
    """Split an expression into tokens.

    ``&``, ``|`` and ``!`` are operators only where a token starts, so a value may hold them
    (``grep:a|b``). A value runs to the next space, or to a ``)`` that it did not open itself
    (``xpath:count(//x)>1``); a quoted value (``xpath:"//client:body[. = 'a b']"``) may hold
    spaces.
    """
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            tokens.append(_Token("end", "", i))
            return tokens
        if text[i] in "()":
            tokens.append(_Token(text[i], text[i], i))
            i += 1
            continue
        operator = text[i : i + 2] if text[i : i + 2] in _OPERATORS else text[i]
        if operator in _OPERATORS:
            tokens.append(_Token(_OPERATORS[operator], operator, i))
            i += len(operator)
            continue
        start, depth = i, 0
        while i < n and not text[i].isspace():
            char = text[i]
            if char in "\"'" and text[i - 1 : i] == ":":
                closing = _closing_quote(text, i)
                if closing is None:
                    raise _syntax(text, i, f"a closing {char}")
                i = closing + 1
                continue
            if char == "(":
                if ":" not in text[start:i]:
                    break  # "not(iq)": a keyword or kind name cannot hold a parenthesis
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            i += 1
        word = text[start:i]
        kind = word.lower() if word.lower() in _KEYWORDS else "word"
        tokens.append(_Token(kind, word, start))


def _closing_quote(text: str, opening: int) -> int | None:
    quote, i = text[opening], opening + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i
        i += 1
    return None


def _syntax(text: str, column: int, expected: str) -> FilterError:
    found = repr(text[column : column + 12]) if column < len(text) else "the end"
    return FilterError(f"expected {expected} at column {column + 1}, found {found}\n"
                       f"  {text}\n  {' ' * column}^")  # fmt: skip


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


class _Parser:
    """Recursive descent: or > and > not > primary; ``and`` binds tighter than ``or``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def parse(self) -> Node:
        node = self.or_()
        token = self.peek()
        if token.kind != "end":
            raise _syntax(self.text, token.column, "'and', 'or' or the end")
        return node

    def or_(self) -> Node:
        operands = [self.and_()]
        while self.peek().kind == "or":
            self.take()
            operands.append(self.and_())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_(self) -> Node:
        operands = [self.not_()]
        while self.peek().kind == "and":
            self.take()
            operands.append(self.not_())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_(self) -> Node:
        if self.peek().kind == "not":
            self.take()
            return Not(self.not_())
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "(":
            node = self.or_()
            closing = self.take()
            if closing.kind != ")":
                raise _syntax(self.text, closing.column, "')'")
            return node
        if token.kind == "word":
            return self.atom(token)
        raise _syntax(self.text, token.column, "an atom, 'not' or '('")

    def atom(self, token: _Token) -> AtomNode:
        word = token.text
        name, colon, value = word.partition(":")
        if colon and name.lower() in ATOMS:
            value = _unquote(value)
            if not value:
                raise _syntax(self.text, token.column + len(word), f"a value after '{name}:'")
            node = AtomNode(name.lower(), value)
        elif word.lower() in _BARE_WORDS:
            node = AtomNode(*_BARE_WORDS[word.lower()])
        elif word.lower() in KIND_NAMES:
            node = AtomNode("kind", word.lower())
        else:
            if colon:
                hint = _suggest(name.lower(), ATOMS)
            else:
                hint = _suggest(word, {*KIND_NAMES, *_BARE_WORDS, *(f"{n}:" for n in ATOMS)})
            raise FilterError(
                f"unknown atom {word!r} at column {token.column + 1}{hint}; "
                f"write NAME:VALUE with NAME one of {', '.join(ATOMS)}, or a kind\n"
                f"  {self.text}\n  {' ' * token.column}^"
            )
        try:
            ATOMS[node.name].compile(node.value)
        except FilterError as exc:
            raise FilterError(f"{exc}\n  {self.text}\n  {' ' * token.column}^") from None
        return node


def parse(text: str) -> Node:
    """The syntax tree of a filter expression; raises ``FilterError`` pointing at the column."""
    return _Parser(text).parse()


def _compile(node: Node) -> Test:
    match node:
        case AtomNode(name, value):
            return ATOMS[name].compile(value)
        case Not(operand):
            inner = _compile(operand)
            return lambda record, context: not inner(record, context)
        case And(operands):
            every = tuple(_compile(operand) for operand in operands)

            # Plain loops, not all()/any() over a generator: this runs for every record.
            def all_of(record: Record, context: Context) -> bool:
                for test in every:  # noqa: SIM110
                    if not test(record, context):
                        return False
                return True

            return all_of
        case Or(operands):
            some = tuple(_compile(operand) for operand in operands)

            def any_of(record: Record, context: Context) -> bool:
                for test in some:  # noqa: SIM110
                    if test(record, context):
                        return True
                return False

            return any_of


class Filter:
    """A compiled filter. Call it on every record in order: it learns each connection's JIDs."""

    def __init__(self, tree: Node | None) -> None:
        self.tree = tree
        self._test = _compile(tree) if tree is not None else None
        self.context = Context()

    def __call__(self, record: Record) -> bool:
        if type(record.event) in _CONTEXT_EVENTS:
            self.context.see(record)
        return self._test is None or self._test(record, self.context)


_CONTEXT_EVENTS = frozenset({Bound, StreamOpened})
"""Events that tell the filter who a connection's peers are."""


def from_flags(flags: Sequence[tuple[str, bool, str]]) -> Node | None:
    """The tree for command-line flags: ``(atom, negated, value)`` each.

    The same flag repeated is *or*; different flags are *and*; each ``--not-X`` value is
    *and not*.
    """
    groups: dict[str, list[Node]] = {}
    negated: list[Node] = []
    for name, negate, value in flags:
        node = AtomNode(name, value)
        if negate:
            negated.append(Not(node))
        else:
            groups.setdefault(name, []).append(node)
    parts: list[Node] = [
        nodes[0] if len(nodes) == 1 else Or(tuple(nodes)) for nodes in groups.values()
    ]
    parts += negated
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def make_filter(
    flags: Sequence[tuple[str, bool, str]] = (), expression: str | None = None
) -> Filter:
    """Flags and an expression, combined with *and*; raises ``FilterError`` for a person."""
    for name, _, value in flags:
        ATOMS[name].compile(value)
    parts = [
        node for node in (from_flags(flags), parse(expression) if expression else None) if node
    ]
    if not parts:
        return Filter(None)
    return Filter(parts[0] if len(parts) == 1 else And(tuple(parts)))


def atoms_markdown() -> str:
    """The table of atoms for docs/filters.md, from the registry itself."""
    lines = ["| atom | flag | matches |", "| --- | --- | --- |"]
    for atom in ATOMS.values():
        flag = f"`--{atom.name} {atom.metavar}`, `--not-{atom.name} {atom.metavar}`"
        lines.append(f"| `{atom.name}:{atom.metavar}` | {flag} | {atom.help} |")
    return "\n".join(lines) + "\n"
