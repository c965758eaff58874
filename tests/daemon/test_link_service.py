"""The LinkLayer service of real node daemons run in-process over gRPC on loopback:
measure-on-delivery and batched measurement, cancellation by ending the LinkCreate call, and
KEEP qubits held by clients counted against the link's memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from qnet.daemon.control import DaemonClient
from qnet.errors import InvalidArgument, NotFound
from qnet.physical.gates import Basis
from qnet.v1 import channel_pb2
from qnet.v1 import node_pb2 as pb
from tests.daemon.test_node_services import LIMIT_S, _link, two_daemons

KEEP = pb.PAIR_KIND_KEEP


async def _oks(events: AsyncIterator[pb.LinkEvent], n: int) -> list[pb.LinkOk]:
    out = []
    async for event in events:
        if event.WhichOneof("event") == "ok":
            out.append(event.ok)
            if len(out) == n:
                break
    return out


async def _err(events: AsyncIterator[pb.LinkEvent]) -> pb.LinkErr:
    async for event in events:
        if event.WhichOneof("event") == "err":
            return event.err
    raise AssertionError("the stream ended without an ERR")


def _agree(a: pb.LinkOk, b: pb.LinkOk, oa: int, ob: int) -> bool:
    """Z outcomes agree with the Bell index: equal iff x = 0 (bell_index = x + 2z)."""
    return (oa == ob) == (a.bell_index & 1 == 0)


async def test_measure_on_delivery_streams_outcomes_and_holds_nothing() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, bob):
            await _link(alice, bob)
            request = pb.LinkCreateRequest(
                remote="bob",
                number=20,
                kind=KEEP,
                min_fidelity=0.9,
                measure_on_delivery=channel_pb2.BASIS_Z,
            )
            async with (
                bob.link_events("alice", measure_on_delivery=Basis.Z) as far,
                alice.link_create(request) as near,
            ):
                mine = await _oks(near, 20)
                theirs = await _oks(far, 20)
            assert [ok.sequence for ok in mine] == [ok.sequence for ok in theirs]
            for ok in (*mine, *theirs):
                assert ok.measured
                assert ok.kind == KEEP
                assert ok.basis == channel_pb2.BASIS_Z
            pairs = zip(mine, theirs, strict=True)
            agree = sum(_agree(a, b, a.outcome, b.outcome) for a, b in pairs)
            assert agree >= 15  # F ≥ 0.9 and 1% readout error: about 18 of 20
            for node in (alice, bob):
                assert (await node.status()).qubits_held_for_clients == 0
            with pytest.raises(NotFound, match="not held"):
                await alice.measure_qubit(mine[0].qubit)


async def test_measure_qubits_measures_a_batch_or_nothing() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, bob):
            await _link(alice, bob)
            request = pb.LinkCreateRequest(remote="bob", number=4, kind=KEEP, min_fidelity=0.9)
            async with bob.link_events("alice") as far, alice.link_create(request) as near:
                mine = await _oks(near, 4)
                theirs = await _oks(far, 4)
            qubits = [ok.qubit for ok in mine]
            with pytest.raises(InvalidArgument, match="one basis per qubit"):
                await alice.measure_qubits(qubits, [Basis.Z])
            with pytest.raises(NotFound, match="qubit 424242 is not held"):
                await alice.measure_qubits([*qubits, 424242], [Basis.Z] * 5)
            with pytest.raises(InvalidArgument, match="name a qubit twice"):
                await alice.measure_qubits([qubits[0]] * 2, [Basis.X] * 2)
            assert (await alice.status()).qubits_held_for_clients == 4  # nothing taken
            bases = [Basis.Z, Basis.X, Basis.Z, Basis.X]
            near_out = await alice.measure_qubits(qubits, bases)
            far_out = await bob.measure_qubits([ok.qubit for ok in theirs], bases)
            assert set(near_out) | set(far_out) <= {0, 1}
            for node in (alice, bob):
                assert (await node.status()).qubits_held_for_clients == 0


async def test_measure_on_delivery_is_for_keep_requests_with_a_basis() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, _):
            measure = pb.LinkCreateRequest(
                remote="bob",
                number=1,
                kind=pb.PAIR_KIND_MEASURE,
                measure_on_delivery=channel_pb2.BASIS_Z,
            )
            with pytest.raises(InvalidArgument, match="KEEP requests only"):
                async with alice.link_create(measure) as events:
                    await anext(aiter(events))
            bad = pb.LinkCreateRequest(remote="bob", number=1, kind=KEEP)
            bad.measure_on_delivery = 9  # type: ignore[assignment]
            with pytest.raises(InvalidArgument, match="measure_on_delivery: basis 9"):
                async with alice.link_create(bad) as events:
                    await anext(aiter(events))
            assert (await alice.health()).serving


@pytest.mark.parametrize("origin", ["alice", "bob"])  # the master, then the slave
async def test_ending_the_link_create_call_cancels_the_request(origin: str) -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, bob):
            await _link(alice, bob)
            near, far = (alice, bob) if origin == "alice" else (bob, alice)
            other = "bob" if origin == "alice" else "alice"
            request = pb.LinkCreateRequest(
                remote=other,
                number=100_000,
                kind=KEEP,
                min_fidelity=0.8,
                measure_on_delivery=channel_pb2.BASIS_Z,
            )
            async with far.link_events(origin, measure_on_delivery=Basis.Z) as watch:
                async with near.link_create(request) as events:
                    accepted = await anext(aiter(events))
                    await _oks(events, 5)
                # The call has ended: the daemon cancels the request at both ends.
                err = await _err(watch)
            assert (err.origin, err.create_id) == (origin, accepted.accepted.create_id)
            assert err.code == pb.LINK_ERROR_CODE_CANCELLED
            assert err.reason == f"cancelled by {origin}"
            for node in (alice, bob):
                status = await node.status()
                assert status.qubits_held_for_clients == 0
            # The link goes on serving.
            again = pb.LinkCreateRequest(remote=other, number=2, kind=pb.PAIR_KIND_MEASURE)
            async with near.link_create(again) as events:
                assert len([e async for e in events if e.WhichOneof("event") == "ok"]) == 2


async def _fill_memory(
    alice: DaemonClient, bob: DaemonClient
) -> tuple[pb.LinkErr, pb.LinkErr, list[int], list[int]]:
    """alice asks for more KEEP pairs than memory holds and neither end frees them: the ERRs
    both ends' calls end with, and the qubits each holds."""
    request = pb.LinkCreateRequest(remote="bob", number=20, kind=KEEP, min_fidelity=0.8)
    held: dict[str, list[int]] = {"alice": [], "bob": []}
    errs: dict[str, pb.LinkErr] = {}

    async def read(node: str, events: AsyncIterator[pb.LinkEvent]) -> None:
        async for event in events:
            if event.WhichOneof("event") == "ok":
                held[node].append(event.ok.qubit)
            elif event.WhichOneof("event") == "err":
                errs[node] = event.err
                return

    async with (
        bob.link_events("alice") as far,
        alice.link_create(request) as near,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(read, "alice", near)
        nursery.start_soon(read, "bob", far)
    return errs["alice"], errs["bob"], held["alice"], held["bob"]


async def test_qubits_clients_keep_stop_the_link_until_freed() -> None:
    """Clients at both ends keep every KEEP half: once the 8 memory qubits are theirs the
    link stops arming (no backend allocation fails) and the request ends NO_MEMORY after the
    memory wait; freeing them lets the link work again."""
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, bob):
            await _link(alice, bob)
            near_err, far_err, near_held, far_held = await _fill_memory(alice, bob)
            for err in (near_err, far_err):
                assert err.code == pb.LINK_ERROR_CODE_NO_MEMORY
                # Usually the link stops arming first ("held by the layer above"); on a
                # loaded machine a client's report can trail an arm already in flight, and
                # the backend's refusal ends it the same way.
                assert "held by the layer above" in err.reason or "no free memory" in err.reason
            assert len(near_held) == len(far_held) == 8
            for node in (alice, bob):
                status = await node.status()
                assert status.qubits_held_for_clients == status.memory_qubits_in_use == 8
            await alice.free_qubits(near_held)
            await bob.free_qubits(far_held)
            again = pb.LinkCreateRequest(remote="bob", number=3, kind=pb.PAIR_KIND_MEASURE)
            async with alice.link_create(again) as events:
                assert len([e async for e in events if e.WhichOneof("event") == "ok"]) == 3
