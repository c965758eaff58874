"""Cancelling link-layer requests and ending hopeless ones, on whole in-process networks
(virtual time): a cancelled request stops delivering at both ends after the same pairs, and
no qubit of it stays allocated anywhere."""

from __future__ import annotations

import pytest
import trio

from qnet.link.events import CreateErr, CreateRequest, ErrorCode, Kind
from qnet.sim import SimNetwork, open_network
from tests.network.linkhelpers import LinkWatch, free_half, settle, two_nodes, watch_link

A, B = "alice", "bob"
BOUND_S = 60


def assert_ended_alike(watch: LinkWatch, key: tuple[str, int], code: ErrorCode) -> None:
    for node in (A, B):
        (err,) = watch.errs(node)
        assert ((err.origin, err.create_id), err.code) == (key, code)
        assert isinstance(watch.seen[node][-1].event, CreateErr), "no OK after the ERR"
    assert [ok.pair_id for ok in watch.oks(A, key)] == [ok.pair_id for ok in watch.oks(B, key)]


async def assert_nothing_allocated(net: SimNetwork, settle_s: float = 0.01) -> None:
    await settle(net, settle_s)
    for node in (A, B):
        assert net.core.memory_in_use(node) == 0, f"{node} still holds qubits"
        assert net.node(node).memory_in_use() == 0


@pytest.mark.parametrize(
    ("origin", "kind", "min_fidelity", "source_fidelity"),
    [
        (A, Kind.KEEP, 0.8, 0.99),
        (B, Kind.KEEP, 0.8, 0.99),
        (B, Kind.MEASURE, 0.8, 0.99),
        (A, Kind.KEEP, 0.95, 0.9),  # purified: pairs wait in pools and rounds when cancelled
        (B, Kind.KEEP, 0.95, 0.9),
    ],
)
async def test_cancelled_request_stops_at_both_ends_and_frees_its_qubits(
    autojump_clock: trio.abc.Clock,
    origin: str,
    kind: Kind,
    min_fidelity: float,
    source_fidelity: float,
) -> None:
    other = B if origin == A else A
    topology = two_nodes(length_km=5.0, source_fidelity=source_fidelity)
    with trio.fail_after(BOUND_S):
        async with (
            open_network(topology) as net,
            watch_link(net, A, B, on_half=free_half) as watch,
        ):
            request = CreateRequest(other, number=100_000, min_fidelity=min_fidelity, kind=kind)
            key = watch.create(origin, request)
            await watch.until(lambda: min(len(watch.oks(n, key)) for n in (A, B)) >= 10)
            assert net.node(origin).cancel(other, key[1])
            await watch.wait_finished()
            assert_ended_alike(watch, key, ErrorCode.CANCELLED)
            delivered = len(watch.oks(A))
            await settle(net, 0.05)
            assert len(watch.oks(A)) == len(watch.oks(B)) == delivered, "deliveries stopped"
            await assert_nothing_allocated(net)
            assert not net.node(origin).cancel(other, key[1]), "it has ended already"
            # The link goes on serving.
            again = watch.create(other, CreateRequest(origin, number=3, min_fidelity=0.8))
            await watch.wait_finished()
            assert len(watch.oks(A, again)) == len(watch.oks(B, again)) == 3
            await assert_nothing_allocated(net)


@pytest.mark.parametrize("loss", [0.0, 0.5])
async def test_pairs_that_keep_missing_the_target_end_unsupported(
    autojump_clock: trio.abc.Clock, loss: float
) -> None:
    """Three DEJMPS rounds reach 0.985 from raw pairs of 0.9 if the rounds' messages arrive
    in time; with half of them lost, purified pairs wait for retransmissions, decohere in
    memories with T2 = 10 ms and fail the target at delivery. The master then ends the
    request UNSUPPORTED at both ends after max_misses such pairs in a row, instead of burning
    pairs until max_time (2 s here). Without loss the same request completes."""
    # Memory enough that purification pools waiting for lost messages never fill it: the
    # request must end on its misses, not on memory.
    topology = two_nodes(length_km=2.0, source_fidelity=0.9, t2_s=0.01, memory_qubits=32)
    request = CreateRequest(A, number=20, min_fidelity=0.985, max_time_ns=2_000_000_000)
    with trio.fail_after(BOUND_S):
        async with (
            open_network(topology, loss=loss) as net,
            watch_link(net, A, B, on_half=free_half) as watch,
        ):
            start = net.now()
            key = watch.create(B, request)
            await watch.wait_finished()
            if not loss:
                assert len(watch.oks(A, key)) == len(watch.oks(B, key)) == 20
                assert watch.errs(A) == watch.errs(B) == []
                return
            # (The watch takes UNSUPPORTED for an answer at the origin only: wait for both.)
            await watch.until(lambda: all(watch.errs(n) for n in (A, B)))
            assert_ended_alike(watch, key, ErrorCode.UNSUPPORTED)
            assert "32 pairs in a row fell below min_fidelity 0.985" in watch.errs(A)[0].reason
            assert net.now() - start < request.max_time_ns // 10
            # Rounds in flight end once their lost messages are retransmitted.
            await assert_nothing_allocated(net, settle_s=1.0)
