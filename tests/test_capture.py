"""Capture files: what is written reads back as the same events, bytes exact; bad files are named."""

from __future__ import annotations

import base64
import errno
import io
import os
import stat
from pathlib import Path

import orjson
import pytest
from streams import HEADER_C, HEADER_S

from xmppspy.capture import (
    RETRY_SECONDS,
    CaptureError,
    CaptureWriter,
    create_capture_file,
    encode_record,
    open_capture,
)
from xmppspy.events import (
    Bound,
    Connected,
    Direction,
    Disconnected,
    Kind,
    Notice,
    Opaque,
    OpaqueReason,
    ParseError,
    Record,
    Stanza,
    TlsStarted,
)
from xmppspy.session import Session

PLAIN = base64.b64encode(b"\0alice\0s3cret-passw0rd")


def session_records() -> list[Record]:
    """A small plaintext login, as the relay would record it."""
    session = Session()
    feeds = [
        (Direction.C2S, HEADER_C),
        (Direction.S2C, HEADER_S + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>"),
        (Direction.C2S, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + PLAIN + b"</auth>"),
        (Direction.S2C, b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
        (Direction.C2S, HEADER_C + b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"),
        (Direction.S2C, HEADER_S + b"<iq type='result' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@example.test/r</jid></bind></iq>"),
        (Direction.C2S, b"<message to='bob@example.test' type='chat'><body>\xe2\x98\x83 &lt;&amp;</body></message> "),
        (Direction.C2S, b"\xff\xfe not xml"),
    ]  # fmt: skip
    records = [Record(1.0, "c1", Connected("127.0.0.1:4000", "example.test:5222"))]
    for i, (direction, data) in enumerate(feeds):
        records += [Record(2.0 + i, "c1", e) for e in session.feed(direction, data)]
    records.append(Record(20.0, "c1", Disconnected("closed by both sides", 1, 2, 3, 4, "a@b/c")))
    return records


def write(path: Path, records: list[Record]) -> None:
    writer = CaptureWriter(create_capture_file(path), {"upstream": "example.test:5222"}, print)
    writer.accept(records)
    writer.close()


def test_records_read_back_equal_with_exact_bytes(tmp_path: Path) -> None:
    records = session_records()
    path = tmp_path / "s.jsonl"
    write(path, records)
    with open_capture(path) as reader:
        back = list(reader)
    assert reader.header.meta["upstream"] == "example.test:5222"
    assert back == records
    assert not reader.truncated
    # the lazily parsed element works on read-back stanzas too (namespaces from the header)
    message = next(
        r.event for r in back if isinstance(r.event, Stanza) and r.event.kind.value == "message"
    )
    assert message.element.findtext("{jabber:client}body") == "☃ <&"
    assert any(isinstance(r.event, Bound) for r in back)


def test_invalid_utf8_is_stored_as_base64_and_read_back_exactly(tmp_path: Path) -> None:
    records = session_records()
    path = tmp_path / "s.jsonl"
    write(path, records)
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()[1:]]
    error = next(line for line in lines if line["event"] == "parse-error")
    assert base64.b64decode(error["raw_b64"]) == b"\xff\xfe not xml"
    assert "raw" not in error


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write(path, session_records())
    content = path.read_bytes()
    assert PLAIN not in content
    assert b"s3cret" not in content
    assert b'"redacted":true' in content


def test_capture_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write(path, [])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_every_line_is_on_disk_as_soon_as_written(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    writer = CaptureWriter(create_capture_file(path), {}, print)
    records = session_records()
    writer.accept(records[:3])
    # read while the writer is still open: nothing is held back in a buffer
    with open_capture(path) as reader:
        assert list(reader) == records[:3]
    writer.close()


def test_a_cut_last_line_is_tolerated_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    records = session_records()
    write(path, records)
    content = path.read_bytes()
    path.write_bytes(content[:-25])
    with open_capture(path) as reader:
        back = list(reader)
    assert reader.truncated
    assert back == records[:-1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"hello world\n", "first line is not JSON"),
        (b'{"format": "pcap"}\n', "not an xmppspy capture"),
        (b'{"format": "xmppspy-capture", "version": 99}\n', "format version 99"),
        (b'{"format": "xmppspy-capture", "version": 1}\n{"t": 1}\n', ":2: not a capture record"),
        (b'{"format": "xmppspy-capture", "version": 1}\nnot json\n{}\n', ":2: not a JSON line"),
    ],
)
def test_bad_files_get_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=message), open_capture(path) as reader:
        list(reader)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"cannot open .*nope\.jsonl"):
        open_capture(tmp_path / "nope.jsonl")


def test_stanza_lines_carry_fields_for_jq() -> None:
    session = Session()
    session.feed(Direction.C2S, HEADER_C)
    (stanza,) = session.feed(
        Direction.C2S,
        b"<iq type='get' id='p1' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    line = orjson.loads(encode_record(Record(5.5, "c7", stanza)))
    assert line == {
        "t": 5.5,
        "conn": "c7",
        "dir": "c2s",
        "event": "stanza",
        "raw": "<iq type='get' id='p1' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        "kind": "iq",
        "name": "{jabber:client}iq",
        "type": "get",
        "to": "example.test",
        "id": "p1",
        "child": "{urn:xmpp:ping}ping",
    }


def test_disk_full_warns_once_and_keeps_going(tmp_path: Path) -> None:
    warnings: list[str] = []
    with Path("/dev/full").open("wb", buffering=0) as full:
        writer = CaptureWriter(full, {}, warnings.append, clock=lambda: 0.0)
        writer.accept([Record(1.0, "c1", Opaque(Direction.C2S, b"x", OpaqueReason.TLS))])
        writer.accept([Record(2.0, "c1", ParseError(Direction.C2S, b"y", 0, 0, "bad"))])
    assert len(warnings) == 1
    assert "No space left on device" in warnings[0]
    assert isinstance(writer.failed, OSError)
    assert writer.lost == 2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def numbered(first: int, count: int) -> list[Record]:
    return [
        Record(
            float(i),
            "c1",
            Stanza(
                Direction.C2S,
                b"<presence id='%d'/>" % i,
                Kind.PRESENCE,
                "{jabber:client}presence",
                None,
                None,
                None,
                str(i),
                None,
            ),
        )
        for i in range(first, first + count)
    ]


def fill_disk(fd: int) -> None:
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)
    os.close(full)


def free_disk(fd: int, path: Path) -> None:
    again = os.open(path, os.O_WRONLY)  # no O_TRUNC: the file as it was
    os.dup2(again, fd)
    os.close(again)


def test_a_capture_resumes_when_the_disk_has_room_again_and_marks_the_gap(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    handle = create_capture_file(path)
    clock, warnings = Clock(), []
    writer = CaptureWriter(handle, {}, warnings.append, clock=clock)
    writer.accept(numbered(0, 3))
    fill_disk(handle.fileno())
    writer.accept(numbered(3, 2))
    writer.accept(numbered(5, 1))
    free_disk(handle.fileno(), path)
    writer.accept(numbered(6, 1))  # too soon: not tried yet, counted as lost
    clock.now = RETRY_SECONDS
    writer.accept(numbered(7, 2))
    writer.close()
    with open_capture(path) as reader:
        records = list(reader)
    assert not reader.truncated and reader.lost == 4
    ids = [r.event.id if isinstance(r.event, Stanza) else r.conn for r in records]
    assert ids == ["0", "1", "2", "-", "7", "8"]
    (gap,) = [r.event for r in records if isinstance(r.event, Notice)]
    assert gap.text == "the capture lost 4 events here: No space left on device"
    assert warnings[0].startswith("capture stopped, the proxy goes on: No space left on device")
    assert warnings[1:] == ["capture resumed; 4 events were lost, and the file says where"]
    assert writer.written == 5 and writer.lost == 0


class ShortWrites(io.FileIO):
    """A disk that fills up in the middle of a write: a short write, then ENOSPC."""

    full = False

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if not self.full:
            return super().write(data)
        if not getattr(self, "_short_done", False):
            self._short_done = True
            return super().write(memoryview(data)[:25])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_half_written_line_is_cut_before_writing_resumes(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    handle = ShortWrites(path, "w")
    clock = Clock()
    writer = CaptureWriter(handle, {}, lambda message: None, clock=clock)
    writer.accept(numbered(0, 2))
    handle.full = True
    writer.accept(numbered(2, 2))  # 25 bytes of it reach the file
    assert path.read_bytes().count(b"\n") == 3  # the header and two lines, then half a line
    handle.full = False
    clock.now = RETRY_SECONDS
    writer.accept(numbered(4, 1))
    writer.close()
    with open_capture(path) as reader:
        records = list(reader)
    assert [r.conn for r in records] == ["c1", "c1", "-", "c1"]
    assert reader.lost == 2 and not reader.truncated


def test_a_capture_whose_header_failed_gets_it_when_writing_resumes(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    handle = create_capture_file(path)
    fill_disk(handle.fileno())
    clock = Clock()
    writer = CaptureWriter(handle, {"upstream": "x"}, lambda message: None, clock=clock)
    writer.accept(numbered(0, 1))
    free_disk(handle.fileno(), path)
    writer.close()  # tries once more at the end, whatever the clock says
    with open_capture(path) as reader:
        records = list(reader)
    assert reader.header.meta["upstream"] == "x"
    assert [r.conn for r in records] == ["-"] and reader.lost == 1


def test_tls_facts_and_rewrites_read_back(tmp_path: Path) -> None:
    from xmppspy.events import Rewritten, TlsStarted

    records = [
        Record(
            1.0,
            "c1",
            TlsStarted(
                Direction.S2C,
                intercepted=True,
                version="TLSv1.3",
                cipher="TLS_AES_256_GCM_SHA384",
                server_subject="commonName=example.test",
                server_issuer="organizationName=trustme",
                server_fingerprint="AB:" * 31 + "CD",
                verified=True,
            ),
        ),
        Record(2.0, "c1", Rewritten(Direction.S2C, b"<stream:features/>", "removed X-PLUS")),
        Record(3.0, "c1", Rewritten(Direction.S2C, b"\xff not utf-8", "binary")),
    ]
    path = tmp_path / "s.jsonl"
    write(path, records)
    with open_capture(path) as reader:
        assert list(reader) == records


def test_the_shipped_tls_sample_shows_a_session_seen_inside_tls() -> None:
    """captures/prosody-tls.jsonl (scripts/record-sample.py): STARTTLS intercepted, verified."""
    path = Path(__file__).resolve().parent.parent / "captures" / "prosody-tls.jsonl"
    with open_capture(path) as reader:
        records = list(reader)
    assert not reader.truncated and reader.lost == 0
    started = [r.event for r in records if isinstance(r.event, TlsStarted)]
    assert len(started) == 2 and all(s.intercepted and s.verified for s in started)
    messages = [
        r.event for r in records if isinstance(r.event, Stanza) and r.event.kind is Kind.MESSAGE
    ]
    assert any(b"It says 1 &lt; 2" in m.raw for m in messages)  # the chat, seen in clear
    assert not any(isinstance(r.event, Opaque) for r in records)
    assert b"sample-pw" not in path.read_bytes()
