"""The LinkLayer service of node.proto: the link layer's CREATE for clients outside the daemon.

One dispatcher task per link reads every OK and ERR the node driver delivers on that link and
routes it: events of this node's own requests go to the ``LinkCreate`` stream that issued
them (by create id), events of the neighbour's requests to every open ``LinkEvents`` stream
of that link. A KEEP qubit handed to a stream is *held for clients* until one measures
(``MeasureQubit``/``MeasureQubits``) or frees (``FreeQubits``) it; a KEEP qubit nobody
receives (its stream has gone, or no one watches the link) is freed at once, so nothing leaks
into the backend. Held qubits fill the node's memory, so the link's arming counts them
(``NodeRuntime.set_upper_held``): a client that never frees stops the link, not the backend.

A stream may ask for ``measure_on_delivery``: its KEEP qubits are then measured here as they
are delivered, and the OK carries the outcome. The dispatcher measures everything that
arrived together in one backend ``Execute``: per-call cost dominates between processes, and a
client call per pair (then a backend call per pair) was most of the cost of a pair.

A ``LinkCreate`` call that ends before its request did (the client cancelled it, or went
away) cancels the request in the link layer: both ends get ERR CANCELLED.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import trio

from qnet.channel import wire as channel_wire
from qnet.daemon import wire
from qnet.errors import (
    InvalidArgument,
    NotFound,
    QnetError,
    Unreachable,
)
from qnet.link.events import CreateErr, Kind, PairOk, UpperEvent
from qnet.node.interfaces import ChannelAccess
from qnet.node.runtime import NodeRuntime
from qnet.physical.gates import Basis
from qnet.runtime.grpc_bridge import TrioGrpcBridge
from qnet.runtime.grpc_service import Guard, RpcHandler, service_handler
from qnet.v1 import channel_pb2 as channel_pb
from qnet.v1 import node_pb2 as pb

log = logging.getLogger("qnet.daemon.link")

#: Qubits named in one FreeQubits or MeasureQubits request, at most.
MAX_FREE = 10_000

#: What a stream's task receives: link-layer events, or the error that ends the stream.
Item = UpperEvent | QnetError
Events = trio.MemorySendChannel[Item]


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


@dataclass(eq=False, slots=True)
class _Stream:
    send: Events
    #: measure_on_delivery: measure KEEP qubits in this basis as they are delivered.
    measure: Basis | None


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
        self._requests: dict[tuple[str, int], _Stream] = {}
        #: LinkEvents streams per peer, oldest first.
        self._watchers: dict[str, list[_Stream]] = {}
        #: Qubits held for clients, in delivery order; change only through _hold/_unhold.
        self.held: dict[int, HeldQubit] = {}
        self._held_per_peer: Counter[str] = Counter()
        self._to_free, self._freeing = trio.open_memory_channel[int](math.inf)

    def handlers(self, bridge: TrioGrpcBridge, guard: Guard | None = None) -> RpcHandler:
        return service_handler(
            pb.DESCRIPTOR.services_by_name["LinkLayer"],
            bridge,
            {
                "LinkCreate": self.link_create,
                "LinkEvents": self.link_events,
                "MeasureQubit": self.measure_qubit,
                "MeasureQubits": self.measure_qubits,
                "FreeQubits": self.free_qubits,
            },
            guard=guard,
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
                    nursery.start_soon(self._dispatch, peer, runtime.subscribe(peer), runtime)
                nursery.start_soon(self._free_loop, channel)
                nursery.start_soon(self._reclaim)
                self._runtime, self._channel = runtime, channel
                for peer in runtime.peers:
                    self._report_held(peer)  # from now on the links count what we hold
                task_status.started()
        finally:
            self._runtime = self._channel = None
            # Open streams end now (they report that the node is stopping).
            for stream in self._requests.values():
                stream.send.close()
            for watchers in self._watchers.values():
                for stream in watchers:
                    stream.send.close()

    # -- held qubits ----------------------------------------------------------------------------

    def _hold(self, qubit: int, held: HeldQubit) -> None:
        self.held[qubit] = held
        self._held_per_peer[held.peer] += 1
        self._held_added.set()  # reported by the dispatcher, once per batch

    def _unhold(self, qubit: int) -> HeldQubit | None:
        held = self.held.pop(qubit, None)
        if held is not None:
            self._held_per_peer[held.peer] -= 1
            self._report_held(held.peer)
        return held

    def _report_held(self, peer: str) -> None:
        if self._runtime is not None:
            self._runtime.set_upper_held(peer, self._held_per_peer[peer])

    # -- for the network layer's service, whose end-to-end qubits share the registry -----------

    def hold(self, qubit: int, peer: str, pair_id: tuple[str, int]) -> None:
        """Hold ``qubit``, delivered over the link to ``peer``, for clients; call
        ``report_held(peer)`` once the batch is placed."""
        self._hold(qubit, HeldQubit(peer, pair_id, trio.current_time()))

    def release(self, qubit: int) -> None:
        """Free ``qubit`` soon, held or not (its client is gone, or there never was one)."""
        self._unhold(qubit)
        self._to_free.send_nowait(qubit)

    def report_held(self, peer: str) -> None:
        self._report_held(peer)

    async def measure(self, peer: str, items: Sequence[tuple[int, Basis]]) -> list[int | QnetError]:
        """Measure (and so free) qubits of the link to ``peer``, in its backend requests."""
        return await self._measure_many(self.runtime, peer, items)

    # -- routing ------------------------------------------------------------------------------

    async def _dispatch(
        self,
        peer: str,
        events: trio.MemoryReceiveChannel[UpperEvent],
        runtime: NodeRuntime,
    ) -> None:
        """Route the link's events in order; everything that arrived while the previous
        measurements ran is routed together, its measurements in one backend call."""
        async for first in events:
            batch = [first]
            while True:
                try:
                    batch.append(events.receive_nowait())
                except trio.WouldBlock:
                    break
            routed = [self._route(peer, e) for e in batch if isinstance(e, PairOk | CreateErr)]
            wanted = [
                (event.qubit, basis)
                for event, _, basis in routed
                if basis is not None and isinstance(event, PairOk) and event.qubit
            ]
            outcomes = iter(await self._measure_many(runtime, peer, wanted) if wanted else [])
            for event, targets, basis in routed:
                item: Item = event
                if basis is not None and isinstance(event, PairOk) and event.qubit:
                    outcome = next(outcomes)
                    if isinstance(outcome, QnetError):
                        log.warning(
                            "%s: measuring delivered qubit %d failed: %s",
                            self.node,
                            event.qubit,
                            outcome,
                        )
                        item = outcome
                    else:
                        item = dataclasses.replace(event, outcome=outcome, basis=basis)
                delivered = False
                for stream in targets:
                    try:
                        stream.send.send_nowait(item)
                        delivered = True
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                if isinstance(event, PairOk) and event.kind is Kind.KEEP and event.qubit:
                    if basis is not None:
                        continue  # measured, so freed (or failed: it is gone either way)
                    if delivered:
                        held = HeldQubit(peer, event.pair_id, trio.current_time())
                        self._hold(event.qubit, held)
                    else:
                        self._to_free.send_nowait(event.qubit)
            # The link counts each KEEP half it delivered as held until told otherwise.
            self._report_held(peer)

    def _route(
        self, peer: str, event: PairOk | CreateErr
    ) -> tuple[PairOk | CreateErr, list[_Stream], Basis | None]:
        """(event, the streams it goes to, the basis to measure it in first or None)."""
        if event.origin == self.node:
            stream = self._requests.get((peer, event.create_id))
            targets = [stream] if stream is not None else []
        else:
            targets = list(self._watchers.get(peer, []))
        basis = next((s.measure for s in targets if s.measure is not None), None)
        return event, targets, basis

    async def _measure_many(
        self, runtime: NodeRuntime, peer: str, items: Sequence[tuple[int, Basis]]
    ) -> list[int | QnetError]:
        """Measure each (qubit, basis) of the link to ``peer``, in the link's own backend
        requests; a failed one is reported as its error, the rest still measured."""
        ops = [
            channel_pb.Operation(
                measure=channel_pb.MeasureOp(qubit=qubit, basis=channel_wire.BASIS_TO_WIRE[basis])
            )
            for qubit, basis in items
        ]
        results = await runtime.execute_on_link(peer, ops)
        return [r if isinstance(r, QnetError) else r.outcome for r in results]

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
                self._unhold(qubit)
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

    def _release_unsent(self, events: trio.MemoryReceiveChannel[Item]) -> None:
        """A stream ended: free the held KEEP qubits its client never saw."""
        while True:
            try:
                event = events.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if isinstance(event, PairOk) and event.qubit and self._unhold(event.qubit):
                self._to_free.send_nowait(event.qubit)

    def _check_peer(self, peer: str) -> None:
        peers = self.runtime.peers
        if peer not in peers:
            known = ", ".join(peers) or "none"
            raise NotFound(f"{peer!r} is not a neighbour (neighbours: {known})", node=self.node)

    # -- handlers -----------------------------------------------------------------------------

    async def link_create(self, req: pb.LinkCreateRequest) -> AsyncIterator[pb.LinkEvent]:
        request = wire.create_request_from_wire(req)
        measure = wire.measure_on_delivery(req.measure_on_delivery, request.kind)
        self._check_peer(request.remote)
        runtime = self.runtime
        send, recv = trio.open_memory_channel[Item](math.inf)
        create_id = runtime.create(request.remote, request)
        # No checkpoint since ``create``: the dispatcher cannot have routed an event yet.
        key = (request.remote, create_id)
        stream = self._requests[key] = _Stream(send, measure)
        ended = False
        try:
            yield wire.accepted_event(self.node, create_id)
            delivered = 0
            async for event in recv:
                if isinstance(event, QnetError):
                    raise event
                if isinstance(event, PairOk):
                    delivered += 1
                    ended = delivered >= request.number
                    yield wire.ok_event(event)
                    if ended:
                        return
                elif isinstance(event, CreateErr):
                    ended = True
                    yield wire.err_event(event)
                    return
            ended = True  # the daemon is stopping: the link layer goes with it
            raise Unreachable(
                f"stopping before request {create_id} completed"
                f" ({delivered} of {request.number} pairs delivered)",
                node=self.node,
            )
        finally:
            if self._requests.get(key) is stream:
                del self._requests[key]
            send.close()
            self._release_unsent(recv)
            if not ended:
                self._cancel(request.remote, create_id)

    def _cancel(self, peer: str, create_id: int) -> None:
        """The client left before its request ended: nobody wants the rest of its pairs."""
        if self._runtime is None:
            return
        try:
            if self._runtime.cancel(peer, create_id):
                log.info("%s: request %d to %s cancelled by its client", self.node, create_id, peer)
        except QnetError as exc:
            log.warning("%s: cancelling request %d failed: %s", self.node, create_id, exc)

    async def link_events(self, req: pb.LinkEventsRequest) -> AsyncIterator[pb.LinkEvent]:
        wire.check_version(req)
        measure = wire.measure_on_delivery(req.measure_on_delivery)
        self._check_peer(req.peer)
        send, recv = trio.open_memory_channel[Item](math.inf)
        stream = _Stream(send, measure)
        watchers = self._watchers.setdefault(req.peer, [])
        watchers.append(stream)
        try:
            yield pb.LinkEvent(protocol_version=wire.V, subscribed=pb.LinkSubscribed(peer=req.peer))
            async for event in recv:
                if isinstance(event, QnetError):
                    raise event
                if isinstance(event, PairOk):
                    yield wire.ok_event(event)
                elif isinstance(event, CreateErr):
                    yield wire.err_event(event)
            raise Unreachable("stopping", node=self.node)
        finally:
            if stream in watchers:
                watchers.remove(stream)
            send.close()
            if not watchers:  # otherwise another stream got the same qubits
                self._release_unsent(recv)

    async def measure_qubit(self, req: pb.MeasureQubitRequest) -> pb.MeasureQubitResponse:
        wire.check_version(req)
        basis = channel_wire.basis_from_wire(req.basis)
        (outcome,) = await self._measure_held([req.qubit], [basis])
        return pb.MeasureQubitResponse(protocol_version=wire.V, outcome=outcome)

    async def measure_qubits(self, req: pb.MeasureQubitsRequest) -> pb.MeasureQubitsResponse:
        wire.check_version(req)
        qubits = list(req.qubits)
        if len(req.bases) != len(qubits):
            raise InvalidArgument(
                f"one basis per qubit: {len(qubits)} qubits but {len(req.bases)} bases"
            )
        bases = [channel_wire.basis_from_wire(b) for b in req.bases]
        outcomes = await self._measure_held(qubits, bases)
        return pb.MeasureQubitsResponse(protocol_version=wire.V, outcomes=outcomes)

    async def _measure_held(self, qubits: list[int], bases: list[Basis]) -> list[int]:
        """Measure held qubits for a client: all are checked before any is taken, then each
        link's share runs with that link's backend requests."""
        runtime = self.runtime
        self._check_held(qubits)
        by_peer: dict[str, list[int]] = {}
        for i, q in enumerate(qubits):
            held = self._unhold(q)
            assert held is not None
            by_peer.setdefault(held.peer, []).append(i)
        outcomes: list[int | QnetError] = [0] * len(qubits)
        for peer, indices in by_peer.items():
            items = [(qubits[i], bases[i]) for i in indices]
            measured = await self._measure_many(runtime, peer, items)
            for i, outcome in zip(indices, measured, strict=True):
                outcomes[i] = outcome
        failed = next((o for o in outcomes if isinstance(o, QnetError)), None)
        if failed is not None:
            raise failed
        return [o for o in outcomes if isinstance(o, int)]

    async def free_qubits(self, req: pb.FreeQubitsRequest) -> pb.FreeQubitsResponse:
        wire.check_version(req)
        channel = self.channel
        qubits = list(req.qubits)
        self._check_held(qubits)
        for q in qubits:
            self._unhold(q)
        if qubits:
            await channel.free(qubits)
        return pb.FreeQubitsResponse(protocol_version=wire.V)

    def _check_held(self, qubits: list[int]) -> None:
        if len(qubits) > MAX_FREE:
            raise InvalidArgument(f"at most {MAX_FREE} qubits per request, got {len(qubits)}")
        if len(set(qubits)) != len(qubits):
            raise InvalidArgument(f"qubits {qubits} name a qubit twice")
        missing = [q for q in qubits if q not in self.held]
        if missing:
            raise NotFound(self._not_held(missing), node=self.node)

    def _not_held(self, qubits: list[int]) -> str:
        names = ", ".join(str(q) for q in qubits)
        return (
            f"qubit {names} is not held for a client (never delivered by a KEEP request,"
            " or already measured or freed)"
        )
