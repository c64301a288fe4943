"""XMPP namespaces, and the kind of a top-level element from its qualified name."""

from __future__ import annotations

from xmppspy.events import Kind

STREAMS = "http://etherx.jabber.org/streams"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
CLIENT = "jabber:client"
SERVER = "jabber:server"
COMPONENT = "jabber:component:accept"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"
SM = "urn:xmpp:sm:3"
SM_2 = "urn:xmpp:sm:2"
"""XEP-0198's older namespace, still offered by Prosody 0.12 beside version 3."""
PING = "urn:xmpp:ping"
ROSTER = "jabber:iq:roster"

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = "http://jabber.org/protocol/muc#user"
CHAT_STATES = "http://jabber.org/protocol/chatstates"
RECEIPTS = "urn:xmpp:receipts"
CARBONS = "urn:xmpp:carbons:2"
MAM = "urn:xmpp:mam:2"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"

PREFIXES: dict[str, str] = {
    "client": CLIENT,
    "server": SERVER,
    "stream": STREAMS,
    "streams": STREAM_ERRORS,
    "stanzas": STANZA_ERRORS,
    "tls": TLS,
    "sasl": SASL,
    "bind": BIND,
    "session": SESSION,
    "sm": SM,
    "ping": PING,
    "roster": ROSTER,
    "disco": DISCO_INFO,
    "items": DISCO_ITEMS,
    "muc": MUC,
    "muc-user": MUC_USER,
    "chatstates": CHAT_STATES,
    "receipts": RECEIPTS,
    "carbons": CARBONS,
    "mam": MAM,
}
"""Prefixes predefined for ``--xpath`` (``//client:body``, ``//disco:feature``)."""

STANZA_NAMESPACES = (CLIENT, SERVER, COMPONENT)

_KINDS: dict[tuple[str, str], Kind] = {
    (STREAMS, "features"): Kind.FEATURES,
    (STREAMS, "error"): Kind.STREAM_ERROR,
    (TLS, "starttls"): Kind.STARTTLS,
    (TLS, "proceed"): Kind.PROCEED,
    (TLS, "failure"): Kind.TLS_FAILURE,
    (SASL, "auth"): Kind.SASL_AUTH,
    (SASL, "challenge"): Kind.SASL_CHALLENGE,
    (SASL, "response"): Kind.SASL_RESPONSE,
    (SASL, "success"): Kind.SASL_SUCCESS,
    (SASL, "failure"): Kind.SASL_FAILURE,
    (SASL, "abort"): Kind.SASL_ABORT,
}
for _sm in (SM, SM_2):
    _KINDS[(_sm, "enable")] = Kind.SM_ENABLE
    _KINDS[(_sm, "enabled")] = Kind.SM_ENABLED
    _KINDS[(_sm, "r")] = Kind.SM_REQUEST
    _KINDS[(_sm, "a")] = Kind.SM_ANSWER
    _KINDS[(_sm, "resume")] = Kind.SM_RESUME
    _KINDS[(_sm, "resumed")] = Kind.SM_RESUMED
    _KINDS[(_sm, "failed")] = Kind.SM_FAILED
for _ns in STANZA_NAMESPACES:
    _KINDS[(_ns, "message")] = Kind.MESSAGE
    _KINDS[(_ns, "presence")] = Kind.PRESENCE
    _KINDS[(_ns, "iq")] = Kind.IQ


def classify(namespace: str, local: str) -> Kind:
    """The kind of a top-level element; anything unknown is ``Kind.OTHER``."""
    return _KINDS.get((namespace, local), Kind.OTHER)
