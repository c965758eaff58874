"""The Application service of real node daemons run in-process (qnet-channeld too) over gRPC on
loopback, on the three-node chain alice – r1 – bob of test_network_service: applications on
alice and bob, each with its own session (``RemoteBackend``), exchange messages, pairs and
teleported qubits; cancelled calls leave their answers to the next call; closes end streams;
bad requests are typed errors on their own request; and a session that ends, however it ends,
leaves no qubit allocated at the node or the backend."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import qnet
from qnet.api.backend import QubitInfo
from qnet.api.remote import RemoteBackend, RemoteSocket, open_remote
from qnet.daemon.control import DaemonClient
from qnet.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Timeout,
    Unreachable,
)
from qnet.runtime.grpc_bridge import (
    BidiStream,
    close_channel,
    insecure_channel,
    stream_stream,
)
from qnet.v1 import channel_pb2
from qnet.v1 import node_pb2 as pb
from qnet.v1 import node_pb2_grpc as pb_grpc
from tests.daemon.test_network_service import Clients, chain3
from tests.network.circuithelpers import both

LIMIT_S = 60
PORT = 7


async def connect(
    alice: RemoteBackend, bob: RemoteBackend, *, min_fidelity: float = 0.0
) -> tuple[RemoteSocket, RemoteSocket]:
    """A connection from alice's application to bob's, listening on PORT."""
    srv = bob.socket()
    await srv.bind(PORT)
    await srv.listen()
    cli = alice.socket()
    _, (conn, peer) = await both(
        lambda: cli.connect(("bob", PORT), min_fidelity=min_fidelity), srv.accept
    )
    assert peer == ("alice", cli.local[1] if cli.local else -1)
    assert cli.peer == ("bob", PORT)
    assert conn.local == ("bob", PORT)
    await srv.close()
    return cli, conn


@asynccontextmanager
async def apps(tmp_path: Path) -> AsyncGenerator[tuple[Clients, RemoteBackend, RemoteBackend]]:
    """The chain, and one application session on alice and one on bob."""
    async with (
        chain3(tmp_path) as nodes,
        open_remote(nodes["alice"].address) as alice,
        open_remote(nodes["bob"].address) as bob,
    ):
        assert (alice.node, bob.node) == ("alice", "bob")
        yield nodes, alice, bob


@asynccontextmanager
async def raw_session(
    address: str,
) -> AsyncGenerator[BidiStream[pb.SessionRequest, pb.SessionResponse]]:
    """A Session stream with no client of ours around it."""
    channel = insecure_channel(address)
    try:
        async with stream_stream(pb_grpc.ApplicationStub(channel).Session) as stream:
            yield stream
    finally:
        await close_channel(channel)


async def end_and_check(nodes: Clients, *sessions: RemoteBackend) -> None:
    """End the sessions; then no application holds a qubit anywhere."""
    for session in sessions:
        await session.aclose()
    for client in nodes.values():
        status = await client.status()
        assert status.qubits_held_for_apps == 0, status
        assert status.app_sessions == 0, status


async def wait_sessions_gone(client: DaemonClient, left: int = 0) -> pb.StatusResponse:
    """The node's status once at most ``left`` sessions are open. The daemon ends a session
    when it learns that its stream broke, on a gRPC thread: there is no event to wait on from
    here, so this polls (callers bound it)."""
    while True:
        status = await client.status()
        if status.app_sessions <= left:
            return status
        await trio.sleep(0.01)


async def test_messages_both_ways_in_order_and_closes_end_streams(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with apps(tmp_path) as (nodes, alice, bob):
            cli, conn = await connect(alice, bob)
            words = [b"one", b"two", b"x" * 100_000, b"four"]
            for w in words:
                await cli.send(w)
            assert [await conn.recv() for _ in words] == words
            await conn.send(b"back")
            assert await cli.recv() == b"back"
            await cli.close()
            assert await conn.recv() == b""
            assert await conn.recv() == b""  # end of stream stays so
            await conn.close()
            assert await cli.recv() == b""
            await both(cli.wait_closed, conn.wait_closed)
            await end_and_check(nodes, alice, bob)


# -- statistics -----------------------------------------------------------------------------------

#: Measurement error of each end in CHAIN3.
MEASURE_ERROR = 0.01


def agreement_floor(n: int, fidelity: float, measure_error: float = MEASURE_ERROR) -> float:
    """The least fraction of n pairs whose two outcomes agree in Z or in X that is consistent
    (4 standard deviations) with pairs of at least ``fidelity`` to Φ+: for a Werner pair both
    agree with probability (1 + 2F)/3, each end misreading with ``measure_error``."""
    p = (1 + 2 * fidelity) / 3
    flip = 2 * measure_error * (1 - measure_error)
    p = p * (1 - flip) + (1 - p) * flip
    return p - 4 * math.sqrt(p * (1 - p) / n)


def agreement(a: list[int], b: list[int]) -> float:
    assert len(a) == len(b) > 0
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


async def test_pairs_correlate_in_z_and_x_at_both_ends(tmp_path: Path) -> None:
    fidelity = 0.8
    with trio.fail_after(LIMIT_S):
        async with apps(tmp_path) as (nodes, alice, bob):
            srv = bob.socket()
            await srv.bind(PORT)
            await srv.listen()
            cli = alice.socket()
            _, (conn, _) = await both(
                lambda: cli.connect(("bob", PORT), min_fidelity=fidelity), srv.accept
            )
            # Measure-directly, one basis per pair: Z and X alternate.
            n = 128
            bases = ["Z" if i % 2 == 0 else "X" for i in range(n)]
            near, far = await both(
                lambda: cli.epr_measure(n, bases), lambda: conn.epr_measure(n, bases)
            )
            assert set(near) | set(far) <= {0, 1}
            for start in (0, 1):  # Z pairs, then X pairs
                a, b = near[start::2], far[start::2]
                assert agreement(a, b) >= agreement_floor(len(a), fidelity), (start, a, b)
            # Kept pairs, measured by the applications as they come (memory is 8 qubits):
            # the k-th halves pair up.
            outcomes: dict[str, tuple[list[int], list[int]]] = {"Z": ([], []), "X": ([], [])}
            for i in range(24):
                q, r = await both(cli.epr, conn.epr)
                assert q.number == r.number
                assert min(q.fidelity, r.fidelity) >= fidelity
                basis = "Z" if i % 2 == 0 else "X"
                outcomes[basis][0].append(await alice.measure(q.id, basis))
                outcomes[basis][1].append(await bob.measure(r.id, basis))
            for a, b in outcomes.values():
                assert agreement(a, b) >= agreement_floor(len(a), fidelity)
            await end_and_check(nodes, alice, bob)


async def test_teleported_qubits_arrive_in_order_and_intact(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with apps(tmp_path) as (nodes, alice, bob):
            cli, conn = await connect(alice, bob, min_fidelity=0.9)
            # |1⟩, |+⟩, |0⟩, |−⟩, three at a time (memory is 8 qubits, and the connection
            # holds pairs too): each is read in its own eigenbasis.
            states = [("x", "Z", 1), ("h", "X", 0), ("", "Z", 0), ("xh", "X", 1)] * 3
            sent: list[int] = []
            numbers: list[int] = []
            wrong = 0
            for start in range(0, len(states), 3):
                batch = []
                for gates, _, _ in states[start : start + 3]:
                    q = await alice.allocate()
                    for g in gates:
                        await alice.gate(g, (q.id,))
                    batch.append(q.id)

                async def send_batch(batch: list[int] = batch) -> None:
                    for q in batch:  # one after the other: concurrent calls have no order
                        await cli.send_qubit(q)

                async def receive_batch(k: int = len(batch)) -> list[QubitInfo]:
                    return [await conn.recv_qubit() for _ in range(k)]

                _, got = await both(send_batch, receive_batch)
                sent += batch
                numbers += [r.number for r in got]
                for r, (_, basis, expected) in zip(got, states[start:], strict=False):
                    wrong += await bob.measure(r.id, basis) != expected
            assert numbers == list(range(len(states)))
            # Each teleport uses a pair of fidelity ≥ ~0.8; a few readings may flip.
            assert wrong <= len(states) // 3, wrong
            # The sent qubits are gone from alice's session.
            with pytest.raises(NotFound, match="not held"):
                await alice.measure(sent[0])
            await end_and_check(nodes, alice, bob)


async def test_cancelled_calls_leave_their_answers_to_the_next(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with apps(tmp_path) as (nodes, alice, bob):
            srv = bob.socket()
            await srv.bind(PORT)
            await srv.listen()
            with trio.move_on_after(0.3) as waited:
                await srv.accept()  # nobody connects yet
            assert waited.cancelled_caught
            cli = alice.socket()
            # The accept cancelled above already asked: this one gets its answer.
            _, (conn, _) = await both(lambda: cli.connect(("bob", PORT)), srv.accept)
            with trio.move_on_after(0.3) as waited:
                await conn.recv()
            assert waited.cancelled_caught
            await cli.send(b"first")
            await cli.send(b"second")
            assert await conn.recv() == b"first"
            assert await conn.recv() == b"second"
            # A timeout through the public API is the typed error, and the session goes on:
            # the accept that timed out leaves its connection to the next.
            async with qnet.open_node(nodes["alice"].address) as node:
                assert node.name == "alice"
                listener = node.socket()
                await listener.bind(PORT + 1)
                await listener.listen()
                listener.settimeout(0.2)
                with pytest.raises(Timeout):
                    await listener.accept()
                listener.settimeout(None)
                back = bob.socket()
                _, (accepted, peer) = await both(
                    lambda: back.connect(("alice", PORT + 1)), listener.accept
                )
                assert peer == back.local
                await back.send(b"third")
                assert await accepted.recv() == b"third"
            await end_and_check(nodes, alice, bob)


async def test_bad_requests_are_typed_errors_and_the_session_goes_on(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with apps(tmp_path) as (nodes, alice, bob):
            q = await alice.allocate()
            with pytest.raises(NotFound, match="not held"):
                await bob.measure(q.id)  # a qubit id of alice: bob's node has no such
            async with open_remote(nodes["alice"].address) as other:
                with pytest.raises(PermissionDenied, match="another application"):
                    await other.gate("h", (q.id,))
            with pytest.raises(NotFound, match="not held"):
                await alice.measure(q.id + 1000)
            with pytest.raises(InvalidArgument, match="unknown gate"):
                await alice.gate("toffoli", (q.id,))
            with pytest.raises(InvalidArgument, match="acts on 2 qubits"):
                await alice.gate("cnot", (q.id,))
            with pytest.raises(InvalidArgument, match="unknown basis"):
                await alice.measure(q.id, "W")
            s = alice.socket()
            with pytest.raises(FailedPrecondition, match="not bound or connected"):
                await s.recv()
            with pytest.raises(NotFound):
                await s.connect(("bob", 99))  # nothing listens there
            with pytest.raises(InvalidArgument, match="port"):
                await alice.socket().bind(0)
            # Requests no client of ours would send, straight on the wire.
            raw = [
                (pb.SessionRequest(protocol_version=1, id=0, allocate=pb.QubitAllocate()), "id"),
                (pb.SessionRequest(protocol_version=1, id=5), "no command"),
                (pb.SessionRequest(protocol_version=9, id=6, free=pb.QubitFree()), "version"),
                (
                    pb.SessionRequest(protocol_version=1, id=7, recv=pb.SocketRecv(socket=3)),
                    "no socket",
                ),
                (
                    pb.SessionRequest(
                        protocol_version=1,
                        id=8,
                        epr_measure=pb.SocketEprMeasure(socket=1, count=0),
                    ),
                    "no socket",
                ),
                (
                    pb.SessionRequest(
                        protocol_version=1,
                        id=9,
                        gate=pb.QubitGate(gate=channel_pb2.GATE_H, qubits=[q.id], angle=math.nan),
                    ),
                    "finite",
                ),
            ]
            async with raw_session(nodes["alice"].address) as stream:
                responses = aiter(stream)
                assert (await anext(responses)).opened.node == "alice"
                for request, message in raw:
                    await stream.send(request)
                    answer = await anext(responses)
                    assert answer.id == request.id
                    assert answer.WhichOneof("result") == "error", answer
                    assert message in answer.error.message, (message, answer.error)
                    assert answer.error.node == "alice"
            # Still serving, and alice's qubit is still hers.
            assert await alice.measure(q.id) == 0
            await end_and_check(nodes, alice, bob)


async def test_qubit_operations_sent_together_run_in_order_with_their_own_errors(
    tmp_path: Path,
) -> None:
    """Gates, measurements and frees that reach the daemon together go to the backend
    together (one ``Execute``): each still gets its own answer, checked in request order (an
    operation on a qubit measured before it in the same batch is NotFound), a backend error
    fails only its own request, and an ``allocate`` waiting does not hold them up."""
    with trio.fail_after(LIMIT_S):
        async with apps(tmp_path) as (nodes, alice, bob):

            def req(rid: int, **command: Any) -> pb.SessionRequest:
                return pb.SessionRequest(protocol_version=1, id=rid, **command)

            z = channel_pb2.BASIS_Z
            async with raw_session(nodes["alice"].address) as stream:
                responses = aiter(stream)
                assert (await anext(responses)).opened.node == "alice"
                await stream.send(req(1, allocate=pb.QubitAllocate()))
                await stream.send(req(2, allocate=pb.QubitAllocate()))
                first = {r.id: r for r in [await anext(responses), await anext(responses)]}
                q1, q2 = first[1].qubit.id, first[2].qubit.id
                h, cnot = channel_pb2.GATE_H, channel_pb2.GATE_CNOT
                batch = [
                    req(3, gate=pb.QubitGate(gate=h, qubits=[q1])),
                    req(4, gate=pb.QubitGate(gate=cnot, qubits=[q1, q2])),
                    req(5, measure=pb.QubitMeasure(qubit=q1, basis=z)),
                    req(6, gate=pb.QubitGate(gate=h, qubits=[q1])),  # measured just before
                    req(7, allocate=pb.QubitAllocate()),
                    req(8, measure=pb.QubitMeasure(qubit=q2, basis=z)),
                    req(9, free=pb.QubitFree(qubit=q2)),  # measured just before
                    req(10, measure=pb.QubitMeasure(qubit=10**6, basis=z)),  # nobody's
                ]
                for request in batch:
                    await stream.send(request)
                got: dict[int, pb.SessionResponse] = {}
                while len(got) < len(batch):
                    answer = await anext(responses)
                    got[answer.id] = answer
                assert [got[i].WhichOneof("result") for i in range(3, 11)] == [
                    "done",
                    "done",
                    "outcomes",
                    "error",
                    "qubit",
                    "outcomes",
                    "error",
                    "error",
                ]
                assert got[6].error.type == "NotFound"
                assert "not held" in got[6].error.message
                assert got[9].error.type == "NotFound"
                assert got[10].error.type == "NotFound"
                assert got[5].outcomes.outcomes[0] in (0, 1)
                assert got[8].outcomes.outcomes[0] in (0, 1)
                await stream.send(req(11, free=pb.QubitFree(qubit=got[7].qubit.id)))
                assert (await anext(responses)).WhichOneof("result") == "done"
                stream.done_writing()
            await wait_sessions_gone(nodes["alice"], left=1)
            await end_and_check(nodes, alice, bob)


async def test_a_broken_session_aborts_its_connections_and_frees_its_qubits(
    tmp_path: Path,
) -> None:
    with trio.fail_after(LIMIT_S):
        async with apps(tmp_path) as (nodes, alice, bob):
            before = await nodes["alice"].status()
            srv = bob.socket()
            await srv.bind(PORT)
            await srv.listen()
            async with raw_session(nodes["alice"].address) as stream:
                responses = aiter(stream)
                assert (await anext(responses)).opened.node == "alice"

                ids = itertools.count(1)

                async def ask(**command: Any) -> pb.SessionResponse:
                    rid = next(ids)
                    await stream.send(pb.SessionRequest(protocol_version=1, id=rid, **command))
                    answer = await anext(responses)
                    assert answer.id == rid
                    assert answer.WhichOneof("result") != "error", answer
                    return answer

                for _ in range(2):
                    await ask(allocate=pb.QubitAllocate())
                connect = pb.SocketConnect(socket=1, node="bob", port=PORT, min_fidelity=0.5)
                (_, (conn, _)) = await both(lambda: ask(connect=connect), srv.accept)
                await ask(epr=pb.SocketEpr(socket=1))
                held = await nodes["alice"].status()
                assert held.app_sessions == before.app_sessions + 1
                assert held.qubits_held_for_apps == before.qubits_held_for_apps + 3
                # Leaving the stream's context cancels the call: no goodbye, as if killed.
            status = await wait_sessions_gone(nodes["alice"], before.app_sessions)
            assert status.qubits_held_for_apps == before.qubits_held_for_apps
            # The connection was aborted: its pairs are freed and its peer hears of it.
            with pytest.raises(Unreachable):
                await conn.recv()
            assert (await nodes["alice"].status()).qubits_held_by_transport == 0
            await end_and_check(nodes, alice, bob)
