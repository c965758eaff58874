"""The transport layer wired into nodes (``NodeTransport``, ``qnet.sockets``) on ``qnet.sim``:
two applications at the ends of a chain connect, exchange messages, pairs and qubits, close,
and leave nothing allocated."""

from __future__ import annotations

import contextlib
from functools import partial

import pytest
import trio
import trio.testing

from qnet.errors import NotFound, Timeout, Unreachable
from qnet.physical.gates import Basis, GateName
from qnet.sim import SimNetwork, open_network
from qnet.sockets import Qubit, Socket
from qnet.transport.events import ConnectionAccepted, Error, TransportEvent
from tests.network.circuithelpers import both, chain, idle, until

PORT = 7


async def _connect(
    net: SimNetwork, a: str, b: str, *, min_fidelity: float = 0.0
) -> tuple[Socket, Socket]:
    """A connection from an application on ``a`` to one listening on ``b``."""
    srv = net.node(b).transport_layer.socket()
    srv.bind(PORT)
    srv.listen()
    cli = net.node(a).transport_layer.socket()
    accepted: list[Socket] = []

    async def take() -> None:
        conn, peer = await srv.accept()
        assert peer[0] == a
        accepted.append(conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await cli.connect((b, PORT), min_fidelity=min_fidelity)
    assert cli.peer == (b, PORT)
    await srv.close()
    return cli, accepted[0]


async def _close_both(net: SimNetwork, cli: Socket, conn: Socket) -> None:
    await cli.close()
    assert await conn.recv() == b""
    await conn.close()
    assert await cli.recv() == b""
    with trio.fail_after(10):
        await cli.wait_closed()
        await conn.wait_closed()
        await until(net, lambda: idle(net))
    for node in net.nodes.values():
        assert node.transport_layer.core.held_qubits() == []
        assert node.transport_layer.protocol_errors == 0


async def test_messages_both_ways_in_order(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(chain(3)) as net:
        cli, conn = await _connect(net, "n0", "n2")
        big = bytes(range(256)) * 2000  # 512 kB: many segments, beyond the data window
        sent = [b"hi", b"", big, b"x" * 9000]
        got: list[bytes] = []

        async def sender() -> None:
            for m in sent:
                await cli.send(m)

        async def receiver() -> None:
            for _ in sent:
                got.append(await conn.recv())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
        assert got == sent
        for i in range(5):
            await conn.send(b"back %d" % i)
        assert [await cli.recv() for _ in range(5)] == [b"back %d" % i for i in range(5)]
        await _close_both(net, cli, conn)


async def test_epr_pairs_are_entangled(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(chain(3)) as net:
        cli, conn = await _connect(net, "n0", "n2", min_fidelity=0.8)
        for k in range(6):
            qa, qb = await both(cli.epr, conn.epr)
            assert qa.number == qb.number == k
            fidelity = net.core.oracle_pair_fidelity(qa.id, qb.id, 0, net.now())
            assert fidelity >= min(qa.fidelity, qb.fidelity) - 0.02
            assert fidelity >= 0.8 - 0.02
            if k % 2:  # XX correlations of Φ+: equal outcomes
                await qa.gate(GateName.H)
                await qb.gate(GateName.H)
            assert await qa.measure() == await qb.measure()
        await _close_both(net, cli, conn)


async def test_epr_measure_outcomes_agree(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(chain(3)) as net:
        cli, conn = await _connect(net, "n0", "n2", min_fidelity=0.9)
        for basis in ("Z", "X"):
            a, b = await both(
                partial(cli.epr_measure, 10, basis=basis), partial(conn.epr_measure, 10, basis)
            )
            assert len(a) == len(b) == 10
            assert a == b
        await _close_both(net, cli, conn)


async def test_teleported_states_arrive(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(chain(3)) as net:
        cli, conn = await _connect(net, "n0", "n2", min_fidelity=0.9)
        channel = net.sessions["n0"]
        # |+⟩ then |1⟩ from the connector; |1⟩ back from the acceptor.
        for prepare, basis, expected in ((GateName.H, Basis.X, 0), (GateName.X, Basis.Z, 1)):
            (qubit,) = await channel.allocate(1)
            await channel.gate(prepare, qubit)
            q = Qubit(channel, "n0", qubit)
            _, received = await both(partial(cli.send_qubit, q), conn.recv_qubit)
            assert await received.measure(basis) == expected
        (qubit,) = await net.sessions["n2"].allocate(1)
        await net.sessions["n2"].gate(GateName.X, qubit)
        back = Qubit(net.sessions["n2"], "n2", qubit)
        _, received = await both(partial(conn.send_qubit, back), cli.recv_qubit)
        assert await received.measure() == 1
        await _close_both(net, cli, conn)


async def test_nobody_listens(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(chain(3)) as net:
        # Garbage for the transport is counted and dropped; the Syn behind it is served.
        net.node("n0").send_datagram("n2", 1, b"\xff\xffnot a PeerMessage")
        cli = net.node("n0").transport_layer.socket()
        with pytest.raises(NotFound) as refused:
            await cli.connect(("n2", 99))
        assert refused.value.node == "n2"
        assert net.node("n2").transport_layer.protocol_errors == 1
        with trio.fail_after(5):
            await until(net, lambda: idle(net))


async def test_half_close(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(chain(3)) as net:
        cli, conn = await _connect(net, "n0", "n2")
        await cli.send(b"last words")
        await cli.close()
        # The connector's output is closed; the acceptor still talks, and is heard.
        assert await conn.recv() == b"last words"
        assert await conn.recv() == b""
        # A timed-out recv leaves its answer to the next one.
        cli.settimeout(0.02)
        with pytest.raises(Timeout) as late:
            await cli.recv()
        assert late.value.node == "n0"
        cli.settimeout(None)
        for i in range(3):
            await conn.send(b"still here %d" % i)
        assert [await cli.recv() for _ in range(3)] == [b"still here %d" % i for i in range(3)]
        await conn.close()
        assert await cli.recv() == b""
        assert await cli.recv() == b""  # and again
        with trio.fail_after(10):
            await cli.wait_closed()
            await conn.wait_closed()
            await until(net, lambda: idle(net))


async def test_other_circuits_stay_with_the_network_layer(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A connection and a plain circuit between the same nodes: the transport claims only
    # its own circuit; the other comes out of circuits.incoming for the NetworkLayer service.
    async with open_network(chain(3, memory_qubits=16)) as net:
        cli, conn = await _connect(net, "n0", "n2", min_fidelity=0.8)
        plain = net.node("n0").open_circuit("n2", min_fidelity=0.8, number=1)
        with trio.fail_after(5):
            tail = await net.node("n2").circuits.incoming.receive()
        assert tail.id == plain.id
        plain.close()
        qa, qb = await both(cli.epr, conn.epr)
        assert net.core.oracle_pair_fidelity(qa.id, qb.id, 0, net.now()) >= 0.78
        await qa.free()
        await qb.free()
        await _close_both(net, cli, conn)


async def test_an_idle_connection_stops_generating_and_resumes(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_network(chain(3)) as net:
        cli, conn = await _connect(net, "n0", "n2", min_fidelity=0.8)
        tail = net.node("n2").transport_layer
        (conn_id,) = tail.core.connections()
        pairs = tail.core.connection(conn_id).pairs
        handles = list(tail._handles.values())
        assert len(handles) == 1
        # Nobody asks: the windows fill, the circuit pauses at every node of the path.
        await until(net, lambda: handles[0].paused)
        await trio.sleep(0.05)  # virtual: pairs already made when the pause landed arrive
        made = pairs.next_index
        await trio.sleep(2.0)
        assert pairs.next_index == made, "a paused circuit went on generating"
        for node in net.nodes.values():
            assert node.circuits.core.is_paused(handles[0].id)
        # The next calls get pairs: the windows' at once, then the resumed circuit's.
        for k in range(8):
            qa, qb = await both(cli.epr, conn.epr)
            assert qa.number == qb.number == k
            fidelity = net.core.oracle_pair_fidelity(qa.id, qb.id, 0, net.now())
            assert fidelity >= 0.8 - 0.02
            await qa.measure()
            await qb.measure()
        assert pairs.next_index > made
        await _close_both(net, cli, conn)


async def test_accept_returns_a_connection_that_failed_before_it_was_taken(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The connection's Error can come in the same batch of events as its
    ConnectionAccepted, before the accepting task runs: accept still returns its socket, and
    the socket's calls raise the connection's error."""
    async with open_network(chain(2)) as net:
        layer = net.node("n1").transport_layer
        srv = layer.socket()
        srv.bind(PORT)
        srv.listen()
        owner = srv._owner
        deliver = owner._on_event

        def then_fail(event: TransportEvent) -> None:
            deliver(event)
            if isinstance(event, ConnectionAccepted):
                deliver(Error(event.conn, Unreachable, "n1", "its circuit ended"))

        subscribers = layer._subscribers
        subscribers[subscribers.index(deliver)] = then_fail
        cli = net.node("n0").transport_layer.socket()
        cli.settimeout(5)
        accepted: list[Socket] = []

        async def take() -> None:
            conn, peer = await srv.accept()
            assert peer[0] == "n0"
            accepted.append(conn)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            with contextlib.suppress(Unreachable, Timeout):
                await cli.connect(("n1", PORT))
        (conn,) = accepted
        conn.settimeout(5)
        with pytest.raises(Unreachable, match="its circuit ended"):
            await conn.recv()
        cli.abort()
