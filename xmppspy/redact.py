"""Hide secrets in events before anyone sees or records them.

Redaction replaces a secret inside the event's raw bytes, keeps a stanza well-formed, and marks
the event ``redacted`` so nobody mistakes its bytes for what crossed the wire.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from xml.sax.saxutils import escape

from xmppspy.events import Kind, Stanza
from xmppspy.parser import START_TAG

_SECRET_ELEMENT = re.compile(rb"<(?:[\w.-]+:)?(?:auth|response)[\s>/]")
UNPARSED_PLACEHOLDER = b"[redacted: unparsed client bytes that may hold credentials]"


def mechanism(auth: Stanza) -> str | None:
    """The SASL mechanism an ``<auth/>`` asks for, as the server reads it.

    Parsed, not matched on bytes: ``mechanism='&#80;LAIN'`` is PLAIN to the server too.
    ``<auth/>`` is rare, so parsing it costs nothing that matters.
    """
    try:
        value = auth.element.get("mechanism")
    except ValueError:
        return None
    return value.strip().upper() if value else None


def redact(stanza: Stanza, sasl_mechanism: str | None) -> Stanza:
    """The stanza with any secret it carries replaced; the same object if it carries none.

    ``sasl_mechanism`` is the mechanism of the authentication under way, if any: a PLAIN
    password may come in the ``<auth/>`` itself or in a ``<response/>`` after an empty challenge.
    """
    if stanza.kind is Kind.SASL_AUTH and mechanism(stanza) == "PLAIN":
        return _redact_plain(stanza)
    if stanza.kind is Kind.SASL_RESPONSE and sasl_mechanism == "PLAIN":
        return _redact_plain(stanza)
    return stanza


def _redact_plain(stanza: Stanza) -> Stanza:
    """SASL PLAIN's message is ``authzid NUL authcid NUL password``, in base64."""
    start = START_TAG.match(stanza.raw)
    close = stanza.raw.rfind(b"</")
    if start is None or start.group(1) or close < start.end():
        return stanza
    payload = stanza.raw[start.end() : close].strip()
    if payload in (b"", b"="):
        return stanza
    try:
        fields = base64.b64decode(payload, validate=True).split(b"\0")
        user = fields[1].decode() if len(fields) == 3 else None
    except (binascii.Error, UnicodeDecodeError):
        user = None
    label = (
        f"[redacted: PLAIN credentials of {user!r}]" if user else "[redacted: PLAIN credentials]"
    )
    raw = stanza.raw[: start.end()] + escape(label).encode() + stanza.raw[close:]
    return dataclasses.replace(stanza, raw=raw, redacted=True)


class UnparsedScrubber:
    """Hides client bytes that could not be parsed, from the first ``<auth`` or ``<response`` on.

    Before authentication, unparsed client bytes may hold a password that no stanza-level rule
    can find. Bytes before the first such element are shown (they are what a person debugs);
    from it on, everything unparsed is hidden. The element's name may be split across reads, so
    the last bytes of each read are kept to search with the next.
    """

    def __init__(self) -> None:
        self.hiding = False
        self._tail = b""

    def scrub(self, raw: bytes) -> bytes:
        if self.hiding:
            return UNPARSED_PLACEHOLDER
        window = self._tail + raw
        found = _SECRET_ELEMENT.search(window)
        if found is None:
            self._tail = window[-16:]
            return raw
        self.hiding = True
        return raw[: max(0, found.start() - len(self._tail))] + UNPARSED_PLACEHOLDER
