"""When the other end's daemon goes away (``EgpCore.peer_lost``) and when it comes back as a new
process (``peer_restarted``): nothing is left armed or held for a peer that is gone, and a
restarted peer, which kept nothing, meets a core that agrees with it from its first message."""

from __future__ import annotations

import random

import pytest

from qnet.link.egp import EgpConfig, EgpCore
from qnet.link.events import ErrorCode, Kind
from tests.unit.test_egp_harness import A, B, EgpPair, Record, check_invariants


def _cut(pair: EgpPair) -> None:
    """The stream between the two ends breaks: whatever was on the wire is gone."""
    pair._wire.clear()


@pytest.mark.parametrize("kind", [Kind.KEEP, Kind.MEASURE])
@pytest.mark.parametrize("lost", [A, B])
def test_a_lost_peer_ends_every_request_and_frees_everything(lost: str, kind: Kind) -> None:
    pair = EgpPair()
    mine = pair.create(A, number=10_000, min_fidelity=0.5, kind=kind)
    theirs = pair.create(B, number=10_000, min_fidelity=0.5, kind=kind)
    pair.run(until_ns=2_000_000)
    survivor = B if lost == A else A
    core = pair.cores[survivor]
    assert core.armed > 0, "streaming before the loss"
    assert pair.oks(survivor)
    delivered = len(pair.oks(survivor))
    _cut(pair)
    core.peer_lost(pair.now)
    pair._drain()
    errs = pair.errs(survivor)
    assert {(e.origin, e.create_id) for e in errs} == {(A, mine), (B, theirs)}
    assert {e.code for e in errs} == {ErrorCode.UNREACHABLE}
    assert all(e.reason == f"{lost} is unreachable" for e in errs)
    assert len(pair.oks(survivor)) == delivered, "no OK after the loss"
    assert core.armed == 0
    assert core.unacknowledged == 0, "nothing is retransmitted to a peer that is gone"
    assert pair.channel.memory_in_use(survivor) == 0, "nothing armed or held"
    assert core.next_deadline() is None, "nothing left to do"


def test_a_restarted_peer_starts_afresh_with_the_survivor() -> None:
    """bob's daemon dies mid-stream and a new one starts: alice drops what she shared with
    the old one; the new bob numbers his messages and requests from 1 again, and its heralds
    go on from the backend's count. New requests from both ends then match as usual."""
    pair = EgpPair()
    pair.create(A, number=10_000, min_fidelity=0.5)
    pair.create(B, number=10_000, min_fidelity=0.5)
    pair.run(until_ns=2_000_000)
    assert pair.oks(A)
    _cut(pair)
    pair.cores[A].peer_lost(pair.now)
    pair._drain()
    # The old bob is gone with its qubits; the backend keeps counting the link's heralds.
    pair.channel.unregister_node(B, pair.now)
    pair.channel.register_node(B, pair.cores[B].config.local, pair.now)
    old = pair.cores[B].config
    fresh = EgpCore(EgpConfig(B, A, old.link, old.local, old.remote), rng=random.Random(7))
    fresh.start_after(pair.channel.link_sequence(A, B))
    pair.cores[B] = fresh
    pair.cores[A].peer_restarted(pair.now)
    pair.records = {A: Record(), B: Record()}
    pair._drain()
    theirs = pair.create(B, number=20, min_fidelity=0.5)
    assert theirs == 1, "the new process counts its requests from 1 again"
    mine = pair.create(A, number=20, min_fidelity=0.5)
    pair.run()
    assert len(pair.oks(A)) == len(pair.oks(B)) == 40
    assert not pair.errs(A)
    assert not pair.errs(B)
    check_invariants(pair, {(B, theirs): 20, (A, mine): 20})
