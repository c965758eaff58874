"""How link-layer requests end early, on whole in-process networks (virtual time).

UNSUPPORTED: a fidelity no plan reaches is refused at once, at the origin only. TIMEOUT:
max_time ends a request at both ends, after the same pairs. NO_MEMORY: a user that keeps its
qubits fills the node's memory; both ends end the request alike, and freeing the memory lets
the link work again. Nothing leaks in any case.
"""

from __future__ import annotations

import pytest
import trio

from qnet.link.events import BasisChoice, CreateErr, CreateRequest, ErrorCode, Kind, PairOk
from qnet.node.peer_wire import Layer
from qnet.sim import SimNetwork, open_network
from tests.network.linkhelpers import (
    LinkWatch,
    example,
    free_half,
    serve,
    settle,
    two_nodes,
    watch_link,
)

A, B = "alice", "bob"
BOUND_S = 60


def pair_ids(watch: LinkWatch, node: str) -> list[tuple[str, int]]:
    return [ok.pair_id for ok in watch.oks(node)]


async def check_clean(net: SimNetwork) -> None:
    await settle(net)
    assert net.core.qubits_in_use == 0
    for name in net.topology.node_names:
        assert net.node(name).memory_in_use() == 0
        assert net.node(name).protocol_errors == 0


@pytest.mark.parametrize(
    ("topology", "origin", "min_fidelity"),
    [
        ("two_nodes", A, 0.999),  # source fidelity 0.99; three DEJMPS rounds fall short
        ("two_nodes", B, 0.9999),
        ("noisy_two_nodes", A, 0.8),  # a poor link: nothing reaches 0.8
    ],
)
async def test_unreachable_fidelity_is_unsupported_at_once(
    autojump_clock: trio.abc.Clock, topology: str, origin: str, min_fidelity: float
) -> None:
    other = B if origin == A else A
    with trio.fail_after(BOUND_S):
        async with open_network(example(topology)) as net, watch_link(net, A, B) as watch:
            start = net.now()
            key = watch.create(origin, CreateRequest(other, number=3, min_fidelity=min_fidelity))
            await watch.wait_finished()
            assert net.now() == start, "UNSUPPORTED should need no time and no messages"
            (err,) = watch.errs(origin)
            assert (err.origin, err.create_id) == key
            assert err.code is ErrorCode.UNSUPPORTED
            assert err.seq_range is None
            assert str(min_fidelity) in err.reason
            assert watch.oks(origin) == []
            await settle(net)
            assert watch.seen[other] == [], "UNSUPPORTED is answered at the origin only"
            assert net.classical.by_layer[Layer.LINK] == 0
            # The link still serves a request it can meet.
            ok_key = watch.create(origin, CreateRequest(other, number=3, min_fidelity=0.45))
            await watch.wait_finished()
            assert len(watch.oks(A, ok_key)) == len(watch.oks(B, ok_key)) == 3
            await check_clean(net)


@pytest.mark.parametrize("kind", [Kind.KEEP, Kind.MEASURE])
@pytest.mark.parametrize("origin", [A, B])
async def test_max_time_gives_timeout_at_both_ends(
    autojump_clock: trio.abc.Clock, origin: str, kind: Kind
) -> None:
    """1000 pairs asked for within 2 ms, at about 5 kHz: some pairs arrive, identical at both
    ends, then TIMEOUT at both ends with the same span of herald sequences. The master
    assigns nothing after the deadline."""
    other = B if origin == A else A
    max_time_ns = 2_000_000
    request = CreateRequest(
        other, number=1000, min_fidelity=0.85, max_time_ns=max_time_ns, kind=kind
    )
    with trio.fail_after(BOUND_S):
        async with open_network(example("two_nodes")) as net:
            start = net.now()
            watch = await serve(net, A, B, [(origin, request)])
            assert pair_ids(watch, A) == pair_ids(watch, B)
            assert 0 < len(pair_ids(watch, A)) < 1000
            errs = {node: watch.errs(node) for node in (A, B)}
            assert [e.code for e in errs[A]] == [e.code for e in errs[B]] == [ErrorCode.TIMEOUT]
            assert errs[A][0].seq_range == errs[B][0].seq_range
            seq_range = errs[A][0].seq_range
            assert seq_range is not None
            assert all(seq_range[0] <= seq <= seq_range[1] for _, seq in pair_ids(watch, A))
            deadline = start + max_time_ns
            assert all(ok.estimate_time_ns <= deadline for ok in watch.oks(A))
            err_times = [s.time_ns for s in watch.seen[A] if isinstance(s.event, CreateErr)]
            assert err_times[0] >= deadline
            # OKs come before the ERR at each end.
            for node in (A, B):
                assert isinstance(watch.seen[node][-1].event, CreateErr)
            await check_clean(net)


async def test_request_waiting_behind_another_times_out_with_no_pairs(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A request queued behind a long one never starts before its max_time: TIMEOUT at both
    ends, with no pairs and no sequence range; the long request is unaffected."""
    long = CreateRequest(B, number=100, kind=Kind.MEASURE, basis=BasisChoice.X)
    short = CreateRequest(A, number=5, kind=Kind.KEEP, max_time_ns=1_000_000)
    with trio.fail_after(BOUND_S):
        async with open_network(example("two_nodes")) as net:
            watch = await serve(net, A, B, [(A, long), (B, short)])
            for node in (A, B):
                assert len(watch.oks(node, (A, 1))) == 100
                assert watch.oks(node, (B, 1)) == []
                (err,) = watch.errs(node)
                assert (err.origin, err.create_id, err.code) == (B, 1, ErrorCode.TIMEOUT)
                assert err.seq_range is None
            await check_clean(net)


@pytest.mark.parametrize("holders", [(A,), (B,), (A, B)], ids=["master", "slave", "both"])
async def test_memory_exhaustion_gives_no_memory_and_recovers(
    autojump_clock: trio.abc.Clock, holders: tuple[str, ...]
) -> None:
    """The user at ``holders`` keeps every KEEP qubit (memory: 8 qubits per node); the other
    end frees its halves. The request ends with NO_MEMORY at both ends after the same pairs;
    no qubit is lost; once the user frees its qubits, the link serves a new request."""
    held: list[tuple[str, int]] = []

    async def hold(net: SimNetwork, m: PairOk, s: PairOk) -> None:
        for node, ok in ((A, m), (B, s)):
            assert ok.qubit is not None
            if node in holders:
                held.append((node, ok.qubit))
            else:
                await net.sessions[node].free([ok.qubit])

    topology = example("two_nodes")
    memory = topology.node(A).params.memory_qubits
    request = CreateRequest(B, number=50, kind=Kind.KEEP, min_fidelity=0.85)
    with trio.fail_after(BOUND_S):
        async with open_network(topology) as net:
            watch = await serve(net, A, B, [(A, request)], on_pair=hold)
            delivered = pair_ids(watch, A)
            assert delivered == pair_ids(watch, B)
            assert 0 < len(delivered) <= memory
            for node in (A, B):
                (err,) = watch.errs(node)
                assert err.code is ErrorCode.NO_MEMORY
                assert any(h in err.reason for h in holders)
            assert watch.errs(A)[0].seq_range == watch.errs(B)[0].seq_range
            await settle(net)
            for node in (A, B):
                expected = len(delivered) if node in holders else 0
                assert net.core.memory_in_use(node) == expected
                assert net.node(node).memory_in_use() == 0  # the link layer gave all back
            for node, qubit in held:
                await net.sessions[node].free([qubit])
            again = await serve(net, A, B, [(B, CreateRequest(A, number=20, kind=Kind.KEEP))])
            assert again.errs(A) == again.errs(B) == []
            assert pair_ids(again, A) == pair_ids(again, B)
            assert len(pair_ids(again, A)) == 20
            await check_clean(net)


async def test_full_master_queue_denies_further_requests(autojump_clock: trio.abc.Clock) -> None:
    """The master keeps at most ``max_queue`` (256) open requests: the slave's requests past
    that are DENIED at both ends; the rest are served normally. All the ADDs reach the master
    at one instant, before any pair, so exactly the last 20 are denied."""
    max_queue = 256
    count = max_queue + 20
    requests = [(B, CreateRequest(A, number=1, kind=Kind.MEASURE)) for _ in range(count)]
    with trio.fail_after(BOUND_S):
        async with open_network(example("two_nodes")) as net:
            assert net.node(A)._links[B].core.config.max_queue == max_queue
            watch = await serve(net, A, B, requests)
            for node in (A, B):
                denied = {e.create_id for e in watch.errs(node) if e.code is ErrorCode.DENIED}
                assert denied == set(range(max_queue + 1, count + 1))
                assert len(watch.errs(node)) == len(denied)
                assert len(watch.oks(node)) == max_queue
            assert pair_ids(watch, A) == pair_ids(watch, B)
            await check_clean(net)


@pytest.mark.parametrize(
    ("memory_qubits", "loss"),
    [(1, 0.0), (2, 0.2)],
    ids=["one-qubit-memory", "lossy-classical"],
)
async def test_user_freeing_each_qubit_on_arrival_never_runs_out_of_memory(
    autojump_clock: trio.abc.Clock, memory_qubits: int, loss: float
) -> None:
    """Each end's user frees its half the moment its OK arrives, so it never holds a qubit
    while it waits: the link should deliver all pairs, however small the memory (one qubit is
    enough for one pair at a time) or however late a lost assignment arrives (the slave then
    buffers later pairs, up to its whole memory, and releases them all at once)."""
    topology = two_nodes(memory_qubits=memory_qubits, t1_s=10.0, t2_s=1.0)
    request = CreateRequest(B, number=50, kind=Kind.KEEP)
    with trio.fail_after(BOUND_S):
        async with open_network(topology, loss=loss) as net:
            watch = await serve(net, A, B, [(A, request)], on_half=free_half)
            assert watch.errs(A) == watch.errs(B) == []
            assert pair_ids(watch, A) == pair_ids(watch, B)
            assert len(pair_ids(watch, A)) == 50
            await check_clean(net)
