"""replay --follow (a capture still being written) and --pace (recorded timing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from test_capture import session_records, write
from typer.testing import CliRunner

from xmppspy.capture import (
    CaptureError,
    CaptureWriter,
    Pacer,
    create_capture_file,
    encode_record,
    open_capture,
)
from xmppspy.cli import app
from xmppspy.events import Connected, Record


class Done(Exception):
    """Ends a follow once the test has written everything."""


def test_follow_waits_for_lines_the_writer_has_not_finished(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    records = session_records()
    writer = CaptureWriter(create_capture_file(path), {}, print)
    writer.accept(records[:2])
    lines = [encode_record(r) for r in records[2:5]]
    # what the "proxy" appends at each wait: a whole line, then one line in two pieces
    pieces = [lines[0], lines[1][:17], lines[1][17:] + lines[2]]
    waits = 0

    def wait() -> None:
        nonlocal waits
        waits += 1
        if not pieces:
            raise Done
        with path.open("ab") as out:
            out.write(pieces.pop(0))

    got: list[Record] = []
    with open_capture(path) as reader, pytest.raises(Done):
        for record in reader.records(follow=True, wait=wait):
            got.append(record)
    writer.close()
    assert got == records[:5]
    assert waits == 4
    assert not reader.truncated


def test_follow_notices_a_capture_that_was_replaced(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    write(path, session_records())

    def replaced() -> None:
        path.write_bytes(b"")

    with open_capture(path) as reader, pytest.raises(CaptureError, match="shrank"):
        for _ in reader.records(follow=True, wait=replaced):
            pass


def test_pacer_waits_as_recorded_divided_by_speed() -> None:
    slept: list[float] = []
    pacer = Pacer(2.0, slept.append)
    for t in (10.0, 10.5, 10.5, 12.0, 11.0, 13.0):
        pacer.wait_for(Record(t, "c1", Connected("a", "b")))
    # nothing before the first; 0.5 s and 1.5 s halved; no wait for equal or earlier times
    assert slept == [0.25, 0.75, 1.0]


@pytest.mark.parametrize("pace", ["bogus", "0", "-2", "inf", "nan"])
def test_a_bad_pace_is_refused(tmp_path: Path, pace: str) -> None:
    path = tmp_path / "s.jsonl"
    write(path, session_records())
    result = CliRunner().invoke(app, ["replay", str(path), "--pace", pace], env={"NO_COLOR": "1"})
    assert result.exit_code == 2
    assert "write original, fast, or how many times faster" in result.stderr


def test_pace_original_takes_the_recorded_time(tmp_path: Path) -> None:
    """Two records 0.4 s apart take at least 0.4 s with --pace original, not with fast."""
    path = tmp_path / "s.jsonl"
    first, second = session_records()[:2]
    write(path, [first, Record(first.t + 0.4, second.conn, second.event)])
    timings = {}
    for pace in ("original", "fast"):
        started = time.monotonic()
        result = CliRunner().invoke(app, ["replay", str(path), "--json", "--pace", pace])
        timings[pace] = time.monotonic() - started
        assert result.exit_code == 0
        assert len(result.stdout.splitlines()) == 2
    assert timings["original"] >= 0.4
    assert timings["fast"] < 0.4


def test_replay_follow_shows_what_a_running_proxy_appends(tmp_path: Path) -> None:
    """The real command line, following a capture that grows while it runs; Ctrl-C stops it."""
    path = tmp_path / "live.jsonl"
    records = session_records()
    writer = CaptureWriter(create_capture_file(path), {}, print)
    writer.accept(records[:3])
    out_path = tmp_path / "out"
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "xmppspy", "replay", str(path), "--follow", "--json"],
            stdout=out,
            stderr=subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
        )
    try:

        def shown(count: int) -> list[dict[str, object]]:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                lines = out_path.read_bytes().splitlines()
                if len(lines) >= count:
                    return [orjson.loads(line) for line in lines]
                time.sleep(0.05)
            raise AssertionError(f"{len(out_path.read_bytes().splitlines())} lines, not {count}")

        assert len(shown(3)) == 3
        writer.accept(records[3:])  # the proxy goes on
        assert [line["event"] for line in shown(len(records))] == [
            orjson.loads(encode_record(r))["event"] for r in records
        ]
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
        assert process.stderr is not None
        assert b"Traceback" not in process.stderr.read()
    finally:
        writer.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
