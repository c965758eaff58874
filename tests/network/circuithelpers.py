"""Helpers for the in-process network-layer tests (tests/network/test_circuit_*.py).

``chain`` builds a linear topology with every parameter given; ``run_circuit`` opens a circuit
from the first node to the last on a ``qnet.sim`` network, takes it at the tail, and hands each
end-to-end pair to a handler once both halves have arrived (reading the backend oracle first,
while neither half has been touched), so tests can measure correlations or compare estimates.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from qnet.network.circuit_events import CircuitClosed, EndToEndPair
from qnet.node.circuit_driver import CircuitHandle
from qnet.physical.gates import GateName
from qnet.sim import SimNetwork
from qnet.topology import Topology, parse_topology

A = TypeVar("A")
B = TypeVar("B")


def chain(
    nodes: int,
    *,
    length_km: float = 5.0,
    scheme: str = "double_click",
    source_fidelity: float = 0.99,
    detector_efficiency: float = 0.9,
    bright_state: float = 0.1,
    memory_qubits: int = 8,
    t1_s: float = 0.0,
    t2_s: float = 0.0,
    memory_depolar_rate_hz: float = 0.0,
    gate_error_1q: float = 0.0,
    gate_error_2q: float = 0.0,
    measure_error: float = 0.0,
    seed: int = 3,
    fidelity_threshold: float | None = None,
) -> Topology:
    """n0 – n1 – … – n{nodes-1}, all links and nodes alike (0 disables a noise)."""
    names = [f"n{i}" for i in range(nodes)]
    routing = (
        f"\n[routing]\nfidelity_threshold = {fidelity_threshold}\n"
        if fidelity_threshold is not None
        else ""
    )
    text = f"""
[network]
name = "chain{nodes}"
seed = {seed}
{routing}
[defaults.node]
memory_qubits = {memory_qubits}
t1_s = {t1_s}
t2_s = {t2_s}
memory_depolar_rate_hz = {memory_depolar_rate_hz}
gate_error_1q = {gate_error_1q}
gate_error_2q = {gate_error_2q}
measure_error = {measure_error}

[defaults.link]
scheme = "{scheme}"
length_km = {length_km}
detector_efficiency = {detector_efficiency}
source_fidelity = {source_fidelity}
bright_state = {bright_state}
"""
    text += "".join(f'\n[[node]]\nname = "{n}"\n' for n in names)
    text += "".join(f'\n[[link]]\nbetween = ["{a}", "{b}"]\n' for a, b in itertools.pairwise(names))
    return parse_topology(text)


@dataclass
class Delivered:
    """Both halves of end-to-end pair ``index`` and what the oracle said when both were in."""

    index: int
    head: EndToEndPair
    tail: EndToEndPair
    true_weights: tuple[float, ...]


PairHandler = Callable[[SimNetwork, Delivered], Awaitable[None]]


@dataclass
class CircuitRun:
    head: CircuitHandle
    tail: CircuitHandle
    pairs: list[Delivered] = field(default_factory=list)
    head_closed: CircuitClosed | None = None
    tail_closed: CircuitClosed | None = None


async def free_pair(net: SimNetwork, pair: Delivered) -> None:
    await net.sessions[pair.head.remote].free([pair.tail.qubit])
    await net.sessions[pair.tail.remote].free([pair.head.qubit])


def oracle_weights(net: SimNetwork, head_qubit: int, tail_qubit: int) -> tuple[float, ...]:
    now = net.now()
    return tuple(net.core.oracle_pair_fidelity(head_qubit, tail_qubit, i, now) for i in range(4))


async def run_circuit(
    net: SimNetwork,
    head: str,
    tail: str,
    *,
    number: int,
    min_fidelity: float = 0.5,
    on_pair: PairHandler = free_pair,
    oracle: bool = True,
) -> CircuitRun:
    """Open a circuit head → tail for ``number`` pairs and wait until it ends at both ends."""
    handle, far = await open_circuit(net, head, tail, number=number, min_fidelity=min_fidelity)
    return await collect(net, handle, far, on_pair=on_pair, oracle=oracle)


async def open_circuit(
    net: SimNetwork, head: str, tail: str, *, number: int, min_fidelity: float = 0.5
) -> tuple[CircuitHandle, CircuitHandle]:
    """Open a circuit and take it at the tail: its two ends."""
    handle = net.node(head).open_circuit(tail, min_fidelity=min_fidelity, number=number)
    await handle.wait_open()
    far = await net.node(tail).circuits.incoming.receive()
    assert far.id == handle.id
    return handle, far


async def collect(
    net: SimNetwork,
    handle: CircuitHandle,
    far: CircuitHandle,
    *,
    on_pair: PairHandler = free_pair,
    oracle: bool = True,
) -> CircuitRun:
    """Receive a circuit's pairs at both ends until it ends, matching them by index."""
    run = CircuitRun(handle, far)
    tail_halves: dict[int, EndToEndPair] = {}
    head_halves: dict[int, EndToEndPair] = {}

    async def match(index: int) -> None:
        if index in tail_halves and index in head_halves:
            h, t = head_halves.pop(index), tail_halves.pop(index)
            weights = oracle_weights(net, h.qubit, t.qubit) if oracle else ()
            pair = Delivered(index, h, t, weights)
            run.pairs.append(pair)
            await on_pair(net, pair)

    async def drain(end: CircuitHandle, halves: dict[int, EndToEndPair], is_head: bool) -> None:
        async for pair in end:
            halves[pair.index] = pair
            await match(pair.index)
        if is_head:
            run.head_closed = end.closed
        else:
            run.tail_closed = end.closed

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, handle, head_halves, True)
        nursery.start_soon(drain, far, tail_halves, False)
    return run


async def measure_pair(net: SimNetwork, pair: Delivered, basis_gate: GateName | None) -> int:
    """Measure both halves after rotating them with ``basis_gate`` (None: Z; H: X); returns
    the product of the ±1 outcomes."""
    h_node, t_node = pair.tail.remote, pair.head.remote
    outcomes = []
    for node, qubit in ((h_node, pair.head.qubit), (t_node, pair.tail.qubit)):
        session = net.sessions[node]
        if basis_gate is not None:
            await session.gate(basis_gate, qubit)
        outcomes.append(await session.measure(qubit))
    return 1 - 2 * (outcomes[0] ^ outcomes[1])


async def until(net: SimNetwork, condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, re-checking whenever any node's circuits change."""
    changed = trio.Event()

    def poke() -> None:
        changed.set()

    for node in net.nodes.values():
        node.circuits.listeners.append(poke)
    try:
        while not condition():
            await changed.wait()
            changed = trio.Event()
    finally:
        for node in net.nodes.values():
            with suppress(ValueError):
                node.circuits.listeners.remove(poke)


def idle(net: SimNetwork) -> bool:
    """No circuit state anywhere, and the backend holds only what the link layers hold."""
    return not any(n.circuits.core.circuits() for n in net.nodes.values()) and all(
        net.core.memory_in_use(name) == n.memory_in_use() for name, n in net.nodes.items()
    )


async def both(a: Callable[[], Awaitable[A]], b: Callable[[], Awaitable[B]]) -> tuple[A, B]:
    """Run both calls at once (the two ends of a connection); their results."""
    got_a: list[A] = []
    got_b: list[B] = []

    async def run_a() -> None:
        got_a.append(await a())

    async def run_b() -> None:
        got_b.append(await b())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_a)
        nursery.start_soon(run_b)
    return got_a[0], got_b[0]
