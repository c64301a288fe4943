"""The command line: the only package that wires things together and creates consoles.

- ``__init__``: the typer ``app``, the ``version`` command, ``main()``, and the list of
  commands in the order ``--help`` shows them.
- ``common``: what several commands share: consoles, ``fail``, ``parse_address``, the filter
  options (``with_filters``), the JSON view, and what to do when stdout goes away.
- ``proxy_command``: ``xmppspy proxy``, with its TLS setup (``--tls``, ``--listen-tls``).
- ``replay_command``: ``xmppspy replay``, the view of a capture and ``--server`` client replay.
- ``stats_command``, ``serve_command``, ``ca_command``: ``xmppspy stats``, ``serve``, ``ca``.

A command module is named ``*_command`` so that it neither shadows its command function in this
package nor reads like the module one level up that does the work (``xmppspy.replay``,
``xmppspy.stats``, ``xmppspy.serve``). Command modules import ``common`` and never each other.

``xmppspy.certs`` (and so cryptography, about 12 MB) is imported only inside the functions that
need a certificate, never at start-up (docs/performance.md).
"""

from __future__ import annotations

import typer

from xmppspy import __version__
from xmppspy.cli.ca_command import ca
from xmppspy.cli.proxy_command import proxy
from xmppspy.cli.replay_command import replay
from xmppspy.cli.serve_command import serve
from xmppspy.cli.stats_command import stats

app = typer.Typer(
    name="xmppspy",
    help="A debugging proxy for XMPP: see, filter, record and replay every stanza of a session.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def version() -> None:
    """Print xmppspy's version."""
    print(f"xmppspy {__version__}")


# In the order that `xmppspy --help` lists them.
app.command()(proxy)
app.command()(replay)
app.command()(stats)
app.command()(serve)
app.command()(ca)
app.command()(version)


def main() -> None:
    app()
