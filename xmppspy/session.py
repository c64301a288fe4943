"""Both directions of one proxied XMPP session, and the rules that tie them together.

The cross-direction rules live here and nowhere else:

- the server's ``<proceed/>`` switches both directions to TLS (intercepted, or opaque);
- with ``starttls_upstream``, xmppspy asks the server for STARTTLS itself and the client sees
  only the stream that follows (``--tls strip``; direct-TLS clients of a STARTTLS server);
- the server's SASL ``<success/>`` restarts both streams;
- a bind request and its result label the session with the bound full JID;
- secrets are redacted before any event leaves the session, unless asked otherwise: SASL PLAIN
  credentials, and unparsed client bytes before authentication succeeded.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import deque
from collections.abc import Collection

from xmppspy.events import (
    Bound,
    Direction,
    Event,
    Keepalive,
    Kind,
    Notice,
    Opaque,
    OpaqueReason,
    ParseError,
    Rewritten,
    Stanza,
    StreamOpened,
    TlsStarted,
    WireEvent,
)
from xmppspy.namespaces import BIND, TLS
from xmppspy.parser import DEFAULT_MAX_STANZA_SIZE, State, StreamParser
from xmppspy.redact import UnparsedScrubber, mechanism, redact

_MECHANISM = re.compile(rb"<mechanism>\s*([A-Za-z0-9_-]{1,40})\s*</mechanism>\s*")
_BIND = "{" + BIND + "}bind"
_BIND_JID = "{" + BIND + "}jid"
_STARTTLS = "{" + TLS + "}starttls"
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
SILENT_SERVER = (
    "the server closed the connection without sending anything; if that port is for direct TLS "
    "(often 5223), give it as --upstream-tls, with --listen-tls for the clients"
)


class Upgrade(enum.Enum):
    """Where xmppspy's own STARTTLS with the server stands (``starttls_upstream``)."""

    CLIENT_HEADER = "client-header"
    """The client's stream header goes to the server; nothing after it yet."""
    FEATURES = "features"
    """The server's header and features are held back; if they offer STARTTLS, ask for it."""
    PROCEED = "proceed"
    """xmppspy sent ``<starttls/>``; the server's answer is held back too."""
    DONE = "done"
    """TLS with the server is up (or could not be had): relay both ways."""


class Session:
    """Feed each direction's bytes; get the events of both, in the order they happened."""

    def __init__(
        self,
        *,
        max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE,
        show_secrets: bool = False,
        intercept_tls: bool = False,
        sasl_mechanisms: Collection[str] | None = None,
        direct_tls: bool = False,
        starttls_upstream: bool = False,
    ) -> None:
        """``direct_tls``: the connection to the server is TLS from its first byte (XEP-0368),
        ended at xmppspy. ``starttls_upstream``: xmppspy negotiates STARTTLS with the server
        itself; the relay follows ``negotiating`` and sends ``take_injected()`` upstream."""
        self.show_secrets = show_secrets
        self.intercept_tls = intercept_tls or direct_tls or starttls_upstream
        self.sasl_mechanisms = (
            frozenset(m.upper() for m in sasl_mechanisms) if sasl_mechanisms else None
        )
        self.tls = direct_tls
        """The stream to the server is encrypted."""
        self._gating = self.sasl_mechanisms is not None or direct_tls
        """Whether server features may need rewriting: then unfinished elements are held back."""
        self._held = b""
        self._rewrites: list[tuple[bytes, bytes]] = []
        self.tls_pending = False
        """The server said <proceed/> and the TLS handshakes are to be done (intercept only)."""
        self._upgrade = Upgrade.CLIENT_HEADER if starttls_upstream else Upgrade.DONE
        self._injected = b""
        self._client_header = b""
        self._client_rest = b""
        """Client bytes read with its header but after it: they go to the server after TLS."""
        self._header_end: int | None = None
        """Where the client's header ends in its byte stream, until the read that holds it is
        forwarded."""
        self._client_parsed = 0
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
                if self._upgrade is not Upgrade.DONE:
                    self._negotiate(event, out)
                pending.extend(self._rules(event, out))
            else:
                out.append(self._scrub(event))
                if self._upgrade is not Upgrade.DONE:
                    self._negotiate(event, out)
        return out

    def forward(self, direction: Direction, data: bytes) -> bytes:
        """What to pass on of a read just fed: the same bytes, except while the server's features
        may need rewriting (see ``_mechanisms``): then the bytes of an unfinished element wait,
        and a finished ``<stream:features/>`` goes out rewritten. While xmppspy negotiates
        STARTTLS itself, the server's bytes are held back, and the client's after its header."""
        if direction is Direction.C2S:
            return self._forward_client(data)
        if self._upgrade in (Upgrade.FEATURES, Upgrade.PROCEED):
            self._held += data
            return b""
        if not (self._gating or self._held):
            return data
        buffered = self._held + data
        # After <proceed/> nothing more is features: bytes the server sent after it go out as
        # they came (never held into the TLS stream that follows, which would inject them).
        gating = self._gating and not self.tls_pending
        cut = len(buffered) - self.parsers[Direction.S2C].pending if gating else len(buffered)
        ready, self._held = buffered[:cut], buffered[cut:]
        for original, rewritten in self._rewrites:
            ready = ready.replace(original, rewritten, 1)
        self._rewrites.clear()
        return ready

    def _forward_client(self, data: bytes) -> bytes:
        if self._header_end is None:
            return data
        keep = self._header_end - (self.parsers[Direction.C2S].fed - len(data))
        self._header_end = None
        if self._upgrade is Upgrade.DONE:
            return data  # the negotiation was given up in this very read: relay as it came
        self._client_rest = data[keep:]
        return data[:keep]

    @property
    def negotiating(self) -> Direction | None:
        """During xmppspy's own STARTTLS: whose bytes to read next; None once both ways flow."""
        if self._upgrade is Upgrade.CLIENT_HEADER:
            return Direction.C2S
        return None if self._upgrade is Upgrade.DONE else Direction.S2C

    def take_injected(self) -> bytes:
        """Bytes xmppspy itself must now send to the server (its own STARTTLS)."""
        injected, self._injected = self._injected, b""
        return injected

    def _negotiate(self, event: WireEvent, out: list[Event]) -> None:
        """xmppspy's own STARTTLS, one event at a time (see ``Upgrade``)."""
        if self._upgrade is Upgrade.CLIENT_HEADER:
            self._client_parsed += len(event.raw)
            if isinstance(event, StreamOpened):
                self._client_header = event.raw
                self._header_end = self._client_parsed
                self._upgrade = Upgrade.FEATURES
            elif not isinstance(event, Keepalive):
                self._give_up(out, "the client did not open an XMPP stream")
            return
        if event.dir is Direction.C2S or isinstance(event, StreamOpened | Keepalive):
            return
        if not isinstance(event, Stanza):
            self._give_up(out, "the server's stream broke off before TLS")
        elif self._upgrade is Upgrade.FEATURES and event.kind is Kind.FEATURES:
            if not self._offers_starttls(event):
                self._give_up(out, "the server offered no STARTTLS")
                return
            self._injected += STARTTLS
            self._upgrade = Upgrade.PROCEED
            out.append(
                Rewritten(
                    Direction.S2C,
                    b"",
                    "held back from the client: xmppspy starts TLS with the server itself; the "
                    "client gets the stream that follows",
                )
            )
            out.append(
                Rewritten(Direction.C2S, STARTTLS, "asked the server for TLS in the client's place")
            )
        elif not (self._upgrade is Upgrade.PROCEED and event.kind is Kind.PROCEED):
            refused = event.kind is Kind.TLS_FAILURE
            self._give_up(
                out,
                "the server refused STARTTLS" if refused else f"the server sent {event.kind.value}",
            )

    @staticmethod
    def _offers_starttls(features: Stanza) -> bool:
        try:
            return features.element.find(_STARTTLS) is not None
        except ValueError:
            return False

    def give_up(self, why: str) -> list[Event]:
        """Stop xmppspy's own STARTTLS for a reason the relay found (a silent server): what was
        held back goes on as it came (``forward``, ``take_injected``)."""
        out: list[Event] = []
        if self._upgrade is not Upgrade.DONE and not self.tls_pending:
            self._give_up(out, why)
        return out

    def _give_up(self, out: list[Event], why: str) -> None:
        """No TLS with the server from xmppspy: relay what was held back, as it came."""
        self._upgrade = Upgrade.DONE
        self._header_end = None
        self._injected += self._client_rest
        self._client_rest = b""
        out.append(Notice(f"xmppspy did not start TLS with the server: {why}; relaying as it is"))

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
        """Both TLS handshakes are done: both streams restart, now seen in clear.

        After xmppspy's own STARTTLS only the server's stream restarts: xmppspy sends the
        client's header again inside TLS, and the client never sees the stream before it.
        """
        self.tls_pending = False
        self._gating = True  # the features after TLS may offer SCRAM-*-PLUS
        if self._upgrade is Upgrade.PROCEED:
            self._upgrade = Upgrade.DONE
            self._held = b""  # the server's stream before TLS was for xmppspy alone
            self._injected += self._client_header + self._client_rest
            self._client_rest = b""
            resent = Rewritten(
                Direction.C2S,
                self._client_header,
                "sent the client's stream header again, inside TLS",
            )
            return [started, *self.parsers[Direction.S2C].restart(tls=True), resent]
        restarted = self.parsers[Direction.S2C].restart(tls=True) + self.parsers[
            Direction.C2S
        ].restart(tls=True)
        return [started, *restarted]

    def close(self, direction: Direction) -> list[Event]:
        """That direction ended: report what it left unfinished (see ``StreamParser.close``).

        A server that hangs up on a client's header without a byte, while the client still
        waits, is often a direct-TLS port given as a plaintext one, and nothing else would say
        so."""
        parser = self.parsers[direction]
        silent = (
            direction is Direction.S2C
            and not self.tls
            and parser.state is not State.CLOSED
            and parser.fed == 0
            and self.parsers[Direction.C2S].fed > 0
            and self.parsers[Direction.C2S].state is not State.CLOSED  # it hung up first
        )
        events: list[Event] = [self._scrub(event) for event in parser.close()]
        if silent:
            events.append(Notice(SILENT_SERVER))
        return events

    def _scrub(self, event: WireEvent) -> WireEvent:
        """Unparsed client bytes before authentication may hold a password: hide them."""
        if (
            self.show_secrets
            or self.authenticated
            or event.dir is not Direction.C2S
            or not isinstance(event, ParseError | Opaque)
            or (isinstance(event, Opaque) and event.reason is OpaqueReason.TLS)
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
        if (
            direction is Direction.S2C
            and kind is Kind.FEATURES
            and self._gating
            and self._upgrade is Upgrade.DONE
        ):
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
