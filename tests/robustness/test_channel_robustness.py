"""The Channel and ChannelOracle services against well-typed nonsense and random bytes.

Every request goes, as raw bytes, to a live qnet-channeld: the one that serves the chain3
daemons of tests/daemon (so nonsense meets a backend in real use) and a second one with the
test oracle. Every answer must be a response that parses or a typed error (a status carrying
the ``qnet-error`` metadata that names a qnet error type of that status); afterwards the
backend still answers Health, each node daemon's own count of its qubits equals the backend's,
and the fuzzing nodes, once taken over, hold none.

A client that vanishes (its event stream closes and stays closed, as when a daemon is killed)
has its session ended and its qubits freed by the backend within ``ORPHAN_LEASE_S``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import cast

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.channel.client import open_channel_client
from qnet.channel.server import ORPHAN_LEASE_S
from qnet.channel.service import ChannelDaemonConfig, run_channel_daemon
from qnet.channel.wire import PROTOCOL_VERSION
from qnet.errors import Unauthenticated
from qnet.physical.params import LinkParams, NodeParams
from qnet.v1 import channel_pb2 as pb
from qnet.v1 import channel_pb2_grpc as pb_grpc
from tests.daemon.test_network_service import NODES
from tests.robustness.fuzz import Outcome, garbage, invoke, messages
from tests.robustness.live import LiveNetwork, live_chain3

CHANNEL = pb.DESCRIPTOR.services_by_name["Channel"]
ORACLE = pb.DESCRIPTOR.services_by_name["ChannelOracle"]
#: Names the fuzzing registers under: never a daemon's (a takeover would end its session).
FUZZ_NODES = ("fuzz", "fuzz2")
CALL_S = 1.0
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TALLY: Counter[tuple[str, str]] = Counter()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    with live_chain3(tmp_path_factory.mktemp("chain3")) as network:
        yield network
    print("\nchannel robustness:", dict(sorted(TALLY.items())))


def _register(net: LiveNetwork, address: str, node: str = "fuzz") -> str:
    stub = pb_grpc.ChannelStub(net.grpc(address))
    resp = stub.Register(
        pb.RegisterRequest(
            protocol_version=PROTOCOL_VERSION, node=node, memory_qubits=6, takeover=True
        ),
        timeout=CALL_S * 5,
    )
    return resp.session


def _qubit_ids() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1))


def _fixed(token: str) -> dict[str, st.SearchStrategy[object]]:
    return {
        "session": st.sampled_from([token, token, token, "", "0" * 32]),
        "node": st.sampled_from([*FUZZ_NODES, "", "has space", "x" * 300]),
        "peer": st.sampled_from(["fuzz2", "fuzz", "alice", "r1", "", "nobody"]),
        "qubits": st.lists(_qubit_ids(), max_size=5),
        "qubit": _qubit_ids(),
        "qubit_a": _qubit_ids(),
        "qubit_b": _qubit_ids(),
    }


def _judge(service: str, outcome: Outcome) -> None:
    TALLY[service, outcome.kind] += 1
    assert outcome.kind != "bad", outcome


def _no_leaks(net: LiveNetwork) -> None:
    """The fuzzing nodes, taken over, hold nothing; every daemon holds what it says it does."""
    for address in (net.channel, net.oracle):
        for node in net.channel_health(address).qubits_by_node:
            if node not in NODES:
                _register(net, address, node)
        health = net.channel_health(address)
        assert health.serving
        fuzz = {n: c for n, c in health.qubits_by_node.items() if n not in NODES}
        assert not any(fuzz.values()), fuzz
    _daemons_agree_with_backend(net)


def _daemons_agree_with_backend(net: LiveNetwork) -> None:
    """Each daemon's memory_qubits_in_use equals the backend's count for its node (read
    until they agree: a request in flight may separate them for a moment)."""
    deadline = time.monotonic() + 10
    while True:
        by_node = net.channel_health().qubits_by_node
        status = {node: net.node_status(node).memory_qubits_in_use for node in NODES}
        if all(by_node[n] == status[n] for n in NODES) or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # no event to wait on across two processes' counters; bounded
    assert {n: by_node[n] for n in NODES} == status


@SETTINGS
@given(data=st.data())
def test_well_typed_nonsense_gets_typed_answers(net: LiveNetwork, data: st.DataObject) -> None:
    address = data.draw(st.sampled_from([net.channel, net.oracle]))
    token = _register(net, address)
    service = data.draw(st.sampled_from([CHANNEL, ORACLE] if address == net.oracle else [CHANNEL]))
    method = data.draw(st.sampled_from(list(service.methods)))
    request = data.draw(messages(method.input_type, fixed=_fixed(token)))
    outcome = invoke(net.grpc(address), method, [request.SerializeToString()], timeout_s=CALL_S)
    _judge(method.containing_service.name, outcome)
    assert net.channel_health(address).serving


@SETTINGS
@given(data=st.data())
def test_random_bytes_get_typed_answers(net: LiveNetwork, data: st.DataObject) -> None:
    address = data.draw(st.sampled_from([net.channel, net.oracle]))
    service = data.draw(st.sampled_from([CHANNEL, ORACLE] if address == net.oracle else [CHANNEL]))
    method = data.draw(st.sampled_from(list(service.methods)))
    count = data.draw(st.integers(1, 4)) if method.client_streaming else 1
    payloads = [data.draw(garbage()) for _ in range(count)]
    outcome = invoke(net.grpc(address), method, payloads, timeout_s=CALL_S)
    _judge(method.containing_service.name + " (bytes)", outcome)
    assert net.channel_health(address).serving


@SETTINGS
@given(data=st.data())
def test_execute_batches_of_nonsense(net: LiveNetwork, data: st.DataObject) -> None:
    """Execute and ExecuteStream, the calls a daemon makes most, with many operations."""
    token = _register(net, net.oracle)
    ops = data.draw(st.lists(messages(pb.Operation.DESCRIPTOR, fixed=_fixed(token)), max_size=12))
    request = pb.ExecuteRequest(
        protocol_version=PROTOCOL_VERSION, session=token, ops=cast(list[pb.Operation], ops)
    )
    method = data.draw(
        st.sampled_from([CHANNEL.methods_by_name[m] for m in ("Execute", "ExecuteStream")])
    )
    repeat = data.draw(st.integers(1, 3)) if method.client_streaming else 1
    outcome = invoke(
        net.grpc(net.oracle), method, [request.SerializeToString()] * repeat, timeout_s=CALL_S
    )
    _judge("Channel.Execute", outcome)
    if method.client_streaming and outcome.kind == "ok":
        assert outcome.responses == repeat


def test_no_qubit_leaked_and_daemons_still_serve(net: LiveNetwork) -> None:
    _no_leaks(net)
    for node in NODES:
        assert net.node_serving(node)
    net.relink()


async def test_a_vanished_client_loses_its_session_and_qubits() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port, _ = await nursery.start(run_channel_daemon, ChannelDaemonConfig(seed=1))
            async with open_channel_client(f"127.0.0.1:{port}") as client:
                alice = await client.register("alice", NodeParams(memory_qubits=4))
                bob = await client.register("bob", NodeParams(memory_qubits=4))
                await alice.declare_link("bob", LinkParams(length_km=1))
                async with alice.heralds():
                    qubits = await alice.allocate(3)
                    await alice.start_generation("bob", qubits[:2])
                # A session still in use keeps its qubits: a request renews the lease.
                await alice.free(qubits[2:])
                assert (await client.health()).qubits_by_node["alice"] == 2
                closed = trio.current_time()
                while "alice" in (health := await client.health()).qubits_by_node:
                    assert trio.current_time() - closed < ORPHAN_LEASE_S + 2
                    await trio.sleep(0.05)  # the lease is wall time in another task; bounded
                gone = trio.current_time() - closed
                assert health.qubits_in_use == 0
                assert dict(health.qubits_by_node) == {"bob": 0}
                # A session that never had an event stream has no lease.
                with pytest.raises(Unauthenticated, match="unknown or ended session"):
                    await alice.allocate(1)
                assert await bob.allocate(1)
                assert (await client.health()).nodes == 1
            nursery.cancel_scope.cancel()
    assert ORPHAN_LEASE_S <= gone <= ORPHAN_LEASE_S + 2
