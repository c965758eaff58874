"""The Channel API over real gRPC on loopback, the daemon running in-process.

Every bad input must come back as a typed error naming the problem, with the right gRPC status
code, and leave the daemon serving with no qubit leaked.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
import pytest
import trio

from qnet import errors
from qnet.channel import wire
from qnet.channel.client import ChannelClient, LinkTheory, NodeSession, open_channel_client
from qnet.channel.service import ChannelDaemonConfig, run_channel_daemon
from qnet.channel.wire import PROTOCOL_VERSION
from qnet.physical.gates import Basis, GateName
from qnet.physical.heralding import heralding_model
from qnet.physical.params import LinkParams, NodeParams
from qnet.runtime.grpc_bridge import unary_call
from qnet.v1 import channel_pb2 as pb

LINK = LinkParams(length_km=2)


@pytest.fixture
async def client(nursery: trio.Nursery) -> AsyncIterator[ChannelClient]:
    config = ChannelDaemonConfig(seed=5, max_group_qubits=3, test_oracle=True)
    port, _ = await nursery.start(run_channel_daemon, config)
    async with open_channel_client(f"127.0.0.1:{port}") as c:
        yield c
    nursery.cancel_scope.cancel()


async def _pair(client: ChannelClient) -> tuple[NodeSession, NodeSession]:
    alice = await client.register("alice", NodeParams(memory_qubits=4))
    bob = await client.register("bob", NodeParams(memory_qubits=4))
    await alice.declare_link("bob", LINK)
    return alice, bob


async def _in_use(client: ChannelClient) -> int:
    return (await client.health()).qubits_in_use


def _status(exc: BaseException) -> grpc.StatusCode:
    cause = exc.__cause__
    assert isinstance(cause, grpc.Call)
    code: grpc.StatusCode = cause.code()
    return code


async def test_bad_input_is_typed_and_leaks_nothing(client: ChannelClient) -> None:
    with trio.fail_after(20):
        alice, bob = await _pair(client)
        (qa,) = await alice.allocate(1)
        (qb,) = await bob.allocate(1)
        before = await _in_use(client)
        cases: list[tuple[type[errors.QnetError], grpc.StatusCode, str, object]] = [
            (errors.NotFound, grpc.StatusCode.NOT_FOUND, "qubit 999", alice.measure(999)),
            (
                errors.PermissionDenied,
                grpc.StatusCode.PERMISSION_DENIED,
                f"qubit {qb}",
                alice.gate(GateName.X, qb),
            ),
            (
                errors.InvalidArgument,
                grpc.StatusCode.INVALID_ARGUMENT,
                "finite",
                alice.gate(GateName.RX, qa, angle=math.nan),
            ),
            (
                errors.InvalidArgument,
                grpc.StatusCode.INVALID_ARGUMENT,
                "finite",
                alice.gate(GateName.RZ, qa, angle=math.inf),
            ),
            (errors.NoMemory, grpc.StatusCode.RESOURCE_EXHAUSTED, "3 of 4", alice.allocate(4)),
            (
                errors.NotFound,
                grpc.StatusCode.NOT_FOUND,
                "no link between alice and carol",
                alice.start_generation("carol", [qa]),
            ),
            (
                errors.InvalidArgument,
                grpc.StatusCode.INVALID_ARGUMENT,
                "acts on 2",
                alice.gate(GateName.CNOT, qa),
            ),
        ]
        for error_type, code, words, call in cases:
            with pytest.raises(error_type, match=words) as info:
                await call  # type: ignore[misc]
            assert _status(info.value) == code
            assert await _in_use(client) == before
        assert (await client.health()).serving


async def test_unknown_basis_and_version_and_session(client: ChannelClient) -> None:
    with trio.fail_after(20):
        alice, _ = await _pair(client)
        (q,) = await alice.allocate(1)
        stub = alice._stub
        bad_basis = pb.MeasureRequest(
            protocol_version=PROTOCOL_VERSION,
            session=alice.token,
            qubit=q,
            basis=pb.Basis.ValueType(7),
        )
        with pytest.raises(errors.InvalidArgument, match="basis 7 does not exist"):
            await unary_call(stub.Measure, bad_basis, error_mapper=alice._map)
        old = pb.AllocateRequest(protocol_version=0, session=alice.token, count=1)
        with pytest.raises(errors.VersionMismatch, match="protocol version 0") as info:
            await unary_call(stub.Allocate, old, error_mapper=alice._map)
        assert _status(info.value) == grpc.StatusCode.FAILED_PRECONDITION
        stranger = pb.AllocateRequest(protocol_version=PROTOCOL_VERSION, session="x", count=1)
        with pytest.raises(errors.Unauthenticated):
            await unary_call(stub.Allocate, stranger, error_mapper=alice._map)
        assert await _in_use(client) == 1
        assert await alice.measure(q, Basis.Z) == 0  # |0⟩, and the qubit is freed
        assert await _in_use(client) == 0


async def test_malformed_request_is_invalid_argument(client: ChannelClient) -> None:
    with trio.fail_after(20):
        raw = grpc.insecure_channel(client.address)
        try:
            call = raw.unary_unary(
                "/qnet.v1.Channel/Allocate",
                request_serializer=None,
                response_deserializer=None,
            )
            with pytest.raises(grpc.RpcError) as info:
                await trio.to_thread.run_sync(call, b"\x12\xff")  # truncated string field
            err = info.value
            assert isinstance(err, grpc.Call)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed qnet.v1.AllocateRequest" in (err.details() or "")
        finally:
            raw.close()
        assert (await client.health()).serving


async def test_group_limit(client: ChannelClient) -> None:
    with trio.fail_after(20):
        alice, _ = await _pair(client)
        qs = await alice.allocate(4)
        await alice.gate(GateName.H, qs[0])
        await alice.gate(GateName.CNOT, qs[0], qs[1])
        await alice.gate(GateName.CNOT, qs[1], qs[2])
        with pytest.raises(errors.GroupTooLarge, match="limit is 3") as info:
            await alice.gate(GateName.CNOT, qs[2], qs[3])
        assert _status(info.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The GHZ state on the first three is intact: all three agree in Z.
        outcomes = {await alice.measure(q) for q in qs[:3]}
        assert len(outcomes) == 1
        await alice.free([qs[3]])
        assert await _in_use(client) == 0


async def test_heralds_reach_both_ends(client: ChannelClient) -> None:
    with trio.fail_after(20):
        alice, bob = await _pair(client)
        (qa,) = await alice.allocate(1)
        (qb,) = await bob.allocate(1)
        async with alice.heralds() as ha, bob.heralds() as hb:
            await alice.start_generation("bob", [qa])
            await bob.start_generation("alice", [qb])
            ea = await ha.__anext__()
            eb = await hb.__anext__()
        assert (ea.sequence, ea.bell_index, ea.time_ns) == (eb.sequence, eb.bell_index, eb.time_ns)
        assert (ea.qubit, eb.qubit) == (qa, qb)
        fidelity = await client.oracle_pair_fidelity(qa, qb, ea.bell_index)
        # Noiseless memories: the pair is exactly the model's heralded state.
        theory = LinkTheory.from_model(heralding_model(LINK))
        assert fidelity == pytest.approx(theory.fidelity, abs=1e-9)
        eta = theory.transmissivity
        assert fidelity == pytest.approx(2 * (1 - 0.1) / (2 - 0.1 * eta), abs=1e-9)


async def test_second_event_stream_and_takeover(client: ChannelClient) -> None:
    with trio.fail_after(20):
        alice, _ = await _pair(client)
        await alice.allocate(2)
        async with alice.heralds() as first:
            with pytest.raises(errors.AlreadyExists, match="already open"):
                async with alice.heralds():
                    pass
            with pytest.raises(errors.AlreadyExists):
                await client.register("alice")
            again = await client.register("alice", takeover=True)
            # The old session ends: its stream finishes, its qubits are freed.
            assert [h async for h in first] == []
        assert await _in_use(client) == 0
        with pytest.raises(errors.Unauthenticated):
            await alice.allocate(1)
        assert await again.allocate(1)


async def test_execute_runs_in_order_and_stops_at_the_first_failure(
    client: ChannelClient,
) -> None:
    with trio.fail_after(20):
        alice, _ = await _pair(client)
        resp = await alice.execute(
            [
                pb.Operation(allocate=pb.AllocateOp(count=2)),
                pb.Operation(measure=pb.MeasureOp(qubit=999, basis=pb.BASIS_Z)),
                pb.Operation(allocate=pb.AllocateOp(count=1)),
            ]
        )
        assert len(resp.results) == 1
        qs = list(resp.results[0].qubits)
        assert resp.failure.index == 1
        assert resp.failure.error_type == "NotFound"
        assert "qubit 999" in resp.failure.message
        assert await _in_use(client) == 2  # the third op never ran
        x, h = wire.GATE_TO_WIRE[GateName.X], wire.GATE_TO_WIRE[GateName.H]
        resp = await alice.execute(
            [
                pb.Operation(gate=pb.GateOp(gate=x, qubits=qs[:1])),
                pb.Operation(gate=pb.GateOp(gate=h, qubits=qs[1:])),
                pb.Operation(measure=pb.MeasureOp(qubit=qs[0], basis=pb.BASIS_Z)),
                pb.Operation(measure=pb.MeasureOp(qubit=qs[1], basis=pb.BASIS_X)),
            ]
        )
        assert not resp.HasField("failure")
        assert [r.outcome for r in resp.results] == [0, 0, 1, 0]
        assert await _in_use(client) == 0


async def test_execute_arm_with_allocation_leaks_nothing_on_failure(
    client: ChannelClient,
) -> None:
    with trio.fail_after(20):
        alice, _ = await _pair(client)
        resp = await alice.execute(
            [pb.Operation(arm=pb.ArmOp(peer="bob", allocate=2, bright_state=0.7))]
        )
        assert resp.failure.error_type == "InvalidArgument"
        assert "bright_state" in resp.failure.message
        assert await _in_use(client) == 0
        resp = await alice.execute([pb.Operation(arm=pb.ArmOp(peer="bob", allocate=2))])
        assert len(resp.results[0].qubits) == 2
        resp = await alice.execute([pb.Operation(disarm=pb.DisarmOp(peer="bob", free=True))])
        assert len(resp.results[0].qubits) == 2
        assert await _in_use(client) == 0
        empty = await alice.execute([pb.Operation()])
        assert empty.failure.error_type == "InvalidArgument"
