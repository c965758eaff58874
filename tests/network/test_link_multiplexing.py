"""The link layer over a multiplexed link (``multiplexing`` in the topology file), in qnet.sim.

With several memory pairs attempting at once, a herald often names a qubit other than the
oldest armed one, and an instant may herald several pairs. The link layer must still deliver
each pair once, at both ends, under the same pair id, with a fidelity estimate that matches the
true state (memory noise counts from each pair's own emission); and it must be faster.
"""

from __future__ import annotations

import itertools

import trio

from qnet.link.events import BasisChoice, CreateRequest, Kind, PairOk
from qnet.physical.channel_core import ChannelCore
from qnet.physical.events import HeraldEvent
from qnet.sim import open_network
from qnet.topology import Topology
from tests.network.linkhelpers import serve, two_nodes

A, B = "alice", "bob"
BOUND_S = 60


def multiplexed(multiplexing: int, *, scheme: str = "single_click") -> Topology:
    # A 200 µs attempt on a 2 km link: a pair is delivered and freed within a cycle or so of
    # its herald, so the pipeline of 4 armed qubits per end stays nearly full.
    return two_nodes(
        scheme=scheme,
        length_km=2.0,
        source_fidelity=0.97,
        attempt_overhead_ns=200000,
        multiplexing=multiplexing,
        t1_s=0.5,
        t2_s=0.05,
        memory_depolar_rate_hz=2.0,
        seed=4,
    )


def record_heralds(core: ChannelCore) -> list[HeraldEvent]:
    """Every herald the backend makes from now on (test-only insight)."""
    seen: list[HeraldEvent] = []
    pop = core.pop_events

    def popped() -> list[HeraldEvent]:
        events = pop()
        seen.extend(events)
        return events

    core.pop_events = popped  # type: ignore[method-assign]
    return seen


async def test_keep_pairs_out_of_arming_order(autojump_clock: trio.abc.Clock) -> None:
    number = 150
    request = CreateRequest(B, number=number, kind=Kind.KEEP, min_fidelity=0.8)
    with trio.fail_after(BOUND_S):
        async with open_network(multiplexed(4)) as net:
            heralds = record_heralds(net.core)
            watch = await serve(net, A, B, [(A, request)], oracle=True)
    ids = {node: [ok.pair_id for ok in watch.oks(node)] for node in (A, B)}
    assert len(ids[A]) == number
    assert ids[A] == ids[B]
    assert len(set(ids[A])) == number
    for node in (A, B):
        for s in watch.keep_seen(node):
            assert isinstance(s.event, PairOk)
            assert s.true_fidelity is not None
            assert abs(s.event.fidelity_estimate - s.true_fidelity) <= 0.01
            assert s.true_fidelity >= 0.8 - 0.01
    at_a = [e for e in heralds if e.node == A]
    qubits = [e.qubit for e in at_a]
    # Qubits are numbered as they are allocated, and each is armed as it is allocated.
    assert any(b < a for a, b in itertools.pairwise(qubits)), "none out of order"
    times = [e.time_ns for e in at_a]
    assert len(set(times)) < len(times), "no two pairs heralded at one instant"


async def measure_pairs(multiplexing: int, number: int) -> float:
    """Seconds of physical time to deliver ``number`` MEASURE pairs."""
    request = CreateRequest(B, number=number, kind=Kind.MEASURE, basis=BasisChoice.Z)
    async with open_network(multiplexed(multiplexing, scheme="double_click")) as net:
        start = net.now()
        watch = await serve(net, A, B, [(A, request)])
        assert len(watch.oks(A)) == len(watch.oks(B)) == number
        # Double-click heralds Ψ±: Z outcomes are anti-correlated (no gate or measurement
        # error here; the source's white noise makes a few agree).
        agree = sum(a.outcome == b.outcome for a, b in zip(watch.oks(A), watch.oks(B), strict=True))
        assert agree < 0.1 * number
        return (net.now() - start) * 1e-9


async def test_four_pairs_attempting_deliver_about_four_times_faster(
    autojump_clock: trio.abc.Clock,
) -> None:
    """400 pairs take a sum of 400 geometric waits, within ±5 % (about 1σ) of their mean at
    p ≈ 0.37; four pairs in parallel divide the waits by four, less what the arming loses
    after each herald. 2.5 leaves that loss and 5σ of both sums."""
    with trio.fail_after(BOUND_S):
        one = await measure_pairs(1, 400)
        four = await measure_pairs(4, 400)
    assert one / four > 2.5, (one, four)
