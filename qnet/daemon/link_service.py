"""The LinkLayer service of node.proto: the link layer's CREATE for clients outside the daemon.

One dispatcher task per link reads every OK and ERR the node driver delivers on that link and
routes it: events of this node's own requests go to the ``LinkCreate`` stream that issued
them (by create id), events of the neighbour's requests to every open ``LinkEvents`` stream
of that link. A KEEP qubit handed to a stream is *held for clients* until one measures
(``MeasureQubit``) or frees (``FreeQubits``) it; a KEEP qubit nobody receives (its stream has
gone, or no one watches the link) is freed at once, so nothing leaks into the backend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from qnet.channel import wire as channel_wire
from qnet.daemon import wire
from qnet.errors import InvalidArgument, NotFound, QnetError, Unreachable
from qnet.link.events import CreateErr, Kind, PairOk, UpperEvent
from qnet.node.interfaces import ChannelAccess
from qnet.node.runtime import NodeRuntime
from qnet.runtime.grpc_bridge import TrioGrpcBridge
from qnet.runtime.grpc_service import RpcHandler, service_handler
from qnet.v1 import node_pb2 as pb

log = logging.getLogger("qnet.daemon.link")

#: Qubits named in one FreeQubits request, at most.
MAX_FREE = 10_000

Events = trio.MemorySendChannel[UpperEvent]


#: Seconds a delivered KEEP qubit stays held for clients before it is reclaimed. A client
#: that disconnects without measuring or freeing its qubits must not fill the node's memory.
HOLD_S = 30.0


@dataclass(frozen=True, slots=True)
class HeldQubit:
    """A delivered KEEP qubit a client may still measure or free."""

    peer: str
    pair_id: tuple[str, int]
    #: trio time of delivery; the qubit is reclaimed ``hold_s`` later.
    since: float = 0.0


def expired(held: dict[int, HeldQubit], now: float, hold_s: float) -> list[int]:
    """Held qubits whose lease has run out (``held`` is in delivery order)."""
    out = []
    for qubit, h in held.items():
        if h.since + hold_s > now:
            break
        out.append(qubit)
    return out


class LinkService:
    """Serve LinkLayer for a node; ``run`` it once the node's runtime has started. Until then
    (and after it stops) every call fails with UNAVAILABLE."""

    def __init__(self, node: str, *, hold_s: float = HOLD_S) -> None:
        self.node = node
        self.hold_s = hold_s
        self._held_added = trio.Event()
        self._runtime: NodeRuntime | None = None
        self._channel: ChannelAccess | None = None
        #: Streams of this node's own requests, by (peer, create id).
        self._requests: dict[tuple[str, int], Events] = {}
        #: LinkEvents streams per peer.
        self._watchers: dict[str, list[Events]] = {}
        self.held: dict[int, HeldQubit] = {}
        self._to_free, self._freeing = trio.open_memory_channel[int](math.inf)

    def handlers(self, bridge: TrioGrpcBridge) -> RpcHandler:
        return service_handler(
            pb.DESCRIPTOR.services_by_name["LinkLayer"],
            bridge,
            {
                "LinkCreate": self.link_create,
                "LinkEvents": self.link_events,
                "MeasureQubit": self.measure_qubit,
                "FreeQubits": self.free_qubits,
            },
        )

    @property
    def runtime(self) -> NodeRuntime:
        if self._runtime is None:
            raise Unreachable("the link layer is not running", node=self.node)
        return self._runtime

    @property
    def channel(self) -> ChannelAccess:
        if self._channel is None:
            raise Unreachable("the link layer is not running", node=self.node)
        return self._channel

    async def run(
        self,
        runtime: NodeRuntime,
        channel: ChannelAccess,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Route the events of ``runtime`` (already running) until cancelled; ``channel`` is
        its session with the backend, for measuring and freeing held qubits."""
        try:
            async with trio.open_nursery() as nursery:
                for peer in runtime.peers:
                    nursery.start_soon(self._dispatch, peer, runtime.subscribe(peer))
                nursery.start_soon(self._free_loop, channel)
                nursery.start_soon(self._reclaim)
                self._runtime, self._channel = runtime, channel
                task_status.started()
        finally:
            self._runtime = self._channel = None
            # Open streams end now (they report that the node is stopping).
            for send in self._requests.values():
                send.close()
            for watchers in self._watchers.values():
                for send in watchers:
                    send.close()

    # -- routing ------------------------------------------------------------------------------

    async def _dispatch(self, peer: str, events: trio.MemoryReceiveChannel[UpperEvent]) -> None:
        async for event in events:
            if not isinstance(event, PairOk | CreateErr):
                continue
            if event.origin == self.node:
                stream = self._requests.get((peer, event.create_id))
                targets = [stream] if stream is not None else []
            else:
                targets = self._watchers.get(peer, [])
            delivered = False
            for send in targets:
                try:
                    send.send_nowait(event)
                    delivered = True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if isinstance(event, PairOk) and event.kind is Kind.KEEP and event.qubit:
                if delivered:
                    self.held[event.qubit] = HeldQubit(peer, event.pair_id, trio.current_time())
                    self._held_added.set()
                else:
                    self._to_free.send_nowait(event.qubit)

    async def _reclaim(self) -> None:
        """Free held qubits whose lease ran out, waking at the oldest one's expiry."""
        while True:
            if not self.held:
                self._held_added = trio.Event()
                await self._held_added.wait()
                continue
            oldest = next(iter(self.held.values()))
            await trio.sleep_until(oldest.since + self.hold_s)
            stale = expired(self.held, trio.current_time(), self.hold_s)
            for qubit in stale:
                del self.held[qubit]
                self._to_free.send_nowait(qubit)
            if stale:
                log.info("%s: reclaimed %d KEEP qubits no client claimed", self.node, len(stale))

    async def _free_loop(self, channel: ChannelAccess) -> None:
        """Free orphaned KEEP qubits, batching whatever piled up meanwhile."""
        while True:
            qubits = [await self._freeing.receive()]
            while True:
                try:
                    qubits.append(self._freeing.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await channel.free(qubits)
            except QnetError as exc:
                log.warning("%s: freeing unclaimed qubits %s failed: %s", self.node, qubits, exc)

    def _release_unsent(self, events: trio.MemoryReceiveChannel[UpperEvent]) -> None:
        """A stream ended: free the held KEEP qubits its client never saw."""
        while True:
            try:
                event = events.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if isinstance(event, PairOk) and event.qubit and self.held.pop(event.qubit, None):
                self._to_free.send_nowait(event.qubit)

    def _check_peer(self, peer: str) -> None:
        peers = self.runtime.peers
        if peer not in peers:
            known = ", ".join(peers) or "none"
            raise NotFound(f"{peer!r} is not a neighbour (neighbours: {known})", node=self.node)

    # -- handlers -----------------------------------------------------------------------------

    async def link_create(self, req: pb.LinkCreateRequest) -> AsyncIterator[pb.LinkEvent]:
        request = wire.create_request_from_wire(req)
        self._check_peer(request.remote)
        send, recv = trio.open_memory_channel[UpperEvent](math.inf)
        create_id = self.runtime.create(request.remote, request)
        # No checkpoint since ``create``: the dispatcher cannot have routed an event yet.
        key = (request.remote, create_id)
        self._requests[key] = send
        try:
            yield wire.accepted_event(self.node, create_id)
            delivered = 0
            async for event in recv:
                if isinstance(event, PairOk):
                    yield wire.ok_event(event)
                    delivered += 1
                    if delivered >= request.number:
                        return
                elif isinstance(event, CreateErr):
                    yield wire.err_event(event)
                    return
            raise Unreachable(
                f"stopping before request {create_id} completed"
                f" ({delivered} of {request.number} pairs delivered)",
                node=self.node,
            )
        finally:
            if self._requests.get(key) is send:
                del self._requests[key]
            send.close()
            self._release_unsent(recv)

    async def link_events(self, req: pb.LinkEventsRequest) -> AsyncIterator[pb.LinkEvent]:
        wire.check_version(req)
        self._check_peer(req.peer)
        send, recv = trio.open_memory_channel[UpperEvent](math.inf)
        watchers = self._watchers.setdefault(req.peer, [])
        watchers.append(send)
        try:
            yield pb.LinkEvent(protocol_version=wire.V, subscribed=pb.LinkSubscribed(peer=req.peer))
            async for event in recv:
                if isinstance(event, PairOk):
                    yield wire.ok_event(event)
                elif isinstance(event, CreateErr):
                    yield wire.err_event(event)
            raise Unreachable("stopping", node=self.node)
        finally:
            if send in watchers:
                watchers.remove(send)
            send.close()
            if not watchers:  # otherwise another stream got the same qubits
                self._release_unsent(recv)

    async def measure_qubit(self, req: pb.MeasureQubitRequest) -> pb.MeasureQubitResponse:
        wire.check_version(req)
        basis = channel_wire.basis_from_wire(req.basis)
        channel = self.channel
        if self.held.pop(req.qubit, None) is None:
            raise NotFound(self._not_held([req.qubit]), node=self.node)
        outcome = await channel.measure(req.qubit, basis)
        return pb.MeasureQubitResponse(protocol_version=wire.V, outcome=outcome)

    async def free_qubits(self, req: pb.FreeQubitsRequest) -> pb.FreeQubitsResponse:
        wire.check_version(req)
        channel = self.channel
        qubits = list(req.qubits)
        if len(qubits) > MAX_FREE:
            raise InvalidArgument(f"at most {MAX_FREE} qubits per request, got {len(qubits)}")
        if len(set(qubits)) != len(qubits):
            raise InvalidArgument(f"qubits {qubits} name a qubit twice")
        missing = [q for q in qubits if q not in self.held]
        if missing:
            raise NotFound(self._not_held(missing), node=self.node)
        for q in qubits:
            del self.held[q]
        if qubits:
            await channel.free(qubits)
        return pb.FreeQubitsResponse(protocol_version=wire.V)

    def _not_held(self, qubits: list[int]) -> str:
        names = ", ".join(str(q) for q in qubits)
        return (
            f"qubit {names} is not held for a client (never delivered by a KEEP request,"
            " or already measured or freed)"
        )
