"""Random sequences of application calls and carrier faults on one connection, with the
invariants checked after every step: messages arrive as a prefix of what was sent (no
duplicate, no gap), the k-th epr and measured pairs match at both ends, teleported qubits
arrive in order with their content, and every qubit is held by exactly one party (no qubit
lost or leaked in the cores' bookkeeping). At the end both ends close, and nothing is left."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from qnet.errors import FailedPrecondition, NotFound, QnetError
from qnet.network.circuit_events import CloseCode
from qnet.physical.gates import Basis
from qnet.transport.events import (
    Closed,
    Data,
    EprPair,
    Error,
    MeasuredPair,
    QubitReceived,
)
from tests.transport.harness import CONFIG, MS, A, B, Faults, Holder, Net, established

SIDES = st.sampled_from([A, B])


class TransportMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.conn: dict[str, int] = {}
        self.messages: dict[str, list[bytes]] = {A: [], B: []}
        self.labels: dict[str, list[str]] = {A: [], B: []}
        self.closed: dict[str, bool] = {A: False, B: False}
        self.broken = False
        self.aborted: set[str] = set()
        self.counter = 0

    @initialize(
        seed=st.integers(0, 2**16),
        loss=st.sampled_from([0.0, 0.1, 0.3]),
        duplicate=st.sampled_from([0.0, 0.2]),
        jitter_ms=st.sampled_from([0, 4]),
    )
    def connect(self, seed: int, loss: float, duplicate: float, jitter_ms: int) -> None:
        faults = Faults(loss=loss, duplicate=duplicate, jitter_ns=jitter_ms * MS)
        self.net = Net(seed=seed, faults=faults)
        self.conn[A], self.conn[B] = established(self.net)

    def other(self, side: str) -> str:
        return B if side == A else A

    def failed(self, side: str) -> bool:
        return bool(self.net.of(side, Error)) or side in self.aborted

    def call(self, side: str, method: str, *args: Any, sends: bool = False) -> bool:
        """Call the core; a refusal must be the one the model expects. True if accepted."""
        core = self.net.cores[side]
        present = self.conn[side] in core.connections()
        refused: QnetError | None = None
        try:
            self.net.do(side, lambda c, now: getattr(c, method)(self.conn[side], *args, now))
        except QnetError as exc:
            refused = exc
        if refused is None:
            assert present
        elif not present:  # it failed, or closed and lingered
            assert self.failed(side) or self.net.of(side, Closed)
            assert isinstance(refused, NotFound), refused
        else:  # sending after close
            assert sends, refused
            assert self.closed[side], refused
            assert isinstance(refused, FailedPrecondition), refused
        return refused is None

    # -- application calls -------------------------------------------------------------------

    @rule(side=SIDES, size=st.sampled_from([0, 1, 100, 700, 3000]))
    def send(self, side: str, size: int) -> None:
        self.counter += 1
        data = self.counter.to_bytes(4, "big") + bytes(size)
        if self.call(side, "send", data, sends=True):
            self.messages[side].append(data)

    @rule(side=SIDES)
    def recv(self, side: str) -> None:
        self.call(side, "recv")

    @rule(side=SIDES)
    def epr(self, side: str) -> None:
        self.call(side, "epr")

    @rule(side=SIDES, count=st.integers(1, 3), basis=st.sampled_from(list(Basis)))
    def epr_measure(self, side: str, count: int, basis: Basis) -> None:
        self.call(side, "epr_measure", count, basis)

    @rule(side=SIDES)
    def send_qubit(self, side: str) -> None:
        self.counter += 1
        label = f"{side}-{self.counter}"
        qubit = self.net.app_qubit(side, label)
        self.net.ledger.move(qubit, side, Holder.APP, Holder.CORE, "send_qubit")
        if self.call(side, "send_qubit", qubit, sends=True):
            self.labels[side].append(label)
        else:
            self.net.ledger.move(qubit, side, Holder.CORE, Holder.APP, "refused")

    @precondition(lambda self: not self.broken)
    @rule(side=SIDES)
    def close(self, side: str) -> None:
        if self.closed[side] or self.failed(side):
            return
        self.call(side, "close")
        self.closed[side] = True

    @precondition(lambda self: not self.broken)
    @rule(side=SIDES)
    def abort(self, side: str) -> None:
        if self.conn[side] not in self.net.cores[side].connections():
            return
        returned = self.net.do(side, lambda core, now: core.abort(self.conn[side], now))
        for qubit in returned:  # the application's again
            self.net.ledger.move(qubit, side, Holder.CORE, Holder.APP, "abort")
        self.broken = True
        self.aborted.add(side)

    @rule(ms=st.integers(1, 60))
    def wait(self, ms: int) -> None:
        self.net.run(ms * MS)

    @precondition(lambda self: not self.broken)
    @rule(code=st.sampled_from([CloseCode.UNREACHABLE, CloseCode.TIMEOUT]))
    def break_circuit(self, code: CloseCode) -> None:
        self.broken = True
        self.net.break_circuit(code)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def messages_are_a_prefix_of_those_sent(self) -> None:
        for side in (A, B):
            got = [e.data for e in self.net.of(self.other(side), Data)]
            assert got == self.messages[side][: len(got)]

    @invariant()
    def kth_pairs_match(self) -> None:
        for kind in (EprPair, MeasuredPair):
            got_a = [(e.number, e.index) for e in self.net.of(A, kind)]  # type: ignore[attr-defined]
            got_b = [(e.number, e.index) for e in self.net.of(B, kind)]  # type: ignore[attr-defined]
            for got in (got_a, got_b):
                assert [number for number, _ in got] == list(range(len(got)))
            shared = min(len(got_a), len(got_b))
            assert got_a[:shared] == got_b[:shared]

    @invariant()
    def teleported_qubits_arrive_in_order_with_their_content(self) -> None:
        for side in (A, B):
            got = [
                self.net.ledger.qubits[e.qubit].content
                for e in self.net.of(self.other(side), QubitReceived)
            ]
            assert got == self.labels[side][: len(got)]

    @invariant()
    def every_qubit_has_one_holder(self) -> None:
        self.net.check_ledger()
        assert self.net.protocol_errors == []

    # -- the end ----------------------------------------------------------------------------------

    def teardown(self) -> None:
        if not self.conn:
            return
        net = self.net
        for side in (A, B):
            if not self.closed[side] and not self.failed(side) and not self.broken:
                self.call(side, "close")
        for side in (A, B):  # read what is left, so that the connection can finish
            unread = len(self.messages[self.other(side)]) - len(net.of(side, Data))
            for _ in range(max(0, unread)):
                self.call(side, "recv")

        def ended(side: str) -> bool:
            return bool(net.of(side, Closed)) or self.failed(side)

        net.run_until(lambda: ended(A) and ended(B), limit_ns=30_000 * MS)
        net.run(CONFIG.linger_ns + CONFIG.give_up_ns)
        net.check_ledger()
        for side in (A, B):
            assert net.cores[side].connections() == {}
            assert net.cores[side].held_qubits() == []
            if not self.failed(side):  # a clean close delivered everything
                got = [e.data for e in net.of(self.other(side), Data)]
                assert got == self.messages[side] or self.failed(self.other(side))
        if not (self.failed(A) or self.failed(B)):
            assert len(net.of(B, QubitReceived)) == len(self.labels[A])
            assert len(net.of(A, QubitReceived)) == len(self.labels[B])


# Small enough for the suite (about a second); a long local search (thousands of examples,
# ~100 steps) is QNET_TRANSPORT_EXAMPLES=5000 QNET_TRANSPORT_STEPS=80 pytest <this file>.
TransportMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("QNET_TRANSPORT_EXAMPLES", "40")),
    stateful_step_count=int(os.environ.get("QNET_TRANSPORT_STEPS", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_transport_state_machine = TransportMachine.TestCase
