"""The command line: the only module that wires things together and creates consoles."""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import ipaddress
import itertools
import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import trio
import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from xmppspy import __version__
from xmppspy.capture import (
    CaptureError,
    CaptureWriter,
    Pacer,
    create_capture_file,
    encode_record,
    open_capture,
)
from xmppspy.events import Bound, Connected, Disconnected, Record, StreamOpened
from xmppspy.filters import ATOMS, Filter, FilterError, make_filter
from xmppspy.parser import DEFAULT_MAX_STANZA_SIZE
from xmppspy.relay import (
    ChannelSink,
    FanOut,
    FilteredSink,
    Relay,
    RelayConfig,
    Sink,
    TlsSetup,
    tcp_upstream,
    tls_upstream,
)
from xmppspy.render import View, summary
from xmppspy.selection import Selector, Shown
from xmppspy.stats import Stats
from xmppspy.stats_view import report_json, report_view

VIEW_BUFFER = 2048
"""Records waiting for the terminal; past this the view skips them (and says so)."""
VIEW_BATCH_SECONDS = 0.02
XMPP_PORT = 5222

if TYPE_CHECKING:
    from xmppspy.certs import CertificateAuthority

# xmppspy.certs is imported where a certificate is needed, never at start-up: it loads
# cryptography, which would add about 12 MB to every proxy's memory (docs/performance.md).

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


def _warn_if_exposed(err: Console, address: Address, what: str) -> None:
    """Say loudly, before anything else, that a listener is reachable beyond this machine."""
    if not _is_loopback(address.host):
        err.print(
            f"[bold yellow]xmppspy: listening on {address}, not a loopback address: anyone who "
            f"can reach it can {what}.[/]"
        )


def _consoles(*, color: bool = True) -> tuple[Console, Console]:
    no_color = bool(os.environ.get("NO_COLOR")) or not color
    out = ViewConsole(no_color=no_color or None, highlight=False, soft_wrap=False)
    err = Console(stderr=True, no_color=no_color or None, highlight=False, soft_wrap=True)
    return out, err


def _fail(err: Console, message: str, code: int = 1) -> NoReturn:
    # The message may quote what the person wrote ("grep:[a-z]+("): never read it as markup.
    err.print(f"[bold red]xmppspy:[/] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


FilterFlags = list[tuple[str, bool, str]]
_SHORT = {"kind": "-k", "type": "-t"}


def with_filters(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command ``--ATOM`` and ``--not-ATOM`` for every filter atom, and ``-f``.

    The options and their help come from the atom registry (xmppspy/filters.py), so the command
    line, the expression language and docs/filters.md cannot drift apart. The command receives
    them as ``filter_flags`` (``(atom, negated, value)`` each) and ``filter_expression``.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if not p.name.startswith("filter_")]
    added = [
        inspect.Parameter(
            "filter_expression",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option(
                    "--filter",
                    "-f",
                    metavar="EXPR",
                    help='Show only what matches EXPR, e.g. "message and type:chat and not '
                    'ns:urn:xmpp:chat-markers:0" (docs/filters.md). Combines with the '
                    "flags below by and.",
                    rich_help_panel="Filters",
                ),
            ],
        )
    ]
    for atom in ATOMS.values():
        for negated in (False, True):
            names = [f"--not-{atom.name}"] if negated else [f"--{atom.name}"]
            if not negated and atom.name in _SHORT:
                names.append(_SHORT[atom.name])
            what = "Hide" if negated else "Show only"
            added.append(
                inspect.Parameter(
                    f"filter_{'not_' if negated else ''}{atom.name}",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=[],
                    annotation=Annotated[
                        list[str],
                        typer.Option(
                            *names,
                            metavar=atom.metavar,
                            help=f"{what} {atom.help}." if not negated else f"{what} these.",
                            rich_help_panel="Filters",
                            show_default=False,
                        ),
                    ],
                )
            )

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        flags: FilterFlags = []
        for atom in ATOMS.values():
            flags += [(atom.name, False, v) for v in kwargs.pop(f"filter_{atom.name}")]
            flags += [(atom.name, True, v) for v in kwargs.pop(f"filter_not_{atom.name}")]
        command(**kwargs, filter_flags=flags)

    wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
    return wrapper


def _pacer(err: Console, pace: str) -> Pacer | None:
    """``--pace``: None for fast, else a pacer at the given speed (original is 1)."""
    if pace == "fast":
        return None
    if pace == "original":
        return Pacer(1.0)
    try:
        speed = float(pace)
    except ValueError:
        speed = 0.0
    if not speed > 0 or speed == float("inf"):
        _fail(err, f"--pace {pace!r}: write original, fast, or how many times faster (2, 0.5)", 2)
    return Pacer(speed)


class TlsMode(enum.StrEnum):
    INTERCEPT = "intercept"
    PASSTHROUGH = "passthrough"
    STRIP = "strip"


def _tls_setup(
    err: Console,
    mode: TlsMode,
    upstream_ca: Path | None,
    upstream_insecure: bool,
    cert: Path | None,
    key: Path | None,
) -> TlsSetup | None:
    """The TLS side of --tls intercept and strip: our certificate per domain, and whom we trust
    upstream."""
    if mode is TlsMode.PASSTHROUGH:
        if upstream_ca or upstream_insecure or cert or key:
            _fail(
                err,
                "--upstream-ca, --upstream-insecure, --cert and --key need --tls intercept "
                "or strip",
                2,
            )
        return None
    if upstream_ca and upstream_insecure:
        _fail(err, "--upstream-ca and --upstream-insecure contradict each other", 2)
    if key and not cert:
        _fail(err, "--key goes with --cert", 2)
    upstream = ssl.create_default_context()
    if upstream_ca is not None:
        try:
            upstream.load_verify_locations(cafile=str(upstream_ca))
        except ssl.SSLError as exc:
            _fail(err, f"--upstream-ca {upstream_ca}: not a PEM certificate ({exc.reason})")
    if upstream_insecure:
        upstream.check_hostname = False
        upstream.verify_mode = ssl.CERT_NONE
        err.print(
            "[bold yellow]xmppspy: --upstream-insecure: the server's certificate is not verified; "
            "anyone between xmppspy and the server can read and change the session.[/]"
        )
    if cert is not None:
        from xmppspy import certs

        try:
            own = certs.load_user_certificate(cert, key)
        except certs.CertificateError as exc:
            _fail(err, str(exc))
        return TlsSetup(lambda _domain: own, upstream, lambda _domain: own)
    authority = _LazyAuthority(err)
    return TlsSetup(authority.server_context, upstream, authority.sni_context)


def _mechanism_list(err: Console, text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(name.strip().upper() for name in text.split(",") if name.strip())
    bad = [name for name in names if not re.fullmatch(r"[A-Z0-9_-]{1,20}", name)]
    if not names or bad:
        _fail(err, f"--sasl-mechanisms {text!r}: write names like PLAIN,SCRAM-SHA-1", 2)
    return names


@dataclass(frozen=True)
class DirectTls:
    """--listen-tls: direct-TLS (XEP-0368) clients, to --upstream-tls or to --upstream."""

    listen: Address
    upstream: Address
    name: str
    """The XMPP domain the upstream's certificate must be for."""
    context: ssl.SSLContext
    """What direct-TLS clients are shown: our certificate for the name they ask for."""
    upstream_context: ssl.SSLContext
    config: RelayConfig
    starttls: bool
    """No --upstream-tls: clients go to --upstream, where xmppspy itself does STARTTLS."""


def _direct_tls(
    err: Console,
    listen_tls: str | None,
    upstream_tls: str | None,
    name: str | None,
    setup: TlsSetup | None,
    config: RelayConfig,
    upstream_at: Address,
) -> DirectTls | None:
    """Direct-TLS clients go to --upstream-tls, or to --upstream with xmppspy's own STARTTLS."""
    if listen_tls is None:
        if upstream_tls is not None or name is not None:
            _fail(err, "--upstream-tls and --upstream-tls-name are for --listen-tls clients", 2)
        return None
    if name is not None and upstream_tls is None:
        _fail(err, "--upstream-tls-name goes with --upstream-tls", 2)
    if setup is None or setup.direct_context is None:
        _fail(err, "--listen-tls terminates TLS: it needs --tls intercept or strip", 2)
    listen = parse_address(listen_tls)
    starttls = upstream_tls is None
    upstream = parse_address(upstream_tls) if upstream_tls else upstream_at
    name = name or upstream.host
    _warn_if_exposed(err, listen, "use this proxy and read what crosses it")
    from xmppspy.certs import CertificateError  # direct TLS needs a certificate at once

    try:
        context = setup.direct_context(name)
    except CertificateError as exc:
        _fail(err, str(exc))
    context.set_alpn_protocols(["xmpp-client"])
    return DirectTls(
        listen,
        upstream,
        name,
        context,
        setup.upstream_context,
        dataclasses.replace(config, upstream=str(upstream), starttls_upstream=starttls),
        starttls,
    )


class _LazyAuthority:
    """xmppspy's CA, loaded (or created) at the first STARTTLS: plaintext sessions need none."""

    def __init__(self, err: Console) -> None:
        self.err = err
        self.authority: CertificateAuthority | None = None  # loaded at the first need

    def _load(self) -> CertificateAuthority:
        if self.authority is None:
            from xmppspy.certs import CertificateAuthority, default_home

            self.authority = CertificateAuthority.load_or_create(default_home())
            for note in self.authority.notes:
                self.err.print(f"[yellow]xmppspy: {escape(note)}[/]")
        return self.authority

    def server_context(self, domain: str) -> ssl.SSLContext:
        return self._load().server_context(domain)

    def sni_context(self, default_domain: str) -> ssl.SSLContext:
        return self._load().sni_context(default_domain)


def _recorded(predicate: Filter) -> Callable[[Record], bool]:
    """What ``--record-filtered`` keeps: matches, and the events that say who a connection is.

    Without headers and ``bound`` events a replay could not tell whom a stanza without
    ``from`` or ``to`` belongs to, and the same filter would show less than it did live.
    """

    def keep(record: Record) -> bool:
        return predicate(record) or type(record.event) in CONTEXT_RECORDS

    return keep


CONTEXT_RECORDS = frozenset({StreamOpened, Bound, Connected, Disconnected})


def _selector(
    err: Console, flags: FilterFlags, expression: str | None, *, with_replies: bool
) -> Selector:
    return Selector(_filter(err, flags, expression), with_replies=with_replies)


def _filter(err: Console, flags: FilterFlags, expression: str | None) -> Filter:
    try:
        return make_filter(flags, expression)
    except FilterError as exc:
        _fail(err, str(exc), 2)


CaptureArgument = Annotated[
    Path,
    typer.Argument(
        metavar="FILE", help="A capture written by xmppspy proxy --record.", show_default=False
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
RepliesOption = Annotated[
    bool,
    typer.Option(
        "--with-replies",
        help="Also show the result or error of every IQ shown, with its round trip; list the "
        "IQs that got no reply at the end.",
        rich_help_panel="Filters",
    ),
]


class JsonView:
    """The view for ``--json``: capture lines on stdout, for jq (a reply also gets ``rtt``)."""

    def __init__(self, err: Console) -> None:
        self.err = err

    def show(self, shown: Shown) -> None:
        if shown.visible:
            rtt = shown.round_trip
            self._write(encode_record(shown.record, {"rtt": rtt} if rtt is not None else None))

    def unanswered(self, requests: list[Record]) -> None:
        for request in requests:
            self._write(encode_record(request, {"unanswered": True}))

    def skipped(self, count: int) -> None:
        self.err.print(f"[yellow]xmppspy: {count} events not printed: stdout could not keep up[/]")

    @staticmethod
    def _write(line: bytes) -> None:
        try:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise ViewGone from None


@app.command()
@with_filters
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
    raw: RawOption = False,
    json_: JsonOption = False,
    with_replies: RepliesOption = False,
    record_filtered: Annotated[
        bool,
        typer.Option(
            "--record-filtered",
            help="Record only what the filters show (the capture then no longer holds every byte).",
            rich_help_panel="Filters",
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show nothing live (to record only).")
    ] = False,
    show_secrets: Annotated[
        bool,
        typer.Option(
            "--show-secrets", help="Do not redact SASL credentials in the view and the capture."
        ),
    ] = False,
    tls: Annotated[
        TlsMode,
        typer.Option(
            "--tls",
            help="What to do when a client starts TLS: intercept (terminate it with a certificate "
            "from xmppspy's CA, see 'xmppspy ca', and show the session inside), passthrough "
            "(relay the encrypted bytes unseen), or strip (for clients that cannot trust a CA: "
            "hide STARTTLS from them and do it with the server in their place; they then talk "
            "to xmppspy in plaintext).",
            rich_help_panel="TLS",
        ),
    ] = TlsMode.INTERCEPT,
    listen_tls: Annotated[
        str | None,
        typer.Option(
            "--listen-tls",
            metavar="HOST:PORT",
            help="Also accept direct-TLS clients (XEP-0368) here: relayed to --upstream-tls, or "
            "without it to --upstream, where xmppspy does STARTTLS itself.",
            rich_help_panel="TLS",
            show_default=False,
        ),
    ] = None,
    upstream_tls: Annotated[
        str | None,
        typer.Option(
            "--upstream-tls",
            metavar="HOST:PORT",
            help="The server's direct-TLS address (often port 5223), for --listen-tls clients.",
            rich_help_panel="TLS",
            show_default=False,
        ),
    ] = None,
    upstream_tls_name: Annotated[
        str | None,
        typer.Option(
            "--upstream-tls-name",
            metavar="DOMAIN",
            help="The XMPP domain the --upstream-tls certificate must be for (default: its host).",
            rich_help_panel="TLS",
            show_default=False,
        ),
    ] = None,
    sasl_mechanisms: Annotated[
        str | None,
        typer.Option(
            "--sasl-mechanisms",
            metavar="LIST",
            help="Offer clients only these SASL mechanisms (comma-separated, e.g. "
            "PLAIN,SCRAM-SHA-1); the rewrite is shown. Through interception SCRAM-*-PLUS is "
            "always removed: channel binding cannot pass a TLS-terminating proxy.",
            rich_help_panel="TLS",
            show_default=False,
        ),
    ] = None,
    upstream_ca: Annotated[
        Path | None,
        typer.Option(
            "--upstream-ca",
            metavar="FILE",
            help="Also trust this CA (PEM) for the server's certificate.",
            rich_help_panel="TLS",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    upstream_insecure: Annotated[
        bool,
        typer.Option(
            "--upstream-insecure",
            help="Do not verify the server's certificate (every connection says so).",
            rich_help_panel="TLS",
        ),
    ] = False,
    cert: Annotated[
        Path | None,
        typer.Option(
            "--cert",
            metavar="FILE",
            help="Present this certificate (PEM) to clients instead of one from xmppspy's CA.",
            rich_help_panel="TLS",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            metavar="FILE",
            help="The private key of --cert (if not in the same file).",
            rich_help_panel="TLS",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    max_stanza_size: Annotated[
        int,
        typer.Option(
            "--max-stanza-size",
            metavar="BYTES",
            min=1024,
            help="A stanza larger than this is relayed and recorded raw, not parsed.",
        ),
    ] = DEFAULT_MAX_STANZA_SIZE,
    *,
    filter_flags: FilterFlags,
    filter_expression: str | None,
) -> None:
    """Relay XMPP clients to a server and show every stanza, live.

    Point your client at the --listen address (and tell it not to use DNS SRV or TLS if it
    insists on them); xmppspy connects each client to --upstream and shows both directions.

    Example: `xmppspy proxy --upstream xmpp.example.org --record session.jsonl`
    """
    out, err = _consoles()
    selector = _selector(err, filter_flags, filter_expression, with_replies=with_replies)
    listen_at = parse_address(listen, default_port=XMPP_PORT)
    upstream_at = parse_address(upstream, default_port=XMPP_PORT)
    _warn_if_exposed(err, listen_at, "use this proxy and read what crosses it")
    view: View | JsonView | None = None
    if json_:
        view = JsonView(err)
    elif not quiet:
        view = View(out, raw=raw)
    writer: CaptureWriter | None = None
    if record is not None:
        try:
            handle = create_capture_file(record)
        except OSError as exc:
            _fail(err, f"cannot create {record}: {exc.strerror or exc}")
        meta: dict[str, Any] = {
            "listen": str(listen_at),
            "upstream": str(upstream_at),
            "redacted": not show_secrets,
            "tls": tls.value,
        }
        if record_filtered:
            meta["filtered"] = {"flags": filter_flags, "expression": filter_expression}
        writer = CaptureWriter(
            handle, meta, lambda message: err.print(f"[yellow]xmppspy: {message}[/]")
        )
    recorder: Sink | None = writer
    if writer is not None and record_filtered:
        recorder = FilteredSink(writer, _recorded(_filter(err, filter_flags, filter_expression)))
    setup = _tls_setup(err, tls, upstream_ca, upstream_insecure, cert, key)
    mechanisms = _mechanism_list(err, sasl_mechanisms)
    config = RelayConfig(
        str(upstream_at),
        max_stanza_size,
        show_secrets,
        setup,
        mechanisms,
        starttls_upstream=tls is TlsMode.STRIP,
    )
    direct = _direct_tls(
        err, listen_tls, upstream_tls, upstream_tls_name, setup, config, upstream_at
    )
    if tls is TlsMode.STRIP:
        err.print(
            "[yellow]xmppspy: --tls strip: clients get no STARTTLS and talk to xmppspy in "
            "plaintext, passwords included; xmppspy does TLS with the server for them.[/]"
        )
    try:
        relays = trio.run(
            _run_proxy,
            config,
            listen_at,
            upstream_at,
            selector if view else None,
            view,
            recorder,
            err,
            direct,
        )
    except UpstreamUnknown as exc:
        _fail(err, str(exc))
    except OSError as exc:
        _fail(err, f"cannot listen on {listen_at}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        _fail(err, "interrupted before the proxy was ready", 130)
    finally:
        if writer is not None:
            writer.close()
    if view is not None:
        try:
            view.unanswered(selector.unanswered())
        except ViewGone:
            _silence_stdout()
    for stats in sorted(
        (s for relay in relays for s in relay.connections), key=lambda s: int(s.conn[1:])
    ):
        err.print(f"{stats.conn} {summary(stats.summary())}", highlight=False)
    if writer is not None:
        err.print(f"recorded {writer.written} events to {record}", highlight=False)


async def _run_proxy(
    config: RelayConfig,
    listen_at: Address,
    upstream_at: Address,
    selector: Selector | None,
    view: View | JsonView | None,
    recorder: Sink | None,
    err: Console,
    direct: DirectTls | None = None,
) -> list[Relay]:
    # Installed for the whole run: a second Ctrl-C during shutdown must not become a traceback.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            await trio.socket.getaddrinfo(upstream_at.host, upstream_at.port)
        except socket.gaierror as exc:
            raise UpstreamUnknown(f"cannot resolve upstream {upstream_at}: {exc.strerror}") from exc
        listeners = await trio.open_tcp_listeners(listen_at.port, host=listen_at.host)
        send, receive = trio.open_memory_channel[Shown](VIEW_BUFFER)
        sinks: list[Sink] = [recorder] if recorder is not None else []
        channel_sink = ChannelSink(send, selector) if selector is not None else None
        if channel_sink is not None:
            sinks.append(channel_sink)
        ids = itertools.count(1)
        relays = [
            Relay(config, tcp_upstream(upstream_at.host, upstream_at.port), FanOut(sinks), ids=ids)
        ]
        tls_listeners = []
        if direct is not None:
            tls_listeners = await trio.open_ssl_over_tcp_listeners(
                direct.listen.port, direct.context, host=direct.listen.host, https_compatible=True
            )
            opener = (
                tcp_upstream(direct.upstream.host, direct.upstream.port)
                if direct.starttls
                else tls_upstream(
                    direct.upstream.host, direct.upstream.port, direct.upstream_context, direct.name
                )
            )
            relays.append(Relay(direct.config, opener, FanOut(sinks), ids=ids))
        async with trio.open_nursery() as outer:
            if view is not None and channel_sink is not None:
                outer.start_soon(_show, receive, view, channel_sink, err)
            async with trio.open_nursery() as inner:
                await inner.start(relays[0].serve, listeners)
                where = f"listening on {listen_at}, relaying to {upstream_at}"
                if direct is not None:
                    await inner.start(relays[1].serve, tls_listeners)
                    where += f"; direct TLS on {direct.listen}, relaying to {direct.upstream}"
                    if direct.starttls:
                        where += " with STARTTLS"
                err.print(f"xmppspy {__version__}: {where}; Ctrl-C stops", highlight=False)
                inner.start_soon(_stop_on_signal, signals, inner.cancel_scope)
            send.close()
    return relays


async def _stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()


async def _show(
    receive: trio.MemoryReceiveChannel[Shown],
    view: View | JsonView,
    sink: ChannelSink[Shown],
    err: Console,
) -> None:
    """Render in a worker thread, a batch at a time: a slow terminal never blocks the relay.

    If stdout goes away, showing stops and relaying and recording go on.
    """

    def render(batch: list[Shown], dropped: int) -> None:
        if dropped:
            view.skipped(dropped)
        for shown in batch:
            view.show(shown)

    async with receive:
        async for first in receive:
            # Gather for a moment: a thread hand-off per record would cost the relay more
            # than the records do, and 20 ms is below what a person can see.
            await trio.sleep(VIEW_BATCH_SECONDS)
            batch = [first]
            while len(batch) < VIEW_BUFFER:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            try:
                await trio.to_thread.run_sync(render, batch, sink.take_dropped())
                for shown in batch:
                    sink.done(shown.record)
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
@with_filters
def replay(
    capture: CaptureArgument,
    raw: RawOption = False,
    json_: JsonOption = False,
    with_replies: RepliesOption = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-F",
            help="Keep showing events as a running proxy appends them (like tail -f); Ctrl-C "
            "stops.",
        ),
    ] = False,
    pace: Annotated[
        str,
        typer.Option(
            "--pace",
            metavar="original|fast|N",
            help="Show events as fast as possible (fast), with their recorded timing "
            "(original), or N times faster than recorded (2, 0.5, ...).",
        ),
    ] = "fast",
    to: Annotated[
        str | None,
        typer.Option(
            "--server",
            metavar="HOST:PORT",
            help="Replay as a client: connect to this live server, log in as --login and send the "
            "connection's client stanzas again, then compare the replies with the recorded ones.",
            rich_help_panel="Client replay",
            show_default=False,
        ),
    ] = None,
    jid: Annotated[
        str | None,
        typer.Option(
            "--login",
            metavar="JID",
            help="The account to log in as with --server (user@domain[/resource]).",
            rich_help_panel="Client replay",
            show_default=False,
        ),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            metavar="PASSWORD",
            envvar="XMPPSPY_PASSWORD",
            help="The password of --login (better given in the environment).",
            rich_help_panel="Client replay",
            show_default=False,
        ),
    ] = None,
    maps: Annotated[
        list[str],
        typer.Option(
            "--map",
            metavar="OLD=NEW",
            help="With --server, write the JID NEW wherever a replayed stanza's to or from says "
            "OLD (repeatable). The recorded account's own JID is mapped to --login by itself.",
            rich_help_panel="Client replay",
            show_default=False,
        ),
    ] = [],  # noqa: B006 - typer reads the default; it is never mutated
    no_compare: Annotated[
        bool,
        typer.Option(
            "--no-compare",
            help="With --server, only replay: do not compare the replies with the recorded ones.",
            rich_help_panel="Client replay",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            min=0,
            help="With --server, how long to wait for replies after the last stanza.",
            rich_help_panel="Client replay",
        ),
    ] = 2.0,
    server_ca: Annotated[
        Path | None,
        typer.Option(
            "--server-ca",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="With --server, also trust this CA (PEM) for the server's STARTTLS certificate "
            "(the system's trust store is always used).",
            rich_help_panel="Client replay",
            show_default=False,
        ),
    ] = None,
    server_insecure: Annotated[
        bool,
        typer.Option(
            "--server-insecure",
            help="With --server, do not verify the server's TLS certificate (a warning says so).",
            rich_help_panel="Client replay",
        ),
    ] = False,
    sasl: Annotated[
        str | None,
        typer.Option(
            "--sasl",
            metavar="PLAIN|SCRAM-SHA-1",
            help="With --server, the SASL mechanism to log in with (default: SCRAM-SHA-1 when "
            "offered, else PLAIN).",
            rich_help_panel="Client replay",
            show_default=False,
        ),
    ] = None,
    *,
    filter_flags: FilterFlags,
    filter_expression: str | None,
) -> None:
    """Show a recorded session again, with the same view and filters as the live proxy.

    With --server, replay one connection as a client against a live server instead, and compare
    what it answers with what was recorded (exit status 1 when anything differs).

    Example: `xmppspy replay session.jsonl --kind message --type chat`
    """
    out, err = _consoles()
    pacer = _pacer(err, pace)
    if to is not None:
        keep = _filter(err, filter_flags, filter_expression)
        _client_replay(
            capture,
            to,
            jid,
            password,
            maps,
            not no_compare,
            wait,
            _ClientTls(server_ca, server_insecure, sasl),
            pacer,
            keep,
            JsonView(err) if json_ else View(out, raw=raw),
            out,
            err,
        )
    selector = _selector(err, filter_flags, filter_expression, with_replies=with_replies)
    view: View | JsonView = JsonView(err) if json_ else View(out, raw=raw)
    try:
        with open_capture(capture) as reader:
            try:
                for record in reader.records(follow=follow):
                    shown = selector(record)
                    if shown is not None:
                        if pacer is not None and shown.visible:
                            pacer.wait_for(record)
                        view.show(shown)
            except KeyboardInterrupt:
                if not follow:
                    raise typer.Exit(130) from None
        view.unanswered(selector.unanswered())
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


@dataclass(frozen=True)
class _ClientTls:
    """``replay --server``'s security options: extra CA, no verification, SASL mechanism."""

    ca: Path | None
    insecure: bool
    sasl: str | None


def _client_replay(
    capture: Path,
    to: str,
    jid: str | None,
    password: str | None,
    maps: list[str],
    comparing: bool,
    wait: float,
    security: _ClientTls,
    pacer: Pacer | None,
    keep: Filter,
    view: View | JsonView,
    out: Console,
    err: Console,
) -> NoReturn:
    """``replay --server``: one recorded connection played as a client against a live server."""
    from rich.table import Table

    from xmppspy.client import (
        MECHANISMS,
        ClientError,
        ClientStream,
        play,
        stream_header,
        tls_context,
    )
    from xmppspy.events import Direction, Stanza, WireEvent
    from xmppspy.parser import StreamParser
    from xmppspy.replay import (
        STANZA_KINDS,
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

    if jid is None or password is None:
        _fail(
            err, "--server needs --login and --password (or XMPPSPY_PASSWORD in the environment)", 2
        )
    sasl = security.sasl.upper() if security.sasl is not None else None
    if sasl is not None and sasl not in MECHANISMS:
        _fail(err, f"--sasl {security.sasl}: choose one of {', '.join(MECHANISMS)}", 2)
    if security.insecure and security.ca is not None:
        _fail(err, "--server-ca and --server-insecure exclude each other", 2)
    address = parse_address(to, default_port=XMPP_PORT)
    try:
        context = tls_context(security.ca, insecure=security.insecure)
        extra = parse_maps(maps)
        with open_capture(capture) as reader:
            records = list(reader)
        plan = make_plan(records, keep)
        stream = ClientStream(jid, password, resource=plan.resource, mechanism=sasl)
    except (CaptureError, ReplayError, ClientError) as exc:
        _fail(err, str(exc), 2 if isinstance(exc, ReplayError) and "--map" in str(exc) else 1)
    conn = f"replay {plan.conn}"
    notes = err if isinstance(view, JsonView) else out
    sent = [record.event for record in plan.sends if isinstance(record.event, Stanza)]
    progress = Progress(sent, plan.expected)
    actual: list[Stanza] = []
    outgoing: list[tuple[float, bytes]] = []
    shown_sent: list[Record] = []
    jids = JidMap(plan.jid, plan.jid)
    tls_used: list[str] = []
    if security.insecure:
        err.print(
            "[yellow]xmppspy: warning: --server-insecure: the server's TLS certificate is not "
            "verified[/]",
            highlight=False,
        )

    def on_tls(version: str) -> None:
        tls_used.append(version)

    def ready(bound: str) -> list[tuple[float, bytes]]:
        nonlocal jids
        jids = JidMap(plan.jid, bound, extra)
        if tls_used:
            checked = "certificate NOT verified" if security.insecure else "certificate verified"
            channel = f"STARTTLS ({tls_used[0]}, {checked})"
        else:
            channel = "no TLS (the server offered no STARTTLS)"
        err.print(
            f"xmppspy: replaying {plan.conn} ({plan.jid}) to {address} as {bound} over "
            f"{channel}, SASL {stream.mechanism}: {len(plan.sends)} stanzas",
            highlight=False,
            markup=False,
        )
        view.show(Shown(Record(time.time(), conn, Bound(Direction.S2C, bound))))
        own = StreamParser(Direction.C2S)
        own.feed(stream_header(stream.domain))
        delays: list[float] = []
        if pacer is not None:
            pacer.sleep = delays.append
        for record in plan.sends:
            assert isinstance(record.event, Stanza)
            raw, changes = rewrite(record.event.raw, jids)
            for change in changes:
                notes.print(f"rewrote id={record.event.id} {change}", highlight=False, markup=False)
            before = len(delays)
            if pacer is not None:
                pacer.wait_for(record)
            outgoing.append((delays[before] if len(delays) > before else 0.0, raw))
            shown_sent.extend(Record(0.0, conn, e) for e in own.feed(raw) if isinstance(e, Stanza))
        return outgoing

    def on_sent(index: int) -> None:
        record = shown_sent[index] if index < len(shown_sent) else None
        if record is not None:
            view.show(Shown(Record(time.time(), conn, record.event)))

    def on_received(event: WireEvent) -> None:
        view.show(Shown(Record(time.time(), conn, event)))
        if isinstance(event, Stanza) and event.kind in STANZA_KINDS:
            actual.append(event)
            progress.received(event)

    try:
        trio.run(
            functools.partial(
                play,
                address.host,
                address.port,
                stream,
                wait=wait,
                on_ready=ready,
                on_sent=on_sent,
                on_received=on_received,
                done=(lambda: progress.done) if comparing else (lambda: False),
                tls=context,
                on_tls=on_tls,
            )
        )
    except ClientError as exc:
        _fail(err, str(exc))
    except KeyboardInterrupt:
        _fail(err, "interrupted", 130)
    except ViewGone:
        _silence_stdout()
    for warning in stream.warnings:
        err.print(f"[yellow]xmppspy: {escape(warning)}[/]")
    if not comparing:
        raise typer.Exit(0)
    outcomes = compare(sent, plan.expected, actual, jids)
    styles = {
        Status.MATCH: "green",
        Status.DIFFER: "bold red",
        Status.MISSING: "bold yellow",
        Status.NEW: "bold cyan",
    }
    table = Table(title=f"replies compared with {capture.name} ({plan.conn})", title_justify="left")
    for column in ("", "reply", "detail"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(
            Text(outcome.status.value, styles[outcome.status]),
            Text(outcome.what),
            Text(outcome.detail),
        )
    counts = {status: sum(1 for o in outcomes if o.status is status) for status in Status}
    line = ", ".join(f"{count} {status.value}" for status, count in counts.items())
    try:
        notes.print(table)
        notes.print(
            f"{line}: {'everything matches' if all_match(outcomes) else 'differences'}",
            highlight=False,
            markup=False,
        )
    except ViewGone:
        _silence_stdout()
    raise typer.Exit(0 if all_match(outcomes) else 1)


@app.command()
@with_filters
def stats(
    capture: CaptureArgument,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the numbers as one JSON document on stdout.")
    ] = False,
    *,
    filter_flags: FilterFlags,
    filter_expression: str | None,
) -> None:
    """Count what a recorded session holds, per connection and in total.

    Stanzas and bytes by kind, type and direction; top payload namespaces; the largest
    stanzas; IQ round trips by namespace; stanza and stream errors; stanzas per second.
    With filters, only what they select is counted.

    Example: `xmppspy stats session.jsonl --kind iq`
    """
    out, err = _consoles()
    selector = _selector(err, filter_flags, filter_expression, with_replies=False)
    counts = Stats()
    try:
        with open_capture(capture) as reader:
            for record in reader:
                if selector(record) is not None:
                    counts.feed(record)
    except CaptureError as exc:
        _fail(err, str(exc))
    if reader.truncated:
        err.print(
            f"[yellow]xmppspy: {escape(str(capture))} ends in a cut line (the proxy was stopped "
            "while writing); the figures cover everything before it[/]"
        )
    report = counts.report()
    try:
        if json_:
            sys.stdout.buffer.write(report_json(report))
            sys.stdout.buffer.flush()
        else:
            out.print(report_view(report))
    except (BrokenPipeError, ViewGone):
        _silence_stdout()


@app.command()
def serve(
    capture: CaptureArgument,
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            "-l",
            metavar="HOST:PORT",
            help="Where clients connect. Loopback by default; another address exposes the mock.",
        ),
    ] = "127.0.0.1:5222",
    conn: Annotated[
        str | None,
        typer.Option(
            "--conn",
            metavar="ID",
            help="Play this recorded connection (c1, c2, ...) to every client. By default a "
            "client gets the connection its SASL user had, else the first one.",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="End a client's stream (stream error) at its first stanza that the capture "
            "does not have next, and exit 1 at the end if any client did so.",
        ),
    ] = False,
    raw: RawOption = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show no traffic, only the summaries.")
    ] = False,
) -> None:
    """Play a recorded session back as a mock server that clients can log in to.

    Any SASL PLAIN credentials are accepted; each client stanza is answered with what the
    server sent after the matching recorded one (ids and the bound JID rewritten).

    Example: `xmppspy serve session.jsonl --listen 127.0.0.1:5222 --strict`
    """
    from xmppspy import serve as mock_serve
    from xmppspy.mock import ScriptError

    out, err = _consoles()
    listen_at = parse_address(listen, default_port=XMPP_PORT)
    try:
        scripts = mock_serve.load_scripts(capture, conn)
    except (CaptureError, ScriptError) as exc:
        _fail(err, str(exc))
    _warn_if_exposed(err, listen_at, "use this mock server")
    service = mock_serve.MockService(
        scripts,
        mock_serve.ServeView(None if quiet else out, raw=raw),
        conn=conn,
        strict=strict,
        warn=lambda message: err.print(f"xmppspy: {message}", highlight=False, markup=False),
    )
    names = ", ".join(f"{s.conn} {s.jid}" for s in scripts.values())

    def ready(address: str) -> None:
        err.print(
            f"xmppspy {__version__}: serving {capture} ({names}) on {address}; Ctrl-C stops",
            highlight=False,
            markup=False,
        )

    try:
        trio.run(mock_serve.run, service, listen_at.host, listen_at.port, ready)
    except OSError as exc:
        _fail(err, f"cannot listen on {listen_at}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        _fail(err, "interrupted before the mock server was ready", 130)
    for played in service.played:
        err.print(played.summary(), highlight=False, markup=False)
    if strict and any(played.mock.departure for played in service.played):
        raise typer.Exit(1)


@app.command()
def ca(
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            metavar="FILE",
            help="Write the CA certificate (PEM, never the key) to FILE; - for stdout.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show xmppspy's certificate authority and how to trust it, creating it on first use.

    The CA lives in `$XMPPSPY_HOME`, else `$XDG_DATA_HOME/xmppspy`, else
    `~/.local/share/xmppspy`.

    Example: `xmppspy ca --export xmppspy-ca.pem`
    """
    from xmppspy import certs

    _, err = _consoles()
    try:
        authority = certs.CertificateAuthority.load_or_create(certs.default_home())
    except certs.CertificateError as exc:
        _fail(err, str(exc))
    for note in authority.notes:
        err.print(f"[yellow]xmppspy: {escape(note)}[/]")
    if export is not None:
        if str(export) == "-":
            sys.stdout.buffer.write(authority.certificate_pem())
            sys.stdout.buffer.flush()
            return
        try:
            export.write_bytes(authority.certificate_pem())
        except OSError as exc:
            _fail(err, f"cannot write {export}: {exc.strerror or exc}")
    cert = authority.cert_path
    print(f"CA certificate: {cert}{'  (created now)' if authority.created else ''}")
    print(f"Private key:    {authority.key_path}  (keep it secret)")
    print(f"SHA-256:        {authority.fingerprint()}")
    if export is not None:
        print(f"Exported to:    {export}")
    print()
    print(
        f"To debug a client through xmppspy, make it trust this CA: import {cert.name} into the "
        "client's trust store, or the system's (only on a machine you debug from; anyone with "
        "the key can impersonate any server to it). For Python or slixmpp, pass an "
        f"ssl.SSLContext on which you called load_verify_locations({str(cert)!r})."
    )


@app.command()
def version() -> None:
    """Print xmppspy's version."""
    print(f"xmppspy {__version__}")


def main() -> None:
    app()
