"""N routing cores on a fake network, and a reference shortest-path computation to check them.

``RoutingNet`` is the driver (trio's ``_fake_net`` / h11's ``ConnectionPair``, for routing): it
delivers each ``SendTo`` after its link's delay (serialised to JSON and back, so the wire form
is exercised), fires each core's timer at its ``next_deadline``, and can cut or restore a link
(silently or telling both ends, as a transport would), kill or restart a node, change a link's
metrics, and lose, duplicate or delay messages. ``reference_routes`` is an independent
Dijkstra over the true graph (alive nodes, intact links) that the tables must equal. Other
test_routing_* modules import it; the tests here are the basic end-to-end cases.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
from dataclasses import dataclass, field

import pytest

from qnet.errors import InvalidArgument, Unreachable
from qnet.network.routing import NotConverged, RoutingConfig, RoutingCore, convergence_bound_ns
from qnet.network.routing_events import (
    LinkMetrics,
    NeighbourDown,
    RoutesChanged,
    RoutingConverged,
    RoutingOutput,
    SendTo,
    message_from_dict,
)

MS = 1_000_000

#: Fast timers for tests: hello 100 ms, dead 350 ms.
CONFIG = RoutingConfig(
    hello_interval_ns=100 * MS,
    dead_interval_ns=350 * MS,
    retransmit_interval_ns=50 * MS,
    advert_refresh_ns=4_000 * MS,
    max_age_ns=10_000 * MS,
    fidelity_threshold=0.7,
)

Key = tuple[str, str]


def key(a: str, b: str) -> Key:
    return (a, b) if a < b else (b, a)


@dataclass
class TrueLink:
    metrics: LinkMetrics
    delay_ns: int


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    #: Extra delay drawn uniformly in [0, jitter_ns] per copy, which also reorders.
    jitter_ns: int = 0
    #: At most this many messages in a row are lost on one direction of a link (None: no
    #: limit), so that loss alone does not outlast a dead interval.
    max_loss_run: int | None = None


@dataclass
class Record:
    outputs: list[tuple[int, RoutingOutput]] = field(default_factory=list)


class RoutingNet:
    def __init__(
        self,
        memory: dict[str, int],
        links: dict[Key, TrueLink],
        *,
        config: RoutingConfig = CONFIG,
        faults: Faults | None = None,
        seed: int = 1,
    ) -> None:
        self.memory = dict(memory)
        self.links = {key(*k): v for k, v in links.items()}
        self.config = config
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.now = 0
        self.cores: dict[str, RoutingCore] = {}
        self.deadlines: dict[str, int | None] = {}
        self.cut: set[Key] = set()
        self.epoch: dict[Key, int] = dict.fromkeys(self.links, 0)
        self.queue: list[tuple[int, int, str, str, str, Key, int]] = []
        self._n = 0
        self.records: dict[str, Record] = {n: Record() for n in memory}
        self.last_table_change_ns = 0
        self.delivered = 0
        self.loss_runs: dict[tuple[str, str], int] = {}

    # -- building and events -------------------------------------------------------------------

    def neighbours(self, node: str) -> dict[str, LinkMetrics]:
        out = {}
        for (a, b), link in self.links.items():
            if node in (a, b):
                out[b if node == a else a] = link.metrics
        return out

    def start(self, node: str) -> None:
        core = RoutingCore(node, self.config, self.neighbours(node), self.memory[node])
        self.cores[node] = core
        core.start(self.now)
        self._drain(node)

    def start_all(self) -> None:
        for node in sorted(self.memory):
            self.start(node)

    def kill(self, node: str) -> None:
        del self.cores[node]
        del self.deadlines[node]

    def cut_link(self, a: str, b: str, *, notify: bool) -> None:
        k = key(a, b)
        self.cut.add(k)
        self.epoch[k] += 1  # whatever is in flight is lost
        if notify:
            for end in k:
                if end in self.cores:
                    self.cores[end].link_down(k[1] if end == k[0] else k[0], self.now)
                    self._drain(end)

    def restore_link(self, a: str, b: str, *, notify: bool) -> None:
        k = key(a, b)
        self.cut.discard(k)
        if notify:
            for end in k:
                if end in self.cores:
                    self.cores[end].link_up(k[1] if end == k[0] else k[0], self.now)
                    self._drain(end)

    def set_metrics(self, a: str, b: str, metrics: LinkMetrics) -> None:
        k = key(a, b)
        self.links[k].metrics = metrics
        for end in k:
            if end in self.cores:
                self.cores[end].set_link_metrics(k[1] if end == k[0] else k[0], metrics, self.now)
                self._drain(end)

    # -- the event loop ------------------------------------------------------------------------

    def _drain(self, node: str, *, after_timer: bool = False) -> None:
        core = self.cores[node]
        for out in core.pop_outputs():
            self.records[node].outputs.append((self.now, out))
            if isinstance(out, SendTo):
                self._send(node, out)
            elif isinstance(out, RoutesChanged):
                self.last_table_change_ns = self.now
        deadline = core.next_deadline()
        # A timer may be due now (a message came at its instant); never once it has run.
        late = deadline is not None and (
            deadline < self.now or (after_timer and deadline == self.now)
        )
        assert not late, f"{node}: deadline {deadline} is not in the future at {self.now}"
        self.deadlines[node] = deadline

    def _send(self, sender: str, out: SendTo) -> None:
        k = key(sender, out.peer)
        assert k in self.links, f"{sender} sent to {out.peer}, which is not a neighbour"
        if k in self.cut:
            return
        copies = 1
        run = self.loss_runs.get((sender, out.peer), 0)
        limit = self.faults.max_loss_run
        if self.rng.random() < self.faults.loss and (limit is None or run < limit):
            copies = 0
        elif self.rng.random() < self.faults.duplicate:
            copies = 2
        self.loss_runs[sender, out.peer] = run + 1 if copies == 0 else 0
        payload = json.dumps(out.message.to_dict())

        for _ in range(copies):
            delay = self.links[k].delay_ns
            if self.faults.jitter_ns:
                delay += self.rng.randint(0, self.faults.jitter_ns)
            self._n += 1
            item = (self.now + delay, self._n, sender, out.peer, payload, k, self.epoch[k])
            heapq.heappush(self.queue, item)

    def step(self, until: int) -> bool:
        """Process the next event at or before ``until``; False if there is none."""
        t_msg = self.queue[0][0] if self.queue else None
        timers = [(d, n) for n, d in self.deadlines.items() if d is not None]
        t_timer, node = min(timers) if timers else (None, "")
        if t_msg is not None and (t_timer is None or t_msg <= t_timer):
            if t_msg > until:
                return False
            when, _, sender, receiver, payload, k, epoch = heapq.heappop(self.queue)
            self.now = when
            if epoch != self.epoch[k] or k in self.cut or receiver not in self.cores:
                return True
            self.delivered += 1
            message = message_from_dict(json.loads(payload))
            self.cores[receiver].on_message(sender, message, self.now)
            self._drain(receiver)
            return True
        if t_timer is None or t_timer > until:
            return False
        self.now = t_timer
        self.cores[node].on_timer(self.now)
        self._drain(node, after_timer=True)
        return True

    def run_until(self, until: int) -> None:
        while self.step(until):
            pass
        self.now = max(self.now, until)

    def run_for(self, duration_ns: int) -> None:
        self.run_until(self.now + duration_ns)

    # -- the truth -----------------------------------------------------------------------------

    def live_links(self) -> dict[Key, TrueLink]:
        return {
            k: v
            for k, v in self.links.items()
            if k not in self.cut and k[0] in self.cores and k[1] in self.cores
        }

    def hop_diameter(self) -> int:
        """Largest hop distance between connected live nodes (flooding uses every link)."""
        adj: dict[str, set[str]] = {n: set() for n in self.cores}
        for a, b in self.live_links():
            adj[a].add(b)
            adj[b].add(a)
        best = 0
        for src in adj:
            dist = {src: 0}
            frontier = [src]
            while frontier:
                nxt = []
                for u in frontier:
                    for v in adj[u]:
                        if v not in dist:
                            dist[v] = dist[u] + 1
                            nxt.append(v)
                frontier = nxt
            best = max(best, *dist.values())
        return best

    def max_delay_ns(self) -> int:
        return max((v.delay_ns for v in self.links.values()), default=1) + self.faults.jitter_ns

    def bound_ns(self) -> int:
        return convergence_bound_ns(self.config, self.hop_diameter(), self.max_delay_ns())

    def reference(self) -> dict[str, dict[str, tuple[tuple[str, ...], float, float]]]:
        return reference_routes(
            {n: self.memory[n] for n in self.cores},
            {k: v.metrics for k, v in self.live_links().items()},
            self.config.fidelity_threshold,
        )

    # -- checks --------------------------------------------------------------------------------

    def assert_tables_match_reference(self) -> None:
        expected = self.reference()
        for node, core in sorted(self.cores.items()):
            table = core.table()
            assert set(table) == set(expected[node]), f"{node}: destinations differ"
            for dest, (path, cost, fidelity) in expected[node].items():
                entry = table[dest]
                assert entry.path == path, f"{node}→{dest}: {entry.path} != {path}"
                assert entry.next_hop == path[1]
                assert entry.destination == dest
                assert entry.cost_s == pytest.approx(cost, rel=1e-9, abs=1e-15)
                assert entry.fidelity == pytest.approx(fidelity, rel=1e-12, abs=1e-12)
        self.assert_no_loops()

    def assert_no_loops(self) -> None:
        """Following next hops from any node reaches the destination along the source's path."""
        for node, core in self.cores.items():
            for dest, entry in core.table().items():
                here, walked = node, [node]
                while here != dest:
                    here = self.cores[here].table()[dest].next_hop
                    assert here not in walked, f"loop {[*walked, here]} towards {dest}"
                    walked.append(here)
                assert tuple(walked) == entry.path

    def assert_routes_answer(self) -> None:
        """Every node is converged: ``route`` gives the table's entry or raises Unreachable."""
        for node, core in self.cores.items():
            assert core.converged, f"{node} has not converged"
            table = core.table()
            for dest in self.memory:
                if dest == node:
                    continue
                if dest in table:
                    assert core.route(dest) == table[dest]
                else:
                    with pytest.raises(Unreachable) as info:
                        core.route(dest)
                    assert not isinstance(info.value, NotConverged)
                    assert info.value.node == node
                    assert repr(dest) in str(info.value)

    def converge_within_bound(self, bound_ns: int | None = None) -> int:
        """Run for the bound, check the tables, then check they stay (no change for two dead
        intervals). Returns the time the tables last changed, relative to the start."""
        start = self.now
        bound = self.bound_ns() if bound_ns is None else bound_ns
        self.run_until(start + bound)
        self.assert_tables_match_reference()
        settled = self.last_table_change_ns
        self.run_for(2 * self.config.dead_interval_ns)
        assert self.last_table_change_ns == settled, "tables changed after the bound"
        self.assert_tables_match_reference()
        return max(0, settled - start)


def swap(f1: float, f2: float) -> float:
    return f1 * f2 + (1 - f1) * (1 - f2) / 3


def reference_routes(
    memory: dict[str, int], links: dict[Key, LinkMetrics], threshold: float
) -> dict[str, dict[str, tuple[tuple[str, ...], float, float]]]:
    """Per source: destination → (path, cost in s, fidelity), by plain float Dijkstra with
    predecessors; links below the threshold or with no rate are out, and nodes with fewer
    than 2 memory qubits end paths but do not carry them."""
    adj: dict[str, dict[str, LinkMetrics]] = {n: {} for n in memory}
    for (a, b), m in links.items():
        if m.rate_hz > 0 and m.fidelity >= threshold:
            adj[a][b] = m
            adj[b][a] = m
    out: dict[str, dict[str, tuple[tuple[str, ...], float, float]]] = {}
    for src in memory:
        dist = {src: 0.0}
        pred: dict[str, str] = {}
        done: set[str] = set()
        while True:
            todo = [(d, n) for n, d in dist.items() if n not in done]
            if not todo:
                break
            d, u = min(todo)
            done.add(u)
            if u != src and memory[u] < 2:
                continue
            for v, m in adj[u].items():
                nd = d + 1.0 / m.rate_hz
                if v not in done and nd < dist.get(v, float("inf")):
                    dist[v] = nd
                    pred[v] = u
        routes = {}
        for dest in done - {src}:
            path = [dest]
            while path[-1] != src:
                path.append(pred[path[-1]])
            path.reverse()
            fid = 1.0
            for u, v in itertools.pairwise(path):
                fid = adj[u][v].fidelity if u == src else swap(fid, adj[u][v].fidelity)
            routes[dest] = (tuple(path), dist[dest], fid)
        out[src] = routes
    return out


def chain(n: int, *, delay_ns: int = 1 * MS, memory: int = 8) -> RoutingNet:
    names = [f"n{i}" for i in range(n)]
    links = {
        key(a, b): TrueLink(LinkMetrics(100.0 * (i + 1), 0.95), delay_ns)
        for i, (a, b) in enumerate(itertools.pairwise(names))
    }
    return RoutingNet(dict.fromkeys(names, memory), links)


# -- basic end-to-end cases --------------------------------------------------------------------


def test_chain_converges_to_the_reference() -> None:
    net = chain(5)
    net.start_all()
    net.converge_within_bound()
    net.assert_routes_answer()
    entry = net.cores["n0"].route("n4")
    assert entry.path == ("n0", "n1", "n2", "n3", "n4")
    assert entry.next_hop == "n1"
    assert entry.cost_s == pytest.approx(1 / 100 + 1 / 200 + 1 / 300 + 1 / 400)
    assert entry.fidelity == pytest.approx(swap(swap(swap(0.95, 0.95), 0.95), 0.95))


def test_route_before_convergence_is_a_typed_error() -> None:
    net = chain(3)
    net.start_all()
    for node, core in net.cores.items():
        with pytest.raises(NotConverged) as info:
            core.route("n2" if node != "n2" else "n0")
        assert isinstance(info.value, Unreachable)
        assert info.value.node == node
        assert info.value.not_before_ns == CONFIG.dead_interval_ns
    net.run_for(CONFIG.dead_interval_ns - 1)
    assert not any(core.converged for core in net.cores.values())
    net.run_for(1)
    assert all(core.converged for core in net.cores.values())
    for node in net.cores:
        converged = [o for _, o in net.records[node].outputs if isinstance(o, RoutingConverged)]
        assert converged == [RoutingConverged(CONFIG.dead_interval_ns)]
    assert net.cores["n0"].route("n2").path == ("n0", "n1", "n2")


def test_route_to_an_unknown_or_cut_off_node_names_it() -> None:
    net = chain(3)
    net.start_all()
    net.converge_within_bound()
    with pytest.raises(Unreachable, match=r"'nowhere'.*no advert") as info:
        net.cores["n0"].route("nowhere")
    assert info.value.node == "n0"
    with pytest.raises(InvalidArgument):
        net.cores["n0"].route("n0")
    net.cut_link("n1", "n2", notify=True)
    net.converge_within_bound()
    with pytest.raises(Unreachable, match="'n2'") as info:
        net.cores["n0"].route("n2")
    assert not isinstance(info.value, NotConverged)


def test_a_link_below_the_threshold_is_advertised_but_not_used() -> None:
    links = {
        key("a", "b"): TrueLink(LinkMetrics(1e6, 0.6), MS),  # fast but below 0.7
        key("a", "c"): TrueLink(LinkMetrics(10.0, 0.9), MS),
        key("c", "b"): TrueLink(LinkMetrics(10.0, 0.9), MS),
    }
    net = RoutingNet(dict.fromkeys("abc", 4), links)
    net.start_all()
    net.converge_within_bound()
    assert net.cores["a"].route("b").path == ("a", "c", "b")
    advert = net.cores["c"].database()["a"]
    assert {link.peer for link in advert.links} == {"b", "c"}


def test_a_node_without_two_memory_qubits_carries_no_transit() -> None:
    net = chain(3)
    net.memory["n1"] = 1
    net.start_all()
    net.converge_within_bound()
    assert set(net.cores["n0"].table()) == {"n1"}
    assert set(net.cores["n1"].table()) == {"n0", "n2"}


def test_silent_link_failure_and_recovery_within_the_bound() -> None:
    net = chain(4)
    net.links[key("n0", "n3")] = TrueLink(LinkMetrics(1.0, 0.9), 2 * MS)  # a slow ring link
    net.epoch[key("n0", "n3")] = 0
    net.start_all()
    net.converge_within_bound()
    assert net.cores["n0"].route("n3").path == ("n0", "n1", "n2", "n3")
    net.cut_link("n1", "n2", notify=False)
    took = net.converge_within_bound()
    assert took > CONFIG.dead_interval_ns - CONFIG.hello_interval_ns  # the dead timer did it
    assert net.cores["n0"].route("n2").path == ("n0", "n3", "n2")
    downs = [o for _, o in net.records["n1"].outputs if isinstance(o, NeighbourDown)]
    assert downs == [NeighbourDown("n2", "dead interval expired")]
    net.restore_link("n1", "n2", notify=False)
    net.converge_within_bound()
    assert net.cores["n0"].route("n3").path == ("n0", "n1", "n2", "n3")


def test_notified_link_failure_converges_in_flooding_time() -> None:
    net = chain(5)
    net.start_all()
    net.converge_within_bound()
    net.cut_link("n2", "n3", notify=True)
    bound = net.hop_diameter() * net.max_delay_ns()
    assert net.converge_within_bound(bound) <= bound
    net.restore_link("n2", "n3", notify=True)
    bound = (net.hop_diameter() + 5) * net.max_delay_ns()
    net.converge_within_bound(bound)
