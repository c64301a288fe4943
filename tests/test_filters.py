"""Filters as a person uses them: atoms, the expression language, flags, IQ pairing, the CLI.

Every record below is real: built by feeding realistic bytes (tests/streams.py) through
``Session``, or read from ``captures/prosody-chat.jsonl``, a session recorded against Prosody
(alice on ``c1`` and bob on ``c2`` at ``example.test`` chat, fetch rosters and ping).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
import streams as s
from hypothesis import given, settings
from hypothesis import strategies as st
from test_capture import session_records, write
from typer.testing import CliRunner

from xmppspy.capture import open_capture
from xmppspy.cli import app
from xmppspy.events import (
    Bound,
    Connected,
    Direction,
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
from xmppspy.filters import (
    KIND_NAMES,
    And,
    AtomNode,
    FilterError,
    Node,
    Not,
    Or,
    make_filter,
    parse,
)
from xmppspy.selection import Selector, Shown
from xmppspy.session import Session

C2S, S2C = Direction.C2S, Direction.S2C
Script = Sequence[tuple[Direction, bytes]]
Flags = Sequence[tuple[str, bool, str]]

CAPTURE = Path(__file__).resolve().parent.parent / "captures" / "prosody-chat.jsonl"


def play(script: Script, *, conn: str = "c1", t0: float = 100.0) -> list[Record]:
    """Records as the relay makes them: connect, the session's events, disconnect."""
    session = Session()
    records = [Record(t0, conn, Connected("127.0.0.1:40000", "localhost:5222"))]
    t = t0
    for direction, data in script:
        t += 1.0
        records += [Record(t, conn, event) for event in session.feed(direction, data)]
    records.append(Record(t + 1.0, conn, Disconnected("closed by both sides", 1, 1, 1, 1, None)))
    return records


def read_capture(path: Path = CAPTURE) -> list[Record]:
    with open_capture(path) as reader:
        return list(reader)


PROSODY = read_capture()
"""c1: alice@example.test/xmppspy-alice, c2: bob@example.test/xmppspy-bob."""

LOGIN = play(s.LOGIN)
"""juliet@localhost/balcony logs in, binds, gets her roster, chats with romeo, pings, leaves."""
AUTH_REDACTED = next(
    r.event.raw for r in LOGIN if isinstance(r.event, Stanza) and r.event.kind is Kind.SASL_AUTH
)

# -- more of juliet's session, after the same login -------------------------------------------

DISCO_GET = b'<iq type="get" to="localhost" id="d1"><query xmlns="http://jabber.org/protocol/disco#info" /></iq>'
DISCO_RESULT = (
    b"<iq type='result' from='localhost' to='juliet@localhost/balcony' id='d1'>"
    b"<query xmlns='http://jabber.org/protocol/disco#info'>"
    b"<identity type='im' name='Prosody' category='server'/>"
    b"<feature var='urn:xmpp:ping'/><feature var='jabber:iq:roster'/>"
    b"<feature var='urn:xmpp:carbons:2'/></query></iq>"
)
NORMAL_NO_TYPE = (
    b"<message from='romeo@localhost/orchard' to='juliet@localhost/balcony' id='n1'>"
    b"<body>Meet me in the orchard</body></message>"
)
NORMAL_TYPED = (
    b"<message type='normal' from='nurse@localhost/kitchen' to='juliet@localhost/balcony' id='n2'>"
    b"<subject>Dinner</subject><body>Come down, child</body></message>"
)
HEADLINE = (
    b"<message type='headline' from='localhost' to='juliet@localhost/balcony'>"
    b"<body>Server restarting at midnight</body></message>"
)
CARBON = (
    b"<message from='juliet@localhost' to='juliet@localhost/balcony' type='chat'>"
    b"<received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
    b"<message xmlns='jabber:client' from='romeo@localhost/orchard' to='juliet@localhost/phone'"
    b" type='chat' id='c9'><body>Are you there?</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    b"</forwarded></received></message>"
)
CSI_INACTIVE = b'<inactive xmlns="urn:xmpp:csi:0" />'
SUBSCRIBE = b'<presence to="nurse@localhost" type="subscribe" />'
ROMEO_LEAVES = (
    b"<presence from='romeo@localhost/orchard' to='juliet@localhost/balcony' type='unavailable'/>"
)
VERSION_GET = (
    b'<iq type="get" to="romeo@localhost/orchard" id="v1"><query xmlns="jabber:iq:version" /></iq>'
)
VERSION_ERROR = (
    b"<iq type='error' from='romeo@localhost/orchard' to='juliet@localhost/balcony' id='v1'>"
    b"<query xmlns='jabber:iq:version'/><error type='cancel'>"
    b"<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
)
TYPELESS_IQ = b'<iq id="t1" to="localhost"><ping xmlns="urn:xmpp:ping" /></iq>'
"""Not a valid IQ (no type), but clients do send them; the server answers bad-request."""
TYPELESS_IQ_ERROR = (
    b"<iq type='error' from='localhost' to='juliet@localhost/balcony' id='t1'>"
    b"<ping xmlns='urn:xmpp:ping'/><error type='modify'>"
    b"<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
)
ROSTER_PUSH = (
    b"<iq type='set' id='push1'><q:query xmlns:q='jabber:iq:roster' ver='4'>"
    b"<q:item jid='nurse@localhost' subscription='none' ask='subscribe'/></q:query></iq>"
)
"""A roster push with no from and no to, its payload under a prefix."""
MENTIONS_NAMESPACES = (
    b'<message to="romeo@localhost" type="chat" id="m3">'
    b"<body>see jabber:iq:roster and urn:xmpp:ping</body></message>"
)

MORE: Script = (
    *s.LOGIN[:12],  # up to and including the bind result
    (C2S, DISCO_GET),
    (S2C, DISCO_RESULT),
    (S2C, NORMAL_NO_TYPE),
    (S2C, NORMAL_TYPED),
    (S2C, HEADLINE),
    (S2C, CARBON),
    (C2S, CSI_INACTIVE),
    (C2S, SUBSCRIBE),
    (S2C, ROMEO_LEAVES),
    (C2S, VERSION_GET),
    (S2C, VERSION_ERROR),
    (C2S, TYPELESS_IQ),
    (S2C, TYPELESS_IQ_ERROR),
    (S2C, ROSTER_PUSH),
    (C2S, MENTIONS_NAMESPACES),
    (C2S, s.CLOSE),
    (S2C, s.CLOSE),
)
EXTRA = play(MORE)

# -- sessions that fail ------------------------------------------------------------------------

SASL_FAILURE = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
NOT_WELL_FORMED = (
    b"<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
)
TLS_FAILURE = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
SM_RESUME = b'<resume xmlns="urn:xmpp:sm:3" h="5" previd="b35827ef-87dd-4b31-84c4-7a3a244b2f3e" />'
SM_FAILED = (
    b"<failed xmlns='urn:xmpp:sm:3' h='5'>"
    b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
)
ERRORS = [
    # wrong password, then bytes that are not XML, and the server gives up
    *play(
        (
            *s.LOGIN[:5],
            (S2C, SASL_FAILURE),
            (C2S, b"<message to='romeo@localhost'><body>fish & chips</body></message>"),
            (S2C, NOT_WELL_FORMED + s.CLOSE),
            (C2S, s.CLOSE),  # after a parse error: relayed, not parsed
        ),
        conn="c1",
    ),
    # the server cannot do TLS
    *play(
        (
            *s.STARTTLS_SESSION[:5],
            (S2C, TLS_FAILURE + s.CLOSE),
        ),
        conn="c2",
    ),
    # a resumption the server no longer knows, then a fresh bind
    *play(
        (
            *s.LOGIN[:10],
            (C2S, SM_RESUME),
            (S2C, SM_FAILED),
            (C2S, s.BIND_SET),
            (S2C, s.BIND_RESULT),
            (C2S, s.CLOSE),
            (S2C, s.CLOSE),
        ),
        conn="c3",
    ),
]
TLS = play(s.STARTTLS_SESSION)

# -- what a test looks at ----------------------------------------------------------------------

EVENT_NAMES: dict[type, str] = {
    StreamOpened: "header",
    StreamClosed: "close",
    Keepalive: "keepalive",
    ParseError: "parse-error",
    Opaque: "opaque",
    TlsStarted: "tls-started",
    Bound: "bound",
    Connected: "connect",
    Disconnected: "disconnect",
}


def label(record: Record) -> str:
    """``c2s iq get``, ``s2c sasl:success``, ``s2c bound``, ``connect``."""
    event: Event = record.event
    if isinstance(event, Stanza):
        what = event.kind.value + (f" {event.type}" if event.type else "")
    else:
        what = EVENT_NAMES[type(event)]
    direction = getattr(event, "dir", None)
    return f"{direction.value} {what}" if direction else what


def select(expression: str | None, records: Sequence[Record], flags: Flags = ()) -> list[Record]:
    """The records a filter shows, evaluated in order as the proxy and replay do."""
    keep = make_filter(flags, expression)
    return [record for record in records if keep(record)]


def labels(expression: str | None, records: Sequence[Record], flags: Flags = ()) -> list[str]:
    return [label(record) for record in select(expression, records, flags)]


def raws(expression: str | None, records: Sequence[Record] = LOGIN, flags: Flags = ()) -> list:
    """The wire bytes of what is shown (the event's name for events without bytes)."""
    return [getattr(r.event, "raw", None) or label(r) for r in select(expression, records, flags)]


def stanza_raws(expression: str, records: Sequence[Record] = LOGIN) -> list[bytes]:
    """Like ``raws``, for message, presence and iq only (the stanzas RFC 6120 addresses)."""
    return [
        r.event.raw
        for r in select(expression, records)
        if isinstance(r.event, Stanza) and r.event.kind in (Kind.MESSAGE, Kind.PRESENCE, Kind.IQ)
    ]


def indices(expression: str, records: Sequence[Record] = PROSODY) -> list[int]:
    keep = make_filter((), expression)
    return [i for i, record in enumerate(records) if keep(record)]


def test_the_fixtures_are_what_the_tests_assume() -> None:
    """Guards against a silently changed transcript making the exact expectations below moot."""
    assert [label(r) for r in LOGIN].count("s2c bound") == 1
    assert next(r.event.jid for r in LOGIN if isinstance(r.event, Bound)) == s.FULL_JID
    assert len(PROSODY) == 48
    assert {r.event.jid for r in PROSODY if isinstance(r.event, Bound)} == {
        "alice@example.test/xmppspy-alice",
        "bob@example.test/xmppspy-bob",
    }
    assert [label(r) for r in ERRORS if "error" in label(r) or "fail" in label(r)] == [
        "s2c sasl:failure",
        "c2s parse-error",
        "s2c stream:error",
        "s2c tls:failure",
        "s2c sm:failed",
    ]


# == 1. atoms ===================================================================================

# -- kind --------------------------------------------------------------------------------------

SM_LABELS = ["c2s sm:enable", "s2c sm:enabled", "c2s sm:r", "s2c sm:a", "s2c sm:r", "c2s sm:a"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # full names
        ("kind:sasl:auth", ["c2s sasl:auth"]),
        ("sasl:success", ["s2c sasl:success"]),
        ("stream:features", ["s2c stream:features"] * 2),
        ("kind:sm:r", ["c2s sm:r", "s2c sm:r"]),
        # groups
        ("sasl", ["c2s sasl:auth", "s2c sasl:success"]),
        ("kind:sm", SM_LABELS),
        ("stream", ["s2c stream:features"] * 2),
        # local names
        ("auth", ["c2s sasl:auth"]),
        ("success", ["s2c sasl:success"]),
        ("features", ["s2c stream:features"] * 2),
        ("enabled", ["s2c sm:enabled"]),
        ("a", ["s2c sm:a", "c2s sm:a"]),
        # stanzas
        ("message", ["s2c message chat", "c2s message chat"]),
        ("presence", ["c2s presence", "s2c presence", "s2c presence"]),
        (
            "kind:iq",
            [
                "c2s iq set",
                "s2c iq result",
                "c2s iq get",
                "s2c iq result",
                "c2s iq get",
                "s2c iq result",
            ],
        ),
        # events that are not stanzas
        ("header", ["c2s header", "s2c header"] * 2),
        ("close", ["c2s close", "s2c close"]),
        ("keepalive", ["c2s keepalive", "s2c keepalive", "c2s keepalive"]),
        ("bound", ["s2c bound"]),
        ("connect", ["connect"]),
        ("disconnect", ["disconnect"]),
        # a clean session has no errors of any kind
        ("error", []),
        ("kind:parse-error", []),
    ],
)
def test_kind(expression: str, expected: list[str]) -> None:
    assert labels(expression, LOGIN) == expected


def test_kind_error_is_every_stream_error_failure_and_parse_error() -> None:
    shown = [(r.conn, label(r)) for r in select("kind:error", ERRORS)]
    assert shown == [
        ("c1", "s2c sasl:failure"),
        ("c1", "c2s parse-error"),
        ("c1", "s2c stream:error"),
        ("c2", "s2c tls:failure"),
        ("c3", "s2c sm:failed"),
    ]
    # an IQ of type error is an error *stanza*, which type:error finds, not kind:error
    assert raws("kind:error", EXTRA) == []
    assert raws("type:error", EXTRA) == [VERSION_ERROR, TYPELESS_IQ_ERROR]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("failure", [("c1", "s2c sasl:failure"), ("c2", "s2c tls:failure")]),
        ("failed", [("c3", "s2c sm:failed")]),
        ("sasl:failure", [("c1", "s2c sasl:failure")]),
        ("parse-error", [("c1", "c2s parse-error")]),
        ("stream:error", [("c1", "s2c stream:error")]),
        ("opaque", [("c1", "c2s opaque")]),
        ("sm:resume", [("c3", "c2s sm:resume")]),
    ],
)
def test_kinds_of_failing_sessions(expression: str, expected: list[tuple[str, str]]) -> None:
    assert [(r.conn, label(r)) for r in select(expression, ERRORS)] == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("tls-started", ["s2c tls-started"]),
        ("kind:tls", ["c2s tls:starttls", "s2c tls:proceed", "s2c tls-started"]),
        ("starttls", ["c2s tls:starttls"]),
        ("tls:proceed", ["s2c tls:proceed"]),
        ("opaque", ["c2s opaque", "s2c opaque"]),
        ("close", []),  # the </stream:stream> in the encrypted bytes is not a close
        ("message", []),  # nor is the <message> in them a message
    ],
)
def test_kinds_after_starttls(expression: str, expected: list[str]) -> None:
    assert labels(expression, TLS) == expected


def test_kind_other_is_a_top_level_element_xmppspy_does_not_know() -> None:
    assert raws("other", EXTRA) == [CSI_INACTIVE]


# -- type --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("type:normal", [NORMAL_NO_TYPE, NORMAL_TYPED]),  # no type is normal (RFC 6120 8.2.1)
        ("type:headline", [HEADLINE]),
        ("type:chat", [CARBON, MENTIONS_NAMESPACES]),
        ("type:subscribe", [SUBSCRIBE]),
        ("type:unavailable", [ROMEO_LEAVES]),
        ("type:available", []),
        ("type:get", [DISCO_GET, VERSION_GET]),
        ("type:set", [s.BIND_SET, ROSTER_PUSH]),
        ("type:result", [s.BIND_RESULT, DISCO_RESULT]),
        ("type:error", [VERSION_ERROR, TYPELESS_IQ_ERROR]),
    ],
)
def test_type(expression: str, expected: list[bytes]) -> None:
    assert raws(expression, EXTRA) == expected


def test_a_presence_without_type_is_available() -> None:
    assert raws("type:available") == [s.PRESENCE, s.PRESENCE_SELF, s.PRESENCE_ROMEO]
    assert raws("presence and not type:available", EXTRA) == [SUBSCRIBE, ROMEO_LEAVES]


@pytest.mark.parametrize(
    "value",
    [
        "chat", "error", "groupchat", "headline", "normal", "available", "probe", "subscribe",
        "subscribed", "unavailable", "unsubscribe", "unsubscribed", "get", "set", "result",
    ],
)  # fmt: skip
def test_an_iq_without_type_has_no_type_at_all(value: str) -> None:
    assert TYPELESS_IQ not in raws(f"type:{value}", EXTRA)
    # and nothing that is not a message, presence or iq has a type
    assert labels(f"type:{value} and not (message or presence or iq)", EXTRA + ERRORS) == []


# -- jid, from, to -----------------------------------------------------------------------------

JULIET_SENDS = [s.ROSTER_GET, s.PRESENCE, s.PRESENCE_SELF, s.MESSAGE_OUT, s.PING]
"""What juliet sends once bound (her c2s stanzas carry no from), and her presence coming back."""


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("from:juliet@localhost/balcony", JULIET_SENDS),
        ("from:juliet@localhost", JULIET_SENDS),
        ("from:JULIET@LocalHost/balcony", JULIET_SENDS),
        ("from:Juliet@localhost", JULIET_SENDS),
        ("from:juliet@localhost/Balcony", []),  # resources are case-sensitive
        ("from:juliet@localhost/balc", []),
        ("from:romeo@localhost/orchard", [s.PRESENCE_ROMEO, s.MESSAGE_IN]),
        ("from:romeo@localhost", [s.PRESENCE_ROMEO, s.MESSAGE_IN]),
        ("from:romeo@localhost/garden", []),
        ("from:nurse@localhost", []),
        # the domain: every JID at it, and the server itself (an s2c stanza without from,
        # the pong's from='localhost'); not the bind request, sent before juliet was bound
        (
            "from:localhost",
            [
                s.BIND_RESULT,
                s.ROSTER_GET,
                s.ROSTER_RESULT,
                s.PRESENCE,
                s.PRESENCE_SELF,
                s.PRESENCE_ROMEO,
                s.MESSAGE_IN,
                s.MESSAGE_OUT,
                s.PING,
                s.PONG,
            ],
        ),
        ("from:LOCALHOST", stanza_raws("from:localhost")),
        ("from:host", []),  # a domain is matched whole
        ("from:calhost", []),
        ("to:romeo@localhost", [s.MESSAGE_OUT]),
        ("to:romeo@localhost/orchard", []),  # a full JID does not match the bare JID
        # s2c stanzas addressed to juliet; the bind result has no to and comes before
        # the bound event, so it is not known to be hers
        (
            "to:juliet@localhost",
            [s.ROSTER_RESULT, s.PRESENCE_SELF, s.PRESENCE_ROMEO, s.MESSAGE_IN, s.PONG],
        ),
        # c2s stanzas without to go to the server (juliet's presence, the bind request)
        (
            "to:localhost",
            [
                s.BIND_SET,
                s.ROSTER_GET,
                s.ROSTER_RESULT,
                s.PRESENCE,
                s.PRESENCE_SELF,
                s.PRESENCE_ROMEO,
                s.MESSAGE_IN,
                s.MESSAGE_OUT,
                s.PING,
                s.PONG,
            ],
        ),
        ("jid:romeo@localhost", [s.PRESENCE_ROMEO, s.MESSAGE_IN, s.MESSAGE_OUT]),
        ("jid:romeo@localhost/orchard", [s.PRESENCE_ROMEO, s.MESSAGE_IN]),
        (
            "jid:juliet@localhost/balcony",
            [
                s.ROSTER_GET,
                s.ROSTER_RESULT,
                s.PRESENCE,
                s.PRESENCE_SELF,
                s.PRESENCE_ROMEO,
                s.MESSAGE_IN,
                s.MESSAGE_OUT,
                s.PING,
                s.PONG,
            ],
        ),
    ],
)
def test_jid_from_to(expression: str, expected: list[bytes]) -> None:
    assert stanza_raws(expression) == expected


def test_s2c_without_to_is_to_the_bound_jid_and_without_from_from_the_server() -> None:
    assert ROSTER_PUSH in stanza_raws("to:juliet@localhost/balcony", EXTRA)
    assert ROSTER_PUSH in stanza_raws("from:localhost", EXTRA)
    assert ROSTER_PUSH not in stanza_raws("from:juliet@localhost", EXTRA)
    assert SUBSCRIBE in stanza_raws("from:juliet@localhost/balcony", EXTRA)
    assert stanza_raws("to:nurse@localhost", EXTRA) == [SUBSCRIBE]


def test_each_connection_has_its_own_jid() -> None:
    # bob's c2s stanzas (no from) on c2, and what reaches alice from him on c1
    assert indices("from:bob@example.test") == [27, 33, 34, 35, 37, 38, 41]
    assert indices("from:alice@example.test") == [24, 26, 28, 30, 31, 32, 39, 40]
    # s2c without to on c1 is to alice: her presence reflected back to her (record 28)
    assert indices("to:alice@example.test/xmppspy-alice") == [25, 28, 34, 35, 36, 37, 38]
    assert indices("to:bob@example.test/xmppspy-bob") == [29, 30, 31, 39, 40, 41]
    # before binding (the bind requests, 16 and 19) a stanza without from is nobody's
    assert indices("iq and type:set and from:example.test") == []
    assert indices("iq and type:set and to:example.test") == [16, 19]


def test_jid_atoms_never_match_events_that_are_not_stanzas() -> None:
    shown = select("jid:example.test or jid:alice@example.test/xmppspy-alice", PROSODY)
    assert len(shown) == 22
    # not bound, header, disconnect; and not <stream:features/> or <auth/>, which are not
    # addressed: RFC 6120's implicit from/to is for message, presence and iq
    assert {r.event.kind for r in shown if isinstance(r.event, Stanza)} == {
        Kind.MESSAGE,
        Kind.PRESENCE,
        Kind.IQ,
    }
    assert all(isinstance(r.event, Stanza) for r in shown)


# -- ns ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "records", "expected"),
    [
        ("ns:jabber:iq:roster", LOGIN, [s.ROSTER_GET, s.ROSTER_RESULT]),
        ("ns:urn:xmpp:ping", LOGIN, [s.PING]),  # the pong has no payload
        ("ns:http://jabber.org/protocol/chatstates", LOGIN, [s.MESSAGE_IN, s.MESSAGE_OUT]),
        ("ns:http://jabber.org/protocol/caps", LOGIN, [s.FEATURES_2, s.PRESENCE_ROMEO]),
        ("ns:urn:ietf:params:xml:ns:xmpp-bind", LOGIN, [s.FEATURES_2, s.BIND_SET, s.BIND_RESULT]),
        ("ns:urn:xmpp:sm:2", LOGIN, [s.FEATURES_2]),
        ("ns:urn:xmpp:sm", LOGIN, []),  # a namespace is matched whole, not as a prefix
        ("ns:jabber:iq", LOGIN, []),
        # a payload under a prefix counts; a namespace only named in text or an attribute not
        ("ns:jabber:iq:roster", EXTRA, [ROSTER_PUSH]),
        ("ns:urn:xmpp:ping", EXTRA, [TYPELESS_IQ, TYPELESS_IQ_ERROR]),
        # nested payloads: forwarded inside a carbon, a condition inside <error/>
        ("ns:urn:xmpp:forward:0", EXTRA, [CARBON]),
        ("ns:http://jabber.org/protocol/chatstates", EXTRA, [CARBON]),
        ("ns:urn:ietf:params:xml:ns:xmpp-stanzas", EXTRA, [VERSION_ERROR, TYPELESS_IQ_ERROR]),
        ("ns:http://jabber.org/protocol/disco#info", EXTRA, [DISCO_GET, DISCO_RESULT]),
    ],
)
def test_ns(expression: str, records: list[Record], expected: list[bytes]) -> None:
    assert raws(expression, records) == expected


def test_ns_of_a_stanza_namespace_matches_the_stanzas_themselves() -> None:
    """ns:jabber:client is every client stanza, not "has a <body/>" (every body is in it)."""
    stanzas = [
        r.event.raw
        for r in LOGIN
        if isinstance(r.event, Stanza) and r.event.kind in (Kind.MESSAGE, Kind.PRESENCE, Kind.IQ)
    ]
    assert raws("ns:jabber:client", LOGIN) == stanzas
    assert s.PONG in stanzas


def test_ns_matches_a_stream_level_element_in_that_namespace() -> None:
    kinds = [r.event.kind.group for r in select("ns:urn:ietf:params:xml:ns:xmpp-sasl", LOGIN)]  # type: ignore[union-attr]
    assert "sasl" in kinds  # <auth/>, <success/> themselves, not only <mechanisms/> in features


# -- id, dir, conn -----------------------------------------------------------------------------


def test_id() -> None:
    assert raws("id:2d82b44bc9904d4fba24fb40d0a410de") == [s.ROSTER_GET, s.ROSTER_RESULT]
    assert raws("id:2D82B44BC9904D4FBA24FB40D0A410DE") == []  # ids are case-sensitive
    assert raws("id:2d82b44b") == []  # and whole
    # a stream header's id is not a stanza id
    assert raws("id:51b17871-37fc-4277-b3da-73ba270c4fbf") == []


C2S_LOGIN = [
    "c2s header", "c2s sasl:auth", "c2s header", "c2s iq set", "c2s sm:enable", "c2s iq get",
    "c2s presence", "c2s message chat", "c2s sm:r", "c2s sm:a", "c2s keepalive", "c2s iq get",
    "c2s keepalive", "c2s close",
]  # fmt: skip


@pytest.mark.parametrize("expression", ["dir:c2s", "c2s", "C2S", "dir:C2S", "not s2c and dir:c2s"])
def test_dir_c2s(expression: str) -> None:
    assert labels(expression, LOGIN) == C2S_LOGIN


def test_dir_s2c_and_events_without_direction() -> None:
    shown = labels("s2c", LOGIN)
    assert all(name.startswith("s2c ") for name in shown)
    assert "s2c bound" in shown
    assert len(shown) + len(C2S_LOGIN) + 2 == len(LOGIN)
    assert labels("not c2s and not s2c", LOGIN) == ["connect", "disconnect"]


def test_conn() -> None:
    c2 = indices("conn:c2")
    assert c2 == [i for i, r in enumerate(PROSODY) if r.conn == "c2"]
    assert len(c2) == 23
    assert indices("conn:c1 or conn:c2") == list(range(len(PROSODY)))
    assert indices("conn:c") == [] and indices("conn:C2") == []


# -- grep --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "records", "expected"),
    [
        ("grep:🌹", LOGIN, [s.MESSAGE_IN]),
        ("grep:Джульетта", LOGIN, [s.MESSAGE_IN]),
        ('grep:"On the balcony ☾"', LOGIN, [s.PRESENCE, s.PRESENCE_SELF]),
        # the raw bytes, as on the wire: an escaped < in one message, CDATA in the other
        ("grep:&lt;3", LOGIN, [s.MESSAGE_IN]),
        ("grep:'<3 &'", LOGIN, [s.MESSAGE_OUT]),
        ("grep:Capulet|Angelica", LOGIN, [s.ROSTER_RESULT]),
        ("grep:^\\s$", LOGIN, [b" ", b" ", b" "]),
        ("grep:h=.[34]", LOGIN, [s.SM_ANSWER_S2C, s.SM_ANSWER_C2S]),
        # encrypted bytes are searched too (the ClientHello names the server)
        ("grep:localhost", TLS, [s.CLIENT_HEADER, s.XML_DECLARATION + s.SERVER_HEADER_1]),
    ],
)
def test_grep(expression: str, records: list[Record], expected: list[bytes]) -> None:
    shown = [r.event.raw for r in select(expression, records) if not isinstance(r.event, Opaque)]
    assert shown == expected


def test_grep_searches_opaque_and_unparsable_bytes() -> None:
    assert labels("grep:localhost", TLS) == ["c2s header", "s2c header", "c2s opaque"]
    # bytes that are not UTF-8 are searched with U+FFFD in their place
    assert labels("grep:\ufffd", TLS) == ["c2s opaque", "s2c opaque"]
    assert labels('grep:"\ufffd\ufffd not xml"', session_records()) == ["c2s parse-error"]


def test_grep_never_matches_events_without_bytes() -> None:
    assert labels("not grep:^", LOGIN) == ["connect", "s2c bound", "disconnect"]
    assert labels("not grep:^", TLS) == ["connect", "s2c tls-started", "disconnect"]


# -- xpath -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "records", "expected"),
    [
        ("xpath://client:body", LOGIN, [s.MESSAGE_IN, s.MESSAGE_OUT]),
        ("xpath:client:body", LOGIN, [s.MESSAGE_IN, s.MESSAGE_OUT]),  # relative to the stanza
        ("xpath:\"//disco:feature[@var='urn:xmpp:ping']\"", EXTRA, [DISCO_RESULT]),
        ("xpath://ping:ping", EXTRA, [TYPELESS_IQ, TYPELESS_IQ_ERROR]),
        ("xpath://stanzas:service-unavailable", EXTRA, [VERSION_ERROR]),
        ("xpath:self::sasl:auth", LOGIN, [AUTH_REDACTED]),
        ("xpath://roster:item[@name='Romeo']/roster:group", LOGIN, [s.ROSTER_RESULT]),
        # a node-set of attributes
        ("xpath:@h", LOGIN, [s.SM_ANSWER_S2C, s.SM_ANSWER_C2S]),
        # a boolean
        ("xpath:@type='chat'", EXTRA, [CARBON, MENTIONS_NAMESPACES]),
        ("xpath:count(//roster:item)>1", LOGIN, [s.ROSTER_RESULT]),
        # a number: true unless zero
        ("xpath:count(//roster:item)", LOGIN, [s.ROSTER_RESULT]),
        ("xpath:client:body", EXTRA, [NORMAL_NO_TYPE, NORMAL_TYPED, HEADLINE, MENTIONS_NAMESPACES]),
        (
            "xpath:count(.//client:body)",
            EXTRA,
            [NORMAL_NO_TYPE, NORMAL_TYPED, HEADLINE, CARBON, MENTIONS_NAMESPACES],
        ),
        ("xpath:count(.//client:body)", EXTRA[:3], []),
        # a string: true unless empty
        (
            "xpath:string(@to)",
            LOGIN,
            [
                s.ROSTER_RESULT,
                s.PRESENCE_SELF,
                s.PRESENCE_ROMEO,
                s.MESSAGE_IN,
                s.MESSAGE_OUT,
                s.PING,
                s.PONG,
            ],
        ),
        ("xpath:\"//client:body[contains(., 'Romeo, Romeo')]\"", LOGIN, [s.MESSAGE_OUT]),
    ],
)
def test_xpath(expression: str, records: list[Record], expected: list[bytes]) -> None:
    assert raws(expression, records) == expected


def test_xpath_is_about_stanzas_only() -> None:
    stanzas = [label(r) for r in LOGIN if isinstance(r.event, Stanza)]
    assert labels("xpath:true()", LOGIN) == stanzas
    assert len(stanzas) == 21
    assert labels("xpath:true()", TLS) == labels("kind:stream or kind:tls", TLS)[:-1]


@pytest.mark.parametrize(
    ("value", "message"),
    [("//nope:body", "Undefined namespace prefix"), ("nope()", "Unregistered function")],
)
def test_an_xpath_with_an_unknown_prefix_or_function_is_refused_at_once(
    value: str, message: str
) -> None:
    """A typo in a prefix must not look like an empty result."""
    with pytest.raises(FilterError, match=f"XPath '{re.escape(value)}': {message}"):
        make_filter((), f"xpath:{value}")


@pytest.mark.parametrize("value", ["//client:body[nope:x]"])
def test_an_xpath_that_fails_when_evaluated_matches_nothing(value: str) -> None:
    assert raws(f"xpath:{value}", LOGIN) == []
    assert raws(f"message or xpath:{value}", LOGIN) == [s.MESSAGE_IN, s.MESSAGE_OUT]
    assert len(raws(f"not xpath:{value}", LOGIN)) == len(LOGIN)


def test_an_xpath_number_is_true_as_xpath_boolean_says_not_nan() -> None:
    """XPath 1.0 boolean(): a number is true iff it is neither zero nor NaN.

    BUG: the atom uses Python's ``bool``, and ``bool(nan)`` is True, so ``number(@h)`` (the
    XEP-0198 counter) matches every stanza without an ``h`` too.
    """
    assert raws("xpath:number(@h)", LOGIN) == [s.SM_ANSWER_S2C, s.SM_ANSWER_C2S]
    assert raws("xpath:'0 div 0'", LOGIN) == []


# == 2. the expression language =================================================================


def K(value: str) -> AtomNode:
    return AtomNode("kind", value)


IQ, MESSAGE, PRESENCE = K("iq"), K("message"), K("presence")
CHAT = AtomNode("type", "chat")
TO_C2S = AtomNode("dir", "c2s")


@pytest.mark.parametrize(
    ("expression", "tree"),
    [
        # and binds tighter than or
        ("iq or message and type:chat", Or((IQ, And((MESSAGE, CHAT))))),
        ("iq and message or presence", Or((And((IQ, MESSAGE)), PRESENCE))),
        ("iq or message or presence", Or((IQ, MESSAGE, PRESENCE))),
        ("iq and message and presence", And((IQ, MESSAGE, PRESENCE))),
        # not binds tighter than and
        ("not iq and c2s", And((Not(IQ), TO_C2S))),
        ("not iq or message", Or((Not(IQ), MESSAGE))),
        ("not not iq", Not(Not(IQ))),
        ("not (iq or message)", Not(Or((IQ, MESSAGE)))),
        # parentheses
        ("(iq or message) and type:chat", And((Or((IQ, MESSAGE)), CHAT))),
        ("iq or (message and (presence))", Or((IQ, And((MESSAGE, PRESENCE))))),
        ("((iq))", IQ),
        ("(iq and message) and presence", And((And((IQ, MESSAGE)), PRESENCE))),
        # synonyms
        ("iq | message & type:chat", Or((IQ, And((MESSAGE, CHAT))))),
        ("iq || message && type:chat", Or((IQ, And((MESSAGE, CHAT))))),
        ("!iq && c2s", And((Not(IQ), TO_C2S))),
        ("!!iq", Not(Not(IQ))),
        ("!(iq | message)", Not(Or((IQ, MESSAGE)))),
        ("iq |message", Or((IQ, MESSAGE))),
        # keywords and atom names in any case
        ("iq OR message AND NOT c2s", Or((IQ, And((MESSAGE, Not(TO_C2S)))))),
        ("Not iq And Type:chat", And((Not(IQ), CHAT))),
        ("KIND:iq", IQ),
        # whitespace
        ("  iq\tand\n message  ", And((IQ, MESSAGE))),
        # bare words: kind names and directions
        ("stream:features", K("stream:features")),
        ("sasl:auth or sm:r", Or((K("sasl:auth"), K("sm:r")))),
        ("c2s and S2C", And((TO_C2S, AtomNode("dir", "s2c")))),
        ("parse-error", K("parse-error")),
    ],
)
def test_grammar(expression: str, tree: Node) -> None:
    assert parse(expression) == tree


def test_operators_inside_a_word_are_part_of_it() -> None:
    with pytest.raises(FilterError, match=r"unknown atom 'iq\|message' at column 1"):
        parse("iq|message")


@pytest.mark.parametrize(
    ("expression", "tree"),
    [
        ('grep:"On the balcony"', AtomNode("grep", "On the balcony")),
        ("grep:'On the balcony'", AtomNode("grep", "On the balcony")),
        (
            r'xpath:"//client:body[. = \"x y\"]"',
            AtomNode("xpath", '//client:body[. = "x y"]'),
        ),
        (r"grep:'it\'s'", AtomNode("grep", "it's")),
        ('grep:"a b" and iq', And((AtomNode("grep", "a b"), IQ))),
        ('(id:"a ) b")', AtomNode("id", "a ) b")),
        # values holding operator characters, colons and parentheses
        ("grep:a|b", AtomNode("grep", "a|b")),
        ("grep:a|b or iq", Or((AtomNode("grep", "a|b"), IQ))),
        ("grep:soft!", AtomNode("grep", "soft!")),
        ("grep:a&&b", AtomNode("grep", "a&&b")),
        ("ns:urn:xmpp:chat-markers:0", AtomNode("ns", "urn:xmpp:chat-markers:0")),
        ("jid:juliet@localhost/balcony", AtomNode("jid", "juliet@localhost/balcony")),
        ("xpath:count(//client:body)>0", AtomNode("xpath", "count(//client:body)>0")),
        (
            "(xpath:count(//client:body)>0 or iq)",
            Or((AtomNode("xpath", "count(//client:body)>0"), IQ)),
        ),
        ("(xpath:count(//client:body)>0)", AtomNode("xpath", "count(//client:body)>0")),
        ("not xpath:(//client:body)[1]", Not(AtomNode("xpath", "(//client:body)[1]"))),
        ("grep:(a|b)c", AtomNode("grep", "(a|b)c")),
    ],
)
def test_values(expression: str, tree: Node) -> None:
    assert parse(expression) == tree


def test_operators_mean_what_they_say_on_records() -> None:
    assert raws("iq and c2s or message and type:chat") == [
        s.BIND_SET,
        s.ROSTER_GET,
        s.MESSAGE_IN,
        s.MESSAGE_OUT,
        s.PING,
    ]
    assert raws("(iq or message) and c2s") == [s.BIND_SET, s.ROSTER_GET, s.MESSAGE_OUT, s.PING]
    assert raws("not iq and not message and presence") == [
        s.PRESENCE,
        s.PRESENCE_SELF,
        s.PRESENCE_ROMEO,
    ]


def test_not_directly_before_a_parenthesis() -> None:
    """``!(iq)`` works, so ``not(iq)`` should too.

    BUG: the tokenizer reads ``not(iq)`` as one word (a value that opened its own
    parenthesis) and reports "unknown atom 'not(iq)'".
    """
    assert parse("not(iq)") == Not(IQ)
    assert parse("message and not(type:chat)") == And((MESSAGE, Not(CHAT)))


def test_in_quotes_a_backslash_escapes_the_next_character() -> None:
    """As docs/filters.md says; so a regular expression in quotes doubles its backslashes."""
    assert parse(r'grep:"a\\d b"') == AtomNode("grep", r"a\d b")
    assert parse(r"grep:'it\'s'") == AtomNode("grep", "it's")
    assert raws(r'grep:"h=.\\d"') == [s.SM_ANSWER_S2C, s.SM_ANSWER_C2S]
    assert raws(r"grep:h=.\d") == [s.SM_ANSWER_S2C, s.SM_ANSWER_C2S]  # unquoted: as written
    assert raws(r'grep:"h=.\d"') == []  # the regex h=.d


# -- errors a person sees ----------------------------------------------------------------------

KINDS_LIST = (
    "a, abort, auth, bound, challenge, close, connect, disconnect, enable, enabled, error, "
    "failed, failure, features, header, iq, keepalive, message, notice, opaque, other, parse-error, "
    "presence, proceed, r, response, resume, resumed, rewrite, sasl, sasl:abort, sasl:auth, "
    "sasl:challenge, sasl:failure, sasl:response, sasl:success, sm, sm:a, sm:enable, sm:enabled, "
    "sm:failed, sm:r, sm:resume, sm:resumed, starttls, stream, stream:error, stream:features, "
    "success, tls, tls-started, tls:failure, tls:proceed, tls:starttls"
)
TYPES_LIST = (
    "available, chat, error, get, groupchat, headline, normal, probe, result, set, subscribe, "
    "subscribed, unavailable, unsubscribe, unsubscribed"
)
ATOM_LIST = "kind, type, jid, from, to, ns, id, dir, conn, grep, xpath"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "message and",
            "expected an atom, 'not' or '(' at column 12, found the end\n"
            "  message and\n"
            "             ^",
        ),
        (
            "(iq",
            "expected ')' at column 4, found the end\n  (iq\n     ^",
        ),
        (
            "iq or or",
            "expected an atom, 'not' or '(' at column 7, found 'or'\n  iq or or\n        ^",
        ),
        (
            "iq)",
            "expected 'and', 'or' or the end at column 3, found ')'\n  iq)\n    ^",
        ),
        (
            "message iq",
            "expected 'and', 'or' or the end at column 9, found 'iq'\n  message iq\n          ^",
        ),
        (
            "()",
            "expected an atom, 'not' or '(' at column 2, found ')'\n  ()\n   ^",
        ),
        (
            "not",
            "expected an atom, 'not' or '(' at column 4, found the end\n  not\n     ^",
        ),
        (
            "mesage",
            "unknown atom 'mesage' at column 1 (did you mean 'message'?); write NAME:VALUE with "
            f"NAME one of {ATOM_LIST}, or a kind\n  mesage\n  ^",
        ),
        (
            "iq or kidn:iq",
            "unknown atom 'kidn:iq' at column 7 (did you mean 'kind'?); write NAME:VALUE with "
            f"NAME one of {ATOM_LIST}, or a kind\n  iq or kidn:iq\n        ^",
        ),
        (
            "foo:bar",
            f"unknown atom 'foo:bar' at column 1; write NAME:VALUE with NAME one of {ATOM_LIST}, "
            "or a kind\n  foo:bar\n  ^",
        ),
        (
            "type:chta",
            f"unknown type 'chta' (did you mean 'chat'?); types are: {TYPES_LIST}\n"
            "  type:chta\n  ^",
        ),
        (
            "message and type:chta",
            f"unknown type 'chta' (did you mean 'chat'?); types are: {TYPES_LIST}\n"
            "  message and type:chta\n              ^",
        ),
        (
            "kind:mesage",
            f"unknown kind 'mesage' (did you mean 'message'?); kinds are: {KINDS_LIST}\n"
            "  kind:mesage\n  ^",
        ),
        (
            "from:",
            "expected a value after 'from:' at column 6, found the end\n  from:\n       ^",
        ),
        (
            "iq and to: or message",
            "expected a value after 'to:' at column 11, found ' or message'\n"
            "  iq and to: or message\n"
            "            ^",
        ),
        (
            "from:@localhost",
            "'@localhost' is not a JID: write user@domain, user@domain/resource or domain\n"
            "  from:@localhost\n  ^",
        ),
        (
            "xpath:'//[",
            "expected a closing ' at column 7, found \"'//[\"\n  xpath:'//[\n        ^",
        ),
        (
            'iq or grep:"On the balcony',
            "expected a closing \" at column 12, found '\"On the balc'\n"
            '  iq or grep:"On the balcony\n'
            "             ^",
        ),
        (
            "grep:(",
            "regular expression '(': missing ), unterminated subpattern at position 0\n"
            "  grep:(\n  ^",
        ),
        (
            "xpath://[",
            "XPath '//[': Invalid expression\n  xpath://[\n  ^",
        ),
        (
            "dir:up",
            "direction 'up': write c2s or s2c\n  dir:up\n  ^",
        ),
    ],
)
def test_syntax_errors_point_at_the_mistake(expression: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse(expression)
    assert str(caught.value) == message
    # make_filter says the same
    with pytest.raises(FilterError) as again:
        make_filter((), expression)
    assert str(again.value) == message


def test_an_empty_expression_filters_nothing_but_a_blank_one_is_a_mistake() -> None:
    assert len(select("", LOGIN)) == len(select(None, LOGIN)) == len(LOGIN)
    with pytest.raises(FilterError, match="expected an atom, 'not' or '\\(' at column 3"):
        parse("  ")


# == 3. flags ===================================================================================


@pytest.mark.parametrize(
    ("flags", "expression", "expected"),
    [
        # the same atom repeated is or
        ([("kind", False, "message"), ("kind", False, "presence")], None,
         [s.PRESENCE, s.PRESENCE_SELF, s.PRESENCE_ROMEO, s.MESSAGE_IN, s.MESSAGE_OUT]),
        # different atoms are and
        ([("kind", False, "iq"), ("dir", False, "s2c")], None,
         [s.BIND_RESULT, s.ROSTER_RESULT, s.PONG]),
        ([("kind", False, "iq"), ("kind", False, "message"), ("dir", False, "c2s")], None,
         [s.BIND_SET, s.ROSTER_GET, s.MESSAGE_OUT, s.PING]),
        # --not-X values are each and-not
        ([("kind", True, "iq"), ("kind", True, "presence"), ("dir", False, "c2s"),
          ("kind", True, "sm"), ("kind", True, "header")], None,
         [AUTH_REDACTED, s.MESSAGE_OUT, b" ", b" ", s.CLOSE]),
        ([("from", False, "romeo@localhost"), ("type", True, "chat")], None, [s.PRESENCE_ROMEO]),
        # flags and the expression combine with and (the expression as a whole)
        ([("dir", False, "c2s")], "iq or message", [s.BIND_SET, s.ROSTER_GET, s.MESSAGE_OUT, s.PING]),
        ([("kind", False, "iq"), ("kind", False, "message")], "s2c and not type:result",
         [s.MESSAGE_IN]),
        # flag values are taken as they are: no quotes, no operators
        ([("grep", False, "On the balcony ☾")], None, [s.PRESENCE, s.PRESENCE_SELF]),
        ([("grep", False, "Capulet|Angelica")], None, [s.ROSTER_RESULT]),
        ([("jid", False, "ROMEO@localhost")], "message", [s.MESSAGE_IN, s.MESSAGE_OUT]),
        ([], None, None),
    ],
)  # fmt: skip
def test_flags(flags: Flags, expression: str | None, expected: list | None) -> None:
    shown = raws(expression, LOGIN, flags)
    if expected is None:
        assert len(shown) == len(LOGIN)
    else:
        assert shown == expected


def test_flags_build_the_documented_tree() -> None:
    flags = [
        ("kind", False, "iq"),
        ("dir", False, "c2s"),
        ("kind", False, "message"),
        ("type", True, "error"),
        ("type", True, "result"),
    ]
    tree = make_filter(flags, "not presence").tree
    assert tree == And(
        (
            And(
                (
                    Or((IQ, MESSAGE)),
                    TO_C2S,
                    Not(AtomNode("type", "error")),
                    Not(AtomNode("type", "result")),
                )
            ),
            Not(PRESENCE),
        )
    )


def test_bad_flag_values_are_refused() -> None:
    with pytest.raises(FilterError, match="unknown type 'chta' \\(did you mean 'chat'\\?\\)"):
        make_filter([("type", True, "chta")])
    with pytest.raises(FilterError, match="direction 'up': write c2s or s2c"):
        make_filter([("dir", False, "up")], "iq")


# == 4. properties ==============================================================================

CORPORA = (PROSODY, session_records(), LOGIN, EXTRA)

ATOM_VALUES: list[tuple[str, str]] = [
    *[("kind", k) for k in ("message", "presence", "iq", "stream:features", "sasl", "auth")],
    *[("kind", k) for k in ("error", "header", "bound", "connect", "keepalive", "parse-error")],
    *[("kind", k) for k in ("close", "disconnect", "sm:a", "success")],
    *[("type", t) for t in ("chat", "get", "set", "result", "available", "normal", "error")],
    ("from", "alice@example.test"),
    ("from", "alice@example.test/xmppspy-alice"),
    ("from", "Example.Test"),
    ("from", "juliet@localhost/balcony"),
    ("from", "localhost"),
    ("to", "example.test"),
    ("to", "bob@example.test/xmppspy-bob"),
    ("from", "alice@example.test/r"),
    ("to", "romeo@localhost"),
    ("jid", "BOB@example.test"),
    ("jid", "juliet@localhost"),
    ("ns", "jabber:iq:roster"),
    ("ns", "urn:ietf:params:xml:ns:xmpp-bind"),
    ("ns", "urn:xmpp:ping"),
    ("ns", "urn:ietf:params:xml:ns:xmpp-sasl"),
    ("ns", "jabber:client"),
    ("id", "0987123b20e14b0bbc5fff3c38ab5c8d"),
    ("id", "b"),
    ("id", s.BIND_ID),
    ("dir", "c2s"),
    ("dir", "s2c"),
    ("conn", "c1"),
    ("conn", "c2"),
    ("grep", "alice"),
    ("grep", "☃"),
    ("grep", "Hi|Green"),
    ("grep", "build green"),
    ("grep", "&lt;"),
    ("grep", "(balcony|orchard)"),
    ("xpath", "//client:body"),
    ("xpath", "count(//client:body)>0"),
    ("xpath", "@type='chat'"),
    ("xpath", "//client:body[contains(., 'works')]"),
    ("xpath", "string(@to)"),
    ("xpath", '//roster:item[@name="Romeo"]'),
    ("xpath", "//client:body[nope:x]"),
]

atoms = st.sampled_from(ATOM_VALUES).map(lambda pair: AtomNode(*pair))
trees = st.recursive(
    atoms,
    lambda children: st.one_of(
        children.map(Not),
        st.lists(children, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(children, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=6,
)


def canonical(node: Node) -> str:
    """One way to write a tree: every value double-quoted, every operand in parentheses."""
    match node:
        case AtomNode(name, value):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            return f'{name}:"{escaped}"'
        case Not(operand):
            return f"not ({canonical(operand)})"
        case And(operands):
            return " and ".join(f"({canonical(x)})" for x in operands)
        case Or(operands):
            return " or ".join(f"({canonical(x)})" for x in operands)
    raise AssertionError(node)


def _bare_safe(value: str) -> bool:
    depth = 0
    for char in value:
        if char.isspace():
            return False
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0 and value[:1] not in ("'", '"', "!", "&", "|", "(", ")")


def noisy(node: Node, draw: st.DrawFn) -> str:
    """Another way: synonyms, any case, bare words, single quotes, fewer or more parentheses."""

    def op(words: tuple[str, ...]) -> str:
        return draw(st.sampled_from(words))

    def space() -> str:
        return draw(st.sampled_from([" ", "  ", "\t", " \n "]))

    match node:
        case AtomNode(name, value):
            forms = [f"{name.upper()}:{value!r}"] if "\\" not in value else []
            if _bare_safe(value):
                forms.append(f"{name}:{value}")
            if name == "kind" and value in KIND_NAMES:
                forms.append(value)
            if name == "dir":
                forms += [value, value.upper()]
            text = draw(st.sampled_from(forms or [canonical(node)]))
            return f"({text})" if draw(st.booleans()) else text
        case Not(operand):
            inner = noisy(operand, draw)
            if isinstance(operand, And | Or):
                inner = f"({inner})"
            return op(("not ", "NOT ", "Not\t", "!", "! ")) + inner
        case And(operands):
            parts = [
                f"({noisy(x, draw)})" if isinstance(x, And | Or) else noisy(x, draw)
                for x in operands
            ]
            return (space() + op(("and", "AND", "&", "&&")) + space()).join(parts)
        case Or(operands):
            # and binds tighter: an And operand needs no parentheses in an or
            parts = [
                f"({noisy(x, draw)})" if isinstance(x, Or) else noisy(x, draw) for x in operands
            ]
            return (space() + op(("or", "Or", "|", "||")) + space()).join(parts)
    raise AssertionError(node)


def mask(expression: str, records: Sequence[Record]) -> list[bool]:
    keep = make_filter((), expression)  # a fresh filter: it learns each connection as it goes
    return [keep(record) for record in records]


PROPERTY = settings(max_examples=150, deadline=None)


@PROPERTY
@given(st.data())
def test_not_x_and_x_partition_the_records(data: st.DataObject) -> None:
    x = noisy(data.draw(trees), data.draw)
    for records in CORPORA:
        matched, negated = mask(x, records), mask(f"not ({x})", records)
        assert all(a != b for a, b in zip(matched, negated, strict=True)), x


@PROPERTY
@given(st.data())
def test_and_is_the_intersection_and_or_the_union(data: st.DataObject) -> None:
    x = noisy(data.draw(trees), data.draw)
    y = noisy(data.draw(trees), data.draw)
    for records in CORPORA:
        mx, my = mask(x, records), mask(y, records)
        assert mask(f"({x}) and ({y})", records) == [
            a and b for a, b in zip(mx, my, strict=True)
        ], (x, y)
        assert mask(f"({x}) or ({y})", records) == [a or b for a, b in zip(mx, my, strict=True)], (
            x,
            y,
        )


@PROPERTY
@given(trees, st.data())
def test_any_way_of_writing_a_tree_parses_to_it(tree: Node, data: st.DataObject) -> None:
    text = noisy(tree, data.draw)
    parsed = parse(text)
    assert parsed == tree, text
    again = parse(canonical(parsed))
    assert repr(again) == repr(parsed) == repr(tree)
    for records in CORPORA:
        assert mask(text, records) == mask(canonical(parsed), records)


def test_the_property_atoms_are_not_vacuous() -> None:
    """Every atom of the property tests matches some record and misses another."""
    for name, value in ATOM_VALUES:
        matched = [m for records in CORPORA for m in mask(f'{name}:"{value}"', records)]
        if value == "//client:body[nope:x]":
            assert not any(matched)
        else:
            assert any(matched) and not all(matched), (name, value)


# == 5. selection ===============================================================================


def timed(script: Sequence[tuple[float, Direction, bytes]], conn: str) -> list[Record]:
    session = Session()
    return [
        Record(t, conn, event)
        for t, direction, data in script
        for event in session.feed(direction, data)
    ]


def login_at(t0: float, resource: str) -> list[tuple[float, Direction, bytes]]:
    """juliet's login, one write every 1/16 s from ``t0``, binding ``resource``."""
    script = []
    for i, (direction, data) in enumerate(s.LOGIN[:12]):
        script.append((t0 + i / 16, direction, data.replace(b"balcony", resource.encode())))
    return script


def iq(kind: str, id_: str, attrs: str = "", payload: str = "") -> bytes:
    return f"<iq type='{kind}' id='{id_}'{attrs}>{payload}</iq>".encode()


PING_PAYLOAD = "<ping xmlns='urn:xmpp:ping'/>"
P1 = iq("get", "p1", " to='localhost'", PING_PAYLOAD)
D1 = iq("get", "d1", " to='localhost'", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
D1_RESULT = iq(
    "result",
    "d1",
    " from='localhost'",
    "<query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:ping'/></query>",
)
P1_RESULT = iq("result", "p1", " from='localhost'")
S1 = iq("get", "s1", " from='localhost'", PING_PAYLOAD)
S1_RESULT = iq("result", "s1", " to='localhost'")
V1 = iq("get", "v1", " to='romeo@localhost/orchard'", "<query xmlns='jabber:iq:version'/>")
V1_ERROR = iq(
    "error",
    "v1",
    " from='romeo@localhost/orchard'",
    "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
)
R1 = iq("set", "r1", "", "<query xmlns='jabber:iq:roster'><item jid='nurse@localhost'/></query>")
SERVER_SAME = iq("get", "same", " from='localhost'", PING_PAYLOAD)
CLIENT_SAME = iq("get", "same", " to='localhost'", PING_PAYLOAD)
CLIENT_SAME_RESULT = iq("result", "same", " to='localhost'")
SERVER_SAME_RESULT = iq("result", "same", " from='localhost'")
GARDEN_R1_RESULT = iq("result", "r1", " to='juliet@localhost/garden'")
GARDEN_V1 = iq("get", "v1", " to='localhost'", "<time xmlns='urn:xmpp:time'/>")

IQS = sorted(
    timed(
        [
            *login_at(1.0, "balcony"),
            (10.0, C2S, P1),
            (10.25, C2S, D1),
            (10.5, S2C, D1_RESULT),
            (10.75, S2C, P1_RESULT),
            (11.0, S2C, S1),
            (11.125, C2S, S1_RESULT),
            (12.0, C2S, V1),
            (12.5, S2C, V1_ERROR),
            (13.0, C2S, R1),  # never answered
            (13.25, S2C, SERVER_SAME),
            (13.5, C2S, CLIENT_SAME),
            (13.75, C2S, CLIENT_SAME_RESULT),  # answers the server, not the client's own get
            (14.5, S2C, SERVER_SAME_RESULT),
        ],
        "c1",
    )
    + timed(
        [
            *login_at(2.0, "garden"),
            (12.75, S2C, GARDEN_R1_RESULT),  # c1's r1 is waiting, but this is c2
            (15.0, C2S, GARDEN_V1),  # v1 again, on c2: never answered
        ],
        "c2",
    ),
    key=lambda record: record.t,
)


def run_selector(
    expression: str, records: Sequence[Record] = IQS, *, with_replies: bool
) -> tuple[list[tuple[str, float, bytes | str, bool, float | None]], Selector]:
    selector = Selector(make_filter((), expression), with_replies=with_replies)
    out = []
    for record in records:
        shown = selector(record)
        if shown is not None:
            assert shown.record is record
            what = getattr(record.event, "raw", None) or label(record)
            out.append((record.conn, record.t, what, shown.visible, shown.round_trip))
    return out, selector


def test_without_replies_the_selector_shows_matches_and_keeps_bound_for_labels() -> None:
    out, selector = run_selector("message", LOGIN, with_replies=False)
    assert [(what, visible, rtt) for _, _, what, visible, rtt in out] == [
        ("s2c bound", False, None),
        (s.MESSAGE_IN, True, None),
        (s.MESSAGE_OUT, True, None),
    ]
    assert selector.unanswered() == []
    out, _ = run_selector("bound or message", LOGIN, with_replies=False)
    assert (out[0][2], out[0][3]) == ("s2c bound", True)
    # a ping shown without pairing brings no pong
    out, selector = run_selector("ns:urn:xmpp:ping", with_replies=False)
    assert [what for *_, what, _, _ in out if isinstance(what, bytes)] == [
        P1,
        S1,
        SERVER_SAME,
        CLIENT_SAME,
    ]
    assert selector.unanswered() == []


def test_requests_bring_their_replies_with_the_round_trip() -> None:
    out, selector = run_selector("c2s and (type:get or type:set)", with_replies=True)
    bind_set = next(r for r in IQS if r.conn == "c1" and label(r) == "c2s iq set")
    bind_result = next(r for r in IQS if r.conn == "c1" and label(r) == "s2c iq result")
    assert out == [
        ("c1", bind_set.t, s.BIND_SET, True, None),
        ("c1", bind_result.t, s.BIND_RESULT, True, bind_result.t - bind_set.t),
        ("c1", bind_result.t, "s2c bound", False, None),
        ("c2", 2.625, s.BIND_SET.replace(b"balcony", b"garden"), True, None),
        ("c2", 2.6875, s.BIND_RESULT.replace(b"balcony", b"garden"), True, 0.0625),
        ("c2", 2.6875, "s2c bound", False, None),
        ("c1", 10.0, P1, True, None),
        ("c1", 10.25, D1, True, None),
        ("c1", 10.5, D1_RESULT, True, 0.25),
        ("c1", 10.75, P1_RESULT, True, 0.75),
        # the server's ping is not matched (s2c), so the client's answer is not shown
        ("c1", 12.0, V1, True, None),
        ("c1", 12.5, V1_ERROR, True, 0.5),  # an error is a reply too
        # 12.75: c2's result with id r1 is not the answer to c1's r1
        ("c1", 13.0, R1, True, None),
        ("c1", 13.5, CLIENT_SAME, True, None),
        # 13.75: the client's result with id 'same' goes the same way as its get: not a reply
        ("c1", 14.5, SERVER_SAME_RESULT, True, 1.0),
        ("c2", 15.0, GARDEN_V1, True, None),
    ]
    assert [(r.conn, r.t, r.event.raw) for r in selector.unanswered()] == [  # type: ignore[union-attr]
        ("c1", 13.0, R1),
        ("c2", 15.0, GARDEN_V1),
    ]


def test_replies_pair_both_ways_and_only_with_matched_requests() -> None:
    out, selector = run_selector("ns:urn:xmpp:ping", with_replies=True)
    assert [(t, what, rtt) for _, t, what, visible, rtt in out if visible] == [
        (10.0, P1, None),
        (10.75, P1_RESULT, 0.75),  # no payload: only shown as the ping's reply
        (11.0, S1, None),  # the server pings the client
        (11.125, S1_RESULT, 0.125),  # and the client answers
        # the disco request was not shown, so neither is its result (10.5)
        (13.25, SERVER_SAME, None),
        (13.5, CLIENT_SAME, None),
        (13.75, CLIENT_SAME_RESULT, 0.5),  # answers the server's 'same'
        (14.5, SERVER_SAME_RESULT, 1.0),  # answers the client's 'same'
    ]
    assert selector.unanswered() == []


def test_a_reply_that_matches_is_still_shown_as_a_reply() -> None:
    out, _ = run_selector("id:p1", with_replies=True)
    assert [(what, rtt) for *_, what, visible, rtt in out if visible] == [
        (P1, None),
        (P1_RESULT, 0.75),
    ]
    # replies whose request was not shown are shown as themselves, without a round trip
    out, _ = run_selector("s2c and type:result and conn:c1", with_replies=True)
    assert [(what, rtt) for *_, what, visible, rtt in out if visible] == [
        (s.BIND_RESULT, None),
        (D1_RESULT, None),
        (P1_RESULT, None),
        (SERVER_SAME_RESULT, None),
    ]


def test_shown_round_trip() -> None:
    request = next(r for r in IQS if getattr(r.event, "raw", None) == P1)
    reply = next(r for r in IQS if getattr(r.event, "raw", None) == P1_RESULT)
    assert Shown(reply, reply_to=request).round_trip == 0.75
    assert Shown(reply).round_trip is None


def test_unanswered_requests_are_listed_in_time_order() -> None:
    cut = [r for r in IQS if r.t < 10.6]  # p1 and d1 asked, only d1 answered
    _, selector = run_selector("iq and c2s", cut, with_replies=True)
    assert [r.event.raw for r in selector.unanswered()] == [P1]  # type: ignore[union-attr]
    _, selector = run_selector(
        "type:get or type:set", [r for r in IQS if r.t < 10.3], with_replies=True
    )
    assert [r.event.raw for r in selector.unanswered()] == [P1, D1]  # type: ignore[union-attr]


# == 6. the command line ========================================================================

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.stdout, result.stderr


def replay_json(*args: str, capture: Path = CAPTURE) -> list[dict]:
    code, out, err = cli("replay", str(capture), "--json", *args)
    assert code == 0, err
    return [orjson.loads(line) for line in out.splitlines()]


def ids_of(lines: list[dict]) -> list[tuple[str, str, str]]:
    return [(line["conn"], line["dir"], line.get("id", line["event"])) for line in lines]


ALICE_MESSAGES = [
    ("c1", "c2s", "e10c8d3c756740f0b65f48de6f6ddab5"),
    ("c1", "c2s", "7cf4a934a4a8457da5d04150203fdf11"),
    ("c2", "s2c", "e10c8d3c756740f0b65f48de6f6ddab5"),
    ("c2", "s2c", "7cf4a934a4a8457da5d04150203fdf11"),
]


def test_cli_filter_expression() -> None:
    lines = replay_json("-f", "message and from:alice@example.test")
    assert ids_of(lines) == ALICE_MESSAGES
    assert [line["raw"] for line in lines] == [
        PROSODY[i].event.raw.decode() for i in (30, 31, 39, 40)
    ]  # type: ignore[union-attr]


def test_cli_from_flag() -> None:
    lines = replay_json("--from", "alice@example.test")
    assert [(line["conn"], line["kind"]) for line in lines] == [
        ("c1", "iq"),  # roster get
        ("c1", "presence"),
        ("c1", "presence"),  # reflected back
        ("c1", "message"),
        ("c1", "message"),
        ("c1", "iq"),  # ping
        ("c2", "message"),
        ("c2", "message"),
    ]
    assert ids_of(replay_json("--from", "alice@example.test", "-k", "message")) == ALICE_MESSAGES


def test_cli_not_kind() -> None:
    lines = replay_json("--not-kind", "presence")
    assert len(lines) == len(PROSODY) - 4
    assert "presence" not in {line.get("kind") for line in lines}
    assert {"connect", "open", "bound", "close", "disconnect"} <= {line["event"] for line in lines}


def test_cli_ns_and_xpath() -> None:
    lines = replay_json("--ns", "jabber:iq:roster")
    assert [(line["conn"], line["type"]) for line in lines] == [
        ("c1", "get"),
        ("c1", "result"),
        ("c2", "get"),
        ("c2", "result"),
    ]
    lines = replay_json("--xpath", "//client:body[contains(., '日本語')]")
    assert [(line["conn"], line["dir"]) for line in lines] == [("c2", "c2s"), ("c1", "s2c")]
    assert all("Ünïcödé works too: 日本語" in line["raw"] for line in lines)


def test_cli_with_replies() -> None:
    lines = replay_json("-k", "iq", "--dir", "c2s", "--with-replies")
    t = {i: PROSODY[i].t for i in range(len(PROSODY))}
    assert [(line["type"], line.get("rtt")) for line in lines] == [
        ("set", None),
        ("set", None),
        ("result", pytest.approx(t[20] - t[16])),
        ("result", pytest.approx(t[22] - t[19])),
        ("get", None),
        ("result", pytest.approx(t[25] - t[24])),
        ("get", None),
        ("result", pytest.approx(t[29] - t[27])),
        ("get", None),
        ("result", pytest.approx(t[36] - t[32])),
    ]
    assert not any("unanswered" in line for line in lines)


def test_cli_unanswered_requests_come_last(tmp_path: Path) -> None:
    cut = tmp_path / "cut.jsonl"
    write(cut, PROSODY[:34])  # stops before the ping's answer
    lines = replay_json("-f", "iq and c2s", "--with-replies", capture=cut)
    assert [(line["type"], "rtt" in line, line.get("unanswered")) for line in lines] == [
        ("set", False, None),
        ("set", False, None),
        ("result", True, None),
        ("result", True, None),
        ("get", False, None),
        ("result", True, None),
        ("get", False, None),
        ("result", True, None),
        ("get", False, None),  # the ping, when it was sent
        ("get", False, True),  # and again at the end: never answered
    ]
    assert lines[-1]["child"] == "{urn:xmpp:ping}ping"
    assert lines[-1]["t"] == PROSODY[32].t
    # the pretty view says so too
    code, out, _ = cli("replay", str(cut), "-f", "iq and c2s", "--with-replies")
    assert code == 0
    assert "no reply: iq" in out
    assert "↩ set answered in" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-f", "message and"],
            "xmppspy: expected an atom, 'not' or '(' at column 12, found the end\n"
            "  message and\n"
            "             ^\n",
        ),
        (
            ["-f", "type:chta or iq"],
            f"xmppspy: unknown type 'chta' (did you mean 'chat'?); types are: {TYPES_LIST}\n"
            "  type:chta or iq\n"
            "  ^\n",
        ),
        (["--dir", "up"], "xmppspy: direction 'up': write c2s or s2c\n"),
    ],
)
def test_cli_filter_mistakes_exit_2_with_the_caret(args: list[str], message: str) -> None:
    code, out, err = cli("replay", str(CAPTURE), *args)
    assert code == 2
    assert err == message
    assert out == ""


def test_the_proxy_refuses_a_bad_filter_before_listening_or_recording(tmp_path: Path) -> None:
    record = tmp_path / "never.jsonl"
    code, out, err = cli(
        "proxy", "--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:1",
        "--record", str(record), "-f", "iq or or",
    )  # fmt: skip
    assert code == 2
    assert err == (
        "xmppspy: expected an atom, 'not' or '(' at column 7, found 'or'\n  iq or or\n        ^\n"
    )
    assert out == ""
    assert not record.exists()


@pytest.mark.parametrize(
    ("expression", "shown"),
    [
        # BUG: the message is printed as rich markup, so brackets in it are styles or tags
        ("grep:[a-z]+(", "regular expression '[a-z]+(': missing ), unterminated subpattern"),
        ("grep:[/x](", "regular expression '[/x](': missing ), unterminated subpattern"),
        ("xpath://client:body[@type]]", "XPath '//client:body[@type]]': Invalid expression"),
    ],
)
def test_cli_filter_mistakes_are_shown_as_written(expression: str, shown: str) -> None:
    result = runner.invoke(app, ["replay", str(CAPTURE), "-f", expression], env={"NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2
    assert shown in result.stderr
    assert f"\n  {expression}\n  ^\n" in result.stderr
