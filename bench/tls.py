#!/usr/bin/env python3
"""Benchmark xmppspy's proxy while it intercepts STARTTLS, against socat relaying the TLS bytes.

Run it with the interpreter that has xmppspy installed (the proxy is started as
``sys.executable -m xmppspy``) and ``trustme`` (a test dependency)::

    python bench/tls.py              # 200,000 stanzas, 2,000 round trips
    python bench/tls.py --quick      # 20,000 stanzas, 300 round trips

bench/run.py measures plaintext only. Here a bench server requires STARTTLS (certificate for
example.test from a trustme CA), and the same STARTTLS client goes through three relays:

- socat as a TCP relay: TLS runs end to end between client and server, socat sees ciphertext
  only. This is the baseline; it does no TLS and no parsing at all.
- ``xmppspy proxy --quiet --upstream-ca CA``: the default ``--tls intercept``. The client trusts
  xmppspy's CA (exported with ``xmppspy ca --export`` from a temporary ``XMPPSPY_HOME``, never the
  user's), so xmppspy decrypts, parses and re-encrypts every byte.
- the same with ``--record FILE``; the capture is read back and must hold every stanza.

Everything happens on 127.0.0.1 with ports picked by the kernel. Linux only (/proc). It reuses
bench/run.py's stream, processes, memory sampling and report. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from run import (
    _EXPECTED_STDERR,
    _SUMMARY,
    CHUNK,
    CLIENT_HEADER,
    CLOSE,
    HOST,
    LATENCY_BLOCK,
    MB,
    RSS_INTERVAL,
    SERVER_HEADER,
    TARGET_ADDED_MEDIAN_US,
    TARGET_PEAK_RSS_MB,
    TARGET_RECORD_STANZAS_PER_S,
    BenchError,
    Child,
    Command,
    LatencyResult,
    OtherLoad,
    Pinger,
    Rates,
    RssSampler,
    Stream,
    build_stream,
    free_port,
    machine_facts,
    mb,
    parse_args,
    ping,
    proc_status,
    proxy_command,
    report_other_load,
    run_main,
    socat_command,
    source_digest,
    table,
    verdict,
)

DOMAIN = "example.test"
FEATURES_TLS = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"</stream:features>"
)
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
SERVER_HEADER_TLS = SERVER_HEADER.replace(b"id='bench-1'", b"id='bench-2'")
"""The restarted stream gets a new id, as a real server's would."""
FEATURES_AFTER = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>"
    b"</stream:features>"
)
"""What a server offers inside TLS; no -PLUS mechanism, so xmppspy rewrites nothing."""

_HEADER = re.compile(rb"<stream:stream[^>]*>")
_FEATURES_END = re.compile(re.escape(b"</stream:features>"))
_STARTTLS = re.compile(re.escape(STARTTLS))
_PROCEED = re.compile(re.escape(PROCEED))
_CLOSE = re.compile(re.escape(CLOSE))
NEGOTIATION_LIMIT = 64 * 1024
"""Bytes a peer may send while we wait for one negotiation element: beyond it, something's off."""
SERVER_BACKLOG = 16
STANZA_KINDS = ("message", "presence", "iq")


# -- the STARTTLS dance, both sides ---------------------------------------------------------------


def read_until(
    sock: socket.socket, pattern: re.Pattern[bytes], what: str, deadline: float
) -> tuple[bytes, bytes]:
    """Read until ``pattern`` matches: (bytes up to its end, bytes after). Bounded in size and time.

    The negotiation is lock-step, so a peer never sends past what we wait for until we answer;
    the second part is returned anyway rather than lost.
    """
    buffer = b""
    while (match := pattern.search(buffer)) is None:
        if len(buffer) > NEGOTIATION_LIMIT:
            raise BenchError(f"no {what} in the first {len(buffer):,} bytes: {buffer[:200]!r}")
        if time.monotonic() > deadline:
            raise BenchError(f"no {what} before the deadline; got {buffer[:200]!r}")
        chunk = sock.recv(4096)
        if not chunk:
            raise BenchError(f"connection closed while waiting for {what}; got {buffer[:200]!r}")
        buffer += chunk
    return buffer[: match.end()], buffer[match.end() :]


@dataclass(frozen=True)
class TlsFacts:
    """What one end of a TLS session negotiated."""

    version: str
    cipher: str

    @classmethod
    def of(cls, sock: ssl.SSLSocket) -> TlsFacts:
        cipher = sock.cipher()
        return cls(sock.version() or "?", cipher[0] if cipher else "?")

    def __str__(self) -> str:
        return f"{self.version} {self.cipher}"


def starttls_connect(
    port: int, context: ssl.SSLContext, timeout: float
) -> tuple[ssl.SSLSocket, float]:
    """A client stream up to the features inside TLS: (the TLS socket, setup seconds).

    Waits for every answer, as a real client does, so the relay is in its steady state (TLS on
    both sides, restarted streams) when this returns.
    """
    deadline = time.monotonic() + timeout
    began = time.perf_counter()
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(CLIENT_HEADER)
        features, _ = read_until(sock, _FEATURES_END, "server features", deadline)
        if STARTTLS.replace(b"/>", b">") not in features:
            raise BenchError(f"the server offered no STARTTLS: {features!r}")
        sock.sendall(STARTTLS)
        read_until(sock, _PROCEED, "<proceed/>", deadline)
        tls = context.wrap_socket(sock, server_hostname=DOMAIN)
    except BaseException:
        sock.close()
        raise
    try:
        tls.sendall(CLIENT_HEADER)  # the restart; bench/run.py's stream begins with this header
        read_until(tls, _FEATURES_END, "features after TLS", deadline)
    except BaseException:
        tls.close()
        raise
    return tls, time.perf_counter() - began


class TlsPinger(Pinger):
    """bench/run.py's pinger, inside a STARTTLS session: the same measured loop and checks."""

    def __init__(self, name: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        self.name = name
        self.times_us: list[float] = []
        self._number = 0
        self.sock, self.setup_s = starttls_connect(port, context, timeout)


@dataclass
class Served:
    """One connection as the bench server saw it."""

    tls: TlsFacts | None = None
    received: int = 0
    digest: str = ""
    complete_at: float | None = None
    """perf_counter() when the close tag arrived (sink mode)."""
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class StarttlsServer:
    """The bench's XMPP server, in threads: requires STARTTLS, then sinks or echoes the stream.

    Sink mode counts and digests every byte after the restarted header until ``</stream:stream>``
    (the throughput runs). Echo mode sends every such byte back (the latency runs).
    """

    def __init__(
        self, context: ssl.SSLContext, timeout: float, *, echo: bool, expected: int = 0
    ) -> None:
        self.context = context
        self.timeout = timeout
        self.echo = echo
        self.expected = expected
        self.listener = socket.create_server((HOST, 0), backlog=SERVER_BACKLOG)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.served: list[Served] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="xmpp-accept", daemon=True)

    def __enter__(self) -> StarttlsServer:
        self._acceptor.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.listener.close()
        for thread in [self._acceptor, *self._threads]:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set() and len(self.served) < SERVER_BACKLOG:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            served = Served()
            self.served.append(served)
            thread = threading.Thread(target=self._serve, args=(conn, served), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, served: Served) -> None:
        try:
            with conn:
                deadline = time.monotonic() + self.timeout
                conn.settimeout(self.timeout)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                read_until(conn, _HEADER, "client stream header", deadline)
                conn.sendall(SERVER_HEADER + FEATURES_TLS)
                read_until(conn, _STARTTLS, "<starttls/>", deadline)
                conn.sendall(PROCEED)
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    _, rest = read_until(tls, _HEADER, "restarted stream header", deadline)
                    tls.sendall(SERVER_HEADER_TLS + FEATURES_AFTER)
                    served.tls = TlsFacts.of(tls)
                    if self.echo:
                        self._echo(tls, rest)
                    else:
                        self._sink(tls, rest, served)
        except BaseException as exc:  # reported by the main thread
            what = str(exc) if isinstance(exc, BenchError) else repr(exc)
            served.error = f"{what} after {served.received:,} bytes"
        finally:
            served.done.set()

    def _sink(self, tls: ssl.SSLSocket, rest: bytes, served: Served) -> None:
        deadline = time.monotonic() + self.timeout
        digest = hashlib.sha256(rest)
        served.received = len(rest)
        tail = rest[-len(CLOSE) :]
        buffer = memoryview(bytearray(1024 * 1024))
        while not (served.received >= self.expected or tail == CLOSE):
            if time.monotonic() > deadline:
                raise BenchError(f"still reading after {self.timeout:g} s")
            n = tls.recv_into(buffer)
            if not n:
                raise BenchError("the relay closed before </stream:stream>")
            digest.update(buffer[:n])
            served.received += n
            tail = (tail + bytes(buffer[max(0, n - len(CLOSE)) : n]))[-len(CLOSE) :]
        served.complete_at = time.perf_counter()
        served.digest = digest.hexdigest()
        if tail != CLOSE or served.received != self.expected:
            raise BenchError(
                f"stream ended at {served.received:,} of {self.expected:,} bytes, "
                f"last bytes {tail!r}"
            )
        tls.sendall(CLOSE)

    def _echo(self, tls: ssl.SSLSocket, rest: bytes) -> None:
        deadline = time.monotonic() + self.timeout
        tail = rest[-len(CLOSE) :]
        if rest:
            tls.sendall(rest)
        while tail != CLOSE:
            if time.monotonic() > deadline:
                raise BenchError(f"echo connection still open after {self.timeout:g} s")
            chunk = tls.recv(65536)
            if not chunk:
                return
            tls.sendall(chunk)
            tail = (tail + chunk)[-len(CLOSE) :]


# -- the runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contexts:
    """The TLS contexts of the bench: the server's, and a client's trusting each CA."""

    server: ssl.SSLContext
    trust_server_ca: ssl.SSLContext
    trust_xmppspy_ca: ssl.SSLContext
    server_ca: Path
    """The trustme CA's certificate, for the proxy's --upstream-ca."""


@dataclass(frozen=True)
class Route:
    """One way from the client to the server: a relay (or none) and the CA the client trusts."""

    name: str
    command: Command | None
    intercepts: bool

    def client_context(self, contexts: Contexts) -> ssl.SSLContext:
        return contexts.trust_xmppspy_ca if self.intercepts else contexts.trust_server_ca


@dataclass
class TlsThroughput(Rates):
    name: str
    setup_s: float
    seconds: float
    bytes: int
    stanzas: int
    client_tls: TlsFacts
    server_tls: TlsFacts | None
    rss_start_kb: int | None = None
    rss_tls_kb: int | None = None
    rss_max_kb: int | None = None
    rss_end_kb: int | None = None
    hwm_kb: int | None = None
    cpu_s: float | None = None
    samples: int = 0
    capture_bytes: int | None = None
    capture_kinds: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (/proc/PID/stat).

    bench/load.py has the same; importing it would pull in trio and xmppspy's capture reader.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def payload(stream: Stream) -> bytes:
    """What the client sends after the restarted header: bench/run.py's stanzas and close tag."""
    assert stream.data.startswith(CLIENT_HEADER)
    return stream.data[len(CLIENT_HEADER) :]


def send_payload(sock: ssl.SSLSocket, data: bytes, timeout: float) -> float:
    """Send ``data`` in 64 KiB writes and wait for the server's close tag; return the start."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    started = time.perf_counter()
    for offset in range(0, len(view), CHUNK):
        if time.monotonic() > deadline:
            raise BenchError(f"sent only {offset:,} of {len(view):,} bytes in {timeout:g} s")
        sock.sendall(view[offset : offset + CHUNK])
    head, rest = read_until(sock, _CLOSE, "the server's </stream:stream>", deadline)
    if head != CLOSE or rest:
        raise BenchError(f"the server direction carried unexpected bytes: {head + rest!r}")
    return started


def expected_summary(stream: Stream) -> tuple[int, int, int, int]:
    """The proxy's per-connection counts: both streams, before and inside TLS, in clear."""
    c2s_bytes = len(CLIENT_HEADER) + len(STARTTLS) + len(stream.data)
    s2c = (SERVER_HEADER, FEATURES_TLS, PROCEED, SERVER_HEADER_TLS, FEATURES_AFTER, CLOSE)
    return stream.stanzas + 1, c2s_bytes, 3, sum(len(part) for part in s2c)


def check_stderr(text: str, stream: Stream | None, notes: list[str]) -> None:
    """bench/run.py's rule for the proxy's stderr, with the counts of a STARTTLS session."""
    if stream is not None:
        want = expected_summary(stream)
        summaries = [tuple(int(n) for n in found) for found in _SUMMARY.findall(text)]
        if summaries != [want]:
            notes.append(
                f"proxy summaries {summaries}, expected one, {want} (C→S, S→C stanzas and bytes)"
            )
    notes.extend(
        f"proxy stderr: {line.strip()}"
        for line in text.splitlines()
        if line.strip() and not _EXPECTED_STDERR.match(line)
    )


def check_capture(path: Path, stream: Stream, notes: list[str]) -> Counter[str]:
    """Every stanza of the stream is in the capture, byte for byte, after an intercepted TLS.

    Returns the kinds of the client's stanzas there. The join of the client's bytes recorded
    after the ``tls`` event must be the stream exactly (nothing here is redacted: no SASL).
    """
    kinds: Counter[str] = Counter()
    events: Counter[str] = Counter()
    tls: list[dict[str, object]] = []
    after_tls = hashlib.sha256()
    with path.open("rb") as lines:
        next(lines, None)  # the header line
        for number, line in enumerate(lines, start=2):
            try:
                record = json.loads(line)
            except ValueError:
                notes.append(f"capture line {number} is not JSON: {line[:80]!r}")
                continue
            event = record.get("event")
            events[event] += 1
            if event == "tls":
                tls.append(record)
            elif record.get("dir") == "c2s" and tls:
                if "raw" not in record:
                    notes.append(f"capture line {number}: client bytes without raw: {event}")
                after_tls.update(record.get("raw", "").encode())
            if event == "stanza" and record.get("dir") == "c2s":
                kinds[record.get("kind", "?")] += 1
    got = Counter({kind: kinds[kind] for kind in STANZA_KINDS if kinds[kind]})
    if got != stream.kinds:
        lost = {kind: stream.kinds[kind] - got[kind] for kind in STANZA_KINDS}
        notes.append(f"capture: client stanzas {dict(got)}, sent {dict(stream.kinds)}: {lost}")
    if len(tls) != 1 or tls[0].get("intercepted") is not True or tls[0].get("verified") is not True:
        notes.append(f"capture: expected one intercepted, verified tls event, got {tls}")
    if after_tls.hexdigest() != hashlib.sha256(stream.data).hexdigest():
        notes.append("capture: the client's bytes after TLS differ from the stream sent")
    for bad in ("parse-error", "opaque", "rewrite"):
        if events[bad]:
            notes.append(f"capture: {events[bad]} {bad} events")
    return kinds


def run_throughput(
    route: Route,
    stream: Stream,
    contexts: Contexts,
    workdir: Path,
    timeout: float,
    capture: Path | None,
) -> TlsThroughput:
    """One STARTTLS session carrying the whole stream through the relay, to the sink server."""
    data = payload(stream)
    assert route.command is not None
    slug = re.sub(r"\W+", "-", route.name).strip("-")
    is_proxy = route.intercepts
    port = free_port()
    sampler: RssSampler | None = None
    with StarttlsServer(contexts.server, timeout, echo=False, expected=len(data)) as server:
        child = Child(
            route.name,
            route.command(port, server.port),
            workdir / f"{slug}.stderr",
            stop_signal=signal.SIGINT if is_proxy else signal.SIGTERM,
        )
        try:
            child.start()
            child.wait_listening(port)
            if is_proxy:
                sampler = RssSampler(child.pid)
                sampler.sample()
                sampler.start()
            try:
                sock, setup_s = starttls_connect(port, route.client_context(contexts), timeout)
                with sock:
                    client_tls = TlsFacts.of(sock)
                    rss_tls = sampler.sample() if sampler is not None else None
                    cpu_before = cpu_seconds(child.pid)
                    started = send_payload(sock, data, timeout)
                    cpu_s = cpu_seconds(child.pid) - cpu_before
                served = server.served[0] if server.served else Served()
                if not served.done.wait(timeout):
                    raise BenchError(f"the server still serving after {timeout:g} s")
                if served.error is not None or served.complete_at is None:
                    raise BenchError("the server did not get the whole stream")
            except (OSError, BenchError) as exc:
                raise failed(route.name, exc, server, child) from exc
            result = TlsThroughput(
                route.name,
                setup_s,
                served.complete_at - started,
                served.received,
                stream.stanzas,
                client_tls,
                served.tls,
                rss_tls_kb=rss_tls,
                cpu_s=cpu_s,
            )
            if served.digest != hashlib.sha256(data).hexdigest():
                result.notes.append("the server received other bytes than were sent")
            if capture is not None and not _wait_disconnect(capture, 10):
                result.notes.append("the capture has no disconnect record 10 s after the transfer")
            if sampler is not None:
                sampler.stop()
                result.rss_end_kb = sampler.sample()
                result.hwm_kb = proc_status(child.pid)["VmHWM"]
                result.rss_start_kb, result.rss_max_kb = sampler.samples[0], max(sampler.samples)
                result.samples = len(sampler.samples)
        finally:
            if sampler is not None:
                sampler.stop()
            child.stop()
    if is_proxy:
        if child.returncode != 0:
            result.notes.append(f"exited with status {child.returncode} on SIGINT")
        check_stderr(child.stderr(), stream, result.notes)
    if capture is not None:
        result.capture_bytes = capture.stat().st_size
        result.capture_kinds = check_capture(capture, stream, result.notes)
    return result


def failed(
    name: str, exc: BaseException, server: StarttlsServer, child: Child | None
) -> BenchError:
    """One clear message for a session that broke: what the client, the server and the relay saw.

    A TLS error on one side is usually the echo of a failure on another, so all are given.
    """
    for served in server.served:
        served.done.wait(1)
    what = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
    parts = [f"{name}: the client: {what}"]
    parts += [f"the server: {served.error}" for served in server.served if served.error]
    if child is not None:
        said = [line.strip() for line in child.stderr().splitlines() if line.strip()]
        if said:
            parts.append(f"{child.name} said: {' | '.join(said[-3:])}")
    return BenchError("; ".join(parts))


def _wait_disconnect(capture: Path, timeout: float) -> bool:
    """Whether the capture ends with the connection's disconnect record within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), capture.open("rb") as handle:
            handle.seek(max(0, capture.stat().st_size - 4096))
            if b'"event":"disconnect"' in handle.read():
                return True
        time.sleep(0.02)
    return False


@dataclass
class TlsLatency(LatencyResult):
    setup_s: float = 0.0


def run_latency(
    routes: Sequence[Route],
    contexts: Contexts,
    workdir: Path,
    rounds: int,
    warmup: int,
    timeout: float,
) -> list[TlsLatency]:
    """Direct, then each relay, to the echo server, in turns of 50 round trips (as bench/run.py).

    Every connection is a STARTTLS session, open at once; the first round trip of each starts
    after the TLS handshakes, so only the steady state is measured.
    """
    children: list[tuple[Route, Child, int]] = []
    pingers: list[TlsPinger] = []
    with StarttlsServer(contexts.server, timeout, echo=True) as echo:
        try:
            for route in routes:
                if route.command is None:
                    continue
                port = free_port()
                slug = re.sub(r"\W+", "-", route.name).strip("-")
                stop = signal.SIGINT if route.intercepts else signal.SIGTERM
                argv = route.command(port, echo.port)
                child = Child(route.name, argv, workdir / f"rtt-{slug}.stderr", stop_signal=stop)
                children.append((route, child, port))
                child.start()
            for _, child, port in children:
                child.wait_listening(port)
            ports = {route.name: port for route, _, port in children}
            try:
                for route in routes:
                    port = ports.get(route.name, echo.port)
                    context = route.client_context(contexts)
                    pingers.append(TlsPinger(route.name, port, context, timeout))
                for pinger in pingers:
                    pinger.rounds(warmup, measure=False)
                deadline = time.monotonic() + timeout
                for turn in range((rounds + LATENCY_BLOCK - 1) // LATENCY_BLOCK):
                    if time.monotonic() > deadline:
                        raise BenchError(f"{turn * LATENCY_BLOCK} round trips took {timeout:g} s")
                    block = min(LATENCY_BLOCK, rounds - turn * LATENCY_BLOCK)
                    first = turn % len(pingers)
                    for pinger in pingers[first:] + pingers[:first]:
                        pinger.rounds(block)
                for pinger in pingers:
                    pinger.close()
            except (OSError, BenchError) as exc:
                raise failed("latency", exc, echo, None) from exc
        finally:
            for pinger in pingers:
                pinger.sock.close()
            for _, child, _ in children:
                child.stop()
    results = [TlsLatency(p.name, p.times_us, setup_s=p.setup_s) for p in pingers]
    errors = [served.error for served in echo.served if served.error]
    if errors:
        results[0].notes.append(f"echo server errors: {errors}")
    by_name = {result.name: result for result in results}
    for route, child, _ in children:
        if route.intercepts:
            notes = by_name[route.name].notes
            if child.returncode != 0:
                notes.append(f"exited with status {child.returncode} on SIGINT")
            check_stderr(child.stderr(), None, notes)
    return results


# -- set-up: certificates and CAs -----------------------------------------------------------------


@contextlib.contextmanager
def xmppspy_home(home: Path) -> Iterator[None]:
    """Point XMPPSPY_HOME (ours and our children's) at ``home``: the user's CA is never used."""
    before = os.environ.get("XMPPSPY_HOME")
    os.environ["XMPPSPY_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            del os.environ["XMPPSPY_HOME"]
        else:
            os.environ["XMPPSPY_HOME"] = before


def make_contexts(workdir: Path) -> Contexts:
    """A trustme CA and leaf for the server; xmppspy's CA exported from the temporary home.

    The proxy's leaf for example.test is issued here, before anything is measured, so every
    proxy finds it on disk, as a person's proxy does after its first session with a domain.
    """
    import trustme  # checked for in _main, with a message

    from xmppspy.certs import CertificateAuthority  # loads cryptography: only here

    authority = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert(DOMAIN).configure_cert(server)
    server_ca = workdir / "server-ca.pem"
    authority.cert_pem.write_to_path(str(server_ca))
    exported = workdir / "xmppspy-ca.pem"
    done = subprocess.run(
        [sys.executable, "-m", "xmppspy", "ca", "--export", str(exported)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or not exported.exists():
        raise BenchError(f"xmppspy ca --export failed ({done.returncode}): {done.stderr.strip()}")
    CertificateAuthority.load_or_create().leaf(DOMAIN)
    return Contexts(
        server,
        ssl.create_default_context(cafile=str(server_ca)),
        ssl.create_default_context(cafile=str(exported)),
        server_ca,
    )


# -- reporting ------------------------------------------------------------------------------------


def report_throughput(runs: list[TlsThroughput]) -> None:
    base = runs[0]
    print(
        f"Throughput: a STARTTLS session; inside TLS the stream above, sent in 64 KiB writes; "
        f"time from the first stanza byte sent to the server holding all {base.bytes:,} bytes "
        "after the restarted header; setup = connect to features inside TLS; MB = 10^6 bytes; "
        "RSS of the proxy in MB (start = listening, idle; TLS = after the handshakes)"
    )
    rows = [
        [
            run.name,
            f"{run.setup_s * 1000:.1f}",
            f"{run.seconds:.3f}",
            f"{run.mb_per_s:,.2f}",
            f"{run.stanzas_per_s:,.0f}",
            f"{run.stanzas_per_s / base.stanzas_per_s:.4f}",
            "-" if run.cpu_s is None or base is run else f"{run.cpu_s / run.seconds:.0%}",
            "/".join(
                mb(kb) for kb in (run.rss_start_kb, run.rss_tls_kb, run.rss_max_kb, run.rss_end_kb)
            )
            if run.rss_start_kb is not None
            else "-",
            mb(run.hwm_kb),
        ]
        for run in runs
    ]
    headers = [
        "relay",
        "setup ms",
        "seconds",
        "MB/s",
        "stanzas/s",
        "x socat",
        "CPU",
        "RSS start/TLS/max/end",
        "VmHWM",
    ]
    print(table(headers, rows, [False, *[True] * 8]))
    for run in runs:
        where = "client-server" if run is base else "client-xmppspy"
        server = f"; xmppspy-server {run.server_tls}" if run is not base else ""
        print(f"TLS of {run.name}: {where} {run.client_tls}{server}")
        if run.capture_bytes is not None:
            kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(run.capture_kinds.items()))
            print(
                f"Capture of {run.name}: client stanzas {kinds}; {run.capture_bytes:,} bytes "
                f"({run.capture_bytes / MB:.1f} MB)"
            )
    samples = ", ".join(f"{run.samples} for {run.name}" for run in runs if run.samples)
    print(f"RSS sampled every {RSS_INTERVAL * 1000:.0f} ms ({samples} samples)")
    print("CPU: the proxy's CPU seconds over the transfer's wall time (socat: not measured)")
    print(
        "Setup is each relay's first connection: xmppspy's includes loading cryptography and its "
        "CA; socat's may include a 40 ms Nagle stall (it does not set TCP_NODELAY)"
    )
    print()


def report_latency(args: argparse.Namespace, rtt: list[TlsLatency]) -> None:
    direct, socat = rtt[0], rtt[1]
    print(
        f"Latency: round trip of one {len(ping(0))}-byte <iq/> ping inside TLS, through the relay "
        f"to an echo server, {args.round_trips:,} measured after {args.warmup:,} warm-up, in µs"
    )
    rows = [
        [
            r.name,
            f"{r.setup_s * 1000:.1f}",
            f"{r.median:.1f}",
            f"{r.p99:.1f}",
            "-" if r is direct else f"{r.median - direct.median:.1f}",
            "-" if r is direct else f"{r.p99 - direct.p99:.1f}",
            "-" if r is direct else f"{r.median / socat.median:.2f}",
        ]
        for r in rtt
    ]
    headers = ["path", "setup ms", "median", "p99", "added median", "added p99", "x socat"]
    print(table(headers, rows, [False, *[True] * 6]))
    print()


def report_targets(runs: list[TlsThroughput], rtt: list[TlsLatency]) -> None:
    recorded = runs[-1]
    peak = max((run.hwm_kb or 0) for run in runs) * 1024 / MB
    added = max(r.median - rtt[0].median for r in rtt if r.name.startswith("xmppspy"))
    rows = [
        [
            f"--record --quiet >= {TARGET_RECORD_STANZAS_PER_S:,} stanzas/s",
            f"{recorded.stanzas_per_s:,.0f} stanzas/s ({recorded.mb_per_s:.2f} MB/s)",
            verdict(recorded.stanzas_per_s >= TARGET_RECORD_STANZAS_PER_S),
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
    print("Targets (the project's, set for plaintext; here with TLS intercepted):")
    print(table(["target", "measured", "verdict"], rows, [False, True, False]))
    print()


# -- main -----------------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace, socat: str, stream: Stream
) -> tuple[list[TlsThroughput], list[TlsLatency]]:
    with tempfile.TemporaryDirectory(prefix="xmppspy-bench-tls-") as tmp:
        workdir = Path(tmp)
        home = workdir / "xmppspy-home"
        with xmppspy_home(home):
            contexts = make_contexts(workdir)
            upstream_ca = ("--upstream-ca", str(contexts.server_ca))
            capture = workdir / "capture.jsonl"
            relays = [
                Route("socat (TLS end to end)", socat_command(socat), intercepts=False),
                Route("xmppspy --quiet", proxy_command(*upstream_ca), intercepts=True),
                Route(
                    "xmppspy --quiet --record",
                    proxy_command(*upstream_ca, "--record", str(capture)),
                    intercepts=True,
                ),
            ]
            runs = []
            for relay in relays:
                recording = capture if "--record" in relay.name else None
                runs.append(
                    run_throughput(relay, stream, contexts, workdir, args.timeout, recording)
                )
                capture.unlink(missing_ok=True)  # it can be large
            routes = [Route("direct", None, intercepts=False), *relays]
            rtt = run_latency(
                routes, contexts, workdir, args.round_trips, args.warmup, args.timeout
            )
    return runs, rtt


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(
        argv, description="Throughput, latency and memory of xmppspy proxy intercepting STARTTLS."
    )
    socat = shutil.which("socat")
    if socat is None:
        print(
            "bench-tls: socat is not installed; it is the baseline (apt-get install socat)",
            file=sys.stderr,
        )
        return 2
    if not Path("/proc/self/status").exists():
        print("bench-tls: needs Linux (/proc) to check readiness and memory", file=sys.stderr)
        return 2
    try:
        import trustme  # noqa: F401
    except ImportError:
        print(
            "bench-tls: needs trustme (pip install trustme), for the server's CA", file=sys.stderr
        )
        return 2
    facts = machine_facts()
    if dict(facts)["xmppspy"] == "unknown":
        print(
            f"bench-tls: `{sys.executable} -m xmppspy` does not run; "
            "run the bench with the Python that has xmppspy installed",
            file=sys.stderr,
        )
        return 2
    print("xmppspy TLS benchmark (STARTTLS intercepted)")
    for key, value in facts:
        print(f"  {key + ':':<12}{value}")
    print(f"  {'OpenSSL:':<12}{ssl.OPENSSL_VERSION} (the bench's; the proxy runs the same Python)")
    print()
    load = OtherLoad()
    began = time.perf_counter()
    stream = build_stream(args.stanzas, args.seed)
    kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(stream.kinds.items()))
    print(
        f"Stream: {stream.stanzas:,} stanzas ({kinds}), {len(stream.data):,} bytes, "
        f"{stream.average:.1f} bytes per stanza (bench/run.py's, seed {args.seed})"
    )
    print()
    runs, rtt = measure(args, socat, stream)
    report_throughput(runs)
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
            "Checks passed: the server got every byte (SHA-256), the proxy's counts match, the "
            "capture holds every stanza after an intercepted, verified TLS, echoes intact, no "
            "unexpected proxy output."
        )
    report_other_load(load)
    print(f"Total bench time {time.perf_counter() - began:.1f} s")
    return 1 if notes else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench-tls", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
