"""A node can never act on another node's qubits on qnet-channeld, whatever it sends.

qnet-channeld runs in-process, over real gRPC on loopback:

- TLS off: a session of node A names B's qubits in every kind of request (single calls and an
  Execute batch) and is refused with PermissionDenied; B's qubit is untouched and still B's;
- TLS on: each request must come from a node's certificate, a node registers only as itself,
  a session serves only the node whose certificate registered it (a stolen token is useless),
  and a client without a certificate of the network does not get through the handshake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest
import trio
from cryptography.hazmat.primitives import serialization

from qnet import errors
from qnet.channel.client import ChannelClient, NodeSession, open_channel_client
from qnet.channel.service import ChannelDaemonConfig, run_channel_daemon
from qnet.physical.gates import Basis, GateName
from qnet.physical.params import LinkParams, NodeParams
from qnet.security.certs import Authority, key_pem, write_network_certs
from qnet.security.files import CA_CERT
from qnet.security.identity import CHANNEL, Identity
from qnet.security.tls import ClientTLS, load_app_client, load_credentials
from qnet.topology import parse_topology
from qnet.v1 import channel_pb2 as pb

LIMIT_S = 20
TOPOLOGY = """
[network]
name = "trio"
[security]
tls = "on"
[[node]]
name = "alice"
[[node]]
name = "bob"
[[link]]
between = ["alice", "bob"]
"""

Opener = Callable[[ClientTLS | None], AbstractAsyncContextManager[ChannelClient]]


def _status(exc: BaseException) -> grpc.StatusCode:
    cause = exc.__cause__
    assert isinstance(cause, grpc.Call)
    code: grpc.StatusCode = cause.code()
    return code


async def _foreign_requests_refused(mine: NodeSession, other: NodeSession) -> None:
    """``mine`` names ``other``'s qubit in every kind of request; each is PermissionDenied and
    the qubit stays ``other``'s, untouched."""
    (theirs,) = await other.allocate(1)
    (own,) = await mine.allocate(1)
    attempts: dict[str, Callable[[], Awaitable[object]]] = {
        "measure": lambda: mine.measure(theirs, Basis.Z),
        "gate": lambda: mine.gate(GateName.X, theirs),
        "two-qubit gate": lambda: mine.gate(GateName.CNOT, own, theirs),
        "bell measure": lambda: mine.bell_measure(own, theirs),
        "free": lambda: mine.free([theirs]),
        "arm": lambda: mine.start_generation(other.node, [theirs]),
    }
    for what, attempt in attempts.items():
        with pytest.raises(errors.PermissionDenied) as info:
            await attempt()
        assert _status(info.value) == grpc.StatusCode.PERMISSION_DENIED, what
    batch = await mine.execute([pb.Operation(measure=pb.MeasureOp(qubit=theirs, basis=pb.BASIS_Z))])
    assert batch.failure.error_type == "PermissionDenied"
    # Untouched: still |0>, still the other node's to use and free.
    assert await other.measure(theirs, Basis.Z, keep=True) == 0
    await other.free([theirs])
    await mine.free([own])


@pytest.fixture
async def plain(nursery: trio.Nursery) -> AsyncIterator[ChannelClient]:
    port, _ = await nursery.start(run_channel_daemon, ChannelDaemonConfig(seed=3))
    async with open_channel_client(f"127.0.0.1:{port}") as client:
        yield client
    nursery.cancel_scope.cancel()


async def test_without_tls_a_session_cannot_touch_another_nodes_qubits(
    plain: ChannelClient,
) -> None:
    with trio.fail_after(LIMIT_S):
        alice = await plain.register("alice", NodeParams(memory_qubits=4))
        bob = await plain.register("bob", NodeParams(memory_qubits=4))
        await alice.declare_link("bob", LinkParams(length_km=1))
        await _foreign_requests_refused(alice, bob)
        await _foreign_requests_refused(bob, alice)
        assert (await plain.health()).qubits_in_use == 0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "net"
    write_network_certs(parse_topology(TOPOLOGY), out)
    return out


@pytest.fixture
async def tls_backend(nursery: trio.Nursery, certs: Path) -> AsyncIterator[Opener]:
    config = ChannelDaemonConfig(seed=3, certs=certs)
    port, _ = await nursery.start(run_channel_daemon, config)

    def opener(tls: ClientTLS | None) -> AbstractAsyncContextManager[ChannelClient]:
        return open_channel_client(f"127.0.0.1:{port}", tls)

    yield opener
    nursery.cancel_scope.cancel()


def _node(certs: Path, name: str) -> ClientTLS:
    return load_credentials(certs, Identity.node(name)).client(CHANNEL)


async def test_with_tls_a_node_registers_and_acts_only_as_itself(
    tls_backend: Opener, certs: Path
) -> None:
    with trio.fail_after(LIMIT_S):
        async with (
            tls_backend(_node(certs, "alice")) as as_alice,
            tls_backend(_node(certs, "bob")) as as_bob,
        ):
            alice = await as_alice.register("alice", NodeParams(memory_qubits=4))
            bob = await as_bob.register("bob", NodeParams(memory_qubits=4))
            await alice.declare_link("bob", LinkParams(length_km=1))
            # A node's own certificate, someone else's name: refused, and bob stays registered.
            with pytest.raises(errors.PermissionDenied, match="node alice may not register"):
                await as_alice.register("bob", takeover=True)
            # bob's session token sent over alice's connection: the token is not enough.
            stolen = NodeSession(as_alice, "bob", bob.token)
            with pytest.raises(errors.PermissionDenied, match="session of node bob"):
                await stolen.allocate(1)
            (qubit,) = await bob.allocate(1)
            with pytest.raises(errors.PermissionDenied) as info:
                await stolen.measure(qubit)
            assert _status(info.value) == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(errors.PermissionDenied):  # the whole batch, on a stream
                await stolen.execute(
                    [pb.Operation(measure=pb.MeasureOp(qubit=qubit, basis=pb.BASIS_Z))]
                )
            with pytest.raises(errors.PermissionDenied):
                async with stolen.heralds():
                    pass
            # Its own session, bob's qubits: the ownership rule, as without TLS.
            await _foreign_requests_refused(alice, bob)
            await bob.free([qubit])
            # The application credential is not a node: it may look, not register.
            async with tls_backend(load_app_client(certs)) as as_app:
                assert (await as_app.health()).nodes == 2
                with pytest.raises(errors.PermissionDenied, match="app may not register"):
                    await as_app.register("carol")


async def test_with_tls_a_client_without_a_network_certificate_is_refused(
    tls_backend: Opener, certs: Path
) -> None:
    with trio.fail_after(LIMIT_S):
        # Plaintext, or TLS with a certificate from another CA: the handshake fails and the
        # RPC never reaches a handler.
        stranger = Authority.create("elsewhere")
        key, cert = stranger.issue(Identity.node("alice"))
        forged = ClientTLS(
            (certs / CA_CERT).read_bytes(),
            key_pem(key),
            cert.public_bytes(serialization.Encoding.PEM),
            server_name=CHANNEL.dns_name,
        )
        for tls in (None, forged):
            async with tls_backend(tls) as client:
                with pytest.raises(errors.Unreachable):
                    await client.register("alice")
        # The backend still serves the network's nodes.
        async with tls_backend(_node(certs, "alice")) as as_alice:
            session = await as_alice.register("alice")
            assert session.node == "alice"
