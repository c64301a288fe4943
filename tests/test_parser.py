"""StreamParser: one direction's bytes in, events out, whatever the chunking, whatever the bytes."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from itertools import accumulate, pairwise
from pathlib import Path

import pytest
import streams as s
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xmppspy.events import (
    Direction,
    Keepalive,
    Kind,
    Opaque,
    OpaqueReason,
    ParseError,
    Stanza,
    StreamClosed,
    StreamOpened,
    WireEvent,
)
from xmppspy.parser import DEFAULT_MAX_STANZA_SIZE, State, StreamParser

C2S, S2C = Direction.C2S, Direction.S2C

HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='localhost' version='1.0'>"
)
"""A minimal client stream header, for tests about what comes after it."""

# What each side does after the element that ends a stream: the client's PLAIN <auth/> is answered
# by <success/> (no challenge), so restarting after either gives the same byte boundaries.
RESTART_AFTER = {C2S: Kind.SASL_AUTH, S2C: Kind.SASL_SUCCESS}
OPAQUE_AFTER = {C2S: Kind.STARTTLS, S2C: Kind.PROCEED}


# -- helpers --------------------------------------------------------------------------------------


def feed_all(parser: StreamParser, chunks: Iterable[bytes]) -> list[WireEvent]:
    """Feed every chunk; when the parser pauses, resume it the way a session would."""
    events: list[WireEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
        while parser.state is State.PAUSED:
            last = events[-1]
            assert isinstance(last, Stanza)
            if last.kind is OPAQUE_AFTER[parser.direction]:
                events += parser.go_opaque(OpaqueReason.TLS)
            else:
                events += parser.restart()
    return events


def parse(
    chunks: bytes | Sequence[bytes], direction: Direction = C2S, **kwargs: int
) -> list[WireEvent]:
    """Events of one direction's bytes, resuming after SASL and going opaque after STARTTLS."""
    parser = StreamParser(
        direction,
        pause_after=(RESTART_AFTER[direction], OPAQUE_AFTER[direction]),
        **kwargs,
    )
    return feed_all(parser, [chunks] if isinstance(chunks, bytes) else chunks)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in pairwise(points) if b > a]


def one_byte_chunks(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def normalise(events: Iterable[WireEvent]) -> list[WireEvent]:
    """Merge adjacent keepalives and adjacent opaque runs: how they split depends on the reads."""
    out: list[WireEvent] = []
    for event in events:
        prev = out[-1] if out else None
        if isinstance(event, Keepalive) and isinstance(prev, Keepalive):
            out[-1] = Keepalive(event.dir, prev.raw + event.raw)
        elif isinstance(event, Opaque) and isinstance(prev, Opaque) and prev.reason is event.reason:
            out[-1] = Opaque(event.dir, prev.raw + event.raw, event.reason)
        else:
            out.append(event)
    return out


def raw_of(events: Iterable[WireEvent]) -> bytes:
    return b"".join(event.raw for event in events)


def stanzas(events: Iterable[WireEvent]) -> list[Stanza]:
    return [event for event in events if isinstance(event, Stanza)]


def errors(events: Iterable[WireEvent]) -> list[ParseError]:
    return [event for event in events if isinstance(event, ParseError)]


def one_stanza(stanza: bytes, header: bytes = HEADER) -> Stanza:
    events = parse(header + stanza)
    assert [type(e) for e in events] == [StreamOpened, Stanza], events
    found = events[1]
    assert isinstance(found, Stanza)
    assert found.raw == stanza
    return found


def assert_error_then_opaque(events: Sequence[WireEvent], data: bytes) -> ParseError:
    """The bytes come back whole, there is a ParseError, and after it only Opaque events."""
    assert raw_of(events) == data
    kinds = [type(e) for e in events]
    assert ParseError in kinds, events
    first = kinds.index(ParseError)
    assert all(kind is Opaque for kind in kinds[first + 1 :]), events[first:]
    assert all(
        e.reason is OpaqueReason.AFTER_ERROR for e in events[first + 1 :] if isinstance(e, Opaque)
    )
    error = events[first]
    assert isinstance(error, ParseError)
    return error


def kinds_of(events: Iterable[WireEvent]) -> list[str]:
    """A compact picture of a run of events."""
    out = []
    for event in events:
        if isinstance(event, Stanza):
            out.append(event.kind.value)
        elif isinstance(event, StreamOpened):
            out.append("restart" if event.restart else "open")
        else:
            out.append(type(event).__name__)
    return out


# -- whole transcripts ----------------------------------------------------------------------------

LOGIN_C2S_EVENTS = [
    "open",
    "sasl:auth",
    "restart",
    "iq",
    "sm:enable",
    "iq",
    "presence",
    "message",
    "sm:r",
    "sm:a",
    "Keepalive",
    "iq",
    "Keepalive",
    "StreamClosed",
]
LOGIN_S2C_EVENTS = [
    "open",
    "stream:features",
    "sasl:success",
    "restart",
    "stream:features",
    "iq",
    "sm:enabled",
    "iq",
    "presence",
    "presence",
    "message",
    "sm:a",
    "sm:r",
    "Keepalive",
    "iq",
    "StreamClosed",
]
STARTTLS_C2S_EVENTS = ["open", "tls:starttls", "Opaque"]
STARTTLS_S2C_EVENTS = ["open", "stream:features", "tls:proceed", "Opaque"]

TRANSCRIPTS = {
    "login-c2s": (C2S, s.LOGIN_C2S, LOGIN_C2S_EVENTS),
    "login-s2c": (S2C, s.LOGIN_S2C, LOGIN_S2C_EVENTS),
    "starttls-c2s": (C2S, s.STARTTLS_C2S, STARTTLS_C2S_EVENTS),
    "starttls-s2c": (S2C, s.STARTTLS_S2C, STARTTLS_S2C_EVENTS),
}


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_in_one_piece(name: str) -> None:
    direction, data, expected = TRANSCRIPTS[name]
    events = parse(data, direction)
    assert kinds_of(events) == expected
    assert raw_of(events) == data
    assert all(event.dir is direction for event in events)
    assert not errors(events)


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_one_byte_at_a_time(name: str) -> None:
    direction, data, _ = TRANSCRIPTS[name]
    whole = parse(data, direction)
    events = parse(one_byte_chunks(data), direction)
    assert raw_of(events) == data
    assert normalise(events) == normalise(whole)


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_as_the_peers_wrote_it(name: str) -> None:
    """Each write of the transcript as one read: the boundaries real software produces."""
    direction, data, _ = TRANSCRIPTS[name]
    session = s.LOGIN if name.startswith("login") else s.STARTTLS_SESSION
    writes = [chunk for d, chunk in session if d is direction]
    assert b"".join(writes) == data
    events = parse(writes, direction)
    assert raw_of(events) == data
    assert normalise(events) == normalise(parse(data, direction))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(TRANSCRIPTS)), data=st.data())
def test_transcript_any_chunking(name: str, data: st.DataObject) -> None:
    direction, stream, _ = TRANSCRIPTS[name]
    cuts = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=60), label="cuts")
    events = parse(split(stream, cuts), direction)
    assert raw_of(events) == stream
    assert normalise(events) == normalise(parse(stream, direction))


def test_multibyte_utf8_split_at_every_position() -> None:
    """A read may end inside a character (the rose is 4 bytes); the stanza must not change."""
    data = HEADER + s.MESSAGE_IN + s.MESSAGE_OUT
    whole = parse(data)
    assert [x.raw for x in stanzas(whole)] == [s.MESSAGE_IN, s.MESSAGE_OUT]
    for cut in range(1, len(data)):
        events = parse([data[:cut], data[cut:]])
        assert events == whole, cut


# -- stream headers -------------------------------------------------------------------------------


def test_client_header_attributes() -> None:
    (opened,) = parse(s.CLIENT_HEADER)
    assert opened == StreamOpened(
        C2S,
        s.CLIENT_HEADER,
        to="localhost",
        from_=None,
        id=None,
        version="1.0",
        lang="en",
        xmlns="jabber:client",
        restart=False,
    )


def test_server_header_with_xml_declaration_in_its_own_read() -> None:
    """Prosody writes the declaration and the header separately: one event covers both."""
    assert parse(s.XML_DECLARATION, S2C) == []
    parser = StreamParser(S2C)
    assert parser.feed(s.XML_DECLARATION) == []
    assert parser.pending == len(s.XML_DECLARATION)
    (opened,) = parser.feed(s.SERVER_HEADER_1)
    assert isinstance(opened, StreamOpened)
    assert opened.raw == s.XML_DECLARATION + s.SERVER_HEADER_1
    assert opened.id == "51b17871-37fc-4277-b3da-73ba270c4fbf"
    assert opened.from_ == "localhost"
    assert opened.to is None
    assert opened.version == "1.0"
    assert opened.lang == "en"
    assert opened.xmlns == "jabber:client"
    assert opened.restart is False
    assert parser.pending == 0


def test_header_with_double_quotes_other_prefix_and_leading_whitespace() -> None:
    header = (
        b'\r\n  <s:stream xmlns:s="http://etherx.jabber.org/streams" xmlns="jabber:server"\n'
        b'    to="capulet.example" from="montague.example" id="a&amp;b" version="1.0">'
    )
    (opened,) = parse(header)
    assert isinstance(opened, StreamOpened)
    assert opened.raw == header
    assert (opened.to, opened.from_, opened.id) == ("capulet.example", "montague.example", "a&b")
    assert opened.xmlns == "jabber:server"
    assert opened.lang is None
    # The header's prefix is the one stanzas use: features in s: are still stream features.
    (features,) = parse(header + b"<s:features/>")[1:]
    assert isinstance(features, Stanza)
    assert features.kind is Kind.FEATURES


def test_header_without_default_namespace() -> None:
    header = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    opened, message = parse(header + b"<message/>")
    assert isinstance(opened, StreamOpened)
    assert opened.xmlns is None
    assert isinstance(message, Stanza)
    assert message.name == "message"
    assert message.kind is Kind.OTHER


def test_restart_flag_only_on_later_headers() -> None:
    events = parse(s.LOGIN_S2C, S2C)
    opened = [e for e in events if isinstance(e, StreamOpened)]
    assert [o.restart for o in opened] == [False, True]
    assert [o.id for o in opened] == [
        "51b17871-37fc-4277-b3da-73ba270c4fbf",
        "7c038d54-63e3-4fff-804c-8405238d1a12",
    ]
    assert opened[1].raw == s.XML_DECLARATION + s.SERVER_HEADER_2


# -- stanza kinds and fields ----------------------------------------------------------------------

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SM = "urn:xmpp:sm:3"

KIND_EXAMPLES: list[tuple[bytes, Kind, str]] = [
    (s.MESSAGE_IN, Kind.MESSAGE, "{jabber:client}message"),
    (s.PRESENCE, Kind.PRESENCE, "{jabber:client}presence"),
    (s.PING, Kind.IQ, "{jabber:client}iq"),
    (s.FEATURES_1, Kind.FEATURES, "{http://etherx.jabber.org/streams}features"),
    (
        b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced by new connection</text>"
        b"</stream:error>",
        Kind.STREAM_ERROR,
        "{http://etherx.jabber.org/streams}error",
    ),
    (s.STARTTLS, Kind.STARTTLS, f"{{{TLS}}}starttls"),
    (s.PROCEED, Kind.PROCEED, f"{{{TLS}}}proceed"),
    (b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", Kind.TLS_FAILURE, f"{{{TLS}}}failure"),
    (s.AUTH, Kind.SASL_AUTH, f"{{{SASL}}}auth"),
    (
        b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        b"cj1meWtvK2QybGJiRmdPTlJ2OXFreGRhd0wzcmZjTkhZSlkxWlZ2V1ZzN2oscz1RU1hDUitRNnNl"
        b"azhiZjkyLGk9NDA5Ng=="
        b"</challenge>",
        Kind.SASL_CHALLENGE,
        f"{{{SASL}}}challenge",
    ),
    (
        b'<response xmlns="urn:ietf:params:xml:ns:xmpp-sasl">'
        b"Yz1iaXdzLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdMM3JmY05IWUpZMVpWdldWczdqLHA9djBY"
        b"OHYzQnoyVDBDSkdiSlF5RjBYK0hJNFRzPQ=="
        b"</response>",
        Kind.SASL_RESPONSE,
        f"{{{SASL}}}response",
    ),
    (s.SUCCESS, Kind.SASL_SUCCESS, f"{{{SASL}}}success"),
    (
        b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
        b"<text xml:lang='en'>Unable to authorize you with the authentication credentials you've"
        b" sent.</text></failure>",
        Kind.SASL_FAILURE,
        f"{{{SASL}}}failure",
    ),
    (b'<abort xmlns="urn:ietf:params:xml:ns:xmpp-sasl" />', Kind.SASL_ABORT, f"{{{SASL}}}abort"),
    (s.SM_ENABLE, Kind.SM_ENABLE, f"{{{SM}}}enable"),
    (s.SM_ENABLED, Kind.SM_ENABLED, f"{{{SM}}}enabled"),
    (s.SM_REQUEST_C2S, Kind.SM_REQUEST, f"{{{SM}}}r"),
    (s.SM_ANSWER_S2C, Kind.SM_ANSWER, f"{{{SM}}}a"),
    (
        b'<resume xmlns="urn:xmpp:sm:3" h="4" previd="b35827ef-87dd-4b31-84c4-7a3a244b2f3e" />',
        Kind.SM_RESUME,
        f"{{{SM}}}resume",
    ),
    (
        b"<resumed xmlns='urn:xmpp:sm:3' h='3' previd='b35827ef-87dd-4b31-84c4-7a3a244b2f3e'/>",
        Kind.SM_RESUMED,
        f"{{{SM}}}resumed",
    ),
    (
        b"<failed xmlns='urn:xmpp:sm:3' h='3'>"
        b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>",
        Kind.SM_FAILED,
        f"{{{SM}}}failed",
    ),
    (b'<active xmlns="urn:xmpp:csi:0" />', Kind.OTHER, "{urn:xmpp:csi:0}active"),
]


def test_kind_examples_cover_every_kind() -> None:
    assert {kind for _, kind, _ in KIND_EXAMPLES} == set(Kind)


@pytest.mark.parametrize(
    ("raw", "kind", "name"), KIND_EXAMPLES, ids=[k.value for _, k, _ in KIND_EXAMPLES]
)
def test_stanza_kind_and_name(raw: bytes, kind: Kind, name: str) -> None:
    stanza = one_stanza(raw)
    assert stanza.kind is kind
    assert stanza.name == name
    assert stanza.dir is C2S
    assert stanza.redacted is False
    assert stanza.element.tag == name


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"<enable xmlns='urn:xmpp:sm:4' resume='true'/>", "{urn:xmpp:sm:4}enable"),
        (
            b"<db:result xmlns:db='jabber:server:dialback' from='a.example' to='b.example'>"
            b"b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3</db:result>",
            "{jabber:server:dialback}result",
        ),
        (b"<message xmlns='urn:example:not-a-stanza'/>", "{urn:example:not-a-stanza}message"),
        (b"<stream:unknown/>", "{http://etherx.jabber.org/streams}unknown"),
        (b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", f"{{{SASL}}}proceed"),
    ],
)
def test_other_kind_keeps_its_clark_name(raw: bytes, name: str) -> None:
    stanza = one_stanza(raw)
    assert stanza.kind is Kind.OTHER
    assert stanza.name == name


@pytest.mark.parametrize("namespace", ["jabber:client", "jabber:server", "jabber:component:accept"])
def test_stanza_kinds_in_every_stanza_namespace(namespace: str) -> None:
    header = (
        b"<stream:stream xmlns='" + namespace.encode() + b"'"
        b" xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>"
    )
    events = parse(header + b"<message/><presence/><iq type='get' id='x'><query/></iq>")
    assert [(x.kind, x.name) for x in stanzas(events)] == [
        (Kind.MESSAGE, f"{{{namespace}}}message"),
        (Kind.PRESENCE, f"{{{namespace}}}presence"),
        (Kind.IQ, f"{{{namespace}}}iq"),
    ]


def test_stanza_fields_of_a_chat_message() -> None:
    message = one_stanza(s.MESSAGE_IN)
    assert message.type == "chat"
    assert message.from_ == "romeo@localhost/orchard"
    assert message.to == "juliet@localhost/balcony"
    assert message.id == "f3be5bd0-1f75-47a0-b564-5858d5711ca1"
    assert message.child == "{jabber:client}body"


def test_stanza_fields_of_iqs() -> None:
    bind = one_stanza(s.BIND_SET)
    assert (bind.type, bind.id, bind.from_, bind.to) == ("set", s.BIND_ID, None, None)
    assert bind.child == "{urn:ietf:params:xml:ns:xmpp-bind}bind"
    ping = one_stanza(s.PING)
    assert (ping.type, ping.to, ping.child) == ("get", "localhost", "{urn:xmpp:ping}ping")
    pong = one_stanza(s.PONG)
    assert (pong.type, pong.from_, pong.to) == ("result", "localhost", "juliet@localhost/balcony")
    assert pong.child is None
    roster = one_stanza(s.ROSTER_RESULT)
    assert roster.child == "{jabber:iq:roster}query"


def test_child_is_the_first_child_only() -> None:
    stanza = one_stanza(b"<iq type='get' id='1'><a xmlns='urn:a'><b/></a><c/></iq>")
    assert stanza.child == "{urn:a}a"


def test_attributes_with_entities_are_decoded() -> None:
    stanza = one_stanza(b"<message id='a&amp;b&#x3c;&#62;' to='x&apos;y@z' type=\"c&quot;d\"/>")
    assert (stanza.id, stanza.to, stanza.type) == ("a&b<>", "x'y@z", 'c"d')


# -- the lazily parsed element --------------------------------------------------------------------


def test_element_text_with_entities_and_multibyte_utf8() -> None:
    message = one_stanza(s.MESSAGE_IN)
    element = message.element
    assert element.findtext("{jabber:client}body") == s.MESSAGE_IN_BODY
    assert element.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert element[1].tag == "{http://jabber.org/protocol/chatstates}active"
    assert message.element is element, "parsed once, then cached"


def test_element_cdata_section() -> None:
    message = one_stanza(s.MESSAGE_OUT)
    assert message.element.findtext("{jabber:client}body") == s.MESSAGE_OUT_BODY
    assert message.child == "{jabber:client}body"


def test_element_namespaces_from_the_stream_header() -> None:
    roster = one_stanza(s.ROSTER_RESULT, header=s.XML_DECLARATION + s.SERVER_HEADER_1)
    items = roster.element.findall("{jabber:iq:roster}query/{jabber:iq:roster}item")
    assert [item.get("name") for item in items] == ["Romeo", "Nurse <Angelica>"]
    assert items[0].findtext("{jabber:iq:roster}group") == "Montague & Capulet"
    features = one_stanza(s.FEATURES_2, header=s.SERVER_HEADER_2)
    assert features.element.tag == "{http://etherx.jabber.org/streams}features"
    assert [child.tag for child in features.element][:2] == [
        "{urn:ietf:params:xml:ns:xmpp-bind}bind",
        "{urn:ietf:params:xml:ns:xmpp-session}session",
    ]


def test_element_prefix_declared_only_on_the_header() -> None:
    header = (
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns:db='jabber:server:dialback' to='capulet.example' version='1.0'>"
    )
    result = one_stanza(
        b"<db:result from='montague.example' to='capulet.example'>b4835385f37fe</db:result>",
        header=header,
    )
    assert result.name == "{jabber:server:dialback}result"
    assert result.element.tag == "{jabber:server:dialback}result"
    assert result.element.text == "b4835385f37fe"


# -- keepalives and closing -----------------------------------------------------------------------


def test_keepalives_between_stanzas() -> None:
    data = HEADER + b" " + s.PRESENCE + b"\n" + s.PING + b"\r\n\t " + s.CLOSE + b"\n"
    events = parse(data)
    assert kinds_of(events) == [
        "open",
        "Keepalive",
        "presence",
        "Keepalive",
        "iq",
        "Keepalive",
        "StreamClosed",
        "Keepalive",
    ]
    assert [e.raw for e in events if isinstance(e, Keepalive)] == [b" ", b"\n", b"\r\n\t ", b"\n"]
    assert raw_of(events) == data


def test_keepalive_is_reported_when_it_arrives() -> None:
    """A lone space is a keepalive: the user sees it now, not with the next stanza."""
    parser = StreamParser(C2S)
    parser.feed(HEADER)
    assert parser.feed(b" ") == [Keepalive(C2S, b" ")]
    assert parser.feed(b"\n\n") == [Keepalive(C2S, b"\n\n")]
    assert parser.pending == 0


def test_stream_close() -> None:
    parser = StreamParser(C2S)
    parser.feed(HEADER)
    assert parser.feed(b"</stream:stream\n>") == [StreamClosed(C2S, b"</stream:stream\n>")]
    assert parser.state is State.CLOSED
    assert parser.feed(b"  ") == [Keepalive(C2S, b"  ")]


def test_stream_close_in_pieces() -> None:
    events = parse([HEADER, b"</stream:", b"stream", b">"])
    assert events[1:] == [StreamClosed(C2S, b"</stream:stream>")]


# -- element framing ------------------------------------------------------------------------------

FRAMING = [
    b"<presence/>",
    b"<presence />",
    b"<presence></presence>",
    b"<presence\n\ttype='unavailable'\n/>",
    b"<message id='a>b' to=\"romeo@localhost/x/>y\"><body>1 > 0</body></message>",
    b"<message><body>a/>b &lt;/message&gt; c</body></message>",
    b"<message><body>x</body></message >",
    b"<message><body>x</body ></message\r\n\t>",
    b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<message><body/><body></body><x xmlns='urn:x'><y a='/>'/></x></message>",
    b"<message xmlns:p='urn:p'><p:x p:a='1'/></message>",
]


@pytest.mark.parametrize("stanza", FRAMING)
def test_framing(stanza: bytes) -> None:
    data = HEADER + stanza + s.PRESENCE
    events = parse(data)
    assert [e.raw for e in events] == [HEADER, stanza, s.PRESENCE]
    for cut in range(len(HEADER) + 1, len(data)):
        assert parse([data[:cut], data[cut:]]) == events, cut


def test_framing_all_in_one_read() -> None:
    data = HEADER + b"".join(FRAMING) + s.CLOSE
    events = parse(data)
    assert [e.raw for e in events] == [HEADER, *FRAMING, s.CLOSE]


def test_self_closing_child_does_not_end_the_stanza() -> None:
    stanza = one_stanza(b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert stanza.element.find("{urn:xmpp:ping}ping") is not None


# -- pausing, restarting, going opaque ------------------------------------------------------------


def test_pause_after_success_and_restart_with_trailing_bytes() -> None:
    parser = StreamParser(S2C, pause_after=[Kind.SASL_SUCCESS])
    parser.feed(s.XML_DECLARATION + s.SERVER_HEADER_1 + s.FEATURES_1)
    # success, the next declaration and header and half of the features, in one read
    chunk = s.SUCCESS + s.XML_DECLARATION + s.SERVER_HEADER_2 + s.FEATURES_2[:40]
    events = parser.feed(chunk)
    assert [e.raw for e in events] == [s.SUCCESS]
    assert parser.state is State.PAUSED
    assert parser.pending == len(chunk) - len(s.SUCCESS)
    # more bytes while paused are held, not lost
    assert parser.feed(s.FEATURES_2[40:60]) == []
    events = parser.restart()
    assert len(events) == 1
    opened = events[0]
    assert isinstance(opened, StreamOpened)
    assert opened.restart is True
    assert opened.raw == s.XML_DECLARATION + s.SERVER_HEADER_2
    assert opened.id == "7c038d54-63e3-4fff-804c-8405238d1a12"
    (features,) = parser.feed(s.FEATURES_2[60:])
    assert isinstance(features, Stanza)
    assert features.raw == s.FEATURES_2
    assert features.kind is Kind.FEATURES
    assert parser.pending == 0


def test_restart_with_complete_stanzas_held() -> None:
    parser = StreamParser(S2C, pause_after=[Kind.SASL_SUCCESS])
    parser.feed(s.SERVER_HEADER_1)
    data = s.SUCCESS + s.SERVER_HEADER_2 + s.FEATURES_2 + s.BIND_RESULT
    assert kinds_of(parser.feed(data)) == ["sasl:success"]
    assert kinds_of(parser.restart()) == ["restart", "stream:features", "iq"]
    assert parser.state is State.STREAM


def test_a_tls_restart_reports_held_bytes_instead_of_parsing_them() -> None:
    """Bytes read after <proceed/> came before TLS: they cannot start the stream inside it."""
    parser = StreamParser(S2C, pause_after=[Kind.PROCEED])
    fed = s.SERVER_HEADER_1 + s.PROCEED + s.SERVER_HEADER_2 + s.FEATURES_2[:30]
    events = parser.feed(fed)
    assert kinds_of(events) == ["open", "tls:proceed"]
    (stray,) = parser.restart(tls=True)
    assert isinstance(stray, Opaque) and stray.reason is OpaqueReason.BEFORE_TLS
    assert stray.raw == s.SERVER_HEADER_2 + s.FEATURES_2[:30]
    assert parser.pending == 0 and parser.state is State.HEADER
    inside = s.XML_DECLARATION + s.SERVER_HEADER_2 + s.FEATURES_2
    after = parser.feed(inside)
    assert kinds_of(after) == ["restart", "stream:features"]
    assert b"".join(e.raw for e in [*events, stray, *after]) == fed + inside


def test_restart_with_nothing_held() -> None:
    parser = StreamParser(S2C, pause_after=[Kind.SASL_SUCCESS])
    parser.feed(s.SERVER_HEADER_1 + s.SUCCESS)
    assert parser.restart() == []
    assert parser.state is State.HEADER
    (opened,) = parser.feed(s.SERVER_HEADER_2)
    assert isinstance(opened, StreamOpened)
    assert opened.restart


def test_new_header_uses_its_own_namespace_declarations() -> None:
    """After a restart the new header's declarations, not the old ones, give stanzas meaning."""
    parser = StreamParser(S2C, pause_after=[Kind.SASL_SUCCESS])
    parser.feed(
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'>" + s.SUCCESS
    )
    parser.restart()
    events = parser.feed(s.SERVER_HEADER_2 + b"<stream:features/><s:features/>")
    assert kinds_of(events) == ["restart", "stream:features", "ParseError"]
    assert "prefix" in events[2].reason


def test_go_opaque_with_trailing_bytes() -> None:
    parser = StreamParser(S2C, pause_after=[Kind.PROCEED])
    parser.feed(s.XML_DECLARATION + s.SERVER_HEADER_1 + s.STARTTLS_FEATURES)
    events = parser.feed(s.PROCEED + s.SERVER_HELLO[:30])
    assert kinds_of(events) == ["tls:proceed"]
    assert parser.feed(s.SERVER_HELLO[30:40]) == []
    assert parser.go_opaque(OpaqueReason.TLS) == [
        Opaque(S2C, s.SERVER_HELLO[:40], OpaqueReason.TLS)
    ]
    assert parser.state is State.OPAQUE
    assert parser.feed(s.SERVER_HELLO[40:]) == [Opaque(S2C, s.SERVER_HELLO[40:], OpaqueReason.TLS)]
    assert parser.feed(b"") == []
    assert parser.pending == 0


def test_opaque_bytes_are_never_parsed() -> None:
    """Encrypted bytes that look like XML (a close tag, a stanza) stay opaque."""
    events = parse(s.STARTTLS_S2C, S2C)
    assert events[-1] == Opaque(S2C, s.SERVER_HELLO, OpaqueReason.TLS)
    assert b"</stream:stream>" in s.SERVER_HELLO
    events = parse(one_byte_chunks(s.STARTTLS_S2C), S2C)
    assert all(isinstance(e, Opaque) for e in events[3:])
    assert raw_of(events[3:]) == s.SERVER_HELLO


def test_go_opaque_without_pause() -> None:
    parser = StreamParser(C2S)
    parser.feed(HEADER + b"<message><bo")
    assert parser.pending == len(b"<message><bo")
    assert parser.go_opaque(OpaqueReason.TLS) == [Opaque(C2S, b"<message><bo", OpaqueReason.TLS)]
    assert parser.feed(b"dy>") == [Opaque(C2S, b"dy>", OpaqueReason.TLS)]


# -- hypothesis: any bytes at all -----------------------------------------------------------------


def check_any_input(
    data: bytes, cuts: Iterable[int], direction: Direction = C2S, **kwargs: int
) -> list[WireEvent]:
    """What holds for every input: no exception, bytes back, nothing parsed after an error."""
    parser = StreamParser(
        direction, pause_after=(RESTART_AFTER[direction], OPAQUE_AFTER[direction]), **kwargs
    )
    events = feed_all(parser, split(data, cuts))
    assert raw_of(events) == data[: len(data) - parser.pending]
    assert all(event.dir is direction for event in events)
    first_error = next((i for i, e in enumerate(events) if isinstance(e, ParseError)), None)
    if first_error is not None:
        assert all(isinstance(e, Opaque) for e in events[first_error + 1 :]), events[first_error:]
        assert parser.pending == 0
        assert raw_of(events) == data
    return events


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(1, 400), max_size=20))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    check_any_input(data, [c for c in cuts if c < len(data)])


@settings(max_examples=300, deadline=None)
@example(data=b"!\x00", cuts=[])
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(1, 400), max_size=20),
)
def test_random_bytes_after_a_valid_header(data: bytes, cuts: list[int]) -> None:
    stream = s.CLIENT_HEADER + data
    events = check_any_input(stream, [c for c in cuts if c < len(stream)])
    assert isinstance(events[0], StreamOpened)


def mutate(data: bytes, mutations: Iterable[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, where, value in mutations:
        i = min(max(where, 0), len(out))
        if op == "insert":
            out.insert(i, value)
        elif i < len(out):
            if op == "delete":
                del out[i]
            elif op == "replace":
                out[i] = value
            else:
                out[i] ^= value or 0x80
    return bytes(out)


@settings(max_examples=500, deadline=None)
@given(name=st.sampled_from(["login-c2s", "login-s2c"]), data=st.data())
def test_mutated_transcripts(name: str, data: st.DataObject) -> None:
    direction, stream, _ = TRANSCRIPTS[name]
    # Many mutations land next to a tag or between events, where framing decisions are made.
    tags = [i + d for i, byte in enumerate(stream) if byte in b"<>" for d in (-1, 0, 1)]
    ends = list(accumulate(len(e.raw) for e in parse(stream, direction)))
    between = [i + d for i in ends for d in (-1, 0, 1)]
    where = st.one_of(st.integers(0, len(stream)), st.sampled_from(tags), st.sampled_from(between))
    # Bytes that matter to XML as often as any other byte.
    value = st.one_of(st.integers(0, 255), st.sampled_from(b"<>/&;'\"= \nx"))
    mutation = st.tuples(st.sampled_from(["insert", "delete", "replace", "flip"]), where, value)
    mutated = mutate(stream, data.draw(st.lists(mutation, min_size=1, max_size=4), label="mut"))
    cuts = data.draw(st.lists(st.integers(1, max(1, len(mutated) - 1)), max_size=30), label="cuts")
    check_any_input(mutated, cuts, direction)


# -- hostile input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",  # never valid in UTF-8
        b"\xc0\xaf",  # overlong encoding of '/'
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xe2\x98",  # truncated, followed by ASCII
    ],
)
def test_invalid_utf8(bad: bytes) -> None:
    data = HEADER + s.PRESENCE + b"<message><body>a" + bad + b"b</body></message>" + s.PING
    events = parse(data)
    error = assert_error_then_opaque(events, data)
    assert kinds_of(events[:2]) == ["open", "presence"]
    assert error.offset == len(HEADER + s.PRESENCE)
    assert error.at == data.index(bad, error.offset)


def test_invalid_utf8_in_one_byte_reads() -> None:
    data = HEADER + b"<message><body>a\xffb</body></message>" + s.PING
    events = parse(one_byte_chunks(data))
    error = assert_error_then_opaque(events, data)
    assert error.at == data.index(b"\xff")


def test_nul_byte() -> None:
    data = HEADER + b"<message><body>a\x00b</body></message>"
    error = assert_error_then_opaque(parse(data), data)
    assert error.at == data.index(b"\x00")


def test_control_character_reference() -> None:
    data = HEADER + b"<message><body>&#0;</body></message>"
    assert_error_then_opaque(parse(data), data)


BILLION_LAUGHS = (
    b"<?xml version='1.0'?>\n"
    b"<!DOCTYPE stream:stream [\n"
    b' <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n"
    + HEADER
    + b"<message><body>&lol9;</body></message>"
)


def test_billion_laughs_is_refused_without_expanding() -> None:
    started = time.perf_counter()
    events = parse(BILLION_LAUGHS)
    elapsed = time.perf_counter() - started
    error = assert_error_then_opaque(events, BILLION_LAUGHS)
    assert "DOCTYPE" in error.reason
    assert error.offset == 0
    assert not stanzas(events)
    assert sum(len(e.raw) for e in events) == len(BILLION_LAUGHS)
    assert elapsed < 0.5


def test_billion_laughs_in_one_byte_reads() -> None:
    events = parse(one_byte_chunks(BILLION_LAUGHS))
    error = assert_error_then_opaque(events, BILLION_LAUGHS)
    assert "DOCTYPE" in error.reason


@pytest.mark.parametrize("form", ["internal-subset", "external-dtd", "no-doctype"])
def test_external_entity_never_reads_the_file(tmp_path: Path, form: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-3f9a1c")
    uri = secret.as_uri().encode()
    prologue = {
        "internal-subset": b"<!DOCTYPE stream:stream [<!ENTITY xxe SYSTEM '" + uri + b"'>]>",
        "external-dtd": b"<!DOCTYPE stream:stream SYSTEM '" + uri + b"'>",
        "no-doctype": b"",
    }[form]
    data = prologue + HEADER + b"<message><body>&xxe;</body></message>" + s.PING
    events = parse(data)
    error = assert_error_then_opaque(events, data)
    assert not stanzas(events)
    assert all(b"TOP-SECRET" not in e.raw for e in events)
    assert "TOP-SECRET" not in error.reason
    if form == "no-doctype":
        assert "entity" in error.reason


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"<!-- hello -->" + HEADER, b"<!--"),
        (HEADER + s.PRESENCE + b"<!-- between -->" + s.PING, b"<!--"),
        (HEADER + b"<message><!-- inside --><body>x</body></message>", b"<!--"),
    ],
    ids=["before-header", "between-stanzas", "inside-stanza"],
)
def test_comments_are_refused(data: bytes, where: bytes) -> None:
    events = parse(data)
    error = assert_error_then_opaque(events, data)
    assert "comment" in error.reason
    assert data.index(where) <= error.at <= data.index(b"-->") + 3


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"<?xml-stylesheet href='x.xsl'?>" + HEADER, b"<?xml-"),
        (HEADER + s.PRESENCE + b"<?php echo 1; ?>" + s.PING, b"<?php"),
        (HEADER + b"<message><?pi data?></message>", b"<?pi"),
    ],
    ids=["before-header", "between-stanzas", "inside-stanza"],
)
def test_processing_instructions_are_refused(data: bytes, where: bytes) -> None:
    events = parse(data)
    error = assert_error_then_opaque(events, data)
    assert "processing instruction" in error.reason
    assert data.index(where) <= error.at <= data.index(b"?>", data.index(where)) + 2


@pytest.mark.parametrize(
    "construct",
    [b"<!-- c -->", b"<?pi data?>", b"<!DOCTYPE x [<!ENTITY a 'b'>]>"],
    ids=["comment", "processing-instruction", "doctype"],
)
def test_error_points_at_the_refused_construct(construct: bytes) -> None:
    """``at`` is the first byte of what was refused, not the byte after it."""
    if construct.startswith(b"<!DOCTYPE"):
        data = construct + HEADER + s.PRESENCE
    else:
        data = HEADER + b"<message>" + construct + b"</message>"
    error = assert_error_then_opaque(parse(data), data)
    assert error.at == data.index(construct)


def test_xml_declaration_in_the_middle_is_refused() -> None:
    data = HEADER + s.PRESENCE + b"<?xml version='1.0'?>" + s.PING
    events = parse(data)
    assert_error_then_opaque(events, data)
    assert kinds_of(events[:2]) == ["open", "presence"]


@pytest.mark.parametrize("encoding", [b"ISO-8859-1", b"UTF-16", b"US-ASCII"])
def test_non_utf8_encoding_is_refused(encoding: bytes) -> None:
    data = b"<?xml version='1.0' encoding='" + encoding + b"'?>" + HEADER
    error = assert_error_then_opaque(parse(data), data)
    assert "encoding" in error.reason
    assert encoding.decode() in error.reason


@pytest.mark.parametrize("encoding", [b"UTF-8", b"utf-8"])
def test_utf8_encoding_declaration_is_accepted(encoding: bytes) -> None:
    data = b"<?xml version='1.0' encoding='" + encoding + b"'?>" + HEADER
    (opened,) = parse(data)
    assert opened.raw == data


def test_xml_1_1_is_refused() -> None:
    data = b"<?xml version='1.1'?>" + HEADER
    error = assert_error_then_opaque(parse(data), data)
    assert "1.1" in error.reason


def test_utf8_byte_order_mark_is_part_of_the_header() -> None:
    data = b"\xef\xbb\xbf" + HEADER
    (opened,) = parse(data)
    assert opened.raw == data


def test_undeclared_entity() -> None:
    data = HEADER + b"<message><body>Romeo&nbsp;Montague</body></message>"
    error = assert_error_then_opaque(parse(data), data)
    assert "entity" in error.reason
    assert error.at == data.index(b"&nbsp;")


def test_unbound_namespace_prefix() -> None:
    data = HEADER + s.PRESENCE + b"<foo:message><body>x</body></foo:message>"
    events = parse(data)
    error = assert_error_then_opaque(events, data)
    assert "prefix" in error.reason
    assert kinds_of(events[:2]) == ["open", "presence"]


def test_duplicate_attributes() -> None:
    data = HEADER + b"<message to='a@b' to='c@d'/>"
    error = assert_error_then_opaque(parse(data), data)
    assert "duplicate" in error.reason


def test_data_after_stream_close() -> None:
    data = HEADER + s.CLOSE + b" <message/>"
    events = parse(data)
    error = assert_error_then_opaque(events, data)
    assert kinds_of(events[:2]) == ["open", "StreamClosed"]
    assert "after </stream:stream>" in error.reason
    # the same bytes in a later read
    events = parse([HEADER + s.CLOSE, b" ", b"<message/>", b"<iq/>"])
    assert kinds_of(events) == ["open", "StreamClosed", "Keepalive", "ParseError", "Opaque"]


def test_garbage_before_the_header() -> None:
    data = b"hello" + HEADER
    error = assert_error_then_opaque(parse(data), data)
    assert error.offset == 0


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"GET / HTTP/1.1\r\nHost: localhost:5222\r\nUser-Agent: curl/8.5.0\r\n\r\n", "HTTP"),
        (b"CONNECT localhost:5222 HTTP/1.1\r\n\r\n", "HTTP"),
        (s.CLIENT_HELLO, "TLS"),
    ],
    ids=["http-get", "http-connect", "tls-client-hello"],
)
def test_other_protocols_are_named(data: bytes, named: str) -> None:
    error = assert_error_then_opaque(parse(data), data)
    assert named in error.reason
    assert error.offset == 0


@pytest.mark.parametrize("first_read", [1, 2, 3, 5, 8])
@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"GET / HTTP/1.1\r\nHost: localhost:5222\r\n\r\n", "HTTP"),
        (s.CLIENT_HELLO, "TLS"),
    ],
    ids=["http-get", "tls-client-hello"],
)
def test_other_protocols_are_named_whatever_the_first_read(
    data: bytes, named: str, first_read: int
) -> None:
    events = parse([data[:first_read], data[first_read:]])
    error = assert_error_then_opaque(events, data)
    assert named in error.reason


@pytest.mark.parametrize(
    "header",
    [
        b"<html><body>",
        b"<stream xmlns='http://etherx.jabber.org/streams/wrong'>",
        b"<stream:stream xmlns:stream='jabber:client'>",
        b"<features xmlns='http://etherx.jabber.org/streams'>",
    ],
)
def test_header_that_is_not_a_stream(header: bytes) -> None:
    data = header + s.PRESENCE
    events = parse(data)
    error = assert_error_then_opaque(events, data)
    assert "stream:stream" in error.reason
    assert error.offset == 0


def test_self_closing_header() -> None:
    """``<stream:stream/>`` opens and closes the stream at once: the user should see both."""
    data = HEADER[:-1] + b"/>"
    events = parse(data)
    assert raw_of(events) == data
    assert kinds_of(events) in (["open", "StreamClosed"], ["ParseError"])


@pytest.mark.parametrize(
    "chunks",
    [
        [HEADER + s.PRESENCE + b"hello" + s.PING],
        [HEADER + s.PRESENCE + b"hel", b"lo" + s.PING],
        [HEADER + s.PRESENCE + b"  ", b"x" + s.PING],
        [HEADER + s.PRESENCE + b"&amp;" + s.PING],
    ],
    ids=["one-read", "split-text", "split-after-whitespace", "entity"],
)
def test_text_between_stanzas(chunks: list[bytes]) -> None:
    """Text between stanzas is not XMPP: a ParseError, and nothing after it is parsed."""
    data = b"".join(chunks)
    events = parse(chunks)
    error = assert_error_then_opaque(events, data)
    assert "text between stanzas" in error.reason
    assert kinds_of(events[:2]) == ["open", "presence"]
    assert len(errors(events)) == 1
    assert not any(e.kind is Kind.IQ for e in stanzas(events))


def test_complete_stanzas_come_out_before_the_error_in_the_same_read() -> None:
    for bad in (b"\x00", b"<!-- c -->", b"<?pi?>", b"&nbsp;", b"<x:y/>", b"</stream:strea>"):
        data = HEADER + s.PRESENCE + b" " + s.MESSAGE_IN + s.PING + bad + s.PING
        events = parse(data)
        error = assert_error_then_opaque(events, data)
        assert kinds_of(events[: events.index(error)]) == [
            "open",
            "presence",
            "Keepalive",
            "message",
            "iq",
        ], bad
        assert error.raw.startswith(bad)
        assert error.offset == data.index(bad)


def test_stanza_over_the_limit_in_small_reads() -> None:
    big = b"<message><body>" + b"x" * 2000 + b"</body></message>"
    data = HEADER + s.PRESENCE + big + s.PING
    chunks = [data[i : i + 100] for i in range(0, len(data), 100)]
    events = parse(chunks, max_stanza_size=1000)
    error = assert_error_then_opaque(events, data)
    assert "larger than 1000 bytes" in error.reason
    assert kinds_of(events[:2]) == ["open", "presence"]
    assert error.offset == len(HEADER + s.PRESENCE)
    assert not any(e.kind is Kind.MESSAGE for e in stanzas(events))


def test_stanza_over_the_limit_in_one_read() -> None:
    """The limit does not depend on how the bytes were read."""
    big = b"<message><body>" + b"x" * 2000 + b"</body></message>"
    data = HEADER + s.PRESENCE + big + s.PING
    events = parse(data, max_stanza_size=1000)
    error = assert_error_then_opaque(events, data)
    assert "larger than 1000 bytes" in error.reason
    assert not any(e.kind is Kind.MESSAGE for e in stanzas(events))


def test_stanza_just_under_the_limit() -> None:
    big = b"<message><body>" + b"x" * (1000 - 32) + b"</body></message>"
    assert len(big) == 1000
    data = HEADER + big
    chunks = [data[i : i + 100] for i in range(0, len(data), 100)]
    events = parse(chunks, max_stanza_size=1000)
    assert kinds_of(events) == ["open", "message"]


def test_header_over_the_limit() -> None:
    data = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' a='" + b"x" * 3000
    chunks = [data[i : i + 100] for i in range(0, len(data), 100)]
    events = parse(chunks, max_stanza_size=1000)
    error = assert_error_then_opaque(events, data)
    assert "header" in error.reason
    assert "1000" in error.reason


def test_ten_megabyte_stanza_keeps_memory_bounded() -> None:
    chunk_size = 64 * 1024
    parser = StreamParser(C2S)
    events = parser.feed(HEADER + b"<message><body>")
    assert kinds_of(events) == ["open"]
    piece = b"0123456789abcdef" * (chunk_size // 16)
    fed = len(HEADER + b"<message><body>")
    for _ in range(10 * 1024 * 1024 // chunk_size):
        events += parser.feed(piece)
        fed += len(piece)
        assert parser.pending <= DEFAULT_MAX_STANZA_SIZE + chunk_size
    kinds = [type(e) for e in events]
    assert kinds.count(ParseError) == 1
    error = events[kinds.index(ParseError)]
    assert isinstance(error, ParseError)
    assert "larger than" in error.reason
    assert all(k is Opaque for k in kinds[kinds.index(ParseError) + 1 :])
    assert sum(len(e.raw) for e in events) == fed
    assert parser.pending == 0


def test_deeply_nested_stanza() -> None:
    depth = 10_000
    stanza = b"<message>" + b"<x>" * depth + b"deep" + b"</x>" * depth + b"</message>"
    data = HEADER + stanza + s.PING
    events = parse([data[i : i + 4096] for i in range(0, len(data), 4096)])
    assert raw_of(events) == data
    if errors(events):
        assert_error_then_opaque(events, data)
        return
    assert kinds_of(events) == ["open", "message", "iq"]
    assert events[1].raw == stanza
    assert events[1].child == "{jabber:client}x"
    try:
        element = events[1].element
    except ValueError:
        pass  # lxml refuses the depth: reported, not crashed
    else:
        assert "".join(element.itertext()) == "deep"


def test_endless_stream_of_small_stanzas_keeps_the_buffer_small() -> None:
    stanza = b"<message to='romeo@localhost' type='chat' id='x'><body>hi</body></message>"
    unit = stanza + b" "
    count = 100_000
    chunk_size = 4096
    parser = StreamParser(C2S)
    parser.feed(HEADER)
    data = unit * count
    seen = 0
    most_pending = 0
    for i in range(0, len(data), chunk_size):
        events = parser.feed(data[i : i + chunk_size])
        seen += sum(1 for e in events if isinstance(e, Stanza))
        most_pending = max(most_pending, parser.pending)
        assert parser.pending < len(stanza) + chunk_size
    assert seen == count
    assert most_pending < len(stanza)
    assert parser.pending == 0


# -- hypothesis: generated well-formed stanzas ----------------------------------------------------

SPACE = st.sampled_from([" ", "  ", "\n", "\t", "\r\n  "])
ATTR_TEXT = st.lists(
    st.sampled_from(["a", "/>", ">", "&lt;/x>", "&amp;", "&#62;", "&apos;", "&quot;", "é", "🌹"]),
    max_size=5,
).map("".join)
TEXT = st.lists(
    st.sampled_from(
        [
            "hi",
            " ",
            "\n",
            "/>",
            "&gt;",
            "&amp;",
            "&lt;/body&gt;",
            "&#x1F339;",
            "Джульетта",
            "🌙",
            "]]",
        ]
    ),
    max_size=5,
).map("".join)
CDATA = st.lists(
    st.sampled_from(["<", ">", "/>", "</message>", "&amp;", "]", "]]", "<![CDATA[", "x"]),
    max_size=6,
).map(lambda parts: "<![CDATA[" + "".join(parts).replace("]]>", "]] >") + "]]>")


@st.composite
def attributes(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from(["id", "to", "type", "xml:lang", "p:q"]), unique=True))
    out = []
    for name in names:
        quote = draw(st.sampled_from(["'", '"']))
        value = draw(ATTR_TEXT)
        value = value.replace(quote, "&apos;" if quote == "'" else "&quot;")
        out.append(f"{draw(SPACE)}{name}{draw(st.sampled_from(['=', ' = ']))}{quote}{value}{quote}")
    return "".join(out)


def elements(max_leaves: int = 8) -> st.SearchStrategy[str]:
    leaf_name = st.sampled_from(["body", "x", "p:y", "thread"])

    def element(name: str, attrs: str, children: list[str], close_space: str) -> str:
        if not children:
            return f"<{name}{attrs}{close_space}/>"
        return f"<{name}{attrs}>{''.join(children)}</{name}{close_space}>"

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.builds(
            element,
            leaf_name,
            attributes(),
            st.lists(st.one_of(inner, TEXT, CDATA), max_size=4),
            st.sampled_from(["", " ", "\n"]),
        )

    leaf = st.builds(element, leaf_name, attributes(), st.just([]), st.sampled_from(["", " "]))
    return st.recursive(leaf, extend, max_leaves=max_leaves)


ELEMENTS = elements()


@st.composite
def stanza_bytes(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(["message", "presence", "iq", "stream:features", "p:other"]))
    children = draw(st.lists(st.one_of(ELEMENTS, TEXT, CDATA), max_size=4))
    attrs = draw(attributes())
    if not children and draw(st.booleans()):
        return f"<{name}{attrs}{draw(st.sampled_from(['', ' ']))}/>".encode()
    return f"<{name}{attrs}>{''.join(children)}</{name}{draw(st.sampled_from(['', ' ']))}>".encode()


GENERATED_HEADER = HEADER[:-1] + b" xmlns:p='urn:p'>"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.one_of(stanza_bytes(), SPACE.map(str.encode)), min_size=1, max_size=6),
    data=st.data(),
)
def test_generated_stanzas_are_framed_exactly(items: list[bytes], data: st.DataObject) -> None:
    stream = GENERATED_HEADER + b"".join(items) + s.CLOSE
    cuts = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=30), label="cuts")
    events = parse(split(stream, cuts))
    assert raw_of(events) == stream
    assert not errors(events), events
    assert [e.raw for e in stanzas(events)] == [i for i in items if i.startswith(b"<")]
    assert normalise(events) == normalise(parse(stream))
    for stanza in stanzas(events):
        element = stanza.element
        assert element.tag == stanza.name
        assert element.get("id") == stanza.id
        assert element.get("type") == stanza.type
        first = next(iter(element), None)
        assert stanza.child == (first.tag if first is not None else None)


@pytest.mark.parametrize("namespace", [b"urn:xmpp:sm:3", b"urn:xmpp:sm:2"])
def test_both_stream_management_versions_are_classified(namespace: bytes) -> None:
    events = parse(HEADER + b"<r xmlns='" + namespace + b"'/><a xmlns='" + namespace + b"' h='3'/>")
    assert [e.kind for e in stanzas(events)] == [Kind.SM_REQUEST, Kind.SM_ANSWER]


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (b"<message><body>cut off he", "element"),
        (b"<presence", "element"),
    ],
)
def test_a_peer_closing_mid_stanza_loses_no_bytes(tail: bytes, reason: str) -> None:
    parser = StreamParser(Direction.C2S)
    events = parser.feed(HEADER + s.PRESENCE + tail)
    events += parser.close()
    assert raw_of(events) == HEADER + s.PRESENCE + tail
    assert isinstance(events[-1], ParseError)
    assert events[-1].raw == tail
    assert "the connection ended in the middle" in events[-1].reason
    assert parser.close() == []


def test_a_header_that_never_completes_is_reported_at_close() -> None:
    parser = StreamParser(Direction.C2S)
    assert parser.feed(HEADER[:30]) == []
    (error,) = parser.close()
    assert isinstance(error, ParseError)
    assert error.raw == HEADER[:30]
    assert "stream header" in error.reason


def test_close_after_a_clean_end_or_trailing_whitespace() -> None:
    parser = StreamParser(Direction.C2S)
    events = parser.feed(HEADER + s.PRESENCE + b"\n ")
    assert [type(e) for e in events + parser.close()] == [StreamOpened, Stanza, Keepalive]
    parser = StreamParser(Direction.C2S)
    parser.feed(HEADER + b"</stream:stream>")
    assert parser.close() == []
