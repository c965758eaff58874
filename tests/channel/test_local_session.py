"""The channel backend as ``qnet.sim`` reaches it: in-process calls (``LocalSession``).

Heralds come straight from the server's dispatch (``ChannelServer.stream_locally``), not as
wire events, and Execute skips the request (``run_operations``); both must keep the Channel
API's meaning: what queued before the stream opened comes first, the stream ends with the
session, and a failed operation stops the rest and is reported by its index.
"""

from __future__ import annotations

import pytest
import trio

from qnet.channel import wire
from qnet.channel.server import ChannelServer
from qnet.errors import AlreadyExists
from qnet.node.local_channel import LocalSession
from qnet.physical.channel_core import ChannelCore
from qnet.physical.events import HeraldEvent
from qnet.physical.gates import Basis
from qnet.physical.params import LinkParams, NodeParams
from qnet.runtime.clock import PhysicalClock
from qnet.v1 import channel_pb2 as pb

# No loss on a zero-length link with perfect detectors: the first attempt succeeds.
LINK = LinkParams(length_km=0.0, detector_efficiency=1.0)


async def _pair(
    nursery: trio.Nursery,
) -> tuple[ChannelServer, LocalSession, LocalSession]:
    server = ChannelServer(ChannelCore(seed=1), PhysicalClock(1.0))
    await nursery.start(server.run)
    alice = await LocalSession.register(server, "alice", NodeParams(memory_qubits=4))
    bob = await LocalSession.register(server, "bob", NodeParams(memory_qubits=4))
    await alice.declare_link("bob", LINK)
    await bob.declare_link("alice", LINK)
    return server, alice, bob


async def _next(stream: object) -> HeraldEvent:
    with trio.fail_after(10):
        event: HeraldEvent = await stream.__anext__()  # type: ignore[attr-defined]
    return event


async def test_heralds_reach_both_ends_and_queue_until_the_stream_opens(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    _, alice, bob = await _pair(nursery)
    (qa,) = await alice.allocate(1)
    (qb,) = await bob.allocate(1)
    await alice.start_generation("bob", [qa])
    await bob.start_generation("alice", [qb])
    async with alice.heralds() as heralds:
        mine = await _next(heralds)
    assert (mine.node, mine.peer, mine.qubit, mine.sequence) == ("alice", "bob", qa, 1)
    # Bob's herald waited in his session's queue (no stream was open): it comes first.
    async with bob.heralds() as heralds:
        theirs = await _next(heralds)
    assert (theirs.node, theirs.qubit, theirs.sequence) == ("bob", qb, 1)
    assert theirs.bell_index == mine.bell_index


async def test_one_stream_at_a_time_and_the_stream_ends_with_the_session(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    _, alice, _ = await _pair(nursery)
    async with alice.heralds() as heralds:
        with pytest.raises(AlreadyExists):
            async with alice.heralds():
                pass
        alice.close("done")
        with pytest.raises(StopAsyncIteration):
            await _next(heralds)


async def test_a_closed_stream_leaves_an_orphan_that_can_stream_again(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    server, alice, _ = await _pair(nursery)
    async with alice.heralds():
        pass
    assert len(server._orphans) == 1
    async with alice.heralds():
        assert not server._orphans


async def test_run_operations_stops_at_the_first_failure(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    _, alice, _ = await _pair(nursery)
    ops = [
        pb.Operation(allocate=pb.AllocateOp(count=2)),
        pb.Operation(measure=pb.MeasureOp(qubit=999, basis=wire.BASIS_TO_WIRE[Basis.Z])),
        pb.Operation(allocate=pb.AllocateOp(count=1)),
    ]
    resp = await alice.execute(ops)
    assert len(resp.results) == 1
    assert len(resp.results[0].qubits) == 2
    assert resp.HasField("failure")
    assert resp.failure.index == 1
    assert resp.failure.error_type == "NotFound"
    # Only the first allocation ran.
    rest = await alice.execute([pb.Operation(allocate=pb.AllocateOp(count=2))])
    assert len(rest.results[0].qubits) == 2
    full = await alice.execute([pb.Operation(allocate=pb.AllocateOp(count=1))])
    assert full.failure.error_type == "NoMemory"
    assert len(full.results) == 0
