"""The NetworkLayer service of node.proto: virtual circuits for clients outside the daemon.

``OpenCircuit`` opens a circuit at this node (the head) and streams its end-to-end pairs;
``CircuitEvents`` streams the circuits that end here (the tail). Both ends are served the same
way: one task per circuit end reads its ``CircuitHandle`` and hands every pair to the streams
the end belongs to (the OpenCircuit call at the head; the CircuitEvents calls open when the
circuit arrived at the tail).

A pair's qubit is *held for clients* in the LinkLayer service's registry, under the link it
came over, so ``MeasureQubit``/``MeasureQubits``/``FreeQubits`` and the lease work for it as for
a link-layer KEEP qubit, and the link's arming counts it against memory. A stream may ask for
``measure_on_delivery`` instead: every pair that arrived together is then measured in one
backend request (per-call cost dominates between processes) and the event carries the outcome.

Nothing outlives its client: when the last stream of a circuit end has gone, the circuit is
closed (every hop frees what it holds) and pairs still on their way are freed as they arrive;
pairs a stream had queued but not sent are freed at once; pairs sent are held until a client
measures or frees them, or their lease runs out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from qnet.daemon import wire
from qnet.daemon.link_service import LinkService
from qnet.errors import QnetError, Unreachable
from qnet.network.circuit_events import CircuitClosed, CloseCode, EndToEndPair
from qnet.node.circuit_driver import CircuitHandle
from qnet.node.runtime import NodeRuntime
from qnet.physical.gates import Basis
from qnet.runtime.grpc_bridge import TrioGrpcBridge
from qnet.runtime.grpc_service import Guard, RpcHandler, service_handler
from qnet.v1 import node_pb2 as pb

log = logging.getLogger("qnet.daemon.network")


@dataclass(eq=False, slots=True)
class _Stream:
    """One OpenCircuit or CircuitEvents call."""

    send: trio.MemorySendChannel[Item]
    #: measure_on_delivery: measure pairs' qubits in this basis as they are delivered.
    measure: Basis | None
    alive: bool = True


@dataclass(eq=False, slots=True)
class _End:
    """A circuit end this node serves, and the streams its events go to."""

    handle: CircuitHandle
    #: The neighbour on the path: its link delivered this end's qubits.
    neighbour: str
    streams: list[_Stream] = field(default_factory=list)
    closing: bool = False

    def live(self) -> list[_Stream]:
        return [s for s in self.streams if s.alive]


@dataclass(frozen=True, slots=True)
class _Pair:
    end: _End
    pair: EndToEndPair
    #: Set when the daemon measured the qubit for the client.
    outcome: int | None = None
    basis: Basis | None = None


@dataclass(frozen=True, slots=True)
class _Incoming:
    info: wire.CircuitInfo


#: What a stream's handler receives; a QnetError ends the stream with it.
Item = _Pair | _Incoming | CircuitClosed | QnetError


class NetworkService:
    """Serve NetworkLayer for a node; ``run`` it once the node's runtime and ``links`` (the
    LinkLayer service, whose held-qubit registry pairs share) run. Until then every call fails
    with UNAVAILABLE."""

    def __init__(self, node: str, links: LinkService) -> None:
        self.node = node
        self.links = links
        self._runtime: NodeRuntime | None = None
        self._nursery: trio.Nursery | None = None
        #: CircuitEvents streams, oldest first.
        self._watchers: list[_Stream] = []
        self._ends: set[_End] = set()

    def handlers(self, bridge: TrioGrpcBridge, guard: Guard | None = None) -> RpcHandler:
        return service_handler(
            pb.DESCRIPTOR.services_by_name["NetworkLayer"],
            bridge,
            {"OpenCircuit": self.open_circuit, "CircuitEvents": self.circuit_events},
            guard=guard,
        )

    @property
    def runtime(self) -> NodeRuntime:
        if self._runtime is None:
            raise Unreachable("the network layer is not running", node=self.node)
        return self._runtime

    def _tasks(self) -> trio.Nursery:
        if self._nursery is None:
            raise Unreachable("the network layer is not running", node=self.node)
        return self._nursery

    async def run(
        self, runtime: NodeRuntime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve circuits of ``runtime`` (already running) until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._runtime, self._nursery = runtime, nursery
                nursery.start_soon(self._accept, runtime, nursery)
                task_status.started()
        finally:
            self._runtime = self._nursery = None
            # Open streams end now (they report that the node is stopping).
            for stream in self._watchers:
                stream.send.close()
            for end in self._ends:
                for stream in end.streams:
                    stream.send.close()

    # -- serving circuit ends -------------------------------------------------------------------

    async def _accept(self, runtime: NodeRuntime, nursery: trio.Nursery) -> None:
        """Give each circuit that ends here to the CircuitEvents streams open now."""
        async for handle in runtime.circuits.incoming:
            end = _End(handle, handle.path[-2], [s for s in self._watchers if s.alive])
            self._ends.add(end)
            self._send(end, _Incoming(self._incoming_info(runtime, handle)))
            nursery.start_soon(self._serve, end)
            if not end.live():
                log.info(
                    "%s: circuit %s arrived while no client takes circuits", self.node, handle.id
                )
                self._close(end)

    def _incoming_info(self, runtime: NodeRuntime, handle: CircuitHandle) -> wire.CircuitInfo:
        c = runtime.circuits.core.circuits().get(handle.id)
        if c is None:  # it ended already; its closed event follows
            return wire.CircuitInfo(handle.id, handle.path, (), 0, 0.0, 0)
        return wire.CircuitInfo(
            handle.id, c.path, c.link_fidelity, c.cutoff_ns, c.min_fidelity, c.number
        )

    async def _serve(self, end: _End) -> None:
        """Route the end's pairs, everything that arrived together as one batch, until it
        closes; pairs nobody takes are freed."""
        send, recv = trio.open_memory_channel[EndToEndPair | CircuitClosed](math.inf)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, end.handle, send)
                async for first in recv:
                    batch = [first]
                    while True:
                        try:
                            batch.append(recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._route(end, batch)
        finally:
            self._ends.discard(end)

    async def _read(
        self, handle: CircuitHandle, send: trio.MemorySendChannel[EndToEndPair | CircuitClosed]
    ) -> None:
        with send:
            try:
                async for pair in handle:
                    send.send_nowait(pair)
            except QnetError:
                pass  # an error end: ``handle.closed`` says which
            closed = handle.closed or CircuitClosed(
                handle.id, CloseCode.UNREACHABLE, self.node, "the node is stopping", 0
            )
            send.send_nowait(closed)

    async def _route(self, end: _End, batch: list[EndToEndPair | CircuitClosed]) -> None:
        pairs = [e for e in batch if isinstance(e, EndToEndPair)]
        live = end.live()
        if not live:
            self._close(end)
        basis = next((s.measure for s in live if s.measure is not None), None)
        outcomes: list[int | QnetError] = []
        if pairs and live and basis is not None:
            try:
                items = [(p.qubit, basis) for p in pairs]
                outcomes = await self.links.measure(end.neighbour, items)
            except QnetError as exc:  # the link layer is stopping: so are the streams
                outcomes = [exc] * len(pairs)
        measured = iter(outcomes)
        held = False
        for event in batch:
            if isinstance(event, CircuitClosed):
                self._send(end, event)
                continue
            outcome = next(measured, None)
            if isinstance(outcome, QnetError):
                log.warning(
                    "%s: measuring qubit %d of circuit %s failed: %s",
                    self.node,
                    event.qubit,
                    event.circuit_id,
                    outcome,
                )
                self._send(end, outcome)
                continue  # measured or not, the qubit is gone
            if outcome is not None:
                self._send(end, _Pair(end, event, outcome, basis))
                continue
            if self._send(end, _Pair(end, event)):
                cid = event.circuit_id
                self.links.hold(event.qubit, end.neighbour, (f"{cid[0]}/{cid[1]}", event.index))
                held = True
            else:
                self.links.release(event.qubit)
        if held:
            self.links.report_held(end.neighbour)

    def _send(self, end: _End, item: Item) -> bool:
        """Queue ``item`` for every live stream of ``end``; False if none took it."""
        sent = False
        for stream in end.live():
            try:
                stream.send.send_nowait(item)
                sent = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stream.alive = False
        return sent

    def _close(self, end: _End) -> None:
        """Close the circuit: its pairs go to no one any more."""
        if end.closing or end.handle.closed is not None:
            return
        end.closing = True
        try:
            end.handle.close()
        except QnetError as exc:
            log.warning("%s: closing circuit %s failed: %s", self.node, end.handle.id, exc)

    def _leave(self, stream: _Stream, recv: trio.MemoryReceiveChannel[Item]) -> None:
        """A stream ended: free the held qubits it never sent that no other stream will, and
        close the circuits nobody takes any more."""
        stream.alive = False
        stream.send.close()
        while True:
            try:
                item = recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, _Pair) and item.outcome is None and not item.end.live():
                self.links.release(item.pair.qubit)
        for end in list(self._ends):
            if stream in end.streams and not end.live():
                self._close(end)

    # -- handlers -----------------------------------------------------------------------------

    async def open_circuit(self, req: pb.OpenCircuitRequest) -> AsyncIterator[pb.CircuitEvent]:
        request = wire.circuit_request_from_wire(req)
        runtime = self.runtime
        tasks = self._tasks()
        handle = runtime.open_circuit(
            request.destination, min_fidelity=request.min_fidelity, number=request.number
        )
        send, recv = trio.open_memory_channel[Item](math.inf)
        stream = _Stream(send, request.measure)
        end = _End(handle, handle.path[1], [stream])
        self._ends.add(end)
        tasks.start_soon(self._serve, end)
        try:
            await handle.wait_open()
            yield wire.opened_event(
                wire.CircuitInfo(
                    handle.id,
                    handle.path,
                    handle.link_fidelity,
                    handle.cutoff_ns,
                    request.min_fidelity,
                    request.number,
                )
            )
            async for item in recv:
                if isinstance(item, QnetError):
                    raise item
                if isinstance(item, CircuitClosed):
                    yield wire.closed_event(item)
                    return
                if isinstance(item, _Pair):
                    yield wire.pair_event(item.pair, item.outcome, item.basis)
            raise Unreachable(f"stopping; circuit {handle.id} is gone", node=self.node)
        finally:
            self._leave(stream, recv)

    async def circuit_events(self, req: pb.CircuitEventsRequest) -> AsyncIterator[pb.CircuitEvent]:
        wire.check_version(req)
        measure = wire.measure_on_delivery(req.measure_on_delivery)
        self._tasks()
        send, recv = trio.open_memory_channel[Item](math.inf)
        stream = _Stream(send, measure)
        self._watchers.append(stream)
        try:
            yield pb.CircuitEvent(
                protocol_version=wire.V, subscribed=pb.CircuitSubscribed(node=self.node)
            )
            async for item in recv:
                if isinstance(item, QnetError):
                    raise item
                if isinstance(item, _Incoming):
                    yield wire.incoming_event(item.info)
                elif isinstance(item, _Pair):
                    yield wire.pair_event(item.pair, item.outcome, item.basis)
                else:
                    yield wire.closed_event(item)
            raise Unreachable("stopping", node=self.node)
        finally:
            if stream in self._watchers:
                self._watchers.remove(stream)
            self._leave(stream, recv)
