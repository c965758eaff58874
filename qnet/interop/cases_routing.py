"""Routing (node.proto NodeAdmin.Routes; peer.proto LinkStateAdvert; DESIGN.md §6 Network):
every daemon's table against an independent shortest-path computation on the link-state
adverts the daemons flood, which the spec peer collects as a routing neighbour."""

from __future__ import annotations

import heapq
import math
from itertools import pairwise

from qnet.interop.cases_peer import spec_peer
from qnet.interop.registry import Context, case, check
from qnet.interop.spec_peer import body, fresh_id
from qnet.interop.wire import VERSION
from qnet.v1 import node_pb2 as npb
from qnet.v1 import peer_pb2 as ppb

#: Relative tolerance on a route's cost and fidelity against our own computation.
ROUTE_TOLERANCE = 1e-6
#: A node with fewer memory qubits cannot swap, so it cannot be inside a path (peer.proto).
TRANSIT_QUBITS = 2

Graph = dict[str, dict[str, tuple[float, float]]]


def usable_graph(adverts: dict[str, ppb.LinkStateAdvert], threshold: float) -> Graph:
    """Links both ends advertise with a positive rate and a fidelity at the threshold; each
    with the smaller rate and fidelity of the two ends."""
    listed = {
        origin: {
            link.peer: (link.rate_hz, link.fidelity)
            for link in ad.links
            if link.rate_hz > 0 and link.fidelity >= threshold
        }
        for origin, ad in adverts.items()
    }
    graph: Graph = {origin: {} for origin in adverts}
    for u, links in listed.items():
        for v, (rate, fid) in links.items():
            other = listed.get(v, {}).get(u)
            if other is not None:
                graph[u][v] = (min(rate, other[0]), min(fid, other[1]))
    return graph


def dijkstra(graph: Graph, source: str, memory: dict[str, int]) -> dict[str, float]:
    """Least cost (seconds per pair, 1/rate per link) from ``source`` to each node."""
    best: dict[str, float] = {}
    heap = [(0.0, source)]
    while heap:
        cost, node = heapq.heappop(heap)
        if node in best:
            continue
        best[node] = cost
        if node != source and memory.get(node, 0) < TRANSIT_QUBITS:
            continue
        for nxt, (rate, _) in graph.get(node, {}).items():
            if nxt not in best:
                heapq.heappush(heap, (cost + 1.0 / rate, nxt))
    return best


def path_fidelity(fidelities: list[float]) -> float:
    """Werner pairs swapped along a path: (1 + 3·∏(4Fᵢ − 1)/3)/4 (DESIGN.md §5)."""
    product = math.prod((4 * f - 1) / 3 for f in fidelities)
    return (1 + 3 * product) / 4


def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=ROUTE_TOLERANCE, abs_tol=1e-12)


def check_table(routes: npb.RoutesResponse, graph: Graph, memory: dict[str, int]) -> list[str]:
    """What differs between a node's table and the shortest paths on ``graph``."""
    node = routes.node
    best = dijkstra(graph, node, memory)
    problems = []
    table = {r.destination: r for r in routes.routes}
    if set(table) != set(best) - {node}:
        return [f"{node} routes to {sorted(table)}, the adverts reach {sorted(set(best) - {node})}"]
    for dest, route in table.items():
        path = list(route.path)
        if len(path) < 2 or path[0] != node or path[-1] != dest or route.next_hop != path[1]:
            problems.append(f"{node}->{dest}: malformed path {path} (next hop {route.next_hop})")
            continue
        hops = list(pairwise(path))
        if any(v not in graph.get(u, {}) for u, v in hops):
            problems.append(f"{node}->{dest}: path {path} uses a link not in the adverts")
            continue
        cost = sum(1.0 / graph[u][v][0] for u, v in hops)
        fidelity = path_fidelity([graph[u][v][1] for u, v in hops])
        if not _close(route.cost_s, cost):
            problems.append(f"{node}->{dest}: cost {route.cost_s} but its path costs {cost}")
        if not _close(cost, best[dest]):
            problems.append(f"{node}->{dest}: path {path} costs {cost}, the shortest {best[dest]}")
        if not _close(route.fidelity, fidelity):
            problems.append(f"{node}->{dest}: fidelity {route.fidelity}, path gives {fidelity}")
    return problems


@case(
    "routing.shortest-path",
    "node.proto NodeAdmin.Routes; peer.proto LinkStateAdvert",
    "every table is the shortest paths on the flooded adverts",
)
def shortest_path(ctx: Context) -> str:
    slot = ctx.slot()
    with spec_peer(ctx, slot, routing=True) as peer:
        # A DatabaseQuery goes to a neighbour that is up (two-way): wait until the daemon's
        # hellos list the spec peer as heard.
        two_way = peer.wait_for(
            lambda m: body(m) == "net_routing_hello" and slot.name in m.net_routing_hello.heard,
            0,
            ctx.remaining(15),
        )
        check(two_way is not None, f"{slot.daemon}'s hellos never listed {slot.name} as heard")
        since = peer.mark()
        peer.send(
            ppb.PeerMessage(
                net_database_request=ppb.DatabaseQuery(node=slot.name, request_id=fresh_id())
            )
        )
        answer = peer.wait_for(
            lambda m: body(m) == "net_database_description", since, ctx.remaining(15)
        )
        check(answer is not None, f"{slot.daemon} did not answer a DatabaseQuery")
        assert answer is not None
        headers = {h.origin: h.seq for h in answer.net_database_description.headers}

        def complete(_: object) -> bool:
            return all(o in peer.adverts and peer.adverts[o].seq >= s for o, s in headers.items())

        check(
            peer.wait_for(complete, 0, ctx.remaining(15)) is not None or complete(None),
            f"{slot.daemon} described {sorted(headers)} but did not send them all",
        )
        problems: list[str] = []
        for _attempt in range(2):  # a change may be in flight once: look again
            adverts = dict(peer.adverts)
            memory = {o: a.memory_qubits for o, a in adverts.items()}
            tables = []
            for name in sorted(ctx.targets.daemons):
                routes = ctx.admin(name).Routes(
                    npb.RoutesRequest(protocol_version=VERSION), timeout=ctx.remaining(10)
                )
                check(routes.converged, f"routing on {name} has not converged")
                tables.append(routes)
            threshold = tables[0].fidelity_threshold
            graph = usable_graph(adverts, threshold)
            problems = [p for t in tables for p in check_table(t, graph, memory)]
            if not problems:
                break
        check(not problems, "; ".join(problems[:5]))
    n = sum(len(t.routes) for t in tables)
    return f"{n} routes on {len(tables)} nodes match Dijkstra on {len(adverts)} adverts"
