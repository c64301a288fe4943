"""What several commands share: consoles, failing, addresses, the filter options, the JSON view."""

from __future__ import annotations

import functools
import inspect
import ipaddress
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from xmppspy.capture import CaptureReader, encode_record
from xmppspy.events import Record
from xmppspy.filters import ATOMS, Filter, FilterError, make_filter
from xmppspy.selection import Selector, Shown

XMPP_PORT = 5222


class ViewGone(Exception):
    """stdout was closed (the pager quit, ``| head`` had enough): stop showing, keep relaying."""


class ViewConsole(Console):
    """A console whose reader may go away: rich's default would exit the whole proxy."""

    def on_broken_pipe(self) -> None:
        raise ViewGone


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


def warn_if_exposed(err: Console, address: Address, what: str) -> None:
    """Say loudly, before anything else, that a listener is reachable beyond this machine."""
    if not _is_loopback(address.host):
        err.print(
            f"[bold yellow]xmppspy: listening on {address}, not a loopback address: anyone who "
            f"can reach it can {what}.[/]"
        )


def consoles() -> tuple[Console, Console]:
    """A command's stdout (a ``ViewConsole``) and stderr; no colour when ``NO_COLOR`` is set."""
    no_color = bool(os.environ.get("NO_COLOR"))
    out = ViewConsole(no_color=no_color or None, highlight=False, soft_wrap=False)
    err = Console(stderr=True, no_color=no_color or None, highlight=False, soft_wrap=True)
    return out, err


def fail(err: Console, message: str, code: int = 1) -> NoReturn:
    """Say ``xmppspy: MESSAGE`` on stderr and exit with ``code``: no traceback for a mistake."""
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


def build_selector(
    err: Console, flags: FilterFlags, expression: str | None, *, with_replies: bool
) -> Selector:
    """``build_filter``'s filter, pairing IQ replies when ``with_replies``."""
    return Selector(build_filter(err, flags, expression), with_replies=with_replies)


def build_filter(err: Console, flags: FilterFlags, expression: str | None) -> Filter:
    """The filter of the filter options and ``-f``; a mistake in them exits 2, saying what."""
    try:
        return make_filter(flags, expression)
    except FilterError as exc:
        fail(err, str(exc), 2)


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


def warn_incomplete(err: Console, capture: Path, reader: CaptureReader, covered: str) -> None:
    """A capture with holes or a cut end says so, whatever the filters showed; ``covered``
    says what the command's output covers then."""
    name = escape(str(capture))
    if reader.lost:
        err.print(
            f"[yellow]xmppspy: {name} lacks {reader.lost} events the proxy could not write "
            "(a full disk); a notice in the capture marks each gap[/]"
        )
    if reader.truncated:
        err.print(
            f"[yellow]xmppspy: {name} ends in a cut line (the proxy was stopped while "
            f"writing); {covered}[/]"
        )


def silence_stdout() -> None:
    """Point stdout at /dev/null so that nothing (not even interpreter exit) writes to the pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
