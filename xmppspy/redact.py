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


_OPEN_MECHANISMS = ("ANONYMOUS", "EXTERNAL")
"""Mechanisms whose initial response holds no secret (an authorization identity at most)."""
_PASSWORD = re.compile(rb"(<(?:[\w.-]+:)?(?:password|digest)\b[^>]*(?<!/)>)(.*?)(</)", re.DOTALL)
_CREDENTIAL_QUERIES = ("{jabber:iq:register}query", "{jabber:iq:auth}query")


def redact(stanza: Stanza, sasl_mechanism: str | None) -> Stanza:
    """The stanza with any secret it carries replaced; the same object if it carries none.

    ``sasl_mechanism`` is the mechanism of the authentication under way (from its ``<auth/>``).
    What counts as secret, by element:

    - ``<auth/>``: the initial response of every mechanism but SCRAM's (whose client-first
      message holds only the user name and a nonce), ANONYMOUS and EXTERNAL: a PLAIN password,
      an X-OAUTH2 or OAUTHBEARER token;
    - ``<response/>``: always (PLAIN after an empty challenge, SCRAM's client proof, DIGEST-MD5's
      response: each is enough to recover or replay the password);
    - ``<success/>`` and ``<challenge/>``: SCRAM's server signature (``v=``), which also lets
      one test password guesses offline;
    - XEP-0077 registration and XEP-0078 legacy authentication: ``<password/>`` and
      ``<digest/>`` text.
    """
    match stanza.kind:
        case Kind.SASL_AUTH:
            chosen = mechanism(stanza) or ""
            if chosen == "PLAIN":
                return _redact_plain(stanza)
            if chosen.startswith("SCRAM-") or chosen in _OPEN_MECHANISMS:
                return stanza
            return _redact_payload(stanza, f"{chosen or 'SASL'} credentials")
        case Kind.SASL_RESPONSE:
            if sasl_mechanism == "PLAIN":
                return _redact_plain(stanza)
            return _redact_payload(stanza, f"{sasl_mechanism or 'SASL'} response")
        case Kind.SASL_SUCCESS | Kind.SASL_CHALLENGE:
            if (sasl_mechanism or "").startswith("SCRAM-") and _decoded(stanza).startswith(b"v="):
                return _redact_payload(stanza, "SCRAM server signature")
            return stanza
        case Kind.IQ if stanza.child in _CREDENTIAL_QUERIES:
            raw = _PASSWORD.sub(
                lambda m: m.group(1) + b"[redacted]" + m.group(3) if m.group(2) else m.group(0),
                stanza.raw,
            )
            return (
                dataclasses.replace(stanza, raw=raw, redacted=True) if raw != stanza.raw else stanza
            )
        case _:
            return stanza


def _payload_bounds(stanza: Stanza) -> tuple[int, int] | None:
    """Where the text of a SASL element is, if it has any."""
    start = START_TAG.match(stanza.raw)
    close = stanza.raw.rfind(b"</")
    if start is None or start.group(1) or close < start.end():
        return None
    if stanza.raw[start.end() : close].strip() in (b"", b"="):
        return None
    return start.end(), close


def _decoded(stanza: Stanza) -> bytes:
    bounds = _payload_bounds(stanza)
    if bounds is None:
        return b""
    try:
        return base64.b64decode(stanza.raw[bounds[0] : bounds[1]].strip(), validate=True)
    except binascii.Error:
        return b""


def _redact_payload(stanza: Stanza, what: str) -> Stanza:
    bounds = _payload_bounds(stanza)
    if bounds is None:
        return stanza
    label = escape(f"[redacted: {what}]").encode()
    raw = stanza.raw[: bounds[0]] + label + stanza.raw[bounds[1] :]
    return dataclasses.replace(stanza, raw=raw, redacted=True)


def _redact_plain(stanza: Stanza) -> Stanza:
    """SASL PLAIN's message is ``authzid NUL authcid NUL password``, in base64."""
    fields = _decoded(stanza).split(b"\0")
    try:
        user = fields[1].decode() if len(fields) == 3 else None
    except UnicodeDecodeError:
        user = None
    return _redact_payload(
        stanza, f"PLAIN credentials of {user!r}" if user else "PLAIN credentials"
    )


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
