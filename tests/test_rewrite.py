"""Rewriting the server's SASL mechanisms: -PLUS through interception, --sasl-mechanisms."""

from __future__ import annotations

from xmppspy.events import Direction, Opaque, OpaqueReason, Rewritten, Stanza, TlsStarted
from xmppspy.session import Session

C, S = Direction.C2S, Direction.S2C
HEADER_C = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"to='example.test' version='1.0'>"
)
HEADER_S = HEADER_C.replace(b"to=", b"from=")
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
FEATURES = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism>"
    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
)
WITHOUT_PLUS = FEATURES.replace(b"<mechanism>SCRAM-SHA-1-PLUS</mechanism>", b"")
SUCCESS = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"


def intercepted() -> Session:
    """A session just past an intercepted STARTTLS, streams restarted."""
    session = Session(intercept_tls=True)
    session.feed(C, HEADER_C)
    session.feed(S, HEADER_S + PROCEED)
    assert session.forward(S, HEADER_S + PROCEED) == HEADER_S + PROCEED
    session.tls_established(TlsStarted(S, intercepted=True))
    session.feed(C, HEADER_C)
    return session


def pass_through(session: Session, chunks: list[bytes]) -> tuple[bytes, list[object]]:
    sent, events = b"", []
    for chunk in chunks:
        events += session.feed(S, chunk)
        sent += session.forward(S, chunk)
    return sent, events


def test_plus_mechanisms_are_removed_from_what_the_client_sees_and_the_change_is_shown() -> None:
    session = intercepted()
    sent, events = pass_through(session, [HEADER_S + FEATURES])
    assert sent == HEADER_S + WITHOUT_PLUS
    (rewrite,) = [e for e in events if isinstance(e, Rewritten)]
    assert rewrite.sent == WITHOUT_PLUS
    assert rewrite.reason == "removed SASL mechanisms SCRAM-SHA-1-PLUS"
    # the record of what the server sent stays the wire bytes
    assert [e.raw for e in events if isinstance(e, Stanza)] == [FEATURES]


def test_a_features_element_split_across_reads_waits_until_whole() -> None:
    session = intercepted()
    data = HEADER_S + FEATURES
    cut = len(HEADER_S) + 60
    first = session.feed(S, data[:cut])
    assert session.forward(S, data[:cut]) == HEADER_S  # the unfinished element waits
    assert not any(isinstance(e, Rewritten) for e in first)
    session.feed(S, data[cut:])
    assert session.forward(S, data[cut:]) == WITHOUT_PLUS


def test_nothing_is_held_once_authentication_succeeded() -> None:
    session = intercepted()
    pass_through(session, [HEADER_S + FEATURES])
    sent, _ = pass_through(session, [SUCCESS, HEADER_S + b"<stream:fea"])
    assert sent == SUCCESS + HEADER_S + b"<stream:fea"


def test_held_bytes_go_out_unchanged_at_the_end() -> None:
    session = intercepted()
    sent, _ = pass_through(session, [HEADER_S + FEATURES[:40]])
    assert sent == HEADER_S
    assert session.release(S) == FEATURES[:40]
    assert session.release(S) == b""


def test_sasl_mechanisms_limits_the_offer_even_without_tls() -> None:
    session = Session(sasl_mechanisms=["plain"])
    session.feed(C, HEADER_C)
    sent, events = pass_through(session, [HEADER_S + FEATURES])
    only_plain = (
        b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    )
    assert sent == HEADER_S + only_plain
    (rewrite,) = [e for e in events if isinstance(e, Rewritten)]
    assert rewrite.reason == "removed SASL mechanisms SCRAM-SHA-1, SCRAM-SHA-1-PLUS"


def test_without_interception_or_a_limit_nothing_is_rewritten_or_held() -> None:
    session = Session()
    session.feed(C, HEADER_C)
    sent, events = pass_through(session, [HEADER_S + FEATURES[:30], FEATURES[30:]])
    assert sent == HEADER_S + FEATURES
    assert not any(isinstance(e, Rewritten) for e in events)


def test_bytes_after_proceed_never_reach_the_tls_stream() -> None:
    """A server (or someone on its path) sending plaintext after <proceed/>: those bytes go to
    the client as they came, before TLS, and are not parsed as the stream inside TLS
    (the STARTTLS injection of CVE-2011-0411)."""
    injected = b"<message><body>injected</body></message>"
    session = Session(intercept_tls=True, sasl_mechanisms=["PLAIN"])
    session.feed(C, HEADER_C)
    session.feed(S, HEADER_S + PROCEED + injected)
    assert session.forward(S, HEADER_S + PROCEED + injected) == HEADER_S + PROCEED + injected
    events = session.tls_established(TlsStarted(S, intercepted=True))
    (stray,) = [e for e in events if isinstance(e, Opaque)]
    assert stray.raw == injected and stray.reason is OpaqueReason.BEFORE_TLS
    session.feed(C, HEADER_C)
    sent, events = pass_through(session, [HEADER_S + FEATURES])
    assert sent == HEADER_S + FEATURES.replace(
        b"<mechanism>SCRAM-SHA-1-PLUS</mechanism>", b""
    ).replace(b"<mechanism>SCRAM-SHA-1</mechanism>", b"")
    assert not any(isinstance(e, Stanza) and e.kind.value == "message" for e in events)
