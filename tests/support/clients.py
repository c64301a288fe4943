"""A scripted two-client XMPP chat, played by real slixmpp clients.

slixmpp is asyncio and the tests are trio, so :func:`run_chat_scenario` is synchronous: it makes,
runs and closes an asyncio event loop of its own, and is meant to run in a worker thread::

    result = await trio.to_thread.run_sync(
        functools.partial(run_chat_scenario, host, port, domain, users)
    )
    result.assert_ok()

The clients connect to ``host:port`` exactly as given (no DNS, no SRV), in plaintext only: no
direct TLS, no STARTTLS, SASL PLAIN over the clear connection. The server must allow that
(Prosody: ``c2s_require_encryption = false``, ``allow_unencrypted_plain_auth = true``).

The script:

1. alice and bob connect, authenticate with SASL PLAIN and bind the resources
   :data:`RESOURCES`; each fetches its roster and sends initial presence;
2. alice sends bob every body of :data:`ALICE_TO_BOB` and bob sends alice every body of
   :data:`BOB_TO_ALICE`, all ``type='chat'`` to the other's bound full JID, in order;
3. alice pings the server (XEP-0199) and waits for the result;
4. once each side has received every message sent to it, both close their streams.

The bodies are module constants so that a test can check what a proxy recorded against them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

ALICE = "alice"
BOB = "bob"
USERS = (ALICE, BOB)

#: The resource each client asks to bind (Prosody grants the requested resource).
RESOURCES: Mapping[str, str] = {ALICE: "xmppspy-alice", BOB: "xmppspy-bob"}

UNICODE_BODY = "héllo wörld ☃ 🎉"
MARKUP_BODY = "1 < 2 && 3 > 2, <b>not bold</b> &amp; not an entity"
QUOTES_BODY = "\"double quotes\", 'single quotes' and `backticks`"
CDATA_END_BODY = "]]> ends a CDATA section; <![CDATA[ starts one"


def _large_body(lines: int = 1000, width: int = 99) -> str:
    """About 100 KB of text with markup characters and multi-byte UTF-8 on every line."""
    out = []
    for i in range(lines):
        line = f"{i:04d} the quick brown fox <jumps> over the lazy dog & says «☃ ✓» "
        out.append((line * 2)[:width])
    return "\n".join(out)


#: A ~100 KB body (99,999 characters, 1000 lines); well under Prosody's 256 KiB stanza limit
#: even once ``<``, ``>`` and ``&`` are escaped.
LARGE_BODY = _large_body()

#: What alice sends bob, in this order.
ALICE_TO_BOB: tuple[str, ...] = (
    "Hello Bob!",
    UNICODE_BODY,
    MARKUP_BODY,
    QUOTES_BODY,
    LARGE_BODY,
)
#: What bob sends alice, in this order.
BOB_TO_ALICE: tuple[str, ...] = (
    "Hi Alice, got it.",
    "Ünïcödé back: 日本語, русский, ελληνικά, 🐍🎉",
    CDATA_END_BODY,
    "tab\there and two\nlines",
)
#: Every body of the scenario, in sending order per direction (alice's first).
ALL_BODIES: tuple[str, ...] = ALICE_TO_BOB + BOB_TO_ALICE

#: Who sends what to whom: (sender, recipient) -> bodies.
SCRIPT: Mapping[tuple[str, str], tuple[str, ...]] = {
    (ALICE, BOB): ALICE_TO_BOB,
    (BOB, ALICE): BOB_TO_ALICE,
}

#: The client that pings the server.
PINGER = ALICE

_T = TypeVar("_T")


class ReceivedMessage(NamedTuple):
    """A chat message as a client received it: the ``from`` and ``to`` attributes (full JIDs)."""

    sender: str
    recipient: str
    body: str


@dataclass
class ScenarioResult:
    #: Messages each user received (user name -> in arrival order).
    received: dict[str, list[ReceivedMessage]] = field(
        default_factory=lambda: {user: [] for user in USERS}
    )
    #: The full JID each user bound (user name -> JID); missing if binding never happened.
    bound_jids: dict[str, str] = field(default_factory=dict)
    #: Whether :data:`PINGER`'s XEP-0199 ping to the server got an ``iq type='result'``.
    ping_ok: bool = False
    #: Everything that went wrong, in order; empty on success.
    errors: list[str] = field(default_factory=list)
    #: Wall-clock seconds the scenario took, disconnection included.
    duration: float = 0.0
    #: What was to be sent: (sender, recipient) -> bodies.
    script: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=lambda: SCRIPT)

    @property
    def ok(self) -> bool:
        return not self.errors and self.ping_ok and self.received == self.expected_received()

    def bodies_received_by(self, user: str) -> list[str]:
        return [m.body for m in self.received[user]]

    def expected_received(self) -> dict[str, list[ReceivedMessage]]:
        """What each user should have received, given the JIDs that were bound."""
        expected: dict[str, list[ReceivedMessage]] = {user: [] for user in USERS}
        for (sender, recipient), bodies in self.script.items():
            from_jid = self.bound_jids.get(sender, f"<{sender} never bound>")
            to_jid = self.bound_jids.get(recipient, f"<{recipient} never bound>")
            expected[recipient] = [ReceivedMessage(from_jid, to_jid, b) for b in bodies]
        return expected

    def summary(self) -> str:
        lines = [f"scenario took {self.duration:.2f} s; bound JIDs: {self.bound_jids}"]
        lines.append(f"ping to the server answered with a result: {self.ping_ok}")
        expected = self.expected_received()
        for user in USERS:
            got = self.received[user]
            lines.append(f"{user} received {len(got)}/{len(expected[user])} messages:")
            lines.extend(f"  {_preview(m)}" for m in got)
        lines.append("errors:" if self.errors else "errors: none")
        lines.extend(f"  {e}" for e in self.errors)
        return "\n".join(lines)

    def assert_ok(self) -> None:
        """Raise ``AssertionError`` with :meth:`summary` unless everything went to plan."""
        if not self.ok:
            raise AssertionError(f"chat scenario failed\n{self.summary()}")


class ScenarioError(Exception):
    """A step of the scenario failed; the message says which."""


def _preview(message: ReceivedMessage, limit: int = 80) -> str:
    body = message.body if len(message.body) <= limit else f"{message.body[:limit]}... "
    return f"{message.sender} -> {message.recipient}: {body!r} ({len(message.body)} chars)"


def run_chat_scenario(
    host: str,
    port: int,
    domain: str,
    users: Mapping[str, str],
    *,
    timeout: float = 20.0,
    disconnect_timeout: float = 5.0,
    use_cdata: bool = False,
    script: Mapping[tuple[str, str], tuple[str, ...]] = SCRIPT,
    tls_ca: Path | None = None,
    direct_tls: bool = False,
    mechanism: str = "PLAIN",
) -> ScenarioResult:
    """Play the chat between alice and bob against ``host:port``; see the module docstring.

    ``users`` maps user names to passwords and must contain ``alice`` and ``bob`` (accounts
    on ``domain``). ``timeout`` bounds everything up to the last message and the ping;
    ``disconnect_timeout`` bounds closing the streams. ``use_cdata`` makes slixmpp escape
    text with CDATA sections instead of entities. ``script`` replaces :data:`SCRIPT`.
    ``tls_ca``: use STARTTLS (direct TLS with ``direct_tls``), trusting only the CA in that PEM
    file (e.g. xmppspy's). ``mechanism``: the SASL mechanism the clients insist on.

    Never raises for a failure of the scenario itself: the returned result lists what went
    wrong in ``errors`` (call :meth:`ScenarioResult.assert_ok`). Must not be called from a
    thread running an asyncio loop.
    """
    missing = [user for user in USERS if user not in users]
    if missing:
        raise ValueError(f"users lacks {missing}: the scenario needs {list(USERS)}")
    result = ScenarioResult(script=script)
    started = time.monotonic()
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, context: _loop_error(result, context))
    try:
        asyncio.set_event_loop(loop)
        with _collect_slixmpp_errors(result):
            scenario = _Scenario(
                loop, host, port, domain, users, use_cdata, result, tls_ca, direct_tls, mechanism
            )
            # Belt and braces: the scenario bounds each of its own steps.
            overall = timeout + disconnect_timeout + 5.0
            try:
                loop.run_until_complete(
                    asyncio.wait_for(scenario.run(timeout, disconnect_timeout), overall)
                )
            except TimeoutError:
                result.errors.append(f"scenario did not finish within {overall} s")
            finally:
                scenario.abort_all()
                _cancel_remaining_tasks(loop)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        result.duration = time.monotonic() - started
    return result


class _Scenario:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        domain: str,
        users: Mapping[str, str],
        use_cdata: bool,
        result: ScenarioResult,
        tls_ca: Path | None = None,
        direct_tls: bool = False,
        mechanism: str = "PLAIN",
    ) -> None:
        self.loop = loop
        self.mechanism = mechanism
        self.tls_ca = tls_ca
        self.direct_tls = direct_tls
        self.host = host
        self.port = port
        self.domain = domain
        self.result = result
        self.expected_counts = {
            user: sum(len(b) for (_, to), b in result.script.items() if to == user)
            for user in USERS
        }
        self.all_received = asyncio.Event()
        self.failed: asyncio.Future[str] = loop.create_future()
        self.session_started: dict[str, asyncio.Future[None]] = {}
        self.clients: dict[str, slixmpp.ClientXMPP] = {}
        for user in USERS:
            self.clients[user] = self._make_client(user, users[user], use_cdata)

    def _make_client(self, user: str, password: str, use_cdata: bool) -> slixmpp.ClientXMPP:
        jid = f"{user}@{self.domain}/{RESOURCES[user]}"
        client = slixmpp.ClientXMPP(
            jid,
            password,
            plugin_config={
                # One mechanism, allowed over an unencrypted stream too (--tls strip).
                "feature_mechanisms": {
                    "unencrypted_plain": True,
                    "unencrypted_scram": True,
                    "use_mech": self.mechanism,
                },
                "xep_0199": {"keepalive": False},
            },
            loop=self.loop,
        )
        # Plaintext only: connect() with an explicit address tries, in turn, direct TLS (if
        # enable_direct_tls), a plain socket then STARTTLS (if enable_starttls) and a plain
        # socket without STARTTLS (if enable_plaintext). enable_starttls = False also makes
        # slixmpp ignore a <starttls/> stream feature.
        client.enable_direct_tls = self.direct_tls
        client.enable_starttls = self.tls_ca is not None and not self.direct_tls
        client.enable_plaintext = self.tls_ca is None
        if self.tls_ca is not None:
            client.ssl_context = ssl.create_default_context(cafile=str(self.tls_ca))
        client.use_ipv6 = False
        client.use_cdata = use_cdata
        # Nothing on the wire but the script: no whitespace keepalives.
        client.whitespace_keepalive = False
        client.register_plugin("xep_0030")
        client.register_plugin("xep_0199")

        started: asyncio.Future[None] = self.loop.create_future()
        self.session_started[user] = started

        def on_session_start(_event: Any) -> None:
            self.result.bound_jids[user] = str(client.boundjid.full)
            if not started.done():
                started.set_result(None)

        def on_message(msg: Any) -> None:
            if msg["type"] not in ("chat", "normal"):
                self.result.errors.append(f"{user} got an unexpected message: {msg}")
                return
            received = self.result.received[user]
            received.append(ReceivedMessage(str(msg["from"]), str(msg["to"]), msg["body"]))
            if all(len(self.result.received[u]) >= n for u, n in self.expected_counts.items()):
                self.all_received.set()

        def fail(what: str) -> Any:
            def handler(event: Any) -> None:
                detail = f": {event}" if event else ""
                self._fail(f"{user}: {what}{detail}")

            return handler

        client.add_event_handler("session_start", on_session_start)
        client.add_event_handler("message", on_message)
        client.add_event_handler("message_error", fail("received a message error"))
        client.add_event_handler("connection_failed", fail(f"connection to {self.address} failed"))
        client.add_event_handler("failed_auth", fail("SASL authentication failed"))
        client.add_event_handler("failed_all_auth", fail("no SASL mechanism left to try"))
        client.add_event_handler("stream_error", fail("stream error"))
        return client

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _fail(self, error: str) -> None:
        self.result.errors.append(error)
        if not self.failed.done():
            self.failed.set_result(error)

    async def _step(self, what: str, awaitable: Awaitable[_T], deadline: float) -> _T:
        """Await ``awaitable`` until ``deadline``, or until a client reports a failure."""
        task = asyncio.ensure_future(awaitable)
        remaining = max(0.0, deadline - self.loop.time())
        try:
            done, _ = await asyncio.wait(
                {task, self.failed}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task in done:
            return task.result()
        if self.failed.done():
            raise ScenarioError(f"gave up while {what}, because {self.failed.result()}")
        raise ScenarioError(f"timed out while {what} ({self.address})")

    async def run(self, timeout: float, disconnect_timeout: float) -> None:
        deadline = self.loop.time() + timeout
        try:
            await self._play(deadline)
        except ScenarioError as exc:
            self.result.errors.append(str(exc))
        except (IqError, IqTimeout) as exc:
            self.result.errors.append(f"unexpected IQ failure: {exc!r}")
        finally:
            await self._disconnect(disconnect_timeout)

    async def _play(self, deadline: float) -> None:
        for client in self.clients.values():
            client.connect(self.host, self.port)
        for user in USERS:
            await self._step(f"{user} logs in and binds", self.session_started[user], deadline)

        for user, client in self.clients.items():
            await self._step(f"{user} fetches its roster", client.get_roster(), deadline)
            client.send_presence()

        for (sender, recipient), bodies in self.result.script.items():
            to = self.result.bound_jids[recipient]
            for body in bodies:
                self.clients[sender].send_message(mto=to, mbody=body, mtype="chat")

        ping = (
            self.clients[PINGER]
            .plugin["xep_0199"]
            .send_ping(self.domain, timeout=max(1.0, deadline - self.loop.time()))
        )
        try:
            reply = await self._step(f"{PINGER} pings {self.domain}", ping, deadline)
        except (IqError, IqTimeout) as exc:
            self.result.errors.append(f"ping to {self.domain} failed: {exc!r}")
        else:
            self.result.ping_ok = reply["type"] == "result"
            if not self.result.ping_ok:
                self.result.errors.append(f"ping to {self.domain} got {reply}")

        await self._step("waiting for every message to arrive", self.all_received.wait(), deadline)

    async def _disconnect(self, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        waits = []
        for client in self.clients.values():
            if client.transport is not None:
                waits.append(client.disconnect(wait=timeout, reason="scenario done"))
        if waits:
            _, pending = await asyncio.wait(waits, timeout=max(0.1, deadline - self.loop.time()))
            if pending:
                self.result.errors.append(f"streams not closed within {timeout} s")

    def abort_all(self) -> None:
        for client in self.clients.values():
            client.cancel_connection_attempt()
            if client.transport is not None:
                client.abort()


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def _loop_error(result: ScenarioResult, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    message = context.get("message", "")
    result.errors.append(f"asyncio: {message}" + (f": {exc!r}" if exc is not None else ""))


class _ErrorCollector(logging.Handler):
    def __init__(self, result: ScenarioResult) -> None:
        super().__init__(logging.ERROR)
        self.result = result
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.result.errors.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _collect_slixmpp_errors(result: ScenarioResult) -> Iterator[None]:
    """Record slixmpp's ERROR log records (of this thread) as scenario errors."""
    logger = logging.getLogger("slixmpp")
    handler = _ErrorCollector(result)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
