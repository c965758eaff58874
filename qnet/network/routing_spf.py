"""Shortest-path computation of link-state routing: link costs, path fidelity, Dijkstra.

Cost (Van Meter et al., "Path selection for quantum repeater networks", 2013): a link costs
the seconds it takes per Bell pair at the fidelity threshold, 1/rate with the rate the link
layer's planner reaches for that threshold (``link_metrics``: bright state and purification
rounds from ``qnet.link.estimate.plan``). A path costs the sum over its links.

Fidelity: swapping two Werner pairs of fidelities F₁ and F₂ gives (DESIGN.md §5)

    F = F₁F₂ + (1 − F₁)(1 − F₂)/3,

applied hop after hop along the path. With λ = (4F − 1)/3 this is λ = λ₁λ₂, so the path's
fidelity is (1 + 3·∏λᵢ)/4 whatever the order of the swaps (``path_fidelity``).

The graph. A link enters the computation only if both ends advertise it (the two-way check),
both rates are positive and both fidelities reach the threshold; its rate and fidelity are the
smaller of the two ends' (symmetric, and conservative while the ends' measurements differ). A
node with fewer than 2 memory qubits cannot swap, so it may end a path but not be inside one.

Determinism and loops. Costs are summed as integers (attoseconds), so every node adds them
exactly and in no particular order, and ties are real ties. Ties go to the path that is
lexicographically smallest when read from the destination back. That order is preserved when
a path is extended at its source, so the route each node picks to a destination is its link to
the next hop followed by the route the next hop picks: following next hops walks exactly the
path, and nodes that hold the same database can never form a loop.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from itertools import pairwise

from qnet.link import estimate
from qnet.network.routing_events import LinkMetrics, LinkStateAdvert, RouteEntry
from qnet.physical.params import LinkParams, NodeParams

#: Integer unit in which costs are summed: one attosecond.
COST_UNIT_S = 1e-18
#: Memory qubits a node needs to swap (to carry a path through it).
TRANSIT_MEMORY_QUBITS = 2


def swap_fidelity(f1: float, f2: float) -> float:
    """Werner swap: F = F₁F₂ + (1 − F₁)(1 − F₂)/3."""
    return f1 * f2 + (1.0 - f1) * (1.0 - f2) / 3.0


def path_fidelity(fidelities: Iterable[float]) -> float:
    """Fidelity after swapping a chain of Werner pairs: the swap formula hop after hop, in
    closed form (1 + 3·∏λᵢ)/4 with λᵢ = (4Fᵢ − 1)/3. An empty path has fidelity 1."""
    product = 1.0
    for f in fidelities:
        product *= (4.0 * f - 1.0) / 3.0
    return (1.0 + 3.0 * product) / 4.0


def link_cost_units(rate_hz: float) -> int:
    """Seconds per Bell pair, 1/rate, in integer attoseconds (at least 1)."""
    return max(1, round(1.0 / (rate_hz * COST_UNIT_S)))


def link_metrics(
    link: LinkParams,
    a: tuple[str, NodeParams],
    b: tuple[str, NodeParams],
    fidelity_threshold: float,
) -> LinkMetrics:
    """What a link delivers at ``fidelity_threshold``: the fastest plan of the link layer
    (bright state, purification rounds) that reaches it, for the ends ``a`` and ``b`` given as
    (name, parameters). If no plan reaches the threshold the rate is 0 and the fidelity the
    best any plan reaches (the link is advertised, never used)."""
    (_, master), (_, slave) = sorted((a, b), key=lambda end: end[0])
    plan = estimate.plan(link, master, slave, fidelity_threshold)
    if plan is not None:
        return LinkMetrics(rate_hz=plan.rate_hz, fidelity=plan.fidelity)
    best = estimate.plan(link, master, slave, 0.0)
    return LinkMetrics(rate_hz=0.0, fidelity=best.fidelity if best is not None else 0.0)


Graph = dict[str, dict[str, LinkMetrics]]


def usable_graph(adverts: Mapping[str, LinkStateAdvert], fidelity_threshold: float) -> Graph:
    """The links SPF may use, both directions, from a link-state database (origin → advert)."""
    listed: dict[str, dict[str, LinkMetrics]] = {
        origin: {
            link.peer: LinkMetrics(link.rate_hz, link.fidelity)
            for link in advert.links
            if link.rate_hz > 0.0 and link.fidelity >= fidelity_threshold
        }
        for origin, advert in adverts.items()
    }
    graph: Graph = {origin: {} for origin in adverts}
    for u, links in listed.items():
        for v, mine in links.items():
            theirs = listed.get(v, {}).get(u)
            if theirs is not None:
                graph[u][v] = LinkMetrics(
                    min(mine.rate_hz, theirs.rate_hz), min(mine.fidelity, theirs.fidelity)
                )
    return graph


def shortest_paths(
    source: str, graph: Graph, memory_qubits: Mapping[str, int]
) -> dict[str, RouteEntry]:
    """Routes from ``source`` to every node it can reach (see the module docstring for costs,
    the transit rule and the tie-break). ``source`` itself has no entry."""
    if source not in graph:
        return {}
    costs = {
        u: {v: link_cost_units(m.rate_hz) for v, m in links.items()} for u, links in graph.items()
    }
    # Heap items: (cost, path read from its far end back to the source, path from the source).
    heap: list[tuple[int, tuple[str, ...], tuple[str, ...]]] = [(0, (source,), (source,))]
    settled: dict[str, tuple[int, tuple[str, ...]]] = {}
    while heap:
        cost, _, path = heapq.heappop(heap)
        node = path[-1]
        if node in settled:
            continue
        settled[node] = (cost, path)
        if node != source and memory_qubits.get(node, 0) < TRANSIT_MEMORY_QUBITS:
            continue  # it can end a path, not carry one
        for nxt, link_cost in costs[node].items():
            if nxt not in settled:
                longer = (*path, nxt)
                heapq.heappush(heap, (cost + link_cost, longer[::-1], longer))
    table: dict[str, RouteEntry] = {}
    for dest, (cost, path) in settled.items():
        if dest == source:
            continue
        hops = pairwise(path)
        table[dest] = RouteEntry(
            destination=dest,
            next_hop=path[1],
            path=path,
            cost_s=cost * COST_UNIT_S,
            fidelity=path_fidelity(graph[u][v].fidelity for u, v in hops),
        )
    return table


def is_finite_metrics(metrics: LinkMetrics) -> bool:
    """Local check of metrics handed to the core (a caller's mistake otherwise)."""
    return (
        math.isfinite(metrics.rate_hz)
        and metrics.rate_hz >= 0.0
        and math.isfinite(metrics.fidelity)
        and 0.0 <= metrics.fidelity <= 1.0
    )
