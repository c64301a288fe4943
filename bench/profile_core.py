#!/usr/bin/env python3
"""Where the proxy's time goes, without sockets: the relay's per-read work, in-process.

For each 64 KiB chunk of the bench stream (bench/run.py's, same seed) this does what
``Relay._pump`` does besides I/O: ``Session.feed``, count the stanzas, wrap each event in a
``Record`` and hand the batch to a ``CaptureWriter`` (``encode_record`` and one write) on a
temporary file. It prints the time per stage without a profiler, then cProfile's top functions::

    python bench/profile_core.py [--stanzas N] [--top 25] [--no-record]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from run import CHUNK, build_stream

from xmppspy.capture import CaptureWriter, create_capture_file
from xmppspy.events import Direction, Record, Stanza
from xmppspy.session import Session


def relay_work(data: bytes, writer: CaptureWriter | None) -> int:
    """The relay's work on one direction's bytes; returns the stanzas seen."""
    session = Session()
    stanzas = 0
    view = memoryview(data)
    for offset in range(0, len(view), CHUNK):
        events = session.feed(Direction.C2S, bytes(view[offset : offset + CHUNK]))
        stanzas += sum(1 for e in events if isinstance(e, Stanza))
        if events and writer is not None:
            now = time.time()
            writer.accept([Record(now, "c1", event) for event in events])
    return stanzas


def feed_only(data: bytes) -> int:
    session = Session()
    count = 0
    view = memoryview(data)
    for offset in range(0, len(view), CHUNK):
        count += len(session.feed(Direction.C2S, bytes(view[offset : offset + CHUNK])))
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stanzas", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-record", action="store_true", help="profile without the capture")
    args = parser.parse_args()
    stream = build_stream(args.stanzas, args.seed)
    print(f"{stream.stanzas:,} stanzas, {len(stream.data):,} bytes ({stream.average:.1f} B each)")

    with tempfile.TemporaryDirectory(prefix="xmppspy-profile-") as tmp:
        path = Path(tmp) / "capture.jsonl"

        def writer() -> CaptureWriter:
            return CaptureWriter(create_capture_file(path), {}, print)

        timings: list[tuple[str, float]] = []
        began = time.perf_counter()
        feed_only(stream.data)
        timings.append(("Session.feed only", time.perf_counter() - began))
        began = time.perf_counter()
        relay_work(stream.data, None)
        timings.append(("feed + stanza count", time.perf_counter() - began))
        out = writer()
        began = time.perf_counter()
        seen = relay_work(stream.data, out)
        timings.append(("feed + count + Record + CaptureWriter", time.perf_counter() - began))
        out.close()
        if seen != stream.stanzas:
            print(f"warning: {seen} stanzas seen, {stream.stanzas} in the stream")
        for name, seconds in timings:
            print(
                f"{name:<40} {seconds:6.3f} s  {stream.stanzas / seconds:>10,.0f} stanzas/s  "
                f"{len(stream.data) / 1e6 / seconds:6.1f} MB/s"
            )

        profiled = None if args.no_record else writer()
        profiler = cProfile.Profile()
        profiler.enable()
        relay_work(stream.data, profiled)
        profiler.disable()
        if profiled is not None:
            profiled.close()
    print()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
