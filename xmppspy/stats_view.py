"""How ``xmppspy stats`` shows a ``Report``: rich tables per connection and in total, a histogram.

``report_json`` is the same numbers as one JSON document, for machines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime

import orjson
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from xmppspy.stats import Report, Summary

ARROWS = {"c2s": "C→S", "s2c": "S→C"}
TOP_NAMESPACES = 10
HISTOGRAM_ROWS = 20
"""At most this many bars: longer sessions get several seconds a bar."""
_EIGHTHS = " ▏▎▍▌▋▊▉"


def report_json(report: Report) -> bytes:
    """The whole report as one JSON document (times in seconds, sizes in bytes)."""
    return orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def duration(seconds: float | None) -> str:
    """A round trip for people: milliseconds below ten seconds."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds * 1000:.2f} ms"
    return f"{seconds:.1f} s"


def _table(title: str, names: list[str], numbers: list[str]) -> Table:
    """A table whose ``names`` columns are left-aligned and ``numbers`` columns right-aligned."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for name in names:
        table.add_column(name)
    for number in numbers:
        table.add_column(number, justify="right")
    return table


def _summary_tables(summary: Summary) -> Iterator[RenderableType]:
    if summary.conn is None:
        heading = "Total"
    else:
        heading = f"Connection {summary.conn}" + (f" ({summary.jid})" if summary.jid else "")
    yield Text(heading, style="bold")
    yield Text(
        f"{summary.stanzas} stanzas · wire bytes C→S {summary.c2s_bytes}, "
        f"S→C {summary.s2c_bytes} · parse errors {summary.parse_errors} · "
        f"opaque bytes {summary.opaque_bytes}"
    )

    kinds = _table(
        "Stanzas by kind, type and direction", ["kind", "type", "dir"], ["stanzas", "bytes"]
    )
    for row in summary.by_kind:
        kinds.add_row(row.kind, row.type or "-", ARROWS[row.dir], str(row.stanzas), str(row.bytes))
    yield Text("")
    yield kinds

    if summary.namespaces:
        shown = summary.namespaces[:TOP_NAMESPACES]
        more = len(summary.namespaces) - len(shown)
        title = "Top payload namespaces" + (f" ({more} more)" if more else "")
        namespaces = _table(title, ["namespace"], ["stanzas"])
        for count in shown:
            namespaces.add_row(count.namespace, str(count.stanzas))
        yield Text("")
        yield namespaces

    if summary.largest:
        largest = _table("Largest stanzas", ["conn", "dir", "kind", "id"], ["bytes"])
        for big in summary.largest:
            largest.add_row(big.conn, ARROWS[big.dir], big.kind, big.id or "-", str(big.bytes))
        yield Text("")
        yield largest

    if summary.latency:
        latency = _table(
            "IQ round trips by request namespace",
            ["namespace"],
            ["replies", "median", "p95", "max", "unanswered"],
        )
        for rtt in summary.latency:
            latency.add_row(
                rtt.namespace,
                str(rtt.replies),
                duration(rtt.median),
                duration(rtt.p95),
                duration(rtt.max),
                str(rtt.unanswered),
            )
        yield Text("")
        yield latency

    errors = [("stanza", e) for e in summary.stanza_errors]
    errors += [("stream", e) for e in summary.stream_errors]
    if errors:
        table = _table("Errors", ["error", "kind", "condition"], ["count"])
        for what, error in errors:
            table.add_row(what, error.kind, error.condition, str(error.count))
        yield Text("")
        yield table
    else:
        yield Text("")
        yield Text("No stanza or stream errors.", style="dim")


class Histogram:
    """Stanzas per second as horizontal bars of block characters, as wide as the terminal."""

    def __init__(self, per_second: tuple[int, ...], start: float | None) -> None:
        self.per_second = per_second
        self.start = start

    def buckets(self) -> tuple[int, list[int]]:
        """Seconds per bar, and the stanzas in each bar."""
        step = max(1, math.ceil(len(self.per_second) / HISTOGRAM_ROWS))
        counts = [sum(self.per_second[i : i + step]) for i in range(0, len(self.per_second), step)]
        return step, counts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        step, counts = self.buckets()
        unit = "second" if step == 1 else f"{step} seconds"
        began = ""
        if self.start is not None:
            began = datetime.fromtimestamp(self.start, UTC).strftime(" from %Y-%m-%d %H:%M:%S UTC")
        yield Text(f"Stanzas per {unit}{began}", style="bold")
        if not counts:
            yield Text("nothing recorded", style="dim")
            return
        label_width = len(f"+{(len(counts) - 1) * step}s")
        count_width = len(str(max(counts)))
        width = max(1, options.max_width - label_width - count_width - 2)
        peak = max(counts) or 1
        for index, count in enumerate(counts):
            eighths = round(count / peak * width * 8)
            bar = "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")
            label = f"+{index * step}s".rjust(label_width)
            yield Text(f"{label} {bar.ljust(width)} {str(count).rjust(count_width)}")


def report_view(report: Report) -> RenderableType:
    """Every connection's tables, then the totals and the histogram."""
    parts: list[RenderableType] = []
    for summary in report.connections:
        parts += [*_summary_tables(summary), Text("")]
    parts += [*_summary_tables(report.total), Text("")]
    parts.append(Histogram(report.per_second, report.start))
    return Group(*parts)
