"""GrpcPeerTransport between real gRPC servers on loopback: batching, order, reconnection,
refusals, malformed input, shutdown."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import grpc
import pytest
import trio

from qnet.channel.client import rpc_error_to_qnet
from qnet.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProtocolError,
    VersionMismatch,
)
from qnet.link.events import Ack, MemoryFull, PairAssign, PeerMessage, QueueAdd, Terminate
from qnet.network.routing_events import AdvertLink, LinkStateAdvert, RoutingHello
from qnet.node import peer_wire
from qnet.node.grpc_transport import GrpcPeerTransport, TransportStats
from qnet.node.peer_wire import WireMessage
from qnet.runtime.grpc_bridge import (
    TrioGrpcBridge,
    close_channel,
    insecure_channel,
    serve,
    stream_stream,
    unary_call,
)
from qnet.v1 import node_pb2
from qnet.v1 import peer_pb2 as pb
from qnet.v1 import peer_pb2_grpc as pb_grpc

LIMIT_S = 20

EXAMPLES: list[PeerMessage] = [
    QueueAdd(1, "alice", 1, 3, 0.9, -1, "keep", "Z", 0, 0),
    Ack((4, 5)),
    PairAssign(2, 17, "alice", 1, 0, 0.1),
    Terminate(3, "alice", 1, "", 17, 19, 3, ""),
    MemoryFull(4),
]


class Daemon:
    """One node's gRPC server and peer transport, startable and stoppable like a process."""

    def __init__(self, transport: GrpcPeerTransport) -> None:
        self.transport = transport
        self.batches: list[tuple[str, list[WireMessage]]] = []
        #: What the transport reported to ``link_changed``, in order.
        self.link_changes: list[tuple[str, bool]] = []
        #: What the transport reported to ``peer_restarted``, with how many batches had come.
        self.restarts: list[tuple[str, int]] = []
        self.port = 0
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def received(self, sender: str) -> list[WireMessage]:
        return [m for s, batch in self.batches if s == sender for m in batch]

    def deliver(self, sender: str, messages: Sequence[WireMessage]) -> None:
        self.batches.append((sender, list(messages)))

    def link_changed(self, peer: str, up: bool) -> None:
        self.link_changes.append((peer, up))

    def peer_restarted(self, peer: str) -> None:
        self.restarts.append((peer, len(self.batches)))

    async def start(self, nursery: trio.Nursery, port: int = 0) -> None:
        self._stopped = trio.Event()
        await nursery.start(self._run, port)

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()

    async def _run(self, port: int, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with trio.CancelScope() as self._scope:
                handler = self.transport.handlers(TrioGrpcBridge())

                def register(server: grpc.Server) -> None:
                    server.add_generic_rpc_handlers((handler,))

                async with trio.open_nursery() as nursery:
                    self.port = await nursery.start(partial(serve, register, port=port, grace=0.1))
                    await nursery.start(
                        partial(
                            self.transport.run,
                            self.deliver,
                            link_changed=self.link_changed,
                            peer_restarted=self.peer_restarted,
                        )
                    )
                    task_status.started()
        finally:
            self._stopped.set()

    async def wait_received(self, sender: str, count: int) -> TransportStats:
        return await self.transport.wait_until(lambda s: s.peers[sender].messages_received >= count)


@asynccontextmanager
async def network(
    links: Sequence[tuple[str, str]], **options: Any
) -> AsyncGenerator[dict[str, Daemon], None]:
    """Daemons for the nodes of ``links``, started with unknown addresses, then told them."""
    names = sorted({n for link in links for n in link})
    neighbours = {n: {b if a == n else a: "" for a, b in links if n in (a, b)} for n in names}
    daemons = {n: Daemon(GrpcPeerTransport(n, neighbours[n], **options)) for n in names}
    async with trio.open_nursery() as nursery:
        for daemon in daemons.values():
            await daemon.start(nursery)
        for name, daemon in daemons.items():
            for peer in neighbours[name]:
                daemon.transport.set_peer_address(peer, daemons[peer].address)
        yield daemons
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def lone_bob() -> AsyncGenerator[Daemon, None]:
    """bob, whose neighbour alice is not running: a test client plays alice."""
    async with trio.open_nursery() as nursery:
        bob = Daemon(GrpcPeerTransport("bob", {"alice": ""}))
        await bob.start(nursery)
        yield bob
        nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_order_within_a_batch_is_kept_both_ways() -> None:
    with trio.fail_after(LIMIT_S):
        async with network([("alice", "bob")]) as nodes:
            alice, bob = nodes["alice"], nodes["bob"]
            await alice.transport.wait_connected()
            await bob.transport.wait_connected()
            alice.transport.send("bob", EXAMPLES)
            bob.transport.send("alice", EXAMPLES[::-1])
            await bob.wait_received("alice", len(EXAMPLES))
            await alice.wait_received("bob", len(EXAMPLES))
            assert bob.batches == [("alice", EXAMPLES)]
            assert alice.batches == [("bob", EXAMPLES[::-1])]
            sent = alice.transport.stats().peers["bob"]
            assert (sent.messages_sent, sent.batches_sent, sent.dropped) == (5, 1, 0)


async def test_many_quick_messages_travel_in_fewer_batches() -> None:
    count = 2_000
    with trio.fail_after(LIMIT_S):
        async with network([("alice", "bob")]) as nodes:
            alice, bob = nodes["alice"], nodes["bob"]
            await alice.transport.wait_connected()
            for i in range(count):
                alice.transport.send("bob", [Ack((i,))])
                if i % 50 == 0:
                    await trio.lowlevel.checkpoint()  # let the shipping task take a batch
            stats = await bob.wait_received("alice", count)
            assert bob.received("alice") == [Ack((i,)) for i in range(count)]
            got = stats.peers["alice"]
            sent = alice.transport.stats().peers["bob"]
            assert 1 < got.batches_received < count
            assert (sent.messages_sent, sent.batches_sent) == (count, got.batches_received)
            assert sent.dropped == got.malformed == 0


async def test_neighbour_that_starts_later_is_reached() -> None:
    port = free_port()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            alice = Daemon(GrpcPeerTransport("alice", {"bob": f"127.0.0.1:{port}"}))
            started = trio.current_time()
            await alice.start(nursery)
            await alice.transport.wait_until(lambda s: s.peers["bob"].reconnects >= 3)
            # Backed off, not spinning: 50 + 100 + 200 ms at least between the four attempts.
            assert trio.current_time() - started >= 0.35
            assert not alice.transport.connected("bob")
            assert "Unreachable" in alice.transport.stats().peers["bob"].last_error
            alice.transport.send("bob", EXAMPLES)  # held until bob is there

            bob = Daemon(GrpcPeerTransport("bob", {"alice": alice.address}))
            await bob.start(nursery, port)
            await alice.transport.wait_connected(["bob"])
            await bob.wait_received("alice", len(EXAMPLES))
            assert bob.received("alice") == EXAMPLES
            nursery.cancel_scope.cancel()


async def test_neighbour_that_goes_away_and_comes_back_is_reached_again() -> None:
    with trio.fail_after(LIMIT_S):
        async with network([("alice", "bob")]) as nodes, trio.open_nursery() as nursery:
            alice, bob = nodes["alice"], nodes["bob"]
            await alice.transport.wait_connected()
            alice.transport.send("bob", EXAMPLES[:1])
            await bob.wait_received("alice", 1)

            await bob.stop()
            await alice.transport.wait_until(lambda s: not s.peers["bob"].connected)
            alice.transport.send("bob", EXAMPLES[1:])  # queued while bob is away

            bob2 = Daemon(GrpcPeerTransport("bob", {"alice": alice.address}))
            await bob2.start(nursery, bob.port)  # a restarted daemon, same address
            await alice.transport.wait_connected(["bob"])
            # What was queued for the old bob is dropped (counted): the new process would
            # read it with the old one's message ids. What is sent now goes to the new bob.
            assert alice.transport.stats().peers["bob"].dropped == len(EXAMPLES) - 1
            alice.transport.send("bob", EXAMPLES[1:])
            await bob2.wait_received("alice", len(EXAMPLES) - 1)
            assert bob2.received("alice") == EXAMPLES[1:]
            # bob2 dialed alice too: alice accepted it in place of the stream of the old bob.
            await bob2.transport.wait_connected(["alice"])
            bob2.transport.send("alice", [Ack((99,))])
            await alice.wait_received("bob", 1)
            assert alice.received("bob") == [Ack((99,))]
            # The new bob's Hello named a new process (the first bob's did not count as a
            # restart), heard before anything the new one sent.
            assert alice.restarts == [("bob", 0)]
            assert bob2.restarts == []
            stats = alice.transport.stats().peers["bob"]
            assert stats.connects == 2
            assert stats.reconnects >= 1
            nursery.cancel_scope.cancel()


async def test_routing_messages_and_link_changes() -> None:
    """Routing and link messages share the stream; the transport tells the node when its
    stream to a neighbour is answered and when it breaks (routing's link_up / link_down)."""
    mixed: list[WireMessage] = [
        RoutingHello("alice", 1, (), 100, 400, 0.8),
        EXAMPLES[0],
        LinkStateAdvert("alice", 2, 5, 8, (AdvertLink("bob", 10.0, 0.9),)),
    ]
    with trio.fail_after(LIMIT_S):
        async with network([("alice", "bob")]) as nodes:
            alice, bob = nodes["alice"], nodes["bob"]
            await alice.transport.wait_connected()
            await bob.transport.wait_connected()
            assert alice.link_changes == [("bob", True)]
            alice.transport.send("bob", mixed)
            await bob.wait_received("alice", len(mixed))
            assert bob.received("alice") == mixed

            await bob.stop()
            await alice.transport.wait_until(lambda s: not s.peers["bob"].connected)
            assert alice.link_changes == [("bob", True), ("bob", False)]
            assert bob.link_changes == [("alice", True), ("alice", False)]


async def test_unknown_sender_is_refused() -> None:
    with trio.fail_after(LIMIT_S):
        async with network([("alice", "bob")]) as nodes, trio.open_nursery() as nursery:
            bob = nodes["bob"]
            carol = Daemon(GrpcPeerTransport("carol", {"bob": bob.address}))
            await carol.start(nursery)
            carol.transport.send("bob", EXAMPLES)
            stats = await carol.transport.wait_until(
                lambda s: "PermissionDenied" in s.peers["bob"].last_error
            )
            assert "'carol' is not a neighbour" in stats.peers["bob"].last_error
            assert not carol.transport.connected("bob")
            assert stats.peers["bob"].queued == len(EXAMPLES)  # held, never sent
            assert bob.transport.stats().refused >= 1
            assert bob.batches == []
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_exchange(
    address: str,
) -> AsyncGenerator[tuple[grpc.Channel, pb_grpc.PeerStub], None]:
    channel = insecure_channel(address)
    try:
        yield channel, pb_grpc.PeerStub(channel)
    finally:
        await close_channel(channel)


@pytest.mark.parametrize(
    ("first", "error", "match"),
    [
        (pb.PeerBatch(protocol_version=2, sender="alice"), VersionMismatch, "version 2"),
        (
            peer_wire.batch("mallory", [peer_wire.hello("mallory", 1, "bob")]),
            PermissionDenied,
            "'mallory' is not a neighbour",
        ),
        (
            peer_wire.batch("alice", [peer_wire.hello("alice", 1, "carol")]),
            FailedPrecondition,
            "alice means to reach 'carol'",
        ),
        (
            peer_wire.batch("alice", [peer_wire.to_wire(Ack((1,)))]),
            ProtocolError,
            "does not start with a Hello",
        ),
    ],
    ids=["version", "stranger", "recipient", "no-hello"],
)
async def test_bad_first_batch_refuses_the_stream_with_a_typed_error(
    first: pb.PeerBatch, error: type[Exception], match: str
) -> None:
    with trio.fail_after(LIMIT_S):
        async with lone_bob() as bob:
            async with raw_exchange(bob.address) as (_, stub):
                mapper = partial(rpc_error_to_qnet, where="bob")
                async with stream_stream(stub.Exchange, error_mapper=mapper) as call:
                    await call.send(first)
                    with pytest.raises(error, match=match):
                        await anext(aiter(call))
            assert bob.transport.stats().refused == 1
            assert bob.batches == []


async def test_malformed_first_batch_refuses_the_stream() -> None:
    with trio.fail_after(LIMIT_S):
        async with lone_bob() as bob:
            async with raw_exchange(bob.address) as (channel, _):
                raw = channel.stream_stream("/qnet.v1.Peer/Exchange", None, None)
                mapper = partial(rpc_error_to_qnet, where="bob")
                async with stream_stream(raw, error_mapper=mapper) as call:
                    await call.send(b"\xff\xff not a PeerBatch")
                    with pytest.raises(InvalidArgument, match=r"malformed qnet\.v1\.PeerBatch"):
                        await anext(aiter(call))
            assert bob.transport.stats().refused == 1


async def test_malformed_input_is_dropped_and_counted() -> None:
    with trio.fail_after(LIMIT_S):
        async with lone_bob() as bob:
            hello = peer_wire.batch("alice", [peer_wire.hello("alice", 7, "bob")])
            nan_add = pb.PeerMessage(link_queue_add=pb.LinkQueueAdd(min_fidelity=float("nan")))
            mixed = peer_wire.batch(
                "alice", [nan_add, peer_wire.to_wire(Ack((1,))), pb.PeerMessage()]
            ).SerializeToString()
            # A message of a case bob does not know (field 64 of PeerMessage, network layer).
            mixed += b"\x1a\x03\x82\x04\x00"
            async with raw_exchange(bob.address) as (channel, _):
                raw = channel.stream_stream("/qnet.v1.Peer/Exchange", None, pb.PeerBatch.FromString)
                async with stream_stream(raw) as call:
                    await call.send(hello.SerializeToString())
                    answer = await anext(aiter(call))
                    assert answer.sender == "bob"
                    assert answer.messages[0].hello.sequence == 7  # echoed
                    await call.send(b"\xff\xff not a PeerBatch")
                    await call.send(mixed)
                    last = peer_wire.batch("alice", [peer_wire.to_wire(Ack((2,)))])
                    await call.send(last.SerializeToString())
                    stats = await bob.wait_received("alice", 2)
            assert bob.batches == [("alice", [Ack((1,))]), ("alice", [Ack((2,))])]
            assert stats.peers["alice"].malformed == 4
            assert stats.refused == 0


async def test_connected_and_wait_connected_in_a_chain() -> None:
    with trio.fail_after(LIMIT_S):
        async with network([("a", "b"), ("b", "c")]) as nodes:
            a, b, c = nodes["a"], nodes["b"], nodes["c"]
            with pytest.raises(NotFound, match="not neighbours: c"):
                await a.transport.wait_connected(["b", "c"])
            await b.transport.wait_connected()  # every neighbour
            assert b.transport.connected("a")
            assert b.transport.connected("c")
            await a.transport.wait_connected(["b"])
            await c.transport.wait_connected(["b"])
            assert not a.transport.connected("c")  # not a neighbour
            assert b.transport.stats().peers["a"].address == a.address

            await c.stop()
            await b.transport.wait_until(lambda s: not s.peers["c"].connected)
            assert b.transport.connected("a")
            assert not c.transport.connected("b")
            assert not c.transport.stats().running


async def test_new_neighbour_and_new_address_are_dialed_at_once() -> None:
    with trio.fail_after(LIMIT_S):
        async with network([("alice", "bob")]) as nodes, trio.open_nursery() as nursery:
            alice = nodes["alice"]
            carol = Daemon(GrpcPeerTransport("carol", {"alice": alice.address}))
            await carol.start(nursery)
            # A neighbour added to a running transport, first at a wrong address (bob's).
            alice.transport.set_peer_address("carol", nodes["bob"].address)
            stats = await alice.transport.wait_until(
                lambda s: "FailedPrecondition" in s.peers["carol"].last_error
            )
            assert "means to reach 'carol'" in stats.peers["carol"].last_error
            alice.transport.set_peer_address("carol", carol.address)
            await alice.transport.wait_connected(["carol"])
            await carol.transport.wait_connected(["alice"])
            alice.transport.send("carol", EXAMPLES)
            await carol.wait_received("alice", len(EXAMPLES))
            assert carol.received("alice") == EXAMPLES
            nursery.cancel_scope.cancel()


async def test_full_queue_drops_the_oldest() -> None:
    transport = GrpcPeerTransport("alice", {"bob": ""}, max_queue=10)
    with pytest.raises(NotFound, match="'carol' is not a neighbour"):
        transport.send("carol", [Ack((1,))])
    with pytest.raises(InvalidArgument, match=r"cannot encode Ack\.msg_ids"):
        transport.send("bob", [Ack((1,)), Ack((-1,))])
    for i in range(25):
        transport.send("bob", [Ack((i,))])
    stats = transport.stats().peers["bob"]
    assert (stats.queued, stats.dropped, stats.connected) == (10, 15, False)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            bob = Daemon(GrpcPeerTransport("bob", {"alice": ""}))
            await bob.start(nursery)
            alice = Daemon(transport)
            await alice.start(nursery)
            transport.set_peer_address("bob", bob.address)
            await bob.wait_received("alice", 10)
            assert bob.received("alice") == [Ack((i,)) for i in range(15, 25)]
            nursery.cancel_scope.cancel()


async def test_health_answers_for_the_node() -> None:
    with trio.fail_after(LIMIT_S):
        async with (
            network([("alice", "bob")]) as nodes,
            raw_exchange(nodes["bob"].address) as (_, stub),
        ):
            request = node_pb2.NodeHealthRequest(protocol_version=1)
            response = await unary_call(stub.Health, request)
    assert (response.protocol_version, response.serving, response.node) == (1, True, "bob")


def _our_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    # trio's thread cache keeps idle workers for a while by design; they are not ours.
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]


async def test_stopping_leaves_no_threads_or_streams() -> None:
    before = set(threading.enumerate())
    with trio.fail_after(LIMIT_S):
        async with network([("alice", "bob")]) as nodes:
            alice, bob = nodes["alice"], nodes["bob"]
            await alice.transport.wait_connected()
            await bob.transport.wait_connected()
            alice.transport.send("bob", EXAMPLES)
            await bob.wait_received("alice", len(EXAMPLES))
            await alice.stop()  # the transport first, with bob still up and connected
            assert not alice.transport.stats().running
            await bob.transport.wait_until(lambda s: not s.peers["alice"].connected)
        for thread in _our_threads(before):
            await trio.to_thread.run_sync(thread.join, 5)
    assert [t.name for t in _our_threads(before)] == []
