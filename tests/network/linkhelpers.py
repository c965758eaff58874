"""Helpers for the in-process link-layer tests (tests/network/test_link_*.py).

``watch_link`` subscribes at both ends of one link of a ``qnet.sim`` network and records what
each end's link-layer user sees: every ``PairOk``/``CreateErr``, the simulated time it arrived
and, for KEEP pairs, the true fidelity of the pair with the reported Bell state at that moment
(the backend's oracle, read the instant the OK reaches the user). When both halves of a KEEP
pair have arrived it hands them to a pair handler (by default: free both qubits); or, with a
half handler, each end's user deals with its half the moment it arrives, as independent users
at the two ends would (then a half never waits in memory for the other end's OK).

Pairs are named (master's half, slave's half): the master is the lexicographically smaller
node name, whose qubit comes first in the Bell index convention (x + 2z for
(I ⊗ X^x Z^z)|Φ+⟩).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from qnet.link.events import CreateErr, CreateRequest, ErrorCode, PairOk, UpperEvent
from qnet.physical.gates import Basis
from qnet.sim import SimNetwork
from qnet.topology import Topology, load_topology, parse_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: Every statistical check allows Z_SCORE standard errors of its estimator: a correct stack
#: fails one check with probability about 6·10⁻⁷ (two-sided normal tail beyond 5σ).
Z_SCORE = 5.0

RequestKey = tuple[str, int]

#: Called once per KEEP pair when both halves have arrived: (net, master's OK, slave's OK).
#: It owns both qubits and must measure or free them.
PairHandler = Callable[[SimNetwork, PairOk, PairOk], Awaitable[None]]
#: Called for each KEEP half as it arrives: (net, node, its OK). It owns that qubit.
HalfHandler = Callable[[SimNetwork, str, PairOk], Awaitable[None]]


def example(name: str) -> Topology:
    return load_topology(EXAMPLES / f"{name}.toml")


def two_nodes(
    *,
    scheme: str = "single_click",
    length_km: float = 10.0,
    source_fidelity: float = 0.99,
    detector_efficiency: float = 0.9,
    bright_state: float = 0.1,
    attempt_overhead_ns: int = 1000,
    multiplexing: int = 1,
    memory_qubits: int = 8,
    t1_s: float = 0.0,
    t2_s: float = 0.0,
    memory_depolar_rate_hz: float = 0.0,
    gate_error_1q: float = 0.0,
    gate_error_2q: float = 0.0,
    measure_error: float = 0.0,
    seed: int = 1,
) -> Topology:
    """alice – bob over one link, every parameter given (0 disables a noise)."""
    text = f"""
[network]
name = "link_test"
seed = {seed}

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
detector_efficiency = {detector_efficiency}
source_fidelity = {source_fidelity}
bright_state = {bright_state}
attempt_overhead_ns = {attempt_overhead_ns}
multiplexing = {multiplexing}

[[node]]
name = "alice"

[[node]]
name = "bob"

[[link]]
between = ["alice", "bob"]
length_km = {length_km}
"""
    return parse_topology(text)


@dataclass(frozen=True)
class Seen:
    """One upper-layer event as one end's user received it."""

    node: str
    event: UpperEvent
    #: Simulated time (ns) when the user received it.
    time_ns: int
    #: KEEP pairs: the oracle's fidelity with the reported Bell state at ``time_ns``.
    true_fidelity: float | None = None


@dataclass
class LinkWatch:
    net: SimNetwork
    a: str
    b: str
    on_pair: PairHandler | None
    on_half: HalfHandler | None
    oracle: bool
    seen: dict[str, list[Seen]] = field(default_factory=dict)
    #: Completed pairs, (master's OK, slave's OK), in the order their second half arrived.
    pairs: list[tuple[PairOk, PairOk]] = field(default_factory=list)
    expected: dict[RequestKey, int] = field(default_factory=dict)
    #: Per (node, request): OKs received, and whether an ERR ended it.
    _count: Counter[tuple[str, RequestKey]] = field(default_factory=Counter)
    _ended: set[tuple[str, RequestKey]] = field(default_factory=set)
    _half: dict[tuple[str, int], PairOk] = field(default_factory=dict)
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def master(self) -> str:
        return min(self.a, self.b)

    @property
    def slave(self) -> str:
        return max(self.a, self.b)

    def other(self, node: str) -> str:
        return self.b if node == self.a else self.a

    def create(self, origin: str, request: CreateRequest) -> RequestKey:
        """Submit a CREATE at ``origin`` and expect its outcome at both ends."""
        cid = self.net.node(origin).create(self.other(origin), request)
        key = (origin, cid)
        self.expected[key] = request.number
        self._notify()
        return key

    # -- views ---------------------------------------------------------------------------

    def oks(self, node: str, key: RequestKey | None = None) -> list[PairOk]:
        return [
            s.event
            for s in self.seen[node]
            if isinstance(s.event, PairOk)
            and (key is None or (s.event.origin, s.event.create_id) == key)
        ]

    def errs(self, node: str) -> list[CreateErr]:
        return [s.event for s in self.seen[node] if isinstance(s.event, CreateErr)]

    def keep_seen(self, node: str) -> list[Seen]:
        return [
            s for s in self.seen[node] if isinstance(s.event, PairOk) and s.event.qubit is not None
        ]

    def finished(self, node: str, key: RequestKey) -> bool:
        if (node, key) in self._ended:
            return True
        return self._count[node, key] >= self.expected[key]

    def all_finished(self) -> bool:
        return all(self.finished(n, k) for k in self.expected for n in (self.a, self.b))

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; it is re-checked after every event."""
        while not condition():
            await self._changed.wait()

    async def wait_finished(self) -> None:
        await self.until(self.all_finished)

    # -- the two receivers ---------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _receive(self, node: str, events: trio.MemoryReceiveChannel[UpperEvent]) -> None:
        async for event in events:
            true_fidelity = None
            if isinstance(event, PairOk) and event.qubit is not None and self.oracle:
                true_fidelity = oracle_fidelity(self.net, node, event)
            self.seen[node].append(Seen(node, event, self.net.now(), true_fidelity))
            assert isinstance(event, PairOk | CreateErr)
            key = (event.origin, event.create_id)
            if isinstance(event, PairOk):
                self._count[node, key] += 1
                await self._pair_half(node, event)
            elif event.code is ErrorCode.UNSUPPORTED:
                self._ended.add((node, key))
                self._ended.add((self.other(node), key))  # answered at the origin only
            else:
                self._ended.add((node, key))
            self._notify()

    async def _pair_half(self, node: str, ok: PairOk) -> None:
        if ok.qubit is not None and self.on_half is not None:
            await self.on_half(self.net, node, ok)
        first = self._half.pop(ok.pair_id, None)
        if first is None:
            self._half[ok.pair_id] = ok
            return
        pair = (first, ok) if node == self.slave else (ok, first)
        self.pairs.append(pair)
        if ok.qubit is not None and self.on_half is None:
            handler = self.on_pair or free_both
            await handler(self.net, *pair)


@asynccontextmanager
async def watch_link(
    net: SimNetwork,
    a: str,
    b: str,
    *,
    on_pair: PairHandler | None = None,
    on_half: HalfHandler | None = None,
    oracle: bool = False,
) -> AsyncIterator[LinkWatch]:
    """Subscribe at both ends of link a–b; leave the block to stop watching."""
    watch = LinkWatch(net, a, b, on_pair, on_half, oracle)
    async with trio.open_nursery() as nursery:
        for node in (a, b):
            watch.seen[node] = []
            nursery.start_soon(watch._receive, node, net.node(node).subscribe(watch.other(node)))
        yield watch
        nursery.cancel_scope.cancel()


async def serve(
    net: SimNetwork,
    a: str,
    b: str,
    requests: Sequence[tuple[str, CreateRequest]],
    *,
    on_pair: PairHandler | None = None,
    on_half: HalfHandler | None = None,
    oracle: bool = False,
) -> LinkWatch:
    """Submit ``requests`` (origin, request) at once and wait until each is finished at both
    ends (all its pairs delivered, or an error)."""
    async with watch_link(net, a, b, on_pair=on_pair, on_half=on_half, oracle=oracle) as watch:
        for origin, request in requests:
            watch.create(origin, request)
        await watch.wait_finished()
    return watch


# -- pair handlers and the oracle --------------------------------------------------------------


async def free_half(net: SimNetwork, node: str, ok: PairOk) -> None:
    assert ok.qubit is not None
    await net.sessions[node].free([ok.qubit])


async def free_both(net: SimNetwork, m: PairOk, s: PairOk) -> None:
    master, slave = m.pair_id[0].split("|")
    assert m.qubit is not None
    assert s.qubit is not None
    await net.sessions[master].free([m.qubit])
    await net.sessions[slave].free([s.qubit])


def partner(net: SimNetwork, qubit: int) -> int:
    """The other half of a heralded pair, found in the backend's state (test-only insight)."""
    group = net.core.engine.group_of(qubit).qubits
    assert len(group) == 2, f"qubit {qubit} is in group {group}"
    return group[0] if group[1] == qubit else group[1]


def oracle_fidelity(net: SimNetwork, node: str, ok: PairOk) -> float:
    """True fidelity of the KEEP pair ``ok`` (delivered at ``node``) with its Bell index, now."""
    assert ok.qubit is not None
    master = ok.pair_id[0].split("|")[0]
    other = partner(net, ok.qubit)
    qm, qs = (ok.qubit, other) if node == master else (other, ok.qubit)
    return net.core.oracle_pair_fidelity(qm, qs, ok.bell_index, net.now())


def oracle_bell_weights(net: SimNetwork, qm: int, qs: int) -> tuple[float, ...]:
    """The true state's weights on the four Bell states (indices 0..3), now."""
    now = net.now()
    return tuple(net.core.oracle_pair_fidelity(qm, qs, i, now) for i in range(4))


# -- statistics --------------------------------------------------------------------------------


def sign(outcome_a: int, outcome_b: int) -> int:
    """The product of two ±1 outcomes (0 ↦ +1, 1 ↦ −1)."""
    return 1 - 2 * (outcome_a ^ outcome_b)


def bell_sign(bell_index: int, basis: Basis) -> int:
    """⟨σ ⊗ σ⟩ of Bell state x + 2z = (I ⊗ X^x Z^z)|Φ+⟩ for σ = Z, X, Y: Φ+ has
    ZZ = XX = +1 and YY = −1; X on the second qubit flips ZZ and YY, Z flips XX and YY."""
    x, z = bell_index & 1, bell_index >> 1
    if basis is Basis.Z:
        return -1 if x else 1
    if basis is Basis.X:
        return -1 if z else 1
    return 1 if x ^ z else -1


def mean_and_error(values: Sequence[float]) -> tuple[float, float]:
    """Sample mean and its standard error."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def binomial_bound(p: float, n: int) -> float:
    """Z_SCORE standard errors of a proportion with probability ``p`` over ``n`` trials."""
    return Z_SCORE * math.sqrt(p * (1 - p) / n)


async def settle(net: SimNetwork, seconds: float = 0.01) -> None:
    """Let in-flight messages, frees and disarms land (virtual time)."""
    await trio.sleep(seconds)
