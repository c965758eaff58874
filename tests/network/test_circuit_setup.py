"""Circuit setup, rejection, sharing and failure in qnet.sim."""

from __future__ import annotations

import pytest
import trio

from qnet.errors import NoMemory, NotFound, Unreachable, Unsupported
from qnet.network.circuit_events import CloseCode
from qnet.sim import open_network
from qnet.topology import parse_topology
from tests.network.circuithelpers import chain, collect, idle, open_circuit, until
from tests.network.test_circuit_pairs import assert_nothing_held


async def test_an_unreachable_fidelity_is_rejected_and_every_hop_releases(
    autojump_clock: trio.abc.Clock,
) -> None:
    topology = chain(6, source_fidelity=0.9, gate_error_2q=0.01)
    async with open_network(topology) as net:
        handle = net.node("n0").open_circuit("n5", min_fidelity=0.99, number=5)
        with trio.fail_after(10), pytest.raises(Unsupported, match=r"n0-n1-n2-n3-n4-n5|link"):
            await handle.wait_open()
        with trio.fail_after(5):
            await until(net, lambda: idle(net))
        assert_nothing_held(net)


async def test_a_hop_without_memory_rejects_and_every_hop_releases(
    autojump_clock: trio.abc.Clock,
) -> None:
    topology = chain(4, memory_qubits=8)
    async with open_network(topology) as net:
        # Fill n2's reservations with circuits that pass through it, then ask for one more.
        first = net.node("n0").open_circuit("n3", min_fidelity=0.5, number=0)
        second = net.node("n1").open_circuit("n3", min_fidelity=0.5, number=0)
        with trio.fail_after(10):
            await first.wait_open()
            await second.wait_open()
        third = net.node("n0").open_circuit("n3", min_fidelity=0.5, number=1)
        with trio.fail_after(10), pytest.raises(NoMemory):
            await third.wait_open()
        first.close()
        second.close()
        with trio.fail_after(10):
            await until(net, lambda: idle(net))
        assert_nothing_held(net)


async def test_two_circuits_over_a_shared_link_both_progress(
    autojump_clock: trio.abc.Clock,
) -> None:
    """a → c and b → c both cross m – c; both complete, taking turns on the shared link."""
    topology = parse_topology(
        """
[network]
name = "y"
seed = 2
[defaults.link]
scheme = "double_click"
length_km = 5
source_fidelity = 0.99
[[node]]
name = "a"
[[node]]
name = "b"
[[node]]
name = "m"
[[node]]
name = "c"
[[link]]
between = ["a", "m"]
[[link]]
between = ["b", "m"]
[[link]]
between = ["m", "c"]
"""
    )
    async with open_network(topology) as net:
        runs = {}
        ends = {}
        with trio.fail_after(10):
            for head in ("a", "b"):
                ends[head] = await open_circuit(net, head, "c", number=30)

        async def one(head: str) -> None:
            runs[head] = await collect(net, *ends[head])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "a")
                nursery.start_soon(one, "b")
        for head in ("a", "b"):
            assert len(runs[head].pairs) == 30
            assert all(p.true_weights[0] > 0.9 for p in runs[head].pairs)
        with trio.fail_after(5):
            await until(net, lambda: idle(net))
        assert_nothing_held(net)


async def test_a_destination_without_a_route_is_a_typed_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_network(chain(3)) as net:
        with pytest.raises((NotFound, Unreachable)):
            net.node("n0").open_circuit("nowhere", min_fidelity=0.5, number=1)
        await net.stop_node("n2")
        routing = net.node("n0").routing
        with trio.fail_after(30):
            version = routing.version
            while "n2" in net.node("n0").routes():
                version = await routing.wait_changed(version)
        with pytest.raises(Unreachable):
            net.node("n0").open_circuit("n2", min_fidelity=0.5, number=1)


async def test_a_node_going_away_ends_its_circuits_with_unreachable(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_network(chain(4)) as net:
        handle = net.node("n0").open_circuit("n3", min_fidelity=0.5, number=0)
        with trio.fail_after(10):
            await handle.wait_open()
            await handle.receive()
        await net.stop_node("n2")

        async def drain() -> None:
            while True:
                pair = await handle.receive()
                await net.sessions["n0"].free([pair.qubit])

        with trio.fail_after(30), pytest.raises(Unreachable):
            await drain()
        assert handle.closed is not None
        assert handle.closed.code is CloseCode.UNREACHABLE
        with trio.fail_after(10):
            await until(
                net, lambda: not any(net.node(n).circuits.core.circuits() for n in ("n0", "n1"))
            )
        for name in ("n0", "n1"):
            assert net.node(name).circuits.core.reserved == 0
