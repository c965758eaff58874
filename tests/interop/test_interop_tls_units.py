"""The interop suite's TLS credentials (``qnet.interop.tls``): it reads the certificate directory
as plain files, so its names must agree with what ``qnet certs`` writes; credentials load (or
say which file is missing), and a handshake in this process checks server names, client
certificates and the application token.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from qnet.interop import targets, tls
from qnet.interop.cases_peer import new_spec_peer
from qnet.interop.registry import Context, Unsupported
from qnet.interop.spec_peer import SpecPeer
from qnet.interop.wire import VERSION, open_channel, status_of
from qnet.security.certs import write_network_certs
from qnet.security.files import APP_TOKEN, CA_CERT, file_stem
from qnet.security.identity import APP, CHANNEL, Identity
from qnet.topology import parse_topology
from qnet.v1 import node_pb2 as npb
from qnet.v1 import node_pb2_grpc as ngrpc

TOPOLOGY = """
[network]
name = "tlsunits"
[[node]]
name = "alice"
[[node]]
name = "bob"
[[node]]
name = "a0-spec"
[[link]]
between = ["alice", "bob"]
[[link]]
between = ["alice", "a0-spec"]
"""
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "net"
    write_network_certs(parse_topology(TOPOLOGY), out, keep_ca_key=False)
    return out


def test_names_agree_with_qnet_certs() -> None:
    assert tls.CA_CERT == CA_CERT
    assert tls.APP_TOKEN == APP_TOKEN
    assert file_stem(APP) == tls.APP
    assert file_stem(CHANNEL) == tls.CHANNELD
    assert tls.node_stem("a0-spec") == file_stem(Identity.node("a0-spec"))
    assert tls.node_server_name("a0-spec") == Identity.node("a0-spec").dns_name
    assert CHANNEL.dns_name == tls.CHANNELD_SERVER_NAME
    assert Identity.node("bob").uri == tls.NODE_URI_PREFIX + "bob"


def test_credentials_load_from_the_directory(certs: Path) -> None:
    cd = tls.CertDir(certs)
    assert cd.check() == ""
    token = (certs / APP_TOKEN).read_text().strip()
    app = cd.node_app("alice")
    assert (app.stem, app.server_name, app.token) == ("app", "node.alice.qnet", token)
    assert app.root == (certs / CA_CERT).read_bytes()
    assert app.cert == (certs / "app.pem").read_bytes()
    assert app.key == (certs / "app.key").read_bytes()
    assert app.options() == [("grpc.ssl_target_name_override", "node.alice.qnet")]
    as_slot = cd.as_node("a0-spec", tls.CHANNELD_SERVER_NAME)
    assert (as_slot.stem, as_slot.server_name, as_slot.token) == (
        "node-a0-spec",
        "channeld.qnet",
        None,
    )
    assert as_slot.cert == (certs / "node-a0-spec.pem").read_bytes()
    # Checking the dialed host instead of a name: no override.
    assert cd.app("").options() == []
    assert cd.has("node-bob")
    assert not cd.has("node-carol")


def test_missing_files_are_named(certs: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(certs, partial)
    (partial / "node-a0-spec.key").unlink()
    (partial / APP_TOKEN).unlink()
    cd = tls.CertDir(partial)
    with pytest.raises(tls.MissingCredential, match=r"node-a0-spec\.key"):
        cd.as_node("a0-spec", "node.alice.qnet")
    with pytest.raises(tls.MissingCredential, match=r"node-a0-spec\.key"):
        cd.node_server("a0-spec")
    assert not cd.has("node-a0-spec")
    # No token: the application certificate alone is the credential.
    assert cd.node_app("alice").token is None
    assert "does not exist" in tls.CertDir(tmp_path / "nowhere").check()
    (partial / CA_CERT).unlink()
    assert f"holds no {CA_CERT}" in cd.check()
    with pytest.raises(targets.TargetError, match=f"holds no {CA_CERT}"):
        targets.certs_dir(partial)


@dataclass
class _Seen:
    tokens: list[str] = field(default_factory=list)
    nodes: list[list[str]] = field(default_factory=list)


def _admin(seen: _Seen) -> grpc.GenericRpcHandler[Any, Any]:
    """A NodeAdmin that answers Health and notes who called (token, certificate)."""

    def health(request: npb.NodeHealthRequest, context: Any) -> npb.NodeHealthResponse:
        for key, value in context.invocation_metadata():
            if key == "authorization":
                seen.tokens.append(str(value))
        seen.nodes.append(tls.peer_nodes(context))
        return npb.NodeHealthResponse(protocol_version=VERSION, serving=True, node="alice")

    return grpc.method_handlers_generic_handler(
        "qnet.v1.NodeAdmin",
        {
            "Health": grpc.unary_unary_rpc_method_handler(
                health,
                request_deserializer=npb.NodeHealthRequest.FromString,
                response_serializer=npb.NodeHealthResponse.SerializeToString,
            )
        },
    )


@pytest.fixture
def alice(certs: Path) -> Iterator[tuple[str, _Seen]]:
    """A server with node alice's certificate, requiring client certificates of the CA."""
    seen = _Seen()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_admin(seen),))
    port = server.add_secure_port("127.0.0.1:0", tls.CertDir(certs).node_server("alice"))
    server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.stop(grace=None).wait(5.0)


def _health(address: str, cred: tls.ClientCredential | grpc.ChannelCredentials) -> str:
    if isinstance(cred, tls.ClientCredential):
        channel = open_channel(address, cred)
    else:
        channel = grpc.secure_channel(
            address, cred, options=[("grpc.ssl_target_name_override", "node.alice.qnet")]
        )
    with channel:
        reply = ngrpc.NodeAdminStub(channel).Health(
            npb.NodeHealthRequest(protocol_version=VERSION), timeout=TIMEOUT_S
        )
    return str(reply.node)


def test_handshakes_check_names_certificates_and_send_the_token(
    certs: Path, alice: tuple[str, _Seen]
) -> None:
    address, seen = alice
    cd = tls.CertDir(certs)
    token = (certs / APP_TOKEN).read_text().strip()
    assert _health(address, cd.node_app("alice")) == "alice"
    assert seen.tokens == [f"Bearer {token}"]
    assert seen.nodes == [[]]  # the application certificate names no node
    # Dialed by host (loopback is in every certificate) and as node bob toward alice.
    assert _health(address, cd.app("")) == "alice"
    assert _health(address, cd.as_node("bob", tls.node_server_name("alice"))) == "alice"
    assert seen.nodes[-1] == ["bob"]
    # alice's certificate does not pass for bob's server.
    with pytest.raises(grpc.RpcError) as wrong_name:
        _health(address, cd.node_app("bob"))
    assert status_of(wrong_name.value).code is grpc.StatusCode.UNAVAILABLE
    # The server requires a client certificate.
    anonymous = grpc.ssl_channel_credentials((certs / CA_CERT).read_bytes())
    with pytest.raises(grpc.RpcError) as no_cert:
        _health(address, anonymous)
    assert status_of(no_cert.value).code is grpc.StatusCode.UNAVAILABLE
    assert len(seen.nodes) == 3


def test_run_dir_with_certs(tmp_path: Path, certs: Path) -> None:
    state = {
        "version": 1,
        "network": "tlsunits",
        "channel": {"address": "127.0.0.1:5", "pid": os.getpid()},
        "nodes": {"alice": {"address": "127.0.0.1:6", "pid": os.getpid()}},
        "certs_dir": str(certs),
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    got = targets.from_run_dir(tmp_path)
    assert got.certs == tls.CertDir(certs)
    other = tls.CertDir(tmp_path / "other")
    assert targets.from_run_dir(tmp_path, other).certs == other  # --certs overrides
    state["certs_dir"] = str(tmp_path / "gone")
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(targets.TargetError, match="does not exist"):
        targets.from_run_dir(tmp_path)
    del state["certs_dir"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert targets.from_run_dir(tmp_path).certs is None


def test_spec_peer_without_its_slot_key_is_unsupported(certs: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(certs, partial)
    (partial / "node-a0-spec.key").unlink()
    slot = targets.Slot("a0-spec", "alice")
    # Nothing is opened before the credentials are read, so nothing is left to close.
    with pytest.raises(tls.MissingCredential, match="plays slot a0-spec"):
        SpecPeer(slot, "127.0.0.1:6", certs=tls.CertDir(partial))
    tgts = targets.Targets(
        {"alice": "127.0.0.1:6"},
        slots=[slot, targets.Slot("zz-spec", "alice")],
        certs=tls.CertDir(partial),
    )
    ctx = Context(tgts, deadline=float("inf"))
    with pytest.raises(Unsupported, match=r"node-a0-spec\.key"):
        new_spec_peer(ctx, slot)
    # A slot whose credential is there comes first (zz-spec has none either: kept in order).
    assert [s.name for s in ctx.slots()] == ["a0-spec", "zz-spec"]
    (partial / "node-zz-spec.pem").write_bytes((certs / "node-bob.pem").read_bytes())
    (partial / "node-zz-spec.key").write_bytes((certs / "node-bob.key").read_bytes())
    assert ctx.slot().name == "zz-spec"
    assert ctx.slot(master=True).name == "a0-spec"
