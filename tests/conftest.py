"""Shared fixtures. End-to-end fixtures run real software (see ``tests/support``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.prosody import ProsodyError, ProsodyServer

#: The accounts the session's Prosody is created with: user name -> password.
E2E_USERS: dict[str, str] = {"alice": "alice-pass-1234", "bob": "bob-pass-5678"}


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """A real Prosody for the whole session, plaintext c2s on a free loopback port.

    Attributes tests use: ``host``, ``c2s_port``, ``domain``, ``users`` (name -> password),
    ``jid(name)``, ``log_path`` and ``log_tail()``. Fails (never skips) when Prosody is missing.
    """
    server = ProsodyServer(tmp_path_factory.mktemp("prosody"), users=E2E_USERS)
    failure = None
    try:
        server.start()
    except ProsodyError as exc:
        failure = f"could not start Prosody for the end-to-end tests: {exc}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    print(f"started {server.describe()}")  # shown with a failing test's captured output
    try:
        yield server
    finally:
        server.stop()
