"""Cases of the link layer (node.proto LinkLayer; DESIGN.md §6 Link): CREATE validation and
pairs checked at both ends against measured correlations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from qnet.interop import stats
from qnet.interop.cases_peer import spec_peer
from qnet.interop.registry import Context, Failed, case, check, link_pair
from qnet.interop.spec_peer import body, fresh_id
from qnet.interop.wire import VERSION, Pump, StreamEnded, expect_error
from qnet.v1 import channel_pb2 as cpb
from qnet.v1 import node_pb2 as npb
from qnet.v1 import peer_pb2 as ppb

T = TypeVar("T")

BASES: dict[str, cpb.Basis.ValueType] = {"Z": cpb.BASIS_Z, "X": cpb.BASIS_X, "Y": cpb.BASIS_Y}
BASIS_NAMES = {v: k for k, v in BASES.items()}
LINK_BASES = {"Z": npb.LINK_BASIS_Z, "X": npb.LINK_BASIS_X, "Y": npb.LINK_BASIS_Y}
#: Pairs per basis in the KEEP case, and MEASURE pairs (a third match bases at both ends).
KEEP_PAIRS = 100
MEASURE_PAIRS = 450


@dataclass(frozen=True, slots=True)
class Created:
    oks: list[npb.LinkOk]
    err: npb.LinkErr | None
    accepted: npb.LinkAccepted | None


def create(ctx: Context, node: str, request: npb.LinkCreateRequest, cap: float = 30.0) -> Created:
    """Run a CREATE to its end: the accepted event, the OKs and the ERR if any."""
    oks: list[npb.LinkOk] = []
    err = None
    accepted = None
    for event in ctx.link(node).LinkCreate(request, timeout=ctx.remaining(cap)):
        kind = event.WhichOneof("event")
        if kind == "accepted":
            accepted = event.accepted
        elif kind == "ok":
            oks.append(event.ok)
        elif kind == "err":
            err = event.err
    return Created(oks, err, accepted)


def subscribe(
    ctx: Context, node: str, peer: str, basis: cpb.Basis.ValueType = cpb.BASIS_UNSPECIFIED
) -> Pump[npb.LinkEvent]:
    call = ctx.link(node).LinkEvents(
        npb.LinkEventsRequest(protocol_version=VERSION, peer=peer, measure_on_delivery=basis),
        timeout=ctx.remaining(),
    )
    return subscribed(ctx, Pump(call, "link-events"), f"LinkEvents on {node}")


def subscribed(ctx: Context, pump: Pump[T], what: str) -> Pump[T]:
    """``pump`` once its stream opened with ``subscribed``, as every events stream must."""
    first: Any = pump.next(ctx.remaining(10))
    if first.WhichOneof("event") != "subscribed":
        pump.cancel()
        raise Failed(f"{what} did not start with subscribed: {first}")
    return pump


def collect(
    ctx: Context, pump: Pump[npb.LinkEvent], origin: str, create_id: int, n: int
) -> list[npb.LinkOk]:
    """The other end's OKs of request (origin, create_id): ``n`` of them or its ERR."""
    oks: list[npb.LinkOk] = []
    while len(oks) < n:
        try:
            event = pump.next(ctx.remaining(20))
        except (TimeoutError, StreamEnded) as exc:
            raise Failed(f"the other end saw {len(oks)} of {n} pairs: {exc}") from None
        kind = event.WhichOneof("event")
        if kind == "ok" and (event.ok.origin, event.ok.create_id) == (origin, create_id):
            oks.append(event.ok)
        elif kind == "err" and (event.err.origin, event.err.create_id) == (origin, create_id):
            break
    return oks


def request(remote: str, number: int, **fields: Any) -> npb.LinkCreateRequest:
    """A CREATE of ``number`` pairs with ``remote`` (KEEP unless ``kind`` says otherwise)."""
    fields.setdefault("kind", npb.PAIR_KIND_KEEP)
    return npb.LinkCreateRequest(protocol_version=VERSION, remote=remote, number=number, **fields)


@case(
    "link.create-validation",
    "node.proto LinkLayer.LinkCreate; DESIGN.md §6 Link",
    "malformed CREATEs refused; UNSUPPORTED and TIMEOUT paths",
)
def create_validation(ctx: Context) -> str:
    a, b = link_pair(ctx)
    link = ctx.link(a)
    seen = []
    malformed = {
        "number 0": (request(b, 0), grpc.StatusCode.INVALID_ARGUMENT),
        "fidelity 1.5": (request(b, 1, min_fidelity=1.5), grpc.StatusCode.INVALID_ARGUMENT),
        "unknown neighbour": (request("interop-nobody", 1), grpc.StatusCode.NOT_FOUND),
        "wrong version": (
            npb.LinkCreateRequest(protocol_version=VERSION + 1, remote=b, number=1),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    }
    for what, (req, code) in malformed.items():
        status = expect_error(lambda req=req: list(link.LinkCreate(req, timeout=ctx.remaining(10))))  # type: ignore[misc]
        check(status is not None, f"a CREATE with {what} was accepted")
        assert status is not None
        check(status.code == code, f"a CREATE with {what}: {status}, expected {code.name}")
        seen.append(f"{what} {status.code.name}")
    out = create(ctx, a, request(b, 2, min_fidelity=0.9999, kind=npb.PAIR_KIND_KEEP))
    check(out.accepted is not None, "an unreachable fidelity: no accepted event first")
    check(not out.oks, f"an unreachable fidelity delivered {len(out.oks)} pairs")
    check(
        out.err is not None and out.err.code == npb.LINK_ERROR_CODE_UNSUPPORTED,
        f"an unreachable fidelity ended with {out.err}",
    )
    seen.append("fidelity 0.9999 UNSUPPORTED")
    out = create(ctx, a, request(b, 10_000, max_time_ns=1_000, kind=npb.PAIR_KIND_MEASURE))
    check(
        out.err is not None and out.err.code == npb.LINK_ERROR_CODE_TIMEOUT,
        f"max_time 1 µs for 10 000 pairs ended with {out.err}",
    )
    check(len(out.oks) < 10_000, "all pairs came within 1 µs")
    seen.append(f"max_time 1 µs TIMEOUT after {len(out.oks)} pairs")
    return "; ".join(seen)


@case(
    "link.create-denied",
    "node.proto LinkErr DENIED; peer.proto LinkTerminate",
    "a master's DENIED reaches the CREATE's client",
)
def create_denied(ctx: Context) -> str:
    slot = ctx.slot(master=True)
    with spec_peer(ctx, slot) as peer:
        since = peer.mark()
        pump: Pump[npb.LinkEvent] = Pump(
            ctx.link(slot.daemon).LinkCreate(
                request(slot.name, 3, kind=npb.PAIR_KIND_KEEP), timeout=ctx.remaining(30)
            ),
            "create",
        )
        try:
            add = peer.wait_for(lambda m: body(m) == "link_queue_add", since, ctx.remaining(15))
            check(add is not None, f"{slot.daemon} sent its master no QueueAdd for a CREATE")
            assert add is not None
            q = add.link_queue_add
            check(
                q.origin == slot.daemon and q.number == 3 and q.kind == "keep",
                f"the QueueAdd does not carry the CREATE: {q}",
            )
            end = ppb.LinkTerminate(
                msg_id=fresh_id(),
                origin=q.origin,
                create_id=q.create_id,
                code="denied",
                seq_first=-1,
                seq_last=-1,
                keep_count=0,
                reason="interop: queue full",
            )
            peer.send(ppb.PeerMessage(link_terminate=end))
            while True:
                event = pump.next(ctx.remaining(15))
                kind = event.WhichOneof("event")
                check(kind != "ok", "a pair was delivered on a denied request")
                if kind == "err":
                    check(event.err.code == npb.LINK_ERROR_CODE_DENIED, f"ERR {event.err}")
                    check(event.err.create_id == q.create_id, "ERR names another request")
                    break
        finally:
            pump.cancel()
    return f"QueueAdd {q.create_id} denied by the spec master; the client got ERR DENIED"


def _keep_run(
    ctx: Context, a: str, b: str, basis: str
) -> tuple[list[npb.LinkOk], list[npb.LinkOk]]:
    pump = subscribe(ctx, b, a, BASES[basis])
    try:
        out = create(
            ctx,
            a,
            request(
                b,
                KEEP_PAIRS,
                min_fidelity=0.8,
                kind=npb.PAIR_KIND_KEEP,
                measure_on_delivery=BASES[basis],
            ),
        )
        check(out.err is None, f"KEEP {basis}: ERR {out.err}")
        check(len(out.oks) == KEEP_PAIRS, f"KEEP {basis}: {len(out.oks)} of {KEEP_PAIRS} OKs")
        assert out.accepted is not None
        far = collect(ctx, pump, out.accepted.origin, out.accepted.create_id, KEEP_PAIRS)
    finally:
        pump.cancel()
    return out.oks, far


def match_pairs(
    near: list[npb.LinkOk], far: list[npb.LinkOk]
) -> list[tuple[npb.LinkOk, npb.LinkOk]]:
    """Pairs matched by pair id (link id, sequence); each end's ids must be the same set."""
    ids = {(o.link_id, o.sequence): o for o in far}
    check(len(ids) == len(far), "the far end saw a pair id twice")
    mine = {(o.link_id, o.sequence) for o in near}
    check(len(mine) == len(near), "the near end saw a pair id twice")
    check(mine == set(ids), f"pair ids differ: {sorted(mine ^ set(ids))[:4]}")
    out = []
    for ok in near:
        other = ids[(ok.link_id, ok.sequence)]
        check(
            other.bell_index == ok.bell_index,
            f"pair {ok.sequence}: Bell index {ok.bell_index} vs {other.bell_index}",
        )
        check(other.index_in_request == ok.index_in_request, f"pair {ok.sequence}: index differs")
        check(other.purpose == ok.purpose, f"pair {ok.sequence}: purpose differs")
        out.append((ok, other))
    check([o.index_in_request for o in near] == list(range(len(near))), "OKs out of request order")
    return out


@case(
    "link.keep",
    "node.proto LinkOk (KEEP); DESIGN.md §6 Link",
    "KEEP pairs match at both ends, fidelity as estimated",
    timeout_s=90.0,
)
def keep(ctx: Context) -> str:
    a, b = link_pair(ctx)
    errors: dict[str, float] = {}
    estimates: list[float] = []
    parts = []
    for basis in ("Z", "X", "Y"):
        near, far = _keep_run(ctx, a, b, basis)
        pairs = match_pairs(near, far)
        wrong = 0
        for ok, other in pairs:
            check(ok.measured and other.measured, "a measure_on_delivery pair was not measured")
            check(
                ok.basis == BASES[basis] and other.basis == BASES[basis],
                "measured in the wrong basis",
            )
            differ = ok.outcome != other.outcome
            wrong += differ != stats.expected_disagreement(ok.bell_index, basis)
            estimates.append(ok.fidelity_estimate)
        f_est = stats.mean([ok.fidelity_estimate for ok, _ in pairs])
        bound = stats.binomial_bound(
            wrong, len(pairs), 2 * (1 - f_est) / 3, allowance=ctx.allowance
        )
        check(bound.ok, f"KEEP {basis} error rate {bound}")
        errors[basis] = wrong / len(pairs)
        parts.append(f"{basis} {wrong}/{len(pairs)}")
    measured = stats.fidelity_from_errors(errors)
    return (
        f"F measured {measured:.3f} vs estimated {stats.mean(estimates):.3f}; errors "
        + ", ".join(parts)
    )


@case(
    "link.measure",
    "node.proto LinkOk (MEASURE); DESIGN.md §6 Link",
    "uniform random bases, QBER as estimated",
    timeout_s=90.0,
)
def measure(ctx: Context) -> str:
    a, b = link_pair(ctx)
    pump = subscribe(ctx, b, a)
    try:
        out = create(
            ctx,
            a,
            request(
                b,
                MEASURE_PAIRS,
                min_fidelity=0.8,
                kind=npb.PAIR_KIND_MEASURE,
                basis=npb.LINK_BASIS_RANDOM,
            ),
        )
        check(out.err is None, f"MEASURE: ERR {out.err}")
        check(len(out.oks) == MEASURE_PAIRS, f"{len(out.oks)} of {MEASURE_PAIRS} OKs")
        assert out.accepted is not None
        far = collect(ctx, pump, out.accepted.origin, out.accepted.create_id, MEASURE_PAIRS)
    finally:
        pump.cancel()
    pairs = match_pairs(out.oks, far)
    for end, oks in ((a, out.oks), (b, far)):
        counts = [sum(o.basis == BASES[x] for o in oks) for x in ("Z", "X", "Y")]
        check(sum(counts) == len(oks), f"{end}: a MEASURE OK has no basis")
        for name, bound in zip(("Z", "X", "Y"), stats.uniform_bound(counts), strict=True):
            check(bound.ok, f"{end}: basis {name} drawn at {bound}")
    same = [(x, y) for x, y in pairs if x.basis == y.basis]
    check(len(same) >= 10, f"only {len(same)} pairs share a basis")
    wrong = sum(
        (x.outcome != y.outcome) != stats.expected_disagreement(x.bell_index, BASIS_NAMES[x.basis])
        for x, y in same
    )
    f_est = stats.mean([x.fidelity_estimate for x, _ in same])
    bound = stats.binomial_bound(wrong, len(same), 2 * (1 - f_est) / 3, allowance=ctx.allowance)
    check(bound.ok, f"QBER {bound}")
    return f"{len(same)} pairs in matching bases, QBER {bound}"
