"""The channel backend's core: nodes, memories, links, generation and local operations.

Sans-IO: every input carries ``now`` (integer nanoseconds of physical time); outputs are herald
events queued for ``pop_events``; ``next_deadline`` says when the next herald is due so the
driver can sleep until then. Ownership is checked here by node name, so a driver only has to
map its callers to names. Memory noise is applied lazily: each qubit remembers when it was last
touched, and the noise for the idle time is applied when it is next touched.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qnet.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NoMemory,
    NotFound,
    PermissionDenied,
)
from qnet.names import check_node_name, link_id
from qnet.physical.events import HeraldEvent
from qnet.physical.gates import (
    BELL_STATES,
    CNOT,
    GATES,
    Basis,
    GateName,
    H,
    Matrix,
    gate_matrix,
)
from qnet.physical.heralding import HERALDED_INDICES, HeraldingModel, heralding_model
from qnet.physical.params import LinkParams, NodeParams, check_bright_state
from qnet.physical.state import StateEngine

_ZERO: Matrix = np.array([[1, 0], [0, 0]], dtype=np.complex128)


def memory_noise(params: NodeParams, idle_s: float) -> tuple[float, float, float]:
    """(damping γ, extra coherence factor, depolarising p) for ``idle_s`` of memory time.

    Amplitude damping (rate 1/T1), dephasing (T2) and depolarising (rate γ_d) act together, and
    damping and depolarising do not commute, so the three factors are solved from the exact
    joint solution rather than applied one after another; then applying them over t₁ and t₂
    equals applying them over t₁ + t₂. With R = 1/T1 + γ_d and d = e^(−Rt):
        |1⟩ population → P·d + (γ_d/2R)(1 − d),   coherence → c·e^(−t(1/T2 + γ_d)),
    matched by damping g, then coherence c′, then depolarising p, in that order.
    """
    rate_1 = 1 / params.t1_s if params.t1_s > 0 else 0.0
    rate_d = params.memory_depolar_rate_hz
    # Without a T2 the coherence decays by the damping alone, at half its rate.
    rate_2 = 1 / params.t2_s if params.t2_s > 0 else rate_1 / 2
    total = rate_1 + rate_d
    d = math.exp(-total * idle_s)
    depolar = rate_d / total * (1 - d) if total > 0 else 0.0
    damping = 1 - d / (1 - depolar) if rate_1 > 0 else 0.0
    if rate_2 == 0.0:
        # Depolarising alone: it shrinks the coherences exactly as far as they decay, so no
        # extra factor is left (computing one would only give 1 up to rounding).
        return damping, 1.0, depolar
    remaining = math.exp(-idle_s * (rate_2 + rate_d))
    # Over very long times damping or depolarising reach 1 and no coherence is left to scale.
    left = math.sqrt(max(1 - damping, 0.0)) * (1 - depolar)
    coherence = min(remaining / left, 1.0) if left > 0 else 0.0
    return damping, coherence, depolar


@dataclass(slots=True)
class _Node:
    params: NodeParams
    rng: random.Random
    qubits: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Attempts:
    """One memory pair attempting. Its draw (success after ``attempts`` cycles from
    ``started_ns``) holds until it succeeds or the pair breaks up: keeping it, rather than
    drawing again whenever another pair of the link changes, keeps each pair's own cycle
    phase."""

    qa: int
    qb: int
    alpha: float | None
    started_ns: int
    attempts: int
    success_ns: int


@dataclass(slots=True)
class _Link:
    a: str  # the lower name: its bright-state setting decides when the ends differ
    b: str
    params: LinkParams
    armed: dict[str, deque[tuple[int, float | None]]]
    rng: random.Random
    sequence: int = 0
    epoch: int = 0  # bumped whenever the scheduled success no longer holds
    #: The pairs attempting now: armed[a][i] with armed[b][i] for i < multiplexing.
    running: list[_Attempts] = field(default_factory=list)
    carried_attempts: int = 0  # attempts of pairs that broke up before succeeding
    successes: int = 0
    models: dict[float, HeraldingModel] = field(default_factory=dict)

    def model(self, bright_state: float | None) -> HeraldingModel:
        key = self.params.bright_state if bright_state is None else bright_state
        found = self.models.get(key)
        if found is None:
            found = self.models[key] = heralding_model(self.params, key)
        return found

    def parallel(self) -> int:
        """How many armed pairs should be attempting."""
        return min(self.params.multiplexing, len(self.armed[self.a]), len(self.armed[self.b]))


class ChannelCore:
    """All physics of one simulated network. Not thread-safe: one driver owns it."""

    def __init__(self, *, seed: int = 0, max_group_qubits: int = 10) -> None:
        # One random stream per node and per link, each seeded from (seed, name): what one link
        # or node draws then does not depend on how other nodes' requests interleave, which is
        # what makes a simulation repeat for its seed.
        self.seed = seed
        self.rng = random.Random(f"{seed}|backend")
        self.engine = StateEngine(self.rng, max_group_qubits=max_group_qubits)
        self.now = 0
        self._nodes: dict[str, _Node] = {}
        self._links: dict[str, _Link] = {}
        self._owner: dict[int, str] = {}
        self._last: dict[int, int] = {}
        self._armed_on: dict[int, str] = {}
        self._heap: list[tuple[int, int, str, int]] = []  # time, tiebreak, link, epoch
        self._tiebreak = 0
        self._next_qubit = 1
        self._events: list[HeraldEvent] = []

    # -- time ----------------------------------------------------------------------------

    def advance(self, now: int) -> None:
        """Process every herald due at or before ``now``."""
        if not isinstance(now, int) or isinstance(now, bool):
            raise InvalidArgument(f"time must be an integer of nanoseconds, got {now!r}")
        if now < self.now:
            raise InvalidArgument(f"time went backwards: {now} ns < {self.now} ns")
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, lid, epoch = heapq.heappop(heap)
            link = self._links[lid]
            if epoch != link.epoch:
                continue
            self.now = when
            self._succeed(link, when)
        self.now = now

    def next_deadline(self) -> int | None:
        heap = self._heap
        while heap:
            when, _, lid, epoch = heap[0]
            if self._links[lid].epoch == epoch:
                return when
            heapq.heappop(heap)
        return None

    def pop_events(self) -> list[HeraldEvent]:
        events, self._events = self._events, []
        return events

    # -- nodes and links -----------------------------------------------------------------

    def register_node(self, name: str, params: NodeParams, now: int) -> None:
        self.advance(now)
        check_node_name(name)
        if name in self._nodes:
            raise AlreadyExists(f"node {name} is already registered")
        self._nodes[name] = _Node(params, random.Random(f"{self.seed}|node|{name}"))

    def unregister_node(self, name: str, now: int) -> None:
        """Forget a node: stop its generation and free its qubits (its links stay declared)."""
        self.advance(now)
        node = self._node(name)
        for link in self._links.values():
            if name in link.armed:
                self._disarm_all(link, name)
        for q in list(node.qubits):
            self._release(q)
        del self._nodes[name]

    def nodes(self) -> list[str]:
        return sorted(self._nodes)

    def node_params(self, name: str) -> NodeParams:
        return self._node(name).params

    def memory_in_use(self, name: str) -> int:
        return len(self._node(name).qubits)

    @property
    def qubits_in_use(self) -> int:
        return len(self._owner)

    def declare_link(self, a: str, b: str, params: LinkParams, now: int) -> HeraldingModel:
        """Declare the link a–b; the same declaration twice is fine, a different one is not."""
        self.advance(now)
        check_node_name(a)
        check_node_name(b)
        if a == b:
            raise InvalidArgument(f"a link needs two different nodes, got {a} twice")
        lid = link_id(a, b)
        existing = self._links.get(lid)
        if existing is not None:
            if existing.params != params:
                raise FailedPrecondition(
                    f"link {lid} is already declared with different parameters:"
                    f" {existing.params.as_dict()} vs {params.as_dict()}"
                )
            return existing.model(None)
        lo, hi = sorted((a, b))
        link = _Link(
            lo, hi, params, {lo: deque(), hi: deque()}, random.Random(f"{self.seed}|{lid}")
        )
        self._links[lid] = link
        return link.model(None)

    def link_sequence(self, a: str, b: str) -> int:
        """The link's last herald sequence so far (0: none)."""
        return self._link(a, b).sequence

    def link_params(self, a: str, b: str) -> LinkParams:
        return self._link(a, b).params

    def link_theory(self, a: str, b: str, bright_state: float | None = None) -> HeraldingModel:
        if bright_state is not None:
            check_bright_state(bright_state)
        return self._link(a, b).model(bright_state)

    def links(self) -> list[str]:
        return sorted(self._links)

    # -- memory --------------------------------------------------------------------------

    def allocate(self, node: str, count: int, now: int) -> list[int]:
        self.advance(now)
        rec = self._node(node)
        if count < 1:
            raise InvalidArgument(f"count must be at least 1, got {count}", node=node)
        free = rec.params.memory_qubits - len(rec.qubits)
        if count > free:
            raise NoMemory(
                f"{free} of {rec.params.memory_qubits} memory qubits free, asked for {count}",
                node=node,
            )
        out = []
        for _ in range(count):
            q = self._next_qubit
            self._next_qubit += 1
            self.engine.new_qubit(q)
            self._owner[q] = node
            self._last[q] = now
            rec.qubits.add(q)
            out.append(q)
        return out

    def free(self, node: str, qubits: Sequence[int], now: int) -> None:
        self.advance(now)
        if len(set(qubits)) != len(qubits):
            raise InvalidArgument(f"qubits to free must be distinct, got {list(qubits)}", node=node)
        for q in qubits:
            self._own(node, q)
        for q in qubits:
            lid = self._armed_on.get(q)
            if lid is not None:
                self._disarm_one(self._links[lid], node, q)
            self._release(q)

    # -- local operations ----------------------------------------------------------------

    def apply_gate(
        self, node: str, gate: GateName, qubits: Sequence[int], angle: float, now: int
    ) -> None:
        self.advance(now)
        spec = GATES[gate]
        if len(qubits) != spec.arity:
            raise InvalidArgument(
                f"{gate.value} acts on {spec.arity} qubit(s), got {len(qubits)}", node=node
            )
        if len(set(qubits)) != len(qubits):
            raise InvalidArgument(
                f"{gate.value} needs distinct qubits, got {list(qubits)}", node=node
            )
        op = gate_matrix(gate, angle)
        for q in qubits:
            self._usable(node, q)
        self._touch(qubits, now)
        self.engine.apply(op, qubits)
        params = self._nodes[node].params
        self.engine.depolarize(
            qubits, params.gate_error_1q if spec.arity == 1 else params.gate_error_2q
        )

    def measure(self, node: str, qubit: int, basis: Basis, now: int, *, keep: bool = False) -> int:
        self.advance(now)
        self._usable(node, qubit)
        self._touch((qubit,), now)
        return self._measure(node, qubit, basis, keep)

    def bell_measure(self, node: str, qubit_a: int, qubit_b: int, now: int) -> int:
        """CNOT(a→b), H(a), measure both in Z: index = m_b + 2·m_a (see gates.bell_state)."""
        self.advance(now)
        if qubit_a == qubit_b:
            raise InvalidArgument(f"Bell measurement needs two qubits, got {qubit_a} twice")
        self._usable(node, qubit_a)
        self._usable(node, qubit_b)
        pair = (qubit_a, qubit_b)
        self._touch(pair, now)
        params = self._nodes[node].params
        self.engine.apply(CNOT, pair)
        self.engine.depolarize(pair, params.gate_error_2q)
        self.engine.apply(H, (qubit_a,))
        self.engine.depolarize((qubit_a,), params.gate_error_1q)
        m_a = self._measure(node, qubit_a, Basis.Z, keep=False)
        m_b = self._measure(node, qubit_b, Basis.Z, keep=False)
        return m_b + 2 * m_a

    # -- generation ----------------------------------------------------------------------

    def start_generation(
        self,
        node: str,
        peer: str,
        qubits: Sequence[int],
        now: int,
        *,
        bright_state: float | None = None,
    ) -> int:
        """Arm ``qubits`` (reset to |0⟩) for generation with ``peer``; returns how many are
        armed at ``node``'s end of the link now."""
        self.advance(now)
        link = self._link(node, peer)
        if bright_state is not None:
            check_bright_state(bright_state)
        if len(set(qubits)) != len(qubits):
            raise InvalidArgument(f"qubits to arm must be distinct, got {list(qubits)}")
        for q in qubits:
            self._usable(node, q)
        queue = link.armed[node]
        for q in qubits:
            self.engine.set_state((q,), _ZERO)
            self._last[q] = now
            self._armed_on[q] = link_id(link.a, link.b)
            queue.append((q, bright_state))
        if len(link.running) < link.parallel():
            self._reschedule(link, now)
        return len(queue)

    def stop_generation(self, node: str, peer: str, now: int) -> list[int]:
        self.advance(now)
        link = self._link(node, peer)
        return self._disarm_all(link, node)

    # -- the test-only oracle ------------------------------------------------------------

    def oracle_pair_fidelity(self, qubit_a: int, qubit_b: int, bell_index: int, now: int) -> float:
        """True fidelity of (a, b) with Bell state ``bell_index`` at ``now``. For tests and
        experiments that check estimates; nodes never see it."""
        self.advance(now)
        for q in (qubit_a, qubit_b):
            if q not in self._owner:
                raise NotFound(f"qubit {q} does not exist")
        if bell_index not in range(4):
            raise InvalidArgument(f"Bell index must be 0..3, got {bell_index}")
        self._touch((qubit_a, qubit_b), now)
        return self.engine.fidelity((qubit_a, qubit_b), BELL_STATES[bell_index])

    # -- internals -----------------------------------------------------------------------

    def _node(self, name: str) -> _Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise NotFound(f"node {name!r} is not registered") from None

    def _link(self, a: str, b: str) -> _Link:
        self._node(a)
        try:
            return self._links[link_id(a, b)]
        except KeyError:
            raise NotFound(f"no link between {a} and {b} is declared", node=a) from None

    def _own(self, node: str, qubit: int) -> None:
        owner = self._owner.get(qubit)
        if owner is None:
            raise NotFound(f"qubit {qubit} does not exist", node=node)
        if owner != node:
            raise PermissionDenied(f"qubit {qubit} belongs to another node", node=node)

    def _usable(self, node: str, qubit: int) -> None:
        self._own(node, qubit)
        lid = self._armed_on.get(qubit)
        if lid is not None:
            raise FailedPrecondition(
                f"qubit {qubit} is armed for generation on link {lid}; stop generation first",
                node=node,
            )

    def _release(self, qubit: int) -> None:
        node = self._owner.pop(qubit)
        self._nodes[node].qubits.discard(qubit)
        del self._last[qubit]
        self.engine.discard(qubit)

    def _measure(self, node: str, qubit: int, basis: Basis, keep: bool) -> int:
        outcome = self.engine.measure(qubit, basis, keep=keep, rng=self._nodes[node].rng)
        if not keep:
            owner = self._owner.pop(qubit)
            self._nodes[owner].qubits.discard(qubit)
            del self._last[qubit]
        error = self._nodes[node].params.measure_error
        if error > 0.0 and self._nodes[node].rng.random() < error:
            outcome ^= 1
        return outcome

    def _touch(self, qubits: Sequence[int], now: int) -> None:
        """Apply each qubit's memory noise for the time since it was last touched."""
        for q in qubits:
            idle = now - self._last[q]
            if idle <= 0:
                continue
            self._last[q] = now
            params = self._nodes[self._owner[q]].params
            if not params.noisy_memory:
                continue
            damping, coherence, depolar = memory_noise(params, idle * 1e-9)
            self.engine.single_qubit_noise(q, damping=damping, coherence=coherence, depolar=depolar)

    def _disarm_all(self, link: _Link, node: str) -> list[int]:
        queue = link.armed[node]
        out = [q for q, _ in queue]
        queue.clear()
        for q in out:
            del self._armed_on[q]
        self._reschedule(link, self.now)
        return out

    def _disarm_one(self, link: _Link, node: str, qubit: int) -> None:
        index = _remove_armed(link.armed[node], qubit)
        del self._armed_on[qubit]
        # Only the first ``len(running)`` qubits at each end attempt; one further back
        # changes no pairing.
        if index < len(link.running):
            self._reschedule(link, self.now)

    def _reschedule(self, link: _Link, now: int) -> None:
        """Match the attempting pairs to the armed queues from ``now`` on. A pair still
        there keeps its draw; a new one (both qubits newly paired) draws from ``now``; one
        that broke up (disarmed, or its partner changed) gives up its attempts so far to
        the link's next herald. Attempts are memoryless, so a fresh draw at a restart
        changes no statistics."""
        queue_a, queue_b = link.armed[link.a], link.armed[link.b]
        old = {(r.qa, r.qb, r.alpha): r for r in link.running}
        running: list[_Attempts] = []
        for i in range(link.parallel()):
            qa, alpha = queue_a[i]
            qb = queue_b[i][0]
            kept = old.pop((qa, qb, alpha), None)
            if kept is None:
                model = link.model(alpha)
                attempts = model.draw_attempts(link.rng)
                kept = _Attempts(qa, qb, alpha, now, attempts, now + attempts * model.cycle_ns)
            running.append(kept)
        for gone in old.values():
            cycle = link.model(gone.alpha).cycle_ns
            link.carried_attempts += (now - gone.started_ns) // cycle
        link.running = running
        link.epoch += 1
        if not running:
            return
        self._tiebreak += 1
        heapq.heappush(
            self._heap,
            (
                min(r.success_ns for r in running),
                self._tiebreak,
                link_id(link.a, link.b),
                link.epoch,
            ),
        )

    def _succeed(self, link: _Link, when: int) -> None:
        """Every attempting pair whose success falls at ``when`` is heralded, in queue order,
        each with its own sequence number."""
        lid = link_id(link.a, link.b)
        queue_a, queue_b = link.armed[link.a], link.armed[link.b]
        for r in link.running:
            if r.success_ns != when:
                continue
            attempts = r.attempts + link.carried_attempts
            link.carried_attempts = 0
            _remove_armed(queue_a, r.qa)
            _remove_armed(queue_b, r.qb)
            del self._armed_on[r.qa]
            del self._armed_on[r.qb]
            model = link.model(r.alpha)
            index = HERALDED_INDICES[link.rng.random() < 0.5]
            self.engine.set_state((r.qa, r.qb), model.states[index])
            emitted = when - model.flight_ns
            self._last[r.qa] = emitted
            self._last[r.qb] = emitted
            link.sequence += 1
            link.successes += 1
            for node, peer, q in ((link.a, link.b, r.qa), (link.b, link.a, r.qb)):
                self._events.append(
                    HeraldEvent(
                        node=node,
                        peer=peer,
                        link_id=lid,
                        sequence=link.sequence,
                        qubit=q,
                        bell_index=index,
                        attempts=attempts,
                        emitted_ns=emitted,
                        time_ns=when,
                        bright_state=model.bright_state,
                    )
                )
        link.running = [r for r in link.running if r.success_ns != when]
        self._reschedule(link, when)


def _remove_armed(queue: deque[tuple[int, float | None]], qubit: int) -> int:
    """Take ``qubit`` out of an armed queue; returns where it stood."""
    if queue[0][0] == qubit:
        queue.popleft()  # the usual case: without multiplexing, always
        return 0
    index = next(i for i, item in enumerate(queue) if item[0] == qubit)
    del queue[index]
    return index
