"""The command line: the only module that wires things together and creates consoles."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import trio
import typer
from rich.console import Console

from xmppspy import __version__
from xmppspy.capture import (
    CaptureError,
    CaptureWriter,
    create_capture_file,
    encode_record,
    open_capture,
)
from xmppspy.events import Record
from xmppspy.filters import Filter, FilterError, make_filter
from xmppspy.parser import DEFAULT_MAX_STANZA_SIZE
from xmppspy.relay import ChannelSink, FanOut, Relay, RelayConfig, Sink, tcp_upstream
from xmppspy.render import View, summary

VIEW_BUFFER = 2048
"""Records waiting for the terminal; past this the view skips them (and says so)."""
XMPP_PORT = 5222

app = typer.Typer(
    name="xmppspy",
    help="A debugging proxy for XMPP: see, filter, record and replay every stanza of a session.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


class ViewGone(Exception):
    """stdout was closed (the pager quit, ``| head`` had enough): stop showing, keep relaying."""


class ViewConsole(Console):
    """A console whose reader may go away: rich's default would exit the whole proxy."""

    def on_broken_pipe(self) -> None:
        raise ViewGone


class UpstreamUnknown(Exception):
    """The upstream's name does not resolve: nothing could ever be relayed."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, default_port: int | None = None) -> Address:
    """``HOST:PORT``, ``[IPv6]:PORT``, or ``HOST`` when a default port applies."""
    host, sep, port_text = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        closing = text.index("]")
        host, rest = text[1:closing], text[closing + 1 :]
        sep, port_text = (":", rest[1:]) if rest.startswith(":") else ("", "")
    elif not sep or host.count(":"):
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise typer.BadParameter(f"{text!r} needs a port, as HOST:PORT")
        port_text = str(default_port)
    if not host:
        raise typer.BadParameter(f"{text!r} has no host; write HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise typer.BadParameter(f"{text!r}: the port must be a number from 1 to 65535")
    return Address(host, int(port_text))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _consoles(*, color: bool = True) -> tuple[Console, Console]:
    no_color = bool(os.environ.get("NO_COLOR")) or not color
    out = ViewConsole(no_color=no_color or None, highlight=False, soft_wrap=False)
    err = Console(stderr=True, no_color=no_color or None, highlight=False, soft_wrap=True)
    return out, err


def _fail(err: Console, message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]xmppspy:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def _filter(err: Console, kinds: list[str], types: list[str]) -> Filter:
    try:
        return make_filter(kinds, types)
    except FilterError as exc:
        _fail(err, str(exc), 2)


KindOption = Annotated[
    list[str],
    typer.Option(
        "--kind",
        "-k",
        metavar="KIND",
        help="Show only this kind: message, presence, iq, sasl, tls, sm, stream:features, "
        "stream:error, header, close, keepalive, parse-error, ... Repeat for more (or).",
        show_default=False,
    ),
]
TypeOption = Annotated[
    list[str],
    typer.Option(
        "--type",
        "-t",
        metavar="TYPE",
        help="Show only stanzas of this type (chat, groupchat, get, set, result, error, "
        "unavailable, ...); a message without type is normal, a presence without type available. "
        "Repeat for more (or).",
        show_default=False,
    ),
]
RawOption = Annotated[
    bool, typer.Option("--raw", help="Show the bytes exactly as on the wire, not pretty XML.")
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print one JSON object per event (NDJSON, as in capture files) on stdout."
    ),
]


class JsonView:
    """The view for ``--json``: capture lines on stdout, for jq."""

    def __init__(self, predicate: Filter, err: Console) -> None:
        self.predicate = predicate
        self.err = err

    def wants(self, record: Record) -> bool:
        return self.predicate(record)

    def show(self, record: Record) -> None:
        if self.predicate(record):
            try:
                sys.stdout.buffer.write(encode_record(record))
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                raise ViewGone from None

    def skipped(self, count: int) -> None:
        self.err.print(f"[yellow]xmppspy: {count} events not printed: stdout could not keep up[/]")


@app.command()
def proxy(
    upstream: Annotated[
        str,
        typer.Option(
            "--upstream",
            "-u",
            metavar="HOST[:PORT]",
            help="The real XMPP server to relay to (port 5222 if not given).",
            show_default=False,
        ),
    ],
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            "-l",
            metavar="HOST:PORT",
            help="Where clients connect. Loopback by default; another address exposes the proxy.",
        ),
    ] = "127.0.0.1:5222",
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            "-w",
            metavar="FILE",
            help="Record every event, whatever is shown, to FILE: a JSON Lines capture, mode 0600.",
            dir_okay=False,
        ),
    ] = None,
    kind: KindOption = [],  # noqa: B006 (typer reads the default, never mutates it)
    type_: TypeOption = [],  # noqa: B006
    raw: RawOption = False,
    json_: JsonOption = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show nothing live (to record only).")
    ] = False,
    show_secrets: Annotated[
        bool,
        typer.Option(
            "--show-secrets", help="Do not redact SASL credentials in the view and the capture."
        ),
    ] = False,
    max_stanza_size: Annotated[
        int,
        typer.Option(
            "--max-stanza-size",
            metavar="BYTES",
            min=1024,
            help="A stanza larger than this is relayed and recorded raw, not parsed.",
        ),
    ] = DEFAULT_MAX_STANZA_SIZE,
) -> None:
    """Relay XMPP clients to a server and show every stanza, live.

    Point your client at the --listen address (and tell it not to use DNS SRV or TLS if it
    insists on them); xmppspy connects each client to --upstream and shows both directions.

    Example: `xmppspy proxy --upstream xmpp.example.org --record session.jsonl`
    """
    out, err = _consoles()
    predicate = _filter(err, kind, type_)
    listen_at = parse_address(listen, default_port=XMPP_PORT)
    upstream_at = parse_address(upstream, default_port=XMPP_PORT)
    if not _is_loopback(listen_at.host):
        err.print(
            f"[bold yellow]xmppspy: listening on {listen_at}, not a loopback address: anyone who "
            "can reach it can use this proxy and read what crosses it.[/]"
        )
    view: View | JsonView | None = None
    if json_:
        view = JsonView(predicate, err)
    elif not quiet:
        view = View(out, raw=raw, predicate=predicate)
    writer: CaptureWriter | None = None
    if record is not None:
        try:
            handle = create_capture_file(record)
        except OSError as exc:
            _fail(err, f"cannot create {record}: {exc.strerror or exc}")
        meta = {
            "listen": str(listen_at),
            "upstream": str(upstream_at),
            "redacted": not show_secrets,
        }
        writer = CaptureWriter(
            handle, meta, lambda message: err.print(f"[yellow]xmppspy: {message}[/]")
        )
    config = RelayConfig(str(upstream_at), max_stanza_size, show_secrets)
    try:
        relay = trio.run(_run_proxy, config, listen_at, upstream_at, view, writer, err)
    except UpstreamUnknown as exc:
        _fail(err, str(exc))
    except OSError as exc:
        _fail(err, f"cannot listen on {listen_at}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        _fail(err, "interrupted before the proxy was ready", 130)
    finally:
        if writer is not None:
            writer.close()
    for stats in relay.connections:
        err.print(f"{stats.conn} {summary(stats.summary())}", highlight=False)
    if writer is not None:
        err.print(f"recorded {writer.written} events to {record}", highlight=False)


async def _run_proxy(
    config: RelayConfig,
    listen_at: Address,
    upstream_at: Address,
    view: View | JsonView | None,
    writer: CaptureWriter | None,
    err: Console,
) -> Relay:
    # Installed for the whole run: a second Ctrl-C during shutdown must not become a traceback.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            await trio.socket.getaddrinfo(upstream_at.host, upstream_at.port)
        except socket.gaierror as exc:
            raise UpstreamUnknown(f"cannot resolve upstream {upstream_at}: {exc.strerror}") from exc
        listeners = await trio.open_tcp_listeners(listen_at.port, host=listen_at.host)
        send, receive = trio.open_memory_channel[Record](VIEW_BUFFER)
        sinks: list[Sink] = [writer] if writer is not None else []
        channel_sink = ChannelSink(send, view.wants) if view is not None else None
        if channel_sink is not None:
            sinks.append(channel_sink)
        relay = Relay(config, tcp_upstream(upstream_at.host, upstream_at.port), FanOut(sinks))
        async with trio.open_nursery() as outer:
            if view is not None and channel_sink is not None:
                outer.start_soon(_show, receive, view, channel_sink, err)
            async with trio.open_nursery() as inner:
                await inner.start(relay.serve, listeners)
                err.print(
                    f"xmppspy {__version__}: listening on {listen_at}, relaying to {upstream_at}; "
                    "Ctrl-C stops",
                    highlight=False,
                )
                inner.start_soon(_stop_on_signal, signals, inner.cancel_scope)
            send.close()
    return relay


async def _stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()


async def _show(
    receive: trio.MemoryReceiveChannel[Record],
    view: View | JsonView,
    sink: ChannelSink,
    err: Console,
) -> None:
    """Render in a worker thread, a batch at a time: a slow terminal never blocks the relay.

    If stdout goes away, showing stops and relaying and recording go on.
    """

    def render(batch: list[Record], dropped: int) -> None:
        if dropped:
            view.skipped(dropped)
        for record in batch:
            view.show(record)

    async with receive:
        async for first in receive:
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            try:
                await trio.to_thread.run_sync(render, batch, sink.take_dropped())
            except ViewGone:
                _silence_stdout()
                err.print("xmppspy: stdout was closed: nothing more is shown; relaying goes on")
                return


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that nothing (not even interpreter exit) writes to the pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@app.command()
def replay(
    capture: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="A capture written by xmppspy proxy --record.", show_default=False
        ),
    ],
    kind: KindOption = [],  # noqa: B006
    type_: TypeOption = [],  # noqa: B006
    raw: RawOption = False,
    json_: JsonOption = False,
) -> None:
    """Show a recorded session again, with the same view and filters as the live proxy.

    Example: `xmppspy replay session.jsonl --kind message --type chat`
    """
    out, err = _consoles()
    predicate = _filter(err, kind, type_)
    view: View | JsonView = (
        JsonView(predicate, err) if json_ else View(out, raw=raw, predicate=predicate)
    )
    try:
        with open_capture(capture) as reader:
            for record in reader:
                view.show(record)
    except CaptureError as exc:
        _fail(err, str(exc))
    except ViewGone:
        _silence_stdout()
        raise typer.Exit(0) from None
    if reader.truncated:
        err.print(
            f"[yellow]xmppspy: {capture} ends in a cut line (the proxy was stopped while "
            "writing); everything before it was shown[/]"
        )


@app.command()
def version() -> None:
    """Print xmppspy's version."""
    print(f"xmppspy {__version__}")


def main() -> None:
    app()
