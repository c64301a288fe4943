"""End to end: real slixmpp clients, through the real ``xmppspy proxy``, to a real Prosody."""

from __future__ import annotations

import base64
import functools
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import trio
from support.clients import ALICE_TO_BOB, BOB_TO_ALICE, LARGE_BODY, run_chat_scenario
from support.prosody import ProsodyServer
from support.proxy import ProxyProcess, Tap

from xmppspy.capture import open_capture
from xmppspy.events import Bound, Direction, Kind, Record, Stanza

pytestmark = pytest.mark.e2e

BODY = "{jabber:client}body"


async def chat_through_proxy(
    prosody: ProsodyServer, workdir: Path, *args: str, upstream_port: int | None = None
) -> ProxyProcess:
    """Run the scenario through ``xmppspy proxy ARGS`` (recording to workdir/session.jsonl)."""
    upstream = f"{prosody.host}:{upstream_port or prosody.c2s_port}"
    proxy = ProxyProcess(workdir, upstream, ("--record", str(workdir / "session.jsonl"), *args))
    proxy.start()
    try:
        result = await trio.to_thread.run_sync(
            functools.partial(
                run_chat_scenario, "127.0.0.1", proxy.port, prosody.domain, prosody.users
            )
        )
        result.assert_ok()
        assert proxy.stop() == 0, proxy.stderr()
    finally:
        proxy.kill()
    return proxy


def read(path: Path) -> list[Record]:
    with open_capture(path) as reader:
        records = list(reader)
    assert not reader.truncated
    return records


def bodies(records: list[Record], direction: Direction, conn: str) -> list[str]:
    return [
        r.event.element.findtext(BODY) or ""
        for r in records
        if r.conn == conn
        and isinstance(r.event, Stanza)
        and r.event.kind is Kind.MESSAGE
        and r.event.dir is direction
        and r.event.element.find(BODY) is not None
    ]


async def test_a_chat_through_the_proxy_is_delivered_and_recorded_byte_exact(
    prosody: ProsodyServer, tmp_path: Path
) -> None:
    tap = Tap(prosody.c2s_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(tap.serve)
        proxy = await chat_through_proxy(
            prosody, tmp_path, "--show-secrets", upstream_port=tap.port
        )
        nursery.cancel_scope.cancel()

    records = read(tmp_path / "session.jsonl")
    # Every byte relayed, per connection and direction, is in the capture, exactly.
    wire: dict[str, dict[Direction, bytes]] = defaultdict(lambda: {d: b"" for d in Direction})
    for r in records:
        raw = getattr(r.event, "raw", None)
        if raw is not None:
            wire[r.conn][r.event.dir] += raw  # type: ignore[union-attr]
    tapped_bytes = sorted((bytes(c.c2s), bytes(c.s2c)) for c in tap.connections)
    recorded_bytes = sorted((w[Direction.C2S], w[Direction.S2C]) for w in wire.values())
    assert len(tapped_bytes) == 2
    assert recorded_bytes == tapped_bytes

    # Each connection is labelled with its bound JID, and carries its side of the chat.
    jids = {r.conn: r.event.jid for r in records if isinstance(r.event, Bound)}
    conn = {jid.split("@")[0]: c for c, jid in jids.items()}
    assert set(conn) == {"alice", "bob"}
    assert bodies(records, Direction.C2S, conn["alice"]) == list(ALICE_TO_BOB)
    assert bodies(records, Direction.S2C, conn["bob"]) == list(ALICE_TO_BOB)
    assert bodies(records, Direction.C2S, conn["bob"]) == list(BOB_TO_ALICE)
    assert bodies(records, Direction.S2C, conn["alice"]) == list(BOB_TO_ALICE)
    assert LARGE_BODY in bodies(records, Direction.S2C, conn["bob"])

    # Login, roster, presence and the ping are all there, in the right direction.
    stanzas = [r.event for r in records if isinstance(r.event, Stanza)]
    kinds = {(s.dir, s.kind) for s in stanzas}
    for expected in [
        (Direction.S2C, Kind.FEATURES),
        (Direction.C2S, Kind.SASL_AUTH),
        (Direction.S2C, Kind.SASL_SUCCESS),
        (Direction.C2S, Kind.PRESENCE),
        (Direction.S2C, Kind.PRESENCE),
    ]:
        assert expected in kinds
    roster = [s for s in stanzas if s.child == "{jabber:iq:roster}query" and s.type == "get"]
    assert len(roster) == 2
    (ping,) = [s for s in stanzas if s.child == "{urn:xmpp:ping}ping" and s.dir is Direction.C2S]
    assert any(s.id == ping.id and s.type == "result" and s.dir is Direction.S2C for s in stanzas)

    # The live view showed the session, and the exit summary names both connections.
    out = proxy.stdout()
    assert "bound as alice@example.test/" in out and "bound as bob@example.test/" in out
    assert out.count("C→S message") == len(ALICE_TO_BOB) + len(BOB_TO_ALICE)
    assert "closed alice@example.test/" in proxy.stderr()
    assert "closed bob@example.test/" in proxy.stderr()


async def test_replay_kind_message_shows_exactly_the_messages(
    prosody: ProsodyServer, tmp_path: Path
) -> None:
    await chat_through_proxy(prosody, tmp_path, "--quiet")
    capture = tmp_path / "session.jsonl"
    replay = subprocess.run(
        [sys.executable, "-m", "xmppspy", "replay", str(capture), "--kind", "message", "--json"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    lines = [orjson.loads(line) for line in replay.stdout.splitlines()]
    assert {line["kind"] for line in lines} == {"message"}
    messages = [
        r for r in read(capture) if isinstance(r.event, Stanza) and r.event.kind is Kind.MESSAGE
    ]
    assert [line["raw"] for line in lines] == [r.event.raw.decode() for r in messages]  # type: ignore[union-attr]
    shown = sorted(b for b in (r.event.element.findtext(BODY) for r in messages) if b)  # type: ignore[union-attr]
    assert shown == sorted([*ALICE_TO_BOB, *BOB_TO_ALICE] * 2)  # sent, then delivered


async def test_passwords_are_redacted_by_default(prosody: ProsodyServer, tmp_path: Path) -> None:
    proxy = await chat_through_proxy(prosody, tmp_path)
    everything = (
        (tmp_path / "session.jsonl").read_bytes()
        + proxy.stdout().encode()
        + proxy.stderr().encode()
    )
    for user, password in prosody.users.items():
        assert password.encode() not in everything
        plain = base64.b64encode(f"\0{user}\0{password}".encode())
        assert plain not in everything
    assert b"[redacted: PLAIN credentials of 'alice']" in everything
    header = orjson.loads((tmp_path / "session.jsonl").read_bytes().splitlines()[0])
    assert header["redacted"] is True


async def test_a_killed_proxy_leaves_a_readable_capture_of_everything_relayed(
    prosody: ProsodyServer, tmp_path: Path
) -> None:
    proxy = ProxyProcess(
        tmp_path,
        f"{prosody.host}:{prosody.c2s_port}",
        ("--record", str(tmp_path / "session.jsonl"), "-q"),
    )
    proxy.start()
    try:
        result = await trio.to_thread.run_sync(
            functools.partial(
                run_chat_scenario, "127.0.0.1", proxy.port, prosody.domain, prosody.users
            )
        )
        result.assert_ok()
    finally:
        proxy.stop(signal.SIGKILL)
    records = read(tmp_path / "session.jsonl")
    delivered = sorted(
        r.event.element.findtext(BODY) or ""
        for r in records
        if isinstance(r.event, Stanza)
        and r.event.kind is Kind.MESSAGE
        and r.event.dir is Direction.S2C
    )
    assert delivered == sorted([*ALICE_TO_BOB, *BOB_TO_ALICE])


@pytest.mark.parametrize("view", ["pretty", "json"])
async def test_a_closed_stdout_stops_the_view_not_the_sessions(
    prosody: ProsodyServer, tmp_path: Path, view: str
) -> None:
    """``xmppspy proxy | head`` must not take the relayed sessions down when head exits."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is shown
    args = ("--json",) if view == "json" else ()
    proxy = ProxyProcess(tmp_path, f"{prosody.host}:{prosody.c2s_port}", args)
    proxy.stdout_path = Path(f"/dev/fd/{write_end}")
    try:
        proxy.start()
    finally:
        os.close(write_end)
    try:
        result = await trio.to_thread.run_sync(
            functools.partial(
                run_chat_scenario, "127.0.0.1", proxy.port, prosody.domain, prosody.users
            )
        )
        result.assert_ok()
        assert proxy.stop() == 0, proxy.stderr()
    finally:
        proxy.kill()
    assert "stdout was closed: nothing more is shown; relaying goes on" in proxy.stderr()
    assert "Traceback" not in proxy.stderr()


# -- filters, live (tests/test_filters.py has the rest) -------------------------------------------


def _from_alice(records: list[Record]) -> list[Record]:
    """alice's messages, found without xmppspy's filters: what she sent, and its deliveries."""
    alice = next(
        r.conn for r in records if isinstance(r.event, Bound) and r.event.jid.startswith("alice@")
    )
    return [
        r
        for r in records
        if isinstance(r.event, Stanza)
        and r.event.kind is Kind.MESSAGE
        and (
            (r.conn == alice and r.event.dir is Direction.C2S)
            or (r.event.from_ or "").startswith("alice@example.test/")
        )
    ]


def _message_bodies(lines: list[dict[str, object]], direction: str) -> list[str]:
    """The bodies of the JSON lines of one direction (their raw XML, parsed on its own)."""
    from lxml import etree

    return [
        etree.fromstring(str(line["raw"]).encode()).findtext("{*}body") or ""
        for line in lines
        if line["dir"] == direction
    ]


async def test_a_filter_shows_only_alices_messages_live_and_the_capture_keeps_everything(
    prosody: ProsodyServer, tmp_path: Path
) -> None:
    expression = f"message and from:{prosody.jid('alice')}"
    proxy = await chat_through_proxy(prosody, tmp_path, "-f", expression, "--json")
    shown = [orjson.loads(line) for line in proxy.stdout().splitlines()]
    records = read(tmp_path / "session.jsonl")
    conn = {r.event.jid.split("@")[0]: r.conn for r in records if isinstance(r.event, Bound)}

    # Live: alice's messages as she sent them (no from: she is the connection's bound JID),
    # then as Prosody delivered them to bob (from='alice@example.test/...'), and nothing else.
    assert {line["kind"] for line in shown} == {"message"}
    sent = [line for line in shown if line["dir"] == "c2s"]
    delivered = [line for line in shown if line["dir"] == "s2c"]
    assert {line["conn"] for line in sent} == {conn["alice"]}
    assert all("from" not in line for line in sent)
    assert {line["conn"] for line in delivered} == {conn["bob"]}
    assert all(line["from"].startswith("alice@example.test/") for line in delivered)
    assert _message_bodies(sent, "c2s") == list(ALICE_TO_BOB)
    assert _message_bodies(delivered, "s2c") == list(ALICE_TO_BOB)
    expected = [(r.conn, r.event.raw.decode()) for r in _from_alice(records)]  # type: ignore[union-attr]
    assert [(line["conn"], line["raw"]) for line in shown] == expected

    # The capture still has everything: bob's side of the chat, logins, rosters, presence.
    assert bodies(records, Direction.C2S, conn["bob"]) == list(BOB_TO_ALICE)
    assert bodies(records, Direction.S2C, conn["alice"]) == list(BOB_TO_ALICE)
    kinds = {r.event.kind for r in records if isinstance(r.event, Stanza)}
    assert {Kind.FEATURES, Kind.SASL_AUTH, Kind.IQ, Kind.PRESENCE, Kind.MESSAGE} <= kinds
    assert len(records) > 3 * len(shown)
    header = orjson.loads((tmp_path / "session.jsonl").read_bytes().splitlines()[0])
    assert "filtered" not in header


async def test_record_filtered_records_only_what_the_filter_shows(
    prosody: ProsodyServer, tmp_path: Path
) -> None:
    expression = f"message and from:{prosody.jid('alice')}"
    proxy = await chat_through_proxy(
        prosody, tmp_path, "-f", expression, "--json", "--record-filtered"
    )
    shown = [orjson.loads(line) for line in proxy.stdout().splitlines()]
    records = read(tmp_path / "session.jsonl")
    stanzas = [r for r in records if isinstance(r.event, Stanza)]
    assert [(r.conn, r.event.dir.value, r.event.raw.decode()) for r in stanzas] == [  # type: ignore[union-attr]
        (line["conn"], line["dir"], line["raw"]) for line in shown
    ]
    assert len(stanzas) == 2 * len(ALICE_TO_BOB)
    assert {r.event.kind for r in stanzas} == {Kind.MESSAGE}  # type: ignore[union-attr]
    # besides the matches, only what tells who each connection is (for a faithful replay)
    others = {type(r.event).__name__ for r in records if not isinstance(r.event, Stanza)}
    assert others == {"Connected", "StreamOpened", "Bound", "Disconnected"}
    assert _message_bodies(shown, "c2s") == _message_bodies(shown, "s2c") == list(ALICE_TO_BOB)
    header = orjson.loads((tmp_path / "session.jsonl").read_bytes().splitlines()[0])
    assert header["filtered"] == {"flags": [], "expression": expression}


async def test_a_filtered_capture_replays_as_it_was_shown_live(
    prosody: ProsodyServer, tmp_path: Path
) -> None:
    """Replaying a ``--record-filtered`` capture with the same filter shows the same records.

    The capture keeps the ``bound`` events and stream headers that tell ``from:`` and ``to:``
    whom a stanza without from or to belongs to; without them alice's own messages (which
    carry no from) would vanish on replay.
    """
    expression = f"message and from:{prosody.jid('alice')}"
    proxy = await chat_through_proxy(
        prosody, tmp_path, "-f", expression, "--json", "--record-filtered"
    )
    live = proxy.stdout().splitlines()
    assert len(live) == 2 * len(ALICE_TO_BOB)
    replay = subprocess.run(
        [
            *(sys.executable, "-m", "xmppspy", "replay", str(tmp_path / "session.jsonl")),
            *("-f", expression, "--json"),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert replay.stdout.decode().splitlines() == live
