"""Hide secrets in events before anyone sees or records them.

Redaction replaces the secret's text inside the element's raw bytes, keeps the XML well-formed,
and marks the stanza ``redacted`` so nobody mistakes its bytes for what crossed the wire.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from xml.sax.saxutils import escape

from xmppspy.events import Kind, Stanza

_TEXT = re.compile(rb"^(<[^>]*>)(.*)(</[^>]*>)$", re.DOTALL)
_MECHANISM = re.compile(rb"""\smechanism\s*=\s*["']([^"']*)["']""")


def redact(stanza: Stanza) -> Stanza:
    """The stanza with any secret it carries replaced; the same object if it carries none."""
    if stanza.kind is Kind.SASL_AUTH:
        return _redact_plain(stanza)
    return stanza


def _redact_plain(stanza: Stanza) -> Stanza:
    """SASL PLAIN's initial response is ``authzid NUL authcid NUL password``, in base64."""
    match = _TEXT.match(stanza.raw)
    mechanism = _MECHANISM.search(stanza.raw)
    if match is None or mechanism is None or mechanism.group(1).upper() != b"PLAIN":
        return stanza
    payload = match.group(2).strip()
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
    raw = match.group(1) + escape(label).encode() + match.group(3)
    return dataclasses.replace(stanza, raw=raw, redacted=True)
