"""xmppspy stats: exact numbers from sessions fed through a real Session, and the command on a capture."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from rich.console import Console
from streams import (
    AUTH,
    BIND_RESULT,
    BIND_SET,
    CLIENT_HEADER,
    CLOSE,
    FEATURES_1,
    FEATURES_2,
    LOGIN,
    LOGIN_C2S,
    LOGIN_S2C,
    MESSAGE_IN,
    MESSAGE_OUT,
    PING,
    PONG,
    PRESENCE,
    PRESENCE_ROMEO,
    PRESENCE_SELF,
    ROSTER_GET,
    ROSTER_RESULT,
    SERVER_HEADER_1,
    SM_ANSWER_C2S,
    SM_ANSWER_S2C,
    SM_ENABLE,
    SM_ENABLED,
    SM_REQUEST_C2S,
    SM_REQUEST_S2C,
    SUCCESS,
    XML_DECLARATION,
)
from test_capture import write
from typer.testing import CliRunner

from xmppspy.cli import app
from xmppspy.events import Connected, Direction, Record
from xmppspy.filters import make_filter
from xmppspy.selection import Selector
from xmppspy.session import Session
from xmppspy.stats import (
    ErrorCount,
    LargeStanza,
    Latency,
    NamespaceCount,
    Report,
    Stats,
    Summary,
)
from xmppspy.stats_view import Histogram, report_json, report_view

C2S, S2C = Direction.C2S, Direction.S2C
CAPTURE = Path(__file__).resolve().parent.parent / "captures" / "prosody-chat.jsonl"

# -- two connections, fed through a real Session ---------------------------------------------------


def ping(ident: str) -> bytes:
    return (
        f'<iq type="get" to="localhost" id="{ident}"><ping xmlns="urn:xmpp:ping" /></iq>'.encode()
    )


def pong(ident: str) -> bytes:
    return (
        f"<iq type='result' from='localhost' id='{ident}' to='juliet@localhost/balcony'/>".encode()
    )


DISCO_GET = (
    b'<iq type="get" to="romeo@localhost/orchard" id="d1">'
    b'<query xmlns="http://jabber.org/protocol/disco#info" /></iq>'
)
DISCO_ERROR = (
    b"<iq type='error' from='romeo@localhost/orchard' id='d1'>"
    b"<query xmlns='http://jabber.org/protocol/disco#info'/>"
    b"<error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>not here</text>"
    b"<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
)
MESSAGE_ERROR = (
    b"<message type='error' from='nobody@localhost' id='m1'>"
    b"<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    b"</message>"
)
STREAM_ERROR = (
    b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
    b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced by new connection</text>"
    b"</stream:error>"
)
BAD = b"<message><!-- x --></message>"
AFTER_BAD = b"<presence/>"

C1 = [(100 + 0.25 * index, direction, data) for index, (direction, data) in enumerate(LOGIN)]
"""The whole plaintext login, a write every quarter second from t=100 (to 107.75)."""

C2 = [
    (100.0, C2S, CLIENT_HEADER),
    (100.0, S2C, XML_DECLARATION + SERVER_HEADER_1),
    (101.0, C2S, ping("p1")),
    (101.125, S2C, pong("p1")),
    (101.5, C2S, ping("p2")),
    (101.75, S2C, pong("p2")),
    (102.0, C2S, ping("p3")),
    (102.5, S2C, pong("p3")),
    (103.0, C2S, ping("p4")),
    (103.5, C2S, ping("p5")),
    (104.0, S2C, pong("p4")),
    (104.5, C2S, DISCO_GET),
    (104.75, S2C, DISCO_ERROR),
    (105.0, S2C, MESSAGE_ERROR),
    (106.0, C2S, ping("p6")),
    (107.5, S2C, pong("p5")),
    (107.5, S2C, STREAM_ERROR + CLOSE),
    (108.0, C2S, BAD),
    (108.5, C2S, AFTER_BAD),
]
"""Pings answered in 0.125, 0.25, 0.5, 1 and 4 s and one never; an IQ, a message and a stream
error; then the client sends a comment (a parse error) and more bytes (opaque)."""


def feed(conn: str, writes: list[tuple[float, Direction, bytes]]) -> list[Record]:
    # show_secrets: the bytes counted are then exactly the bytes written above
    session = Session(show_secrets=True)
    records = [Record(writes[0][0], conn, Connected("127.0.0.1:4000", "localhost:5222"))]
    for t, direction, data in writes:
        records += [Record(t, conn, event) for event in session.feed(direction, data)]
    return records


def records() -> list[Record]:
    return sorted(feed("c1", C1) + feed("c2", C2), key=lambda record: record.t)


def stats_of(records: Iterable[Record], *flags: tuple[str, bool, str], expr: str = "") -> Report:
    selector = Selector(make_filter(flags, expr or None))
    stats = Stats()
    for record in records:
        if selector(record) is not None:
            stats.feed(record)
    return stats.report()


def kinds(summary: Summary) -> dict[tuple[str, str | None, str], tuple[int, int]]:
    return {(k.kind, k.type, k.dir): (k.stanzas, k.bytes) for k in summary.by_kind}


# -- aggregation ----------------------------------------------------------------------------------


def test_a_login_counted_by_kind_type_and_direction() -> None:
    report = stats_of(records())
    c1, c2 = report.connections
    assert (c1.conn, c1.jid, c2.conn, c2.jid) == ("c1", "juliet@localhost/balcony", "c2", None)
    assert kinds(c1) == {
        ("message", "chat", "c2s"): (1, len(MESSAGE_OUT)),
        ("message", "chat", "s2c"): (1, len(MESSAGE_IN)),
        # a presence without type is available, as for the filters
        ("presence", "available", "c2s"): (1, len(PRESENCE)),
        ("presence", "available", "s2c"): (2, len(PRESENCE_SELF) + len(PRESENCE_ROMEO)),
        ("iq", "get", "c2s"): (2, len(ROSTER_GET) + len(PING)),
        ("iq", "result", "s2c"): (3, len(BIND_RESULT) + len(ROSTER_RESULT) + len(PONG)),
        ("iq", "set", "c2s"): (1, len(BIND_SET)),
        ("stream:features", None, "s2c"): (2, len(FEATURES_1) + len(FEATURES_2)),
        ("sasl:auth", None, "c2s"): (1, len(AUTH)),
        ("sasl:success", None, "s2c"): (1, len(SUCCESS)),
        ("sm:enable", None, "c2s"): (1, len(SM_ENABLE)),
        ("sm:enabled", None, "s2c"): (1, len(SM_ENABLED)),
        ("sm:r", None, "c2s"): (1, len(SM_REQUEST_C2S)),
        ("sm:r", None, "s2c"): (1, len(SM_REQUEST_S2C)),
        ("sm:a", None, "c2s"): (1, len(SM_ANSWER_C2S)),
        ("sm:a", None, "s2c"): (1, len(SM_ANSWER_S2C)),
    }
    # the order: kinds as in the Kind enum, then type, then C→S before S→C
    assert [k.kind for k in c1.by_kind][:4] == ["message", "message", "presence", "presence"]
    assert c1.stanzas == 21
    # every byte of both directions: headers, stanzas, keepalives, closes
    assert (c1.c2s_bytes, c1.s2c_bytes) == (len(LOGIN_C2S), len(LOGIN_S2C))
    assert (c1.parse_errors, c1.opaque_bytes) == (0, 0)
    assert c1.stanza_errors == c1.stream_errors == ()


def test_errors_parse_errors_and_opaque_bytes() -> None:
    report = stats_of(records())
    c2 = report.connections[1]
    assert c2.stanzas == 15
    assert kinds(c2) == {
        ("message", "error", "s2c"): (1, len(MESSAGE_ERROR)),
        ("iq", "get", "c2s"): (7, 6 * len(ping("p1")) + len(DISCO_GET)),
        ("iq", "result", "s2c"): (5, 5 * len(pong("p1"))),
        ("iq", "error", "s2c"): (1, len(DISCO_ERROR)),
        ("stream:error", None, "s2c"): (1, len(STREAM_ERROR)),
    }
    # the condition, not the <text/> before it
    assert c2.stanza_errors == (
        ErrorCount("iq", "service-unavailable", 1),
        ErrorCount("message", "item-not-found", 1),
    )
    assert c2.stream_errors == (ErrorCount("stream:error", "conflict", 1),)
    assert (c2.parse_errors, c2.opaque_bytes) == (1, len(AFTER_BAD))
    c2s = b"".join(data for _, direction, data in C2 if direction is C2S)
    s2c = b"".join(data for _, direction, data in C2 if direction is S2C)
    assert (c2.c2s_bytes, c2.s2c_bytes) == (len(c2s), len(s2c))

    total = report.total
    assert total.conn is None and total.stanzas == 36
    assert (total.c2s_bytes, total.s2c_bytes) == (
        len(LOGIN_C2S) + len(c2s),
        len(LOGIN_S2C) + len(s2c),
    )
    assert total.stanza_errors == c2.stanza_errors and total.stream_errors == c2.stream_errors
    assert (total.parse_errors, total.opaque_bytes) == (1, len(AFTER_BAD))
    assert kinds(total)["iq", "get", "c2s"] == (
        9,
        len(ROSTER_GET) + len(PING) + 6 * len(ping("p1")) + len(DISCO_GET),
    )


def test_iq_round_trips_by_request_namespace() -> None:
    report = stats_of(records())
    c1, c2 = report.connections
    assert c1.latency == (
        Latency("jabber:iq:roster", 1, 0.25, 0.25, 0.25, 0),
        Latency("urn:ietf:params:xml:ns:xmpp-bind", 1, 0.25, 0.25, 0.25, 0),
        Latency("urn:xmpp:ping", 1, 0.25, 0.25, 0.25, 0),
    )
    assert c2.latency == (
        # the error answers the request too
        Latency("http://jabber.org/protocol/disco#info", 1, 0.25, 0.25, 0.25, 0),
        # 0.125, 0.25, 0.5, 1, 4: p95 is the nearest rank, ceil(0.95 * 5) = the 5th
        Latency("urn:xmpp:ping", 5, 0.5, 4.0, 4.0, 1),
    )
    # the total pools the round trips, it does not average the connections' medians
    assert report.total.latency[-1] == Latency("urn:xmpp:ping", 6, 0.375, 4.0, 4.0, 1)
    assert [rtt.namespace for rtt in report.total.latency] == [
        "http://jabber.org/protocol/disco#info",
        "jabber:iq:roster",
        "urn:ietf:params:xml:ns:xmpp-bind",
        "urn:xmpp:ping",
    ]


def test_round_trips_pair_by_connection_and_id() -> None:
    # the same id on two connections, and a "reply" from the side that asked: no pairs
    c1 = feed("c1", [(0.0, C2S, CLIENT_HEADER), (1.0, C2S, ping("x"))])
    c2 = feed("c2", [(0.0, S2C, XML_DECLARATION + SERVER_HEADER_1), (2.0, S2C, pong("x"))])
    c3 = feed("c3", [(0.0, C2S, CLIENT_HEADER), (3.0, C2S, ping("y")), (4.0, C2S, pong("y"))])
    report = stats_of(sorted(c1 + c2 + c3, key=lambda record: record.t))
    assert report.total.latency == (Latency("urn:xmpp:ping", 0, None, None, None, 2),)


def test_payload_namespaces_counted_once_per_stanza() -> None:
    report = stats_of(records())
    c1, c2 = report.connections
    assert c1.namespaces == tuple(
        NamespaceCount(namespace, count)
        for namespace, count in [
            ("urn:ietf:params:xml:ns:xmpp-bind", 3),  # features, set, result
            ("http://jabber.org/protocol/caps", 2),  # features, Romeo's presence
            ("http://jabber.org/protocol/chatstates", 2),
            ("jabber:iq:roster", 2),
            ("urn:ietf:params:xml:ns:xmpp-sasl", 1),
            ("urn:ietf:params:xml:ns:xmpp-session", 1),
            ("urn:ietf:params:xml:ns:xmpp-tls", 1),
            ("urn:xmpp:csi:0", 1),
            ("urn:xmpp:features:rosterver", 1),
            ("urn:xmpp:ping", 1),
            ("urn:xmpp:sm:2", 1),
            ("urn:xmpp:sm:3", 1),  # in the features; <enable/> and <r/> have no children
        ]
    )
    # <body/>, <show/> and <error/> are in jabber:client: no payload
    assert c2.namespaces == (
        NamespaceCount("urn:xmpp:ping", 6),
        NamespaceCount("http://jabber.org/protocol/disco#info", 2),
        NamespaceCount("urn:ietf:params:xml:ns:xmpp-streams", 1),
    )


def test_largest_stanzas() -> None:
    report = stats_of(records())
    c1 = report.connections[0]
    assert c1.largest == (
        LargeStanza(len(FEATURES_2), 102.25, "c1", "s2c", "stream:features", None),
        LargeStanza(
            len(MESSAGE_IN), 104.75, "c1", "s2c", "message", "f3be5bd0-1f75-47a0-b564-5858d5711ca1"
        ),
        LargeStanza(
            len(ROSTER_RESULT), 103.75, "c1", "s2c", "iq", "2d82b44bc9904d4fba24fb40d0a410de"
        ),
        LargeStanza(
            len(MESSAGE_OUT), 105.0, "c1", "c2s", "message", "aa9fb75a3f64470cba734ba082ccb644"
        ),
        LargeStanza(len(PRESENCE_ROMEO), 104.5, "c1", "s2c", "presence", None),
    )
    assert [big.bytes for big in c1.largest] == [446, 350, 321, 227, 224]
    # in total, c2's IQ error (275 bytes) comes fourth
    assert report.total.largest == (
        *c1.largest[:3],
        LargeStanza(len(DISCO_ERROR), 104.75, "c2", "s2c", "iq", "d1"),
        c1.largest[3],
    )
    assert len(DISCO_ERROR) == 275
    c2 = report.connections[1]
    assert [(big.bytes, big.id) for big in c2.largest] == [
        (len(DISCO_ERROR), "d1"),
        (len(STREAM_ERROR), None),
        (len(MESSAGE_ERROR), "m1"),
        (len(DISCO_GET), "d1"),
        (len(pong("p1")), "p1"),  # five pongs of one size: the first one
    ]


def test_stanzas_per_second_from_first_to_last_record() -> None:
    report = stats_of(records())
    assert (report.start, report.end) == (100.0, 108.5)
    # c1: [1, 2, 3, 4, 4, 4, 2, 1], c2: [0, 4, 2, 2, 3, 1, 1, 2]; the last second has no stanza
    assert report.per_second == (1, 6, 5, 6, 7, 5, 3, 3, 0)
    assert sum(report.per_second) == report.total.stanzas


def test_nothing_fed_is_an_empty_report() -> None:
    report = Stats().report()
    assert report.connections == () and report.per_second == ()
    assert report.start is None and report.total.stanzas == 0 and report.total.by_kind == ()


# -- filters ---------------------------------------------------------------------------------------


def test_filters_decide_what_is_counted() -> None:
    report = stats_of(records(), ("kind", False, "iq"))
    total = report.total
    assert {key[0] for key in kinds(total)} == {"iq"}
    assert total.stanzas == 6 + 13  # c1: bind, roster, ping and replies; c2: 7 gets, 6 replies
    # only the selected stanzas' bytes, and the histogram starts at the first of them
    requests = [BIND_SET, ROSTER_GET, PING, *(ping(f"p{n}") for n in range(1, 7)), DISCO_GET]
    assert total.c2s_bytes == sum(len(request) for request in requests)
    assert report.start == 101.0 and report.end == 107.5
    # from 101: c2's pings, c1's bind at 102.5, roster at 103.5, ping at 106.75
    assert report.per_second == (4, 4, 4, 3, 0, 2, 2)
    assert total.latency[-1] == Latency("urn:xmpp:ping", 6, 0.375, 4.0, 4.0, 1)
    assert total.stanza_errors == (ErrorCount("iq", "service-unavailable", 1),)
    assert total.stream_errors == () and total.parse_errors == 0

    only_c2 = stats_of(records(), expr="conn:c2 and (type:error or stream:error)")
    assert [summary.conn for summary in only_c2.connections] == ["c2"]
    assert only_c2.total.stanzas == 3
    assert len(only_c2.total.stanza_errors) == 2 and len(only_c2.total.stream_errors) == 1
    # a round trip needs both halves selected: requests alone are unanswered
    gets = stats_of(records(), ("type", False, "get"))
    assert gets.total.latency[-1] == Latency("urn:xmpp:ping", 0, None, None, None, 7)


# -- the view -------------------------------------------------------------------------------------


def render(report: Report, width: int) -> list[str]:
    console = Console(width=width, no_color=True, highlight=False, record=True)
    with console.capture() as captured:
        console.print(report_view(report))
    return captured.get().splitlines()


def test_view_fits_the_width_and_draws_the_histogram() -> None:
    report = stats_of(records())
    for width in (60, 100, 160):
        lines = render(report, width)
        assert max(len(line) for line in lines) <= width
        bars = [line for line in lines if re.match(r"\s*\+\d+s ", line)]
        assert [int(line.split()[-1]) for line in bars] == [1, 6, 5, 6, 7, 5, 3, 3, 0]
        # the busiest second fills the width; the others are in proportion
        peak = next(line for line in bars if line.startswith("+4s"))
        assert len(peak) == width and peak.count("█") == width - len("+4s  7")
    text = "\n".join(render(report, 100))
    assert "Stanzas per second from 1970-01-01 00:01:40 UTC" in text
    assert "Connection c1 (juliet@localhost/balcony)" in text


def test_long_sessions_get_several_seconds_a_bar() -> None:
    step, counts = Histogram(tuple(range(45)), 0.0).buckets()
    assert (step, len(counts)) == (3, 15)
    assert counts[:2] == [0 + 1 + 2, 3 + 4 + 5] and counts[-1] == 42 + 43 + 44
    console = Console(width=50, no_color=True)
    with console.capture() as captured:
        console.print(Histogram((8, 0, 1), None))
    # 50 columns: 3 for the label, 1 for the count, 2 spaces: 44 for the bars
    assert captured.get().splitlines() == [
        "Stanzas per second",
        "+0s " + "█" * 44 + " 8",
        "+1s " + " " * 44 + " 0",
        "+2s " + "█" * 5 + "▌" + " " * 38 + " 1",  # 44 / 8 = 5.5 blocks
    ]


def test_json_is_the_report() -> None:
    report = stats_of(records())
    document = orjson.loads(report_json(report))
    assert document["total"]["stanzas"] == 36
    assert document["per_second"] == [1, 6, 5, 6, 7, 5, 3, 3, 0]
    assert document["connections"][1]["latency"][1] == {
        "namespace": "urn:xmpp:ping",
        "replies": 5,
        "median": 0.5,
        "p95": 4.0,
        "max": 4.0,
        "unanswered": 1,
    }
    assert document["connections"][1]["stream_errors"] == [
        {"kind": "stream:error", "condition": "conflict", "count": 1}
    ]


# -- the command on a real capture ----------------------------------------------------------------

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["stats", *args], env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def capture_lines() -> list[dict[str, object]]:
    return [orjson.loads(line) for line in CAPTURE.read_bytes().splitlines()[1:]]


def wire_bytes(conn: str | None, direction: str) -> int:
    """Counted straight from the capture's JSON, to check the command's figures."""
    return sum(
        len(str(line["raw"]).encode())
        for line in capture_lines()
        if "raw" in line and line["dir"] == direction and conn in (None, line["conn"])
    )


def sections(out: str) -> dict[str, list[str]]:
    """The output's lines, whitespace collapsed, under 'c1', 'c2' and 'total'."""
    found: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        words = " ".join(line.split())
        if words.startswith("Connection "):
            current = words.split()[1]
        elif words == "Total":
            current = "total"
        elif words.startswith("Stanzas per second"):
            current = "histogram"
        found.setdefault(current, []).append(words)
    return found


def test_stats_on_the_prosody_capture() -> None:
    code, out, err = run(str(CAPTURE))
    assert code == 0 and err == ""
    parts = sections(out)
    c1, c2, total = parts["c1"], parts["c2"], parts["total"]
    assert c1[0] == "Connection c1 (alice@example.test/xmppspy-alice)"
    assert c2[0] == "Connection c2 (bob@example.test/xmppspy-bob)"
    assert (wire_bytes("c1", "c2s"), wire_bytes("c1", "s2c")) == (1132, 1903)
    assert (wire_bytes("c2", "c2s"), wire_bytes("c2", "s2c")) == (1010, 1796)
    assert (wire_bytes(None, "c2s"), wire_bytes(None, "s2c")) == (2142, 3699)
    assert "16 stanzas · wire bytes C→S 1132, S→C 1903 · parse errors 0 · opaque bytes 0" in c1
    assert "14 stanzas · wire bytes C→S 1010, S→C 1796 · parse errors 0 · opaque bytes 0" in c2
    assert "30 stanzas · wire bytes C→S 2142, S→C 3699 · parse errors 0 · opaque bytes 0" in total
    for row in [
        "message chat C→S 2 327",  # 157 + 170
        "message chat S→C 2 387",  # 185 + 202
        "presence available C→S 1 64",
        "iq get C→S 2 205",  # roster 99, ping 106
        "iq result S→C 3 413",  # bind 158, roster 140, pong 115
        "iq set C→S 1 146",
        "stream:features - S→C 2 541",
        "sasl:auth - C→S 1 112",  # redacted in the capture: the bytes recorded
    ]:
        assert row in c1
    for row in ["message chat S→C 2 407", "iq get C→S 1 99", "iq result S→C 2 290"]:
        assert row in c2
    for row in [
        "message chat C→S 4 642",
        "message chat S→C 4 794",
        "iq get C→S 3 304",
        "iq result S→C 5 703",
        "stream:features - S→C 4 1082",
        "urn:ietf:params:xml:ns:xmpp-bind 6",
        "jabber:iq:roster 4",
        "urn:xmpp:ping 1",
        "c1 S→C stream:features - 378",
        "c2 S→C stream:features - 378",
        "c2 S→C message 7cf4a934a4a8457da5d04150203fdf11 210",
        "No stanza or stream errors.",
    ]:
        assert row in total
    assert "urn:xmpp:ping 1 0.80 ms 0.80 ms 0.80 ms 0" in c1
    assert "urn:xmpp:ping" not in " ".join(c2)  # only Alice pinged
    # roster: 0.2262 ms on c1 and 0.6086 ms on c2
    assert "jabber:iq:roster 2 0.42 ms 0.61 ms 0.61 ms 0" in total
    assert "urn:ietf:params:xml:ns:xmpp-bind 2 1.25 ms 1.37 ms 1.37 ms 0" in total
    # the whole session took 22 ms: one bar
    histogram = parts["histogram"]
    assert histogram[0] == "Stanzas per second from 2026-11-24 23:26:06 UTC"
    assert histogram[1].startswith("+0s █") and histogram[1].endswith(" 30")
    assert max(len(line) for line in out.splitlines()) <= 100


def test_stats_json_on_the_prosody_capture() -> None:
    code, out, _ = run(str(CAPTURE), "--json")
    assert code == 0
    document = orjson.loads(out)
    assert [c["conn"] for c in document["connections"]] == ["c1", "c2"]
    assert [(c["stanzas"], c["c2s_bytes"], c["s2c_bytes"]) for c in document["connections"]] == [
        (16, 1132, 1903),
        (14, 1010, 1796),
    ]
    total = document["total"]
    assert (total["stanzas"], total["c2s_bytes"], total["s2c_bytes"]) == (30, 2142, 3699)
    stanzas = [line for line in capture_lines() if line["event"] == "stanza"]
    assert sum(k["bytes"] for k in total["by_kind"]) == sum(
        len(str(line["raw"]).encode()) for line in stanzas
    )
    t = {
        (line["conn"], line.get("id"), line.get("type")): float(str(line["t"])) for line in stanzas
    }
    c1_roster = t["c1", "0987123b20e14b0bbc5fff3c38ab5c8d", "result"]
    c1_roster -= t["c1", "0987123b20e14b0bbc5fff3c38ab5c8d", "get"]
    c2_roster = t["c2", "6210d246d80241479e3b76085cd82870", "result"]
    c2_roster -= t["c2", "6210d246d80241479e3b76085cd82870", "get"]
    roster = next(rtt for rtt in total["latency"] if rtt["namespace"] == "jabber:iq:roster")
    assert roster == {
        "namespace": "jabber:iq:roster",
        "replies": 2,
        "median": (c1_roster + c2_roster) / 2,
        "p95": max(c1_roster, c2_roster),
        "max": max(c1_roster, c2_roster),
        "unanswered": 0,
    }
    assert total["stanza_errors"] == total["stream_errors"] == []
    assert document["per_second"] == [30]
    assert math.isclose(document["end"] - document["start"], 0.0219036, abs_tol=1e-6)


def test_stats_takes_the_same_filters() -> None:
    code, out, _ = run(str(CAPTURE), "--json", "--kind", "message", "--conn", "c2")
    assert code == 0
    document = orjson.loads(out)
    assert [c["conn"] for c in document["connections"]] == ["c2"]
    assert document["total"]["by_kind"] == [
        {"kind": "message", "type": "chat", "dir": "c2s", "stanzas": 2, "bytes": 315},
        {"kind": "message", "type": "chat", "dir": "s2c", "stanzas": 2, "bytes": 407},
    ]
    code, out, _ = run(str(CAPTURE), "-f", "iq and ns:jabber:iq:roster")
    assert code == 0
    assert "jabber:iq:roster 2 0.42 ms 0.61 ms 0.61 ms 0" in sections(out)["total"]


def test_a_bad_filter_exits_2() -> None:
    code, out, err = run(str(CAPTURE), "--kind", "mesage")
    assert code == 2 and out == ""
    assert err.startswith("xmppspy: unknown kind 'mesage' (did you mean 'message'?)")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty: not an xmppspy capture"),
        (
            b'{"format": "xmppspy-capture", "version": 99, "created": ""}\n',
            "is capture format version 99; this xmppspy reads version 1",
        ),
        (
            b"# xmppspy\n\nA debugging proxy\n",
            "is not an xmppspy capture (its first line is not JSON)",
        ),
        (
            b'{"t": 1.0, "conn": "c1", "event": "connect"}\n',
            'is not an xmppspy capture (no "format": "xmppspy-capture" header)',
        ),
    ],
    ids=["empty", "wrong-version", "text", "no-header"],
)
def test_bad_files_give_one_line_and_exit_1(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    for args in ([str(path)], [str(path), "--json"]):
        code, out, err = run(*args)
        assert (code, out) == (1, "")
        assert err == f"xmppspy: {path} {reason}\n"


def test_a_cut_capture_is_counted_up_to_the_cut_and_says_so(tmp_path: Path) -> None:
    """As replay does: a proxy killed mid-write leaves a capture worth counting."""
    path = tmp_path / "cut.jsonl"
    path.write_bytes(CAPTURE.read_bytes()[:-40])  # killed in the middle of the last line
    code, out, err = run(str(path), "--json")
    assert code == 0
    assert orjson.loads(out)["total"]["stanzas"] > 0
    assert "ends in a cut line" in err and "the figures cover everything before it" in err


def test_a_missing_file_and_a_bad_record(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    code, _, err = run(str(missing))
    assert (code, err) == (1, f"xmppspy: cannot open {missing}: No such file or directory\n")
    path = tmp_path / "bad-record.jsonl"
    write(path, feed("c1", C1)[:3])
    path.write_bytes(path.read_bytes() + b'{"t": 1.0, "conn": "c1", "event": "nonsense"}\n')
    code, out, err = run(str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"xmppspy: {path}:5: not a capture record") and err.count("\n") == 1
