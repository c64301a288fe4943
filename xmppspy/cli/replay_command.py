"""``xmppspy replay``: a capture shown again, or one connection replayed as a client."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import trio
import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from xmppspy.capture import CaptureError, Pacer, open_capture
from xmppspy.cli.common import (
    XMPP_PORT,
    CaptureArgument,
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
    warn_incomplete,
    with_filters,
)
from xmppspy.events import Bound, Record
from xmppspy.filters import Filter
from xmppspy.render import View
from xmppspy.selection import Shown


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
        fail(err, f"--pace {pace!r}: write original, fast, or how many times faster (2, 0.5)", 2)
    return Pacer(speed)


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
    out, err = consoles()
    pacer = _pacer(err, pace)
    if to is not None:
        keep = build_filter(err, filter_flags, filter_expression)
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
    selector = build_selector(err, filter_flags, filter_expression, with_replies=with_replies)
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
        fail(err, str(exc))
    except ViewGone:
        silence_stdout()
        raise typer.Exit(0) from None
    warn_incomplete(err, capture, reader, "everything before it was shown")


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
        fail(
            err, "--server needs --login and --password (or XMPPSPY_PASSWORD in the environment)", 2
        )
    sasl = security.sasl.upper() if security.sasl is not None else None
    if sasl is not None and sasl not in MECHANISMS:
        fail(err, f"--sasl {security.sasl}: choose one of {', '.join(MECHANISMS)}", 2)
    if security.insecure and security.ca is not None:
        fail(err, "--server-ca and --server-insecure exclude each other", 2)
    address = parse_address(to, default_port=XMPP_PORT)
    try:
        context = tls_context(security.ca, insecure=security.insecure)
        extra = parse_maps(maps)
        with open_capture(capture) as reader:
            records = list(reader)
        plan = make_plan(records, keep)
        stream = ClientStream(jid, password, resource=plan.resource, mechanism=sasl)
    except (CaptureError, ReplayError, ClientError) as exc:
        fail(err, str(exc), 2 if isinstance(exc, ReplayError) and "--map" in str(exc) else 1)
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
        fail(err, str(exc))
    except KeyboardInterrupt:
        fail(err, "interrupted", 130)
    except ViewGone:
        silence_stdout()
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
        silence_stdout()
    raise typer.Exit(0 if all_match(outcomes) else 1)
