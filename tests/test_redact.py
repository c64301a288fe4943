"""Secrets beyond PLAIN: what intercepted TLS makes visible must not reach the view or capture."""

from __future__ import annotations

import base64

import pytest

from xmppspy.events import Direction, Kind, Stanza
from xmppspy.session import Session

C, S = Direction.C2S, Direction.S2C
HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"to='example.test' version='1.0'>"
)
SASL = b"urn:ietf:params:xml:ns:xmpp-sasl"


def b64(text: bytes) -> bytes:
    return base64.b64encode(text)


def sasl(name: bytes, payload: bytes = b"", mechanism: bytes | None = None) -> bytes:
    attrs = b" mechanism='" + mechanism + b"'" if mechanism else b""
    return b"<" + name + b" xmlns='" + SASL + b"'" + attrs + b">" + payload + b"</" + name + b">"


CLIENT_FIRST = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
SERVER_FIRST = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
CLIENT_FINAL = b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
SERVER_FINAL = b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="


def run(steps: list[tuple[Direction, bytes]], *, show_secrets: bool = False) -> list[Stanza]:
    session = Session(show_secrets=show_secrets)
    session.feed(C, HEADER)
    session.feed(S, HEADER.replace(b"to=", b"from="))
    out: list[Stanza] = []
    for direction, data in steps:
        out += [e for e in session.feed(direction, data) if isinstance(e, Stanza)]
    return out


SCRAM = [
    (C, sasl(b"auth", b64(CLIENT_FIRST), b"SCRAM-SHA-1")),
    (S, sasl(b"challenge", b64(SERVER_FIRST))),
    (C, sasl(b"response", b64(CLIENT_FINAL))),
    (S, sasl(b"success", b64(SERVER_FINAL))),
]


def test_scram_proof_and_server_signature_are_redacted_the_rest_is_kept() -> None:
    auth, challenge, response, success = run(SCRAM)
    assert b64(CLIENT_FIRST) in auth.raw and not auth.redacted  # user name and nonce: debuggable
    assert b64(SERVER_FIRST) in challenge.raw and not challenge.redacted
    assert response.redacted and b64(CLIENT_FINAL) not in response.raw
    assert b"[redacted: SCRAM-SHA-1 response]" in response.raw
    assert success.redacted and b64(SERVER_FINAL) not in success.raw
    assert b"[redacted: SCRAM server signature]" in success.raw
    for stanza in (response, success):
        assert stanza.element is not None  # still well-formed XML for the view


def test_a_scram_server_signature_sent_as_a_last_challenge_is_redacted() -> None:
    steps = [*SCRAM[:3], (S, sasl(b"challenge", b64(SERVER_FINAL))), (C, sasl(b"response"))]
    stanzas = run(steps)
    assert stanzas[3].redacted and b64(SERVER_FINAL) not in stanzas[3].raw
    assert not stanzas[4].redacted  # the empty response that acknowledges it


@pytest.mark.parametrize(
    ("mechanism", "payload"),
    [
        (b"X-OAUTH2", b"\0alice\0ya29.a0AfH6SMBtoken"),
        (b"OAUTHBEARER", b"n,a=alice@example.test,\x01auth=Bearer ya29.token\x01\x01"),
        (b"X-FAST", b"some-fast-token"),
    ],
)
def test_token_mechanisms_are_redacted(mechanism: bytes, payload: bytes) -> None:
    (auth,) = run([(C, sasl(b"auth", b64(payload), mechanism))])
    assert auth.redacted and b64(payload) not in auth.raw
    assert b"[redacted: " + mechanism + b" credentials]" in auth.raw


def test_digest_md5_response_is_redacted() -> None:
    answer = b64(b'username="alice",response=d388dad90d4bbd760a152321f2143af7')
    steps = [
        (C, sasl(b"auth", b"", b"DIGEST-MD5")),
        (S, sasl(b"challenge", b64(b'realm="example.test",nonce="abc",qop="auth"'))),
        (C, sasl(b"response", answer)),
    ]
    auth, challenge, response = run(steps)
    assert not auth.redacted and not challenge.redacted
    assert response.redacted and answer not in response.raw


def test_anonymous_is_left_alone() -> None:
    (auth,) = run([(C, sasl(b"auth", b64(b"trace"), b"ANONYMOUS"))])
    assert not auth.redacted


@pytest.mark.parametrize(
    ("query", "secret"),
    [
        (
            b"<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>alice</username>"
            b"<password>hunter2</password></query></iq>",
            b"hunter2",
        ),
        (
            b"<iq type='set' id='a1'><query xmlns='jabber:iq:auth'><username>alice</username>"
            b"<password>hunter2</password><resource>r</resource></query></iq>",
            b"hunter2",
        ),
        (
            b"<iq type='set' id='a2'><query xmlns='jabber:iq:auth'><username>alice</username>"
            b"<digest>48fc78be9ec8f86d8ce1c39c320c97c21d62334d</digest></query></iq>",
            b"48fc78be9ec8",
        ),
    ],
)
def test_registration_and_legacy_auth_passwords_are_redacted(query: bytes, secret: bytes) -> None:
    (iq,) = run([(C, query)])
    assert iq.kind is Kind.IQ and iq.redacted
    assert secret not in iq.raw
    assert iq.element.findtext(".//{jabber:iq:register}username") in (None, "alice")


def test_an_empty_password_element_is_not_a_secret() -> None:
    form = b"<iq type='result' id='r0'><query xmlns='jabber:iq:register'><username/><password/></query></iq>"
    (iq,) = run([(S, form)])
    assert not iq.redacted and iq.raw == form


def test_show_secrets_keeps_everything() -> None:
    stanzas = run(SCRAM, show_secrets=True)
    assert not any(s.redacted for s in stanzas)
    assert b64(CLIENT_FINAL) in stanzas[2].raw
