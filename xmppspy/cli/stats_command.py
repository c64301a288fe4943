"""``xmppspy stats``: what a capture holds, counted."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from xmppspy.capture import CaptureError, open_capture
from xmppspy.cli.common import (
    CaptureArgument,
    FilterFlags,
    ViewGone,
    build_selector,
    consoles,
    fail,
    silence_stdout,
    warn_incomplete,
    with_filters,
)
from xmppspy.stats import Stats
from xmppspy.stats_view import report_json, report_view


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
    out, err = consoles()
    selector = build_selector(err, filter_flags, filter_expression, with_replies=False)
    counts = Stats()
    try:
        with open_capture(capture) as reader:
            for record in reader:
                if selector(record) is not None:
                    counts.feed(record)
    except CaptureError as exc:
        fail(err, str(exc))
    warn_incomplete(err, capture, reader, "the figures cover everything before it")
    report = counts.report()
    try:
        if json_:
            sys.stdout.buffer.write(report_json(report))
            sys.stdout.buffer.flush()
        else:
            out.print(report_view(report))
    except (BrokenPipeError, ViewGone):
        silence_stdout()
