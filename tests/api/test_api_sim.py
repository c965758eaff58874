"""The public application API (``qnet.api``) driving ``qnet.sim`` nodes in-process: the same
calls an application makes against daemons, checked against the physics statistically."""

from __future__ import annotations

import math
from functools import partial

import pytest
import trio

from qnet.api import AsyncNode, AsyncSocket
from qnet.errors import FailedPrecondition, InvalidArgument, NotFound, Timeout
from qnet.sim import SimNetwork, open_network
from tests.network.circuithelpers import both, chain, idle, until

PORT = 7


async def _pair(alice: AsyncNode, bob: AsyncNode) -> tuple[AsyncSocket, AsyncSocket]:
    srv = bob.socket()
    await srv.bind(PORT)
    await srv.listen()
    cli = alice.socket()

    async def connect() -> None:
        await cli.connect((bob.name, PORT))

    _, (conn, peer) = await both(connect, srv.accept)
    assert peer == (alice.name, cli.local[1] if cli.local else -1)
    assert cli.peer == (bob.name, PORT)
    await srv.close()
    return cli, conn


def _at_least(successes: int, n: int, p: float) -> bool:
    """successes/n is not below p by more than 5 standard errors (binomial)."""
    sigma = math.sqrt(max(p * (1 - p), 1e-4) / n)
    return successes / n >= p - 5 * sigma


def _near(successes: int, n: int, p: float) -> bool:
    sigma = math.sqrt(max(p * (1 - p), 1e-4) / n)
    return abs(successes / n - p) <= 5 * sigma


async def test_local_gates_follow_the_conventions(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(chain(2)) as net, net.open_node("n0") as node:
        q = await node.qubit()
        await q.h()
        assert await q.measure("X") == 0  # |+⟩ is X's +1 eigenstate
        q = await node.qubit()
        await q.rx(math.pi)
        assert await q.measure() == 1
        q = await node.qubit()
        await q.ry(math.pi / 2)  # exp(−iπY/4)|0⟩ = |+⟩
        assert await q.measure("X") == 0
        q = await node.qubit()
        await q.h()
        await q.s()
        assert await q.measure("Y") == 0
        agree = 0
        for _ in range(40):
            a, b = await node.qubit(), await node.qubit()
            await a.h()
            await a.cnot(b)
            agree += await a.measure() == await b.measure()
        assert agree == 40


async def test_messages_pairs_and_teleports_between_nodes(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_network(chain(3)) as net,
        net.open_node("n0") as alice,
        net.open_node("n2") as bob,
    ):
        cli, conn = await _pair(alice, bob)
        for k in range(5):
            await cli.send(b"m%d" % k * (k * 300 + 1))
        for k in range(5):
            assert await conn.recv() == b"m%d" % k * (k * 300 + 1)

        n = 200
        z_agree = x_agree = 0
        fidelities = []
        for k in range(n):
            qa, qb = await both(cli.epr, conn.epr)
            assert qa.number == qb.number == k
            fidelities.append(qa.fidelity)
            basis = "Z" if k % 2 == 0 else "X"
            same = await qa.measure(basis) == await qb.measure(basis)
            if basis == "Z":
                z_agree += same
            else:
                x_agree += same
        f = sum(fidelities) / n
        # Φ+ weight ≤ agreement in Z and in X for any Bell-diagonal pair.
        assert _at_least(z_agree, n // 2, f)
        assert _at_least(x_agree, n // 2, f)

        bases = ["Z" if k % 3 else "X" for k in range(300)]
        mine, theirs = await both(
            lambda: cli.epr_measure(300, bases), lambda: conn.epr_measure(300, "Z")
        )
        same_basis = [a == b for a, b, s in zip(mine, theirs, bases, strict=True) if s == "Z"]
        cross = [a == b for a, b, s in zip(mine, theirs, bases, strict=True) if s == "X"]
        assert _at_least(sum(same_basis), len(same_basis), f)
        assert _near(sum(cross), len(cross), 0.5)

        n = 120
        right = 0
        for _ in range(n):
            q = await alice.qubit()
            await q.h()
            got = await both(lambda q=q: cli.send_qubit(q), conn.recv_qubit)  # type: ignore[misc]
            right += await got[1].measure("X") == 0
        # Teleporting with a pair of fidelity F gives (2F + 1)/3 (Werner).
        assert _at_least(right, n, (2 * f + 1) / 3)
        assert right / n > 2 / 3

        await cli.close()
        assert await conn.recv() == b""
        await conn.close()
        with trio.fail_after(10):
            await cli.wait_closed()
            await conn.wait_closed()
    async with open_network(chain(2)):
        pass


async def test_errors_are_typed_and_the_socket_survives_a_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        open_network(chain(2)) as net,
        net.open_node("n0") as alice,
        net.open_node("n1") as bob,
    ):
        q = await alice.qubit()
        await q.measure()
        with pytest.raises(FailedPrecondition):
            await q.h()
        a, b = await alice.qubit(), await bob.qubit()
        with pytest.raises(InvalidArgument):
            await a.cnot(b)
        with pytest.raises(InvalidArgument):
            await a.cnot(a)
        with pytest.raises(InvalidArgument):
            await a.rx(float("nan"))
        with pytest.raises(InvalidArgument):
            await alice.backend.gate("toffoli", (a.id,))
        with pytest.raises(NotFound):
            await alice.backend.measure(b.id)  # bob's qubit, not alice's
        with pytest.raises(InvalidArgument):
            await a.measure("W")
        with pytest.raises(NotFound):
            async with net.open_node("nobody"):
                pass

        cli, conn = await _pair(alice, bob)
        conn.settimeout(0.5)
        with pytest.raises(Timeout) as info:
            await conn.recv()
        assert info.value.node == "n1"
        await cli.send(b"late")
        assert await conn.recv() == b"late"
        with pytest.raises(InvalidArgument):
            cli.settimeout(-1)
        with pytest.raises(InvalidArgument):
            await cli.epr_measure(3, ["Z", "X"])
        with pytest.raises(InvalidArgument):
            await cli.send("text")  # type: ignore[arg-type]


async def test_closing_the_node_frees_what_the_application_held(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_network(chain(3)) as net:
        async with net.open_node("n0") as alice, net.open_node("n2") as bob:
            cli, conn = await _pair(alice, bob)
            for _ in range(2):
                await both(cli.epr, conn.epr)  # halves kept, never measured
            await alice.qubit()
            await bob.qubit()
            assert len(net.node("n0").app_qubits) == 3
            assert len(net.node("n2").app_qubits) == 3
        assert not net.node("n0").app_qubits
        assert not net.node("n2").app_qubits
        with trio.fail_after(10):
            await until(net, lambda: idle(net) and _transport_idle(net))
        for name in net.nodes:
            assert net.core.memory_in_use(name) == net.node(name).memory_in_use()


def _transport_idle(net: SimNetwork) -> bool:
    return all(not n.transport_layer.core.held_qubits() for n in net.nodes.values())


async def test_teleports_after_an_epr_phase_find_memory(autojump_clock: trio.abc.Clock) -> None:
    """After the application stops taking epr pairs, the pairs its window still holds (and
    the allocator's halves) are released at both ends, so that qubits handed to send_qubit,
    with the pairs to teleport them, fit in a small memory. Before, the window's pairs and
    the qubits counted twice filled it, and the teleports waited for ever."""
    async with (
        open_network(chain(2, memory_qubits=8)) as net,
        net.open_node("n0") as alice,
        net.open_node("n1") as bob,
    ):
        cli, conn = await _pair(alice, bob)
        for _ in range(2):

            async def take(sock: AsyncSocket) -> None:
                await (await sock.epr()).measure()

            await both(partial(take, cli), partial(take, conn))
        # The application does something else for a while: its epr stream goes idle (the
        # window's pairs would have arrived by then).
        await trio.sleep(0.1)
        for name in ("n0", "n1"):
            assert net.node(name).transport_layer.core.held_count() == 0, name
        sends = 4
        qubits = [await alice.qubit() for _ in range(sends)]
        for q in qubits:
            await q.x()

        async def send() -> None:
            async with trio.open_nursery() as nursery:
                for q in qubits:
                    nursery.start_soon(cli.send_qubit, q)

        async def receive() -> list[int]:
            return [await (await conn.recv_qubit()).measure() for _ in range(sends)]

        with trio.fail_after(5):
            _, outcomes = await both(send, receive)
        assert outcomes == [1] * sends


async def test_allocations_waiting_for_a_full_memory_wait_for_a_free_qubit(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two allocations waiting on a full memory take the qubits as they free. (Each used to
    balance the memory on every wake-up, which woke the other: the two woke each other for
    ever and time stood still.)"""
    async with open_network(chain(2, memory_qubits=4)) as net, net.open_node("n0") as alice:
        held = [await alice.qubit() for _ in range(4)]
        runtime = net.node("n0")
        attempts = 0
        allocate = runtime.channel.allocate

        async def counted(count: int = 1) -> list[int]:
            nonlocal attempts
            attempts += 1
            assert attempts < 100, "allocations spin while they wait"
            return await allocate(count)

        runtime.channel.allocate = counted  # type: ignore[method-assign]
        got: list[object] = []

        async def wait_for_one() -> None:
            got.append(await alice.qubit())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_one)
            nursery.start_soon(wait_for_one)
            await trio.sleep(0.2)
            assert got == []
            await held[0].free()
            await trio.sleep(0.2)
            assert len(got) == 1
            await held[1].free()
        assert len(got) == 2
        assert attempts < 10
