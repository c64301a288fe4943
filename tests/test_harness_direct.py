"""The end-to-end harness itself: the scripted slixmpp chat straight against a real Prosody."""

from __future__ import annotations

import functools
import time

import pytest
import trio
from slixmpp.xmlstream.tostring import escape
from support.clients import (
    ALICE_TO_BOB,
    BOB_TO_ALICE,
    LARGE_BODY,
    RESOURCES,
    ReceivedMessage,
    run_chat_scenario,
)
from support.prosody import ProsodyServer, free_loopback_ports

pytestmark = pytest.mark.e2e


def test_large_body_fits_prosodys_stanza_limit() -> None:
    assert 90_000 <= len(LARGE_BODY.encode()) <= 120_000
    # Prosody's default c2s_stanza_size_limit is 256 KiB; leave room for the envelope.
    assert len(escape(LARGE_BODY).encode()) < 200 * 1024
    assert LARGE_BODY in ALICE_TO_BOB


async def test_chat_directly_against_prosody(prosody: ProsodyServer) -> None:
    result = await trio.to_thread.run_sync(
        functools.partial(
            run_chat_scenario, prosody.host, prosody.c2s_port, prosody.domain, prosody.users
        )
    )

    assert result.errors == [], result.summary()
    alice = f"{prosody.jid('alice')}/{RESOURCES['alice']}"
    bob = f"{prosody.jid('bob')}/{RESOURCES['bob']}"
    assert result.bound_jids == {"alice": alice, "bob": bob}
    assert result.received == {
        "bob": [ReceivedMessage(alice, bob, body) for body in ALICE_TO_BOB],
        "alice": [ReceivedMessage(bob, alice, body) for body in BOB_TO_ALICE],
    }, result.summary()
    assert result.ping_ok
    assert result.ok
    result.assert_ok()

    # The server saw plaintext PLAIN logins: no TLS anywhere.
    log = prosody.log_path.read_text("utf-8", "replace")
    assert f"Authenticated as {prosody.jid('alice')}" in log
    assert f"Authenticated as {prosody.jid('bob')}" in log
    assert "Stream encrypted" not in log


async def test_wrong_password_fails_fast_with_a_clear_error(prosody: ProsodyServer) -> None:
    users = {**prosody.users, "bob": "not-bobs-password"}
    started = time.monotonic()
    result = await trio.to_thread.run_sync(
        functools.partial(
            run_chat_scenario, prosody.host, prosody.c2s_port, prosody.domain, users, timeout=10
        )
    )
    assert time.monotonic() - started < 8
    assert not result.ok
    assert any("bob: SASL authentication failed" in e for e in result.errors), result.summary()
    with pytest.raises(AssertionError, match="chat scenario failed"):
        result.assert_ok()


async def test_nothing_listening_fails_fast_with_a_clear_error(prosody: ProsodyServer) -> None:
    (port,) = free_loopback_ports(1)
    result = await trio.to_thread.run_sync(
        functools.partial(
            run_chat_scenario, prosody.host, port, prosody.domain, prosody.users, timeout=10
        )
    )
    assert not result.ok
    assert any(f"connection to 127.0.0.1:{port} failed" in e for e in result.errors), (
        result.summary()
    )
    assert result.duration < 8
