"""``xmppspy serve``: the sans-IO mock against recorded client bytes, the CLI, and real clients."""

from __future__ import annotations

import base64
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import trio
from support.clients import run_chat_scenario
from support.prosody import free_loopback_ports
from typer.testing import CliRunner

from xmppspy.capture import open_capture
from xmppspy.cli import app
from xmppspy.events import Bound, Direction, Kind, Record, Stanza, StreamClosed, StreamOpened
from xmppspy.mock import MockServer, Output, Script, script_for, scripts_from
from xmppspy.parser import StreamParser

CAPTURE = Path(__file__).parent.parent / "captures" / "prosody-chat.jsonl"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"


def recorded() -> list[Record]:
    with open_capture(CAPTURE) as reader:
        return list(reader)


def scripts() -> dict[str, Script]:
    found, problems = scripts_from(recorded())
    assert not problems
    return found


def client_bytes(conn: str) -> list[bytes]:
    """What the recorded client of ``conn`` sent, one event at a time."""
    return [
        r.event.raw
        for r in recorded()
        if r.conn == conn and getattr(r.event, "dir", None) is Direction.C2S
    ]


class Client:
    """Reads the mock's bytes as a client would: a server-to-client parser, restarted on success."""

    def __init__(self) -> None:
        self.parser = StreamParser(Direction.S2C, pause_after=(Kind.SASL_SUCCESS,))

    def read(self, output: Output) -> list[StreamOpened | Stanza | StreamClosed]:
        events = self.parser.feed(output.data)
        if any(isinstance(e, Stanza) and e.kind is Kind.SASL_SUCCESS for e in events):
            events += self.parser.restart()
        kept = [e for e in events if isinstance(e, StreamOpened | Stanza | StreamClosed)]
        assert len(kept) == len(events), events
        return kept


def plain(user: str) -> bytes:
    token = base64.b64encode(f"\0{user}\0secret".encode()).decode()
    return (
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode()
    )


HEADER = (
    b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams' "
    b"xmlns='jabber:client' version='1.0'>"
)


def log_in(
    mock: MockServer, user: str = "carol", resource: str = "phone", now: float = 100.0
) -> Client:
    """Authenticate as ``user`` and bind ``resource``; the client, ready to read what follows."""
    client = Client()
    client.read(mock.receive(HEADER + plain(user), now))
    client.read(mock.receive(HEADER, now))
    bind = (
        f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        f"<resource>{resource}</resource></bind></iq>"
    ).encode()
    (result,) = client.read(mock.receive(bind, now))
    assert isinstance(result, Stanza)
    assert result.type == "result" and result.id == "b1"
    return client


# -- scripts ------------------------------------------------------------------------------------


def test_script_of_a_recorded_connection() -> None:
    script = script_for(recorded(), "c1")
    assert script.jid == "alice@example.test/xmppspy-alice"
    assert script.domain == "example.test"
    assert script.user == "alice"
    assert [step.request.kind for step in script.steps] == [
        Kind.IQ,
        Kind.PRESENCE,
        Kind.MESSAGE,
        Kind.MESSAGE,
        Kind.IQ,
    ]
    ping = script.steps[-1]
    assert ping.request.child == "{urn:xmpp:ping}ping"
    assert [p.reply for p in ping.then] == [True, False, False]  # the result, then bob's pushes
    assert all(0 < p.offset < 1 for p in ping.then)


# -- the sans-IO mock ---------------------------------------------------------------------------


def test_mock_plays_the_recorded_dialogue_back() -> None:
    mock = MockServer(scripts(), conn="c1", new_id=lambda: "fresh-id")
    client = Client()
    replies = [client.read(mock.receive(raw, 10.0 + i)) for i, raw in enumerate(client_bytes("c1"))]
    header, features = replies[0]
    assert isinstance(header, StreamOpened)
    assert (header.id, header.from_, header.version) == ("fresh-id", "example.test", "1.0")
    assert isinstance(features, Stanza) and features.kind is Kind.FEATURES
    assert b"<mechanism>PLAIN</mechanism>" in features.raw and b"SCRAM" not in features.raw
    (success,) = replies[1]
    assert isinstance(success, Stanza) and success.kind is Kind.SASL_SUCCESS
    restart, bound_features = replies[2]
    assert isinstance(restart, StreamOpened) and restart.restart
    assert isinstance(bound_features, Stanza) and b"xmpp-bind" in bound_features.raw
    (bind,) = replies[3]
    assert isinstance(bind, Stanza)
    assert bind.id == "86a775d6982544788cdc5353db56c09b"
    assert b"<jid>alice@example.test/xmppspy-alice</jid>" in bind.raw
    (roster,) = replies[4]
    assert isinstance(roster, Stanza)
    assert (roster.type, roster.id, roster.child) == (
        "result",
        "0987123b20e14b0bbc5fff3c38ab5c8d",
        "{jabber:iq:roster}query",
    )
    (presence,) = replies[5]
    assert isinstance(presence, Stanza) and presence.kind is Kind.PRESENCE
    assert replies[6] == replies[7] == []  # the two messages to bob: nothing came back
    pong, *pushed = replies[8]
    assert isinstance(pong, Stanza) and pong.type == "result" and pong.from_ == "example.test"
    assert [s.kind for s in pushed if isinstance(s, Stanza)] == [Kind.MESSAGE, Kind.MESSAGE]
    assert [type(e) for e in replies[9]] == [StreamClosed]
    assert mock.closed and mock.departure is None
    assert mock.counts.matched == 5 and mock.counts.unmatched == 0


@pytest.mark.parametrize("size", [1, 7, 100_000])
def test_the_answers_do_not_depend_on_how_the_client_bytes_are_read(size: int) -> None:
    by_event = MockServer(scripts(), conn="c1", new_id=lambda: "x")
    expected = b"".join(by_event.receive(raw, 1.0).data for raw in client_bytes("c1"))
    mock = MockServer(scripts(), conn="c1", new_id=lambda: "x")
    data = b"".join(client_bytes("c1"))
    answered = b"".join(
        mock.receive(data[i : i + size], 1.0).data for i in range(0, len(data), size)
    )
    assert answered == expected
    assert mock.closed and mock.counts.matched == 5


def test_ids_and_the_bound_jid_are_rewritten_to_the_live_ones() -> None:
    mock = MockServer(scripts(), conn="c1")
    client = log_in(mock, "carol", "phone")
    (roster,) = client.read(
        mock.receive(b"<iq type='get' id='live-1'><query xmlns='jabber:iq:roster'/></iq>", 101.0)
    )
    assert isinstance(roster, Stanza)
    assert (roster.id, roster.to) == ("live-1", "carol@example.test/phone")
    (echo,) = client.read(mock.receive(b"<presence id='live&apos;2'/>", 101.0))
    assert isinstance(echo, Stanza)
    assert (echo.id, echo.from_) == ("live'2", "carol@example.test/phone")
    message = b"<message type='chat' to='bob@example.test/xmppspy-bob'><body>x</body></message>"
    assert client.read(mock.receive(message + message, 101.0)) == []
    ping = b"<iq type='get' id='p' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>"
    pong, first, second = client.read(mock.receive(ping, 101.0))
    assert isinstance(pong, Stanza) and isinstance(first, Stanza) and isinstance(second, Stanza)
    assert (pong.id, pong.to) == ("p", "carol@example.test/phone")
    assert (first.from_, first.to) == ("bob@example.test/xmppspy-bob", "carol@example.test/phone")
    assert b"Green here" in first.raw


def test_unsolicited_stanzas_wait_for_their_recorded_offset_from_the_bind() -> None:
    mock = MockServer(scripts(), conn="c1")
    client = log_in(mock, now=100.0)
    for raw in client_bytes("c1")[4:8]:  # roster, presence, two messages
        mock.receive(raw, 100.0)
    output = mock.receive(client_bytes("c1")[8], 100.0)  # the ping, at once after the bind
    (pong,) = client.read(output)
    assert isinstance(pong, Stanza) and pong.type == "result"
    due = mock.next_due
    assert due is not None and 100.0 < due < 101.0
    assert mock.poll(due - 0.0001).data == b""
    pushed = client.read(mock.poll(due))
    assert [s.kind for s in pushed if isinstance(s, Stanza)] == [Kind.MESSAGE, Kind.MESSAGE]
    assert mock.next_due is None


def test_strict_ends_the_stream_at_the_first_departure() -> None:
    mock = MockServer(scripts(), conn="c1", strict=True)
    client = log_in(mock)
    disco = b"<iq type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    events = client.read(mock.receive(disco, 101.0))
    error, closed = events
    assert isinstance(error, Stanza) and error.kind is Kind.STREAM_ERROR
    assert error.element.find(f"{{{STREAM_ERRORS}}}undefined-condition") is not None
    assert "departs from the capture" in (error.element.findtext(f"{{{STREAM_ERRORS}}}text") or "")
    assert isinstance(closed, StreamClosed)
    assert mock.closed
    assert mock.departure == (
        "client stanza <iq get {http://jabber.org/protocol/disco#info}query> departs from the "
        "capture: the capture has <iq get {jabber:iq:roster}query> next (recorded client stanza 1 "
        "of c1)"
    )


def test_strict_accepts_the_recorded_dialogue() -> None:
    mock = MockServer(scripts(), conn="c2", strict=True)
    for raw in client_bytes("c2"):
        mock.receive(raw, 1.0)
    assert mock.departure is None and mock.counts.matched == 4


def test_without_strict_unmatched_iqs_get_service_unavailable_and_the_rest_nothing() -> None:
    mock = MockServer(scripts(), conn="c1")
    client = log_in(mock)
    disco = b"<iq type='get' id='d' to='example.test'><query xmlns='urn:x'/></iq>"
    (error,) = client.read(mock.receive(disco, 101.0))
    assert isinstance(error, Stanza)
    assert (error.type, error.id, error.from_) == ("error", "d", "example.test")
    assert b"<service-unavailable" in error.raw
    assert client.read(mock.receive(b"<iq type='result' id='r'/>", 101.0)) == []
    assert mock.counts.unmatched == 2 and not mock.closed


def test_without_strict_passed_over_stanzas_are_skipped_and_their_replies_dropped() -> None:
    mock = MockServer(scripts(), conn="c1")
    client = log_in(mock)
    ping = b"<iq type='get' id='p' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>"
    replies = client.read(mock.receive(ping, 101.0))
    assert next((s.kind, s.id) for s in replies if isinstance(s, Stanza)) == (Kind.IQ, "p")
    assert mock.counts.skipped == 4  # roster, presence and two messages never came
    assert all(getattr(s, "kind", None) is not Kind.PRESENCE for s in replies)


def test_the_client_gets_the_connection_its_sasl_user_had() -> None:
    mock = MockServer(scripts())
    notes = mock.receive(HEADER + plain("bob"), 1.0).notes
    assert mock.script.conn == "c2"
    assert notes == [
        "authenticated bob: playing recorded connection c2 (bob@example.test/xmppspy-bob)"
    ]
    output = mock.receive(HEADER, 1.0)
    output = mock.receive(
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>", 1.0
    )
    assert b"<jid>bob@example.test/xmppspy-bob</jid>" in output.data
    assert Bound(Direction.S2C, "bob@example.test/xmppspy-bob") in output.events


def test_other_sasl_mechanisms_are_refused() -> None:
    mock = MockServer(scripts())
    output = mock.receive(
        HEADER + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>x</auth>",
        1.0,
    )
    assert b"<invalid-mechanism/>" in output.data and b"<policy-violation" in output.data
    assert mock.closed


def test_the_password_is_not_shown() -> None:
    mock = MockServer(scripts())
    output = mock.receive(HEADER + plain("carol"), 1.0)
    shown = b"".join(getattr(e, "raw", b"") for e in output.events)
    assert base64.b64encode(b"\0carol\0secret") not in shown
    assert b"[redacted: PLAIN credentials of 'carol']" in shown


# -- the command line ---------------------------------------------------------------------------

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty: not an xmppspy capture"),
        (b"hello\n", "is not an xmppspy capture (its first line is not JSON)"),
        (b'{"a": 1}\n', 'is not an xmppspy capture (no "format": "xmppspy-capture" header)'),
        (
            b'{"format": "xmppspy-capture", "version": 99}\n',
            "is capture format version 99; this xmppspy reads version 1",
        ),
        (CAPTURE.read_bytes()[:-40], "ends in a cut line"),
        (CAPTURE.read_bytes().splitlines(keepends=True)[0], "holds no connection"),
    ],
    ids=["empty", "not-json", "not-capture", "wrong-version", "truncated", "no-connection"],
)
def test_unusable_files_give_one_clear_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    code, err = run("serve", str(path), "--listen", "127.0.0.1:1")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("xmppspy: ") and message in err, err


def test_an_unknown_connection_is_named(tmp_path: Path) -> None:
    code, err = run("serve", str(CAPTURE), "--conn", "c9")
    assert code == 1
    assert "has no connection 'c9' (it has c1, c2)" in err and err.count("\n") == 1


def test_a_connection_that_went_tls_cannot_be_served(tmp_path: Path) -> None:
    lines = [orjson.loads(line) for line in CAPTURE.read_bytes().splitlines()]
    kept = [lines[0]]
    for line in lines[1:]:
        if line.get("conn") == "c1":
            kept.append(line)
            if line.get("event") == "stanza" and line["kind"] == "stream:features":
                kept.append({"t": line["t"], "conn": "c1", "dir": "c2s", "event": "tls"})
                kept.append(
                    {"t": line["t"], "conn": "c1", "dir": "c2s", "event": "opaque",
                     "raw_b64": "FgMB", "reason": "tls"}
                )  # fmt: skip
                break
    path = tmp_path / "tls.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in kept))
    code, err = run("serve", str(path))
    assert code == 1
    assert "connection c1 cannot be served: it went TLS before the bind" in err


# -- end to end: the real command, real clients -------------------------------------------------


class ServeProcess:
    """``python -m xmppspy serve ...`` as a child process, its output in files."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.port = free_loopback_ports(1)[0]
        self.out = workdir / "serve.out"
        self.err = workdir / "serve.err"
        command = [
            sys.executable, "-m", "xmppspy", "serve", str(CAPTURE),
            "--listen", f"127.0.0.1:{self.port}", *args,
        ]  # fmt: skip
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + 15
        while b"Ctrl-C stops" not in self.err.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"xmppspy serve did not start:\n{self.stderr()}")
            time.sleep(0.02)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"xmppspy serve ignored Ctrl-C:\n{self.stderr()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stdout(self) -> str:
        return self.out.read_text("utf-8", "replace")

    def stderr(self) -> str:
        return self.err.read_text("utf-8", "replace")


#: The bodies each side sent in the capture: what the scenario must send and get back.
RECORDED_SCRIPT = {
    ("alice", "bob"): ("Hi Bob! Is the build green?", "It says 1 < 2 && 3 > 2 ☃"),
    ("bob", "alice"): ("Green here 🎉", "Ünïcödé works too: 日本語"),
}


@pytest.mark.e2e
async def test_real_clients_replay_the_recorded_chat(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path)
    try:
        result = await trio.to_thread.run_sync(
            functools.partial(
                run_chat_scenario,
                "127.0.0.1",
                server.port,
                "example.test",
                {"alice": "any password", "bob": "will do"},
                script=RECORDED_SCRIPT,
                timeout=10.0,
            )
        )
        result.assert_ok()
        assert server.stop() == 0, server.stderr()
    finally:
        server.kill()
    out, err = server.stdout(), server.stderr()
    assert "alice@example.test/xmppspy-alice" in out and "bob@example.test/xmppspy-bob" in out
    assert "matched recorded client stanza 5 <iq get {urn:xmpp:ping}ping>" in out
    assert "5/5 recorded client stanzas of c1 matched, 0 skipped" in err, err
    assert "4/4 recorded client stanzas of c2 matched, 0 skipped" in err, err
    assert "Traceback" not in out + err


async def _raw_client(port: int, *stanzas: bytes) -> bytes:
    """Log in with raw bytes, send ``stanzas``, and return all the server sent until it closed."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()

    async def until(marker: bytes, count: int = 1) -> None:
        while received.count(marker) < count:
            data = await stream.receive_some(65536)
            if not data:
                return
            received.extend(data)

    async with stream:
        with trio.fail_after(10):
            await stream.send_all(HEADER + plain("alice"))
            await until(b"<success")
            await stream.send_all(HEADER)
            await until(b"</stream:features>", 2)
            await stream.send_all(
                b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
            )
            await until(b"</jid>")
            await stream.send_all(b"".join(stanzas))
            await until(b"</stream:stream>")
    return bytes(received)


@pytest.mark.e2e
async def test_strict_reports_a_departing_client(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, "--strict")
    try:
        received = await _raw_client(
            server.port, b"<iq type='get' id='v'><query xmlns='jabber:iq:version'/></iq>"
        )
        code = server.stop()
    finally:
        server.kill()
    assert b"<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in received
    assert received.endswith(b"</stream:error></stream:stream>")
    assert code == 1
    line = (
        "c1 client stanza <iq get {jabber:iq:version}query> departs from the capture: the capture "
        "has <iq get {jabber:iq:roster}query> next (recorded client stanza 1 of c1)"
    )
    assert f"xmppspy: {line}" in server.stderr().splitlines(), server.stderr()
