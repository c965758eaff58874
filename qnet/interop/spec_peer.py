"""The spec peer: a small, independent endpoint of the Peer protocol (peer.proto).

It takes the name of a *slot* (a neighbour that a daemon declares but nothing serves) and
behaves as that neighbour: it dials the daemon's ``Peer.Exchange`` and sends its own batches
there, and it serves ``Peer.Exchange`` itself, tells the daemon its address
(``NodeAdmin.SetPeers``) and receives the daemon's messages on the stream the daemon dials.
Every message the daemon sends is logged, so a case can wait (bounded) for an answer.

What it does on its own, so that a daemon sees a well-behaved neighbour:

- it answers the daemon's Hello (echoing its sequence, empty recipient) and checks it:
  version, sender and recipient (``hello_problems`` lists what was wrong);
- it acknowledges every link-layer message that carries a ``msg_id`` (``auto_ack``);
- with ``routing`` on, it answers each RoutingHello with its own (hearing the daemon, with
  the daemon's settings), acknowledges adverts and keeps the newest of each origin
  (``adverts``), and answers database queries with an empty description. It never sends an
  advert of its own, so the link to it fails the two-way check and no route uses it.

With mutual TLS (``certs``) it is the slot's node in every respect: it dials the daemon's Peer
service with the slot's certificate (``node-SLOT.pem``, which ``qnet certs`` makes for every
node of the topology) and checks the daemon's against ``node.DAEMON.qnet``; it serves with the
slot's certificate, requiring a client certificate of the CA, and checks that the daemon dials
it back with its own (``hello_problems``). ``NodeAdmin.SetPeers`` goes on a separate channel
as an application of the network.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from qnet.interop.targets import Slot
from qnet.interop.tls import CertDir, MissingCredential, node_server_name, peer_nodes
from qnet.interop.wire import VERSION, Pump, RequestQueue, Status, StreamEnded, open_channel
from qnet.v1 import node_pb2 as npb
from qnet.v1 import node_pb2_grpc as ngrpc
from qnet.v1 import peer_pb2 as ppb
from qnet.v1 import peer_pb2_grpc as pgrpc

Message = ppb.PeerMessage
#: A PeerMessage case no version of the protocol assigns (a varint field 200 of length 0).
UNKNOWN_CASE_BYTES = b"\xc2\x0c\x00"


_ids = itertools.count(time.time_ns() // 1_000)
_ids_lock = threading.Lock()


def fresh_id() -> int:
    """An id that grows across runs (microseconds since the epoch, then +1 per use): message
    ids, request ids and Hello sequences of a slot must not repeat those of an earlier run."""
    with _ids_lock:
        return next(_ids)


def body(message: Message) -> str:
    return message.WhichOneof("body") or ""


def unknown_message() -> Message:
    message = Message()
    message.MergeFromString(UNKNOWN_CASE_BYTES)
    return message


class Dialed:
    """One Exchange stream this peer dialed: ``send`` batches, ``answer`` for the first one."""

    def __init__(self, channel: grpc.Channel, first: ppb.PeerBatch) -> None:
        self.requests: RequestQueue[ppb.PeerBatch] = RequestQueue()
        self.requests.put(first)
        call = pgrpc.PeerStub(channel).Exchange(iter(self.requests))
        self.pump: Pump[ppb.PeerBatch] = Pump(call, "spec-dial")

    def send(self, batch: ppb.PeerBatch) -> None:
        self.requests.put(batch)

    def answer(self, timeout: float) -> ppb.PeerBatch | Status:
        """The daemon's first batch, or the status it refused the stream with."""
        try:
            return self.pump.next(timeout)
        except StreamEnded as end:
            return end.status or Status(grpc.StatusCode.OK, "", "ended without an answer")

    def close(self) -> None:
        self.requests.close()
        self.pump.cancel()


class SpecPeer:
    def __init__(
        self,
        slot: Slot,
        daemon_address: str,
        *,
        routing: bool = False,
        certs: CertDir | None = None,
    ) -> None:
        # Every credential is read before anything is opened: a missing one (MissingCredential)
        # leaves nothing to close.
        self._server_credentials: grpc.ServerCredentials | None = None
        peer_tls = admin_tls = None
        if certs is not None:
            try:
                peer_tls = certs.as_node(slot.name, node_server_name(slot.daemon))
                self._server_credentials = certs.node_server(slot.name)
            except MissingCredential as exc:
                raise MissingCredential(
                    f"over TLS the spec peer plays slot {slot.name} with that node's"
                    f" certificate: {exc}"
                ) from None
            admin_tls = certs.node_app(slot.daemon)
        self.name = slot.name
        self.daemon = slot.daemon
        self.daemon_address = daemon_address
        self.routing = routing
        self.auto_ack = True
        self.log: list[Message] = []
        self.hello_problems: list[str] = []
        self.inbound_hellos = 0
        self.adverts: dict[str, ppb.LinkStateAdvert] = {}
        self.daemon_routing_hello: ppb.RoutingHello | None = None
        self._changed = threading.Condition()
        self._sequence = 0
        self._routing_seq = 0
        self._channel = open_channel(daemon_address, peer_tls)
        self._admin = (
            self._channel if admin_tls is None else open_channel(daemon_address, admin_tls)
        )
        self._server: grpc.Server | None = None
        self.address = ""
        self.main: Dialed | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Serve, dial the daemon (Hello answered), give it our address, and wait until it
        has dialed us back. Raises ``TimeoutError`` or ``ConnectionError`` naming the step."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="spec"))
        server.add_generic_rpc_handlers((self._handler(),))
        if self._server_credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", self._server_credentials)
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        self.main = self.dial(self.hello_batch())
        answer = self.main.answer(timeout)
        if isinstance(answer, Status):
            raise ConnectionError(f"{self.daemon} refused the spec peer's stream: {answer}")
        problem = check_answer_hello(answer, self.daemon, self._sequence)
        if problem:
            raise ConnectionError(problem)
        ngrpc.NodeAdminStub(self._admin).SetPeers(
            npb.SetPeersRequest(protocol_version=VERSION, addresses={self.name: self.address}),
            timeout=timeout,
        )
        with self._changed:
            if not self._changed.wait_for(lambda: self.inbound_hellos > 0, timeout):
                raise TimeoutError(f"{self.daemon} did not dial the spec peer at {self.address}")

    def close(self) -> None:
        if self.main is not None:
            self.main.close()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(5.0)
        self._channel.close()
        if self._admin is not self._channel:
            self._admin.close()

    # -- sending ----------------------------------------------------------------------------

    def hello_batch(self, *, version: int = VERSION, recipient: str | None = None) -> ppb.PeerBatch:
        self._sequence = fresh_id()
        hello = ppb.Hello(
            node=self.name,
            sequence=self._sequence,
            recipient=self.daemon if recipient is None else recipient,
        )
        return ppb.PeerBatch(
            protocol_version=version, sender=self.name, messages=[Message(hello=hello)]
        )

    def dial(self, first: ppb.PeerBatch) -> Dialed:
        """A new Exchange stream to the daemon starting with ``first`` (for refusal checks)."""
        return Dialed(self._channel, first)

    def send(self, *messages: Message) -> None:
        assert self.main is not None, "start() first"
        self.main.send(ppb.PeerBatch(protocol_version=VERSION, sender=self.name, messages=messages))

    # -- receiving --------------------------------------------------------------------------

    def mark(self) -> int:
        with self._changed:
            return len(self.log)

    def wait_for(
        self, predicate: Callable[[Message], bool], since: int, timeout: float
    ) -> Message | None:
        """The first message from index ``since`` on that satisfies ``predicate``, waiting
        up to ``timeout`` s for it; None if none came."""
        found: list[Message] = []

        def seen() -> bool:
            for message in self.log[since:]:
                if predicate(message):
                    found.append(message)
                    return True
            return False

        with self._changed:
            self._changed.wait_for(seen, timeout)
        return found[0] if found else None

    def received(self, since: int, case: str) -> list[Any]:
        with self._changed:
            return [getattr(m, case) for m in self.log[since:] if body(m) == case]

    # -- serving ----------------------------------------------------------------------------

    def _handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            "qnet.v1.Peer",
            {
                "Exchange": grpc.stream_stream_rpc_method_handler(
                    self._exchange,
                    request_deserializer=ppb.PeerBatch.FromString,
                    response_serializer=ppb.PeerBatch.SerializeToString,
                ),
                "Health": grpc.unary_unary_rpc_method_handler(
                    self._health,
                    request_deserializer=npb.NodeHealthRequest.FromString,
                    response_serializer=npb.NodeHealthResponse.SerializeToString,
                ),
            },
        )

    def _health(self, request: npb.NodeHealthRequest, context: Any) -> npb.NodeHealthResponse:
        return npb.NodeHealthResponse(protocol_version=VERSION, serving=True, node=self.name)

    def _exchange(self, requests: Any, context: grpc.ServicerContext) -> Any:
        first: ppb.PeerBatch | None = next(requests, None)
        if first is None:
            return
        problems = check_dial_hello(first, self.daemon, self.name)
        if self._server_credentials is not None:
            named = peer_nodes(context)
            if self.daemon not in named:
                wrong = f"certificate of {', '.join(named)}" if named else "no node's certificate"
                problems = "; ".join(
                    p for p in (problems, f"dialed with {wrong}, not {self.daemon}'s") if p
                )
        if problems:
            with self._changed:
                self.hello_problems.append(problems)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, problems)
        hello = first.messages[0].hello
        answer = ppb.Hello(node=self.name, sequence=hello.sequence, recipient="")
        yield ppb.PeerBatch(
            protocol_version=VERSION, sender=self.name, messages=[Message(hello=answer)]
        )
        with self._changed:
            self.inbound_hellos += 1
            self._changed.notify_all()
        self._take(list(first.messages[1:]))
        for batch in requests:
            self._take(list(batch.messages))

    def _take(self, messages: list[Message]) -> None:
        replies: list[Message] = []
        with self._changed:
            for message in messages:
                self.log.append(message)
                replies += self._replies(message)
            self._changed.notify_all()
        if replies and self.main is not None:
            self.send(*replies)

    def _replies(self, message: Message) -> list[Message]:
        case = body(message)
        if case.startswith("link_") and case != "link_ack" and self.auto_ack:
            msg_id = getattr(message, case).msg_id
            return [Message(link_ack=ppb.LinkAck(msg_ids=[msg_id]))]
        if not self.routing:
            return []
        if case == "net_routing_hello":
            hello = message.net_routing_hello
            self.daemon_routing_hello = hello
            self._routing_seq += 1
            mine = ppb.RoutingHello(
                node=self.name,
                seq=self._routing_seq,
                heard=[self.daemon],
                hello_interval_ns=hello.hello_interval_ns,
                dead_interval_ns=hello.dead_interval_ns,
                fidelity_threshold=hello.fidelity_threshold,
            )
            return [Message(net_routing_hello=mine)]
        if case == "net_link_state_advert":
            advert = message.net_link_state_advert
            held = self.adverts.get(advert.origin)
            if held is None or advert.seq > held.seq:
                self.adverts[advert.origin] = advert
            ack = ppb.AdvertAck(node=self.name, origin=advert.origin, seq=advert.seq)
            return [Message(net_advert_ack=ack)]
        if case == "net_database_request":
            query = message.net_database_request
            description = ppb.DatabaseDescription(node=self.name, request_id=query.request_id)
            return [Message(net_database_description=description)]
        return []


def check_dial_hello(batch: ppb.PeerBatch, sender: str, recipient: str) -> str:
    """What is wrong with the first batch of a stream the daemon dialed to us ("" if fine)."""
    problems = []
    if batch.protocol_version != VERSION:
        problems.append(f"version {batch.protocol_version}")
    if batch.sender != sender:
        problems.append(f"sender {batch.sender!r} (expected {sender!r})")
    if not batch.messages or body(batch.messages[0]) != "hello":
        problems.append("no Hello first")
    else:
        hello = batch.messages[0].hello
        if hello.node != batch.sender:
            problems.append(f"Hello.node {hello.node!r} differs from the batch's sender")
        if hello.recipient != recipient:
            problems.append(f"Hello.recipient {hello.recipient!r} (expected {recipient!r})")
        if hello.sequence < 1:
            problems.append("Hello.sequence 0")
    return "; ".join(problems)


def check_answer_hello(batch: ppb.PeerBatch, daemon: str, sequence: int) -> str:
    """What is wrong with a serving daemon's answer to our Hello ("" if fine)."""
    problems = []
    if batch.protocol_version != VERSION:
        problems.append(f"answered with version {batch.protocol_version}")
    if batch.sender != daemon:
        problems.append(f"answered as {batch.sender!r}, not {daemon!r}")
    if not batch.messages or body(batch.messages[0]) != "hello":
        problems.append("its answer does not start with a Hello")
    else:
        hello = batch.messages[0].hello
        if hello.sequence != sequence:
            problems.append(f"its Hello echoes sequence {hello.sequence}, not {sequence}")
        if hello.recipient:
            problems.append(f"its answering Hello names recipient {hello.recipient!r}")
        if hello.node != daemon:
            problems.append(f"its Hello names node {hello.node!r}")
    return "; ".join(problems)
