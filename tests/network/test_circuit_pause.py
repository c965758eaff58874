"""Pausing a circuit on a qnet.sim network: no link makes pairs for it once the pause has
settled, both ends still agree on every pair, no qubit leaks, and resume brings pairs back."""

from __future__ import annotations

import pytest
import trio

from qnet.network.circuit_events import EndToEndPair
from qnet.node.circuit_driver import CircuitHandle
from qnet.sim import SimNetwork, open_network
from tests.network.circuithelpers import chain, idle, open_circuit, until
from tests.network.linkhelpers import settle


def _heralds(net: SimNetwork) -> dict[tuple[str, str], int]:
    return {
        (name, peer): node.counters(peer).heralds
        for name, node in net.nodes.items()
        for peer in node.peers
    }


@pytest.mark.parametrize("end", ["head", "tail"])
async def test_a_paused_circuit_makes_no_pairs_and_resumes(
    autojump_clock: trio.abc.Clock, end: str
) -> None:
    async with open_network(chain(4, t2_s=0.5)) as net:
        with trio.fail_after(10):
            head, tail = await open_circuit(net, "n0", "n3", number=0)
        got: dict[str, list[EndToEndPair]] = {"n0": [], "n3": []}

        async def drain(handle: CircuitHandle, node: str) -> None:
            async for pair in handle:
                got[node].append(pair)
                await net.sessions[node].free([pair.qubit])

        def both_have(n: int) -> bool:
            return len(got["n0"]) >= n and len(got["n3"]) >= n

        pauser = head if end == "head" else tail
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, head, "n0")
            nursery.start_soon(drain, tail, "n3")
            with trio.fail_after(30):
                await until(net, lambda: both_have(5))
            pauser.pause()
            pauser.pause()  # idempotent
            assert pauser.paused
            # Pairs in flight finish or are discarded; then nothing moves at all.
            await settle(net, 0.5)
            assert head.paused
            assert tail.paused
            before = _heralds(net)
            delivered = {n: len(p) for n, p in got.items()}
            await settle(net, 2.0)
            assert _heralds(net) == before
            assert {n: len(p) for n, p in got.items()} == delivered
            # Both ends got the same pairs, and nobody holds a qubit for the circuit.
            assert [p.index for p in got["n0"]] == [p.index for p in got["n3"]]
            for name, node in net.nodes.items():
                assert node.circuits.core.qubits_held() == 0, name
                assert net.core.memory_in_use(name) == 0, name
            # The other end's resume is not this end's: still paused.
            (tail if end == "head" else head).resume()
            await settle(net, 0.5)
            assert _heralds(net) == before
            pauser.resume()
            pauser.resume()
            with trio.fail_after(30):
                await until(net, lambda: both_have(delivered["n0"] + 5))
            assert not head.paused
            head.close()
        count = min(len(got["n0"]), len(got["n3"]))
        assert [p.index for p in got["n0"][:count]] == list(range(count))
        assert [p.index for p in got["n3"][:count]] == list(range(count))
        with trio.fail_after(5):
            await until(net, lambda: idle(net))
        for name in net.nodes:
            assert net.core.memory_in_use(name) == net.nodes[name].memory_in_use(), name


async def test_a_circuit_paused_before_it_opens_makes_no_pairs(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_network(chain(3)) as net:
        head = net.node("n0").open_circuit("n2", min_fidelity=0.5)
        head.pause()
        with trio.fail_after(10):
            await head.wait_open()
            tail = await net.node("n2").circuits.incoming.receive()
        await settle(net, 1.0)
        assert tail.paused
        assert all(count == 0 for count in _heralds(net).values())
        head.resume()
        with trio.fail_after(30):
            pair = await tail.receive()
        await net.sessions["n2"].free([pair.qubit])
        head.close()
        with trio.fail_after(10):
            while True:
                try:
                    await head.receive()
                except trio.EndOfChannel:
                    break
