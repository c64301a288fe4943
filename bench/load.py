#!/usr/bin/env python3
"""Load and endurance of xmppspy's proxy: many clients at once, and one very long stream.

Run it with the interpreter that has xmppspy installed (the proxy is started as
``sys.executable -m xmppspy``)::

    python bench/load.py             # 200 clients x 500 messages each way; 1,000,000-stanza stream
    python bench/load.py --quick     # 200 clients x 100 messages; 100,000-stanza stream
    python bench/load.py --clients 50 --messages 2000 --stanzas 300000

1. Many clients: ``--clients`` connections at once through one ``xmppspy proxy --quiet --record
   FILE`` to an echo upstream (a separate process: it answers a client's stream header with its
   own, then echoes every byte). Every client's echoes and the whole capture are checked, byte for
   byte, per connection and direction.
2. Endurance: one connection carrying ``--stanzas`` stanzas through the proxy, with and without
   ``--record``, to a sink; the proxy's RSS is read at 25/50/75/100% of the bytes delivered.

Everything happens on 127.0.0.1 with ports picked by the kernel. Linux only (/proc). It reuses
bench/run.py's stream, processes and memory sampling. See docs/performance.md for the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import re
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import trio
from run import (
    CLIENT_HEADER,
    CLOSE,
    CONTACTS,
    HOST,
    MB,
    SERVER_HEADER,
    WORDS,
    BenchError,
    Child,
    OtherLoad,
    RssSampler,
    Sink,
    Stream,
    build_stream,
    check_proxy_stderr,
    free_port,
    machine_facts,
    mb,
    proc_status,
    proxy_command,
    read_capture,
    report_other_load,
    run_main,
    send_stream,
    source_digest,
    table,
    wait_for_tail,
)

from xmppspy.capture import CaptureError, open_capture
from xmppspy.events import (
    Connected,
    Direction,
    Disconnected,
    Stanza,
    StreamClosed,
    StreamOpened,
)

SCRIPT = Path(__file__).resolve()
FD_MARGIN = 32
"""Descriptors a process needs besides its connections: stdio, listeners, epoll, capture, ..."""
UNIT_STANZAS = 100_000
"""The long stream repeats the first this many stanzas of bench/run.py's stream (fast to build)."""
MILESTONES = (0.25, 0.50, 0.75, 1.00)
"""Fractions of the long stream's bytes delivered to the sink at which the proxy's RSS is read."""
PROXY_BOUND = 0.9
"""Above this share of one CPU during the exchange, the proxy is taken to be the bottleneck."""
SETTLE_TIMEOUT = 10.0
"""Seconds the proxy may take to close its connections once the clients have finished."""


# -- the clients' messages ------------------------------------------------------------------------

_EXTRA = ("grüße", "日本語", "привет", "😀", "déjà-vu", "你好")
_ID = re.compile(rb"<message [^>]*?id='load-(\d+)-(\d+)'")


def client_messages(client: int, count: int, seed: int) -> list[bytes]:
    """``count`` chat messages for one client: seeded text, ids ``load-CLIENT-SEQ``.

    Every fourth message carries non-ASCII text for sure; others may too (bench/run.py's words
    include accents, Cyrillic, CJK and emoji, and ``&``, ``<`` and ``>`` that get escaped).
    """
    rng = random.Random(seed * 1_000_003 + client)
    messages = []
    for seq in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 40))]
        if seq % 4 == 0:
            words.append(rng.choice(_EXTRA))
        contact = CONTACTS[(client + seq) % len(CONTACTS)]
        messages.append(
            (
                f"<message type='chat' to='{contact}/laptop' id='load-{client}-{seq}' "
                f"xml:lang='en'><body>{escape(' '.join(words))}</body>"
                "<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
            ).encode()
        )
    return messages


@dataclass
class Plan:
    """What one client sends, and so what it and the capture must see."""

    index: int
    messages: list[bytes]
    sent: bytes = b""
    """The client's whole stream: header, messages, close tag."""
    echoed: bytes = b""
    """What the echo upstream sends back: its own header, the messages, the close tag."""

    def __post_init__(self) -> None:
        body = b"".join(self.messages)
        self.sent = CLIENT_HEADER + body + CLOSE
        self.echoed = SERVER_HEADER + body + CLOSE

    def header(self, direction: Direction) -> bytes:
        return CLIENT_HEADER if direction is Direction.C2S else SERVER_HEADER


# -- the echo upstream (a child process: `load.py --serve-echo PORT`) -----------------------------


def header_end(data: bytes) -> int:
    """The offset just past the client's ``<stream:stream ...>`` header, or -1 if incomplete."""
    at = data.find(b"<stream:stream")
    end = data.find(b">", at) if at != -1 else -1
    return end + 1 if end != -1 else -1


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            received = b""
            while (end := header_end(received)) == -1:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                received += chunk
            await stream.send_all(SERVER_HEADER + received[end:])
            while chunk := await stream.receive_some(65536):
                await stream.send_all(chunk)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            print(f"echo upstream: a connection failed: {exc!r}", file=sys.stderr, flush=True)


def serve_echo(port: int) -> int:
    """Answer each client's stream header with SERVER_HEADER, then echo every byte; until SIGINT."""

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            listeners = await trio.open_tcp_listeners(port, host=HOST)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, _echo, listeners)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(serve)
    return 0


# -- /proc helpers --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a running process (/proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def max_open_files(pid: int) -> str:
    """The soft limit on open files of a running process, from /proc/PID/limits."""
    with contextlib.suppress(OSError), Path(f"/proc/{pid}/limits").open() as lines:
        for line in lines:
            if line.startswith("Max open files"):
                return line.split()[3]
    return "?"


def wait_fds(pid: int, target: int, timeout: float) -> bool:
    """Whether the process gets down to ``target`` open descriptors within ``timeout``.

    The proxy writes a connection's ``disconnect`` record and only then closes the client's
    socket: once its descriptors are back to what it had before any client came, every
    connection is over and recorded.
    """
    deadline = time.monotonic() + timeout
    while open_fds(pid) > target:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class FdRssSampler(RssSampler):
    """RssSampler that also counts the process's open descriptors at every sample."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.fds: list[int] = []

    def sample(self) -> int:
        self.fds.append(open_fds(self.pid))
        return super().sample()


@dataclass(frozen=True)
class FileLimit:
    soft: int
    hard: int
    needed: int
    raised_from: int | None = None

    @property
    def enough(self) -> bool:
        return self.soft >= self.needed

    def describe(self) -> str:
        text = f"soft {self.soft}, hard {self.hard}; the proxy needs about {self.needed}"
        if self.raised_from is not None:
            text += f" (soft limit raised from {self.raised_from} for the bench and its children)"
        if not self.enough:
            text += ": TOO LOW, raise it with `ulimit -n` or use fewer --clients"
        return text


def check_file_limit(clients: int) -> FileLimit:
    """``ulimit -n`` against what the proxy needs: two sockets per client, plus a margin.

    The children inherit the bench's limit. A soft limit that is too low but below the hard limit
    is raised for this process (so for them); otherwise the caller refuses to run.
    """
    needed = 2 * clients + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or (hard != resource.RLIM_INFINITY and hard < needed):
        return FileLimit(soft, hard, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return FileLimit(needed, hard, needed, raised_from=soft)


# -- many clients: the bench side -----------------------------------------------------------------


@dataclass
class ClientResult:
    index: int
    local_port: int | None = None
    received: bytearray = field(default_factory=bytearray)
    sent: int = 0
    done_at: float | None = None
    """perf_counter() when the proxy's EOF arrived, after every echo."""
    error: str | None = None


class Gate:
    """Counts clients that are connected (or failed), and lets them all start at once."""

    def __init__(self, clients: int) -> None:
        self.pending = clients
        self.all_arrived = trio.Event()
        self.go = trio.Event()

    def arrive(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.all_arrived.set()


async def _read_echoes(stream: trio.SocketStream, result: ClientResult) -> None:
    while chunk := await stream.receive_some(65536):
        result.received += chunk
    result.done_at = time.perf_counter()


async def _client(port: int, plan: Plan, result: ClientResult, gate: Gate) -> None:
    """Open a stream, wait for the server's header and the go, then send and read at once."""
    arrived = False
    try:
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            result.local_port = stream.socket.getsockname()[1]
            await stream.send_all(CLIENT_HEADER)
            while len(result.received) < len(SERVER_HEADER):
                chunk = await stream.receive_some(len(SERVER_HEADER) - len(result.received))
                if not chunk:
                    raise BenchError(f"EOF after {len(result.received)} bytes of the header")
                result.received += chunk
            arrived = True
            gate.arrive()
            await gate.go.wait()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_echoes, stream, result)
                for message in plan.messages:
                    await stream.send_all(message)
                    result.sent += len(message)
                await stream.send_all(CLOSE)
                await stream.send_eof()
    except* (OSError, BenchError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
        result.error = "; ".join(repr(exc) for exc in group.exceptions)
    finally:
        if not arrived:
            gate.arrive()


@dataclass
class Exchange:
    results: list[ClientResult]
    connect_seconds: float = 0.0
    started: float = 0.0
    timed_out: bool = False


async def drive_clients(
    port: int, plans: list[Plan], timeout: float, on_connected: Callable[[], None]
) -> Exchange:
    """All clients connect; once all have the server's header, all send and read at once.

    ``on_connected`` runs (blocking the loop, while every client waits) just before the go.
    """
    exchange = Exchange([ClientResult(plan.index) for plan in plans])
    gate = Gate(len(plans))
    began = time.perf_counter()
    with trio.move_on_after(timeout) as scope:
        async with trio.open_nursery() as nursery:
            for plan, result in zip(plans, exchange.results, strict=True):
                nursery.start_soon(_client, port, plan, result, gate)
            await gate.all_arrived.wait()
            exchange.connect_seconds = time.perf_counter() - began
            on_connected()
            exchange.started = time.perf_counter()
            gate.go.set()
    exchange.timed_out = scope.cancelled_caught
    return exchange


def check_echoes(plans: list[Plan], results: list[ClientResult]) -> tuple[int, list[str]]:
    """How many clients got exactly their own stream back, and what went wrong for the others."""
    good = 0
    problems: list[str] = []
    for plan, result in zip(plans, results, strict=True):
        if result.error is None and result.done_at is not None and result.received == plan.echoed:
            good += 1
            continue
        ids = [(int(c), int(s)) for c, s in _ID.findall(bytes(result.received))]
        own = [seq for c, seq in ids if c == plan.index]
        foreign = len(ids) - len(own)
        missing = len(set(range(len(plan.messages))) - set(own))
        out_of_order = sum(1 for a, b in itertools.pairwise(own) if b <= a)
        problems.append(
            f"client {plan.index}: received {len(result.received):,} of {len(plan.echoed):,} "
            f"bytes, {len(own)} own messages ({missing} missing, {out_of_order} out of order), "
            f"{foreign} of other clients, finished: {result.done_at is not None}, "
            f"error: {result.error}"
        )
    return good, problems


# -- many clients: the capture --------------------------------------------------------------------


@dataclass
class ConnCheck:
    conn: str
    plan: Plan | None = None
    position: dict[Direction, int] = field(default_factory=lambda: dict.fromkeys(Direction, 0))
    """Events of each direction matched so far: 0 is the header, 1..N the messages, N+1 close."""
    disconnected: bool = False
    bad: bool = False
    """Some event of this connection did not match."""


@dataclass
class CaptureCheck:
    size: int = 0
    events: Counter[str] = field(default_factory=Counter)
    conns: int = 0
    stanzas_ok: int = 0
    conns_ok: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 20:
            self.problems.append(text)


def verify_capture(path: Path, plans: list[Plan], ports: dict[int, int]) -> CaptureCheck:
    """Read the capture back with xmppspy's reader and match it against what was sent.

    Per connection and direction the wire events must be exactly: the stream header, one stanza
    per message with the message's exact bytes, in order, then ``</stream:stream>``; nothing else.
    So the join of ``raw`` per connection and direction equals what was sent, or echoed.
    ``ports`` maps a client's local port to its index (the capture's ``connect`` names it).
    """
    began = time.perf_counter()
    check = CaptureCheck(size=path.stat().st_size)
    conns: dict[str, ConnCheck] = {}
    clients_seen: Counter[int] = Counter()
    try:
        with open_capture(path) as reader:
            for record in reader:
                event = record.event
                name = type(event).__name__
                check.events[name] += 1
                state = conns.get(record.conn)
                if state is None:
                    state = conns[record.conn] = ConnCheck(record.conn)
                if state.disconnected:
                    state.bad = True
                    check.problem(f"{record.conn}: {name} after the disconnect record")
                    continue
                if isinstance(event, Connected):
                    port = int(event.client.rpartition(":")[2])
                    if state.plan is not None or port not in ports:
                        check.problem(f"{record.conn}: unexpected connect from {event.client}")
                        continue
                    state.plan = plans[ports[port]]
                    clients_seen[ports[port]] += 1
                    continue
                plan = state.plan
                if plan is None:
                    check.problem(f"{record.conn}: {name} before its connect record")
                    continue
                if isinstance(event, Disconnected):
                    state.disconnected = True
                    _check_disconnect(check, state, plan, event)
                    continue
                direction = getattr(event, "dir", None)
                raw = getattr(event, "raw", None)
                if not isinstance(direction, Direction) or not isinstance(raw, bytes):
                    check.problem(f"{record.conn}: unexpected event {name}")
                    continue
                _check_wire(check, state, plan, direction, event, raw)
            if reader.truncated:
                check.problem("the capture ends in a cut line")
    except CaptureError as exc:
        check.problem(f"the capture cannot be read: {exc}")
    check.conns = len(conns)
    for state in conns.values():
        plan = state.plan
        if plan is None:
            continue
        complete = all(state.position[d] == len(plan.messages) + 2 for d in Direction)
        if not complete:
            got = ", ".join(f"{d.value} {state.position[d]}" for d in Direction)
            check.problem(
                f"{state.conn} (client {plan.index}): events matched {got}; "
                f"expected {len(plan.messages) + 2} each way"
            )
        if not state.disconnected:
            check.problem(f"{state.conn} (client {plan.index}): no disconnect record")
        check.conns_ok += complete and state.disconnected and not state.bad
    missing = [plan.index for plan in plans if clients_seen[plan.index] != 1]
    if missing:
        check.problem(f"{len(missing)} clients without exactly one connection: {missing[:10]}")
    check.seconds = time.perf_counter() - began
    return check


def _check_wire(
    check: CaptureCheck,
    state: ConnCheck,
    plan: Plan,
    direction: Direction,
    event: object,
    raw: bytes,
) -> None:
    at = state.position[direction]
    last = len(plan.messages) + 1
    kind: type[StreamOpened | Stanza | StreamClosed]
    if at == 0:
        expected, kind = plan.header(direction), StreamOpened
    elif at <= len(plan.messages):
        expected, kind = plan.messages[at - 1], Stanza
    elif at == last:
        expected, kind = CLOSE, StreamClosed
    else:
        state.bad = True
        check.problem(f"{state.conn} {direction.value}: {type(event).__name__} after the close")
        return
    if not isinstance(event, kind) or raw != expected:
        state.bad = True
        check.problem(
            f"{state.conn} {direction.value} event {at}: {type(event).__name__} "
            f"{raw[:80]!r}, expected {kind.__name__} {expected[:80]!r}"
        )
        return
    state.position[direction] = at + 1
    check.stanzas_ok += kind is Stanza


def _check_disconnect(
    check: CaptureCheck, state: ConnCheck, plan: Plan, event: Disconnected
) -> None:
    got = (event.reason, event.c2s_stanzas, event.c2s_bytes, event.s2c_stanzas, event.s2c_bytes)
    n = len(plan.messages)
    expected = ("closed by both sides", n, len(plan.sent), n, len(plan.echoed))
    if got != expected:
        state.bad = True
        check.problem(f"{state.conn}: disconnect record {got}, expected {expected}")


_SUMMARY = re.compile(
    r"^c\d+ closed: (.*); C→S (\d+) stanzas (\d+) bytes, S→C (\d+) stanzas (\d+) bytes$"
)
_LISTENING = re.compile(r"^xmppspy \S+: listening on ")
_RECORDED = re.compile(r"^recorded (\d+) events to ")


def check_many_stderr(text: str, plans: list[Plan], notes: list[str]) -> None:
    """The proxy's stderr: its banner, one summary per connection, matching what was sent."""
    summaries: list[tuple[str, int, int, int, int]] = []
    recorded: int | None = None
    for line in text.splitlines():
        if match := _SUMMARY.match(line):
            reason, *counts = match.groups()
            a, b, c, d = (int(value) for value in counts)
            summaries.append((reason, a, b, c, d))
        elif match := _RECORDED.match(line):
            recorded = int(match.group(1))
        elif line.strip() and not _LISTENING.match(line):
            notes.append(f"proxy stderr: {line.strip()}")
    expected = sorted(
        ("closed by both sides", len(p.messages), len(p.sent), len(p.messages), len(p.echoed))
        for p in plans
    )
    if sorted(summaries) != expected:
        wrong = len(Counter(summaries) - Counter(expected))
        notes.append(
            f"proxy summaries on stderr: {len(summaries)} for {len(plans)} clients, "
            f"{wrong} not matching what was sent"
        )
    # per connection: connect, 2 headers, 2 x N stanzas, 2 closes, disconnect
    events = sum(2 * len(p.messages) + 6 for p in plans)
    if recorded != events:
        notes.append(f"the proxy says it recorded {recorded} events, expected {events}")


# -- many clients: the run ------------------------------------------------------------------------


@dataclass
class ManyResult:
    clients: int
    messages: int
    stanzas: int
    """Relayed, both directions."""
    bytes: int
    """Through the proxy, both directions."""
    connect_seconds: float
    seconds: float
    finish_times: list[float]
    rss_start_kb: int
    rss_connected_kb: int
    rss_max_kb: int
    rss_end_kb: int
    hwm_kb: int
    fds_start: int
    fds_connected: int
    fds_max: int
    fd_limit: str
    samples: int
    cpu: dict[str, float]
    echoes_ok: int
    capture: CaptureCheck
    notes: list[str]

    @property
    def stanzas_per_s(self) -> float:
        return self.stanzas / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds


def run_many_clients(args: argparse.Namespace, workdir: Path) -> ManyResult:
    plans = [Plan(i, client_messages(i, args.messages, args.seed)) for i in range(args.clients)]
    capture = workdir / "many.jsonl"
    echo_port, port = free_port(), free_port()
    echo = Child(
        "echo upstream",
        [sys.executable, str(SCRIPT), "--serve-echo", str(echo_port)],
        workdir / "echo.stderr",
    )
    proxy = Child(
        "xmppspy --quiet --record",
        proxy_command("--record", str(capture))(port, echo_port),
        workdir / "many-proxy.stderr",
    )
    notes: list[str] = []
    sampler: FdRssSampler | None = None
    marks: dict[str, float] = {}

    def when_connected() -> None:
        """The proxy's memory, descriptors and CPU, and the bench's CPU, at the go."""
        marks["rss"] = proc_status(proxy.pid)["VmRSS"]
        marks["fds"] = open_fds(proxy.pid)
        marks["proxy"] = cpu_seconds(proxy.pid)
        marks["echo"] = cpu_seconds(echo.pid)
        own = os.times()
        marks["own"] = own.user + own.system

    try:
        echo.start()
        echo.wait_listening(echo_port)
        proxy.start()
        proxy.wait_listening(port)
        sampler = FdRssSampler(proxy.pid)
        rss_start = sampler.sample()
        fds_start = sampler.fds[-1]
        sampler.start()
        exchange = trio.run(drive_clients, port, plans, args.timeout, when_connected)
        finished = [r.done_at for r in exchange.results if r.done_at is not None]
        ended = max(finished) if finished else time.perf_counter()
        own = os.times()
        cpu = {
            "proxy": cpu_seconds(proxy.pid) - marks.get("proxy", 0.0),
            "echo upstream": cpu_seconds(echo.pid) - marks.get("echo", 0.0),
            "bench (clients)": own.user + own.system - marks.get("own", 0.0),
        }
        if exchange.timed_out:
            notes.append(f"the clients were not done after {args.timeout:g} s")
        if not wait_fds(proxy.pid, fds_start, SETTLE_TIMEOUT):
            notes.append(
                f"the proxy still had {open_fds(proxy.pid)} descriptors open "
                f"{SETTLE_TIMEOUT:g} s after the clients finished ({fds_start} before they came)"
            )
        sampler.stop()
        rss_end = sampler.sample()
        hwm = proc_status(proxy.pid)["VmHWM"]
        fd_limit = max_open_files(proxy.pid)
    finally:
        if sampler is not None:
            sampler.stop()
        proxy.stop()
        echo.stop()
    if proxy.returncode != 0:
        notes.append(f"the proxy exited with status {proxy.returncode} on SIGINT")
    check_many_stderr(proxy.stderr(), plans, notes)
    if echo.stderr().strip():
        notes.extend(f"echo upstream: {line}" for line in echo.stderr().splitlines()[:10])
    echoes_ok, problems = check_echoes(plans, exchange.results)
    notes.extend(problems[:20])
    if len(problems) > 20:
        notes.append(f"... and {len(problems) - 20} more clients with problems")
    ports = {r.local_port: r.index for r in exchange.results if r.local_port is not None}
    checked = verify_capture(capture, plans, ports)
    notes.extend(f"capture: {problem}" for problem in checked.problems)
    if checked.problem_count > len(checked.problems):
        notes.append(f"capture: ... {checked.problem_count - len(checked.problems)} more problems")
    capture.unlink()
    start = exchange.started
    return ManyResult(
        clients=args.clients,
        messages=args.messages,
        stanzas=2 * sum(len(p.messages) for p in plans),
        bytes=sum(len(p.sent) + len(p.echoed) for p in plans),
        connect_seconds=exchange.connect_seconds,
        seconds=ended - start,
        finish_times=sorted(t - start for t in finished),
        rss_start_kb=rss_start,
        rss_connected_kb=round(marks.get("rss", 0)),
        rss_max_kb=max(sampler.samples),
        rss_end_kb=rss_end,
        hwm_kb=hwm,
        fds_start=fds_start,
        fds_connected=round(marks.get("fds", 0)),
        fds_max=max(sampler.fds),
        fd_limit=fd_limit,
        samples=len(sampler.samples),
        cpu=cpu,
        echoes_ok=echoes_ok,
        capture=checked,
        notes=notes,
    )


# -- endurance ------------------------------------------------------------------------------------


def long_stream(stanzas: int, seed: int) -> Stream:
    """bench/run.py's stream of ``stanzas`` stanzas, its first 100,000 repeated (fast to build).

    Still one valid client stream: one header, the stanzas, one close tag.
    """
    unit = build_stream(min(stanzas, UNIT_STANZAS), seed)
    repeats, rest = divmod(stanzas, unit.stanzas)
    parts = [CLIENT_HEADER, *([unit.data[len(CLIENT_HEADER) : -len(CLOSE)]] * repeats)]
    kinds = Counter({kind: count * repeats for kind, count in unit.kinds.items()})
    non_ascii = unit.non_ascii * repeats
    if rest:
        tail = build_stream(rest, seed)
        parts.append(tail.data[len(CLIENT_HEADER) : -len(CLOSE)])
        kinds += tail.kinds
        non_ascii += tail.non_ascii
    parts.append(CLOSE)
    return Stream(b"".join(parts), stanzas, kinds, non_ascii)


class MilestoneSink(Sink):
    """The throughput sink, reading the proxy's RSS as it passes fractions of the stream."""

    def __init__(self, expected: int, timeout: float) -> None:
        super().__init__(expected, timeout)
        self.pid: int | None = None
        self.thresholds = [(fraction, round(expected * fraction)) for fraction in MILESTONES]
        self.rss_at: dict[float, int] = {}

    def _run(self) -> None:
        try:
            with self.listener:
                self.listener.settimeout(self.timeout)
                conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(self.timeout)
                buffer = memoryview(bytearray(1024 * 1024))
                pending = list(self.thresholds)
                while n := conn.recv_into(buffer):
                    self.received += n
                    while pending and self.received >= pending[0][1]:
                        fraction, _ = pending.pop(0)
                        if self.pid is not None:
                            self.rss_at[fraction] = proc_status(self.pid)["VmRSS"]
                    if self.complete_at is None and self.received >= self.expected:
                        self.complete_at = time.perf_counter()
                self.eof = True
        except BaseException as exc:  # reported by the main thread
            self.error = exc


@dataclass
class EnduranceResult:
    name: str
    stanzas: int
    bytes: int
    seconds: float
    rss_start_kb: int
    rss_at: dict[float, int]
    rss_end_kb: int
    rss_max_kb: int
    hwm_kb: int
    samples: int
    capture_bytes: int | None
    notes: list[str]

    @property
    def stanzas_per_s(self) -> float:
        return self.stanzas / self.seconds

    @property
    def spread_kb(self) -> int:
        """Largest minus smallest RSS from 25% of the stream to the end."""
        later = [*self.rss_at.values(), self.rss_end_kb]
        return max(later) - min(later)


def run_endurance(
    name: str, extra: Sequence[str], stream: Stream, workdir: Path, timeout: float
) -> EnduranceResult:
    capture = workdir / "endurance.jsonl" if "--record" in extra else None
    argv = [*extra, str(capture)] if capture is not None else list(extra)
    sink = MilestoneSink(len(stream.data), timeout)
    port = free_port()
    child = Child(
        name, proxy_command(*argv)(port, sink.port), workdir / f"endurance-{len(extra)}.stderr"
    )
    notes: list[str] = []
    sampler: RssSampler | None = None
    try:
        sink.start()
        child.start()
        child.wait_listening(port)
        sink.pid = child.pid
        sampler = RssSampler(child.pid)
        start = sampler.sample()
        fds_start = open_fds(child.pid)
        sampler.start()
        started = send_stream(port, stream.data, timeout)
        sink.join(timeout)
        if sink.complete_at is None or sink.received != len(stream.data):
            raise BenchError(
                f"{name}: the sink received {sink.received} bytes, {len(stream.data)} were sent"
            )
        if not wait_fds(child.pid, fds_start, SETTLE_TIMEOUT):
            notes.append(f"the proxy had not closed the connection {SETTLE_TIMEOUT:g} s later")
        if capture is not None and not wait_for_tail(capture, b'"event":"disconnect"', 10):
            notes.append("the capture has no disconnect record 10 s after the transfer")
        sampler.stop()
        end = sampler.sample()
        hwm = proc_status(child.pid)["VmHWM"]
    finally:
        if sampler is not None:
            sampler.stop()
        child.stop()
        sink.close()
    if child.returncode != 0:
        notes.append(f"exited with status {child.returncode} on SIGINT")
    check_proxy_stderr(child.stderr(), stream, notes)
    size = None
    if capture is not None:
        size = capture.stat().st_size
        lines, events = read_capture(capture)
        expected = Counter(
            header=1, connect=1, open=1, stanza=stream.stanzas, close=1, disconnect=1
        )
        if lines != stream.stanzas + 5 or events != expected:
            notes.append(f"capture has {lines} lines, events {dict(events)}")
        capture.unlink()
    missing = [f for f in MILESTONES if f not in sink.rss_at]
    if missing:
        notes.append(f"no RSS reading at {missing}")
    return EnduranceResult(
        name=name,
        stanzas=stream.stanzas,
        bytes=len(stream.data),
        seconds=sink.complete_at - started,
        rss_start_kb=start,
        rss_at=sink.rss_at,
        rss_end_kb=end,
        rss_max_kb=max(sampler.samples),
        hwm_kb=hwm,
        samples=len(sampler.samples),
        capture_bytes=size,
        notes=notes,
    )


# -- reporting ------------------------------------------------------------------------------------


def passed(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def report_many(many: ManyResult) -> None:
    n, m = many.clients, many.messages
    print(
        f"Many clients: {n} clients at once through one `xmppspy proxy --quiet --record FILE` "
        f"to an echo upstream; each sends {m:,} chat messages and reads their echoes "
        "concurrently. Time from the go (all clients connected) to the last client's EOF."
    )
    rows = [
        [
            f"{n}",
            f"{m:,}",
            f"{many.stanzas:,}",
            f"{many.bytes / MB:.1f}",
            f"{many.connect_seconds:.3f}",
            f"{many.seconds:.3f}",
            f"{many.stanzas_per_s:,.0f}",
            f"{many.mb_per_s:.2f}",
        ]
    ]
    headers = [
        "clients",
        "msgs each",
        "stanzas (both ways)",
        "MB (both ways)",
        "connect s",
        "exchange s",
        "stanzas/s",
        "MB/s",
    ]
    print(table(headers, rows, [True] * len(headers)))
    times = many.finish_times
    if times:
        print(
            f"Clients finished {times[0]:.3f} s (first) / {statistics.median(times):.3f} s "
            f"(median) / {times[-1]:.3f} s (last) after the go"
        )
    cpu = ", ".join(
        f"{who} {seconds:.2f} s ({seconds / many.seconds:.0%})" for who, seconds in many.cpu.items()
    )
    print(f"CPU during the exchange (share of the wall time): {cpu}")
    if many.cpu["proxy"] / many.seconds >= PROXY_BOUND:
        print("  the proxy was busy all along: it, not the clients, set the pace")
    else:
        print("  the proxy was not busy all along: the clients or the upstream may set the pace")
    print()
    print("Proxy memory (MB) and open descriptors:")
    rows = [
        [
            mb(many.rss_start_kb),
            mb(many.rss_connected_kb),
            mb(many.rss_max_kb),
            mb(many.rss_end_kb),
            mb(many.hwm_kb),
            f"{many.fds_start}/{many.fds_connected}/{many.fds_max}",
            many.fd_limit,
        ]
    ]
    headers = [
        "RSS start",
        f"{n} connected",
        "max",
        "end (all closed)",
        "VmHWM",
        "fds start/connected/max",
        "fd limit",
    ]
    print(table(headers, rows, [True] * len(headers)))
    print(f"RSS sampled every 50 ms ({many.samples} samples)")
    print()
    c = many.capture
    expected_stanzas = many.stanzas
    checks = [
        (
            f"every client got its own {m:,} messages back, in order, byte-exact",
            f"{many.echoes_ok}/{n} clients",
            many.echoes_ok == n,
        ),
        (
            f"capture: {n} distinct connection ids, one per client",
            f"{c.conns} connections",
            c.conns == n and not any("clients without" in p for p in c.problems),
        ),
        (
            "capture: every stanza, both directions, in order, exact bytes",
            f"{c.stanzas_ok:,}/{expected_stanzas:,} stanzas",
            c.stanzas_ok == expected_stanzas,
        ),
        (
            "capture: per connection and direction, the join of raw = bytes sent / echoed",
            f"{c.conns_ok}/{n} connections",
            c.conns_ok == n and c.problem_count == 0,
        ),
    ]
    print(
        f"Checks (the capture: {c.size / MB:.1f} MB, "
        + ", ".join(f"{count:,} {name}" for name, count in c.events.most_common())
        + f"; read back with xmppspy.capture.open_capture in {c.seconds:.1f} s):"
    )
    rows = [[what, got, passed(ok)] for what, got, ok in checks]
    print(table(["check", "measured", "result"], rows, [False, True, False]))
    print()


def report_endurance(runs: list[EnduranceResult]) -> None:
    first = runs[0]
    print(
        f"Endurance: one connection, {first.stanzas:,} stanzas ({first.bytes / MB:.1f} MB), "
        "client -> proxy -> sink. Proxy RSS in MB when the sink had 25/50/75/100% of the bytes, "
        "and once the connection was closed"
    )
    rows = [
        [
            run.name,
            f"{run.seconds:.2f}",
            f"{run.stanzas_per_s:,.0f}",
            mb(run.rss_start_kb),
            *(mb(run.rss_at.get(f)) for f in MILESTONES),
            mb(run.rss_end_kb),
            mb(run.rss_max_kb),
            mb(run.hwm_kb),
            f"{run.spread_kb * 1024 / MB:.2f}",
        ]
        for run in runs
    ]
    headers = [
        "proxy",
        "seconds",
        "stanzas/s",
        "start",
        "25%",
        "50%",
        "75%",
        "100%",
        "end",
        "max",
        "VmHWM",
        "spread 25%..end",
    ]
    print(table(headers, rows, [False, *[True] * (len(headers) - 1)]))
    for run in runs:
        if run.capture_bytes is not None:
            print(
                f"Capture of {run.name}: {run.capture_bytes / MB:.1f} MB, "
                f"{run.stanzas + 5:,} lines as expected"
                if not any("capture" in note for note in run.notes)
                else f"Capture of {run.name}: see the anomalies"
            )
    samples = ", ".join(f"{run.samples} for {run.name}" for run in runs)
    print(f"RSS also sampled every 50 ms for the max ({samples} samples)")
    print()


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load (many clients at once) and endurance (one long stream) of xmppspy proxy."
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 5 s)")
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (200)")
    parser.add_argument(
        "--messages", type=int, help="messages each client sends (default 500; 100 with --quick)"
    )
    parser.add_argument(
        "--stanzas",
        type=int,
        help="stanzas in the endurance stream (default 1,000,000; 100,000 with --quick)",
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the text")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds any one phase may take"
    )
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 100 if args.quick else 500
    if args.stanzas is None:
        args.stanzas = 100_000 if args.quick else 1_000_000
    if args.clients < 1 or args.messages < 1 or args.stanzas < 1 or args.timeout <= 0:
        parser.error("--clients, --messages, --stanzas and --timeout must be positive")
    return args


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if args.serve_echo is not None:
        return serve_echo(args.serve_echo)
    if not Path("/proc/self/status").exists():
        print("load: needs Linux (/proc) to check readiness and memory", file=sys.stderr)
        return 2
    facts = [(key, value) for key, value in machine_facts() if key != "socat"]
    if dict(facts)["xmppspy"] == "unknown":
        print(
            f"load: `{sys.executable} -m xmppspy` does not run; "
            "run the bench with the Python that has xmppspy installed",
            file=sys.stderr,
        )
        return 2
    limit = check_file_limit(args.clients)
    facts.append(("open files", limit.describe()))
    before = OtherLoad()
    time.sleep(0.5)
    other, wall = before.seconds()
    facts.append(("other load", f"{other / wall:.0%} of one CPU in the 0.5 s before the run"))
    print("xmppspy load and endurance bench")
    for key, value in facts:
        print(f"  {key + ':':<12}{value}")
    print()
    if not limit.enough:
        print(
            f"load: the open-file limit ({limit.soft}) is too low for {args.clients} clients "
            f"(the proxy holds two sockets per client): raise it, e.g. `ulimit -n {limit.needed}`",
            file=sys.stderr,
        )
        return 2
    load = OtherLoad()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xmppspy-load-") as tmp:
        workdir = Path(tmp)
        many = run_many_clients(args, workdir)
        report_many(many)
        built = time.perf_counter()
        stream = long_stream(args.stanzas, args.seed)
        print(
            f"Endurance stream: bench/run.py's stream (seed {args.seed}), {stream.stanzas:,} "
            f"stanzas, {len(stream.data):,} bytes, {stream.average:.1f} bytes per stanza "
            f"(built in {time.perf_counter() - built:.1f} s)"
        )
        runs = [
            run_endurance(name, extra, stream, workdir, args.timeout)
            for name, extra in (
                ("xmppspy --quiet --record", ("--record",)),
                ("xmppspy --quiet", ()),
            )
        ]
        del stream
        report_endurance(runs)

    notes = [f"many clients: {note}" for note in many.notes]
    notes += [f"endurance {run.name}: {note}" for run in runs for note in run.notes]
    if source_digest() != dict(facts)["source"]:
        notes.append("the xmppspy source changed while the bench ran: the figures mix versions")
    if notes:
        print("Anomalies:")
        for note in notes:
            print(f"  - {note}")
    else:
        print(
            "All checks passed: every echo intact, the capture complete and exact per connection "
            "and direction, the proxy's counts right, no unexpected output, exit status 0."
        )
    report_other_load(load)
    print(f"Total bench time {time.perf_counter() - began:.1f} s")
    return 1 if notes else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("load", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
