"""``xmppspy serve``: a mock server played from a capture (xmppspy/serve.py does the work)."""

from __future__ import annotations

from typing import Annotated

import trio
import typer

from xmppspy import __version__
from xmppspy.capture import CaptureError
from xmppspy.cli.common import (
    XMPP_PORT,
    CaptureArgument,
    RawOption,
    consoles,
    fail,
    parse_address,
    warn_if_exposed,
)


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

    out, err = consoles()
    listen_at = parse_address(listen, default_port=XMPP_PORT)
    try:
        scripts = mock_serve.load_scripts(capture, conn)
    except (CaptureError, ScriptError) as exc:
        fail(err, str(exc))
    warn_if_exposed(err, listen_at, "use this mock server")
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
        fail(err, f"cannot listen on {listen_at}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        fail(err, "interrupted before the mock server was ready", 130)
    for played in service.played:
        err.print(played.summary(), highlight=False, markup=False)
    if strict and any(played.mock.departure for played in service.played):
        raise typer.Exit(1)
