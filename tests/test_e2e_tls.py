"""End to end through TLS: a Prosody that requires encryption, slixmpp clients, xmppspy between."""

from __future__ import annotations

import base64
import contextlib
import functools
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme
from conftest import E2E_USERS
from support.clients import ALICE_TO_BOB, run_chat_scenario
from support.prosody import ProsodyServer, free_loopback_ports, tls_prosody
from support.proxy import ProxyProcess

from xmppspy.capture import open_capture
from xmppspy.events import (
    Direction,
    Kind,
    Opaque,
    OpaqueReason,
    Record,
    Rewritten,
    Stanza,
    TlsStarted,
)

pytestmark = pytest.mark.e2e

BODY = "{jabber:client}body"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProsodyServer, Path]]:
    """A Prosody with c2s_require_encryption, its certificate from a CA of the test's own."""
    server, server_ca = tls_prosody(tmp_path_factory.mktemp("tls-prosody"), E2E_USERS)
    server.start()
    try:
        yield server, server_ca
    finally:
        server.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """xmppspy's own CA lives here for the test (the proxy and `xmppspy ca` inherit it)."""
    monkeypatch.setenv("XMPPSPY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def export_ca(home: Path, target: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "xmppspy", "ca", "--export", str(target)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return target


def recorded(capture: Path) -> list[Record]:
    """Every record of a capture."""
    with open_capture(capture) as reader:
        return list(reader)


async def chat(
    server: ProsodyServer,
    proxy: ProxyProcess,
    client_ca: Path | None,
    timeout: float = 20,
    *,
    direct_tls_port: int | None = None,
    mechanism: str = "PLAIN",
):
    """Run the chat through the proxy: STARTTLS (plaintext without ``client_ca``), or direct
    TLS to ``direct_tls_port`` (the proxy's --listen-tls)."""
    proxy.start()
    try:
        return await trio.to_thread.run_sync(
            functools.partial(
                run_chat_scenario,
                "127.0.0.1",
                direct_tls_port or proxy.port,
                server.domain,
                server.users,
                tls_ca=client_ca,
                direct_tls=direct_tls_port is not None,
                mechanism=mechanism,
                timeout=timeout,
            )
        )
    finally:
        proxy.stop()
        proxy.kill()


async def test_intercepted_session_is_seen_in_clear_and_works(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    server, server_ca = tls_server
    client_ca = export_ca(home, tmp_path / "xmppspy-ca.pem")
    capture = tmp_path / "session.jsonl"
    proxy = ProxyProcess(
        tmp_path,
        f"{server.host}:{server.c2s_port}",
        ("--record", str(capture), "--upstream-ca", str(server_ca)),  # the view on, too
    )
    result = await chat(server, proxy, client_ca)
    result.assert_ok()  # the clients trusted xmppspy's certificate for example.test
    records = recorded(capture)
    started = [r.event for r in records if isinstance(r.event, TlsStarted)]
    assert len(started) == 2  # both connections
    assert all(s.intercepted and s.verified for s in started)
    assert all(s.server_issuer and "trustme" in s.server_issuer for s in started)
    assert all(s.server_fingerprint and len(s.server_fingerprint) == 95 for s in started)
    sent = [
        r.event.element.findtext(BODY)
        for r in records
        if isinstance(r.event, Stanza)
        and r.event.kind is Kind.MESSAGE
        and r.event.dir is Direction.C2S
        and r.event.element.find(BODY) is not None
    ]
    assert sorted(b for b in sent if b in ALICE_TO_BOB) == sorted(ALICE_TO_BOB)
    assert not any(isinstance(r.event, Opaque) for r in records)
    content = capture.read_bytes()
    output = proxy.stdout() + proxy.stderr()
    assert "TLS intercepted: TLSv1." in output and "server certificate verified" in output
    for user, password in server.users.items():
        plain = base64.b64encode(f"\0{user}\0{password}".encode())  # the PLAIN payload
        assert password.encode() not in content and plain not in content
        assert password not in output and plain.decode() not in output


async def test_passthrough_relays_tls_unseen(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    server, server_ca = tls_server
    capture = tmp_path / "session.jsonl"
    proxy = ProxyProcess(
        tmp_path,
        f"{server.host}:{server.c2s_port}",
        ("--record", str(capture), "--tls", "passthrough", "-q"),
    )
    result = await chat(server, proxy, server_ca)  # the clients verify the real server
    result.assert_ok()
    records = recorded(capture)
    started = [r.event for r in records if isinstance(r.event, TlsStarted)]
    assert started and not any(s.intercepted for s in started)
    opaque = [r.event for r in records if isinstance(r.event, Opaque)]
    assert opaque and all(o.reason is OpaqueReason.TLS for o in opaque)
    assert not any(isinstance(r.event, Stanza) and r.event.kind is Kind.MESSAGE for r in records)


async def test_an_untrusted_server_is_refused_with_a_reason(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    server, _ = tls_server
    client_ca = export_ca(home, tmp_path / "xmppspy-ca.pem")
    proxy = ProxyProcess(tmp_path, f"{server.host}:{server.c2s_port}", ("-q",))
    result = await chat(server, proxy, client_ca, timeout=3)
    assert not result.ok
    assert "TLS with the server failed: certificate verify failed" in proxy.stderr()
    assert "Traceback" not in proxy.stderr()


@pytest.mark.parametrize("upstream", ["direct-tls", "starttls"])
async def test_direct_tls_clients(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path, upstream: str
) -> None:
    """XEP-0368: clients speak TLS from the first byte to --listen-tls. xmppspy reaches the
    server by direct TLS (--upstream-tls), or without it by its own STARTTLS on --upstream."""
    server, server_ca = tls_server
    client_ca = export_ca(home, tmp_path / "xmppspy-ca.pem")
    (tls_port,) = free_loopback_ports(1)
    capture = tmp_path / "session.jsonl"
    direct = (
        *("--upstream-tls", f"{server.host}:{server.c2s_direct_tls_port}"),
        *("--upstream-tls-name", server.domain),
    )
    proxy = ProxyProcess(
        tmp_path,
        f"{server.host}:{server.c2s_port}",
        (
            *("--listen-tls", f"127.0.0.1:{tls_port}", "--upstream-ca", str(server_ca)),
            *(direct if upstream == "direct-tls" else ()),
            *("--record", str(capture), "-q"),
        ),
    )
    result = await chat(server, proxy, client_ca, direct_tls_port=tls_port)
    result.assert_ok()
    records = recorded(capture)
    started = [r.event for r in records if isinstance(r.event, TlsStarted)]
    assert len(started) == 2
    assert all(s.intercepted and s.verified and not s.stripped for s in started)
    assert sorted(b for b in message_bodies(records) if b in ALICE_TO_BOB) == sorted(ALICE_TO_BOB)
    # from the first stream header on, everything was seen in clear
    assert not any(isinstance(r.event, Opaque) for r in records)
    where = f"direct TLS on 127.0.0.1:{tls_port}, relaying to "
    if upstream == "direct-tls":
        assert f"{where}{server.host}:{server.c2s_direct_tls_port};" in proxy.stderr()
    else:
        assert f"{where}{server.host}:{server.c2s_port} with STARTTLS;" in proxy.stderr()


async def test_scram_through_interception_works_and_its_proof_is_not_recorded(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    """SCRAM-SHA-1 (no channel binding) succeeds through a TLS-terminating proxy."""
    server, server_ca = tls_server
    client_ca = export_ca(home, tmp_path / "xmppspy-ca.pem")
    capture = tmp_path / "session.jsonl"
    proxy = ProxyProcess(
        tmp_path,
        f"{server.host}:{server.c2s_port}",
        ("--record", str(capture), "--upstream-ca", str(server_ca), "-q"),
    )
    result = await chat(server, proxy, client_ca, mechanism="SCRAM-SHA-1")
    result.assert_ok()
    records = recorded(capture)
    stanzas = [r.event for r in records if isinstance(r.event, Stanza)]
    auths = [s for s in stanzas if s.kind is Kind.SASL_AUTH]
    assert auths and all(b"SCRAM-SHA-1" in s.raw for s in auths)
    responses = [s for s in stanzas if s.kind is Kind.SASL_RESPONSE]
    assert responses and all(s.redacted and b"[redacted: " in s.raw for s in responses)
    successes = [s for s in stanzas if s.kind is Kind.SASL_SUCCESS]
    assert successes and all(s.redacted for s in successes)  # the server signature


def message_bodies(records: list) -> list[str]:
    return [
        r.event.element.findtext(BODY)
        for r in records
        if isinstance(r.event, Stanza)
        and r.event.kind is Kind.MESSAGE
        and r.event.dir is Direction.C2S
        and r.event.element.find(BODY) is not None
    ]


async def test_strip_lets_a_plaintext_client_use_a_server_that_requires_tls(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    """--tls strip: the clients never see STARTTLS; xmppspy does it with Prosody for them."""
    server, server_ca = tls_server
    capture = tmp_path / "session.jsonl"
    proxy = ProxyProcess(
        tmp_path,
        f"{server.host}:{server.c2s_port}",
        ("--tls", "strip", "--upstream-ca", str(server_ca), "--record", str(capture)),
    )
    result = await chat(server, proxy, None)  # plaintext slixmpp clients, no CA to trust
    result.assert_ok()
    records = recorded(capture)
    started = [r.event for r in records if isinstance(r.event, TlsStarted)]
    assert len(started) == 2 and all(s.stripped and s.verified for s in started)
    assert sorted(b for b in message_bodies(records) if b in ALICE_TO_BOB) == sorted(ALICE_TO_BOB)
    injected = [
        r.event.sent
        for r in records
        if isinstance(r.event, Rewritten) and r.event.dir is Direction.C2S
    ]
    assert injected.count(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") == 2
    assert not any(isinstance(r.event, Opaque) for r in records)
    assert not (home / "ca-key.pem").exists()  # nobody needed xmppspy's CA
    shown = proxy.stdout()
    assert "TLS to the server only (--tls strip): TLSv1." in shown
    assert "the client's side of the stream stays plaintext" in shown
    assert "--tls strip: clients get no STARTTLS" in proxy.stderr()
    for password in server.users.values():
        assert password.encode() not in capture.read_bytes()
        assert password not in shown


async def test_an_upstream_that_is_a_direct_tls_port_is_named(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    """A common mistake: --upstream given Prosody's direct-TLS port. The view says so."""
    server, _ = tls_server
    proxy = ProxyProcess(tmp_path, f"{server.host}:{server.c2s_direct_tls_port}", ())
    proxy.start()
    try:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await stream.send_all(
                b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' "
                b"version='1.0'>"
            )
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
            await stream.aclose()
    finally:
        proxy.stop()
        proxy.kill()
    assert answer == b""  # Prosody hangs up on plaintext without a word
    assert "the server closed the connection without sending anything" in proxy.stdout()
    assert "give it as --upstream-tls" in proxy.stdout()
    assert "Traceback" not in proxy.stdout() + proxy.stderr()


async def test_scram_through_strip_works(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    """SCRAM-SHA-1 from a plaintext client, inside the TLS xmppspy made with the server."""
    server, server_ca = tls_server
    capture = tmp_path / "session.jsonl"
    proxy = ProxyProcess(
        tmp_path,
        f"{server.host}:{server.c2s_port}",
        ("--tls", "strip", "--upstream-ca", str(server_ca), "--record", str(capture), "-q"),
    )
    result = await chat(server, proxy, None, mechanism="SCRAM-SHA-1")
    result.assert_ok()
    records = recorded(capture)
    auths = [
        r.event for r in records if isinstance(r.event, Stanza) and r.event.kind is Kind.SASL_AUTH
    ]
    assert len(auths) == 2 and all(b"SCRAM-SHA-1" in a.raw for a in auths)
    assert sorted(b for b in message_bodies(records) if b in ALICE_TO_BOB) == sorted(ALICE_TO_BOB)


async def test_a_client_that_refuses_xmppspys_certificate_is_explained(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    """A client that trusts only the real server's CA: one line says why, and what to do."""
    server, server_ca = tls_server
    proxy = ProxyProcess(
        tmp_path, f"{server.host}:{server.c2s_port}", ("--upstream-ca", str(server_ca), "-q")
    )
    result = await chat(server, proxy, server_ca, timeout=3)
    assert not result.ok
    lines = [
        line for line in proxy.stderr().splitlines() if "refused xmppspy's certificate" in line
    ]
    assert lines, proxy.stderr()
    assert all("for example.test" in line and "(xmppspy ca)" in line for line in lines)
    assert "Traceback" not in proxy.stderr()


async def test_a_direct_tls_upstream_is_offered_alpn_xmpp_client(
    tmp_path: Path, home: Path
) -> None:
    """XEP-0368 asks clients for ALPN xmpp-client; servers sharing port 443 route on it."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "server-ca.pem")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("example.test").configure_cert(context)
    context.set_alpn_protocols(["xmpp-client"])
    offered: list[str | None] = []

    async def server(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        with contextlib.suppress(trio.BrokenResourceError):
            await tls.do_handshake()
            offered.append(tls.selected_alpn_protocol())
        await tls.aclose()

    (tls_port,) = free_loopback_ports(1)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1")
            )
            port = listener.socket.getsockname()[1]
            proxy = ProxyProcess(
                tmp_path,
                f"127.0.0.1:{port}",
                (
                    *("--listen-tls", f"127.0.0.1:{tls_port}"),
                    *("--upstream-tls", f"127.0.0.1:{port}", "--upstream-tls-name", "example.test"),
                    *("--upstream-ca", str(tmp_path / "server-ca.pem"), "-q"),
                ),
            )
            proxy.start()
            insecure = ssl.create_default_context()  # only the server's side matters here
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            try:
                tcp = await trio.open_tcp_stream("127.0.0.1", tls_port)
                async with trio.SSLStream(tcp, insecure, server_hostname="example.test") as client:
                    await client.do_handshake()  # then xmppspy dials out
                    while not offered:
                        await trio.sleep(0.02)
            finally:
                proxy.stop()
                proxy.kill()
            nursery.cancel_scope.cancel()
    assert offered == ["xmpp-client"]


async def test_a_direct_tls_client_that_refuses_xmppspys_certificate_is_explained(
    tls_server: tuple[ProsodyServer, Path], tmp_path: Path, home: Path
) -> None:
    server, server_ca = tls_server
    (tls_port,) = free_loopback_ports(1)
    proxy = ProxyProcess(
        tmp_path,
        f"{server.host}:{server.c2s_port}",
        ("--listen-tls", f"127.0.0.1:{tls_port}", "--upstream-ca", str(server_ca), "-q"),
    )
    result = await chat(server, proxy, server_ca, timeout=3, direct_tls_port=tls_port)
    assert not result.ok
    lines = [line for line in proxy.stderr().splitlines() if "TLS with the client failed" in line]
    assert lines and all("make it trust xmppspy's CA (xmppspy ca)" in line for line in lines)
    assert "Traceback" not in proxy.stderr()
