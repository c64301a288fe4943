"""Both directions of one proxied XMPP session, and the rules that tie them together.

The cross-direction rules live here and nowhere else:

- the server's ``<proceed/>`` switches both directions to TLS (opaque in this version);
- the server's SASL ``<success/>`` restarts both streams;
- a bind request and its result label the session with the bound full JID;
- secrets are redacted before any event leaves the session, unless asked otherwise: SASL PLAIN
  credentials, and unparsed client bytes before authentication succeeded.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Collection

from xmppspy.events import (
    Bound,
    Direction,
    Event,
    Kind,
    Opaque,
    OpaqueReason,
    ParseError,
    Rewritten,
    Stanza,
    StreamOpened,
    TlsStarted,
    WireEvent,
)
from xmppspy.namespaces import BIND
from xmppspy.parser import DEFAULT_MAX_STANZA_SIZE, StreamParser
from xmppspy.redact import UnparsedScrubber, mechanism, redact

_MECHANISM = re.compile(rb"<mechanism>\s*([A-Za-z0-9_-]{1,40})\s*</mechanism>\s*")
_BIND = "{" + BIND + "}bind"
_BIND_JID = "{" + BIND + "}jid"


class Session:
    """Feed each direction's bytes; get the events of both, in the order they happened."""

    def __init__(
        self,
        *,
        max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE,
        show_secrets: bool = False,
        intercept_tls: bool = False,
        sasl_mechanisms: Collection[str] | None = None,
    ) -> None:
        self.show_secrets = show_secrets
        self.intercept_tls = intercept_tls
        self.sasl_mechanisms = (
            frozenset(m.upper() for m in sasl_mechanisms) if sasl_mechanisms else None
        )
        self._gating = self.sasl_mechanisms is not None
        """Whether server features may need rewriting: then unfinished elements are held back."""
        self._held = b""
        self._rewrites: list[tuple[bytes, bytes]] = []
        self.tls_pending = False
        """The server said <proceed/> and the TLS handshakes are to be done (intercept only)."""
        self.domain: str | None = None
        """The server's domain, from the client's stream header: the name TLS is for."""
        self.parsers = {
            Direction.C2S: StreamParser(Direction.C2S, max_stanza_size=max_stanza_size),
            Direction.S2C: StreamParser(
                Direction.S2C,
                max_stanza_size=max_stanza_size,
                pause_after=(Kind.PROCEED, Kind.SASL_SUCCESS),
            ),
        }
        self.jid: str | None = None
        self.tls = False
        self.authenticated = False
        self._sasl_mechanism: str | None = None
        self._bind_requests: set[str | None] = set()
        self._scrubber = UnparsedScrubber()

    def feed(self, direction: Direction, data: bytes) -> list[Event]:
        """Take bytes that travelled in ``direction``; return what they tell."""
        pending: deque[WireEvent] = deque(self.parsers[direction].feed(data))
        out: list[Event] = []
        while pending:
            event = pending.popleft()
            if isinstance(event, StreamOpened) and event.dir is Direction.C2S and event.to:
                self.domain = event.to
            if isinstance(event, Stanza):
                if event.kind is Kind.SASL_AUTH:
                    self._sasl_mechanism = mechanism(event)
                out.append(event if self.show_secrets else redact(event, self._sasl_mechanism))
                pending.extend(self._rules(event, out))
            else:
                out.append(self._scrub(event))
        return out

    def forward(self, direction: Direction, data: bytes) -> bytes:
        """What to pass on of a read just fed: the same bytes, except while the server's features
        may need rewriting (see ``_mechanisms``): then the bytes of an unfinished element wait,
        and a finished ``<stream:features/>`` goes out rewritten."""
        if direction is Direction.C2S or not (self._gating or self._held):
            return data
        buffered = self._held + data
        cut = len(buffered) - self.parsers[Direction.S2C].pending if self._gating else len(buffered)
        ready, self._held = buffered[:cut], buffered[cut:]
        for original, rewritten in self._rewrites:
            ready = ready.replace(original, rewritten, 1)
        self._rewrites.clear()
        return ready

    def release(self, direction: Direction) -> bytes:
        """At the end of a direction: whatever is still held back goes out as it came."""
        if direction is Direction.C2S:
            return b""
        held, self._held = self._held, b""
        return held

    def _mechanisms(self, features: Stanza, out: list[Event]) -> None:
        """Offer the client only mechanisms that can work through xmppspy (or were asked for).

        SCRAM-*-PLUS binds the login to the client's TLS session, which ends at xmppspy:
        it cannot succeed through an intercepting proxy, so it is removed.
        """

        def keep(match: re.Match[bytes]) -> bytes:
            name = match.group(1).decode("ascii", "replace").upper()
            if self.intercept_tls and self.tls and name.endswith("-PLUS"):
                return b""
            if self.sasl_mechanisms is not None and name not in self.sasl_mechanisms:
                return b""
            return match.group(0)

        rewritten = _MECHANISM.sub(keep, features.raw)
        if rewritten != features.raw:
            removed = sorted(
                set(_MECHANISM.findall(features.raw)) - set(_MECHANISM.findall(rewritten))
            )
            names = ", ".join(m.decode("ascii", "replace") for m in removed)
            self._rewrites.append((features.raw, rewritten))
            out.append(Rewritten(features.dir, rewritten, f"removed SASL mechanisms {names}"))

    def tls_established(self, started: TlsStarted) -> list[Event]:
        """Both TLS handshakes are done: both streams restart, now seen in clear."""
        self.tls_pending = False
        self._gating = True  # the features after TLS may offer SCRAM-*-PLUS
        restarted = self.parsers[Direction.S2C].restart() + self.parsers[Direction.C2S].restart()
        return [started, *restarted]

    def close(self, direction: Direction) -> list[Event]:
        """That direction ended: report what it left unfinished (see ``StreamParser.close``)."""
        return [self._scrub(event) for event in self.parsers[direction].close()]

    def _scrub(self, event: WireEvent) -> WireEvent:
        """Unparsed client bytes before authentication may hold a password: hide them."""
        if (
            self.show_secrets
            or self.authenticated
            or event.dir is not Direction.C2S
            or not isinstance(event, ParseError | Opaque)
            or (isinstance(event, Opaque) and event.reason is not OpaqueReason.AFTER_ERROR)
        ):
            return event
        raw = self._scrubber.scrub(event.raw)
        return event if raw == event.raw else dataclasses.replace(event, raw=raw, redacted=True)

    def _rules(self, stanza: Stanza, out: list[Event]) -> list[WireEvent]:
        """Apply the cross-direction rules; return events that resuming a parser produced."""
        kind, direction = stanza.kind, stanza.dir
        if direction is Direction.S2C and kind is Kind.PROCEED:
            self.tls = True
            if self.intercept_tls:
                self.tls_pending = True  # both parsers wait: the relay does the handshakes
                return []
            out.append(TlsStarted(direction))
            return self.parsers[Direction.S2C].go_opaque(OpaqueReason.TLS) + self.parsers[
                Direction.C2S
            ].go_opaque(OpaqueReason.TLS)
        if direction is Direction.S2C and kind is Kind.FEATURES and self._gating:
            self._mechanisms(stanza, out)
        if direction is Direction.S2C and kind is Kind.SASL_SUCCESS:
            self.authenticated = True
            self._gating = False  # no mechanisms are offered after authentication
            return self.parsers[Direction.S2C].restart() + self.parsers[Direction.C2S].restart()
        if kind is Kind.IQ:
            self._bind(stanza, out)
        return []

    def _bind(self, stanza: Stanza, out: list[Event]) -> None:
        if stanza.dir is Direction.C2S:
            if stanza.type == "set" and stanza.child == _BIND:
                self._bind_requests.add(stanza.id)
            return
        if stanza.type == "result" and stanza.id in self._bind_requests:
            self._bind_requests.discard(stanza.id)
            try:
                jid = stanza.element.findtext(f"{_BIND}/{_BIND_JID}")
            except ValueError:
                return
            if jid:
                self.jid = jid.strip()
                out.append(Bound(stanza.dir, self.jid))
