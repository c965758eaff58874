"""Cases of the Peer protocol (peer.proto), driven by the spec peer as a daemon's neighbour,
and of the channel backend's ownership rule (channel.proto)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from qnet.interop.registry import Context, Failed, Unsupported, case, check
from qnet.interop.spec_peer import Message, SpecPeer, body, fresh_id, unknown_message
from qnet.interop.targets import Slot
from qnet.interop.tls import MissingCredential
from qnet.interop.wire import VERSION, Pump, Status, expect_error
from qnet.v1 import channel_pb2 as cpb
from qnet.v1 import node_pb2 as npb
from qnet.v1 import peer_pb2 as ppb

#: An EGP request fidelity no link reaches: the master must end it UNSUPPORTED at once.
UNREACHABLE_FIDELITY = 0.99999
#: Herald sequences no pair of the spec peer's link ever had: one just ahead (the daemon waits
#: for its herald, then reports the pair lost) and one absurdly far ahead (a daemon that would
#: account for every sequence up to it, instead of refusing it, does not survive this).
NEVER_HERALDED_SEQS = (3, 10**12)


def _fresh_id() -> int:
    """A msg_id or create_id never used before by this slot's name, in this run or an earlier
    one against the same daemon: a daemon rightly ignores a repeated msg_id."""
    return fresh_id()


def new_spec_peer(ctx: Context, slot: Slot, *, routing: bool = False) -> SpecPeer:
    """A spec peer for ``slot``, over TLS when the targets use it; ``Unsupported`` if the
    certificate directory lacks the slot's credential."""
    try:
        return SpecPeer(slot, ctx.address(slot.daemon), routing=routing, certs=ctx.targets.certs)
    except MissingCredential as exc:
        raise Unsupported(str(exc)) from None


@contextmanager
def spec_peer(ctx: Context, slot: Slot, *, routing: bool = False) -> Iterator[SpecPeer]:
    peer = new_spec_peer(ctx, slot, routing=routing)
    try:
        try:
            peer.start(ctx.remaining(15))
        except (ConnectionError, TimeoutError) as exc:
            # A daemon whose dial we refused (bad Hello, wrong certificate) shows up here as
            # a timeout: the refusal's reason is the useful part.
            refused = f"; we refused its dial: {peer.hello_problems}" if peer.hello_problems else ""
            raise Failed(
                f"spec peer {slot.name} could not join {slot.daemon}: {exc}{refused}"
            ) from None
        check(
            not peer.hello_problems,
            f"{slot.daemon} dialed {slot.name} with a bad Hello: {peer.hello_problems}",
        )
        yield peer
    finally:
        peer.close()


def counters(ctx: Context, node: str) -> npb.CountersResponse:
    return ctx.admin(node).Counters(
        npb.CountersRequest(protocol_version=VERSION), timeout=ctx.remaining(10)
    )


def malformed_from(reply: npb.CountersResponse, peer: str) -> int:
    return next((p.malformed for p in reply.peers if p.peer == peer), 0)


def still_serving(ctx: Context, node: str) -> None:
    health = ctx.admin(node).Health(
        npb.NodeHealthRequest(protocol_version=VERSION), timeout=ctx.remaining(10)
    )
    check(health.serving, f"{node} stopped serving")


def queue_add(origin: str, create_id: int, *, msg_id: int | None = None, **fields: Any) -> Message:
    values: dict[str, Any] = {
        "msg_id": msg_id if msg_id is not None else _fresh_id(),
        "origin": origin,
        "create_id": create_id,
        "number": 1,
        "min_fidelity": UNREACHABLE_FIDELITY,
        "deadline_ns": -1,
        "kind": "keep",
        "basis": "Z",
    }
    values.update(fields)
    return Message(link_queue_add=ppb.LinkQueueAdd(**values))


def end_request(peer: SpecPeer, create_id: int, code: str) -> None:
    """As the link's master, end our own request (so the daemon frees what it armed)."""
    end = ppb.LinkTerminate(
        msg_id=_fresh_id(),
        origin=peer.name,
        create_id=create_id,
        code=code,
        seq_first=-1,
        seq_last=-1,
        keep_count=0,
        reason="interop: done",
    )
    peer.send(Message(link_terminate=end))


def acked(msg_id: int) -> Callable[[Message], bool]:
    return lambda m: body(m) == "link_ack" and msg_id in m.link_ack.msg_ids


def terminates(origin: str, create_id: int) -> Callable[[Message], bool]:
    def match(m: Message) -> bool:
        return (
            body(m) == "link_terminate"
            and m.link_terminate.origin == origin
            and m.link_terminate.create_id == create_id
        )

    return match


@case("peer.hello", "peer.proto Peer.Exchange (Hello)", "handshakes both ways, reconnection")
def hello(ctx: Context) -> str:
    slot = ctx.slot()
    with spec_peer(ctx, slot) as peer:
        # A newer stream from the same sender replaces the older one and is answered alike.
        again = peer.dial(peer.hello_batch())
        try:
            answer = again.answer(ctx.remaining(10))
            check(not isinstance(answer, Status), f"a reconnection was refused: {answer}")
            assert not isinstance(answer, Status)
            check(
                answer.messages and answer.messages[0].hello.sequence == peer._sequence,
                "the answer to a reconnection does not echo its sequence",
            )
        finally:
            again.close()
        still_serving(ctx, slot.daemon)
    return f"{slot.daemon} answered {slot.name}'s Hellos and dialed it with a correct one"


@case("peer.refusals", "peer.proto Peer.Exchange (refusals)", "bad first batches refused")
def refusals(ctx: Context) -> str:
    slot = ctx.slot()
    daemon = slot.daemon
    peer = new_spec_peer(ctx, slot)
    before = counters(ctx, daemon).refused_streams
    try:
        probes: list[tuple[str, ppb.PeerBatch, set[grpc.StatusCode]]] = []
        probes.append(
            (
                "wrong version",
                peer.hello_batch(version=VERSION + 1),
                {grpc.StatusCode.FAILED_PRECONDITION},
            )
        )
        stranger = ppb.PeerBatch(
            protocol_version=VERSION,
            sender="interop-stranger",
            messages=[
                Message(hello=ppb.Hello(node="interop-stranger", sequence=1, recipient=daemon))
            ],
        )
        probes.append(("unknown sender", stranger, {grpc.StatusCode.PERMISSION_DENIED}))
        probes.append(
            (
                "wrong recipient",
                peer.hello_batch(recipient=daemon + "-not"),
                {grpc.StatusCode.FAILED_PRECONDITION},
            )
        )
        no_hello = ppb.PeerBatch(
            protocol_version=VERSION,
            sender=slot.name,
            messages=[Message(link_ack=ppb.LinkAck(msg_ids=[1]))],
        )
        # peer.proto names no status for a stream without a Hello: any refusal will do.
        probes.append(("no Hello first", no_hello, set()))
        other = next(
            (s.name for s in ctx.targets.slots if s.daemon == daemon and s.name != slot.name), ""
        )
        if ctx.targets.certs is not None and other:
            # Over TLS a Hello must come from the node the caller's certificate names, even
            # when the name it claims is a configured neighbour.
            claimed = ppb.PeerBatch(
                protocol_version=VERSION,
                sender=other,
                messages=[Message(hello=ppb.Hello(node=other, sequence=1, recipient=daemon))],
            )
            probes.append(
                (
                    f"{other}'s Hello over {slot.name}'s certificate",
                    claimed,
                    {grpc.StatusCode.PERMISSION_DENIED},
                )
            )
        seen = []
        for what, batch, codes in probes:
            stream = peer.dial(batch)
            try:
                answer = stream.answer(ctx.remaining(15))
            finally:
                stream.close()
            if not isinstance(answer, Status):
                raise Failed(f"{what}: the stream was accepted ({answer.sender} answered)")
            check(answer.code != grpc.StatusCode.OK, f"{what}: the stream ended without a status")
            check(
                not codes or answer.code in codes,
                f"{what}: refused with {answer}, expected {sorted(c.name for c in codes)}",
            )
            check(answer.error_type, f"{what}: no qnet-error metadata with {answer}")
            seen.append(f"{what} {answer.code.name}/{answer.error_type}")
    finally:
        peer.close()
    after = counters(ctx, daemon).refused_streams
    check(after >= before + len(probes), f"refused_streams went {before} -> {after}")
    still_serving(ctx, daemon)
    return "; ".join(seen)


@case(
    "peer.unknown-message",
    "peer.proto PeerMessage (unknown case)",
    "dropped, counted, stream lives",
)
def unknown(ctx: Context) -> str:
    slot = ctx.slot()
    with spec_peer(ctx, slot) as peer:
        before = malformed_from(counters(ctx, slot.daemon), slot.name)
        since = peer.mark()
        msg_id = _fresh_id()
        create_id = _fresh_id()
        peer.send(unknown_message(), queue_add(slot.name, create_id, msg_id=msg_id))
        check(
            peer.wait_for(acked(msg_id), since, ctx.remaining(15)) is not None,
            "the valid message after an unknown one was not acknowledged",
        )
        if slot.master:
            end_request(peer, create_id, "unsupported")
        after = malformed_from(counters(ctx, slot.daemon), slot.name)
        check(after == before + 1, f"malformed count for {slot.name} went {before} -> {after}")
        still_serving(ctx, slot.daemon)
    return f"{slot.daemon} counted it (malformed {before} -> {after}) and acknowledged the next"


@case(
    "peer.duplicate", "peer.proto link layer (msg_id, duplicates)", "acked every copy, acted once"
)
def duplicate(ctx: Context) -> str:
    slot = ctx.slot(master=False)
    with spec_peer(ctx, slot) as peer:
        errors_before = counters(ctx, slot.daemon).protocol_errors
        since = peer.mark()
        create_id = _fresh_id()
        msg_id = _fresh_id()
        add = queue_add(slot.name, create_id, msg_id=msg_id)
        peer.send(add)
        peer.send(add)
        check(
            peer.wait_for(terminates(slot.name, create_id), since, ctx.remaining(15)) is not None,
            f"the master {slot.daemon} never ended a request it cannot serve",
        )

        def ack_count() -> int:
            return sum(list(a.msg_ids).count(msg_id) for a in peer.received(since, "link_ack"))

        if ack_count() < 2:
            peer.wait_for(lambda m: ack_count() >= 2, since, ctx.remaining(10))
        acks = ack_count()
        check(acks >= 2, f"two copies of message {msg_id} got {acks} acknowledgements")
        errors_mid = counters(ctx, slot.daemon).protocol_errors
        check(errors_mid == errors_before, "an exact duplicate was counted as a protocol error")
        # The same request under a new message id is a protocol error, not a second request.
        mark = peer.mark()
        again_id = _fresh_id()
        peer.send(queue_add(slot.name, create_id, msg_id=again_id))
        check(
            peer.wait_for(acked(again_id), mark, ctx.remaining(15)),
            "the repeat was not acknowledged",
        )
        errors_after = counters(ctx, slot.daemon).protocol_errors
        check(errors_after > errors_mid, "a request repeated under a new msg_id was not refused")
        ends = {
            t.msg_id for t in peer.received(since, "link_terminate") if t.create_id == create_id
        }
        check(len(ends) == 1, f"the request was ended {len(ends)} times")
        still_serving(ctx, slot.daemon)
    return f"{acks} acks for one message, one Terminate, repeat refused as a protocol error"


@case("peer.out-of-order", "peer.proto LinkExpire (order)", "an Expire before any assignment")
def out_of_order(ctx: Context) -> str:
    slot = ctx.slot(master=False)
    with spec_peer(ctx, slot) as peer:
        before = counters(ctx, slot.daemon).protocol_errors
        since = peer.mark()
        expire_id = _fresh_id()
        expire = ppb.LinkExpire(
            msg_id=expire_id, origin=slot.name, create_id=_fresh_id(), index=0, seq=1
        )
        create_id = _fresh_id()
        peer.send(Message(link_expire=expire), queue_add(slot.name, create_id))
        check(
            peer.wait_for(terminates(slot.name, create_id), since, ctx.remaining(15)) is not None,
            "after an out-of-order Expire the link stopped working",
        )
        after = counters(ctx, slot.daemon).protocol_errors
        check(after > before, f"the out-of-order Expire was not counted ({before} -> {after})")
        still_serving(ctx, slot.daemon)
    return f"refused as a protocol error ({before} -> {after}); the next request was served"


@case(
    "peer.never-heralded",
    "peer.proto LinkPairAssign (pair id)",
    "an assignment of a pair never heralded",
)
def never_heralded(ctx: Context) -> str:
    slot = ctx.slot(master=True)
    events = ctx.link(slot.daemon).LinkEvents(
        npb.LinkEventsRequest(protocol_version=VERSION, peer=slot.name), timeout=ctx.remaining()
    )
    pump: Pump[npb.LinkEvent] = Pump(events, "events")
    try:
        first = pump.next(ctx.remaining(10))
        check(first.WhichOneof("event") == "subscribed", "LinkEvents did not start with subscribed")
        with spec_peer(ctx, slot) as peer:
            answers = [_assign_unheralded(ctx, peer, pump, seq) for seq in NEVER_HERALDED_SEQS]
        still_serving(ctx, slot.daemon)
    finally:
        pump.cancel()
    return f"{slot.daemon}: " + "; ".join(answers) + "; no OK delivered"


def _assign_unheralded(ctx: Context, peer: SpecPeer, pump: Pump[npb.LinkEvent], seq: int) -> str:
    """Assign herald ``seq`` (never heralded) to a request of ours; the daemon must report the
    pair lost (LinkExpire) or refuse the assignment (a protocol error), never deliver it."""
    daemon = peer.daemon
    errors_before = counters(ctx, daemon).protocol_errors
    since = peer.mark()
    create_id = _fresh_id()
    assign = ppb.LinkPairAssign(
        msg_id=_fresh_id(), seq=seq, origin=peer.name, create_id=create_id, index=0
    )
    peer.send(queue_add(peer.name, create_id, min_fidelity=0.0), Message(link_pair_assign=assign))
    answer = ""
    try:
        while not answer:
            expire = peer.wait_for(
                lambda m: body(m) == "link_expire" and m.link_expire.seq == seq,
                since,
                ctx.remaining(0.5),
            )
            if expire is not None:
                answer = f"seq {seq}: LinkExpire"
            elif counters(ctx, daemon).protocol_errors > errors_before:
                answer = f"seq {seq}: refused as a protocol error"
    finally:
        end_request(peer, create_id, "expired")
    while True:
        event = pump.next(ctx.remaining(15))
        kind = event.WhichOneof("event")
        check(kind != "ok", f"{daemon} delivered pair {seq}, which was never heralded: {event}")
        if kind == "err" and event.err.create_id == create_id:
            return answer


@case(
    "channel.not-owned",
    "channel.proto (identity, ownership)",
    "a session acts only on its own qubits",
)
def not_owned(ctx: Context) -> str:
    names = [s.name for s in ctx.slots()]
    if len(names) < 2:
        raise Unsupported("two free node names (slots) are needed to register two sessions")
    # Over TLS each session is registered and used with its own node's certificate, so the
    # refusals below come from the ownership rule, not from the caller's identity.
    try:
        backends = [ctx.backend(as_node=name) for name in names[:2]]
    except MissingCredential as exc:
        raise Unsupported(f"the two sessions need their nodes' certificates: {exc}") from None
    sessions = []
    for name, backend in zip(names[:2], backends, strict=True):
        reply = backend.Register(
            cpb.RegisterRequest(
                protocol_version=VERSION, node=name, memory_qubits=2, takeover=True
            ),
            timeout=ctx.remaining(10),
        )
        sessions.append(reply.session)
    mine, other = sessions
    as_mine, as_other = backends
    qubits = as_mine.Allocate(
        cpb.AllocateRequest(protocol_version=VERSION, session=mine, count=1),
        timeout=ctx.remaining(10),
    ).qubits
    check(len(qubits) == 1, f"Allocate(1) gave {list(qubits)}")
    q = qubits[0]
    probes: dict[str, tuple[Callable[[], object], grpc.StatusCode]] = {
        "measure another node's qubit": (
            lambda: as_other.Measure(
                cpb.MeasureRequest(
                    protocol_version=VERSION, session=other, qubit=q, basis=cpb.BASIS_Z
                ),
                timeout=ctx.remaining(10),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "gate on another node's qubit": (
            lambda: as_other.ApplyGate(
                cpb.GateRequest(
                    protocol_version=VERSION, session=other, gate=cpb.GATE_X, qubits=[q]
                ),
                timeout=ctx.remaining(10),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    }
    if ctx.targets.certs is not None:
        mine_name = names[0]
        probes["another node's session"] = (
            lambda: as_other.Measure(
                cpb.MeasureRequest(
                    protocol_version=VERSION, session=mine, qubit=q, basis=cpb.BASIS_Z
                ),
                timeout=ctx.remaining(10),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        # Without takeover: a backend that ignored the identity would answer ALREADY_EXISTS
        # and leave the session registered as it was.
        probes["register as another node"] = (
            lambda: as_other.Register(
                cpb.RegisterRequest(
                    protocol_version=VERSION, node=mine_name, memory_qubits=2, takeover=False
                ),
                timeout=ctx.remaining(10),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    seen = []
    for what, (call, code) in probes.items():
        status = expect_error(call)
        check(status is not None, f"{what}: allowed")
        assert status is not None
        check(status.code == code, f"{what}: {status}, expected {code.name}")
        seen.append(f"{what}: {status.code.name}")
    as_mine.Free(
        cpb.FreeRequest(protocol_version=VERSION, session=mine, qubits=[q]),
        timeout=ctx.remaining(10),
    )
    return "; ".join(seen)
