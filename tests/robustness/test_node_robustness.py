"""A node daemon's services (NodeAdmin, LinkLayer, NetworkLayer, Application, and Peer for
random bytes) against well-typed nonsense and random bytes, on the live chain3 of
tests/daemon: every answer parses or is a typed error, the daemons keep serving, no
application session or qubit is left behind, every daemon's count of its qubits equals the
backend's, and the network links up and routes completely again afterwards.

Well-typed Peer traffic, which impersonates a neighbour, has its own network:
test_peer_robustness.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.v1 import node_pb2, peer_pb2
from tests.daemon.test_network_service import NODES
from tests.robustness.fuzz import Outcome, garbage, invoke, messages
from tests.robustness.live import LiveNetwork, live_chain3
from tests.robustness.test_channel_robustness import _daemons_agree_with_backend

SERVICES: dict[str, ServiceDescriptor] = {
    name: node_pb2.DESCRIPTOR.services_by_name[name]
    for name in ("NodeAdmin", "LinkLayer", "NetworkLayer", "Application")
}
PEER = peer_pb2.DESCRIPTOR.services_by_name["Peer"]
#: Our deadline on one call: calls that legitimately wait (a stream of pairs, WaitRoutes)
#: end with it.
CALL_S = 0.5
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TALLY: Counter[tuple[str, str]] = Counter()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    with live_chain3(tmp_path_factory.mktemp("chain3")) as network:
        yield network
    print("\nnode robustness:", dict(sorted(TALLY.items())))


def _small_ints() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1))


FIXED: dict[str, st.SearchStrategy[object]] = {
    "qubit": _small_ints(),
    "qubits": st.lists(_small_ints(), max_size=4),
    "socket": st.integers(0, 4),
    "new_socket": st.integers(0, 5),
    "port": st.sampled_from([0, 7, 8, 65535, 65536, 2**32 - 1]),
    "id": st.integers(0, 6),
    "timeout_s": st.sampled_from([0.0, 0.2, -1.0, float("nan"), 1e9]),
    "data": st.binary(max_size=64),
}


def _judge(service: str, outcome: Outcome) -> None:
    TALLY[service, outcome.kind] += 1
    assert outcome.kind != "bad", outcome


def _requests(method: MethodDescriptor) -> st.SearchStrategy[list[bytes]]:
    one = messages(method.input_type, fixed=FIXED).map(lambda m: m.SerializeToString())
    if method.client_streaming:
        return st.lists(one, min_size=1, max_size=6)
    return one.map(lambda r: [r])


@SETTINGS
@pytest.mark.parametrize("service", sorted(SERVICES))
@given(data=st.data())
def test_well_typed_nonsense_gets_typed_answers(
    net: LiveNetwork, service: str, data: st.DataObject
) -> None:
    node = data.draw(st.sampled_from(NODES))
    method = data.draw(st.sampled_from(list(SERVICES[service].methods)))
    requests = data.draw(_requests(method))
    outcome = invoke(net.grpc(net.nodes[node]), method, requests, timeout_s=CALL_S)
    _judge(service, outcome)
    assert net.node_serving(node)


@SETTINGS
@pytest.mark.parametrize("service", [*sorted(SERVICES), "Peer"])
@given(data=st.data())
def test_random_bytes_get_typed_answers(
    net: LiveNetwork, service: str, data: st.DataObject
) -> None:
    node = data.draw(st.sampled_from(NODES))
    descriptor = PEER if service == "Peer" else SERVICES[service]
    method = data.draw(st.sampled_from(list(descriptor.methods)))
    count = data.draw(st.integers(1, 4)) if method.client_streaming else 1
    payloads = [data.draw(garbage()) for _ in range(count)]
    outcome = invoke(net.grpc(net.nodes[node]), method, payloads, timeout_s=CALL_S)
    _judge(service + " (bytes)", outcome)
    assert net.node_serving(node)


def wait_apps_gone(net: LiveNetwork, bound_s: float = 10.0) -> dict[str, node_pb2.StatusResponse]:
    """Every node's status once no application session is open (a daemon ends a session
    when its stream's end reaches it, on a gRPC thread: nothing to wait on from here)."""
    deadline = time.monotonic() + bound_s
    while True:
        status = {node: net.node_status(node) for node in NODES}
        if all(s.app_sessions == 0 for s in status.values()) or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_nothing_left_behind_and_the_network_recovers(net: LiveNetwork) -> None:
    for node, status in wait_apps_gone(net).items():
        assert status.app_sessions == 0, node
        assert status.qubits_held_for_apps == 0, node
        assert status.qubits_held_by_transport == 0, node
        assert net.node_serving(node)
    _daemons_agree_with_backend(net)
    net.relink()
