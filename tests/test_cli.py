"""The command line as a person meets it: output, filters, and errors without tracebacks."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import orjson
import pytest
import typer.main
from rich.console import Console
from test_capture import session_records, write
from typer.testing import CliRunner

from xmppspy.capture import encode_record
from xmppspy.cli import app
from xmppspy.cli.common import parse_address
from xmppspy.events import Notice, Record
from xmppspy.render import View
from xmppspy.selection import Shown

runner = CliRunner()


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "session.jsonl"
    write(path, session_records())
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_replay_shows_the_whole_session(capture: Path) -> None:
    code, out, _ = run("replay", str(capture))
    assert code == 0
    assert "stream opened to=example.test version=1.0" in out
    assert "stream restarted" in out
    assert "sasl:auth" in out and "(secrets redacted)" in out
    assert "bound as alice@example.test/r" in out
    # pretty XML, indented, with entities as on the wire
    assert '    <message to="bob@example.test" type="chat">' in out
    assert "      <body>☃ &lt;&amp;</body>" in out
    assert "parse error at byte" in out
    # the connection is labelled with its JID once bound
    assert "c1 alice@example.test/r C→S message" in out


def test_replay_kind_message_shows_exactly_the_messages(capture: Path) -> None:
    code, out, _ = run("replay", str(capture), "--kind", "message", "--json")
    assert code == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [line["kind"] for line in lines] == ["message"]
    assert lines[0]["raw"].startswith("<message to='bob@example.test' type='chat'>")


def test_same_flag_is_or_different_flags_are_and(capture: Path) -> None:
    _, out, _ = run("replay", str(capture), "--json", "-k", "iq", "-k", "message")
    assert sorted(orjson.loads(line)["kind"] for line in out.splitlines()) == [
        "iq",
        "iq",
        "message",
    ]
    _, out, _ = run("replay", str(capture), "--json", "-k", "iq", "-t", "result")
    assert [orjson.loads(line)["type"] for line in out.splitlines()] == ["result"]
    _, out, _ = run("replay", str(capture), "--json", "-k", "sasl")
    assert [orjson.loads(line)["kind"] for line in out.splitlines()] == [
        "sasl:auth",
        "sasl:success",
    ]


def test_raw_shows_bytes_as_on_the_wire(capture: Path) -> None:
    _, out, _ = run("replay", str(capture), "--raw", "-k", "message")
    assert "<message to='bob@example.test' type='chat'><body>☃ &lt;&amp;</body></message>" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["replay", "{capture}", "--kind", "mesage"],
            "unknown kind 'mesage' (did you mean 'message'?)",
        ),
        (["replay", "{capture}", "--type", "chta"], "unknown type 'chta' (did you mean 'chat'?)"),
        (["replay", "{tmp}/missing.jsonl"], "cannot open"),
        (["replay", "{tmp}"], "cannot open"),
    ],
)
def test_mistakes_get_one_clear_line(capture: Path, args: list[str], message: str) -> None:
    args = [a.format(capture=capture, tmp=capture.parent) for a in args]
    code, out, err = run(*args)
    assert code in (1, 2)
    assert message in err
    assert "Traceback" not in out + err


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    code, _, err = run("replay", str(path))
    assert code == 1
    assert "is not an xmppspy capture" in err


def test_cut_capture_is_shown_and_reported(capture: Path) -> None:
    capture.write_bytes(capture.read_bytes()[:-10])
    code, out, err = run("replay", str(capture))
    assert code == 0
    assert "bound as" in out
    assert "ends in a cut line" in err


@pytest.mark.parametrize("command", ["replay", "stats"])
def test_a_capture_with_lost_events_says_so_whatever_the_filter(
    capture: Path, command: str
) -> None:
    """The proxy marks events it could not write (a full disk); both readers tell the person."""
    gap = Record(2e9, "-", Notice("the capture lost 3 events here: No space left on device"))
    with capture.open("ab") as handle:
        handle.write(encode_record(gap, {"lost": 3}))
    code, _, err = run(command, str(capture), "--kind", "message")
    assert code == 0
    assert "lacks 3 events the proxy could not write" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--upstream", "example.test:http", "the port must be a number"),
        ("--upstream", "example.test:70000", "the port must be a number"),
        ("--listen", ":5222", "has no host"),
    ],
)
def test_bad_addresses_are_refused_before_anything_starts(
    option: str, value: str, message: str
) -> None:
    args = ["proxy", "--upstream", "example.test", option, value]
    code, out, err = run(*args)
    assert code == 2
    assert message in err
    assert "Traceback" not in out + err


def test_unknown_upstream_host_is_refused_at_once() -> None:
    code, out, err = run("proxy", "--upstream", "no-such-host.invalid", "--listen", "127.0.0.1:1")
    assert code == 1
    assert "cannot resolve upstream no-such-host.invalid:5222" in err
    assert "Traceback" not in out + err


def test_listen_port_in_use_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run("proxy", "--upstream", "127.0.0.1:1", "--listen", f"127.0.0.1:{port}")
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.org", "example.org", 5222),
        ("example.org:5223", "example.org", 5223),
        ("127.0.0.1:15222", "127.0.0.1", 15222),
        ("[::1]:5222", "::1", 5222),
        ("[::1]", "::1", 5222),
        ("::1", "::1", 5222),
    ],
)
def test_addresses(text: str, host: str, port: int) -> None:
    address = parse_address(text, default_port=5222)
    assert (address.host, address.port) == (host, port)


def test_view_at_a_fixed_width() -> None:
    with Path(os.devnull).open("w") as devnull:
        console = Console(width=120, record=True, no_color=True, file=devnull)
        view = View(console, tz=datetime.UTC)
        records: list[Record] = session_records()
        for record in records:
            view.show(Shown(record))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert lines[:3] == [
        "00:00:01.000 c1 connected 127.0.0.1:4000 → example.test:5222",
        "00:00:02.000 c1 C→S stream opened to=example.test version=1.0 ".ljust(120, "─"),
        "00:00:03.000 c1 S→C stream opened from=example.test id=s1 version=1.0 ".ljust(120, "─"),
    ]
    at = lines.index(
        "00:00:08.000 c1 alice@example.test/r C→S message  type=chat  · → bob@example.test"
    )
    assert lines[at + 1 : at + 4] == [
        '    <message to="bob@example.test" type="chat">',
        "      <body>☃ &lt;&amp;</body>",
        "    </message>",
    ]
    assert "00:00:08.000 c1 alice@example.test/r C→S keepalive (1 byte)" in lines
    assert lines[-1].endswith(
        "closed a@b/c: closed by both sides; C→S 3 stanzas 1 bytes, S→C 4 stanzas 2 bytes"
    )


def test_no_command_declares_an_option_twice() -> None:
    """Generated filter flags must not silently shadow a command's own options (--to, --jid)."""
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        seen: dict[str, str] = {}
        for param in command.params:
            for option in [*param.opts, *param.secondary_opts]:
                assert option not in seen, (
                    f"{name}: {option} is both {seen[option]} and {param.name}"
                )
                seen[option] = param.name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream-tls", "127.0.0.1:5223"], "are for --listen-tls clients"),
        (["--upstream-tls-name", "example.test"], "are for --listen-tls clients"),
        (
            ["--listen-tls", "127.0.0.1:15223", "--upstream-tls-name", "example.test"],
            "--upstream-tls-name goes with --upstream-tls",
        ),
        (
            ["--listen-tls", "127.0.0.1:15223", "--tls", "passthrough"],
            "--listen-tls terminates TLS: it needs --tls intercept or strip",
        ),
        (
            [
                "--listen-tls",
                "127.0.0.1:15223",
                "--upstream-tls",
                "127.0.0.1:5223",
                "--tls",
                "passthrough",
            ],
            "--listen-tls terminates TLS: it needs --tls intercept or strip",
        ),
        (["--tls", "passthrough", "--upstream-insecure"], "need --tls intercept or strip"),
        (["--upstream-insecure", "--upstream-ca", "pyproject.toml"], "contradict each other"),
        (["--key", "pyproject.toml"], "--key goes with --cert"),
    ],
)
def test_tls_flag_mistakes_are_one_line(args: list[str], message: str) -> None:
    code, out, err = run("proxy", "--upstream", "127.0.0.1:5222", *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in out + err
