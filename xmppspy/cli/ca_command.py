"""``xmppspy ca``: xmppspy's certificate authority, and how to trust it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from xmppspy.cli.common import consoles, fail


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

    _, err = consoles()
    try:
        authority = certs.CertificateAuthority.load_or_create(certs.default_home())
    except certs.CertificateError as exc:
        fail(err, str(exc))
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
            fail(err, f"cannot write {export}: {exc.strerror or exc}")
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
