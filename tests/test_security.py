"""Security properties: where the proxy listens, where it connects, who can read its captures,
and that parsing never reaches out (no entity expansion, no DTD, no file, no network).

Network and file access are observed, not assumed: a loopback TCP listener records every
connection attempt, and a named pipe records every attempt to open it for reading.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import inspect
import io
import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
import typer.main
from lxml import etree
from rich.console import Console
from support.prosody import free_loopback_ports

from xmppspy import cli
from xmppspy import xml as hardened
from xmppspy.capture import create_capture_file
from xmppspy.cli import common
from xmppspy.events import Direction, ParseError, Record, Stanza
from xmppspy.parser import StreamParser
from xmppspy.relay import Relay, RelayConfig, tcp_upstream
from xmppspy.render import View
from xmppspy.session import Session

SECRET = "TOP-SECRET-5b0c9e21"
HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"to='example.test' version='1.0'>"
)
DEFAULT_PORT = 5222
LOOPBACK = "127.0.0.1"


# -- where the proxy listens --------------------------------------------------------------------


def test_listen_defaults_to_loopback() -> None:
    """The default of ``--listen``, as the function and as the command line declare it."""
    default = inspect.signature(cli.proxy).parameters["listen"].default
    group = typer.main.get_command(cli.app)
    command = group.commands["proxy"]  # type: ignore[attr-defined]
    (option,) = [p for p in command.params if p.name == "listen"]
    assert option.default == default == f"127.0.0.1:{DEFAULT_PORT}"
    address = common.parse_address(default, default_port=common.XMPP_PORT)
    assert ipaddress.ip_address(address.host).is_loopback
    assert address.port == DEFAULT_PORT


def test_an_empty_listen_host_is_refused_not_taken_as_every_interface() -> None:
    for text in (":5222", "[]:5222"):
        with pytest.raises(typer.BadParameter, match="no host"):
            common.parse_address(text, default_port=common.XMPP_PORT)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """The TCP sockets process ``pid`` listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            host_hex, port_hex = local.split(":")
            raw = bytes.fromhex(host_hex)
            # /proc prints the address as 32-bit words in host order
            words = [raw[i : i + 4][::-1] for i in range(0, size, 4)]
            host = str(ipaddress.ip_address(b"".join(words)))
            found.append((host, int(port_hex, 16)))
    return found


def start_cli(args: Sequence[str], workdir: Path, *, umask: int = -1) -> subprocess.Popen[bytes]:
    """``python -m xmppspy proxy ARGS``, stderr to workdir/err, waiting until it listens."""
    err = (workdir / "err").open("wb")
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "xmppspy", "proxy", "-q", *args],
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=env,
        umask=umask,
    )
    err.close()
    deadline = time.monotonic() + 15
    while b"Ctrl-C stops" not in (workdir / "err").read_bytes():  # the ready line
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            raise AssertionError(f"the proxy did not start:\n{(workdir / 'err').read_text()}")
        time.sleep(0.02)
    return process


def stop_cli(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_proxy_started_without_listen_listens_on_loopback_only(tmp_path: Path) -> None:
    if not port_is_free(DEFAULT_PORT):
        pytest.skip(
            f"port {DEFAULT_PORT} is in use on this machine: the default is checked through "
            "the typer default and parse_address (test_listen_defaults_to_loopback) instead"
        )
    (upstream,) = free_loopback_ports(1)
    process = start_cli(["--upstream", f"127.0.0.1:{upstream}"], tmp_path)
    try:
        sockets = listening_sockets(process.pid)
    finally:
        assert stop_cli(process) == 0
    assert sockets == [("127.0.0.1", DEFAULT_PORT)]
    err = (tmp_path / "err").read_text()
    assert f"listening on 127.0.0.1:{DEFAULT_PORT}" in err
    assert "not a loopback address" not in err


@pytest.mark.parametrize(
    ("host", "warned"),
    [("0.0.0.0", True), ("127.0.0.1", False), ("localhost", False)],
)
def test_a_non_loopback_listen_address_is_warned_about(
    tmp_path: Path, host: str, warned: bool
) -> None:
    (port, upstream) = free_loopback_ports(2)
    process = start_cli(
        ["--listen", f"{host}:{port}", "--upstream", f"127.0.0.1:{upstream}"], tmp_path
    )
    try:
        sockets = listening_sockets(process.pid)
    finally:
        assert stop_cli(process) == 0
    err = (tmp_path / "err").read_text()
    warning = (
        f"xmppspy: listening on {host}:{port}, not a loopback address: anyone who can reach "
        "it can use this proxy and read what crosses it."
    )
    if warned:
        assert warning in " ".join(err.split())  # one message, however the console wraps it
        assert err.index("not a loopback") < err.index("xmppspy 0")  # before anything else
        assert sockets == [("0.0.0.0", port)]
    else:
        assert "not a loopback" not in err
        assert all(ipaddress.ip_address(h).is_loopback for h, _ in sockets)


# -- where the proxy connects -------------------------------------------------------------------


class Watchful(trio.abc.HostnameResolver):
    """Records every name trio is asked to resolve; resolves nothing."""

    def __init__(self) -> None:
        self.asked: list[object] = []

    async def getaddrinfo(self, host: object, port: object, *args: object) -> list[object]:
        self.asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def getnameinfo(self, sockaddr: object, flags: int) -> tuple[str, str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


class Records:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def accept(self, records: Sequence[Record]) -> None:
        self.records.extend(records)


async def test_the_proxy_connects_only_to_the_configured_upstream() -> None:
    """Whatever the client names (stream ``to``, stanza ``to``), the relay opens its upstream,
    only that, once per client, and resolves no name."""
    resolver = Watchful()
    trio.socket.set_custom_hostname_resolver(resolver)
    decoy_hits: list[int] = []
    upstream_got: list[bytes] = []

    async def upstream(stream: trio.SocketStream) -> None:
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
        upstream_got.append(bytes(data))
        await stream.send_eof()

    async def decoy(stream: trio.SocketStream) -> None:
        decoy_hits.append(1)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            (up,) = await nursery.start(
                functools.partial(trio.serve_tcp, upstream, 0, host=LOOPBACK)
            )
            (dec,) = await nursery.start(functools.partial(trio.serve_tcp, decoy, 0, host=LOOPBACK))
            up_port, decoy_port = up.socket.getsockname()[1], dec.socket.getsockname()[1]
            opened: list[str] = []
            configured = tcp_upstream("127.0.0.1", up_port)

            async def recording_opener() -> trio.abc.Stream:
                opened.append(f"127.0.0.1:{up_port}")
                return await configured()

            relay = Relay(RelayConfig(f"127.0.0.1:{up_port}"), recording_opener, Records())
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            await nursery.start(relay.serve, listeners)
            sent = []
            for to in (f"127.0.0.1:{decoy_port}", "attacker.example", f"localhost:{decoy_port}"):
                data = (
                    HEADER.replace(
                        b"to='example.test'", b"to='%s' from='x@%s'" % (to.encode(), to.encode())
                    )
                    + b"<iq type='get' id='1' to='%s'><query xmlns='jabber:iq:version'/></iq>"
                    % to.encode()
                    + b"<message to='bob@%s'><body>hi</body></message></stream:stream>"
                    % to.encode()
                )
                sent.append(data)
                client = await trio.open_tcp_stream("127.0.0.1", port)
                async with client:
                    await client.send_all(data)
                    await client.send_eof()
                    while await client.receive_some(65536):
                        pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert opened == [f"127.0.0.1:{up_port}"] * 3
    assert upstream_got == sent
    assert decoy_hits == []
    assert resolver.asked == []


# -- who can read a capture ---------------------------------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("permissive_umask")
def test_capture_files_are_0600_even_with_umask_0(tmp_path: Path) -> None:
    new = tmp_path / "new.jsonl"
    create_capture_file(new).close()
    existing = tmp_path / "existing.jsonl"
    existing.write_bytes(b"old content")
    existing.chmod(0o666)
    create_capture_file(existing).close()
    for path in (new, existing):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert existing.read_bytes() == b""


def test_the_command_line_records_to_a_0600_file_with_umask_0(tmp_path: Path) -> None:
    capture = tmp_path / "session.jsonl"
    port, upstream = free_loopback_ports(2)
    process = start_cli(
        ["-l", f"127.0.0.1:{port}", "-u", f"127.0.0.1:{upstream}", "--record", str(capture)],
        tmp_path,
        umask=0,
    )
    try:
        mode = stat.S_IMODE(capture.stat().st_mode)
    finally:
        assert stop_cli(process) == 0
    assert mode == 0o600
    assert stat.S_IMODE(capture.stat().st_mode) == 0o600


# -- parsing never reaches out ------------------------------------------------------------------


class NetWatch:
    """A loopback TCP listener that records every connection attempt and hangs up at once."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.02)
        self.port = self.sock.getsockname()[1]
        self.attempts: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _take(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(0.2)
            try:
                self.attempts.append(conn.recv(4096))
            except OSError:
                self.attempts.append(b"")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._take()
            except TimeoutError:
                continue

    def close(self) -> list[bytes]:
        self._stop.set()
        self._thread.join(5)
        self.sock.settimeout(0)  # anything still queued by the kernel counts too
        try:
            while True:
                self._take()
        except (BlockingIOError, TimeoutError):
            pass
        self.sock.close()
        return self.attempts


class FileWatch:
    """A named pipe that records every attempt to open it for reading (and feeds the reader
    SECRET, so that a reader is never left waiting)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: nobody reads
            except OSError:
                time.sleep(0.002)
                continue
            self.opened += 1
            with contextlib.suppress(OSError):
                os.write(fd, f"<!ENTITY leak '{SECRET}'>{SECRET}".encode())
            os.close(fd)

    def close(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.opened


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[NetWatch, FileWatch, Path]]:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    net, pipe = NetWatch(), FileWatch(tmp_path / "pipe")
    try:
        yield net, pipe, secret
    finally:
        attempts, opened = net.close(), pipe.close()
    assert attempts == [], "the parser connected to the network"
    assert opened == 0, "the parser opened a file"


def reaching_out(port: int, pipe: Path, secret: Path) -> dict[str, bytes]:
    """Prologues and stanzas that would fetch a DTD or entity, if anything ever resolved them."""
    url = f"http://127.0.0.1:{port}".encode()
    pipe_uri, secret_uri = pipe.as_uri().encode(), secret.as_uri().encode()
    use = b"<message to='juliet@example.test'><body>&xxe;&leak;</body></message>"
    return {
        "dtd-over-http": b"<!DOCTYPE stream:stream SYSTEM '" + url + b"/x.dtd'>" + HEADER + use,
        "dtd-from-file": b"<!DOCTYPE stream:stream SYSTEM '" + pipe_uri + b"'>" + HEADER + use,
        "entity-over-http": b"<!DOCTYPE stream:stream [<!ENTITY xxe SYSTEM '"
        + url
        + b"/e'>]>"
        + HEADER
        + use,
        "entity-from-pipe": b"<!DOCTYPE stream:stream [<!ENTITY xxe SYSTEM '"
        + pipe_uri
        + b"'>]>"
        + HEADER
        + use,
        "entity-from-file": b"<!DOCTYPE stream:stream [<!ENTITY xxe SYSTEM '"
        + secret_uri
        + b"'>]>"
        + HEADER
        + use,
        "parameter-entity": b"<!DOCTYPE stream:stream [<!ENTITY % p SYSTEM '"
        + url
        + b"/p.dtd'> %p;]>"
        + HEADER
        + use,
        "public-id": b"<!DOCTYPE stream:stream PUBLIC '-//X//DTD X//EN' '"
        + url
        + b"/pub.dtd'>"
        + HEADER
        + use,
    }


@pytest.mark.parametrize("chunk", [1, 4096], ids=["1-byte", "whole"])
def test_the_stream_parser_never_loads_a_dtd_an_entity_a_file_or_a_url(
    watched: tuple[NetWatch, FileWatch, Path], chunk: int
) -> None:
    net, pipe, secret = watched
    for name, data in reaching_out(net.port, pipe.path, secret).items():
        parser = StreamParser(Direction.C2S)
        events = []
        for i in range(0, len(data), chunk):
            events += parser.feed(data[i : i + chunk])
        events += parser.close()
        assert not any(isinstance(e, Stanza) for e in events), name
        (error,) = [e for e in events if isinstance(e, ParseError)]
        assert "DOCTYPE" in error.reason, name
        assert error.offset == 0
        assert b"".join(e.raw for e in events) == data
        assert all(SECRET.encode() not in e.raw for e in events)


def test_parse_stanza_never_loads_a_dtd_an_entity_a_file_or_a_url(
    watched: tuple[NetWatch, FileWatch, Path],
) -> None:
    """``xmppspy.xml.parse_stanza`` (the view's and the bind rule's lxml): ValueError, and
    nothing fetched, whether the stanza carries a DOCTYPE or just refers to an entity."""
    net, pipe, secret = watched
    context = b"<xmppspy-context xmlns='jabber:client'>"
    for name, data in reaching_out(net.port, pipe.path, secret).items():
        stanza = data.replace(HEADER, b"")  # the DOCTYPE, then the message
        with pytest.raises(ValueError, match="not a well-formed element"):
            hardened.parse_stanza(context, stanza)
        bare = stanza[stanza.index(b"<message") :]  # only the entity references
        with pytest.raises(ValueError, match="not a well-formed element"):
            hardened.parse_stanza(context, bare)
        assert name


def test_parse_stanza_does_not_process_xinclude(watched: tuple[NetWatch, FileWatch, Path]) -> None:
    net, pipe, _ = watched
    stanza = (
        b"<message xmlns:xi='http://www.w3.org/2001/XInclude'>"
        b"<xi:include href='" + pipe.path.as_uri().encode() + b"' parse='text'/>"
        b"<xi:include href='http://127.0.0.1:%d/i.xml'/></message>" % net.port
    )
    element = hardened.parse_stanza(b"<xmppspy-context xmlns='jabber:client'>", stanza)
    assert len(element.findall("{http://www.w3.org/2001/XInclude}include")) == 2
    assert SECRET.encode() not in etree.tostring(element)


def test_the_lxml_parser_itself_does_not_expand_or_load_either(
    watched: tuple[NetWatch, FileWatch, Path],
) -> None:
    """The second lock alone (``xmppspy.xml``'s parser, private): even a document whose
    DOCTYPE comes first, as ``parse_stanza`` never lets it, loads nothing and expands nothing."""
    net, pipe, secret = watched
    for name, data in reaching_out(net.port, pipe.path, secret).items():
        document = data.replace(HEADER, b"")
        try:
            root = etree.fromstring(document, hardened._PARSER)
        except etree.XMLSyntaxError:
            continue
        assert SECRET.encode() not in etree.tostring(root), name
    laughs = (
        b"<!DOCTYPE m [<!ENTITY a 'aaaaaaaaaa'>"
        + b"".join(b"<!ENTITY %c '%s'>" % (98 + i, b"&%c;" % (97 + i) * 10) for i in range(8))
        + b"]><m>&i;</m>"
    )
    try:
        root = etree.fromstring(laughs, hardened._PARSER)
    except etree.XMLSyntaxError as exc:  # libxml2 2.11+ refuses the amplification itself
        assert "amplification" in str(exc)
    else:
        assert len(etree.tostring(root)) < 100  # &i; stays a reference: 10^9 a's never made


# -- what a hostile peer can make the view do ---------------------------------------------------

ESCAPES = (
    b"\x1b]0;owned by the peer\x1b\\"  # OSC: set the terminal's title
    b"\x1b[2J\x1b[H"  # clear the screen, cursor home
    b"\x1b[32mc1 S\xe2\x86\x92C sasl:success (forged)\x1b[0m"
)


@pytest.mark.parametrize("raw", [False, True], ids=["pretty", "raw"])
def test_hostile_bytes_cannot_drive_the_operators_terminal(raw: bool) -> None:
    """Bytes that are not XML are shown as an excerpt (parse error, opaque): terminal control
    sequences in them must not reach the terminal as such, or a peer can clear the screen,
    retitle the window and forge lines of the view (live, and again on every replay)."""
    session = Session()
    records = [
        Record(1.0, "c1", event)
        for data in (HEADER + b"<presence/>" + ESCAPES, ESCAPES)
        for event in session.feed(Direction.C2S, data)
    ]
    assert {type(r.event).__name__ for r in records} >= {"ParseError", "Opaque"}
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=200)
    view = View(console, raw=raw)
    for record in records:
        console.print(view.render(record))
    shown = out.getvalue()
    assert "forged" in shown  # the bytes are shown...
    assert "\x1b]0;" not in shown  # ...but not obeyed
    assert "\x1b[2J" not in shown
    assert "\x1b[H" not in shown


@pytest.mark.parametrize(
    "mechanism", [b"PLAIN", b"plain", b"&#80;LAIN", b"&#x50;LAIN", b"PL&#65;IN"]
)
def test_plain_credentials_are_redacted_however_the_mechanism_is_written(
    mechanism: bytes,
) -> None:
    """The mechanism is an attribute: a server reads ``&#80;LAIN`` as PLAIN and takes the
    password, so the redaction must read it the same way (it reads the raw bytes)."""
    payload = base64.b64encode(b"\0alice\0" + SECRET.encode())
    auth = (
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='"
        + mechanism
        + b"'>"
        + payload
        + b"</auth>"
    )
    events = Session().feed(Direction.C2S, HEADER + auth)
    (stanza,) = [e for e in events if isinstance(e, Stanza)]
    assert stanza.element.get("mechanism").upper() == "PLAIN"  # what any XML parser reads
    assert stanza.redacted
    assert payload not in stanza.raw
