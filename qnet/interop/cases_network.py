"""Cases of circuits (node.proto NetworkLayer; DESIGN.md §6 Network), checked at both ends."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from qnet.interop import stats
from qnet.interop.cases_link import BASES, subscribed
from qnet.interop.cases_routing import path_fidelity
from qnet.interop.registry import Context, Failed, Unsupported, case, check, link_pair
from qnet.interop.wire import VERSION, Pump, StreamEnded
from qnet.v1 import channel_pb2 as cpb
from qnet.v1 import node_pb2 as npb

CIRCUIT_PAIRS = 60
CIRCUIT_FIDELITY = 0.8


def far_pair(ctx: Context, hops: int = 2) -> tuple[str, str, list[str]]:
    """Two target daemons whose route has at least ``hops`` hops, all of it on targets."""
    for name in sorted(ctx.targets.daemons):
        routes = ctx.admin(name).Routes(
            npb.RoutesRequest(protocol_version=VERSION), timeout=ctx.remaining(10)
        )
        for r in sorted(routes.routes, key=lambda r: (-len(r.path), r.destination)):
            if len(r.path) - 1 >= hops and all(n in ctx.targets.daemons for n in r.path):
                return name, r.destination, list(r.path)
    raise Unsupported(f"no route of {hops} hops between target daemons")


@dataclass
class CircuitRun:
    opened: npb.CircuitOpened
    incoming: npb.CircuitIncoming
    head: list[npb.CircuitPair]
    tail: list[npb.CircuitPair]
    closed: npb.CircuitClosed | None


def subscribe_circuits(
    ctx: Context, node: str, basis: cpb.Basis.ValueType
) -> Pump[npb.CircuitEvent]:
    call = ctx.network(node).CircuitEvents(
        npb.CircuitEventsRequest(protocol_version=VERSION, measure_on_delivery=basis),
        timeout=ctx.remaining(),
    )
    return subscribed(ctx, Pump(call, "circuit-events"), f"CircuitEvents on {node}")


def open_circuit(
    ctx: Context,
    head: str,
    tail: str,
    n: int,
    basis: cpb.Basis.ValueType,
    fidelity: float = CIRCUIT_FIDELITY,
) -> Pump[npb.CircuitEvent]:
    call = ctx.network(head).OpenCircuit(
        npb.OpenCircuitRequest(
            protocol_version=VERSION,
            destination=tail,
            min_fidelity=fidelity,
            number=n,
            measure_on_delivery=basis,
        ),
        timeout=ctx.remaining(),
    )
    return Pump(call, "circuit")


@dataclass
class Seen:
    """The events of one circuit at one end."""

    opened: npb.CircuitOpened | None = None
    incoming: npb.CircuitIncoming | None = None
    pairs: list[npb.CircuitPair] = field(default_factory=list)
    closed: npb.CircuitClosed | None = None


CircuitKey = tuple[str, int]


def drain(
    ctx: Context, pump: Pump[npb.CircuitEvent], circuits: set[CircuitKey] | None = None
) -> dict[CircuitKey, Seen]:
    """Events of a circuit stream until it ends, or until each of ``circuits`` closed."""
    found: dict[CircuitKey, Seen] = {}
    while True:
        try:
            event = pump.next(ctx.remaining(30))
        except StreamEnded as end:
            if end.status is not None and end.status.code != grpc.StatusCode.OK:
                raise Failed(f"circuit stream failed: {end.status}") from None
            return found
        except TimeoutError:
            raise Failed(f"circuit events stopped coming ({len(found)} circuits seen)") from None
        kind = event.WhichOneof("event")
        if kind is None or kind == "subscribed":
            continue
        inner = getattr(event, kind)
        key = (str(inner.circuit_id.head), int(inner.circuit_id.circuit))
        if circuits is not None and key not in circuits:
            continue
        seen = found.setdefault(key, Seen())
        if kind == "pair":
            seen.pairs.append(event.pair)
        elif kind == "opened":
            seen.opened = event.opened
        elif kind == "incoming":
            seen.incoming = event.incoming
        else:
            seen.closed = event.closed
        if circuits is not None and all(
            c in found and found[c].closed is not None for c in circuits
        ):
            return found


def run_circuit(
    ctx: Context, head: str, tail: str, n: int, basis: cpb.Basis.ValueType
) -> CircuitRun:
    tail_pump = subscribe_circuits(ctx, tail, basis)
    try:
        head_pump = open_circuit(ctx, head, tail, n, basis)
        try:
            at_head = drain(ctx, head_pump)
        finally:
            head_pump.cancel()
        check(len(at_head) == 1, f"OpenCircuit streamed {len(at_head)} circuits")
        key, mine = next(iter(at_head.items()))
        at_tail = drain(ctx, tail_pump, {key})
    finally:
        tail_pump.cancel()
    return combine(mine, at_tail[key])


def combine(mine: Seen, theirs: Seen) -> CircuitRun:
    if mine.opened is None or theirs.incoming is None:
        raise Failed("the head saw no opened event or the tail no incoming one")
    return CircuitRun(mine.opened, theirs.incoming, mine.pairs, theirs.pairs, mine.closed)


def error_rate(run: CircuitRun, basis: str) -> tuple[int, int, float]:
    """Wrong correlations among pairs matched by index, their count, and the expected rate."""
    tail = {p.index: p for p in run.tail}
    check(
        [p.index for p in run.head] == list(range(len(run.head))),
        "head's pair indices are not 0, 1, …",
    )
    check(set(tail) == {p.index for p in run.head}, "the ends delivered different pair indices")
    wrong = 0
    expected = []
    for p in run.head:
        q = tail[p.index]
        check(p.measured and q.measured, "a measure_on_delivery pair was not measured")
        wrong += (p.outcome != q.outcome) != stats.expected_disagreement(0, basis)
        weights = (
            list(q.weights)
            if len(q.weights) == 4
            else list(stats.werner_weights(q.fidelity_estimate))
        )
        expected.append(stats.error_probability(weights, basis))
    return wrong, len(run.head), stats.mean(expected)


@case(
    "circuit.pauli-frame",
    "node.proto CircuitPair; DESIGN.md §6 Network (Pauli frames)",
    "multi-hop pairs corrected to Φ+ at both ends",
    timeout_s=120.0,
)
def pauli_frame(ctx: Context) -> str:
    head, tail, path = far_pair(ctx)
    parts = []
    for basis in ("Z", "X", "Y"):
        run = run_circuit(ctx, head, tail, CIRCUIT_PAIRS, BASES[basis])
        check(list(run.opened.path) == path, f"circuit path {list(run.opened.path)}, route {path}")
        wrong, n, p = error_rate(run, basis)
        bound = stats.binomial_bound(wrong, n, p, allowance=ctx.allowance)
        check(bound.ok, f"{'-'.join(path)} {basis}: error rate {bound}")
        parts.append(f"{basis} {wrong}/{n}")
    return f"{'-'.join(path)}: errors " + ", ".join(parts)


@case(
    "circuit.cutoff",
    "node.proto CircuitOpened.cutoff_ns; peer.proto CircuitAccept",
    "the plan's cutoff and fidelity budget hold at both ends",
)
def cutoff(ctx: Context) -> str:
    head, tail, path = far_pair(ctx)
    run = run_circuit(ctx, head, tail, 10, BASES["Z"])
    o, i = run.opened, run.incoming
    check(o.cutoff_ns > 0, "the circuit has no cutoff")
    check(
        o.cutoff_ns == i.cutoff_ns, f"cutoff {o.cutoff_ns} at the head, {i.cutoff_ns} at the tail"
    )
    check(list(o.link_fidelity) == list(i.link_fidelity), "the ends got different link budgets")
    check(len(o.link_fidelity) == len(path) - 1, "one link fidelity per link expected")
    planned = path_fidelity(list(o.link_fidelity))
    check(
        planned >= CIRCUIT_FIDELITY - 1e-9,
        f"the link budget gives {planned:.4f} < {CIRCUIT_FIDELITY}",
    )
    low = [
        p.fidelity_estimate
        for p in run.head + run.tail
        if p.fidelity_estimate < CIRCUIT_FIDELITY - 1e-9
    ]
    check(not low, f"pairs delivered below the target: {low[:3]}")
    check(
        len(run.head) == 10
        and run.closed is not None
        and run.closed.code == npb.CIRCUIT_CLOSE_CODE_COMPLETED,
        f"{len(run.head)} pairs, closed {run.closed}",
    )
    return (
        f"cutoff {o.cutoff_ns / 1e6:.2f} ms at both ends; budget {planned:.4f}; 20 halves ≥ target"
    )


def memory_in_use(ctx: Context, nodes: list[str]) -> dict[str, int]:
    out = {}
    for n in nodes:
        status = ctx.admin(n).Status(
            npb.StatusRequest(protocol_version=VERSION), timeout=ctx.remaining(10)
        )
        out[n] = status.memory_qubits_in_use
    return out


@case(
    "circuit.reject",
    "node.proto NetworkLayer.OpenCircuit; peer.proto CircuitReject",
    "a rejected circuit leaves no reservation",
)
def reject(ctx: Context) -> str:
    head, tail, path = far_pair(ctx)
    before = memory_in_use(ctx, path)
    pump = open_circuit(ctx, head, tail, 1, BASES["Z"], fidelity=0.9999)
    try:
        try:
            event = pump.next(ctx.remaining(20))
            raise Failed(f"an unreachable fidelity opened a circuit: {event}")
        except StreamEnded as end:
            status = end.status
    finally:
        pump.cancel()
    check(
        status is not None and status.code == grpc.StatusCode.UNIMPLEMENTED,
        f"an unreachable fidelity failed with {status}, expected UNIMPLEMENTED Unsupported",
    )
    after = memory_in_use(ctx, path)
    check(after == before, f"memory in use {before} before, {after} after the reject")
    run = run_circuit(ctx, head, tail, 2, BASES["Z"])
    check(len(run.head) == 2, "the path served no circuit after the reject")
    return f"{status}; memory in use unchanged {after}; a circuit opened afterwards"


@case(
    "circuit.isolation",
    "node.proto NetworkLayer; DESIGN.md §6 Network (circuits)",
    "two circuits on one link keep their pairs apart",
    timeout_s=90.0,
)
def isolation(ctx: Context) -> str:
    a, b = link_pair(ctx)
    n = 20
    tail_pump = subscribe_circuits(ctx, b, BASES["Z"])
    heads = [open_circuit(ctx, a, b, n, BASES["Z"]) for _ in range(2)]
    try:
        at_heads = [drain(ctx, h) for h in heads]
        keys = [next(iter(h)) for h in at_heads]
        check(keys[0] != keys[1], "both circuits got the same id")
        at_tail = drain(ctx, tail_pump, set(keys))
    finally:
        for h in heads:
            h.cancel()
        tail_pump.cancel()
    parts = []
    for key, seen in zip(keys, at_heads, strict=True):
        run = combine(seen[key], at_tail[key])
        check(len(run.head) == n, f"circuit {key} delivered {len(run.head)} of {n}")
        wrong, count, p = error_rate(run, "Z")
        bound = stats.binomial_bound(wrong, count, p, allowance=ctx.allowance)
        check(bound.ok, f"circuit {key}: Z error rate {bound} (pairs of the other circuit?)")
        parts.append(f"{key[0]}#{key[1]} {wrong}/{count}")
    return "Z errors " + ", ".join(parts)
