"""Pair streams: epr order and flow control, measure-directly streams, teleportation."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.errors import Unreachable
from qnet.network.circuit_events import CloseCode
from qnet.physical.gates import Basis
from qnet.transport.events import (
    BellMeasure,
    Closed,
    Correct,
    EprCut,
    EprPair,
    EprRelease,
    Error,
    MeasuredPair,
    MeasurePair,
    PairDemand,
    PairsEnded,
    PairUse,
    PairUses,
    PauseCircuit,
    QubitReceived,
    QubitSent,
    ResumeCircuit,
    Teleport,
)
from qnet.transport.pairs import RELEASED
from tests.transport.harness import CONFIG, MS, A, B, Faults, Holder, Net, established


@settings(max_examples=15, deadline=None)
@given(
    counts=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    loss=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 2**16),
)
def test_kth_epr_pair_is_the_same_pair_at_both_ends(
    counts: tuple[int, int], loss: float, seed: int
) -> None:
    net = Net(seed=seed, faults=Faults(loss=loss, jitter_ns=3 * MS))
    a, b = established(net)
    n = min(counts)
    for _ in range(counts[0]):
        net.do(A, lambda core, now: core.epr(a, now))
    for _ in range(counts[1]):
        net.do(B, lambda core, now: core.epr(b, now))
    net.run_until(lambda: len(net.of(A, EprPair)) >= n and len(net.of(B, EprPair)) >= n)
    net.run(50 * MS)
    got_a, got_b = net.of(A, EprPair), net.of(B, EprPair)
    assert [e.number for e in got_a] == list(range(len(got_a)))
    assert [e.index for e in got_a[:n]] == [e.index for e in got_b[:n]]
    assert [e.index for e in got_a] == sorted(e.index for e in got_a)
    for e in got_a + got_b:  # each half is one of the pair the ledger says
        assert net.ledger.qubits[e.qubit].content[2] == e.index
    net.check_ledger()
    assert net.protocol_errors == []


def test_pairs_beyond_the_windows_are_released() -> None:
    # Pausing off: the circuit streams on and the surplus is freed.
    net = Net(seed=1, config=replace(CONFIG, pause_after_ns=10_000 * MS))
    a, b = established(net)
    net.run(200 * MS)  # ~100 pairs stream in; nobody asks for any
    # No end holds pairs ahead of calls before its application uses the stream.
    for node in (A, B):
        assert len(net.cores[node].held_qubits()) <= 1
    uses = [u for m in net.sent[B] if isinstance(m, PairUses) for u in m.uses]
    assert uses.count(PairUse.EPR.value) == 0
    assert uses.count(PairUse.RELEASE.value) > 50
    # Taking pairs opens the connector's window again (its PairDemand raises the limit).
    for _ in range(5):
        net.do(A, lambda core, now: core.epr(a, now))
        net.do(B, lambda core, now: core.epr(b, now))
    net.run(100 * MS)
    assert [e.index for e in net.of(A, EprPair)] == [e.index for e in net.of(B, EprPair)]
    assert len(net.of(A, EprPair)) == 5
    assert any(isinstance(m, PairDemand) and m.epr_limit >= 8 for m in net.sent[A])
    net.check_ledger()


@pytest.mark.parametrize("hold", [0, 2])
def test_pairs_no_call_wanted_wait_for_the_next_calls(hold: int) -> None:
    """The allocator keeps up to ``hold_pairs`` pairs that came while both windows were full,
    undecided, for the next calls, rather than releasing them while those calls are on
    their way (each would cost a whole end-to-end pair)."""
    config = replace(CONFIG, pause_after_ns=10_000 * MS, hold_pairs=hold)
    net = Net(seed=1, config=config)
    a, b = established(net)
    net.do(A, lambda core, now: core.epr(a, now))
    net.do(B, lambda core, now: core.epr(b, now))
    net.run(16 * MS)  # the windows fill and a few more pairs come
    net.pairs_flowing = False
    net.run(2 * MS)
    stream = net.cores[B].connection(b).pairs
    held = sorted(stream.early)
    assert len(held) == hold
    calls = config.pair_window + 3
    for _ in range(calls):
        net.do(A, lambda core, now: core.epr(a, now))
        net.do(B, lambda core, now: core.epr(b, now))
    net.run(5 * MS)
    got_a, got_b = net.of(A, EprPair), net.of(B, EprPair)
    # The first call's pair, the windows', and the held ones: no further pair comes.
    assert len(got_a) == len(got_b) == 1 + config.pair_window + hold
    assert [e.index for e in got_a] == [e.index for e in got_b]
    if hold:
        assert [e.index for e in got_a][-hold:] == held
    net.check_ledger()
    assert net.protocol_errors == []


def test_held_pairs_are_released_once_they_aged() -> None:
    net = Net(seed=1, config=replace(CONFIG, pause_after_ns=10_000 * MS))
    a, b = established(net)
    net.do(A, lambda core, now: core.epr(a, now))
    net.do(B, lambda core, now: core.epr(b, now))
    net.run(16 * MS)
    net.pairs_flowing = False
    stream = net.cores[B].connection(b).pairs
    held = sorted(stream.early)
    assert held
    net.run(CONFIG.max_ready_age_ns)
    assert stream.early == {}
    uses = [u for m in net.sent[B] if isinstance(m, PairUses) for u in m.uses]
    assert [uses[i] for i in held] == [PairUse.RELEASE.value] * len(held)
    net.run(CONFIG.prefetch_idle_ns + 10 * MS)  # the idle windows go back too
    for node in (A, B):
        assert net.cores[node].held_qubits() == []
    net.check_ledger()


def _pauses(net: Net) -> list[bool]:
    """The allocator's pause (True) and resume (False) commands, in order."""
    return [
        isinstance(c, PauseCircuit)
        for c in net.commands[B]
        if isinstance(c, PauseCircuit | ResumeCircuit)
    ]


def test_an_idle_connection_pauses_its_circuit_and_resumes_on_demand() -> None:
    net = Net(seed=1)
    a, b = established(net)
    net.run(200 * MS)  # both windows fill, then nobody wants a pair for pause_after_ns
    assert _pauses(net) == [True]
    (circuit,) = net.circuits.values()
    made = circuit.next_index
    net.run(500 * MS)
    assert circuit.next_index == made  # no pair generated while paused
    assert not any(isinstance(c, PauseCircuit | ResumeCircuit) for c in net.commands[A])
    # The windows' pairs are there at once; more calls resume the circuit.
    n = CONFIG.pair_window + 3
    for _ in range(n):
        net.do(A, lambda core, now: core.epr(a, now))
        net.do(B, lambda core, now: core.epr(b, now))
    net.run_until(lambda: len(net.of(A, EprPair)) == n and len(net.of(B, EprPair)) == n)
    assert _pauses(net)[:2] == [True, False]
    assert [e.index for e in net.of(A, EprPair)] == [e.index for e in net.of(B, EprPair)]
    net.run(200 * MS)  # idle again: paused again
    assert _pauses(net)[-1] is True
    # One end asking alone does not resume (the pair would only be freed); a measure-directly
    # slot at both ends does.
    net.do(A, lambda core, now: core.epr_measure(a, 3, Basis.Z, now))
    net.run(100 * MS)
    assert _pauses(net)[-1] is True
    net.do(B, lambda core, now: core.epr_measure(b, 3, Basis.Z, now))
    net.run_until(lambda: len(net.of(A, MeasuredPair)) == 3 and len(net.of(B, MeasuredPair)) == 3)
    net.run(200 * MS)
    assert _pauses(net)[-2:] == [False, True]
    net.check_ledger()
    assert net.protocol_errors == []


def test_a_busy_stream_never_pauses() -> None:
    net = Net(seed=3)
    a, b = established(net)
    for _ in range(60):  # one call per end every pair: the windows fill and drain
        net.do(A, lambda core, now: core.epr(a, now))
        net.do(B, lambda core, now: core.epr(b, now))
        net.run(2 * MS)
    assert _pauses(net) == []
    net.check_ledger()


def test_teleports_slower_than_the_circuit_pause_it_until_the_next_qubit() -> None:
    """A pair left unused on top of the held ones, while the connection only teleports,
    pauses the circuit at once (not after pause_after_ns of no demand at all); each qubit
    sent resumes it, and every qubit arrives."""
    config = replace(CONFIG, pause_after_ns=10_000 * MS)  # only the surplus rule pauses
    net = Net(seed=5, config=config)
    a, _ = established(net)
    sends = 6
    for i in range(sends):  # one qubit per 20 pairs
        _teleport(net, A, a, f"q{i}")
        net.run(40 * MS)
    net.run_until(lambda: len(net.of(B, QubitReceived)) == sends)
    labels = [net.ledger.qubits[e.qubit].content for e in net.of(B, QubitReceived)]
    assert labels == [f"q{i}" for i in range(sends)]
    pauses = _pauses(net)
    assert pauses.count(True) >= sends - 1
    assert pauses == [True, False] * (len(pauses) // 2) + [True] * (len(pauses) % 2)
    # Paused most of the time: far fewer pairs than 2 ms apart for 240 ms.
    (circuit,) = net.circuits.values()
    assert circuit.next_index < 40
    net.check_ledger()
    assert net.protocol_errors == []


def test_an_epr_stream_slower_than_the_circuit_is_not_paused_for_it() -> None:
    config = replace(CONFIG, pause_after_ns=10_000 * MS)
    net = Net(seed=5, config=config)
    a, b = established(net)
    for _ in range(10):  # one call per end per 5 pairs: the surplus is released
        net.do(A, lambda core, now: core.epr(a, now))
        net.do(B, lambda core, now: core.epr(b, now))
        net.run(10 * MS)
    assert len(net.of(A, EprPair)) == len(net.of(B, EprPair)) == 10
    assert _pauses(net) == []
    net.check_ledger()


def test_measure_directly_outcomes_agree_in_order() -> None:
    net = Net(seed=2, faults=Faults(loss=0.2, jitter_ns=2 * MS))
    a, b = established(net)
    net.do(A, lambda core, now: core.epr_measure(a, 6, Basis.Z, now))
    net.do(B, lambda core, now: core.epr_measure(b, 4, Basis.Z, now))
    net.do(B, lambda core, now: core.epr_measure(b, 2, Basis.X, now))
    net.run_until(lambda: len(net.of(A, MeasuredPair)) == 6 == len(net.of(B, MeasuredPair)))
    got_a, got_b = net.of(A, MeasuredPair), net.of(B, MeasuredPair)
    assert [e.number for e in got_a] == list(range(6)) == [e.number for e in got_b]
    assert [e.index for e in got_a] == [e.index for e in got_b]
    assert [e.outcome for e in got_a] == [e.outcome for e in got_b]  # the fake: same outcome
    assert [e.basis for e in got_b] == [Basis.Z] * 4 + [Basis.X] * 2
    # Measured on arrival: no pair waited for an epr call or was held for it.
    measured = [c for c in net.commands[A] if isinstance(c, MeasurePair)]
    assert len(measured) == 6
    net.check_ledger()


def _teleport(net: Net, sender: str, conn: int, label: str) -> int:
    qubit = net.app_qubit(sender, label)
    net.send_qubit(sender, conn, qubit)
    return qubit


def _indices_for(net: Net, use: PairUse) -> list[int]:
    """Pair indices the acceptor gave ``use``, in order."""
    return [
        m.first_index + i
        for m in net.sent[B]
        if isinstance(m, PairUses)
        for i, u in enumerate(m.uses)
        if u == use.value
    ]


def test_teleport_both_ways_delivers_the_content_in_order() -> None:
    net = Net(seed=3, faults=Faults(loss=0.2, duplicate=0.1, jitter_ns=3 * MS))
    a, b = established(net)
    sent_a = [_teleport(net, A, a, f"a{i}") for i in range(4)]
    sent_b = [_teleport(net, B, b, f"b{i}") for i in range(3)]
    net.run_until(lambda: len(net.of(B, QubitReceived)) == 4 and len(net.of(A, QubitReceived)) == 3)
    labels_at_b = [net.ledger.qubits[e.qubit].content for e in net.of(B, QubitReceived)]
    labels_at_a = [net.ledger.qubits[e.qubit].content for e in net.of(A, QubitReceived)]
    assert labels_at_b == [f"a{i}" for i in range(4)]
    assert labels_at_a == [f"b{i}" for i in range(3)]
    assert [e.qubit for e in net.of(A, QubitSent)] == sent_a
    assert [e.qubit for e in net.of(B, QubitSent)] == sent_b
    assert all(e.ok for e in net.of(A, QubitSent) + net.of(B, QubitSent))
    net.check_ledger()
    assert net.protocol_errors == []


def test_teleport_commands_come_in_order() -> None:
    net = Net(seed=4)
    a, _b = established(net)
    qubit = _teleport(net, A, a, "psi")
    # Not consumed before a confirmed pair: the connector must first learn a pair's use.
    assert not any(isinstance(c, BellMeasure) for c in net.commands[A])
    assert qubit in net.cores[A].held_qubits()
    net.run_until(lambda: bool(net.of(B, QubitReceived)))
    [bell] = [c for c in net.commands[A] if isinstance(c, BellMeasure)]
    assert bell.qubit == qubit
    # The first pair of its direction (later ones are kept ready for the next send_qubit).
    index = _indices_for(net, PairUse.FROM_CONNECTOR)[0]
    assert net.ledger.qubits[bell.pair_qubit].content == (
        "pair",
        net.cores[A].connection(a).circuit,
        index,
    )
    bits = next(m for m in net.sent[A] if isinstance(m, Teleport))
    assert bits.index == index
    # The receiver's Correct comes before its delivery, on the other half of that pair.
    commands_b = net.commands[B]
    correct = next(c for c in commands_b if isinstance(c, Correct))
    assert (correct.x, correct.z) == (bits.x, bits.z)
    [received] = net.of(B, QubitReceived)
    assert received.qubit == correct.qubit
    assert net.ledger.qubits[received.qubit].content == "psi"


def test_connection_dying_before_the_pair_returns_the_qubit() -> None:
    net = Net(seed=5)
    a, _b = established(net)
    net.pairs_flowing = False  # no pair will come: the qubit waits
    net.run(10 * MS)
    qubit = _teleport(net, A, a, "psi")
    net.run(20 * MS)
    net.break_circuit(CloseCode.UNREACHABLE)
    net.run(20 * MS)
    [error] = net.of(A, Error)
    assert error.error is Unreachable
    assert error.returned_qubits == (qubit,)
    assert error.lost_qubits == 0
    assert net.ledger.qubits[qubit].holder is Holder.APP  # the application's again
    assert [e.error for e in net.of(B, Error)] == [Unreachable]
    net.check_ledger()


def test_connection_dying_mid_teleport_reports_the_lost_qubit_at_both_ends() -> None:
    # The Bell measurement takes 30 ms; the circuit breaks while it runs.
    net = Net(seed=6, measure_delay_ns=30 * MS)
    a, _b = established(net)
    qubit = _teleport(net, A, a, "psi")
    net.run_until(lambda: any(isinstance(c, BellMeasure) for c in net.commands[A]))
    net.break_circuit(CloseCode.UNREACHABLE)
    net.run(100 * MS)
    [error] = net.of(A, Error)
    assert error.returned_qubits == ()
    assert error.lost_qubits == 1
    assert net.ledger.qubits[qubit].holder is Holder.GONE  # measured, so freed
    assert [e.error for e in net.of(B, Error)] == [Unreachable]
    assert net.of(B, QubitReceived) == []
    assert net.of(A, QubitSent) == []
    assert net.cores[A].counters["late_results"] == 1  # the measurement came back late
    net.check_ledger()
    for node in (A, B):
        assert net.cores[node].held_qubits() == []


def test_failed_bell_measurement_loses_one_qubit_not_the_connection() -> None:
    net = Net(seed=7)
    a, b = established(net)
    qubit = _teleport(net, A, a, "psi")
    net.run_until(lambda: any(isinstance(c, BellMeasure) for c in net.commands[A]))
    [bell] = [c for c in net.commands[A] if isinstance(c, BellMeasure)]
    net._queue.clear()  # drop the fake's answer; answer "failed" instead
    net.do(A, lambda core, now: core.on_measured(bell.tag, (), now))
    assert net.of(A, QubitSent)[0].ok is False
    assert net.of(A, QubitSent)[0].qubit == qubit
    net.run(50 * MS)
    assert net.of(B, QubitReceived) == []
    assert net.cores[B].connection(b).pairs.teleports_lost == 1
    assert net.cores[B].connection(b).pairs.incoming == deque_empty()


def deque_empty() -> object:
    from collections import deque

    return deque()


def test_closing_ends_the_pair_streams() -> None:
    net = Net(seed=8)
    a, b = established(net)
    # Both applications use the stream: after the first pair both windows fill with pairs.
    net.do(A, lambda core, now: core.epr(a, now))
    net.do(B, lambda core, now: core.epr(b, now))
    net.run(15 * MS)
    net.do(A, lambda core, now: core.close(a, now))
    net.run(50 * MS)
    net.do(B, lambda core, now: core.epr(b, now))
    net.do(B, lambda core, now: core.epr(b, now))
    # B's window held pairs of the epr stream before A closed; any pair past those is never
    # coming, and those calls are answered at once.
    held = CONFIG.pair_window
    assert len(net.of(B, EprPair)) == 1 + 2
    for _ in range(held):
        net.do(B, lambda core, now: core.epr(b, now))
    assert len(net.of(B, EprPair)) == 1 + held
    assert net.of(B, PairsEnded) == [PairsEnded(b, 1, 0)] * 2  # one per call
    # A, which closed its output, still takes the pairs it holds, and the same ones.
    for _ in range(held + 1):
        net.do(A, lambda core, now: core.epr(a, now))
    assert [e.index for e in net.of(A, EprPair)] == [e.index for e in net.of(B, EprPair)]
    assert net.of(A, PairsEnded) == [PairsEnded(a, 1, 0)]
    net.do(B, lambda core, now: core.close(b, now))
    net.run_until(lambda: bool(net.of(A, Closed)) and bool(net.of(B, Closed)))
    net.check_ledger()
    for node in (A, B):
        assert net.cores[node].held_qubits() == []


def test_a_sender_keeps_pairs_ready_and_teleports_without_waiting() -> None:
    net = Net(seed=11)
    a, _b = established(net)
    _teleport(net, A, a, "first")
    net.run_until(lambda: len(net.of(B, QubitReceived)) == 1)
    net.run(10 * MS)  # pairs stream in: the connector keeps CONFIG.teleport_prefetch ready
    ready = net.cores[A].connection(a).pairs.ready()
    assert len(ready) == CONFIG.teleport_prefetch > 0
    # The next qubit goes at once, on the oldest ready pair: no round trip for a pair's use.
    qubit = _teleport(net, A, a, "second")
    bell = [c for c in net.commands[A] if isinstance(c, BellMeasure)][-1]
    assert bell.qubit == qubit
    assert net.ledger.qubits[bell.pair_qubit].content[2] == ready[0].index
    net.run_until(lambda: len(net.of(B, QubitReceived)) == 2)
    labels = [net.ledger.qubits[e.qubit].content for e in net.of(B, QubitReceived)]
    assert labels == ["first", "second"]
    assert net.protocol_errors == []


def test_ready_pairs_go_back_when_the_sender_stops() -> None:
    net = Net(seed=12, config=replace(CONFIG, pause_after_ns=10_000 * MS))
    a, b = established(net)
    _teleport(net, A, a, "only")
    net.run_until(lambda: len(net.of(B, QubitReceived)) == 1)
    net.run(CONFIG.prefetch_idle_ns + 20 * MS)
    # No qubit sent for prefetch_idle_ns: the ready pairs went back, both halves freed.
    assert net.cores[A].connection(a).pairs.ready() == []
    released = [m for m in net.sent[A] if isinstance(m, Teleport) and m.x == RELEASED]
    assert len(released) >= CONFIG.teleport_prefetch
    assert net.cores[B].connection(b).pairs.ready_received_released == len(released)
    assert len(net.of(B, QubitReceived)) == 1  # a released pair delivers nothing
    for node in (A, B):
        assert len(net.cores[node].held_qubits()) <= 1
    net.check_ledger()
    assert net.protocol_errors == []


def test_ready_pairs_are_renewed_before_they_age() -> None:
    config = replace(CONFIG, prefetch_idle_ns=1_000 * MS, max_ready_age_ns=5 * MS)
    net = Net(seed=13, config=config)
    a, _b = established(net)
    _teleport(net, A, a, "q")
    net.run_until(lambda: len(net.of(B, QubitReceived)) == 1)
    for _ in range(10):
        net.run(5 * MS)
        now = net.now
        for pair in net.cores[A].connection(a).pairs.ready():
            assert now - pair.since <= config.max_ready_age_ns + 2 * MS
    assert any(isinstance(m, Teleport) and m.x == RELEASED for m in net.sent[A])
    assert net.protocol_errors == []


@settings(max_examples=10, deadline=None)
@given(
    # An end gets at most its peer's window ahead (the peer holds its halves meanwhile).
    taken=st.tuples(st.integers(1, 6), st.integers(1, 6)).filter(
        lambda t: abs(t[0] - t[1]) <= CONFIG.pair_window
    ),
    loss=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 2**16),
)
def test_an_idle_epr_stream_gives_its_unclaimed_pairs_back(
    taken: tuple[int, int], loss: float, seed: int
) -> None:
    """Each end takes a different number of epr pairs, then the connector's application
    stops. Its window's pairs that neither end took are released at both ends (EprRelease,
    EprCut); the pairs one end took stay at the other until it takes them, and the stream
    goes on in step when the applications take pairs again."""
    net = Net(seed=seed, faults=Faults(loss=loss, jitter_ns=3 * MS))
    a, b = established(net)
    for _ in range(taken[0]):
        net.do(A, lambda core, now: core.epr(a, now))
    for _ in range(taken[1]):
        net.do(B, lambda core, now: core.epr(b, now))
    net.run_until(
        lambda: len(net.of(A, EprPair)) == taken[0] and len(net.of(B, EprPair)) == taken[1]
    )
    net.run(3000 * MS)  # the connector's stream goes idle; the release goes and is answered
    # (Records lost on the way were sent again: once each, by their sequence numbers.)
    releases = {m.seq: m for m in net.sent[A] if isinstance(m, EprRelease)}
    cuts = {m.seq: m for m in net.sent[B] if isinstance(m, EprCut)}
    assert len(cuts) == len(releases)
    assert [c.first for c in cuts.values()] == [max(taken)] * len(cuts)
    # Nothing is assigned to the stream beyond what an end took, and each end holds exactly
    # the pairs the other end took and it did not.
    assert net.cores[B].connection(b).pairs.epr_assigned == max(taken)
    assert len(net.cores[A].held_qubits()) == max(0, taken[1] - taken[0])
    assert len(net.cores[B].held_qubits()) == max(0, taken[0] - taken[1])
    more = 3
    for _ in range(max(taken) - taken[0] + more):
        net.do(A, lambda core, now: core.epr(a, now))
    for _ in range(max(taken) - taken[1] + more):
        net.do(B, lambda core, now: core.epr(b, now))
    total = max(taken) + more
    net.run_until(lambda: len(net.of(A, EprPair)) == total and len(net.of(B, EprPair)) == total)
    assert [e.index for e in net.of(A, EprPair)] == [e.index for e in net.of(B, EprPair)]
    assert [e.number for e in net.of(A, EprPair)] == list(range(total))
    net.check_ledger()
    assert net.protocol_errors == []


def test_the_window_of_an_idle_connector_is_released() -> None:
    net = Net(seed=2)
    a, b = established(net)
    for _ in range(2):
        net.do(A, lambda core, now: core.epr(a, now))
        net.do(B, lambda core, now: core.epr(b, now))
    net.run(500 * MS)
    # While taking pairs the connector's window held more; idle, it gave them back.
    assert any(isinstance(m, PairDemand) and m.epr_limit > 2 for m in net.sent[A])
    assert [m.taken for m in net.sent[A] if isinstance(m, EprRelease)] == [2]
    assert [m.first for m in net.sent[B] if isinstance(m, EprCut)] == [2]
    assert net.cores[A].held_qubits() == net.cores[B].held_qubits() == []
    net.check_ledger()


def test_pairs_kept_ready_for_a_sender_that_closed_are_freed() -> None:
    """The acceptor closed first; the connector sends a qubit (asking for pairs to keep
    ready for the next one) and closes. Pairs the acceptor assigned to that demand after the
    connector's Fin went out are freed, not taken for a protocol violation."""
    net = Net(seed=0)
    a, b = established(net)
    net.do(B, lambda core, now: core.close(b, now))
    qubit = net.app_qubit(A, "last")
    net.ledger.move(qubit, A, Holder.APP, Holder.CORE, "send_qubit")
    net.do(A, lambda core, now: core.send_qubit(a, qubit, now))
    net.do(A, lambda core, now: core.close(a, now))
    net.run_until(lambda: bool(net.of(A, Closed)) and bool(net.of(B, Closed)))
    assert net.protocol_errors == []
    assert [net.ledger.qubits[e.qubit].content for e in net.of(B, QubitReceived)] == ["last"]
    net.check_ledger()
