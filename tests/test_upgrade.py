"""xmppspy's own STARTTLS with the server (--tls strip; direct-TLS clients of a STARTTLS server).

Sans-IO: the session is fed the bytes each peer sent and says what to pass on, what xmppspy
itself must send to the server, and whose bytes to read next.
"""

from __future__ import annotations

import itertools

from hypothesis import example, given
from hypothesis import strategies as st
from streams import HEADER_C, HEADER_S

from xmppspy.events import (
    Direction,
    Event,
    Notice,
    Opaque,
    OpaqueReason,
    ParseError,
    Rewritten,
    Stanza,
    StreamOpened,
    TlsStarted,
)
from xmppspy.session import STARTTLS, Session

C, S = Direction.C2S, Direction.S2C
HEADER_S2 = HEADER_S.replace(b"id='s1'", b"id='s2'")
OFFER = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"</stream:features>"
)
NO_OFFER = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
)
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
REFUSED = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>"
AFTER_TLS = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>PLAIN</mechanism></mechanisms>"
    b"</stream:features>"
)
WITHOUT_PLUS = AFTER_TLS.replace(b"<mechanism>SCRAM-SHA-1-PLUS</mechanism>", b"")
AUTH = (
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"
)
STARTED = TlsStarted(S, intercepted=True, stripped=True)


def upgrading() -> Session:
    return Session(starttls_upstream=True)


def server_sends(session: Session, data: bytes) -> tuple[bytes, list[Event]]:
    events = session.feed(S, data)
    return session.forward(S, data), events


def test_the_client_sees_only_the_stream_after_xmppspy_started_tls() -> None:
    session = upgrading()
    assert session.negotiating is C
    session.feed(C, HEADER_C)
    assert session.forward(C, HEADER_C) == HEADER_C  # the server needs it to answer
    assert session.negotiating is S

    to_client, events = server_sends(session, HEADER_S + OFFER)
    assert to_client == b""  # the client must not see <starttls/>
    assert session.take_injected() == STARTTLS
    assert session.take_injected() == b""
    held, asked = [e for e in events if isinstance(e, Rewritten)]
    assert held.dir is S and held.sent == b"" and "held back from the client" in held.reason
    assert asked.dir is C and asked.sent == STARTTLS

    to_client, _ = server_sends(session, PROCEED)
    assert to_client == b"" and session.tls_pending

    events = session.tls_established(STARTED)
    assert not session.tls_pending and session.negotiating is None
    assert session.take_injected() == HEADER_C  # the server's stream restarts inside TLS
    assert events[0] == STARTED
    (resent,) = [e for e in events if isinstance(e, Rewritten)]
    assert resent.dir is C and resent.sent == HEADER_C

    # the server's new stream goes to the client, SCRAM-*-PLUS removed (TLS ends at xmppspy)
    to_client, events = server_sends(session, HEADER_S2 + AFTER_TLS)
    assert to_client == HEADER_S2 + WITHOUT_PLUS
    (opened,) = [e for e in events if isinstance(e, StreamOpened)]
    assert opened.restart and opened.id == "s2"

    # the client's stream never restarted: its next element parses on the first header
    (auth,) = session.feed(C, AUTH)
    assert isinstance(auth, Stanza) and auth.redacted
    assert session.forward(C, AUTH) == AUTH


def test_a_server_without_starttls_gets_everything_as_it_came() -> None:
    session = upgrading()
    session.feed(C, HEADER_C)
    session.forward(C, HEADER_C)
    to_client, events = server_sends(session, HEADER_S + NO_OFFER)
    assert to_client == HEADER_S + NO_OFFER
    assert session.negotiating is None and session.take_injected() == b""
    (notice,) = [e for e in events if isinstance(e, Notice)]
    assert "the server offered no STARTTLS" in notice.text


def test_a_server_refusing_starttls_is_relayed_to_the_client_and_said() -> None:
    session = upgrading()
    session.feed(C, HEADER_C)
    session.forward(C, HEADER_C)
    assert server_sends(session, HEADER_S + OFFER)[0] == b""
    session.take_injected()
    to_client, events = server_sends(session, REFUSED)
    assert to_client == HEADER_S + OFFER + REFUSED  # the bytes the client is owed, unchanged
    (notice,) = [e for e in events if isinstance(e, Notice)]
    assert "the server refused STARTTLS" in notice.text
    assert not session.tls_pending


def test_client_bytes_after_its_header_wait_for_tls() -> None:
    """A client that pipelines (XEP-0305) must not have its stanzas sent before TLS."""
    session = upgrading()
    early = b"<presence/>"
    data = HEADER_C + early
    session.feed(C, data[:20])
    assert session.forward(C, data[:20]) == data[:20]
    session.feed(C, data[20:])
    assert session.forward(C, data[20:]) == HEADER_C[20:]
    server_sends(session, HEADER_S + OFFER)
    assert session.take_injected() == STARTTLS
    server_sends(session, PROCEED)
    session.tls_established(STARTED)
    assert session.take_injected() == HEADER_C + early


def test_a_client_that_is_not_xmpp_is_relayed_untouched() -> None:
    session = upgrading()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    events = session.feed(C, hello)
    assert session.forward(C, hello) == hello
    assert any(isinstance(e, ParseError) for e in events)
    assert any(isinstance(e, Notice) for e in events)
    assert session.negotiating is None


@given(st.lists(st.integers(min_value=1, max_value=len(HEADER_S + OFFER + PROCEED)), max_size=8))
def test_any_chunking_of_the_server_stream_hides_it_all_and_asks_once(cuts: list[int]) -> None:
    session = upgrading()
    session.feed(C, HEADER_C)
    session.forward(C, HEADER_C)
    data = HEADER_S + OFFER + PROCEED
    bounds = [0, *sorted(set(cuts)), len(data)]
    to_client, injected = b"", b""
    for start, end in itertools.pairwise(bounds):
        if start == end:
            continue
        to_client += server_sends(session, data[start:end])[0]
        injected += session.take_injected()
    assert to_client == b""
    assert injected == STARTTLS
    assert session.tls_pending


def test_direct_tls_to_the_server_removes_plus_mechanisms() -> None:
    """XEP-0368 on both sides: the client's TLS ends at xmppspy, so no channel binding."""
    session = Session(direct_tls=True)
    session.feed(C, HEADER_C)
    to_client, events = server_sends(session, HEADER_S + AFTER_TLS)
    assert to_client == HEADER_S + WITHOUT_PLUS
    assert any(isinstance(e, Rewritten) for e in events)


def test_without_upgrade_nothing_is_negotiated() -> None:
    session = Session(intercept_tls=True)
    assert session.negotiating is None
    session.feed(C, HEADER_C)
    assert server_sends(session, HEADER_S + OFFER)[0] == HEADER_S + OFFER
    assert session.take_injected() == b""


SERVER_STREAM = HEADER_S + OFFER + PROCEED


@st.composite
def hostile_server(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """The server's pre-TLS stream with bytes replaced, inserted or cut, in random reads."""
    data = bytearray(SERVER_STREAM)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["replace", "insert", "cut"]))
        blob = draw(st.binary(min_size=1, max_size=12))
        if action == "replace":
            data[at : at + len(blob)] = blob
        elif action == "insert":
            data[at:at] = blob
        else:
            del data[at : at + len(blob)]
    cuts = draw(st.lists(st.integers(min_value=1, max_value=max(1, len(data))), max_size=6))
    return bytes(data), sorted(set(cuts))


@given(hostile_server())
@example((SERVER_STREAM.replace(b"'urn:", b"'rn:", 1), []))  # no STARTTLS, yet a <proceed/>
def test_whatever_the_server_sends_the_client_gets_it_unchanged_or_only_after_tls(
    case: tuple[bytes, list[int]],
) -> None:
    """Held-back bytes are never lost or changed: either xmppspy reached TLS (and the client
    is owed nothing from before it), or the client gets exactly what the server sent."""
    data, cuts = case
    session = upgrading()
    session.feed(C, HEADER_C)
    session.forward(C, HEADER_C)
    to_client, fed = b"", 0
    gave_up = False
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    for start, end in itertools.pairwise(bounds):
        if session.tls_pending:
            break  # the relay stops reading here: the server's next bytes are TLS
        sent, events = server_sends(session, data[start:end])
        to_client += sent
        fed = end
        gave_up = gave_up or any(isinstance(e, Notice) for e in events)
        assert session.take_injected() in (b"", STARTTLS)
    if session.tls_pending and not gave_up:
        assert to_client == b""  # xmppspy's own STARTTLS got its <proceed/>
    else:  # (an unasked-for <proceed/> after giving up is the client's business)
        session.close(S)
        assert to_client + session.release(S) == data[:fed]


def test_a_server_that_hangs_up_without_a_byte_gets_a_hint_once() -> None:
    """Prosody's direct-TLS port closes on a plaintext header without answering."""
    session = Session()
    session.feed(C, HEADER_C)
    (notice,) = [e for e in session.close(S) if isinstance(e, Notice)]
    assert "without sending anything" in notice.text and "--upstream-tls" in notice.text
    assert session.close(S) == []  # the relay may close a direction twice


def test_no_hint_when_the_server_spoke_or_the_client_did_not() -> None:
    spoke = Session()
    spoke.feed(C, HEADER_C)
    spoke.feed(S, HEADER_S)
    assert not any(isinstance(e, Notice) for e in spoke.close(S))
    assert not any(isinstance(e, Notice) for e in Session().close(S))
    direct = Session(direct_tls=True)
    direct.feed(C, HEADER_C)
    assert not any(isinstance(e, Notice) for e in direct.close(S))
    done = Session()  # a client that said all it had to say and left first
    done.feed(C, HEADER_C)
    done.close(C)
    assert not any(isinstance(e, Notice) for e in done.close(S))


def test_bytes_after_proceed_are_recorded_as_before_tls_and_never_sent() -> None:
    session = upgrading()
    session.feed(C, HEADER_C)
    session.forward(C, HEADER_C)
    server_sends(session, HEADER_S + OFFER)
    session.take_injected()
    junk = b"<message><body>injected</body></message>"
    assert server_sends(session, PROCEED + junk)[0] == b""
    events = session.tls_established(STARTED)
    (stray,) = [e for e in events if isinstance(e, Opaque)]
    assert stray.raw == junk and stray.reason is OpaqueReason.BEFORE_TLS
    assert server_sends(session, HEADER_S2 + NO_OFFER)[0] == HEADER_S2 + NO_OFFER


def test_giving_up_for_a_silent_server_releases_everything_held() -> None:
    session = upgrading()
    early = b"<presence/>"
    session.feed(C, HEADER_C + early)
    assert session.forward(C, HEADER_C + early) == HEADER_C
    assert server_sends(session, HEADER_S)[0] == b""  # a header, then silence
    (notice,) = session.give_up("the server sent nothing more for 10 s")
    assert isinstance(notice, Notice) and "nothing more for 10 s" in notice.text
    assert session.forward(S, b"") == HEADER_S
    assert session.take_injected() == early
    assert session.negotiating is None
    assert session.give_up("again") == []
