"""Property tests of the EGP: random workloads over a faulty link, every (state, input) of the
request lifecycle, the wire form of every message, and protocol errors."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.errors import InvalidArgument, ProtocolError
from qnet.link.egp import EgpConfig, EgpCore
from qnet.link.events import (
    Ack,
    BasisChoice,
    Cancel,
    CreateErr,
    CreateRequest,
    ErrorCode,
    Expire,
    Kind,
    MemoryFull,
    PairAssign,
    PairDiscard,
    PeerMessage,
    Purify,
    PurifyResult,
    QueueAdd,
    Terminate,
    message_from_dict,
)
from qnet.link.requests import TRANSITIONS, ReqInput, ReqState, next_state
from qnet.physical.params import LinkParams, NodeParams, Scheme
from tests.unit.test_egp_harness import A, B, EgpPair, Faults, check_invariants

CANCELLED = ErrorCode.CANCELLED

_create = st.fixed_dictionaries(
    {
        "node": st.sampled_from([A, B]),
        "number": st.integers(1, 3),
        "min_fidelity": st.sampled_from([0.0, 0.6, 0.8, 0.9, 0.97, 0.9999]),
        # Always bounded: on a very lossy link a purified pair can decohere below its target
        # while it waits, and only max_time ends such a request.
        "max_time_ns": st.sampled_from([30_000, 400_000, 3_000_000, 20_000_000]),
        "kind": st.sampled_from(list(Kind)),
        "basis": st.sampled_from(list(BasisChoice)),
        "priority": st.integers(0, 2),
        "wait_ns": st.integers(0, 300_000),
        # The origin cancels the request this long after creating it (None: never).
        "cancel_after_ns": st.one_of(st.none(), st.sampled_from([0, 40_000, 400_000])),
    }
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    creates=st.lists(_create, min_size=1, max_size=5),
    loss=st.sampled_from([0.0, 0.1, 0.4]),
    duplicate=st.sampled_from([0.0, 0.3]),
    jitter_ns=st.sampled_from([0, 20_000, 300_000]),
    scheme=st.sampled_from(list(Scheme)),
    seed=st.integers(0, 2**16),
)
def test_random_workloads_keep_both_ends_consistent(
    creates: list[dict[str, Any]],
    loss: float,
    duplicate: float,
    jitter_ns: int,
    scheme: Scheme,
    seed: int,
) -> None:
    link = LinkParams(length_km=2.0, scheme=scheme, source_fidelity=0.95)
    nodes = (NodeParams(t2_s=0.05, t1_s=0.1), NodeParams(memory_depolar_rate_hz=5.0))
    pair = EgpPair(link=link, nodes=nodes, faults=Faults(loss, duplicate, jitter_ns), seed=seed)
    created = {}
    cancels: list[tuple[int, str, int]] = []
    to_cancel: set[tuple[str, int]] = set()

    def run_until(t: int) -> None:
        while cancels and cancels[0][0] <= t:
            due, node, cid = cancels.pop(0)
            pair.run(until_ns=due)
            pair.cancel(node, cid)
        pair.run(until_ns=t)

    for spec in creates:
        spec = dict(spec)
        node, wait = spec.pop("node"), spec.pop("wait_ns")
        cancel_after = spec.pop("cancel_after_ns")
        cid = pair.create(node, **spec)
        created[(node, cid)] = spec["number"]
        if cancel_after is not None:
            cancels.append((pair.now + cancel_after, node, cid))
            cancels.sort()
            to_cancel.add((node, cid))
        run_until(pair.now + wait)
    if cancels:
        run_until(cancels[-1][0])
    pair.run()
    check_invariants(pair, created)
    for node in (A, B):
        cancelled = {(e.origin, e.create_id) for e in pair.errs(node) if e.code is CANCELLED}
        assert cancelled <= to_cancel, "only what was cancelled ends CANCELLED"
    for node in (A, B):
        for ok in pair.oks(node):
            if ok.kind is Kind.MEASURE:
                assert ok.outcome in (0, 1)
                assert ok.basis is not None
                assert ok.qubit is None


# -- the lifecycle table ----------------------------------------------------------------------


@given(st.sampled_from(list(ReqState)), st.sampled_from(list(ReqInput)))
def test_every_state_and_input_is_defined_or_a_protocol_error(
    state: ReqState, event: ReqInput
) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) in ReqState
    else:
        with pytest.raises(ProtocolError, match=event.value):
            next_state(state, event)


def test_terminal_states_only_leave_by_expiry() -> None:
    for (state, event), _ in TRANSITIONS.items():
        if state in (ReqState.DONE, ReqState.FAILED):
            assert (state, event) == (ReqState.DONE, ReqInput.EXPIRE)


# -- messages ---------------------------------------------------------------------------------

_MESSAGES: list[PeerMessage] = [
    Ack((1, 2, 3)),
    QueueAdd(1, "bob", 2, 3, 0.9, -1, "keep", "Z", 7, 1),
    PairAssign(2, 5, "alice", 1, 0, 0.1),
    PairDiscard(3, (4, 5)),
    Purify(4, 6, 7, 0.1, 0.1, 1, 1000),
    PurifyResult(5, 6, 7, -1, 1200),
    Terminate(6, "alice", 1, "timeout", -1, -1, 0, "late"),
    Expire(7, "alice", 1, 0, 5),
    MemoryFull(8),
    Cancel(9, "bob", 3),
]


@pytest.mark.parametrize("msg", _MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip_through_dicts(msg: PeerMessage) -> None:
    assert message_from_dict(msg.to_dict()) == msg


@pytest.mark.parametrize(
    "data",
    [
        {"type": "nonsense"},
        {"no": "type"},
        {"type": "ack"},
        {"type": "ack", "msg_ids": [1, "x"]},
        {"type": "pair_discard", "msg_id": True, "seqs": []},
        {**_MESSAGES[2].to_dict(), "bright_state": float("nan")},
        {**_MESSAGES[6].to_dict(), "seq_first": 1.5},
    ],
)
def test_malformed_messages_are_protocol_errors(data: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        message_from_dict(data)


# -- errors -----------------------------------------------------------------------------------


def _core(node: str) -> EgpCore:
    other = B if node == A else A
    link = LinkParams(length_km=2.0)
    return EgpCore(EgpConfig(node, other, link, NodeParams(), NodeParams()), rng=random.Random(1))


def test_messages_of_the_wrong_role_are_protocol_errors() -> None:
    master, slave = _core(A), _core(B)
    with pytest.raises(ProtocolError, match="illegal at the master"):
        master.on_message(_MESSAGES[2], 0)  # PairAssign is the master's to send
    with pytest.raises(ProtocolError, match="illegal at the slave"):
        slave.on_message(_MESSAGES[5], 0)  # PurifyResult is the slave's to send


def test_peer_protocol_violations_are_protocol_errors() -> None:
    master, slave = _core(A), _core(B)
    with pytest.raises(ProtocolError, match="origin"):
        master.on_message(QueueAdd(1, "mallory", 1, 1, 0.5, -1, "keep", "Z", 0, 0), 0)
    master.on_message(QueueAdd(2, B, 1, 1, 0.5, -1, "keep", "Z", 0, 0), 0)
    with pytest.raises(ProtocolError, match="repeats"):
        master.on_message(QueueAdd(3, B, 1, 1, 0.5, -1, "keep", "Z", 0, 0), 0)
    with pytest.raises(ProtocolError, match="never assigned"):
        master.on_message(Expire(4, B, 1, 0, 1), 0)
    with pytest.raises(ProtocolError, match="no round"):
        master.on_message(PurifyResult(5, 1, 2, 0, 0), 0)
    with pytest.raises(ProtocolError, match="unknown request"):
        slave.on_message(PairAssign(1, 1, B, 99, 0, 0.1), 0)
    slave.on_message(QueueAdd(2, A, 1, 2, 0.5, -1, "keep", "Z", 0, 0), 0)
    with pytest.raises(ProtocolError, match="index"):
        slave.on_message(PairAssign(3, 1, A, 1, 5, 0.1), 0)
    with pytest.raises(ProtocolError, match="code"):
        slave.on_message(Terminate(4, A, 1, "bogus", -1, -1, 0, ""), 0)


def test_duplicates_are_acknowledged_again_but_applied_once() -> None:
    slave = _core(B)
    add = QueueAdd(7, A, 1, 2, 0.5, -1, "keep", "Z", 0, 0)
    slave.on_message(add, 0)
    slave.on_message(add, 10)  # would be a "repeats" ProtocolError if applied twice
    acks = [m for m in slave.pop_outputs() if isinstance(m, Ack)]
    assert [a.msg_ids for a in acks] == [(7,), (7,)]


@pytest.mark.parametrize(
    "change",
    [
        {"remote": "carol"},
        {"number": 0},
        {"min_fidelity": 1.5},
        {"min_fidelity": float("nan")},
        {"max_time_ns": -1},
        {"create_id": 3},
    ],
)
def test_local_misuse_is_invalid_argument(change: dict[str, Any]) -> None:
    core = _core(A)
    req = dataclasses.replace(CreateRequest(remote=B), **change)
    with pytest.raises(InvalidArgument):
        core.create(req, 0)


def test_driver_misuse_is_invalid_argument() -> None:
    core = _core(A)
    with pytest.raises(InvalidArgument, match="tag"):
        core.on_measured(42, 0, 0)
    core.on_herald(3, 10, 1, 0, 0)
    with pytest.raises(InvalidArgument, match="order"):
        core.on_herald(2, 11, 1, 0, 0)


def test_unsupported_names_the_gap() -> None:
    core = _core(B)
    cid = core.create(CreateRequest(remote=A, min_fidelity=1.0), 0)
    (err,) = core.pop_outputs()
    assert isinstance(err, CreateErr)
    assert (err.create_id, err.code, err.seq_range) == (cid, ErrorCode.UNSUPPORTED, None)
    assert "out of reach" in err.reason
