"""Run the real ``xmppspy`` command line as a child process, and a byte tap to check it.

The tap is a plain relay the test owns, put between xmppspy and the server: it records exactly
which bytes crossed each connection, so a test can compare them with xmppspy's capture without
trusting xmppspy's own account.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from support.prosody import free_loopback_ports


@dataclass
class ProxyProcess:
    """``python -m xmppspy proxy ...`` with its stdout and stderr in files."""

    workdir: Path
    upstream: str
    extra_args: tuple[str, ...] = ()
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    stdout_path: Path = field(init=False)
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.workdir / "proxy.out"
        self.stderr_path = self.workdir / "proxy.err"

    def start(self, timeout: float = 15.0) -> None:
        self.port = free_loopback_ports(1)[0]
        command = [
            sys.executable,
            "-m",
            "xmppspy",
            "proxy",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--upstream",
            self.upstream,
            *self.extra_args,
        ]
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while b"Ctrl-C stops" not in self.stderr_path.read_bytes():  # the ready line
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"xmppspy proxy did not start:\n{self.stderr()}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit code (killing it if it does not exit in time)."""
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"xmppspy proxy ignored signal {sig}:\n{self.stderr()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stdout(self) -> str:
        return self.stdout_path.read_text("utf-8", "replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace")


@dataclass
class TapConnection:
    c2s: bytearray = field(default_factory=bytearray)
    s2c: bytearray = field(default_factory=bytearray)


class Tap:
    """A recording TCP relay to ``127.0.0.1:upstream_port``; run ``serve`` in a nursery."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections: list[TapConnection] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        record = TapConnection()
        self.connections.append(record)
        server = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(_copy, client, server, record.c2s)
            nursery.start_soon(_copy, server, client, record.s2c)


async def _copy(source: trio.SocketStream, dest: trio.SocketStream, seen: bytearray) -> None:
    try:
        while data := await source.receive_some(65536):
            seen += data
            await dest.send_all(data)
        await dest.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
