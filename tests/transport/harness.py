"""Two transport cores on a fake carrier and fake network and physical layers.

``Net`` is the driver for tests (h11's ``ConnectionPair``, trio's ``_fake_net``, for the
transport core): it carries each ``SendTo`` after a delay, through ``to_dict`` and
``message_from_dict`` (so the wire form is exercised), losing, duplicating and reordering
messages with a seeded random stream; it opens fake circuits that hand both ends pairs with
matching indices (the accepting end first, as a circuit's tail does); it answers physical
commands; it fires each core's timer at its ``next_deadline``.

The ``Ledger`` follows every qubit: who holds it (the network layer, a core, an application)
and whether it is gone (freed, measured). A qubit handed over twice, freed twice or used by a
core that does not hold it fails the test at once; ``check`` compares each core's
``held_qubits`` with what the ledger says it holds. A pair's halves carry a *content* so that
teleportation can be checked: the receiver's half holds the sent qubit's content once the
right correction ran.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from qnet.network.circuit_events import CircuitId, CloseCode
from qnet.transport import TransportConfig, TransportCore, message_from_dict
from qnet.transport.events import (
    BellMeasure,
    CloseCircuit,
    Connected,
    ConnectionAccepted,
    Correct,
    EprPair,
    Error,
    Free,
    MeasurePair,
    OpenCircuit,
    PauseCircuit,
    QubitReceived,
    ResumeCircuit,
    SendTo,
    TransportEvent,
    TransportMessage,
)
from qnet.transport.states import ConnState

MS = 1_000_000
US = 1_000

A = "alice"
B = "bob"

#: Fast timers so that tests of give-up and linger finish in little simulated time.
CONFIG = TransportConfig(
    pair_window=3,
    data_window_bytes=4096,
    segment_bytes=512,
    max_in_flight=16,
    initial_rto_ns=20 * MS,
    min_rto_ns=1 * MS,
    max_rto_ns=200 * MS,
    give_up_ns=2_000 * MS,
    handshake_timeout_ns=2_000 * MS,
    linger_ns=100 * MS,
    orphan_timeout_ns=1_000 * MS,
)

E = TypeVar("E", bound=TransportEvent)


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    #: Each message takes ``delay_ns`` plus up to ``jitter_ns`` more (so messages reorder).
    delay_ns: int = 1 * MS
    jitter_ns: int = 0


class Holder(Enum):
    NETWORK = "network"
    CORE = "core"
    APP = "app"
    GONE = "gone"


@dataclass
class Qubit:
    node: str
    holder: Holder
    #: (circuit, index) of a pair half; None for an application's own qubit.
    pair: tuple[CircuitId, int] | None = None
    #: What state it holds: ("pair", circuit, index), or an application qubit's label.
    content: Any = None
    #: After a Bell measurement of the other half: the correction that makes ``content`` true.
    pending: tuple[Any, int, int] | None = None


class LedgerError(AssertionError):
    pass


class Ledger:
    def __init__(self) -> None:
        self.qubits: dict[int, Qubit] = {}
        self._ids = itertools.count(1)
        #: (circuit, index) → (qubit at the head, qubit at the tail).
        self.pairs: dict[tuple[CircuitId, int], tuple[int, int]] = {}
        self.outcomes: dict[tuple[CircuitId, int], int] = {}

    def new(self, node: str, holder: Holder, **kwargs: Any) -> int:
        qid = next(self._ids)
        self.qubits[qid] = Qubit(node, holder, **kwargs)
        return qid

    def move(self, qid: int, node: str, frm: Holder, to: Holder, why: str) -> None:
        q = self.qubits.get(qid)
        if q is None or q.node != node or q.holder is not frm:
            raise LedgerError(f"{why}: qubit {qid} at {node} is {q}, expected held by {frm}")
        q.holder = to

    def held_by(self, node: str, holder: Holder) -> set[int]:
        return {i for i, q in self.qubits.items() if q.node == node and q.holder is holder}


@dataclass
class FakeCircuit:
    id: CircuitId
    head: str
    tail: str
    open: bool = True
    next_index: int = 0
    #: Its tail paused it (``PauseCircuit``): no pairs until ``ResumeCircuit``.
    paused: bool = False


@dataclass(order=True)
class _Item:
    time: int
    seq: int
    action: Callable[[], None] = field(compare=False)


class Net:
    def __init__(
        self,
        *,
        seed: int = 0,
        faults: Faults | None = None,
        config: TransportConfig = CONFIG,
        pair_interval_ns: int = 2 * MS,
        head_lag_ns: int = 500 * US,
        circuit_setup_ns: int = 3 * MS,
        circuit_failure: CloseCode | None = None,
        measure_delay_ns: int = 100 * US,
    ) -> None:
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.cores = {
            n: TransportCore(n, config, first_conn_id=1000 * (i + 1)) for i, n in enumerate((A, B))
        }
        self.now = 0
        self._queue: list[_Item] = []
        self._seq = itertools.count()
        self.events: dict[str, list[TransportEvent]] = {A: [], B: []}
        self.commands: dict[str, list[object]] = {A: [], B: []}
        self.sent: dict[str, list[TransportMessage]] = {A: [], B: []}
        self.ledger = Ledger()
        self.circuits: dict[CircuitId, FakeCircuit] = {}
        self._circuit_numbers = itertools.count(1)
        self.pair_interval_ns = pair_interval_ns
        self.head_lag_ns = head_lag_ns
        self.circuit_setup_ns = circuit_setup_ns
        self.circuit_failure = circuit_failure
        self.measure_delay_ns = measure_delay_ns
        self.protocol_errors: list[Exception] = []
        #: Only these nodes' circuits produce pairs (tests turn pair flow off).
        self.pairs_flowing = True

    # -- scheduling --------------------------------------------------------------------------------

    def at(self, time: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, _Item(time, next(self._seq), action))

    def step(self, limit: int) -> bool:
        """Run the next thing due (a scheduled action or a core's timer) if before ``limit``."""
        due = [(self._queue[0].time, 0)] if self._queue else []
        for node, core in self.cores.items():
            deadline = core.next_deadline()
            if deadline is not None:
                due.append((max(deadline, self.now), 1 if node == A else 2))
        if not due:
            return False
        time, which = min(due)
        if time > limit:
            return False
        self.now = max(self.now, time)
        if which == 0:
            heapq.heappop(self._queue).action()
        else:
            node = A if which == 1 else B
            self.cores[node].on_timer(self.now)
            self.flush(node)
        return True

    def run(self, duration_ns: int) -> None:
        limit = self.now + duration_ns
        while self.step(limit):
            pass
        self.now = max(self.now, limit)

    def run_until(self, done: Callable[[], bool], limit_ns: int = 60_000 * MS) -> None:
        limit = self.now + limit_ns
        while not done():
            if not self.step(limit):
                raise AssertionError(f"condition not reached by {limit} ns")

    # -- calling the cores --------------------------------------------------------------------

    def do(self, node: str, call: Callable[[TransportCore, int], Any]) -> Any:
        try:
            return call(self.cores[node], self.now)
        finally:
            self.flush(node)

    def flush(self, node: str) -> None:
        core = self.cores[node]
        for out in core.pop_outputs():
            if isinstance(out, SendTo):
                self.sent[node].append(out.message)
                self._carry(node, out)
            elif isinstance(out, TransportEvent):
                self._on_event(node, out)
            else:
                self.commands[node].append(out)
                self._on_command(node, out)

    def _input(self, node: str, call: Callable[[TransportCore, int], None]) -> None:
        try:
            call(self.cores[node], self.now)
        except Exception as exc:  # recorded: tests assert there are none unless expected
            self.protocol_errors.append(exc)
        self.flush(node)

    # -- carrier ---------------------------------------------------------------------------------

    def _carry(self, sender: str, out: SendTo) -> None:
        f = self.faults
        copies = 0 if self.rng.random() < f.loss else 1
        if copies and self.rng.random() < f.duplicate:
            copies = 2
        for _ in range(copies):
            delay = f.delay_ns + (self.rng.randrange(f.jitter_ns + 1) if f.jitter_ns else 0)
            wire = message_from_dict(out.message.to_dict())
            self.at(self.now + delay, functools.partial(self._receive, out.node, sender, wire))

    def _receive(self, node: str, sender: str, message: TransportMessage) -> None:
        self._input(node, lambda core, now: core.on_message(sender, message, now))

    # -- network layer ---------------------------------------------------------------------------

    def _on_command(self, node: str, cmd: object) -> None:
        if isinstance(cmd, OpenCircuit):
            self.at(self.now + self.circuit_setup_ns, lambda: self._open(node, cmd))
        elif isinstance(cmd, CloseCircuit):
            self._close(cmd.circuit, CloseCode.CLOSED, node)
        elif isinstance(cmd, PauseCircuit | ResumeCircuit):
            c = self.circuits[cmd.circuit]
            if node != c.tail:
                raise AssertionError(f"{type(cmd).__name__} from {node}, not the allocating end")
            if c.paused == isinstance(cmd, PauseCircuit):
                raise AssertionError(f"{type(cmd).__name__} twice in a row")
            c.paused = isinstance(cmd, PauseCircuit)
        elif isinstance(cmd, Free):
            for q in cmd.qubits:
                self.ledger.move(q, node, Holder.CORE, Holder.GONE, "Free")
        elif isinstance(cmd, MeasurePair):
            self.ledger.move(cmd.qubit, node, Holder.CORE, Holder.GONE, "MeasurePair")
            outcome = self._pair_outcome(cmd.qubit)
            self.at(
                self.now + self.measure_delay_ns,
                lambda: self._input(
                    node, lambda core, now: core.on_measured(cmd.tag, (outcome,), now)
                ),
            )
        elif isinstance(cmd, BellMeasure):
            self._bell(node, cmd)
        elif isinstance(cmd, Correct):
            target = self.ledger.qubits[cmd.qubit]
            if target.holder is not Holder.CORE or target.node != node:
                raise LedgerError(f"Correct on qubit {cmd.qubit} not held by {node}'s core")
            if target.pending is not None:
                content, x, z = target.pending
                target.content = content if (x, z) == (cmd.x, cmd.z) else ("garbled", content)
                target.pending = None
        else:
            raise AssertionError(f"unexpected command {cmd!r}")

    def _open(self, node: str, cmd: OpenCircuit) -> None:
        cid: CircuitId = (node, next(self._circuit_numbers))
        if self.circuit_failure is not None:
            self._input(
                node,
                lambda core, now: core.on_circuit_failed(
                    cmd.conn, self.circuit_failure or CloseCode.CLOSED, "fake failure", now
                ),
            )
            return
        self.circuits[cid] = FakeCircuit(cid, node, cmd.remote)
        self._input(node, lambda core, now: core.on_circuit_open(cmd.conn, cid, now))
        self.at(self.now + self.pair_interval_ns, lambda: self._generate(cid))

    def _generate(self, cid: CircuitId) -> None:
        c = self.circuits[cid]
        if not c.open:
            return
        if self.pairs_flowing and not c.paused:
            index = c.next_index
            c.next_index += 1
            content = ("pair", cid, index)
            qh = self.ledger.new(c.head, Holder.NETWORK, pair=(cid, index), content=content)
            qt = self.ledger.new(c.tail, Holder.NETWORK, pair=(cid, index), content=content)
            self.ledger.pairs[(cid, index)] = (qh, qt)
            self._deliver_pair(c, c.tail, index, qt)
            self.at(self.now + self.head_lag_ns, lambda: self._deliver_pair(c, c.head, index, qh))
        self.at(self.now + self.pair_interval_ns, lambda: self._generate(cid))

    def _deliver_pair(self, c: FakeCircuit, node: str, index: int, qid: int) -> None:
        if not c.open:
            self.ledger.move(qid, node, Holder.NETWORK, Holder.GONE, "circuit closed")
            return
        self.ledger.move(qid, node, Holder.NETWORK, Holder.CORE, "on_pair")
        self._input(node, lambda core, now: core.on_pair(c.id, index, qid, 0.9, now))

    def _close(self, cid: CircuitId, code: CloseCode, by: str) -> None:
        c = self.circuits.get(cid)
        if c is None or not c.open:
            return
        c.open = False
        for node in (c.head, c.tail):
            closed = functools.partial(self._circuit_closed, node, cid, code, by)
            self.at(self.now + self.faults.delay_ns, closed)

    def _circuit_closed(self, node: str, cid: CircuitId, code: CloseCode, by: str) -> None:
        self._input(
            node, lambda core, now: core.on_circuit_closed(cid, code, "closed", now, node=by)
        )

    def break_circuit(self, code: CloseCode = CloseCode.UNREACHABLE) -> None:
        for cid, c in self.circuits.items():
            if c.open:
                self._close(cid, code, "r1")

    # -- physics ---------------------------------------------------------------------------------

    def _pair_outcome(self, qid: int) -> int:
        pair = self.ledger.qubits[qid].pair
        assert pair is not None
        if pair not in self.ledger.outcomes:
            self.ledger.outcomes[pair] = self.rng.randrange(2)
        return self.ledger.outcomes[pair]

    def _bell(self, node: str, cmd: BellMeasure) -> None:
        self.ledger.move(cmd.qubit, node, Holder.CORE, Holder.GONE, "BellMeasure qubit")
        self.ledger.move(cmd.pair_qubit, node, Holder.CORE, Holder.GONE, "BellMeasure half")
        m_qubit, m_half = self.rng.randrange(2), self.rng.randrange(2)
        half = self.ledger.qubits[cmd.pair_qubit]
        assert half.pair is not None
        head_q, tail_q = self.ledger.pairs[half.pair]
        other = self.ledger.qubits[tail_q if cmd.pair_qubit == head_q else head_q]
        other.pending = (self.ledger.qubits[cmd.qubit].content, m_half, m_qubit)
        self.at(
            self.now + self.measure_delay_ns,
            lambda: self._input(
                node, lambda core, now: core.on_measured(cmd.tag, (m_qubit, m_half), now)
            ),
        )

    def app_qubit(self, node: str, label: Any) -> int:
        """A qubit an application made (to teleport)."""
        return self.ledger.new(node, Holder.APP, content=label)

    def send_qubit(self, node: str, conn: int, qid: int) -> None:
        self.ledger.move(qid, node, Holder.APP, Holder.CORE, "send_qubit")
        self.do(node, lambda core, now: core.send_qubit(conn, qid, now))

    # -- events ----------------------------------------------------------------------------------

    def _on_event(self, node: str, event: TransportEvent) -> None:
        self.events[node].append(event)
        if isinstance(event, EprPair | QubitReceived):
            self.ledger.move(event.qubit, node, Holder.CORE, Holder.APP, type(event).__name__)
        elif isinstance(event, Error):
            for q in event.returned_qubits:
                self.ledger.move(q, node, Holder.CORE, Holder.APP, "Error.returned_qubits")

    def of(self, node: str, kind: type[E]) -> list[E]:
        return [e for e in self.events[node] if isinstance(e, kind)]

    # -- checks ----------------------------------------------------------------------------------

    def check_ledger(self) -> None:
        """Each core holds exactly the qubits the ledger says it holds."""
        for node, core in self.cores.items():
            held = core.held_qubits()
            if len(held) != len(set(held)):
                raise LedgerError(f"{node}'s core lists a qubit twice: {sorted(held)}")
            expected = self.ledger.held_by(node, Holder.CORE)
            if set(held) != expected:
                raise LedgerError(
                    f"{node}'s core holds {sorted(held)}, the ledger says {sorted(expected)}"
                )


def established(net: Net, *, port: int = 7, accept: bool = True, **connect: Any) -> tuple[int, int]:
    """Listen on B, connect from A, accept (unless not ``accept``): the two connection ids
    (A's, B's)."""
    net.do(B, lambda core, now: core.listen(port, now))
    if accept:
        net.do(B, lambda core, now: core.accept(port, now))
    conn = net.do(A, lambda core, now: core.connect(B, port, now, **connect))

    def up() -> bool:
        states = net.cores[B].connections().values()
        return bool(net.of(A, Connected)) and ConnState.ESTABLISHED in states

    net.run_until(up)
    if not accept:
        return conn, next(iter(net.cores[B].connections()))
    net.run_until(lambda: bool(net.of(B, ConnectionAccepted)))
    return conn, net.of(B, ConnectionAccepted)[-1].conn


def call(method: str, *args: Any) -> Callable[[TransportCore, int], Any]:
    """``net.do(node, call("send", conn, data))``: a core method with its arguments bound now
    (a lambda in a loop would see the loop's last values)."""
    return lambda core, now: getattr(core, method)(*args, now)
