"""Client replay: the sans-IO negotiation, rewriting and comparison, then against real Prosody."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support.clients import run_chat_scenario
from support.prosody import ProsodyServer, free_loopback_ports
from support.proxy import ProxyProcess
from typer.testing import CliRunner

from xmppspy.capture import open_capture
from xmppspy.cli import app
from xmppspy.client import (
    BIND_ID,
    ClientError,
    ClientStream,
    Phase,
    Scram,
    stream_header,
)
from xmppspy.events import Bound, Direction, Record, Stanza, StreamOpened
from xmppspy.parser import StreamParser
from xmppspy.replay import (
    JidMap,
    Progress,
    ReplayError,
    Status,
    all_match,
    compare,
    make_plan,
    parse_maps,
    rewrite,
)

CAPTURE = Path(__file__).parent.parent / "captures" / "prosody-chat.jsonl"
ALICE = "alice@example.test/xmppspy-alice"
RECORDED_BIND_ID = "86a775d6982544788cdc5353db56c09b"
runner = CliRunner()


def records(path: Path = CAPTURE) -> list[Record]:
    with open_capture(path) as reader:
        return list(reader)


def server_bytes_of_alice() -> bytes:
    """What the server sent alice's connection, up to and including the bind result."""
    out = b""
    for record in records():
        event = record.event
        if record.conn == "c1" and getattr(event, "dir", None) is Direction.S2C:
            out += event.raw  # type: ignore[union-attr]
            if isinstance(event, Stanza) and event.id == RECORDED_BIND_ID:
                break
    return out.replace(RECORDED_BIND_ID.encode(), BIND_ID.encode())


def expected_client_bytes(password: str) -> bytes:
    credentials = base64.b64encode(f"\0alice\0{password}".encode())
    return (
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
        + credentials
        + b"</auth>"
        + stream_header("example.test")
        + f"<iq type='set' id='{BIND_ID}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        "<resource>xmppspy-alice</resource></bind></iq>".encode()
    )


# -- negotiation, sans-IO -----------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_negotiation_on_recorded_server_bytes_sends_the_right_client_bytes(
    chunk: int | None,
) -> None:
    # The recorded exchange is PLAIN's (SCRAM's nonce would differ on every run).
    stream = ClientStream(
        "alice@example.test", "s3cret", resource="xmppspy-alice", mechanism="PLAIN"
    )
    header = stream.start()
    assert b'to="example.test"' in header and b"xmlns='jabber:client'" in header
    data = server_bytes_of_alice()
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    sent = b""
    for piece in pieces:
        reply, events = stream.receive(piece)
        sent += reply
        assert not events  # nothing is passed on before the resource is bound
    assert sent == expected_client_bytes("s3cret")
    assert stream.ready and stream.jid == ALICE
    # Once ready, the server's stanzas are passed through.
    reply, events = stream.receive(b"<iq type='result' id='x1'/>")
    assert reply == b"" and [e.id for e in events if isinstance(e, Stanza)] == ["x1"]


SERVER_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='example.test' version='1.0'>"
)


def negotiate(*server: bytes, resource: str | None = "r") -> tuple[ClientStream, bytes]:
    stream = ClientStream("alice@example.test", "pw", resource=resource)
    sent = b""
    for data in server:
        sent += stream.receive(data)[0]
    return stream, sent


TLS_NS = b"urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = b"urn:ietf:params:xml:ns:xmpp-sasl"


def features(*mechanisms: str, starttls: bool = False) -> bytes:
    tls = b"<starttls xmlns='" + TLS_NS + b"'><required/></starttls>" if starttls else b""
    listed = b"".join(f"<mechanism>{m}</mechanism>".encode() for m in mechanisms)
    return (
        b"<stream:features>"
        + tls
        + b"<mechanisms xmlns='"
        + SASL_NS
        + b"'>"
        + listed
        + b"</mechanisms></stream:features>"
    )


def auth_of(sent: bytes) -> tuple[str, bytes]:
    """The mechanism and decoded initial response of the <auth/> in ``sent``."""
    (stanza,) = stanzas(Direction.C2S, sent)
    return stanza.element.get("mechanism") or "", base64.b64decode(stanza.element.text or "")


def test_starttls_is_used_when_offered_then_the_stream_restarts_over_tls() -> None:
    stream = ClientStream("alice@example.test", "pw", resource="r")
    reply, events = stream.receive(SERVER_HEADER + features("SCRAM-SHA-1", "PLAIN", starttls=True))
    assert reply == b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" and not events
    assert stream.phase is Phase.STARTTLS and not stream.wants_tls and not stream.secure
    reply, events = stream.receive(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert reply == b"" and not events
    assert stream.wants_tls  # the caller's turn: start TLS on the transport
    with pytest.raises(RuntimeError, match="tls_started"):
        stream.receive(b"<x/>")
    assert stream.tls_started() == stream_header("example.test")
    assert stream.secure and not stream.wants_tls and stream.phase is Phase.AUTH
    # Over TLS, a new header and features: now SASL (STARTTLS is not done twice).
    reply, _ = stream.receive(SERVER_HEADER + features("SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"))
    mechanism, initial = auth_of(reply)
    assert mechanism == "SCRAM-SHA-1" and initial.startswith(b"n,,n=alice,r=")


def test_starttls_refused_or_followed_by_plain_bytes_fails() -> None:
    with pytest.raises(ClientError, match=r"refused STARTTLS"):
        negotiate(
            SERVER_HEADER + features("PLAIN", starttls=True),
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )
    stream, _ = negotiate(
        SERVER_HEADER + features("PLAIN", starttls=True),
        b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message/>",
    )
    assert stream.wants_tls
    with pytest.raises(ClientError, match="unencrypted data after <proceed/>"):
        stream.tls_started()
    stream, _ = negotiate(SERVER_HEADER + features("PLAIN", starttls=True))
    with pytest.raises(ClientError, match="closed the connection during STARTTLS"):
        stream.close()


# RFC 5802, section 5.
RFC_NONCE = "fyko+d2lbbFgONRv9qkxdawL"
RFC_SERVER_FIRST = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
)
RFC_SERVER_FINAL = b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="


def test_scram_sha1_gives_the_rfc_5802_messages() -> None:
    scram = Scram("user", "pencil", nonce=RFC_NONCE)
    assert scram.client_first() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    assert scram.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert not scram.verified
    scram.server_final(RFC_SERVER_FINAL)
    assert scram.verified
    assert Scram("a=b,c", "x", nonce="n").client_first() == b"n,,n=a=3Db=2Cc,r=n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def scram_stream() -> tuple[ClientStream, bytes]:
    stream = ClientStream("user@example.test", "pencil", resource="r", nonce=RFC_NONCE)
    reply, _ = stream.receive(SERVER_HEADER + features("PLAIN", "SCRAM-SHA-1"))
    return stream, reply


def test_scram_sha1_login_over_xmpp_with_the_rfc_vector() -> None:
    stream, reply = scram_stream()
    assert reply == (
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
        + b64(b"n,,n=user,r=" + RFC_NONCE.encode())
        + b"</auth>"
    )
    assert stream.mechanism == "SCRAM-SHA-1"
    reply, _ = stream.receive(
        b"<challenge xmlns='" + SASL_NS + b"'>" + b64(RFC_SERVER_FIRST) + b"</challenge>"
    )
    assert reply == b"<response xmlns='" + SASL_NS + b"'>" + b64(RFC_CLIENT_FINAL) + b"</response>"
    reply, _ = stream.receive(
        b"<success xmlns='" + SASL_NS + b"'>" + b64(RFC_SERVER_FINAL) + b"</success>"
    )
    assert reply == stream_header("example.test") and stream.phase is Phase.BIND


def test_scram_server_final_may_come_in_a_last_challenge() -> None:
    stream, _ = scram_stream()
    stream.receive(
        b"<challenge xmlns='" + SASL_NS + b"'>" + b64(RFC_SERVER_FIRST) + b"</challenge>"
    )
    reply, _ = stream.receive(
        b"<challenge xmlns='" + SASL_NS + b"'>" + b64(RFC_SERVER_FINAL) + b"</challenge>"
    )
    assert reply == b"<response xmlns='" + SASL_NS + b"'></response>"
    reply, _ = stream.receive(b"<success xmlns='" + SASL_NS + b"'/>")
    assert reply == stream_header("example.test") and stream.phase is Phase.BIND


@pytest.mark.parametrize(
    "success",
    [
        b64(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA="),  # a wrong signature
        b64(b"v=not base64!"),
        b"",  # no signature at all
    ],
)
def test_a_wrong_or_missing_scram_server_signature_is_an_error(success: bytes) -> None:
    stream, _ = scram_stream()
    stream.receive(
        b"<challenge xmlns='" + SASL_NS + b"'>" + b64(RFC_SERVER_FIRST) + b"</challenge>"
    )
    with pytest.raises(ClientError, match=r"SCRAM signature is wrong|does not prove"):
        stream.receive(b"<success xmlns='" + SASL_NS + b"'>" + success + b"</success>")
    assert stream.phase is Phase.AUTH


def test_scram_refuses_a_nonce_the_server_did_not_extend() -> None:
    with pytest.raises(ClientError, match="nonce does not extend"):
        Scram("user", "pencil", nonce=RFC_NONCE).client_final(b"r=other,s=QSXCR+Q6sek8bf92,i=1")
    with pytest.raises(ClientError, match="refused the SCRAM proof: invalid-proof"):
        scram = Scram("user", "pencil", nonce=RFC_NONCE)
        scram.client_final(RFC_SERVER_FIRST)
        scram.server_final(b"e=invalid-proof")


@pytest.mark.parametrize(
    ("offered", "wanted", "chosen"),
    [
        (("PLAIN", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-1"), None, "SCRAM-SHA-1"),
        (("SCRAM-SHA-1-PLUS", "PLAIN"), None, "PLAIN"),
        (("SCRAM-SHA-1", "PLAIN"), "PLAIN", "PLAIN"),
    ],
)
def test_the_mechanism_is_scram_sha1_when_offered_and_never_plus(
    offered: tuple[str, ...], wanted: str | None, chosen: str
) -> None:
    stream = ClientStream("alice@example.test", "pw", mechanism=wanted)
    reply, _ = stream.receive(SERVER_HEADER + features(*offered))
    assert auth_of(reply)[0] == chosen == stream.mechanism


def test_no_supported_mechanism_is_refused() -> None:
    with pytest.raises(
        ClientError, match="offers SCRAM-SHA-1-PLUS, DIGEST-MD5; xmppspy does SCRAM-SHA-1, PLAIN"
    ):
        negotiate(SERVER_HEADER + features("SCRAM-SHA-1-PLUS", "DIGEST-MD5"))
    with pytest.raises(ClientError, match=r"offers SCRAM-SHA-1; xmppspy does PLAIN$"):
        stream = ClientStream("alice@example.test", "pw", mechanism="PLAIN")
        stream.receive(SERVER_HEADER + features("SCRAM-SHA-1"))
    with pytest.raises(ClientError, match="--sasl MD5: choose one of SCRAM-SHA-1, PLAIN"):
        ClientStream("alice@example.test", "pw", mechanism="MD5")


FEATURES_PLAIN = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
)


def test_a_wrong_password_is_an_authentication_failure() -> None:
    with pytest.raises(
        ClientError, match=r"authentication failed for alice@example\.test: not-authorized"
    ):
        negotiate(
            SERVER_HEADER + FEATURES_PLAIN,
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>",
        )


def test_a_taken_resource_is_given_up_for_one_the_server_chooses() -> None:
    bind_features = (
        b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
    )
    stream, sent = negotiate(
        SERVER_HEADER + FEATURES_PLAIN + b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        SERVER_HEADER + bind_features,
        f"<iq type='error' id='{BIND_ID}'><error type='cancel'><conflict "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>".encode(),
        f"<iq type='result' id='{BIND_ID}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        "<jid>alice@example.test/other</jid></bind></iq>".encode(),
    )
    assert sent.endswith(
        f"<iq type='set' id='{BIND_ID}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        "</bind></iq>".encode()
    )
    assert stream.ready and stream.jid == "alice@example.test/other"
    assert stream.warnings == ["resource 'r' is taken: the server chose another one"]


def test_a_stream_error_or_close_before_binding_fails() -> None:
    with pytest.raises(ClientError, match="ended the stream with an error: host-unknown"):
        negotiate(
            SERVER_HEADER + b"<stream:error><host-unknown "
            b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        )
    stream, _ = negotiate(SERVER_HEADER)
    with pytest.raises(ClientError, match="closed the connection during authentication"):
        stream.close()


# -- plan and rewriting -------------------------------------------------------------------------


def test_the_plan_is_the_client_stanzas_after_bind_and_the_server_ones_of_that_time() -> None:
    plan = make_plan(records(), lambda r: r.conn == "c1")
    assert plan.conn == "c1" and plan.jid == ALICE and plan.resource == "xmppspy-alice"
    sent = [r.event for r in plan.sends if isinstance(r.event, Stanza)]
    assert [(s.kind.value, s.type) for s in sent] == [
        ("iq", "get"),
        ("presence", None),
        ("message", "chat"),
        ("message", "chat"),
        ("iq", "get"),
    ]
    assert [(s.kind.value, s.type) for s in plan.expected] == [
        ("iq", "result"),
        ("presence", None),
        ("iq", "result"),
        ("message", "chat"),
        ("message", "chat"),
    ]


def test_several_connections_need_conn() -> None:
    with pytest.raises(ReplayError, match=r"2 connections: choose one with --conn \(c1 \(alice"):
        make_plan(records(), lambda _: True)


def test_a_capture_without_bind_cannot_be_replayed() -> None:
    without = [r for r in records() if not isinstance(r.event, Bound)]
    with pytest.raises(ReplayError, match="never bound a resource"):
        make_plan(without, lambda r: r.conn == "c2")


def test_maps_are_parsed_and_malformed_ones_refused() -> None:
    assert parse_maps(["bob@a=carol@b", " x = y "]) == {"bob@a": "carol@b", "x": "y"}
    for bad in ("bob", "=x", "x=", "a=b=c"):
        with pytest.raises(ReplayError, match="write OLD=NEW"):
            parse_maps([bad])


def test_jid_map() -> None:
    jids = JidMap(ALICE, "carol@other.test/r2", {"bob@example.test": "dave@other.test"})
    assert jids(ALICE) == "carol@other.test/r2"
    assert jids("alice@example.test") == "carol@other.test"
    assert jids("alice@example.test/phone") == "carol@other.test/phone"
    assert jids("bob@example.test/xmppspy-bob") == "dave@other.test/xmppspy-bob"
    assert jids("example.test") == "other.test"
    assert jids("eve@elsewhere.test") == "eve@elsewhere.test"


def test_rewrite_touches_only_from_and_to_of_the_start_tag() -> None:
    jids = JidMap(ALICE, "carol@example.test/r2", {"bob@example.test": "dave@example.test"})
    raw = (
        b"<message from='alice@example.test/xmppspy-alice' type=\"chat\" "
        b'to="bob@example.test/x" id="m1"><body to="bob@example.test">hi</body></message>'
    )
    out, changes = rewrite(raw, jids)
    assert out == (
        b"<message from='carol@example.test/r2' type=\"chat\" "
        b'to="dave@example.test/x" id="m1"><body to="bob@example.test">hi</body></message>'
    )
    assert [str(c) for c in changes] == [
        "from: alice@example.test/xmppspy-alice → carol@example.test/r2",
        "to: bob@example.test/x → dave@example.test/x",
    ]
    unchanged = b"<presence id='p1'/>"
    assert rewrite(unchanged, jids) == (unchanged, [])


# -- comparison ---------------------------------------------------------------------------------


def stanzas(direction: Direction, *raws: bytes) -> list[Stanza]:
    parser = StreamParser(direction)
    events = parser.feed(SERVER_HEADER + b"".join(raws))
    assert isinstance(events[0], StreamOpened)
    return [e for e in events if isinstance(e, Stanza)]


SENT = stanzas(
    Direction.C2S,
    b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
    b"<iq type='get' id='p1' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<iq type='get' id='d1' to='example.test'><query "
    b"xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    b"<iq type='get' id='v1' to='example.test'><query xmlns='jabber:iq:version'/></iq>",
)
RECORDED = stanzas(
    Direction.S2C,
    b"<iq type='result' id='r1' to='alice@example.test/old'><query xmlns='jabber:iq:roster' "
    b"ver='1'>\n  <item jid='bob@example.test'/>\n</query></iq>",
    b"<iq type='result' id='p1' from='example.test'/>",
    b"<iq type='result' id='d1' from='example.test'><query "
    b"xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:ping'/>"
    b"<feature var='jabber:iq:roster'/></query></iq>",
    b"<presence from='alice@example.test/old'/>",
    b"<message type='chat' from='bob@example.test/b'><body>hi</body></message>",
)
OLD = JidMap("alice@example.test/old", "alice@example.test/new")


def test_equal_replies_match_whatever_from_to_and_whitespace() -> None:
    actual = stanzas(
        Direction.S2C,
        b"<iq id='r1' type='result' to='alice@example.test/new'><query ver='1' "
        b"xmlns='jabber:iq:roster'><item jid='bob@example.test'/></query></iq>",
        b"<presence from='alice@example.test/new'/>",
        b"<iq type='result' id='p1' from='example.test' to='alice@example.test/new'/>",
        b"<iq type='result' id='d1' from='example.test'><query "
        b"xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:ping'/>"
        b"<feature var='jabber:iq:roster'/></query></iq>",
        b"<message type='chat' from='bob@example.test/b'><body>hello</body></message>",
    )
    outcomes = compare(SENT, RECORDED, actual, OLD)
    assert [o.status for o in outcomes] == [Status.MATCH] * 5
    assert all_match(outcomes)


def test_differing_missing_and_new_replies_are_told_apart() -> None:
    actual = stanzas(
        Direction.S2C,
        b"<iq type='result' id='r1'><query xmlns='jabber:iq:roster' ver='2'><item "
        b"jid='bob@example.test'/></query></iq>",
        b"<iq type='error' id='p1'><error type='cancel'><service-unavailable "
        b"xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        b"<iq type='result' id='v1'><query xmlns='jabber:iq:version'><name>x</name></query></iq>",
        b"<presence from='alice@example.test/new'/>",
        b"<message type='headline' from='example.test'><body>motd</body></message>",
    )
    outcomes = {o.what: o for o in compare(SENT, RECORDED, actual, OLD)}
    roster = outcomes["iq get query (jabber:iq:roster) id=r1"]
    assert roster.status is Status.DIFFER
    assert roster.detail.splitlines() == [
        '-  <query xmlns="jabber:iq:roster" ver="1">',
        '+  <query xmlns="jabber:iq:roster" ver="2">',
    ]
    ping = outcomes["iq get ping (urn:xmpp:ping) id=p1"]
    assert (ping.status, ping.detail) == (
        Status.DIFFER,
        "recorded result, got error (service-unavailable)",
    )
    disco = outcomes["iq get query (http://jabber.org/protocol/disco#info) id=d1"]
    assert (disco.status, disco.detail) == (Status.MISSING, "recorded result, no reply")
    version = outcomes["iq get query (jabber:iq:version) id=v1"]
    assert (version.status, version.detail) == (Status.NEW, "no reply recorded, got result")
    assert outcomes["presence from alice@example.test/new"].status is Status.MATCH
    assert outcomes["message type=chat from bob@example.test/b"].status is Status.MISSING
    assert outcomes["message type=headline from example.test"].status is Status.NEW
    assert not all_match(outcomes.values())


def test_progress_waits_for_every_iq_reply_and_as_many_other_stanzas() -> None:
    progress = Progress(SENT, RECORDED)
    for stanza in stanzas(
        Direction.S2C,
        b"<iq type='result' id='r1'/>",
        b"<iq type='result' id='p1'/>",
        b"<iq type='result' id='d1'/>",
        b"<presence/>",
        b"<message/>",
    ):
        assert not progress.done
        progress.received(stanza)
    assert not progress.done  # v1 still unanswered
    progress.received(stanzas(Direction.S2C, b"<iq type='error' id='v1'/>")[0])
    assert progress.done


# -- command line, without a server -------------------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def client_args(port: int, *more: str) -> list[str]:
    return [
        "replay",
        str(CAPTURE),
        "--server",
        f"127.0.0.1:{port}",
        "--login",
        "alice@example.test",
        "--password",
        "pw",
        *more,
    ]


def test_several_connections_without_conn_is_a_clear_error() -> None:
    code, out, err = run(*client_args(free_loopback_ports(1)[0]))
    assert code == 1 and out == ""
    assert "the capture holds 2 connections: choose one with --conn" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_server_is_a_clear_error() -> None:
    port = free_loopback_ports(1)[0]
    code, _, err = run(*client_args(port, "--conn", "c1"))
    assert code == 1
    assert err.strip() == f"xmppspy: cannot connect to 127.0.0.1:{port}: Connection refused"


def test_a_bad_map_is_a_usage_error() -> None:
    code, _, err = run(*client_args(1, "--conn", "c1", "--map", "bob"))
    assert code == 2 and "--map 'bob': write OLD=NEW" in err


def test_missing_credentials_are_a_usage_error() -> None:
    code, _, err = run("replay", str(CAPTURE), "--server", "127.0.0.1:1", "--conn", "c1")
    assert code == 2 and "--server needs --login and --password" in err


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A chat recorded through the real proxy: the capture, and alice's connection id."""
    workdir = tmp_path_factory.mktemp("client-replay")
    capture = workdir / "session.jsonl"
    proxy = ProxyProcess(
        workdir, f"{prosody.host}:{prosody.c2s_port}", ("--record", str(capture), "-q")
    )
    proxy.start()
    try:
        run_chat_scenario("127.0.0.1", proxy.port, prosody.domain, prosody.users).assert_ok()
        assert proxy.stop() == 0, proxy.stderr()
    finally:
        proxy.kill()
    (conn,) = {
        r.conn
        for r in records(capture)
        if isinstance(r.event, Bound) and r.event.jid.startswith("alice@")
    }
    return capture, conn


def replay_against(
    server: ProsodyServer, capture: Path, *args: str, password: str
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "xmppspy",
        "replay",
        str(capture),
        "--server",
        f"{server.host}:{server.c2s_port}",
        "--login",
        "alice@example.test",
        *args,
    ]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "XMPPSPY_PASSWORD": password}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def fresh(tmp_path: Path, name: str, users: dict[str, str], **kwargs: object) -> ProsodyServer:
    return ProsodyServer(tmp_path / name, users=users, **kwargs)  # type: ignore[arg-type]


@pytest.mark.e2e
def test_replaying_alices_iqs_on_a_fresh_server_gets_the_same_replies(
    prosody: ProsodyServer, recorded: tuple[Path, str], tmp_path: Path
) -> None:
    capture, conn = recorded
    with fresh(tmp_path, "fresh", prosody.users) as server:
        done = replay_against(
            server, capture, "--conn", conn, "--kind", "iq", password=prosody.users["alice"]
        )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "bound as alice@example.test/xmppspy-alice" in out
    assert "match │ iq get query (jabber:iq:roster)" in out
    assert "match │ iq get ping (urn:xmpp:ping)" in out
    assert "0 differ, 0 missing, 0 new: everything matches" in out
    assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_replaying_on_a_server_without_ping_shows_the_difference(
    prosody: ProsodyServer, recorded: tuple[Path, str], tmp_path: Path
) -> None:
    capture, conn = recorded
    modules = ("roster", "saslauth", "disco")
    with fresh(tmp_path, "no-ping", prosody.users, modules=modules) as server:
        done = replay_against(
            server, capture, "--conn", conn, "--kind", "iq", password=prosody.users["alice"]
        )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "ping (urn:xmpp:ping)" in line]
    assert len(lines) == 1 and "differ" in lines[0]
    assert "recorded result, got error (service-unavailable)" in lines[0]
    assert "1 match, 1 differ, 0 missing, 0 new: differences" in done.stdout


@pytest.mark.e2e
def test_a_wrong_password_is_one_clear_line(
    prosody: ProsodyServer, recorded: tuple[Path, str]
) -> None:
    capture, conn = recorded
    done = replay_against(prosody, capture, "--conn", conn, password="wrong")
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        "xmppspy: authentication failed for alice@example.test: not-authorized"
    )
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_capture_without_bind_is_a_clear_error(tmp_path: Path) -> None:
    lines = CAPTURE.read_bytes().splitlines(keepends=True)
    path = tmp_path / "nobind.jsonl"
    path.write_bytes(b"".join(line for line in lines if b'"event":"bound"' not in line))
    args = client_args(free_loopback_ports(1)[0], "--conn", "c1")
    args[1] = str(path)
    code, _, err = run(*args)
    assert code == 1 and "connection c1 never bound a resource" in err


def test_bad_security_options_are_usage_errors(tmp_path: Path) -> None:
    code, _, err = run(*client_args(1, "--conn", "c1", "--sasl", "MD5"))
    assert code == 2 and "--sasl MD5: choose one of SCRAM-SHA-1, PLAIN" in err
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    code, _, err = run(*client_args(1, "--conn", "c1", "--server-ca", str(ca), "--server-insecure"))
    assert code == 2 and "--server-ca and --server-insecure exclude each other" in err
    code, _, err = run(*client_args(1, "--conn", "c1", "--server-ca", str(ca)))
    assert code == 1 and err.startswith(f"xmppspy: --server-ca {ca}: cannot load it as PEM")
    assert len(err.strip().splitlines()) == 1


# -- end to end over STARTTLS -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_prosody(
    prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProsodyServer, Path]]:
    """A Prosody that requires TLS, with a certificate from a test CA; and that CA's PEM."""
    workdir = tmp_path_factory.mktemp("tls-prosody")
    ca = trustme.CA()
    issued = ca.issue_cert(prosody.domain)
    ca_pem, cert_pem, key_pem = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert_pem.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key_pem))
    server = ProsodyServer(
        workdir / "prosody",
        users=prosody.users,
        require_encryption=True,
        certificate=cert_pem,
        key=key_pem,
    )
    with server:
        yield server, ca_pem


@pytest.mark.e2e
def test_replaying_over_starttls_with_the_servers_ca_logs_in_with_scram(
    prosody: ProsodyServer,
    tls_prosody: tuple[ProsodyServer, Path],
    recorded: tuple[Path, str],
) -> None:
    server, ca = tls_prosody
    capture, conn = recorded
    done = replay_against(
        server,
        capture,
        "--conn",
        conn,
        "--kind",
        "iq",
        "--server-ca",
        str(ca),
        password=prosody.users["alice"],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "over STARTTLS (TLSv1." in done.stderr
    assert "certificate verified), SASL SCRAM-SHA-1: " in done.stderr
    assert "bound as alice@example.test/xmppspy-alice" in done.stdout
    assert "0 differ, 0 missing, 0 new: everything matches" in done.stdout
    assert "Traceback" not in done.stderr and "warning" not in done.stderr
    log = server.log_path.read_text("utf-8", "replace")  # the server's side of the story
    assert "Stream encrypted (TLSv1." in log
    assert re.search(r"<auth [^>]*mechanism='SCRAM-SHA-1'", log)  # attribute order varies


@pytest.mark.e2e
def test_an_unknown_ca_is_one_clear_line(
    prosody: ProsodyServer,
    tls_prosody: tuple[ProsodyServer, Path],
    recorded: tuple[Path, str],
) -> None:
    server, _ = tls_prosody
    capture, conn = recorded
    done = replay_against(server, capture, "--conn", conn, password=prosody.users["alice"])
    assert done.returncode == 1, done.stdout + done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, done.stderr
    assert line.startswith("xmppspy: TLS with example.test failed: certificate verify failed: ")
    assert line.endswith("; use --server-ca FILE or --server-insecure")
    assert done.stdout == ""


@pytest.mark.e2e
def test_server_insecure_skips_verification_with_a_warning(
    prosody: ProsodyServer,
    tls_prosody: tuple[ProsodyServer, Path],
    recorded: tuple[Path, str],
) -> None:
    server, _ = tls_prosody
    capture, conn = recorded
    done = replay_against(
        server,
        capture,
        "--conn",
        conn,
        "--kind",
        "iq",
        "--server-insecure",
        password=prosody.users["alice"],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "xmppspy: warning: --server-insecure: the server's TLS certificate is not verified"
        in done.stderr.splitlines()
    )
    assert "certificate NOT verified), SASL SCRAM-SHA-1" in done.stderr
    assert "everything matches" in done.stdout
