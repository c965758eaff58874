"""qnet.sim: a whole network in one process on one clock, with the daemons' own code.

The channel backend's driver (``ChannelServer``) and every node's driver (``NodeRuntime``) run
as trio tasks; nodes reach the backend by direct calls (``LocalSession``) and each other through
in-memory fibre delay lines (``MemoryNetwork``). On virtual time (``qnet.sim.run``'s
``JumpClock``, or pytest-trio's ``autojump_clock``) time jumps whenever every task waits, so a
simulated second costs only the work done in it, and a run is deterministic for its seed.

``open_network`` yields once every node's routing has converged (bounded by the routing
convergence bound; ``Timeout`` otherwise), so routes answer from the first line of the block.
A node can be stopped and started again, as a daemon is killed and restarted: its backend
session ends (its qubits are freed), its neighbours see the link go down (at once, or only by
silence with ``silent=True``), and it comes back with fresh cores.

    async with qnet.sim.open_network(load_topology("examples/chain4.toml")) as net:
        alice = net.node("alice")
        alice.route("bob").path        # ("alice", "r1", "r2", "bob")
        async with net.open_node("alice") as app:   # the application API (qnet.api.aio)
            sock = app.socket()
        await net.stop_node("r1")
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import random
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import trio

from qnet.channel.server import ChannelServer
from qnet.errors import FailedPrecondition, NotFound, QnetError, Timeout
from qnet.network.routing_config import RoutingConfig, convergence_bound_ns
from qnet.node.local_channel import LocalSession
from qnet.node.memory_transport import MemoryNetwork
from qnet.node.routing_setup import hop_diameter, routing_config
from qnet.node.runtime import NodeRuntime
from qnet.physical.channel_core import ChannelCore
from qnet.physical.heralding import fibre_delay_ns
from qnet.runtime.clock import PhysicalClock
from qnet.topology import Topology

if TYPE_CHECKING:
    from qnet.api.aio import AsyncNode

T = TypeVar("T")


@dataclass
class SimNetwork:
    topology: Topology
    channel: ChannelServer
    classical: MemoryNetwork
    #: The running nodes (a stopped node is absent until it starts again).
    nodes: dict[str, NodeRuntime]
    sessions: dict[str, LocalSession]
    seed: int = 0
    #: Losing messages makes routing converge later: the bound allows for retransmissions.
    lossy: bool = False
    _nursery: trio.Nursery | None = field(default=None, repr=False)
    _scopes: dict[str, trio.CancelScope] = field(default_factory=dict, repr=False)
    _stopped: dict[str, trio.Event] = field(default_factory=dict, repr=False)

    def node(self, name: str) -> NodeRuntime:
        return self.nodes[name]

    def open_node(self, name: str) -> AbstractAsyncContextManager[AsyncNode]:
        """The application API on node ``name`` (as ``qnet.open_node`` gives for a daemon):
        ``async with net.open_node("alice") as alice: sock = alice.socket() …``."""
        from qnet.api.aio import open_node

        if name not in self.nodes:
            known = ", ".join(sorted(self.nodes))
            raise NotFound(f"no running node {name!r} in the simulation (running: {known})")
        return open_node(self.nodes[name])

    @property
    def core(self) -> ChannelCore:
        """The physical core: its oracle gives true fidelities for checking estimates."""
        return self.channel.core

    def now(self) -> int:
        return self.channel.clock.now_ns()

    @property
    def routing_config(self) -> RoutingConfig:
        """The routing settings every node runs with."""
        return routing_config(self.topology.routing, self.channel.clock.scale)

    def routing_bound_ns(self) -> int:
        """How long routing may take to settle after a change (``convergence_bound_ns`` with
        k the network's hop diameter and d its longest fibre delay), plus, on a lossy network,
        room for many lost hellos and retransmissions."""
        config = self.routing_config
        delay = max(
            (fibre_delay_ns(link.params.length_km) for link in self.topology.links), default=0
        )
        bound = convergence_bound_ns(config, hop_diameter(self.topology), delay + 1)
        if self.lossy:
            bound += 50 * max(config.hello_interval_ns, config.retransmit_interval_ns)
        return bound

    async def wait_converged(self, names: Iterable[str] | None = None) -> None:
        """Wait until routing has converged on each running node of ``names`` (default: all),
        at most ``routing_bound_ns`` of simulated time; ``Timeout`` names the laggards."""
        waiting = [self.nodes[n] for n in (self.nodes if names is None else names)]
        with trio.move_on_at(self.channel.clock.trio_time(self.now() + self.routing_bound_ns())):
            for runtime in waiting:
                await runtime.routing_converged.wait()
        late = [r.name for r in waiting if not r.routing_converged.is_set()]
        if late:
            bound_ms = self.routing_bound_ns() / 1e6
            raise Timeout(
                f"routing did not converge within {bound_ms:g} ms of simulated time on"
                f" {', '.join(late)}"
            )

    async def stop_node(self, name: str, *, silent: bool = False) -> None:
        """Stop node ``name`` as if its daemon were killed: its tasks end, what it had in
        flight is lost, messages for it are dropped, and its backend session ends (qubits
        freed). Its neighbours' transports report the link down at once, or, with ``silent``,
        not at all (routing then notices after its dead interval)."""
        scope = self._scopes.get(name)
        if scope is None:
            self.topology.node(name)  # NotFound for a stranger
            raise FailedPrecondition(f"node {name} is not running")
        if silent:
            self.classical.stop_silently(name)
        scope.cancel()
        await self._stopped[name].wait()

    async def start_node(self, name: str, session: LocalSession | None = None) -> NodeRuntime:
        """Start a stopped node again, with fresh cores and a new backend session (or
        ``session``, registered already)."""
        if name in self._scopes:
            raise FailedPrecondition(f"node {name} is already running")
        spec = self.topology.node(name)
        if self._nursery is None:
            raise FailedPrecondition("the network is not open")
        if session is None:
            session = await LocalSession.register(self.channel, spec.name, spec.params)
        runtime = NodeRuntime(
            spec.name,
            self.topology,
            session,
            self.classical.transport(spec.name),
            self.channel.clock,
            seed=self.seed,
        )
        await self._nursery.start(self._run_node, runtime, session)
        return runtime

    async def _run_node(
        self,
        runtime: NodeRuntime,
        session: LocalSession,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        name = runtime.name
        stopped = self._stopped[name] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scopes[name] = scope
                async with trio.open_nursery() as nursery:
                    await nursery.start(runtime.run)
                    self.nodes[name] = runtime
                    self.sessions[name] = session
                    task_status.started()
        finally:
            self._scopes.pop(name, None)
            if self.nodes.get(name) is runtime:
                del self.nodes[name]
                del self.sessions[name]
            with contextlib.suppress(QnetError):  # already ended (taken over): nothing to free
                session.close()
            stopped.set()


@asynccontextmanager
async def open_network(
    topology: Topology,
    *,
    seed: int | None = None,
    loss: float = 0.0,
    duplicate: float = 0.0,
) -> AsyncGenerator[SimNetwork, None]:
    """Build and start every node of ``topology``, wait until their routing has converged;
    leaving the block stops them all."""
    seed = topology.seed if seed is None else seed
    _deterministic_scheduling(seed)
    # Simulated physical time is the trio clock itself (scale 1): virtual under a virtual
    # clock, and the backend and every node read the same one.
    clock = PhysicalClock(1.0)
    core = ChannelCore(seed=seed, max_group_qubits=topology.max_group_qubits)
    server = ChannelServer(core, clock)
    classical = MemoryNetwork(topology, clock, loss=loss, duplicate=duplicate, seed=seed)
    net = SimNetwork(topology, server, classical, {}, {}, seed, lossy=bool(loss or duplicate))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        nursery.start_soon(classical.run)
        net._nursery = nursery
        sessions = [
            await LocalSession.register(server, spec.name, spec.params) for spec in topology.nodes
        ]
        for session in sessions:
            await net.start_node(session.node, session)
        await net.wait_converged()
        yield net
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


class JumpClock(trio.abc.Clock):
    """Virtual time that jumps to the next deadline as soon as every task waits.

    What ``MockClock(autojump_threshold=0)`` does, for a fraction of the cost: MockClock
    notices idleness only after an idle pass of the run loop and then jumps, so every jump
    costs a loop pass with no task in it, and it reads the real clock on every
    ``current_time``. This clock jumps when trio asks how long to sleep (which it asks only
    when no task can run), so the tasks due then run in that same pass. Nothing waits on real
    I/O in a simulation; with no deadline at all (a deadlock) trio blocks instead of spinning.

    It also keeps alarms (``alarm``): the simulation's timer tasks sleep on those rather than
    on cancel scopes, and the clock wakes them when it jumps to their time. A cancel scope's
    deadline wakes its task by raising Cancelled through it, which costs more than the work
    many wake-ups do; an alarm's costs one reschedule.
    """

    __slots__ = ("_alarms", "_now", "_order")

    def __init__(self) -> None:
        self._now = 0.0
        #: (time, order set, alarm, its setting then): stale entries are skipped.
        self._alarms: list[tuple[float, int, Alarm, int]] = []
        self._order = itertools.count()

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        alarms = self._alarms
        while alarms and alarms[0][3] != alarms[0][2]._setting:
            heapq.heappop(alarms)
        target = min(deadline, alarms[0][0]) if alarms else deadline
        if target == math.inf:
            return _FOREVER_S
        if target > self._now:
            self._now = target
        while alarms and alarms[0][0] <= self._now:
            _, _, alarm, setting = heapq.heappop(alarms)
            if setting == alarm._setting:
                alarm._ring()
        return 0.0

    def alarm(self) -> Alarm:
        """A new alarm on this clock, for one task at a time to sleep on."""
        return Alarm(self)


class Alarm:
    """A movable wake-up time on a ``JumpClock`` (as a sleeping cancel scope's deadline is):
    ``await wait()`` until the clock reaches ``deadline``; setting ``deadline`` meanwhile
    moves the wake-up, earlier or later."""

    __slots__ = ("_clock", "_deadline", "_setting", "_task")

    def __init__(self, clock: JumpClock) -> None:
        self._clock = clock
        self._deadline = math.inf
        #: Bumped by every change: heap entries of earlier settings are stale.
        self._setting = 0
        self._task: trio.lowlevel.Task | None = None

    @property
    def deadline(self) -> float:
        return self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._deadline = value
        self._setting += 1
        if self._task is not None and value != math.inf:
            clock = self._clock
            heapq.heappush(clock._alarms, (value, next(clock._order), self, self._setting))

    async def wait(self) -> None:
        """Sleep until the clock reaches ``deadline`` (at once if it has)."""
        if self._deadline <= self._clock._now:
            await trio.lowlevel.checkpoint()
            return
        self._task = trio.lowlevel.current_task()
        self.deadline = self._deadline  # puts this setting on the clock's heap

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            self._setting += 1
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _ring(self) -> None:
        task, self._task = self._task, None
        self._setting += 1
        if task is not None:
            trio.lowlevel.reschedule(task)


#: How long trio sleeps (real seconds) when no task will ever wake: it is deadlocked.
_FOREVER_S = 86400.0


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` under trio on virtual time (``JumpClock``: it jumps whenever all tasks
    wait): the entry point for scripts and benchmarks."""
    return trio.run(fn, clock=JumpClock())
