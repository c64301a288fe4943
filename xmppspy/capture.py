"""Capture files: JSON Lines, one header line, then one line per event.

The format is documented in docs/capture-format.md; bump ``VERSION`` on any incompatible change.
Lines are flushed as they are written so that a killed proxy loses nothing it already saw.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from xmppspy import __version__
from xmppspy.events import (
    Bound,
    Connected,
    Direction,
    Disconnected,
    Event,
    Keepalive,
    Kind,
    Notice,
    Opaque,
    OpaqueReason,
    ParseError,
    Record,
    Rewritten,
    Stanza,
    StreamClosed,
    StreamOpened,
    TlsStarted,
)
from xmppspy.parser import StreamParser
from xmppspy.xml import context_tag

FORMAT = "xmppspy-capture"
VERSION = 1


class CaptureError(Exception):
    """A file that cannot be read as a capture; the message says why, for a person."""


@dataclass(frozen=True)
class CaptureHeader:
    version: int
    created: str
    meta: dict[str, Any] = field(default_factory=dict)


# -- encoding -----------------------------------------------------------------------------------


def _raw_fields(raw: bytes) -> dict[str, Any]:
    try:
        return {"raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw_b64": base64.b64encode(raw).decode("ascii")}


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _stanza_fields(stanza: Stanza) -> dict[str, Any]:
    """The fields of a stanza line: the one event in every read, so written out by hand."""
    # _value_, not .value or a dict lookup: both go through Enum's Python-level machinery.
    fields: dict[str, Any] = {"dir": stanza.dir._value_, "event": "stanza"}
    fields.update(_raw_fields(stanza.raw))
    fields["kind"] = stanza.kind._value_
    fields["name"] = stanza.name
    if stanza.type is not None:
        fields["type"] = stanza.type
    if stanza.from_ is not None:
        fields["from"] = stanza.from_
    if stanza.to is not None:
        fields["to"] = stanza.to
    if stanza.id is not None:
        fields["id"] = stanza.id
    if stanza.child is not None:
        fields["child"] = stanza.child
    if stanza.redacted:
        fields["redacted"] = True
    return fields


def event_fields(event: Event) -> dict[str, Any]:
    """The JSON fields describing one event (without time and connection)."""
    match event:
        case Stanza():
            return _stanza_fields(event)
        case StreamOpened():
            return {
                "dir": event.dir.value,
                "event": "open",
                **_raw_fields(event.raw),
                **_drop_none(
                    {
                        "to": event.to,
                        "from": event.from_,
                        "id": event.id,
                        "version": event.version,
                        "lang": event.lang,
                        "xmlns": event.xmlns,
                        "restart": True if event.restart else None,
                    }
                ),
            }
        case Keepalive():
            return {"dir": event.dir.value, "event": "keepalive", **_raw_fields(event.raw)}
        case StreamClosed():
            return {"dir": event.dir.value, "event": "close", **_raw_fields(event.raw)}
        case ParseError():
            return {
                "dir": event.dir.value,
                "event": "parse-error",
                **_raw_fields(event.raw),
                "offset": event.offset,
                "at": event.at,
                "reason": event.reason,
                **({"redacted": True} if event.redacted else {}),
            }
        case Opaque():
            return {
                "dir": event.dir.value,
                "event": "opaque",
                **_raw_fields(event.raw),
                "reason": event.reason.value,
                **({"redacted": True} if event.redacted else {}),
            }
        case TlsStarted():
            return {
                "dir": event.dir.value,
                "event": "tls",
                **_drop_none(
                    {
                        "intercepted": True if event.intercepted else None,
                        "version": event.version,
                        "cipher": event.cipher,
                        "server_subject": event.server_subject,
                        "server_issuer": event.server_issuer,
                        "server_fingerprint": event.server_fingerprint,
                        "verified": event.verified,
                        "stripped": True if event.stripped else None,
                    }
                ),
            }
        case Notice():
            return {"event": "notice", "text": event.text}
        case Bound():
            return {"dir": event.dir.value, "event": "bound", "jid": event.jid}
        case Rewritten():
            sent = _raw_fields(event.sent)
            return {
                "dir": event.dir.value,
                "event": "rewrite",
                **{key.replace("raw", "sent"): value for key, value in sent.items()},
                "reason": event.reason,
            }
        case Connected():
            return {"event": "connect", "client": event.client, "upstream": event.upstream}
        case Disconnected():
            return _drop_none(
                {
                    "event": "disconnect",
                    "reason": event.reason,
                    "c2s_bytes": event.c2s_bytes,
                    "s2c_bytes": event.s2c_bytes,
                    "c2s_stanzas": event.c2s_stanzas,
                    "s2c_stanzas": event.s2c_stanzas,
                    "jid": event.jid,
                }
            )


def encode_record(record: Record, extra: dict[str, Any] | None = None) -> bytes:
    """One capture line (with its newline) for a record; ``extra`` fields go at the end."""
    fields = {"t": record.t, "conn": record.conn}
    fields.update(event_fields(record.event))
    if extra:
        fields.update(extra)
    return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)


def encode_header(meta: dict[str, Any]) -> bytes:
    header = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "tool": f"xmppspy {__version__}",
        **meta,
    }
    return orjson.dumps(header) + b"\n"


# -- writing ------------------------------------------------------------------------------------


def create_capture_file(path: Path) -> IO[bytes]:
    """Create (or truncate) a capture file readable by its owner only (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb", buffering=0)


RETRY_SECONDS = 5.0
"""How often a capture whose writes fail (a full disk) tries again."""
GAP_CONN = "-"
"""The ``conn`` of the notice that marks lost records: it belongs to no one connection."""


class CaptureWriter:
    """Writes records as capture lines, one write per batch, so each batch is on disk at once.

    A failed write (disk full, file gone) does not stop the proxy: the writer warns once and
    counts what it cannot write. Every ``RETRY_SECONDS`` it tries again; when a write goes
    through, it first cuts any half-written line and records a notice saying how many records
    were lost there (``"lost"`` in the line), so that the file reads back whole and says where
    it has a hole. ``close`` tries once more, so that a capture ends with its mark if it can.
    """

    def __init__(
        self,
        out: IO[bytes],
        meta: dict[str, Any],
        warn: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._warn = warn
        self._clock = clock
        self.failed: OSError | None = None
        self.written = 0
        self.lost = 0
        """Records not written since the last failure (they are marked once writing resumes)."""
        self._size = 0
        """Bytes of whole lines in the file: where a half-written line is cut back to."""
        self._partial = False
        self._retry_at = 0.0
        header = encode_header(meta)
        self._unwritten_header = b"" if self._write(header) else header

    def accept(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if self.failed is not None and not self._resume(force=False):
            self.lost += len(records)
            return
        if self._write(b"".join(encode_record(record) for record in records)):
            self.written += len(records)
        else:
            self.lost += len(records)

    def _resume(self, *, force: bool) -> bool:
        """After a failure: cut a half-written line, mark the gap, and go on, if the file lets."""
        if not force and self._clock() < self._retry_at:
            return False
        try:
            if self._partial:
                os.ftruncate(self._out.fileno(), self._size)
            self._out.seek(self._size)  # right after the last whole line, whatever happened
        except (OSError, ValueError):  # not a regular file (a pipe): it cannot be rewound
            if self._partial:  # and a half line cannot be cut: stop for good
                self._retry_at = float("inf")
                return False
        self._partial = False
        if self._unwritten_header:
            if not self._write(self._unwritten_header, warn=False):
                return False
            self._unwritten_header = b""
        error = self.failed
        assert error is not None
        why = error.strerror or str(error)
        gap = Record(
            time.time(), GAP_CONN, Notice(f"the capture lost {self.lost} events here: {why}")
        )
        if not self._write(encode_record(gap, {"lost": self.lost}), warn=False):
            return False
        self._warn(f"capture resumed; {self.lost} events were lost, and the file says where")
        self.lost = 0
        self.failed = None
        return True

    def _write(self, data: bytes, *, warn: bool = True) -> bool:
        view = memoryview(data)
        try:
            while view:
                view = view[self._out.write(view) :]
            self._out.flush()
        except OSError as exc:
            self._partial = self._partial or len(view) < len(data)
            if self.failed is None and warn:
                self._warn(
                    f"capture stopped, the proxy goes on: {exc.strerror or exc}; xmppspy tries "
                    f"again every {RETRY_SECONDS:g} s and marks what is lost"
                )
            self.failed = exc
            self._retry_at = self._clock() + RETRY_SECONDS
            return False
        self._size += len(data)
        return True

    def close(self) -> None:
        if self.failed is not None and self.lost:
            self._resume(force=True)
        try:
            self._out.close()
        except OSError as exc:
            if self.failed is None:
                self._warn(f"capture may be incomplete: {exc.strerror or exc}")


# -- reading ------------------------------------------------------------------------------------


@dataclass
class CaptureReader:
    """Reads a capture back into records. ``truncated`` tells whether the last line was cut."""

    path: Path
    header: CaptureHeader
    truncated: bool = False
    lost: int = 0
    """Records the proxy could not write (a full disk), as marked in the file so far."""
    _handle: IO[bytes] | None = field(default=None, repr=False)
    _line: int = field(default=1, repr=False)
    _contexts: dict[tuple[str, Direction], bytes] = field(default_factory=dict, repr=False)

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def records(
        self, *, follow: bool = False, wait: Callable[[], None] = lambda: time.sleep(0.2)
    ) -> Iterator[Record]:
        """The records in file order.

        With ``follow``, reaching the end means waiting (``wait``) for a running proxy to append
        more, as ``tail -f`` does; a line it is still writing is held until complete.
        """
        assert self._handle is not None
        handle, partial = self._handle, b""
        while True:
            line = handle.readline()
            if not line:
                if not follow:
                    break
                if os.fstat(handle.fileno()).st_size < handle.tell():
                    raise CaptureError(f"{self.path} shrank while being followed: was it replaced?")
                wait()
                continue
            line, partial = partial + line, b""
            if follow and not line.endswith(b"\n"):
                partial = line
                continue
            self._line += 1
            if not line.strip():
                continue
            try:
                fields = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if not line.endswith(b"\n"):
                    self.truncated = True
                    return
                raise CaptureError(f"{self.path}:{self._line}: not a JSON line ({exc})") from exc
            try:
                yield self._record(fields)
            except (KeyError, ValueError, TypeError, binascii.Error) as exc:
                raise CaptureError(
                    f"{self.path}:{self._line}: not a capture record ({exc!r})"
                ) from exc

    def _record(self, f: dict[str, Any]) -> Record:
        return Record(t=float(f["t"]), conn=str(f["conn"]), event=self._event(f))

    def _event(self, f: dict[str, Any]) -> Event:
        name = f["event"]
        if name == "connect":
            return Connected(client=f["client"], upstream=f["upstream"])
        if name == "notice":
            self.lost += int(f.get("lost", 0))
            return Notice(str(f["text"]))
        if name == "disconnect":
            return Disconnected(
                reason=f["reason"],
                c2s_bytes=int(f["c2s_bytes"]),
                s2c_bytes=int(f["s2c_bytes"]),
                c2s_stanzas=int(f["c2s_stanzas"]),
                s2c_stanzas=int(f["s2c_stanzas"]),
                jid=f.get("jid"),
            )
        direction = Direction(f["dir"])
        if name == "tls":
            return TlsStarted(
                direction,
                intercepted=bool(f.get("intercepted", False)),
                version=f.get("version"),
                cipher=f.get("cipher"),
                server_subject=f.get("server_subject"),
                server_issuer=f.get("server_issuer"),
                server_fingerprint=f.get("server_fingerprint"),
                verified=f.get("verified"),
                stripped=bool(f.get("stripped", False)),
            )
        if name == "bound":
            return Bound(direction, f["jid"])
        if name == "rewrite":
            sent = f["sent"].encode() if "sent" in f else base64.b64decode(f["sent_b64"])
            return Rewritten(direction, sent, f["reason"])
        raw = f["raw"].encode("utf-8") if "raw" in f else base64.b64decode(f["raw_b64"])
        key = (f["conn"], direction)
        match name:
            case "stanza":
                return Stanza(
                    direction,
                    raw,
                    kind=Kind(f["kind"]),
                    name=f["name"],
                    type=f.get("type"),
                    from_=f.get("from"),
                    to=f.get("to"),
                    id=f.get("id"),
                    child=f.get("child"),
                    context=self._contexts.get(key, b""),
                    redacted=bool(f.get("redacted", False)),
                )
            case "open":
                context = _header_context(raw)
                self._contexts[key] = context
                return StreamOpened(
                    direction,
                    raw,
                    to=f.get("to"),
                    from_=f.get("from"),
                    id=f.get("id"),
                    version=f.get("version"),
                    lang=f.get("lang"),
                    xmlns=f.get("xmlns"),
                    restart=bool(f.get("restart", False)),
                    context=context,
                )
            case "keepalive":
                return Keepalive(direction, raw)
            case "close":
                return StreamClosed(direction, raw)
            case "parse-error":
                return ParseError(
                    direction,
                    raw,
                    int(f["offset"]),
                    int(f["at"]),
                    f["reason"],
                    redacted=bool(f.get("redacted", False)),
                )
            case "opaque":
                return Opaque(
                    direction,
                    raw,
                    OpaqueReason(f["reason"]),
                    redacted=bool(f.get("redacted", False)),
                )
        raise ValueError(f"unknown event {name!r}")


def _header_context(raw: bytes) -> bytes:
    """The namespace context of a recorded stream header, to parse its stanzas lazily."""
    for event in StreamParser(Direction.C2S).feed(raw):
        if isinstance(event, StreamOpened):
            return event.context
    return context_tag({})


def open_capture(path: Path) -> CaptureReader:
    """Open a capture file and check its header; raises ``CaptureError`` with a reason."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise CaptureError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        header = _read_header(path, handle)
    except (CaptureError, OSError):
        handle.close()
        raise
    meta = {k: v for k, v in header.items() if k not in {"format", "version", "created"}}
    header_record = CaptureHeader(VERSION, str(header.get("created", "")), meta)
    return CaptureReader(path, header_record, _handle=handle)


class Pacer:
    """Waits between records as long as they were apart when recorded, ``speed`` times faster."""

    def __init__(self, speed: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.speed = speed
        self.sleep = sleep
        self._last: float | None = None

    def wait_for(self, record: Record) -> None:
        if self._last is not None and record.t > self._last:
            self.sleep((record.t - self._last) / self.speed)
        self._last = record.t


def _read_header(path: Path, handle: IO[bytes]) -> dict[str, Any]:
    first = handle.readline(1024 * 1024)
    if not first:
        raise CaptureError(f"{path} is empty: not an xmppspy capture")
    try:
        header = orjson.loads(first)
    except orjson.JSONDecodeError:
        raise CaptureError(
            f"{path} is not an xmppspy capture (its first line is not JSON)"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CaptureError(f'{path} is not an xmppspy capture (no "format": "{FORMAT}" header)')
    version = header.get("version")
    if version != VERSION:
        raise CaptureError(
            f"{path} is capture format version {version!r}; this xmppspy reads version {VERSION}"
        )
    return header
