#!/usr/bin/env python3
"""Benchmark xmppspy's proxy against socat: throughput, round-trip latency and memory.

Run it with the interpreter that has xmppspy installed (the proxy is started as
``sys.executable -m xmppspy``)::

    python bench/run.py              # full run: 200,000 stanzas, 2,000 round trips
    python bench/run.py --quick      # 20,000 stanzas, 300 round trips

Everything happens on 127.0.0.1 with ports picked by the kernel. Linux only: readiness is read
from /proc/net/tcp and memory from /proc/PID/status. Needs socat (``apt-get install socat``).
See docs/performance.md for what is measured, how, and the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024
MB = 1_000_000
"""Throughput and sizes are in decimal megabytes (10^6 bytes)."""

CLIENT_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>"
)
SERVER_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='bench-1' "
    b"version='1.0'>"
)
CLOSE = b"</stream:stream>"

# The project's targets, on a 2-core machine, for ~390-byte stanzas (docs/performance.md).
TARGET_RECORD_STANZAS_PER_S = 70_000
TARGET_PEAK_RSS_MB = 60.0
TARGET_ADDED_MEDIAN_US = 250.0

Command = Callable[[int, int], list[str]]
"""Builds a relay's command line from its listening port and its upstream port."""

OTHER_LOAD_WARNING = 0.05
"""Warn when other processes used more than this share of one CPU while the bench ran."""
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RSS_INTERVAL = 0.05


class BenchError(Exception):
    """Something went wrong that makes a figure meaningless; the message says what."""


# -- the synthetic stream -------------------------------------------------------------------------

_ASCII_WORDS = (
    "hello hi the a to and of is it you we they meeting lunch report deploy build "
    "tomorrow today tonight noon please thanks ok sure maybe later call me back when "
    "are free send file link review merge branch server client stanza roster chat "
    "room presence status away busy back soon sorry great nice done fixed broken "
    "test release version update patch night morning weekend plan ticket bug"
)
_OTHER_WORDS = "café naïve Grüße über façade déjà-vu привет спасибо 日本語 こんにちは 你好 😀 👍 🎉"
_ESCAPED_WORDS = "& <3 x>y 'quoted' \"double\""
WORDS = [*_ASCII_WORDS.split(), *_OTHER_WORDS.split(), *_ESCAPED_WORDS.split()]
_NAMES = (
    "alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy "
    "rupert sybil trent victor walter yolanda"
)
CONTACTS = [f"{name}@example.test" for name in _NAMES.split()]
ROOMS = [f"{name}@conference.example.test" for name in ("dev", "ops", "coffee", "release")]
DISCO_FEATURES = (
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/chatstates",
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/disco#items",
    "urn:xmpp:ping",
    "urn:xmpp:receipts",
    "urn:xmpp:time",
    "jabber:iq:version",
    "urn:xmpp:message-correct:0",
    "urn:xmpp:chat-markers:0",
)


def _text(rng: random.Random, words: int) -> str:
    return escape(" ".join(rng.choice(WORDS) for _ in range(words)))


def _id(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


def _body_words(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.50:
        return rng.randint(1, 15)
    if r < 0.88:
        return rng.randint(16, 90)
    return rng.randint(91, 290)


def _message(rng: random.Random) -> str:
    ident = _id(rng)
    if rng.random() < 0.15:
        room = rng.choice(ROOMS)
        return (
            f"<message type='groupchat' to='{room}' id='{ident}'>"
            f"<body>{_text(rng, _body_words(rng))}</body>"
            f"<origin-id xmlns='urn:xmpp:sid:0' id='{_id(rng)}'/></message>"
        )
    return (
        f"<message type='chat' to='{rng.choice(CONTACTS)}/{rng.choice(('phone', 'laptop'))}' "
        f"id='{ident}' xml:lang='en'><body>{_text(rng, _body_words(rng))}</body>"
        "<active xmlns='http://jabber.org/protocol/chatstates'/>"
        "<request xmlns='urn:xmpp:receipts'/>"
        f"<origin-id xmlns='urn:xmpp:sid:0' id='{ident}'/></message>"
    )


def _presence(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.6:
        show = rng.choice(("away", "chat", "dnd", "xa"))
        return (
            f"<presence id='{_id(rng)}'><show>{show}</show>"
            f"<status>{_text(rng, rng.randint(0, 8))}</status><priority>5</priority>"
            "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
            f"node='https://example.test/bench' ver='{_id(rng)}{_id(rng)}='/>"
            f"<x xmlns='vcard-temp:x:update'><photo>{_id(rng)}{_id(rng)}</photo></x></presence>"
        )
    if r < 0.85:
        return f"<presence type='unavailable' to='{rng.choice(ROOMS)}/bench'/>"
    kind = rng.choice(("subscribe", "subscribed", "unsubscribe"))
    return f"<presence type='{kind}' to='{rng.choice(CONTACTS)}' id='{_id(rng)}'/>"


def _iq(rng: random.Random) -> str:
    ident = _id(rng)
    r = rng.random()
    if r < 0.35:
        return f"<iq type='get' id='{ident}' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>"
    if r < 0.50:
        return f"<iq type='get' id='{ident}'><query xmlns='jabber:iq:roster' ver='v{ident}'/></iq>"
    if r < 0.70:
        return (
            f"<iq type='get' id='{ident}' to='{rng.choice(CONTACTS)}/laptop'>"
            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        )
    if r < 0.80:
        return (
            f"<iq type='get' id='{ident}' to='conference.example.test'>"
            "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
        )
    features = "".join(f"<feature var='{var}'/>" for var in DISCO_FEATURES)
    return (
        f"<iq type='result' id='{ident}' to='{rng.choice(CONTACTS)}/phone'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'>"
        "<identity category='client' type='pc' name='xmppspy bench'/>"
        f"{features}</query></iq>"
    )


@dataclass(frozen=True)
class Stream:
    data: bytes
    stanzas: int
    kinds: Counter[str]
    non_ascii: int
    """Stanzas with at least one non-ASCII byte."""

    @property
    def stanza_bytes(self) -> int:
        return len(self.data) - len(CLIENT_HEADER) - len(CLOSE)

    @property
    def average(self) -> float:
        return self.stanza_bytes / self.stanzas


def build_stream(count: int, seed: int) -> Stream:
    """A valid client stream: header, ``count`` stanzas (seeded mix), close tag."""
    rng = random.Random(seed)
    parts = [CLIENT_HEADER]
    kinds: Counter[str] = Counter()
    non_ascii = 0
    for _ in range(count):
        r = rng.random()
        if r < 0.55:
            kind, text = "message", _message(rng)
        elif r < 0.75:
            kind, text = "presence", _presence(rng)
        else:
            kind, text = "iq", _iq(rng)
        kinds[kind] += 1
        raw = text.encode("utf-8")
        non_ascii += len(raw) != len(text)
        parts.append(raw)
    parts.append(CLOSE)
    return Stream(b"".join(parts), count, kinds, non_ascii)


# -- processes, ports, memory --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def is_listening(port: int) -> bool:
    """Whether some socket listens on ``port`` (read from /proc: no connection is made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), Path(table).open() as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                    return True
    return False


def proc_status(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of /proc/PID/status, in kB."""
    values: dict[str, int] = {}
    with Path(f"/proc/{pid}/status").open() as lines:
        for line in lines:
            if line.startswith("Vm"):
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0])
    return values


@dataclass
class Child:
    """A process the bench started, with its stderr going to a file."""

    name: str
    argv: list[str]
    stderr_path: Path
    proc: subprocess.Popen[bytes] | None = None
    stop_signal: int = signal.SIGINT
    returncode: int | None = None

    def start(self) -> None:
        with self.stderr_path.open("wb") as err:
            # A session of its own: Ctrl-C on the bench does not hit it, we stop it ourselves.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=REPO,
                env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_listening(self, port: int, timeout: float = STARTUP_TIMEOUT) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not is_listening(port):
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with status {self.proc.returncode} before listening:\n"
                    + self.stderr()
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not listening on {port} after {timeout:g} s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Ask it to stop (bounded), then kill what is left of its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self.returncode is None:
            self.returncode = self.proc.returncode
        # socat forks a child per connection; make sure none outlives the run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def sample(self) -> int:
        kb = proc_status(self.pid)["VmRSS"]
        self.samples.append(kb)
        return kb

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OSError, KeyError, ValueError):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- throughput -----------------------------------------------------------------------------------


class Sink:
    """Accepts one connection, reads until EOF and counts bytes, in a thread."""

    def __init__(self, expected: int, timeout: float) -> None:
        self.expected = expected
        self.timeout = timeout
        self.listener = socket.create_server((HOST, 0))
        self.port: int = self.listener.getsockname()[1]
        self.received = 0
        self.complete_at: float | None = None
        """perf_counter() when the expected byte count was reached."""
        self.eof = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sink", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.listener:
                self.listener.settimeout(self.timeout)
                conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(self.timeout)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffer = memoryview(bytearray(1024 * 1024))
                while True:
                    n = conn.recv_into(buffer)
                    if not n:
                        break
                    self.received += n
                    if self.complete_at is None and self.received >= self.expected:
                        self.complete_at = time.perf_counter()
                self.eof = True
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise BenchError(f"sink still reading after {timeout:g} s ({self.received} bytes)")
        if self.error is not None:
            raise BenchError(f"sink failed: {self.error!r} after {self.received} bytes")

    def close(self) -> None:
        self.listener.close()


def send_stream(port: int, data: bytes, timeout: float) -> float:
    """Send ``data`` in 64 KiB chunks, half-close, wait for EOF; return the start time."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        view = memoryview(data)
        started = time.perf_counter()
        for offset in range(0, len(view), CHUNK):
            sock.sendall(view[offset : offset + CHUNK])
        sock.shutdown(socket.SHUT_WR)
        # The sink sends nothing: wait for the relay to pass on its EOF.
        extra = 0
        while chunk := sock.recv(65536):
            extra += len(chunk)
        if extra:
            raise BenchError(f"the sink direction carried {extra} unexpected bytes")
        return started


class Rates:
    """Throughput of a transfer of ``bytes`` (``stanzas``) in ``seconds``."""

    seconds: float
    bytes: int
    stanzas: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds

    @property
    def stanzas_per_s(self) -> float:
        return self.stanzas / self.seconds


@dataclass
class ThroughputResult(Rates):
    name: str
    seconds: float
    bytes: int
    stanzas: int
    rss_start_kb: int | None = None
    rss_max_kb: int | None = None
    rss_end_kb: int | None = None
    hwm_kb: int | None = None
    samples: int = 0
    capture_bytes: int | None = None
    capture_lines: int | None = None
    capture_events: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


_EVENT = re.compile(rb'"event":"([^"]*)"')


def read_capture(path: Path) -> tuple[int, Counter[str]]:
    """Lines of a capture, and how many of each event it holds."""
    lines = 0
    events: Counter[str] = Counter()
    with path.open("rb") as handle:
        for line in handle:
            lines += 1
            match = _EVENT.search(line)
            events[match.group(1).decode() if match else "header"] += 1
    return lines, events


def wait_for_tail(path: Path, marker: bytes, timeout: float) -> bool:
    """Whether ``marker`` shows up in the last 4 KiB of ``path`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            if marker in handle.read():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


_SUMMARY = re.compile(r"C→S (\d+) stanzas (\d+) bytes, S→C (\d+) stanzas (\d+) bytes")
_EXPECTED_STDERR = re.compile(
    r'^(xmppspy \S+: listening on |c\d+ closed|recorded \d+ events to |\{"t":)'
)
"""What the proxy may print: status lines, and the --json view's lines (they share the file)."""


def check_proxy_stderr(text: str, stream: Stream, notes: list[str]) -> None:
    summaries = _SUMMARY.findall(text)
    if len(summaries) != 1:
        notes.append(f"expected one connection summary on stderr, found {len(summaries)}")
    for c2s_stanzas, c2s_bytes, s2c_stanzas, s2c_bytes in summaries:
        got = (int(c2s_stanzas), int(c2s_bytes), int(s2c_stanzas), int(s2c_bytes))
        if got != (stream.stanzas, len(stream.data), 0, 0):
            notes.append(
                f"proxy counted C→S {got[0]} stanzas {got[1]} bytes, S→C {got[2]}/{got[3]}; "
                f"sent {stream.stanzas} stanzas {len(stream.data)} bytes"
            )
    for line in text.splitlines():
        if line.strip() and not _EXPECTED_STDERR.match(line):
            notes.append(f"proxy stderr: {line.strip()}")


def run_throughput(
    name: str,
    argv: Command,
    stream: Stream,
    workdir: Path,
    timeout: float,
    *,
    is_proxy: bool,
    capture: Path | None = None,
) -> ThroughputResult:
    """One transfer of the whole stream through the child that ``argv(listen, sink)`` starts."""
    sink = Sink(len(stream.data), timeout)
    port = free_port()
    slug = re.sub(r"\W+", "-", name).strip("-")
    child = Child(
        name,
        argv(port, sink.port),
        workdir / f"{slug}.stderr",
        stop_signal=signal.SIGINT if is_proxy else signal.SIGTERM,
    )
    sampler: RssSampler | None = None
    try:
        sink.start()
        child.start()
        child.wait_listening(port)
        if is_proxy:
            sampler = RssSampler(child.pid)
            sampler.sample()
            sampler.start()
        started = send_stream(port, stream.data, timeout)
        sink.join(timeout)
        if sink.complete_at is None or sink.received != len(stream.data):
            raise BenchError(
                f"{name}: the sink received {sink.received} bytes, {len(stream.data)} were sent"
            )
        result = ThroughputResult(name, sink.complete_at - started, sink.received, stream.stanzas)
        if capture is not None and not wait_for_tail(capture, b'"event":"disconnect"', 10):
            result.notes.append("the capture has no disconnect record 10 s after the transfer")
        if sampler is not None:
            sampler.stop()
            end = sampler.sample()
            hwm = proc_status(child.pid)["VmHWM"]
            result.rss_start_kb, result.rss_end_kb = sampler.samples[0], end
            result.rss_max_kb, result.hwm_kb = max(sampler.samples), hwm
            result.samples = len(sampler.samples)
    finally:
        if sampler is not None:
            sampler.stop()
        child.stop()
        sink.close()
    if is_proxy:
        if child.returncode != 0:
            result.notes.append(f"{name} exited with status {child.returncode} on SIGINT")
        check_proxy_stderr(child.stderr(), stream, result.notes)
    if capture is not None:
        result.capture_bytes = capture.stat().st_size
        result.capture_lines, result.capture_events = read_capture(capture)
        # header line, connect, stream open, one per stanza, stream close, disconnect
        expected_lines = stream.stanzas + 5
        expected = Counter(
            header=1, connect=1, open=1, stanza=stream.stanzas, close=1, disconnect=1
        )
        if result.capture_lines != expected_lines or result.capture_events != expected:
            result.notes.append(
                f"capture has {result.capture_lines} lines, expected {expected_lines}; "
                f"events {dict(result.capture_events)}"
            )
    return result


# -- latency --------------------------------------------------------------------------------------


def recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = sock.recv(size - len(buffer))
        if not chunk:
            raise BenchError(f"connection closed after {len(buffer)} of {size} bytes")
        buffer += chunk
    return bytes(buffer)


class EchoServer:
    """Answers a client's stream header with one of its own, then echoes every byte, in threads."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="echo", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(self.timeout)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                received = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    received += chunk
                    at = received.find(b"<stream:stream")
                    end = received.find(b">", at) if at != -1 else -1
                    if end != -1:
                        break
                conn.sendall(SERVER_HEADER + received[end + 1 :])
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)


def ping(number: int) -> bytes:
    return (
        f"<iq type='get' id='ping-{number:06d}' to='example.test'>"
        "<ping xmlns='urn:xmpp:ping'/></iq>"
    ).encode()


class Pinger:
    """One client connection that sends a small stanza and waits for its echo, again and again."""

    def __init__(self, name: str, port: int, timeout: float) -> None:
        self.name = name
        self.times_us: list[float] = []
        self._number = 0
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(CLIENT_HEADER)
            if recv_exact(self.sock, len(SERVER_HEADER)) != SERVER_HEADER:
                raise BenchError(f"{name}: the echo server's stream header came back altered")
        except BaseException:
            self.sock.close()
            raise

    def rounds(self, count: int, *, measure: bool = True) -> None:
        for _ in range(count):
            stanza = ping(self._number)
            self._number += 1
            began = time.perf_counter_ns()
            self.sock.sendall(stanza)
            echoed = recv_exact(self.sock, len(stanza))
            elapsed = time.perf_counter_ns() - began
            if echoed != stanza:
                raise BenchError(f"{self.name}: round trip {self._number} came back altered")
            if measure:
                self.times_us.append(elapsed / 1000)

    def close(self) -> None:
        with self.sock:
            self.sock.sendall(CLOSE)
            if recv_exact(self.sock, len(CLOSE)) != CLOSE:
                raise BenchError(f"{self.name}: the closing tag came back altered")


@dataclass
class LatencyResult:
    name: str
    times_us: list[float]
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times_us)

    @property
    def p99(self) -> float:
        ordered = sorted(self.times_us)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


LATENCY_BLOCK = 50
"""Round trips on one path before the next path takes its turn."""


def run_latency(
    paths: Sequence[tuple[str, Command, bool]],
    echo: EchoServer,
    workdir: Path,
    rounds: int,
    warmup: int,
    timeout: float,
) -> list[LatencyResult]:
    """Direct, then each relay to the echo server, measured in turns of 50 round trips.

    All relays run at once (idle but for their turn) so that every path is measured over the
    same stretch of time: a change in the machine's state affects them all alike.
    """
    children: list[tuple[Child, int]] = []
    pingers: list[Pinger] = []
    try:
        for name, argv, is_proxy in paths:
            port = free_port()
            slug = re.sub(r"\W+", "-", name).strip("-")
            stop = signal.SIGINT if is_proxy else signal.SIGTERM
            child = Child(
                name, argv(port, echo.port), workdir / f"rtt-{slug}.stderr", stop_signal=stop
            )
            children.append((child, port))
            child.start()
        for child, port in children:
            child.wait_listening(port)
        pingers.append(Pinger("direct", echo.port, timeout))
        pingers.extend(Pinger(child.name, port, timeout) for child, port in children)
        for pinger in pingers:
            pinger.rounds(warmup, measure=False)
        done = turn = 0
        while done < rounds:
            block = min(LATENCY_BLOCK, rounds - done)
            first = turn % len(pingers)  # rotate who goes first
            for pinger in pingers[first:] + pingers[:first]:
                pinger.rounds(block)
            done += block
            turn += 1
        for pinger in pingers:
            pinger.close()
    finally:
        for pinger in pingers:
            pinger.sock.close()
        for child, _ in children:
            child.stop()
    results = [LatencyResult(pinger.name, pinger.times_us) for pinger in pingers]
    for result, (child, _) in zip(results[1:], children, strict=True):
        if child.stop_signal != signal.SIGINT:
            continue
        if child.returncode != 0:
            result.notes.append(f"exited with status {child.returncode} on SIGINT")
        for line in child.stderr().splitlines():
            if line.strip() and not _EXPECTED_STDERR.match(line):
                result.notes.append(f"proxy stderr: {line.strip()}")
    return results


# -- reporting ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if align else cell.ljust(width)
            for cell, width, align in zip(cells, widths, right, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def mb(kb: int | None) -> str:
    """/proc's kB (KiB) as decimal MB, like every other figure here."""
    return "-" if kb is None else f"{kb * 1024 / MB:.1f}"


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def source_digest() -> str:
    """A digest of the xmppspy package's source the proxy runs: ties figures to code."""
    spec = importlib.util.find_spec("xmppspy")
    if spec is None or spec.origin is None:
        return "unknown"
    package = Path(spec.origin).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{digest.hexdigest()[:16]} (sha256 of {package}/**/*.py)"


def machine_facts() -> list[tuple[str, str]]:
    model = ""
    with contextlib.suppress(OSError), Path("/proc/cpuinfo").open() as lines:
        for text in lines:
            if text.startswith("model name"):
                model = text.partition(":")[2].strip()
                break
    commit = _command(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"]) or "unknown"
    if commit != "unknown" and _command(["git", "-C", str(REPO), "status", "--porcelain"]):
        commit += " (plus uncommitted changes in the working tree)"
    socat = _command(["socat", "-V"]).splitlines()
    socat_version = next((text for text in socat if "socat version" in text), "unknown")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return [
        ("CPUs", f"{os.cpu_count()} (usable by this process: {affinity}) {model}".rstrip()),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("Platform", platform.platform()),
        ("xmppspy", _command([sys.executable, "-m", "xmppspy", "version"]) or "unknown"),
        ("git commit", commit),
        ("source", source_digest()),
        ("socat", socat_version.strip()),
    ]


def busy_cpu_seconds() -> float:
    """CPU seconds processes have used since boot: user, nice and system time.

    Interrupt and softirq time (where the kernel does much of loopback TCP's work) is left out:
    it is charged to no process, so it cannot be told apart from the bench's own.
    """
    with Path("/proc/stat").open() as stat:
        user, nice, system = (int(value) for value in stat.readline().split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class OtherLoad:
    """CPU time that processes other than the bench and its children used over a stretch."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.busy = busy_cpu_seconds()
        self.own = own_cpu_seconds()

    def seconds(self) -> tuple[float, float]:
        """(other processes' CPU seconds, wall seconds) since creation."""
        busy, own = busy_cpu_seconds() - self.busy, own_cpu_seconds() - self.own
        return max(0.0, busy - own), time.perf_counter() - self.wall


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- main -----------------------------------------------------------------------------------------


def parse_args(
    argv: Sequence[str] | None = None,
    *,
    description: str = "Throughput, latency and memory of xmppspy proxy, with socat as baseline.",
) -> argparse.Namespace:
    """The options of a bench run (bench/tls.py takes the same ones)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smaller run")
    parser.add_argument(
        "--stanzas", type=int, help="stanzas in the stream (default 200,000; 20,000 with --quick)"
    )
    parser.add_argument(
        "--round-trips", type=int, help="measured round trips (default 2,000; 300 with --quick)"
    )
    parser.add_argument(
        "--warmup", type=int, help="unmeasured round trips first (default 200; 50 with --quick)"
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the stanza mix")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds any one transfer may take"
    )
    args = parser.parse_args(argv)
    if args.stanzas is None:
        args.stanzas = 20_000 if args.quick else 200_000
    if args.round_trips is None:
        args.round_trips = 300 if args.quick else 2_000
    if args.warmup is None:
        args.warmup = 50 if args.quick else 200
    if args.stanzas < 1 or args.round_trips < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error(
            "--stanzas, --round-trips and --timeout must be positive, --warmup not negative"
        )
    return args


def socat_command(socat: str) -> Command:
    def make(listen: int, upstream: int) -> list[str]:
        return [socat, f"TCP-LISTEN:{listen},bind={HOST},reuseaddr,fork", f"TCP:{HOST}:{upstream}"]

    return make


def proxy_command(*extra: str) -> Command:
    def make(listen: int, upstream: int) -> list[str]:
        addresses = ["--listen", f"{HOST}:{listen}", "--upstream", f"{HOST}:{upstream}"]
        return [sys.executable, "-m", "xmppspy", "proxy", *addresses, "--quiet", *extra]

    return make


TYPICAL_FILTER = "message and to:bob@example.test and not ns:urn:xmpp:chat-markers:0"
"""A filter of the kind the docs show: a few atoms, matching a small share of the stream."""


def filtered_command(expression: str, *extra: str) -> Command:
    """The proxy with a live --json view behind a filter: every record is tested in the relay."""

    def make(listen: int, upstream: int) -> list[str]:
        addresses = ["--listen", f"{HOST}:{listen}", "--upstream", f"{HOST}:{upstream}"]
        return [
            sys.executable,
            "-m",
            "xmppspy",
            "proxy",
            *addresses,
            "--json",
            "-f",
            expression,
            *extra,
        ]

    return make


def relays(socat: str, capture: Path) -> list[tuple[str, Command, Path | None]]:
    """What is measured: name, command line, and the capture file it writes (if any)."""
    return [
        ("socat", socat_command(socat), None),
        ("xmppspy --quiet", proxy_command(), None),
        ("xmppspy --quiet --record", proxy_command("--record", str(capture)), capture),
        (
            "xmppspy --record --json -f TYPICAL",
            filtered_command(TYPICAL_FILTER, "--record", str(capture)),
            capture,
        ),
    ]


def measure(
    args: argparse.Namespace, socat: str, stream: Stream
) -> tuple[list[ThroughputResult], list[LatencyResult]]:
    with tempfile.TemporaryDirectory(prefix="xmppspy-bench-") as tmp:
        workdir = Path(tmp)
        runs = []
        for name, command, capture in relays(socat, workdir / "capture.jsonl"):
            is_proxy = name.startswith("xmppspy")
            run = run_throughput(
                name, command, stream, workdir, args.timeout, is_proxy=is_proxy, capture=capture
            )
            runs.append(run)
            if capture is not None:
                capture.unlink()  # it can be large; the temporary directory goes at the end
        echo = EchoServer(args.timeout)
        echo.start()
        paths = [
            (name, command, name.startswith("xmppspy"))
            for name, command, _ in relays(socat, workdir / "latency.jsonl")
        ]
        try:
            rtt = run_latency(paths, echo, workdir, args.round_trips, args.warmup, args.timeout)
        finally:
            echo.stop()
        if echo.errors:
            rtt[0].notes.append(f"echo server errors: {echo.errors!r}")
    return runs, rtt


def report_throughput(stream: Stream, runs: list[ThroughputResult]) -> None:
    base = runs[0]
    print(
        f"Throughput: the stream above, client -> relay -> sink, sent in 64 KiB chunks; "
        f"time from first byte sent to the sink holding all {len(stream.data):,} bytes; "
        "MB = 10^6 bytes; RSS of the relay process in MB"
    )
    rows = [
        [
            run.name,
            f"{run.seconds:.3f}",
            f"{run.mb_per_s:,.2f}",
            f"{run.stanzas_per_s:,.0f}",
            f"{run.stanzas_per_s / base.stanzas_per_s:.4f}",
            "/".join(mb(kb) for kb in (run.rss_start_kb, run.rss_max_kb, run.rss_end_kb))
            if run.rss_start_kb is not None
            else "-",
            mb(run.hwm_kb),
        ]
        for run in runs
    ]
    headers = ["relay", "seconds", "MB/s", "stanzas/s", "x socat", "RSS start/max/end", "VmHWM"]
    print(table(headers, rows, [False, *[True] * 6]))
    for run in runs:
        if run.capture_bytes is not None:
            events = ", ".join(f"{n:,} {e}" for e, n in run.capture_events.most_common())
            print(
                f"Capture of {run.name}: {run.capture_lines:,} lines ({events}), "
                f"{run.capture_bytes:,} bytes ({run.capture_bytes / MB:.1f} MB, "
                f"{run.capture_bytes / len(stream.data):.2f}x the stream)"
            )
    samples = ", ".join(f"{run.samples} for {run.name}" for run in runs if run.samples)
    print(f"RSS sampled every {RSS_INTERVAL * 1000:.0f} ms ({samples} samples)")
    print()


def report_latency(args: argparse.Namespace, rtt: list[LatencyResult]) -> None:
    direct = rtt[0]
    print(
        f"Latency: round trip of one {len(ping(0))}-byte <iq/> ping through the relay to an echo "
        f"server, {args.round_trips:,} measured after {args.warmup:,} warm-up, in microseconds"
    )
    rows = [
        [
            r.name,
            f"{r.median:.1f}",
            f"{r.p99:.1f}",
            "-" if r is direct else f"{r.median - direct.median:.1f}",
            "-" if r is direct else f"{r.p99 - direct.p99:.1f}",
        ]
        for r in rtt
    ]
    headers = ["path", "median", "p99", "added median", "added p99"]
    print(table(headers, rows, [False, True, True, True, True]))
    print()


def report_targets(runs: list[ThroughputResult], rtt: list[LatencyResult]) -> None:
    recorded = next(run for run in runs if run.name == "xmppspy --quiet --record")
    filtered = next(run for run in runs if "-f TYPICAL" in run.name)
    ratio = filtered.stanzas_per_s / recorded.stanzas_per_s
    peak = max((run.hwm_kb or 0) for run in runs) * 1024 / MB
    added = max(r.median - rtt[0].median for r in rtt if r.name.startswith("xmppspy"))
    rows = [
        [
            f"--record --quiet >= {TARGET_RECORD_STANZAS_PER_S:,} stanzas/s",
            f"{recorded.stanzas_per_s:,.0f} stanzas/s ({recorded.mb_per_s:.2f} MB/s)",
            verdict(recorded.stanzas_per_s >= TARGET_RECORD_STANZAS_PER_S),
        ],
        [
            "filtered (--json -f TYPICAL) within 10% of unfiltered (--record)",
            f"{filtered.stanzas_per_s:,.0f} stanzas/s, {ratio:.1%} of unfiltered",
            verdict(ratio >= 0.9),
        ],
        [
            f"peak RSS < {TARGET_PEAK_RSS_MB:g} MB",
            f"{peak:.1f} MB VmHWM (worst xmppspy run)",
            verdict(peak < TARGET_PEAK_RSS_MB),
        ],
        [
            f"added median RTT < {TARGET_ADDED_MEDIAN_US:g} us",
            f"{added:.1f} us (worst xmppspy variant)",
            verdict(added < TARGET_ADDED_MEDIAN_US),
        ],
    ]
    print(f"TYPICAL = {TYPICAL_FILTER}")
    print("Targets (the project's, for a 2-core machine and ~390-byte stanzas):")
    print(table(["target", "measured", "verdict"], rows, [False, True, False]))
    print()


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    socat = shutil.which("socat")
    if socat is None:
        print(
            "bench: socat is not installed; it is the baseline. Install it: apt-get install socat",
            file=sys.stderr,
        )
        return 2
    if not Path("/proc/self/status").exists():
        print("bench: needs Linux (/proc) to check readiness and memory", file=sys.stderr)
        return 2
    facts = machine_facts()
    if dict(facts)["xmppspy"] == "unknown":
        print(
            f"bench: `{sys.executable} -m xmppspy` does not run; "
            "run the bench with the Python that has xmppspy installed",
            file=sys.stderr,
        )
        return 2
    before = OtherLoad()
    time.sleep(0.5)
    other, wall = before.seconds()
    facts.append(("other load", f"{other / wall:.0%} of one CPU in the 0.5 s before the run"))
    print("xmppspy benchmark")
    for key, value in facts:
        print(f"  {key + ':':<12}{value}")
    print()
    load = OtherLoad()

    began = time.perf_counter()
    stream = build_stream(args.stanzas, args.seed)
    kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(stream.kinds.items()))
    print(
        f"Stream: {stream.stanzas:,} stanzas ({kinds}; {stream.non_ascii:,} with non-ASCII text), "
        f"{len(stream.data):,} bytes, {stream.average:.1f} bytes per stanza on average "
        f"(seed {args.seed}, built in {time.perf_counter() - began:.1f} s)"
    )
    print()
    runs, rtt = measure(args, socat, stream)
    report_throughput(stream, runs)
    report_latency(args, rtt)
    report_targets(runs, rtt)

    notes = [f"{r.name}: {note}" for r in runs for note in r.notes]
    if source_digest() != dict(facts)["source"]:
        notes.append("the xmppspy source changed while the bench ran: the figures mix versions")
    notes += [f"latency {r.name}: {note}" for r in rtt for note in r.notes]
    if notes:
        print("Anomalies:")
        for note in notes:
            print(f"  - {note}")
    else:
        print(
            "Checks passed: byte counts equal, the proxy's stanza and byte counts equal, capture "
            "lines as expected, echoes intact, no unexpected proxy output."
        )
    report_other_load(load)
    print(f"Total bench time {time.perf_counter() - began:.1f} s")
    return 1 if notes else 0


def report_other_load(load: OtherLoad) -> None:
    """How much CPU other processes took while we measured, and a warning if it was a lot."""
    other, wall = load.seconds()
    print(
        f"Other processes used {other:.1f} CPU seconds during the {wall:.1f} s of measurement "
        f"({other / wall:.0%} of one CPU)"
    )
    if other / wall > OTHER_LOAD_WARNING:
        print(
            "  warning: the machine was busy with other work: figures are low and noisy; "
            "run again on a quiet machine"
        )


def run_main(
    name: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None
) -> int:
    """A bench's exit status: errors and interruptions as one line, never a traceback."""
    try:
        return body(argv)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
