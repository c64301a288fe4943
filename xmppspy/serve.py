"""``xmppspy serve``: a mock XMPP server played from a capture. trio moves the bytes only.

Every decision (what to answer to what) is ``xmppspy.mock.MockServer``'s; this module accepts
clients, feeds each one's reads to its own mock, sends what the mock returns, wakes the mock
when a recorded push falls due, and shows the traffic with the proxy's ``View``.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from rich.console import Console
from rich.text import Text

from xmppspy.capture import CaptureError, open_capture
from xmppspy.events import Connected, Disconnected, Record
from xmppspy.mock import MockServer, Output, Script, ScriptError, scripts_from
from xmppspy.relay import accept_clients
from xmppspy.render import View, summary
from xmppspy.selection import Shown

READ_SIZE = 64 * 1024
CLOSE_TIMEOUT = 2.0
"""How long a client may take to close its side once the mock closed the stream."""


def load_scripts(path: Path, conn: str | None) -> dict[str, Script]:
    """The playable connections of a capture (only ``conn`` if given).

    Raises ``CaptureError`` or ``ScriptError`` with one line for a person.
    """
    with open_capture(path) as reader:
        records = list(reader)
    if reader.truncated:
        raise CaptureError(
            f"{path} ends in a cut line (the proxy was stopped while writing): "
            "refusing to serve an incomplete session"
        )
    if not records:
        raise CaptureError(f"{path} holds no connection: nothing to serve")
    scripts, problems = scripts_from(records)
    if conn is not None:
        if conn in problems:
            raise ScriptError(problems[conn])
        if conn not in scripts:
            known = ", ".join(dict.fromkeys(r.conn for r in records))
            raise ScriptError(f"{path} has no connection {conn!r} (it has {known})")
        return {conn: scripts[conn]}
    if not scripts:
        raise ScriptError(f"{path}: {next(iter(problems.values()))}")
    return scripts


@dataclass
class Played:
    """How one client connection went."""

    conn: str
    client: str
    mock: MockServer
    reason: str = "open"
    c2s_bytes: int = 0
    s2c_bytes: int = 0

    def summary(self) -> str:
        closed = Disconnected(
            self.reason,
            self.c2s_bytes,
            self.s2c_bytes,
            self.mock.counts.c2s_stanzas,
            self.mock.counts.s2c_stanzas,
            self.mock.jid,
        )
        line = f"{self.conn} {summary(closed)}; {self.mock.progress}"
        if self.mock.departure:
            line += f"; DEPARTED: {self.mock.departure}"
        return line


class ServeView:
    """Shows each connection's traffic (the proxy's view) and the mock's notes."""

    def __init__(self, console: Console | None, *, raw: bool = False) -> None:
        self.console = console
        self.view = View(console, raw=raw) if console is not None else None

    def show(self, conn: str, output: Output) -> None:
        if self.view is None or self.console is None:
            return
        now = time.time()
        for item in output.log:
            if isinstance(item, str):
                self.console.print(Text(f"{conn} mock: {item}", "italic blue"))
            else:
                self.view.show(Shown(Record(now, conn, item)))

    def record(self, conn: str, record: Record) -> None:
        if self.view is not None:
            self.view.show(Shown(record))


class MockService:
    """Accepts clients; each gets a fresh ``MockServer`` over the same scripts."""

    def __init__(
        self,
        scripts: dict[str, Script],
        view: ServeView,
        *,
        conn: str | None = None,
        strict: bool = False,
        warn: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.scripts = scripts
        self.view = view
        self.conn = conn
        self.strict = strict
        self.warn = warn
        self.played: list[Played] = []
        self._ids = itertools.count(1)

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept clients until cancelled (the proxy's accept loop, retries and all)."""
        await accept_clients(listeners, self.handle, task_status=task_status)

    async def handle(self, stream: trio.SocketStream, client: str) -> None:
        mock = MockServer(self.scripts, conn=self.conn, strict=self.strict)
        played = Played(f"c{next(self._ids)}", client, mock, reason="server stopped")
        self.played.append(played)
        self.view.record(played.conn, Record(time.time(), played.conn, Connected(client, "mock")))
        try:
            async with stream:
                played.reason = await self._play(stream, mock, played)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            played.reason = f"the client went away: {exc or type(exc).__name__}"
        finally:
            if mock.departure:
                self.warn(f"{played.conn} {mock.departure}")
            self.view.record(played.conn, Record(time.time(), played.conn, _disconnected(played)))

    async def _play(self, stream: trio.SocketStream, mock: MockServer, played: Played) -> str:
        while True:
            due = mock.next_due
            data: bytes | None = None
            with trio.move_on_at(due if due is not None else float("inf")):
                data = bytes(await stream.receive_some(READ_SIZE))
            now = trio.current_time()
            if data is None:
                output = mock.poll(now)
            elif not data:
                await self._send(stream, mock.eof(now), played)
                return "the client closed the connection"
            else:
                played.c2s_bytes += len(data)
                output = mock.receive(data, now)
            await self._send(stream, output, played)
            if mock.closed:
                return await self._close(stream, mock, played)

    async def _send(self, stream: trio.SocketStream, output: Output, played: Played) -> None:
        self.view.show(played.conn, output)
        if output.data:
            played.s2c_bytes += len(output.data)
            await stream.send_all(output.data)

    async def _close(self, stream: trio.SocketStream, mock: MockServer, played: Played) -> str:
        """The mock closed the stream: half-close, and let the client finish (bounded)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_eof()
        with trio.move_on_after(CLOSE_TIMEOUT):
            while data := await stream.receive_some(READ_SIZE):
                played.c2s_bytes += len(data)
                self.view.show(played.conn, mock.receive(bytes(data), trio.current_time()))
            self.view.show(played.conn, mock.eof(trio.current_time()))
        if mock.departure:
            return "closed with a stream error: the client departed from the capture"
        return "stream closed"


def _disconnected(played: Played) -> Disconnected:
    return Disconnected(
        played.reason,
        played.c2s_bytes,
        played.s2c_bytes,
        played.mock.counts.c2s_stanzas,
        played.mock.counts.s2c_stanzas,
        played.mock.jid,
    )


async def run(
    service: MockService,
    host: str,
    port: int,
    ready: Callable[[str], None],
) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve, listeners)
            bound = listeners[0].socket.getsockname()
            ready(f"{host}:{bound[1]}" if ":" not in host else f"[{host}]:{bound[1]}")
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
