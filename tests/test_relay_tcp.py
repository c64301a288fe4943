"""The relay on real loopback sockets: many clients at once, half-close, an upstream that refuses."""

from __future__ import annotations

import socket
from collections import defaultdict

import trio

from xmppspy.events import Connected, Direction, Disconnected, Record, Stanza
from xmppspy.relay import Relay, RelayConfig, tcp_upstream

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>"
)
CLIENTS = 50
STANZAS = 40


class Records:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def accept(self, records: list[Record]) -> None:
        self.records.extend(records)


async def echo(stream: trio.SocketStream) -> None:
    """An upstream that sends back every byte, then closes when the client has."""
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        await stream.send_eof()


async def start_relay(
    nursery: trio.Nursery, upstream_port: int, sink: Records
) -> tuple[Relay, int]:
    relay = Relay(
        RelayConfig(f"127.0.0.1:{upstream_port}"), tcp_upstream("127.0.0.1", upstream_port), sink
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(relay.serve, listeners)
    return relay, port


async def test_many_concurrent_clients_each_get_exactly_their_bytes() -> None:
    sink = Records()
    got: dict[int, bytes] = {}
    sent: dict[int, bytes] = {}

    async def client(n: int, port: int) -> None:
        stanzas = b"".join(
            b"<message id='%d-%d' to='peer%d@example.test'><body>\xc3\xa9 %d</body></message>"
            % (n, i, n, i)
            for i in range(STANZAS)
        )
        sent[n] = HEADER + stanzas + b"</stream:stream>"
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for i in range(0, len(sent[n]), 97):  # many small writes, interleaved with the others
                await stream.send_all(sent[n][i : i + 97])
            await stream.send_eof()
            received = b""
            while data := await stream.receive_some(65536):
                received += data
            got[n] = received

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo_listeners = await nursery.start(trio.serve_tcp, echo, 0)
            echo_port = echo_listeners[0].socket.getsockname()[1]
            relay, port = await start_relay(nursery, echo_port, sink)
            async with trio.open_nursery() as clients:
                for n in range(CLIENTS):
                    clients.start_soon(client, n, port)
            with trio.fail_after(10):  # the last Disconnected records follow the clients' EOF
                while len([r for r in sink.records if isinstance(r.event, Disconnected)]) < CLIENTS:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    assert got == sent
    by_conn: dict[str, dict[Direction, list[Stanza]]] = defaultdict(lambda: defaultdict(list))
    for r in sink.records:
        if isinstance(r.event, Stanza):
            by_conn[r.conn][r.event.dir].append(r.event)
    assert len(by_conn) == CLIENTS
    assert len({r.conn for r in sink.records if isinstance(r.event, Connected)}) == CLIENTS
    for directions in by_conn.values():
        # in order, nothing lost, both ways, and no connection's stanzas in another's record
        ids = [s.id for s in directions[Direction.C2S]]
        assert ids == [s.id for s in directions[Direction.S2C]]
        owner = ids[0].split("-")[0]
        assert ids == [f"{owner}-{i}" for i in range(STANZAS)]
    assert all(s.reason == "closed by both sides" for s in relay.connections)


async def test_half_close_over_tcp_still_delivers_the_servers_last_words() -> None:
    """A client that says </stream:stream> and shuts down writing still gets the reply."""
    sink = Records()
    reply = b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"

    async def server(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(65536):
                pass  # read until the client's FIN
            await stream.send_all(HEADER + reply)  # and only then answer

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, server, 0)
            _, port = await start_relay(nursery, listeners[0].socket.getsockname()[1], sink)
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(HEADER + b"</stream:stream>")
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while data := await trio.to_thread.run_sync(sock.recv, 65536):
                    received += data
            nursery.cancel_scope.cancel()
    assert received == HEADER + reply


async def test_refused_upstream_over_tcp() -> None:
    sink = Records()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]  # nothing listens here once the socket is closed
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, port = await start_relay(nursery, closed_port, sink)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            received = b""
            async with stream:
                while data := await stream.receive_some(65536):
                    received += data
            nursery.cancel_scope.cancel()
    assert b"<remote-connection-failed" in received
    (done,) = [r.event for r in sink.records if isinstance(r.event, Disconnected)]
    assert done.reason == f"upstream 127.0.0.1:{closed_port} unreachable: Connection refused"
