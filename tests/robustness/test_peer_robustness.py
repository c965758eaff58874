"""Peer.Exchange against well-typed nonsense: a client that passes the Hello as alice's
neighbour r1 (so it replaces r1's real stream) and then sends batches of any protocol
messages of every layer, with any field values. alice must answer with a typed error or keep
the stream, drop and count what it refuses, keep serving, and hold at the backend exactly the
qubits it says it holds. Its own network: forged routing adverts may rightly linger in alice's
link-state database until they age out, which later tests should not inherit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.v1 import peer_pb2
from tests.daemon.test_network_service import NODES
from tests.robustness.fuzz import invoke, messages
from tests.robustness.live import LiveNetwork, live_chain3
from tests.robustness.test_channel_robustness import _daemons_agree_with_backend
from tests.robustness.test_node_robustness import FIXED, wait_apps_gone

EXCHANGE = peer_pb2.DESCRIPTOR.services_by_name["Peer"].methods_by_name["Exchange"]
CALL_S = 0.5
TALLY: Counter[str] = Counter()
DETAILS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    with live_chain3(tmp_path_factory.mktemp("chain3")) as network:
        yield network
    print("\npeer robustness:", dict(sorted(TALLY.items())), DETAILS)


def _hello(sender: str, recipient: str) -> peer_pb2.PeerBatch:
    hello = peer_pb2.Hello(node=sender, sequence=2**40, recipient=recipient)
    return peer_pb2.PeerBatch(
        protocol_version=1, sender=sender, messages=[peer_pb2.PeerMessage(hello=hello)]
    )


def _batches() -> st.SearchStrategy[peer_pb2.PeerBatch]:
    fixed = {
        **FIXED,
        "sender": st.sampled_from(["r1"] * 8 + ["bob", ""]),
        "protocol_version": st.sampled_from([1] * 15 + [2]),
    }
    batch = messages(peer_pb2.PeerBatch.DESCRIPTOR, fixed=fixed)
    one = messages(peer_pb2.PeerMessage.DESCRIPTOR, fixed=fixed)
    forged = st.lists(one, min_size=1, max_size=8).map(
        lambda ms: peer_pb2.PeerBatch(
            protocol_version=1, sender="r1", messages=cast(list[peer_pb2.PeerMessage], ms)
        )
    )
    return st.one_of(forged, forged, forged, batch.map(lambda b: cast(peer_pb2.PeerBatch, b)))


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_forged_batches_from_a_neighbour(net: LiveNetwork, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from([("alice", "r1"), ("bob", "r1"), ("r1", "alice")]))
    node, sender = target
    first = data.draw(st.sampled_from(["hello", "hello", "hello", "none"]))
    batches = data.draw(st.lists(_batches(), min_size=1, max_size=5))
    for b in batches:
        if b.sender != "bob":  # a few batches name another sender; the rest the stream's own
            b.sender = sender
    requests = ([_hello(sender, node)] if first == "hello" else []) + batches
    outcome = invoke(
        net.grpc(net.nodes[node]),
        EXCHANGE,
        [r.SerializeToString() for r in requests],
        timeout_s=CALL_S,
    )
    TALLY[outcome.kind] += 1
    DETAILS[outcome.detail[:60]] += 1
    assert outcome.kind != "bad", outcome
    assert net.node_serving(node)


def test_daemons_serve_and_account_for_every_qubit(net: LiveNetwork) -> None:
    for node, status in wait_apps_gone(net).items():
        assert status.qubits_held_for_apps == 0, node
        assert net.node_serving(node)
    _daemons_agree_with_backend(net)
    for node in NODES:
        assert net.node_status(node).node == node
