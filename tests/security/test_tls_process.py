"""Mutual TLS with real daemon processes: `qnet certs`, then `qnet up` of two_nodes with
``[security] tls = "on"`` on loopback.

- applications reach their nodes with the run directory's credential (``qnet.open_node``
  finds it by itself) and exchange messages and pairs; ``qnet status`` works too;
- refused: a client without a certificate (handshake), a certificate of another CA
  (handshake), a node's certificate at another node's Application or NodeAdmin service without
  the application token (PermissionDenied; with the token it is let in);
- refused: a peer holding a valid certificate of node eve that says Hello as bob
  (PermissionDenied, with the ``qnet-error`` metadata), while alice and bob stay linked;
- refused on qnet-channeld: registering under another node's name, using another node's
  session token, acting on another node's qubit (PermissionDenied);
- ``qnet up`` without a certs_dir makes a fresh set in the run directory (the CA key is not
  kept) and everything works with it.

The network is stopped whatever happens (``_up`` from test_circuits_process).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

import qnet
from qnet.api.remote import open_remote
from qnet.channel.client import NodeSession, open_channel_client, rpc_error_to_qnet
from qnet.daemon.control import open_daemon_client
from qnet.errors import PermissionDenied, Unreachable
from qnet.node import peer_wire
from qnet.runtime.grpc_bridge import close_channel, error_type_name, stream_stream
from qnet.security.certs import Authority, key_pem
from qnet.security.files import CA_CERT, CA_KEY
from qnet.security.identity import CHANNEL, Identity
from qnet.security.tls import ClientTLS, client_channel, load_app_client, load_credentials
from qnet.v1 import peer_pb2_grpc
from tests.process.test_circuits_process import _up
from tests.process.test_qnet_up import ROOT, Network
from tests.process.test_qnet_up import qnet as qnet_cli

pytestmark = pytest.mark.process

LIMIT_S = 20
TWO_NODES = ROOT / "examples" / "two_nodes.toml"
_PEM = Encoding.PEM
PORT = 9


def _topology(directory: Path, security: str) -> Path:
    path = directory / "two_nodes_tls.toml"
    path.write_text(TWO_NODES.read_text() + f"\n[security]\n{security}\n")
    return path


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    directory = tmp_path_factory.mktemp("tls")
    topology = _topology(directory, 'tls = "on"\ncerts_dir = "certs"')
    made = qnet_cli("certs", topology, "--out", directory / "certs")
    assert made.returncode == 0, made.stderr
    yield from _up(topology, tmp_path_factory)


def _certs(net: Network) -> Path:
    return Path(str(net.state["certs_dir"]))


def _issue(net: Network, identity: Identity) -> ClientTLS:
    """A valid certificate of the network for ``identity`` (the test holds the CA key)."""
    certs = _certs(net)
    key, cert = Authority.load(certs).issue(identity)
    root = (certs / CA_CERT).read_bytes()
    return ClientTLS(root, key_pem(key), cert.public_bytes(_PEM))


async def test_applications_work_over_mutual_tls(net: Network) -> None:
    run_dir = str(net.run_dir)
    with trio.fail_after(LIMIT_S):
        async with (
            qnet.open_node("alice", run_dir=run_dir) as alice,
            qnet.open_node("bob", run_dir=run_dir) as bob,
        ):
            server = bob.socket()
            await server.bind(PORT)
            await server.listen()
            client = alice.socket()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.connect, ("bob", PORT))
                conn, peer = await server.accept()
            assert peer[0] == "alice"
            await client.send(b"over tls")
            assert await conn.recv() == b"over tls"
            outcomes = []
            for _ in range(4):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.epr)
                    half = await conn.epr()
                outcomes.append(await half.measure("Z"))
            assert len(outcomes) == 4
            await client.close()
    status = qnet_cli("status", "--run-dir", net.run_dir)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "3/3 daemons healthy" in status.stdout


async def test_an_application_without_the_credential_is_refused(net: Network) -> None:
    certs = _certs(net)
    alice = net.address("alice")
    with trio.fail_after(LIMIT_S):
        # No certificate at all: the TLS handshake fails.
        with pytest.raises(Unreachable):
            async with open_remote(alice, None):
                pass
        # A certificate of another CA: the handshake fails too.
        stranger = Authority.create("elsewhere")
        key, cert = stranger.issue(Identity.node("bob"))
        root = (certs / CA_CERT).read_bytes()
        with pytest.raises(Unreachable):
            async with open_remote(alice, ClientTLS(root, key_pem(key), cert.public_bytes(_PEM))):
                pass
        # bob's own node certificate: a network member, but not an application of alice's.
        bob = load_credentials(certs, Identity.node("bob")).client(Identity.node("alice"))
        async with open_daemon_client(alice, bob) as as_bob:
            with pytest.raises(PermissionDenied, match="node bob is not an application"):
                await as_bob.status()
        with pytest.raises(PermissionDenied, match="not an application"):
            async with open_remote(alice, bob):
                pass
        # ... with the application token of the run directory it is let in.
        token = load_app_client(certs).token
        with_token = ClientTLS(bob.root_pem, bob.key_pem, bob.cert_pem, token)
        async with open_daemon_client(alice, with_token) as client:
            assert (await client.status()).node == "alice"


async def test_a_peer_cannot_claim_another_nodes_name(net: Network) -> None:
    eve = _issue(net, Identity.node("eve")).for_server(Identity.node("alice"))
    alice = net.address("alice")
    channel = client_channel(alice, eve)
    try:
        with trio.fail_after(LIMIT_S):
            async with stream_stream(
                peer_pb2_grpc.PeerStub(channel).Exchange,
                error_mapper=partial(rpc_error_to_qnet, where="alice"),
            ) as call:
                hello = peer_wire.hello("bob", 1, recipient="alice")
                await call.send(peer_wire.batch("bob", [hello]))
                with pytest.raises(
                    PermissionDenied, match="node eve may not open a stream"
                ) as info:
                    await anext(aiter(call))
            cause = info.value.__cause__
            assert isinstance(cause, grpc.Call)
            assert cause.code() == grpc.StatusCode.PERMISSION_DENIED
            assert isinstance(cause, grpc.RpcError)
            assert error_type_name(cause) == "PermissionDenied"
    finally:
        await close_channel(channel)
    # The real bob is still linked to alice.
    with trio.fail_after(LIMIT_S):
        async with open_daemon_client(alice, load_app_client(_certs(net))) as admin:
            status = await admin.status()
    assert [(n.peer, n.connected) for n in status.neighbours] == [("bob", True)]


async def test_a_node_cannot_act_on_another_nodes_qubits_on_channeld(net: Network) -> None:
    channel = net.state["channel"]
    assert isinstance(channel, dict)
    address = str(channel["address"])
    eve_tls = _issue(net, Identity.node("eve")).for_server(CHANNEL)
    mallory_tls = _issue(net, Identity.node("mallory")).for_server(CHANNEL)
    with trio.fail_after(LIMIT_S):
        async with open_channel_client(address) as plaintext:
            with pytest.raises(Unreachable):
                await plaintext.health()
        async with (
            open_channel_client(address, eve_tls) as as_eve,
            open_channel_client(address, mallory_tls) as as_mallory,
        ):
            with pytest.raises(PermissionDenied, match="node eve may not register as node alice"):
                await as_eve.register("alice", takeover=True)
            eve = await as_eve.register("eve")
            mallory = await as_mallory.register("mallory")
            (theirs,) = await mallory.allocate(1)
            with pytest.raises(PermissionDenied, match="belongs to another node"):
                await eve.measure(theirs)
            stolen = NodeSession(as_eve, "mallory", mallory.token)
            with pytest.raises(PermissionDenied, match="session of node mallory"):
                await stolen.free([theirs])
            assert await mallory.measure(theirs, keep=True) == 0
            await mallory.free([theirs])
    # alice's registration was never taken over: the network still works end to end.
    with trio.fail_after(LIMIT_S):
        async with qnet.open_node("alice", run_dir=str(net.run_dir)) as node:
            q = await node.qubit()
            assert await q.measure() == 0


@pytest.fixture
def auto_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from _up(_topology(tmp_path_factory.mktemp("auto"), 'tls = "on"'), tmp_path_factory)


async def test_qnet_up_makes_credentials_in_the_run_directory(auto_net: Network) -> None:
    certs = Path(str(auto_net.state["certs_dir"]))
    assert certs == auto_net.run_dir / "certs"
    assert (certs / CA_CERT).is_file()
    assert not (certs / CA_KEY).exists()
    with trio.fail_after(LIMIT_S):
        async with qnet.open_node("bob", run_dir=str(auto_net.run_dir)) as bob:
            q = await bob.qubit()
            await q.x()
            assert await q.measure() == 1
        with pytest.raises(Unreachable):
            async with open_remote(auto_net.address("bob"), None):
                pass
