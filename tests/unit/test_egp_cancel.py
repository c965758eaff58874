"""How EGP requests end early besides the classic errors: cancellation by the origin, the guard
on pairs that keep missing their fidelity, and memory held by the layer above."""

from __future__ import annotations

import pytest

from qnet.errors import InvalidArgument, NotFound, ProtocolError
from qnet.link.egp import EgpConfig, EgpCore
from qnet.link.events import (
    Ack,
    Cancel,
    CreateErr,
    CreateRequest,
    ErrorCode,
    Free,
    Kind,
    PairDiscard,
    PairOk,
    QueueAdd,
    Terminate,
)
from qnet.physical.params import LinkParams, NodeParams
from tests.unit.test_egp_harness import A, B, EgpPair, Faults, check_invariants

# -- cancellation ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [Kind.KEEP, Kind.MEASURE])
@pytest.mark.parametrize("origin", [A, B])
def test_cancel_ends_the_request_at_both_ends_after_the_same_pairs(origin: str, kind: Kind) -> None:
    pair = EgpPair(link=LinkParams(length_km=20.0))
    cid = pair.create(origin, number=1000, min_fidelity=0.5, kind=kind)
    pair.run(until_ns=3_000_000)
    assert pair.oks(A), "some pairs before the cancel"
    assert pair.cancel(origin, cid)
    pair.run()
    for node in (A, B):
        (err,) = pair.errs(node)
        assert (err.origin, err.create_id, err.code) == (origin, cid, ErrorCode.CANCELLED)
        assert err.reason == f"cancelled by {origin}"
        assert err.seq_range is not None
        assert isinstance(pair.records[node].events[-1], CreateErr), "no OK after the ERR"
    assert [ok.pair_id for ok in pair.oks(A)] == [ok.pair_id for ok in pair.oks(B)]
    assert pair.errs(A)[0].seq_range == pair.errs(B)[0].seq_range
    check_invariants(pair, {(origin, cid): 1000})
    assert not pair.cancel(origin, cid), "a second cancel finds it ended"


def test_cancel_before_the_master_heard_of_the_request() -> None:
    """The slave cancels at once; with jitter its Cancel may overtake its QueueAdd."""
    for seed in range(8):
        pair = EgpPair(faults=Faults(jitter_ns=200_000), seed=seed)
        cid = pair.create(B, number=5, min_fidelity=0.5)
        assert pair.cancel(B, cid)
        pair.run()
        for node in (A, B):
            assert [e.code for e in pair.errs(node)] == [ErrorCode.CANCELLED]
        check_invariants(pair, {(B, cid): 5})


def test_cancel_frees_pairs_waiting_for_purification() -> None:
    link = LinkParams(length_km=2.0, source_fidelity=0.9)  # two DEJMPS rounds per pair
    pair = EgpPair(link=link, free_on_delivery=False)
    cid = pair.create(A, number=1000, min_fidelity=0.95)
    pair.run(until_ns=10_000_000)
    assert pair.cores[A].counters["rounds"] > 0
    pair.cancel(A, cid)
    pair.run()
    check_invariants(pair, {(A, cid): 1000})  # armed qubits and pooled pairs were freed


def test_cancel_of_ended_or_unknown_requests() -> None:
    pair = EgpPair()
    done = pair.create(B, number=1, min_fidelity=0.5)
    pair.run()
    assert not pair.cancel(B, done)
    refused = pair.create(B, number=1, min_fidelity=1.0)  # UNSUPPORTED at once
    assert not pair.cancel(B, refused)
    with pytest.raises(NotFound, match="issued no request 99"):
        pair.cancel(B, 99)
    with pytest.raises(NotFound):
        pair.cancel(A, done)  # B's request: only its origin may cancel it


def test_cancel_from_the_slave_is_checked_at_the_master() -> None:
    master = EgpCore(EgpConfig(A, B, LinkParams(length_km=2.0), NodeParams(), NodeParams()))
    with pytest.raises(ProtocolError, match="origin 'alice'"):
        master.on_message(Cancel(1, A, 1), 0)
    slave = EgpCore(EgpConfig(B, A, LinkParams(length_km=2.0), NodeParams(), NodeParams()))
    with pytest.raises(ProtocolError, match="illegal at the slave"):
        slave.on_message(Cancel(1, A, 1), 0)


# -- pairs that keep missing their fidelity ---------------------------------------------------


def _serving_master(max_misses: int) -> tuple[EgpCore, int]:
    """A master serving its own request for 10 pairs at F ≥ 0.8 on a memory that dephases
    within ms, so a pair emitted long ago is far below target."""
    nodes = NodeParams(t2_s=0.01)
    config = EgpConfig(A, B, LinkParams(length_km=2.0), nodes, nodes, max_misses=max_misses)
    core = EgpCore(config)
    cid = core.create(CreateRequest(B, number=10, min_fidelity=0.8), 0)
    (add,) = [m for m in core.pop_outputs() if isinstance(m, QueueAdd)]
    core.on_message(Ack((add.msg_id,)), 0)
    core.pop_outputs()
    return core, cid


def test_consecutive_misses_end_the_request_unsupported() -> None:
    core, cid = _serving_master(max_misses=4)
    now = 1_000_000_000
    seq = 0

    def herald(stale: bool) -> list[object]:
        nonlocal seq, now
        seq += 1
        now += 1000
        core.on_herald(seq, 100 + seq, 1, now - (500_000_000 if stale else 0), now)
        return list(core.pop_outputs())

    for stale in (True, True, True, False, True, True, True):
        out = herald(stale)
        assert not [e for e in out if isinstance(e, CreateErr)]
        kinds = {type(e) for e in out}
        assert (PairOk in kinds) == (not stale)
        assert stale <= (PairDiscard in kinds and Free in kinds)
    out = herald(True)  # the fourth stale pair in a row
    (err,) = [e for e in out if isinstance(e, CreateErr)]
    assert (err.create_id, err.code) == (cid, ErrorCode.UNSUPPORTED)
    assert "4 pairs in a row fell below min_fidelity 0.8" in err.reason
    (end,) = [m for m in out if isinstance(m, Terminate)]
    assert (end.code, end.keep_count) == ("unsupported", 1)


def test_late_heralds_make_the_master_plan_for_the_delay() -> None:
    """Heralds reach the cores 2 ms late (a loaded node) while the plan allowed for none:
    with T2 = 50 ms the first pairs have dephased below the target, so the master, having
    measured the delay, plans again for it (a smaller bright state) and the request
    completes, every delivered pair meeting its target."""
    nodes = (NodeParams(t2_s=0.05), NodeParams(t2_s=0.05))
    pair = EgpPair(nodes=nodes, herald_delay_ns=2_000_000)
    cid = pair.create(B, number=5, min_fidelity=0.85)
    pair.run()
    req = pair.cores[A].requests[(B, cid)]
    assert req.plan_latency_ns >= 2_000_000
    assert len(pair.heralded) > 5, "the first pairs were thrown away"
    for node in (A, B):
        assert pair.errs(node) == []
        assert [ok.fidelity_estimate >= 0.85 for ok in pair.oks(node)] == [True] * 5
    check_invariants(pair, {(B, cid): 5})


def test_late_heralds_end_requests_unsupported_at_both_ends() -> None:
    """Heralds 10 ms late: no plan reaches 0.85 with that delay on these memories, so pairs
    keep missing and the master gives up after max_misses of them in a row, instead of
    burning pairs until max_time."""
    nodes = (NodeParams(t2_s=0.05), NodeParams(t2_s=0.05))
    pair = EgpPair(nodes=nodes, herald_delay_ns=10_000_000)
    cid = pair.create(B, number=5, min_fidelity=0.85)
    pair.run()
    for node in (A, B):
        (err,) = pair.errs(node)
        assert err.code is ErrorCode.UNSUPPORTED
        assert "32 pairs in a row" in err.reason
        assert pair.oks(node) == []
    check_invariants(pair, {(B, cid): 5})


def test_a_spike_of_delay_does_not_refuse_what_the_link_can_serve() -> None:
    """Heralds that came very late raise the delay plans allow for; a new request that no
    plan reaches with that delay is still taken, planned for the configured one."""
    nodes = NodeParams(t2_s=0.05)
    core = EgpCore(EgpConfig(A, B, LinkParams(length_km=2.0), nodes, nodes))
    for seq in range(1, 4):
        now = seq * 1_000_000_000
        core.on_herald(seq, seq, 1, now - 300_000_000, now)  # 300 ms late
    assert core._planning_latency() >= 300_000_000
    core.pop_outputs()
    cid = core.create(CreateRequest(B, number=1, min_fidelity=0.85), 4_000_000_000)
    assert not [e for e in core.pop_outputs() if isinstance(e, CreateErr)]
    assert core.requests[(A, cid)].plan_latency_ns == 0


# -- memory held by the layer above -----------------------------------------------------------


def test_qubits_the_upper_layer_keeps_stop_arming_then_no_memory() -> None:
    """The upper layer keeps every half: the cores see it (set_upper_held), stop arming when
    memory is full instead of running into the backend's NoMemory, and end with NO_MEMORY
    once memory stayed full for the memory wait."""
    nodes = (NodeParams(memory_qubits=4), NodeParams(memory_qubits=4))
    pair = EgpPair(nodes=nodes, free_on_delivery=False, report_held=True)
    cid = pair.create(A, number=10, min_fidelity=0.5)
    pair.run()
    for node in (A, B):
        assert [e.code for e in pair.errs(node)] == [ErrorCode.NO_MEMORY]
        assert len(pair.oks(node)) == 4
        assert "held by the layer above" in pair.errs(node)[0].reason
    assert pair.failed_arms == 0, "the backend never refused an arm"
    check_invariants(pair, {(A, cid): 10})


def test_freeing_held_qubits_resumes_arming() -> None:
    nodes = (NodeParams(memory_qubits=4), NodeParams(memory_qubits=4))
    pair = EgpPair(nodes=nodes, free_on_delivery=False, report_held=True)
    cid = pair.create(B, number=6, min_fidelity=0.5)
    pair.run(until_ns=2_000_000)  # well within the memory wait (50 RTOs of ~130 µs)
    assert len(pair.oks(A)) == len(pair.oks(B)) == 4
    assert pair.cores[A].armed == pair.cores[B].armed == 0
    for node in (A, B):
        pair.free_held(node)
    pair.run()
    for node in (A, B):
        assert pair.errs(node) == []
        assert len(pair.oks(node)) == 6
    assert pair.failed_arms == 0
    check_invariants(pair, {(B, cid): 6})


def test_upper_held_must_be_a_count() -> None:
    core = EgpCore(EgpConfig(A, B, LinkParams(length_km=2.0), NodeParams(), NodeParams()))
    with pytest.raises(InvalidArgument, match="held qubits"):
        core.set_upper_held(-1, 0)
