"""qnet.sim: a whole network in one process on one clock, with the daemons' own code.

The channel backend's driver (``ChannelServer``) and every node's driver (``NodeRuntime``) run
as trio tasks; nodes reach the backend by direct calls (``LocalSession``) and each other through
in-memory fibre delay lines (``MemoryNetwork``). Under trio's ``MockClock`` (pytest-trio's
``autojump_clock``, or ``qnet.sim.run``) time jumps whenever every task waits, so a simulated
second costs only the work done in it, and a run is deterministic for its seed.

    async with qnet.sim.open_network(load_topology("examples/chain4.toml")) as net:
        alice = net.node("alice")
"""

from __future__ import annotations

import random
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import trio
import trio.testing

from qnet.channel.server import ChannelServer
from qnet.node.local_channel import LocalSession
from qnet.node.memory_transport import MemoryNetwork
from qnet.node.runtime import NodeRuntime
from qnet.physical.channel_core import ChannelCore
from qnet.runtime.clock import PhysicalClock
from qnet.topology import Topology

T = TypeVar("T")


@dataclass
class SimNetwork:
    topology: Topology
    channel: ChannelServer
    classical: MemoryNetwork
    nodes: dict[str, NodeRuntime]
    sessions: dict[str, LocalSession]

    def node(self, name: str) -> NodeRuntime:
        return self.nodes[name]

    @property
    def core(self) -> ChannelCore:
        """The physical core: its oracle gives true fidelities for checking estimates."""
        return self.channel.core

    def now(self) -> int:
        return self.channel.clock.now_ns()


@asynccontextmanager
async def open_network(
    topology: Topology,
    *,
    seed: int | None = None,
    loss: float = 0.0,
    duplicate: float = 0.0,
) -> AsyncGenerator[SimNetwork, None]:
    """Build and start every node of ``topology``; leaving the block stops them all."""
    seed = topology.seed if seed is None else seed
    _deterministic_scheduling(seed)
    # Simulated physical time is the trio clock itself (scale 1): under a MockClock it is
    # virtual, and the backend and every node read the same one.
    clock = PhysicalClock(1.0)
    core = ChannelCore(seed=seed, max_group_qubits=topology.max_group_qubits)
    server = ChannelServer(core, clock)
    classical = MemoryNetwork(topology, clock, loss=loss, duplicate=duplicate, seed=seed)
    nodes: dict[str, NodeRuntime] = {}
    sessions: dict[str, LocalSession] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        for spec in topology.nodes:
            sessions[spec.name] = await LocalSession.register(server, spec.name, spec.params)
        for spec in topology.nodes:
            runtime = NodeRuntime(
                spec.name,
                topology,
                sessions[spec.name],
                classical.transport(spec.name),
                clock,
                seed=seed,
            )
            await nursery.start(runtime.run)
            nodes[spec.name] = runtime
        yield SimNetwork(topology, server, classical, nodes, sessions)
        nursery.cancel_scope.cancel()


def _deterministic_scheduling(seed: int) -> None:
    """Make trio run tasks that wake at the same instant in a repeatable order.

    Nodes act at the same virtual instant all the time (both ends of a link are heralded
    together), and the order in which they reach the backend decides which random draw goes to
    which measurement. trio shuffles such ties on purpose; it has a deterministic mode (sort by
    creation order, then shuffle with its own seeded generator) for Hypothesis, which this
    switches on and seeds. These are private names of trio: if they are gone, runs still work,
    only without the repeatability guarantee, and a warning says so.
    """
    run_module = getattr(trio, "_core", None)
    run_module = getattr(run_module, "_run", None)
    scheduler_rng = getattr(run_module, "_r", None)
    if run_module is None or not hasattr(run_module, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        warnings.warn(
            "this trio has no deterministic scheduling hook; qnet.sim runs will not repeat"
            " exactly for a seed",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    run_module._ALLOW_DETERMINISTIC_SCHEDULING = True
    if isinstance(scheduler_rng, random.Random):
        scheduler_rng.seed(f"{seed}|trio")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` under trio on virtual time (a MockClock that jumps whenever all tasks
    wait): the entry point for scripts and benchmarks."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))
