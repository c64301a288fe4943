"""Byte transcripts of real XMPP sessions, written out by hand, for the parser and session tests.

The server is Prosody 0.12 and the client slixmpp 1.x; every byte below is shaped like what they
put on the wire:

- Prosody writes ``<?xml version='1.0'?>`` as a write of its own before every stream header,
  serialises with ``util.stanza`` (single quotes, no space before ``/>``, ``&apos;``/``&quot;``
  escaped), advertises ``<starttls/>``, then SASL mechanisms, and after authentication bind,
  session, caps, XEP-0198 (``urn:xmpp:sm:2`` and ``urn:xmpp:sm:3``, each ``<optional/>``), CSI and
  roster versioning. Its keepalive is a single space. Its stream ids are UUIDs.
- slixmpp writes its stream header with single quotes (``ClientXMPP.stream_header``) and no XML
  declaration, but serialises stanzas with ``slixmpp.xmlstream.tostring``: double quotes and
  ``" />"`` for empty elements; with ``use_cdata = True`` it wraps text in CDATA sections. Its ids
  are ``uuid4().hex``; its keepalive is a single space.

The plaintext login assumes a test deployment: Prosody with ``c2s_require_encryption = false`` and
``allow_unencrypted_plain_auth = true``, and slixmpp with ``feature_mechanisms``'
``unencrypted_plain`` on (so PLAIN is chosen over SCRAM-SHA-1, which slixmpp will not use
unencrypted) and ``use_cdata`` on.

``LOGIN`` and ``STARTTLS`` list the writes of both peers in the order they happen on the wire, so
that a test can replay them through a ``Session``; ``*_C2S`` and ``*_S2C`` are each direction's
whole byte stream.
"""

from __future__ import annotations

from xmppspy.events import Direction

C2S = Direction.C2S
S2C = Direction.S2C

USER = "juliet"
PASSWORD = "Wh3r3f0re-Art-Th0u"
PLAIN_PAYLOAD = b"AGp1bGlldABXaDNyM2YwcmUtQXJ0LVRoMHU="
"""base64 of ``\\0juliet\\0Wh3r3f0re-Art-Th0u``: PLAIN's initial response, which is the password."""
FULL_JID = "juliet@localhost/balcony"
BIND_ID = "948ad0e8cdae43ab9ccf4be8cfa8199d"

# -- the smallest headers, for relay, session and capture tests -----------------------------------

HEADER_C = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>"
)
HEADER_S = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='s1' version='1.0'>"
)


# -- the plaintext login --------------------------------------------------------------------------

CLIENT_HEADER = (
    b"<stream:stream to='localhost' xmlns:stream='http://etherx.jabber.org/streams' "
    b"xmlns='jabber:client' xml:lang='en' version='1.0'>"
)
XML_DECLARATION = b"<?xml version='1.0'?>"
SERVER_HEADER_1 = (
    b"<stream:stream xmlns='jabber:client' xml:lang='en' id='51b17871-37fc-4277-b3da-73ba270c4fbf'"
    b" from='localhost' version='1.0' xmlns:stream='http://etherx.jabber.org/streams'>"
)
SERVER_HEADER_2 = (
    b"<stream:stream xmlns='jabber:client' xml:lang='en' id='7c038d54-63e3-4fff-804c-8405238d1a12'"
    b" from='localhost' version='1.0' xmlns:stream='http://etherx.jabber.org/streams'>"
)
FEATURES_1 = (
    b"<stream:features>"
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism>"
    b"</mechanisms>"
    b"</stream:features>"
)
AUTH = (
    b'<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">'
    + PLAIN_PAYLOAD
    + b"</auth>"
)
SUCCESS = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
FEATURES_2 = (
    b"<stream:features>"
    b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind>"
    b"<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>"
    b"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://prosody.im'"
    b" ver='NKl8YgRSDjXAUQyVJuNxHn4d3tM='/>"
    b"<sm xmlns='urn:xmpp:sm:2'><optional/></sm>"
    b"<sm xmlns='urn:xmpp:sm:3'><optional/></sm>"
    b"<csi xmlns='urn:xmpp:csi:0'/>"
    b"<ver xmlns='urn:xmpp:features:rosterver'/>"
    b"</stream:features>"
)
BIND_SET = (
    b'<iq type="set" id="' + BIND_ID.encode() + b'">'
    b'<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>balcony</resource></bind></iq>'
)
BIND_RESULT = (
    b"<iq type='result' id='" + BIND_ID.encode() + b"'>"
    b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>juliet@localhost/balcony</jid></bind>"
    b"</iq>"
)
SM_ENABLE = b'<enable xmlns="urn:xmpp:sm:3" resume="true" />'
SM_ENABLED = (
    b"<enabled xmlns='urn:xmpp:sm:3' id='b35827ef-87dd-4b31-84c4-7a3a244b2f3e' resume='true'"
    b" max='600'/>"
)
ROSTER_GET = (
    b'<iq type="get" id="2d82b44bc9904d4fba24fb40d0a410de"><query xmlns="jabber:iq:roster" /></iq>'
)
ROSTER_RESULT = (
    b"<iq type='result' to='juliet@localhost/balcony' id='2d82b44bc9904d4fba24fb40d0a410de'>"
    b"<query xmlns='jabber:iq:roster' ver='3'>"
    b"<item subscription='both' jid='romeo@localhost' name='Romeo'>"
    b"<group>Montague &amp; Capulet</group></item>"
    b"<item subscription='to' jid='nurse@localhost' name='Nurse &lt;Angelica&gt;'/>"
    b"</query></iq>"
)
PRESENCE = b"<presence><show>chat</show><status>On the balcony \xe2\x98\xbe</status></presence>"
PRESENCE_SELF = (
    b"<presence from='juliet@localhost/balcony' to='juliet@localhost/balcony'>"
    b"<show>chat</show><status>On the balcony \xe2\x98\xbe</status></presence>"
)
PRESENCE_ROMEO = (
    b"<presence from='romeo@localhost/orchard' to='juliet@localhost/balcony'>"
    b"<priority>5</priority>"
    b"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://slixmpp.com/'"
    b" ver='z0mVnSLLm4b/Ul0KIh/2z/xhNrA='/>"
    b"</presence>"
)
MESSAGE_IN = (
    b"<message type='chat' id='f3be5bd0-1f75-47a0-b564-5858d5711ca1'"
    b" from='romeo@localhost/orchard' to='juliet@localhost/balcony' xml:lang='en'>"
    b"<body>But soft! What light through yonder window breaks? "
    # U+1F339 ROSE, 4 bytes; U+00E7, 2 bytes; Cyrillic, 2 bytes each; U+2192, 3 bytes
    b"\xf0\x9f\x8c\xb9 \xc3\x87a va, "
    b"\xd0\x94\xd0\xb6\xd1\x83\xd0\xbb\xd1\x8c\xd0\xb5\xd1\x82\xd1\x82\xd0\xb0? "
    b"It&apos;s &lt;3 &amp; more \xe2\x86\x92 &quot;forever&quot;</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/>"
    b"</message>"
)
MESSAGE_IN_BODY = (
    "But soft! What light through yonder window breaks? \U0001f339 \u00c7a va, "
    '\u0414\u0436\u0443\u043b\u044c\u0435\u0442\u0442\u0430? It\'s <3 & more \u2192 "forever"'
)
MESSAGE_OUT = (
    b'<message to="romeo@localhost" type="chat" id="aa9fb75a3f64470cba734ba082ccb644">'
    b"<body><![CDATA[O Romeo, Romeo! wherefore art thou Romeo? <3 & \xf0\x9f\x8c\x99 </x>]]></body>"
    b'<active xmlns="http://jabber.org/protocol/chatstates" />'
    b"</message>"
)
MESSAGE_OUT_BODY = "O Romeo, Romeo! wherefore art thou Romeo? <3 & \U0001f319 </x>"
SM_REQUEST_C2S = b'<r xmlns="urn:xmpp:sm:3" />'
SM_ANSWER_S2C = b"<a xmlns='urn:xmpp:sm:3' h='3'/>"
SM_REQUEST_S2C = b"<r xmlns='urn:xmpp:sm:3'/>"
SM_ANSWER_C2S = b'<a xmlns="urn:xmpp:sm:3" h="4" />'
PING = (
    b'<iq type="get" to="localhost" id="7a4ffc0cb6b04895b0f39fa2a8dda70e">'
    b'<ping xmlns="urn:xmpp:ping" /></iq>'
)
PONG = (
    b"<iq type='result' from='localhost' id='7a4ffc0cb6b04895b0f39fa2a8dda70e'"
    b" to='juliet@localhost/balcony'/>"
)
KEEPALIVE = b" "
CLOSE = b"</stream:stream>"

LOGIN: tuple[tuple[Direction, bytes], ...] = (
    (C2S, CLIENT_HEADER),
    (S2C, XML_DECLARATION),
    (S2C, SERVER_HEADER_1),
    (S2C, FEATURES_1),
    (C2S, AUTH),
    (S2C, SUCCESS),
    (C2S, CLIENT_HEADER),
    (S2C, XML_DECLARATION),
    (S2C, SERVER_HEADER_2),
    (S2C, FEATURES_2),
    (C2S, BIND_SET),
    (S2C, BIND_RESULT),
    (C2S, SM_ENABLE),
    (S2C, SM_ENABLED),
    (C2S, ROSTER_GET),
    (S2C, ROSTER_RESULT),
    (C2S, PRESENCE),
    (S2C, PRESENCE_SELF),
    (S2C, PRESENCE_ROMEO),
    (S2C, MESSAGE_IN),
    (C2S, MESSAGE_OUT),
    (C2S, SM_REQUEST_C2S),
    (S2C, SM_ANSWER_S2C),
    (S2C, SM_REQUEST_S2C),
    (C2S, SM_ANSWER_C2S),
    (C2S, KEEPALIVE),
    (S2C, KEEPALIVE),
    (C2S, PING),
    (S2C, PONG),
    (C2S, KEEPALIVE),
    (C2S, CLOSE),
    (S2C, CLOSE),
)
"""A whole plaintext session: login with SASL PLAIN, bind, roster, presence, chat, ping, close."""

LOGIN_C2S = b"".join(data for direction, data in LOGIN if direction is C2S)
LOGIN_S2C = b"".join(data for direction, data in LOGIN if direction is S2C)

# -- STARTTLS -------------------------------------------------------------------------------------

STARTTLS_FEATURES = (
    b"<stream:features>"
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"</stream:features>"
)
STARTTLS = b'<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls" />'
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
CLIENT_HELLO = (
    # TLS record: handshake, legacy version TLS 1.0, length 512; ClientHello, TLS 1.2, random ...
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    b"\x9b\x3c<\x8e\x1f>\x00\xd4\xe7&\x11\x8b\x02\xfe\xc4\x7f\x83\x1d\xb0\x9a"
    b"\x6e\x12\x3c\x2f\x3e\x99\x00\xff\x8d\x55\xa2\x41"
    b"\x20\x5a\x44\xfc\x0e\x9d\x61\x07\x88\x2a\x9c\x13\x01\x13\x02\x13\x03\xc0\x2b"
    b"\x00\x00\x0e\x00\x0c\x00\x00\x09localhost"
)
SERVER_HELLO = (
    # ServerHello, ChangeCipherSpec, then encrypted application data that happens to look like XML
    b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03"
    b"\x4e\x8f\xa1\x07</stream:stream>\x00\x9c\xee\x3a\xb0\x11\xd4\xc3\x28\xfe"
    b"\x14\x03\x03\x00\x01\x01"
    b"\x17\x03\x03\x00\x35\xc8\x85\x5c\xb1\x9e<message>\xf8\x02\x7e\xaa"
)

STARTTLS_SESSION: tuple[tuple[Direction, bytes], ...] = (
    (C2S, CLIENT_HEADER),
    (S2C, XML_DECLARATION),
    (S2C, SERVER_HEADER_1),
    (S2C, STARTTLS_FEATURES),
    (C2S, STARTTLS),
    (S2C, PROCEED),
    (C2S, CLIENT_HELLO),
    (S2C, SERVER_HELLO),
)
"""A session that upgrades to TLS: after ``<proceed/>`` nothing is XML any more."""

STARTTLS_C2S = b"".join(data for direction, data in STARTTLS_SESSION if direction is C2S)
STARTTLS_S2C = b"".join(data for direction, data in STARTTLS_SESSION if direction is S2C)
