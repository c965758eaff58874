"""The Peer API over gRPC: the ``PeerTransport`` of a daemon (DESIGN.md §1, §4).

A node serves the ``Peer`` service on its daemon's one gRPC server (``handlers``) and, while
``run`` runs, dials one ``Exchange`` stream to each neighbour. It sends its own messages only on
the streams it dialed, so each direction of a link has its own stream and its own reconnect
loop; it receives on the streams its neighbours dialed.

Dialing, per neighbour: open the stream, send a batch holding only a Hello, wait for the
neighbour's answering Hello, then ship batches: everything ``send`` queued since the last batch
goes in one ``PeerBatch`` (at most ``max_batch`` messages). The queue is bounded: overflow drops
the oldest message and counts it (the link layer retransmits). A refused or broken stream is
dialed again after a capped exponential back-off (``BACKOFF_MIN_S`` doubling to
``BACKOFF_MAX_S``, back to the minimum after a stream that was accepted); a new address from
``set_peer_address`` is dialed at once.

Each Hello carries the sender's incarnation (random, per process). A new one from a neighbour
means its daemon restarted: what is still queued for it is dropped, and ``run``'s
``peer_restarted`` callback hears of it before anything the new process sent is delivered.

``connected(peer)`` is true from the moment the neighbour's Hello answers ours until that stream
ends: the neighbour is running, knows us and speaks our version. Messages queued before are
held and go out then. Each change of it goes to ``run``'s ``link_changed`` callback, so routing
learns that a neighbour's daemon died when its stream breaks rather than a dead interval later.

Serving: a stream's first batch must speak our version, come from a configured neighbour and
start with a Hello meant for this node; otherwise the stream is refused with the typed error
(VersionMismatch, PermissionDenied, FailedPrecondition, ProtocolError) and counted. After the
Hello, each batch's messages are decoded and handed to ``deliver`` in the trio thread; a
malformed batch or message is dropped and counted, and the stream goes on. A newer stream from
the same neighbour replaces the older one.

With TLS (``tls``, the node's credential): streams are dialed with the node's certificate and
the neighbour's certificate must name it (``node.NAME.qnet``); a stream is accepted only when
the caller's certificate names the node its Hello comes from (else PermissionDenied).

All methods are called from the trio thread that runs ``run``.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import NoReturn

import trio

from qnet.channel.client import rpc_error_to_qnet
from qnet.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProtocolError,
    QnetError,
    Timeout,
    Unreachable,
)
from qnet.node import peer_wire
from qnet.node.interfaces import Deliver, LinkChanged, PeerRestarted
from qnet.node.peer_wire import WireMessage
from qnet.runtime.grpc_bridge import (
    BidiStream,
    TrioGrpcBridge,
    close_channel,
    stream_stream,
)
from qnet.runtime.grpc_service import Malformed, RpcHandler, malformed_error, service_handler
from qnet.security.identity import Identity, require_node
from qnet.security.tls import Credentials, client_channel, identify
from qnet.v1 import node_pb2
from qnet.v1 import peer_pb2 as pb
from qnet.v1 import peer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: Dial back-off: the first retry waits this long, each failure doubles it up to the maximum.
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
#: How long either side waits for the other's Hello before giving the stream up.
HELLO_TIMEOUT_S = 10.0
#: Batches handed to gRPC but not yet sent, per stream; beyond it, ``send`` accumulates.
STREAM_BUFFER = 2
#: How long ``run`` waits, when it stops, for the streams it served to end.
STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class PeerStats:
    """Counters of one neighbour. Hello-only batches are not counted."""

    peer: str
    #: Where this node dials it ("" until known).
    address: str
    #: A dialed stream is open and the neighbour's Hello answered it.
    connected: bool
    #: Messages waiting for the next batch.
    queued: int
    #: Messages and batches handed to gRPC on our stream (lost if the stream breaks first).
    messages_sent: int
    batches_sent: int
    #: Messages and batches received from it and handed to ``deliver``.
    messages_received: int
    batches_received: int
    #: Outgoing messages dropped because the queue was full (oldest first), or because the
    #: neighbour restarted before they went out.
    dropped: int
    #: Incoming messages or batches dropped because they were malformed.
    malformed: int
    #: Times our stream was accepted, and dial attempts after the first.
    connects: int
    reconnects: int
    #: Why the last dial attempt or stream ended; "" while connected and before any failure.
    last_error: str


@dataclass(frozen=True, slots=True)
class TransportStats:
    node: str
    #: ``run`` is running.
    running: bool
    #: Incoming streams refused (unknown sender, version, wrong recipient, no Hello).
    refused: int
    peers: Mapping[str, PeerStats]


@dataclass(eq=False, slots=True)
class _Link:
    """One neighbour: the queue and dial state of our stream, the counters, its inbound stream."""

    name: str
    address: str
    queue: deque[pb.PeerMessage] = field(default_factory=deque)
    ready: trio.Event = field(default_factory=trio.Event)  # set when the queue gets messages
    new_address: trio.Event = field(default_factory=trio.Event)  # set by set_peer_address
    session: trio.CancelScope | None = None  # the current dial attempt
    inbound: trio.CancelScope | None = None  # the stream it dialed to us, once accepted
    sequence: int = 0  # of our Hellos
    incarnation: int = 0  # of the neighbour's process, from its last Hello (0: none yet)
    connected: bool = False
    messages_sent: int = 0
    batches_sent: int = 0
    messages_received: int = 0
    batches_received: int = 0
    dropped: int = 0
    malformed: int = 0
    connects: int = 0
    reconnects: int = 0
    last_error: str = ""

    def stats(self) -> PeerStats:
        return PeerStats(
            peer=self.name,
            address=self.address,
            connected=self.connected,
            queued=len(self.queue),
            messages_sent=self.messages_sent,
            batches_sent=self.batches_sent,
            messages_received=self.messages_received,
            batches_received=self.batches_received,
            dropped=self.dropped,
            malformed=self.malformed,
            connects=self.connects,
            reconnects=self.reconnects,
            last_error=self.last_error,
        )


class GrpcPeerTransport:
    """Peer messages to and from neighbours over gRPC ``Exchange`` streams.

    ``peers`` maps each neighbour to its ``host:port``, or to "" while that is not known yet
    (``set_peer_address`` gives it later). Only neighbours may open a stream to this node.
    """

    def __init__(
        self,
        node: str,
        peers: Mapping[str, str] | None = None,
        *,
        max_queue: int = 10_000,
        max_batch: int = 1_000,
        tls: Credentials | None = None,
    ) -> None:
        if not node:
            raise InvalidArgument("a node needs a name")
        if max_queue < 1 or max_batch < 1:
            raise InvalidArgument("max_queue and max_batch must be at least 1")
        self.node = node
        self.max_queue = max_queue
        self.max_batch = max_batch
        #: Mutual TLS: streams are dialed with the node's certificate (checking the
        #: neighbour's), and a stream is accepted only from the node its certificate names.
        self._tls = tls
        self._links: dict[str, _Link] = {}
        for peer, address in (peers or {}).items():
            self._check_peer(peer)
            self._links[peer] = _Link(peer, address)
        self._deliver: Deliver | None = None
        self._link_changed: LinkChanged | None = None
        self._peer_restarted: PeerRestarted | None = None
        #: This process, as our Hellos tell neighbours (a restart picks a new one).
        self.incarnation = secrets.randbits(63) + 1
        self._nursery: trio.Nursery | None = None
        self._handshaking: set[trio.CancelScope] = set()
        self._serving = 0  # Exchange handlers alive
        self._refused = 0
        self._last_refusal = ""
        self._changed = trio.Event()

    # -- the PeerTransport protocol -----------------------------------------------------------

    async def run(
        self,
        deliver: Deliver,
        *,
        link_changed: LinkChanged | None = None,
        peer_restarted: PeerRestarted | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Dial every neighbour and accept their streams until cancelled. When this returns,
        every stream it dialed is closed and every stream it accepted has ended."""
        if self._deliver is not None:
            raise RuntimeError(f"{self.node}: the peer transport is already running")
        self._deliver = deliver
        self._link_changed = link_changed
        self._peer_restarted = peer_restarted
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for link in self._links.values():
                    nursery.start_soon(self._dial_loop, link)
                self._notify()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._deliver = None
            self._link_changed = None
            self._peer_restarted = None
            self._nursery = None
            for scope in self._handshaking:
                scope.cancel()
            for link in self._links.values():
                if link.inbound is not None:
                    link.inbound.cancel()
            self._notify()
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE_S):
                while self._serving:
                    await self._changed.wait()

    def send(self, peer: str, messages: Sequence[WireMessage]) -> None:
        """Queue ``messages`` for ``peer``'s next batch; never blocks. Raises NotFound for a
        node that is not a neighbour and InvalidArgument for a message the wire cannot carry
        (then nothing is queued)."""
        link = self._link(peer)
        encoded = [peer_wire.to_wire(m) for m in messages]
        if not encoded:
            return
        for message in encoded:
            if len(link.queue) >= self.max_queue:
                link.queue.popleft()
                link.dropped += 1
            link.queue.append(message)
        link.ready.set()
        self._notify()

    def connected(self, peer: str) -> bool:
        """Whether our stream to ``peer`` is open and its Hello answered ours."""
        link = self._links.get(peer)
        return link is not None and link.connected

    # -- configuration and observation --------------------------------------------------------

    def handlers(self, bridge: TrioGrpcBridge) -> RpcHandler:
        """The ``Peer`` service, for the daemon to add to its gRPC server."""
        return service_handler(
            pb.DESCRIPTOR.services_by_name["Peer"],
            bridge,
            {"Exchange": self._exchange, "Health": self._health},
            guard=None if self._tls is None else identify,
        )

    def set_peer_address(self, peer: str, address: str) -> None:
        """Add a neighbour or change its address; a running transport dials it at once."""
        self._check_peer(peer)
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link(peer, address)
            if self._nursery is not None:
                self._nursery.start_soon(self._dial_loop, link)
        elif link.address != address:
            link.address = address
            link.new_address.set()
            link.new_address = trio.Event()
            if link.session is not None:
                link.session.cancel()
        self._notify()

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(self._links)

    def stats(self) -> TransportStats:
        return TransportStats(
            node=self.node,
            running=self._deliver is not None,
            refused=self._refused,
            peers=MappingProxyType({name: link.stats() for name, link in self._links.items()}),
        )

    async def wait_until(self, predicate: Callable[[TransportStats], bool]) -> TransportStats:
        """Wait until ``predicate(self.stats())`` holds; it is checked again on every change
        (connection state, counters, configuration), never by polling."""
        while not predicate(stats := self.stats()):
            await self._changed.wait()
        return stats

    async def wait_connected(self, peers: Iterable[str] | None = None) -> None:
        """Wait until ``connected`` holds for each of ``peers`` (default: every neighbour)."""
        names = list(self._links if peers is None else peers)
        unknown = [p for p in names if p not in self._links]
        if unknown:
            raise NotFound(f"not neighbours: {', '.join(unknown)}", node=self.node)
        await self.wait_until(lambda s: all(s.peers[p].connected for p in names))

    def _check_peer(self, peer: str) -> None:
        if not peer or peer == self.node:
            raise InvalidArgument(f"{peer!r} cannot be a neighbour of {self.node!r}")

    def _link(self, peer: str) -> _Link:
        try:
            return self._links[peer]
        except KeyError:
            raise NotFound(f"{peer!r} is not a neighbour", node=self.node) from None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- serving ------------------------------------------------------------------------------

    async def _health(self, request: node_pb2.NodeHealthRequest) -> node_pb2.NodeHealthResponse:
        return node_pb2.NodeHealthResponse(
            protocol_version=peer_wire.PROTOCOL_VERSION,
            serving=self._deliver is not None,
            node=self.node,
        )

    async def _exchange(
        self, requests: AsyncIterator[pb.PeerBatch | Malformed]
    ) -> AsyncIterator[pb.PeerBatch]:
        self._serving += 1
        try:
            link, first = await self._accept(requests)
            scope = trio.CancelScope()
            if link.inbound is not None:
                link.inbound.cancel()  # the neighbour has redialed; the old stream is stale
            link.inbound = scope
            log.debug("%s: accepted a stream from %s", self.node, link.name)
            greeting = first.messages[0].hello
            self._note_incarnation(link, greeting.incarnation)
            self._receive(link, first, start=1)
            yield peer_wire.batch(
                self.node,
                [peer_wire.hello(self.node, greeting.sequence, incarnation=self.incarnation)],
            )
            try:
                with scope:
                    async for item in requests:
                        self._receive(link, item)
            finally:
                if link.inbound is scope:
                    link.inbound = None
            if scope.cancelled_caught:
                raise Unreachable(
                    "stream closed: node stopping or replaced by a newer one", node=self.node
                )
        finally:
            self._serving -= 1
            self._notify()

    async def _accept(
        self, requests: AsyncIterator[pb.PeerBatch | Malformed]
    ) -> tuple[_Link, pb.PeerBatch]:
        """Check the first batch of a stream; a refusal raises the typed error."""
        try:
            if self._deliver is None:
                raise Unreachable("its peer transport is not running", node=self.node)
            with trio.move_on_after(HELLO_TIMEOUT_S) as wait:
                self._handshaking.add(wait)
                try:
                    first = await anext(requests, None)
                finally:
                    self._handshaking.discard(wait)
            if self._deliver is None:
                raise Unreachable("its peer transport stopped", node=self.node)
            if wait.cancelled_caught:
                raise Timeout(f"no Hello within {HELLO_TIMEOUT_S} s", node=self.node)
            if first is None:
                raise ProtocolError("stream ended before its Hello", node=self.node)
            if isinstance(first, Malformed):
                raise malformed_error(first)
            peer_wire.check_version(first)
            if self._tls is not None:
                require_node(first.sender, what=f"open a stream as node {first.sender!r}")
            link = self._links.get(first.sender)
            if link is None:
                raise PermissionDenied(f"{first.sender!r} is not a neighbour", node=self.node)
            greeting = peer_wire.hello_of(first)
            if greeting.recipient and greeting.recipient != self.node:
                raise FailedPrecondition(
                    f"{first.sender} means to reach {greeting.recipient!r}", node=self.node
                )
        except QnetError as exc:
            self._refused += 1
            self._notify()
            # A misconfigured neighbour redials every few seconds: warn once per reason.
            reason = str(exc)
            level = logging.DEBUG if reason == self._last_refusal else logging.WARNING
            self._last_refusal = reason
            log.log(level, "%s: refused a peer stream: %s", self.node, reason)
            raise
        return link, first

    def _receive(self, link: _Link, received: pb.PeerBatch | Malformed, start: int = 0) -> None:
        """Deliver a batch after the Hello; drop (and count) what is malformed."""
        if isinstance(received, Malformed):
            self._malformed(link, malformed_error(received))
            return
        peer_wire.check_version(received)
        if received.sender != link.name:
            raise PermissionDenied(
                f"a batch from {received.sender!r} on {link.name}'s stream", node=self.node
            )
        messages: list[WireMessage] = []
        for message in received.messages[start:]:
            try:
                messages.append(peer_wire.from_wire(message))
            except ProtocolError as exc:
                self._malformed(link, exc)
        if messages:
            deliver = self._deliver
            if deliver is None:
                raise Unreachable("its peer transport stopped", node=self.node)
            link.batches_received += 1
            link.messages_received += len(messages)
            self._notify()
            deliver(link.name, messages)

    def _malformed(self, link: _Link, error: QnetError) -> None:
        level = logging.WARNING if link.malformed == 0 else logging.DEBUG
        link.malformed += 1
        self._notify()
        log.log(level, "%s: dropped a malformed message from %s: %s", self.node, link.name, error)

    # -- dialing ------------------------------------------------------------------------------

    async def _dial_loop(self, link: _Link) -> None:
        delay = BACKOFF_MIN_S
        attempts = 0
        while True:
            while not link.address:
                await link.new_address.wait()
            if attempts:
                link.reconnects += 1
            attempts += 1
            address = link.address
            accepted_before = link.connects
            error: Exception | None = None
            with trio.CancelScope() as session:
                link.session = session
                try:
                    await self._session(link, address)
                except QnetError as exc:
                    error = exc
                except Exception as exc:  # a bug, or grpc surprising us: log it, keep dialing
                    log.exception("%s: stream to %s failed", self.node, link.name)
                    error = exc
                finally:
                    link.session = None
            if error is not None:
                self._dial_failed(link, address, error, link.connects > accepted_before)
            if session.cancelled_caught or link.address != address:
                delay = BACKOFF_MIN_S  # a new address: dial it now
                continue
            if link.connects > accepted_before:
                delay = BACKOFF_MIN_S
            with trio.move_on_after(delay):
                await link.new_address.wait()
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _dial_failed(self, link: _Link, address: str, error: Exception, was_up: bool) -> None:
        reason = f"{type(error).__name__}: {error}"
        if was_up:
            log.warning(
                "%s: lost the stream to %s at %s: %s", self.node, link.name, address, reason
            )
        elif link.last_error != reason:  # repeats of the same failure are not news
            log.info("%s: cannot reach %s at %s: %s", self.node, link.name, address, reason)
        link.last_error = reason
        self._notify()

    async def _session(self, link: _Link, address: str) -> NoReturn:
        """One dial attempt; raises why it failed or why the stream ended."""
        tls = None if self._tls is None else self._tls.client(Identity.node(link.name))
        channel = client_channel(address, tls)
        try:
            link.sequence += 1
            where = f"{link.name} at {address}"
            async with stream_stream(
                pb_grpc.PeerStub(channel).Exchange,
                buffer=STREAM_BUFFER,
                error_mapper=partial(rpc_error_to_qnet, where=where),
            ) as call:
                hello = peer_wire.hello(
                    self.node, link.sequence, recipient=link.name, incarnation=self.incarnation
                )
                await call.send(peer_wire.batch(self.node, [hello]))
                answers = aiter(call)
                with trio.move_on_after(HELLO_TIMEOUT_S) as wait:
                    first = await anext(answers, None)
                if wait.cancelled_caught:
                    raise Timeout(f"{where} did not answer our Hello in {HELLO_TIMEOUT_S} s")
                if first is None:
                    raise Unreachable(f"{where} closed the stream before its Hello")
                peer_wire.check_version(first)
                answer = peer_wire.hello_of(first)
                if first.sender != link.name:
                    raise FailedPrecondition(f"dialed {where}, but {first.sender!r} answered")
                self._note_incarnation(link, answer.incarnation)
                await self._connected(link, address, call, answers, first)
        finally:
            with trio.CancelScope(shield=True):
                await close_channel(channel)

    async def _connected(
        self,
        link: _Link,
        address: str,
        call: BidiStream[pb.PeerBatch, pb.PeerBatch],
        answers: AsyncIterator[pb.PeerBatch],
        first: pb.PeerBatch,
    ) -> NoReturn:
        """Ship batches and read answers until the stream ends; raise why it ended."""
        link.connected = True
        link.connects += 1
        link.last_error = ""
        self._notify()
        log.info("%s: linked to %s at %s", self.node, link.name, address)
        self._report_link(link.name, up=True)
        error: QnetError = Unreachable(f"{link.name} at {address} closed the stream")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ship, link, call)
                try:
                    self._receive(link, first, start=1)
                    async for answer in answers:
                        self._receive(link, answer)
                except QnetError as exc:
                    error = exc
                nursery.cancel_scope.cancel()
        finally:
            link.connected = False
            self._notify()
            self._report_link(link.name, up=False)
        raise error

    def _note_incarnation(self, link: _Link, incarnation: int) -> None:
        """A Hello from ``link``'s neighbour names its process: a new one after an old one
        means it restarted, which the node hears before anything the new one sent."""
        if not incarnation or incarnation == link.incarnation:
            return
        restarted = link.incarnation != 0
        link.incarnation = incarnation
        if not restarted:
            return
        # What is still queued was meant for the old process: its message ids would poison
        # the new one's duplicate filter (ids it later meets again would be dropped unread).
        link.dropped += len(link.queue)
        link.queue.clear()
        if self._peer_restarted is not None:
            try:
                self._peer_restarted(link.name)
            except Exception:  # the node's bug must not take the stream down with it
                log.exception("%s: peer_restarted(%s) failed", self.node, link.name)

    def _report_link(self, peer: str, *, up: bool) -> None:
        changed = self._link_changed
        if changed is None:
            return
        try:
            changed(peer, up)
        except Exception:  # the node's bug must not take the stream loop down with it
            log.exception("%s: link_changed(%s, %s) failed", self.node, peer, up)

    async def _ship(self, link: _Link, call: BidiStream[pb.PeerBatch, pb.PeerBatch]) -> None:
        """Send what is queued, one batch at a time, until the stream breaks."""
        while True:
            while not link.queue:
                link.ready = trio.Event()
                await link.ready.wait()
            # Let the tasks woken with us queue theirs first: a batch costs gRPC far more than
            # a message in it, and this waits for no timer.
            await trio.lowlevel.cancel_shielded_checkpoint()
            count = min(len(link.queue), self.max_batch)
            messages = [link.queue.popleft() for _ in range(count)]
            try:
                await call.send(peer_wire.batch(self.node, messages))
            except BaseException as exc:
                # Nothing reached gRPC: keep the messages for the next stream (oldest first).
                link.queue.extendleft(reversed(messages))
                while len(link.queue) > self.max_queue:
                    link.queue.popleft()
                    link.dropped += 1
                if isinstance(exc, trio.BrokenResourceError):
                    return  # the reader sees why the stream ended
                raise
            link.batches_sent += 1
            link.messages_sent += count
            self._notify()
