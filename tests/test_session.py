"""Session: both directions of one connection and the rules that tie them together."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from itertools import pairwise

import streams as s
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xmppspy.events import (
    Bound,
    Direction,
    Event,
    Keepalive,
    Kind,
    Opaque,
    OpaqueReason,
    ParseError,
    Stanza,
    StreamClosed,
    StreamOpened,
    TlsStarted,
)
from xmppspy.session import Session

C2S, S2C = Direction.C2S, Direction.S2C
Writes = Sequence[tuple[Direction, bytes]]


def run(writes: Writes, session: Session | None = None) -> list[Event]:
    session = session if session is not None else Session()
    events: list[Event] = []
    for direction, data in writes:
        events += session.feed(direction, data)
    return events


def raw_of(events: Iterable[Event], direction: Direction) -> bytes:
    return b"".join(
        e.raw for e in events if not isinstance(e, TlsStarted | Bound) and e.dir is direction
    )


def label(event: Event) -> tuple[str, str]:
    """A compact picture of one event: direction and what it is."""
    if isinstance(event, Stanza):
        what = event.kind.value
    elif isinstance(event, StreamOpened):
        what = "restart" if event.restart else "open"
    elif isinstance(event, Bound):
        what = f"Bound {event.jid}"
    elif isinstance(event, Opaque):
        what = f"Opaque {event.reason.value}"
    else:
        what = type(event).__name__
    return (event.dir.value, what)


def normalise(events: Iterable[Event]) -> list[Event]:
    """Merge adjacent keepalives, and adjacent opaque runs, of the same direction."""
    out: list[Event] = []
    for event in events:
        prev = out[-1] if out else None
        if isinstance(event, Keepalive) and isinstance(prev, Keepalive) and prev.dir is event.dir:
            out[-1] = Keepalive(event.dir, prev.raw + event.raw)
        elif (
            isinstance(event, Opaque)
            and isinstance(prev, Opaque)
            and prev.dir is event.dir
            and prev.reason is event.reason
        ):
            out[-1] = Opaque(event.dir, prev.raw + event.raw, event.reason)
        else:
            out.append(event)
    return out


def the_auth(events: Iterable[Event]) -> Stanza:
    (auth,) = [e for e in events if isinstance(e, Stanza) and e.kind is Kind.SASL_AUTH]
    return auth


# -- the whole login ------------------------------------------------------------------------------

LOGIN_EVENTS = [
    ("c2s", "open"),
    ("s2c", "open"),
    ("s2c", "stream:features"),
    ("c2s", "sasl:auth"),
    ("s2c", "sasl:success"),
    ("c2s", "restart"),
    ("s2c", "restart"),
    ("s2c", "stream:features"),
    ("c2s", "iq"),
    ("s2c", "iq"),
    ("s2c", f"Bound {s.FULL_JID}"),
    ("c2s", "sm:enable"),
    ("s2c", "sm:enabled"),
    ("c2s", "iq"),
    ("s2c", "iq"),
    ("c2s", "presence"),
    ("s2c", "presence"),
    ("s2c", "presence"),
    ("s2c", "message"),
    ("c2s", "message"),
    ("c2s", "sm:r"),
    ("s2c", "sm:a"),
    ("s2c", "sm:r"),
    ("c2s", "sm:a"),
    ("c2s", "Keepalive"),
    ("s2c", "Keepalive"),
    ("c2s", "iq"),
    ("s2c", "iq"),
    ("c2s", "Keepalive"),
    ("c2s", "StreamClosed"),
    ("s2c", "StreamClosed"),
]


def test_login_events_in_order() -> None:
    session = Session()
    events = run(s.LOGIN, session)
    assert [label(e) for e in events] == LOGIN_EVENTS
    assert session.jid == s.FULL_JID
    assert session.tls is False


def test_login_bytes_come_back_except_the_secret() -> None:
    events = run(s.LOGIN)
    auth = the_auth(events)
    assert raw_of(events, S2C) == s.LOGIN_S2C
    assert raw_of(events, C2S) == s.LOGIN_C2S.replace(s.AUTH, auth.raw)


def test_login_with_secrets_shown_gives_back_every_byte() -> None:
    events = run(s.LOGIN, Session(show_secrets=True))
    assert [label(e) for e in events] == LOGIN_EVENTS
    assert raw_of(events, C2S) == s.LOGIN_C2S
    assert raw_of(events, S2C) == s.LOGIN_S2C


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_login_in_any_chunking(data: st.DataObject) -> None:
    """Each write split anywhere, and consecutive writes of one peer merged: same events."""
    writes: list[tuple[Direction, bytes]] = []
    for direction, chunk in s.LOGIN:
        if writes and writes[-1][0] is direction and data.draw(st.booleans(), label="merge"):
            writes[-1] = (direction, writes[-1][1] + chunk)
        else:
            writes.append((direction, chunk))
    reads: list[tuple[Direction, bytes]] = []
    for direction, chunk in writes:
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(chunk)), max_size=3))))
        points = [0, *cuts, len(chunk)]
        reads += [(direction, chunk[a:b]) for a, b in pairwise(points) if b > a]
    assert normalise(run(reads)) == normalise(run(s.LOGIN))


def test_login_one_byte_at_a_time() -> None:
    reads = [(d, chunk[i : i + 1]) for d, chunk in s.LOGIN for i in range(len(chunk))]
    assert normalise(run(reads)) == normalise(run(s.LOGIN))


# -- SASL PLAIN redaction -------------------------------------------------------------------------


def assert_no_secret(events: Iterable[Event]) -> None:
    for event in events:
        raw = getattr(event, "raw", b"")
        assert s.PASSWORD.encode() not in raw, event
        assert s.PLAIN_PAYLOAD not in raw, event
        assert s.PLAIN_PAYLOAD.rstrip(b"=") not in raw, event


def test_plain_password_is_redacted() -> None:
    events = run(s.LOGIN)
    assert_no_secret(events)
    auth = the_auth(events)
    assert auth.redacted is True
    assert auth.dir is C2S
    assert s.USER.encode() in auth.raw, "the user name stays visible"
    element = auth.element
    assert element.get("mechanism") == "PLAIN"
    assert s.USER in (element.text or "")
    assert [e for e in events if isinstance(e, Stanza) and e.redacted] == [auth]


def test_show_secrets_keeps_the_password() -> None:
    auth = the_auth(run(s.LOGIN, Session(show_secrets=True)))
    assert auth.redacted is False
    assert auth.raw == s.AUTH
    assert base64.b64decode(auth.element.text or "").split(b"\0")[2] == s.PASSWORD.encode()


def test_plain_redaction_when_the_auth_arrives_byte_by_byte() -> None:
    session = Session()
    events = run([(C2S, s.CLIENT_HEADER), (S2C, s.SERVER_HEADER_1)], session)
    for i in range(len(s.AUTH)):
        events += session.feed(C2S, s.AUTH[i : i + 1])
    assert_no_secret(events)
    assert the_auth(events).redacted


def test_plain_redaction_with_an_authorization_identity() -> None:
    payload = base64.b64encode(b"juliet@localhost\0juliet\0" + s.PASSWORD.encode())
    auth = (
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + payload + b"</auth>"
    )
    events = run([(C2S, s.CLIENT_HEADER), (C2S, auth)])
    stanza = the_auth(events)
    assert stanza.redacted
    assert payload not in stanza.raw
    assert b"juliet" in stanza.raw


def test_plain_redaction_of_a_payload_that_is_not_valid_base64() -> None:
    """Line-wrapped or broken base64 is still hidden, even if the user name cannot be shown."""
    payload = s.PLAIN_PAYLOAD[:20] + b"\n" + s.PLAIN_PAYLOAD[20:]
    auth = (
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + payload + b"</auth>"
    )
    events = run([(C2S, s.CLIENT_HEADER), (C2S, auth)])
    stanza = the_auth(events)
    assert stanza.redacted
    assert s.PLAIN_PAYLOAD[:20] not in stanza.raw
    assert s.PLAIN_PAYLOAD[20:] not in stanza.raw


def test_plain_credentials_sent_as_a_response_are_redacted() -> None:
    """RFC 6120 6.4.2: with no initial response, PLAIN's credentials come in <response/>."""
    events = run(
        [
            (C2S, s.CLIENT_HEADER),
            (S2C, s.XML_DECLARATION + s.SERVER_HEADER_1 + s.FEATURES_1),
            (C2S, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>"),
            (S2C, b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
            (
                C2S,
                b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                + s.PLAIN_PAYLOAD
                + b"</response>",
            ),
            (S2C, s.SUCCESS),
        ]
    )
    response = next(e for e in events if isinstance(e, Stanza) and e.kind is Kind.SASL_RESPONSE)
    assert_no_secret(events)
    assert response.redacted


def test_other_mechanisms_are_left_alone() -> None:
    scram = (
        b'<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="SCRAM-SHA-1">'
        b"biwsbj1qdWxpZXQscj1meWtvK2QybGJiRmdPTlJ2OXFreGRhd0wzcmZjTkhZSlkx</auth>"
    )
    stanza = the_auth(run([(C2S, s.CLIENT_HEADER), (C2S, scram)]))
    assert stanza.redacted is False
    assert stanza.raw == scram


def test_password_stays_hidden_after_a_parse_error() -> None:
    """A client that broke the XML rules earlier still must not have its password recorded."""
    events = run(
        [
            (C2S, s.CLIENT_HEADER),
            (S2C, s.XML_DECLARATION + s.SERVER_HEADER_1 + s.FEATURES_1),
            (C2S, b"<!-- slixmpp debug build -->"),
            (C2S, s.AUTH),
        ]
    )
    assert any(isinstance(e, ParseError) for e in events)
    assert_no_secret(events)


# -- SASL success restarts both streams -----------------------------------------------------------


def test_success_restarts_both_directions() -> None:
    session = Session()
    run(s.LOGIN[:5], session)  # up to and including the client's <auth/>
    events = session.feed(S2C, s.SUCCESS)
    assert [label(e) for e in events] == [("s2c", "sasl:success")]
    (c2s_header,) = session.feed(C2S, s.CLIENT_HEADER)
    assert isinstance(c2s_header, StreamOpened)
    assert c2s_header.restart is True
    assert c2s_header.raw == s.CLIENT_HEADER
    events = session.feed(S2C, s.XML_DECLARATION + s.SERVER_HEADER_2 + s.FEATURES_2)
    assert [label(e) for e in events] == [("s2c", "restart"), ("s2c", "stream:features")]
    assert events[0].raw == s.XML_DECLARATION + s.SERVER_HEADER_2
    features = events[1]
    assert isinstance(features, Stanza)
    assert features.element.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
    (bind,) = session.feed(C2S, s.BIND_SET)
    assert isinstance(bind, Stanza)
    assert bind.kind is Kind.IQ
    assert bind.child == "{urn:ietf:params:xml:ns:xmpp-bind}bind"


def test_success_and_new_header_in_one_read() -> None:
    session = Session()
    run(s.LOGIN[:5], session)
    events = session.feed(S2C, s.SUCCESS + s.XML_DECLARATION + s.SERVER_HEADER_2 + s.FEATURES_2)
    assert [label(e) for e in events] == [
        ("s2c", "sasl:success"),
        ("s2c", "restart"),
        ("s2c", "stream:features"),
    ]


def test_client_header_sent_before_success_is_read() -> None:
    """A pipelining client's new header, read before the server's success, opens the new stream."""
    session = Session()
    run(s.LOGIN[:4], session)
    assert [label(e) for e in session.feed(C2S, s.AUTH + s.CLIENT_HEADER)] == [("c2s", "sasl:auth")]
    events = session.feed(S2C, s.SUCCESS)
    assert [label(e) for e in events] == [("s2c", "sasl:success"), ("c2s", "restart")]
    assert events[1].raw == s.CLIENT_HEADER
    assert [label(e) for e in session.feed(C2S, s.BIND_SET)] == [("c2s", "iq")]


def test_success_from_the_client_restarts_nothing() -> None:
    session = Session()
    run([(C2S, s.CLIENT_HEADER), (S2C, s.SERVER_HEADER_1)], session)
    assert [label(e) for e in session.feed(C2S, s.SUCCESS)] == [("c2s", "sasl:success")]
    assert [label(e) for e in session.feed(C2S, s.PING)] == [("c2s", "iq")]
    assert [label(e) for e in session.feed(S2C, s.PONG)] == [("s2c", "iq")]


def test_a_direction_that_failed_stays_opaque_after_success() -> None:
    """After a ParseError a direction is shown raw from then on, even across a restart."""
    session = Session()
    run(s.LOGIN[:4], session)
    events = session.feed(C2S, s.AUTH + b"\x00")
    assert [label(e) for e in events] == [("c2s", "sasl:auth"), ("c2s", "ParseError")]
    session.feed(S2C, s.SUCCESS)
    events = session.feed(C2S, s.CLIENT_HEADER + s.BIND_SET)
    assert [label(e) for e in events] == [("c2s", "Opaque after-error")]


# -- STARTTLS -------------------------------------------------------------------------------------

STARTTLS_EVENTS = [
    ("c2s", "open"),
    ("s2c", "open"),
    ("s2c", "stream:features"),
    ("c2s", "tls:starttls"),
    ("s2c", "tls:proceed"),
    ("s2c", "TlsStarted"),
    ("c2s", "Opaque tls"),
    ("s2c", "Opaque tls"),
]


def test_starttls_session() -> None:
    session = Session()
    events = run(s.STARTTLS_SESSION, session)
    assert [label(e) for e in events] == STARTTLS_EVENTS
    assert session.tls is True
    assert raw_of(events, C2S) == s.STARTTLS_C2S
    assert raw_of(events, S2C) == s.STARTTLS_S2C
    assert events[-2] == Opaque(C2S, s.CLIENT_HELLO, OpaqueReason.TLS)
    assert events[-1] == Opaque(S2C, s.SERVER_HELLO, OpaqueReason.TLS)


def test_proceed_makes_both_directions_opaque_and_says_so_once() -> None:
    session = Session()
    run(s.STARTTLS_SESSION[:5], session)
    events = session.feed(S2C, s.PROCEED + s.SERVER_HELLO[:20])
    assert [label(e) for e in events] == [
        ("s2c", "tls:proceed"),
        ("s2c", "TlsStarted"),
        ("s2c", "Opaque tls"),
    ]
    assert events[2].raw == s.SERVER_HELLO[:20]
    # Everything after, in any chunking, either way, is opaque; TLS is not announced again.
    later = []
    for i in range(0, len(s.CLIENT_HELLO), 7):
        later += session.feed(C2S, s.CLIENT_HELLO[i : i + 7])
    later += session.feed(S2C, s.SERVER_HELLO[20:])
    later += session.feed(C2S, s.CLOSE)
    later += session.feed(S2C, s.PROCEED)
    assert all(isinstance(e, Opaque) and e.reason is OpaqueReason.TLS for e in later)
    assert raw_of(later, C2S) == s.CLIENT_HELLO + s.CLOSE
    assert raw_of(later, S2C) == s.SERVER_HELLO[20:] + s.PROCEED


def test_proceed_in_one_byte_reads() -> None:
    reads = [(d, chunk[i : i + 1]) for d, chunk in s.STARTTLS_SESSION for i in range(len(chunk))]
    events = run(reads)
    assert normalise(events) == normalise(run(s.STARTTLS_SESSION))
    assert sum(isinstance(e, TlsStarted) for e in events) == 1


def test_proceed_from_the_client_is_not_tls() -> None:
    session = Session()
    run([(C2S, s.CLIENT_HEADER), (S2C, s.SERVER_HEADER_1)], session)
    assert [label(e) for e in session.feed(C2S, s.PROCEED)] == [("c2s", "tls:proceed")]
    assert session.tls is False
    assert [label(e) for e in session.feed(C2S, s.PING)] == [("c2s", "iq")]


def test_tls_failure_does_not_start_tls() -> None:
    session = Session()
    run(s.STARTTLS_SESSION[:5], session)
    events = session.feed(S2C, b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + s.CLOSE)
    assert [label(e) for e in events] == [("s2c", "tls:failure"), ("s2c", "StreamClosed")]
    assert session.tls is False


# -- bind -----------------------------------------------------------------------------------------


def logged_in(session: Session) -> None:
    """Feed the login up to (not including) the bind request."""
    run(s.LOGIN[: s.LOGIN.index((C2S, s.BIND_SET))], session)


def test_bind_result_names_the_full_jid() -> None:
    session = Session()
    logged_in(session)
    assert session.jid is None
    assert [label(e) for e in session.feed(C2S, s.BIND_SET)] == [("c2s", "iq")]
    assert session.jid is None
    events = session.feed(S2C, s.BIND_RESULT)
    assert [label(e) for e in events] == [("s2c", "iq"), ("s2c", f"Bound {s.FULL_JID}")]
    assert events[1] == Bound(S2C, s.FULL_JID)
    assert session.jid == s.FULL_JID


def test_bind_result_with_an_id_never_requested() -> None:
    session = Session()
    logged_in(session)
    session.feed(C2S, s.BIND_SET)
    stray = s.BIND_RESULT.replace(s.BIND_ID.encode(), b"not-the-request")
    assert [label(e) for e in session.feed(S2C, stray)] == [("s2c", "iq")]
    assert session.jid is None


def test_bind_result_without_any_request() -> None:
    session = Session()
    logged_in(session)
    assert [label(e) for e in session.feed(S2C, s.BIND_RESULT)] == [("s2c", "iq")]
    assert session.jid is None


def test_result_to_another_request_with_a_bind_payload() -> None:
    """Only an answer to a bind request binds: the roster get's id does not count."""
    session = Session()
    logged_in(session)
    session.feed(C2S, s.ROSTER_GET)
    forged = s.BIND_RESULT.replace(s.BIND_ID.encode(), b"2d82b44bc9904d4fba24fb40d0a410de")
    assert [label(e) for e in session.feed(S2C, forged)] == [("s2c", "iq")]
    assert session.jid is None


def test_bind_error_binds_nothing() -> None:
    session = Session()
    logged_in(session)
    session.feed(C2S, s.BIND_SET)
    error = (
        b"<iq type='error' id='" + s.BIND_ID.encode() + b"'>"
        b"<error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    assert [label(e) for e in session.feed(S2C, error)] == [("s2c", "iq")]
    assert session.jid is None


def test_bind_result_is_used_once() -> None:
    session = Session()
    logged_in(session)
    session.feed(C2S, s.BIND_SET)
    assert Bound(S2C, s.FULL_JID) in session.feed(S2C, s.BIND_RESULT)
    assert not any(isinstance(e, Bound) for e in session.feed(S2C, s.BIND_RESULT))


def test_bind_result_with_whitespace_around_the_jid() -> None:
    session = Session()
    logged_in(session)
    session.feed(C2S, s.BIND_SET)
    spaced = s.BIND_RESULT.replace(b"<jid>", b"<jid>\n  ").replace(b"</jid>", b"\n</jid>")
    assert Bound(S2C, s.FULL_JID) in session.feed(S2C, spaced)
    assert session.jid == s.FULL_JID


def test_bind_request_and_result_in_pieces() -> None:
    session = Session()
    logged_in(session)
    events = []
    for direction, data in ((C2S, s.BIND_SET), (S2C, s.BIND_RESULT)):
        for i in range(0, len(data), 5):
            events += session.feed(direction, data[i : i + 5])
    assert [e for e in events if isinstance(e, Bound)] == [Bound(S2C, s.FULL_JID)]


def test_session_close_events() -> None:
    events = run(s.LOGIN)
    closes = [e for e in events if isinstance(e, StreamClosed)]
    assert closes == [StreamClosed(C2S, s.CLOSE), StreamClosed(S2C, s.CLOSE)]
