"""``xmppspy proxy``: the live relay, its TLS setup, and the view fed from it."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import re
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import trio
import typer
from rich.console import Console
from rich.markup import escape

from xmppspy import __version__
from xmppspy.capture import CaptureWriter, create_capture_file
from xmppspy.cli.common import (
    XMPP_PORT,
    Address,
    FilterFlags,
    JsonOption,
    JsonView,
    RawOption,
    RepliesOption,
    ViewGone,
    build_filter,
    build_selector,
    consoles,
    fail,
    parse_address,
    silence_stdout,
    warn_if_exposed,
    with_filters,
)
from xmppspy.events import Bound, Connected, Disconnected, Record, StreamOpened
from xmppspy.filters import Filter
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

VIEW_BUFFER = 2048
"""Records waiting for the terminal; past this the view skips them (and says so)."""
VIEW_BATCH_SECONDS = 0.02

if TYPE_CHECKING:
    from xmppspy.certs import CertificateAuthority

# xmppspy.certs is imported where a certificate is needed, never at start-up: it loads
# cryptography, which would add about 12 MB to every proxy's memory (docs/performance.md).


class UpstreamUnknown(Exception):
    """The upstream's name does not resolve: nothing could ever be relayed."""


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
            fail(
                err,
                "--upstream-ca, --upstream-insecure, --cert and --key need --tls intercept "
                "or strip",
                2,
            )
        return None
    if upstream_ca and upstream_insecure:
        fail(err, "--upstream-ca and --upstream-insecure contradict each other", 2)
    if key and not cert:
        fail(err, "--key goes with --cert", 2)

    def trusting() -> ssl.SSLContext:
        """A client context that trusts what the person said about the server."""
        context = ssl.create_default_context()
        if upstream_ca is not None:
            try:
                context.load_verify_locations(cafile=str(upstream_ca))
            except ssl.SSLError as exc:
                fail(err, f"--upstream-ca {upstream_ca}: not a PEM certificate ({exc.reason})")
        if upstream_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    upstream = trusting()
    direct = trusting()  # for --upstream-tls; not shared, so that STARTTLS offers no ALPN
    direct.set_alpn_protocols(["xmpp-client"])  # XEP-0368; what 443 multiplexers route on
    if upstream_insecure:
        err.print(
            "[bold yellow]xmppspy: --upstream-insecure: the server's certificate is not verified; "
            "anyone between xmppspy and the server can read and change the session.[/]"
        )
    if cert is not None:
        from xmppspy import certs

        try:
            own = certs.load_user_certificate(cert, key)
        except certs.CertificateError as exc:
            fail(err, str(exc))
        return TlsSetup(lambda _domain: own, upstream, lambda _domain: own, direct)
    authority = _LazyAuthority(err)
    return TlsSetup(authority.server_context, upstream, authority.sni_context, direct)


def _mechanism_list(err: Console, text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(name.strip().upper() for name in text.split(",") if name.strip())
    bad = [name for name in names if not re.fullmatch(r"[A-Z0-9_-]{1,20}", name)]
    if not names or bad:
        fail(err, f"--sasl-mechanisms {text!r}: write names like PLAIN,SCRAM-SHA-1", 2)
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
            fail(err, "--upstream-tls and --upstream-tls-name are for --listen-tls clients", 2)
        return None
    if name is not None and upstream_tls is None:
        fail(err, "--upstream-tls-name goes with --upstream-tls", 2)
    if setup is None or setup.direct_context is None:
        fail(err, "--listen-tls terminates TLS: it needs --tls intercept or strip", 2)
    listen = parse_address(listen_tls)
    starttls = upstream_tls is None
    upstream = parse_address(upstream_tls) if upstream_tls else upstream_at
    name = name or upstream.host
    warn_if_exposed(err, listen, "use this proxy and read what crosses it")
    from xmppspy.certs import CertificateError  # direct TLS needs a certificate at once

    try:
        context = setup.direct_context(name)
    except CertificateError as exc:
        fail(err, str(exc))
    context.set_alpn_protocols(["xmpp-client"])
    return DirectTls(
        listen,
        upstream,
        name,
        context,
        setup.direct_upstream_context or setup.upstream_context,
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

    Point your client at the --listen address (a host and port, so that it does not look up
    DNS SRV records); xmppspy connects each client to --upstream and shows both directions.
    STARTTLS is intercepted with a certificate from xmppspy's CA: make the client trust it
    (`xmppspy ca`), or use --tls strip for a client that cannot.

    Example: `xmppspy proxy --upstream xmpp.example.org --record session.jsonl`
    """
    out, err = consoles()
    selector = build_selector(err, filter_flags, filter_expression, with_replies=with_replies)
    listen_at = parse_address(listen, default_port=XMPP_PORT)
    upstream_at = parse_address(upstream, default_port=XMPP_PORT)
    warn_if_exposed(err, listen_at, "use this proxy and read what crosses it")
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
            fail(err, f"cannot create {record}: {exc.strerror or exc}")
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
        recorder = FilteredSink(
            writer, _recorded(build_filter(err, filter_flags, filter_expression))
        )
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
        fail(err, str(exc))
    except OSError as exc:
        fail(err, f"cannot listen on {listen_at}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        fail(err, "interrupted before the proxy was ready", 130)
    finally:
        if writer is not None:
            writer.close()
    if view is not None:
        try:
            view.unanswered(selector.unanswered())
        except ViewGone:
            silence_stdout()
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
                silence_stdout()
                err.print("xmppspy: stdout was closed: nothing more is shown; relaying goes on")
                return
