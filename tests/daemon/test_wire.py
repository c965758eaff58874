"""Checks of what clients send a node daemon, and of the addresses it is given."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from qnet.daemon import wire
from qnet.daemon.config import NodeDaemonConfig, rto_ns, split_address
from qnet.errors import InvalidArgument, VersionMismatch
from qnet.link.events import BasisChoice, CreateErr, CreateRequest, ErrorCode, Kind, PairOk
from qnet.physical.gates import Basis
from qnet.v1 import channel_pb2
from qnet.v1 import node_pb2 as pb


def _req(**fields: object) -> pb.LinkCreateRequest:
    base: dict[str, object] = {
        "protocol_version": 1,
        "remote": "bob",
        "number": 2,
        "kind": pb.PAIR_KIND_MEASURE,
    }
    return pb.LinkCreateRequest(**(base | fields))  # type: ignore[arg-type]


def test_a_good_request() -> None:
    request = wire.create_request_from_wire(
        _req(min_fidelity=0.8, max_time_ns=10, basis=pb.LINK_BASIS_RANDOM, purpose=-3, priority=2)
    )
    assert request == CreateRequest(
        remote="bob",
        number=2,
        min_fidelity=0.8,
        max_time_ns=10,
        kind=Kind.MEASURE,
        basis=BasisChoice.RANDOM,
        purpose=-3,
        priority=2,
    )
    assert wire.create_request_from_wire(_req()).basis is BasisChoice.Z  # unspecified: Z


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"protocol_version": 0}, VersionMismatch, "version 0"),
        ({"remote": ""}, InvalidArgument, "remote must name"),
        ({"number": 0}, InvalidArgument, "number must be at least 1"),
        ({"min_fidelity": math.nan}, InvalidArgument, "min_fidelity"),
        ({"min_fidelity": -0.1}, InvalidArgument, "min_fidelity"),
        ({"max_time_ns": 2**63}, InvalidArgument, "max_time_ns"),
        ({"kind": pb.PAIR_KIND_UNSPECIFIED}, InvalidArgument, "kind 0 is not a pair kind"),
        ({"kind": 7}, InvalidArgument, "kind 7"),
        ({"basis": 9}, InvalidArgument, "basis 9 does not exist"),
    ],
)
def test_bad_requests_name_the_field(
    fields: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        wire.create_request_from_wire(_req(**fields))


def test_events_to_wire() -> None:
    ok = PairOk("alice", 4, 9, ("alice|bob", 17), Kind.MEASURE, None, 1, Basis.X, 3, 0.9, 50, 2)
    msg = wire.ok_event(ok).ok
    assert (msg.origin, msg.create_id, msg.purpose) == ("alice", 4, 9)
    assert (msg.link_id, msg.sequence, msg.qubit) == ("alice|bob", 17, 0)
    assert (msg.outcome, msg.basis, msg.bell_index) == (1, channel_pb2.BASIS_X, 3)
    assert (msg.fidelity_estimate, msg.estimate_time_ns, msg.index_in_request) == (0.9, 50, 2)
    err = wire.err_event(CreateErr("bob", 1, ErrorCode.EXPIRED, (3, 5), "lost")).err
    assert (err.code, err.seq_range.first, err.seq_range.last) == (
        pb.LINK_ERROR_CODE_EXPIRED,
        3,
        5,
    )
    assert set(wire.ERROR_CODE_TO_WIRE) == set(ErrorCode)


def test_addresses() -> None:
    assert split_address("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert split_address("[::1]:7") == ("::1", 7)
    for bad in ("nowhere", ":5", "h:0", "h:65536", "h:x", "bad host:5"):
        with pytest.raises(InvalidArgument, match="--channel"):
            split_address(bad, what="--channel")


def test_config_checks() -> None:
    with pytest.raises(InvalidArgument, match="--channel must be HOST:PORT"):
        NodeDaemonConfig(node="a", topology=Path("t.toml"), channel="x")
    with pytest.raises(InvalidArgument, match="channel_timeout_s"):
        NodeDaemonConfig(node="a", topology=Path("t.toml"), channel="h:1", channel_timeout_s=0)
    # 20 ms of wall time at a time scale of 0.05 is 1 ms of physical time.
    assert rto_ns(0.020, 0.05) == 1_000_000
