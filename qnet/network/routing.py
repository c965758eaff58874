"""The link-state routing core: one per node. Sans-IO: every input takes ``now`` (ns); outputs
are queued for ``pop_outputs``; ``next_deadline`` says when ``on_timer`` is due.

Neighbours. Every ``hello_interval_ns`` the core sends a ``RoutingHello`` to each of its
links' peers, listing the neighbours it hears. A neighbour is UP (two-way) once its hello lists
us, and goes down when no hello came for ``dead_interval_ns``, when the transport reports the
link down (``link_down``), or when its hello stops listing us (it restarted); the states and
their table are in ``neighbours``. A state change caused by a hello is answered at once
by a hello to that neighbour, so an adjacency forms in one and a half round trips.

Adverts. Each node originates a ``LinkStateAdvert`` of its links to UP neighbours (with their
``LinkMetrics``) and its memory, when they change and every ``advert_refresh_ns``. Flooding is
reliable: a newer advert (higher ``seq`` from its origin) is stored, acknowledged and sent to
every UP neighbour but the sender, each copy retransmitted every ``retransmit_interval_ns``
until acknowledged; an equal one is acknowledged; an older one is acknowledged and answered
with the newer copy. Adverts age (``age_ns`` grows while they sit in a database and travels
with them) and are dropped at ``max_age_ns``, so a vanished node's advert goes away; a live
origin refreshes long before. Of two adverts with equal ``seq`` and different content (an
origin that restarted and reached its old ``seq`` again) the larger digest wins everywhere. A
node that receives its own advert newer than its current one (it restarted and its old advert
survives) jumps past it and re-originates. When a neighbour comes up, each end sends a
``DatabaseRequest`` with the headers it holds; the other answers with a ``DatabaseDescription``
of what it holds newer, then sends those adverts, and asks in turn if the request shows the
requester holds something newer (it may have missed floods while the requester was not UP).

Hellos are expected in order on each link (the peer streams are ordered); a reordered hello
can take an adjacency down once, which then heals like any other change.

Routes. SPF (``routing_spf``) runs over the database whenever its content changes: cost = 1/rate
(seconds per Bell pair at the fidelity threshold), expected fidelity by Werner swap composition
F = F₁F₂ + (1 − F₁)(1 − F₂)/3, only two-way links, deterministic tie-break, so nodes with the
same database agree and forwarding has no loops.

Convergence (``route`` answers). A node has its first full table once it has waited the
startup wait since ``start`` (``RoutingConfig.startup_ns``: one dead interval unless set; every
live neighbour has said hello by then) and has synchronised its database with every UP
neighbour (it holds every advert each described). Before, ``route``
raises ``NotConverged``; after, a missing destination raises ``Unreachable``.

Convergence bound. Let d be the largest one-way delay of a routing message over one link
(transport plus processing), k the largest number of hops between a node and the change (in
the network after the change), H and D the hello and dead intervals. Without message loss,
every node's table equals the shortest paths of the true graph no later than

- k·d after a link fails and its ends are told (``link_down``);
- D + (k + 1)·d after a link fails silently or a daemon stops (the ends' dead timers fire
  within D + d of the last hello; each end's advert then floods k hops);
- H + (k + 5)·d after a link comes back, (k + 5)·d if the transport calls ``link_up``: a
  hello crosses, the two ends become UP within 2d more, and the adverts and database
  exchange (request, description, adverts: 2d) flood k hops;
- (k + 5)·d after a daemon restarts (its old advert, bounced back by a neighbour, makes it
  re-originate past it); it answers ``route`` from max(D, that) after its start.

All are within ``convergence_bound_ns(config, k, d)`` = D + (k + 5)·d, which also bounds the
first convergence after every node starts together. Each lost message adds at most one
``retransmit_interval_ns`` (adverts, requests) or one H (hellos) to the path it delays;
losses never bring a neighbour down unless D/H hellos in a row are lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from qnet.errors import FailedPrecondition, InvalidArgument, NotFound, ProtocolError, Unreachable
from qnet.network.lsdb import DbEntry, advert_content, compare_adverts
from qnet.network.neighbours import Neighbour, NeighbourInput, NeighbourState, next_neighbour_state
from qnet.network.routing_config import NotConverged, RoutingConfig, convergence_bound_ns
from qnet.network.routing_events import (
    AdvertAck,
    AdvertHeader,
    AdvertLink,
    DatabaseDescription,
    DatabaseRequest,
    LinkMetrics,
    LinkStateAdvert,
    NeighbourDown,
    NeighbourUp,
    RouteEntry,
    RoutesChanged,
    RoutingConverged,
    RoutingHello,
    RoutingMessage,
    RoutingOutput,
    SendTo,
    validate,
)
from qnet.network.routing_spf import is_finite_metrics, shortest_paths, usable_graph

__all__ = [
    "NotConverged",
    "RoutingConfig",
    "RoutingCore",
    "convergence_bound_ns",
]


class RoutingCore:
    def __init__(
        self,
        node: str,
        config: RoutingConfig,
        local_links: Mapping[str, LinkMetrics],
        memory_qubits: int,
    ) -> None:
        if not isinstance(node, str) or not node:
            raise InvalidArgument(f"node must be a non-empty name, got {node!r}")
        if node in local_links:
            raise InvalidArgument(f"{node}: a link to itself")
        for peer, metrics in local_links.items():
            self._check_metrics(peer, metrics)
        if (
            isinstance(memory_qubits, bool)
            or not isinstance(memory_qubits, int)
            or memory_qubits < 0
        ):
            raise InvalidArgument(f"memory_qubits must be an integer ≥ 0, got {memory_qubits!r}")
        self.node = node
        self.config = config
        self.memory_qubits = memory_qubits
        self._nbrs = {peer: Neighbour(m) for peer, m in sorted(local_links.items())}
        self._started_ns: int | None = None
        self._now = 0
        self._out: list[RoutingOutput] = []
        self._hello_seq = 0
        self._next_hello_ns = 0
        self._seq = 0
        self._refresh_ns = 0
        self._own_dirty = False
        self._db: dict[str, DbEntry] = {}
        #: Earliest time another node's advert ages out (-1: none; None: to recompute).
        self._expiry_ns: int | None = None
        self._spf_dirty = False
        self._table: dict[str, RouteEntry] = {}
        self._converged_at: int | None = None
        self._next_request_id = 1
        #: For traces and tests.
        self.counters: dict[str, int] = {
            "adverts_originated": 0,
            "adverts_sent": 0,
            "retransmissions": 0,
            "duplicates": 0,
            "spf_runs": 0,
        }

    # -- inputs --------------------------------------------------------------------------------

    def start(self, now: int) -> None:
        if self._started_ns is not None:
            raise FailedPrecondition("the routing core is already started", node=self.node)
        self._started_ns = self._now = now
        self._own_dirty = True
        self._send_hellos(now)
        self._finish(now)

    def on_message(self, sender: str, message: RoutingMessage, now: int) -> None:
        """A message from neighbour ``sender``; a malformed or foreign one is a ProtocolError."""
        self._enter(now)
        nbr = self._nbrs.get(sender)
        if nbr is None:
            raise ProtocolError(f"routing message from {sender!r}, not a neighbour", node=self.node)
        if not isinstance(message, RoutingMessage):
            raise ProtocolError(f"not a routing message: {message!r}", node=self.node)
        validate(message)
        claimed = getattr(message, "node", sender)
        if claimed != sender:
            raise ProtocolError(
                f"message from {sender!r} claims to be from {claimed!r}", node=self.node
            )
        if isinstance(message, RoutingHello):
            self._on_hello(sender, nbr, message, now)
        elif isinstance(message, LinkStateAdvert):
            self._on_advert(sender, nbr, message, now)
        elif isinstance(message, AdvertAck):
            pending = nbr.pending.get(message.origin)
            if pending is not None and pending[0] <= message.seq:
                del nbr.pending[message.origin]
        elif isinstance(message, DatabaseRequest):
            self._on_request(sender, message, now)
        elif isinstance(message, DatabaseDescription):
            if message.request_id == nbr.request_id:
                nbr.request_id = None
                nbr.awaiting = {
                    h.origin: (h.seq, now + self.config.max_age_ns - h.age_ns)
                    for h in message.headers
                }
        else:
            raise ProtocolError(f"unknown routing message {message!r}", node=self.node)
        self._finish(now)

    def on_timer(self, now: int) -> None:
        self._enter(now)
        config = self.config
        if now >= self._next_hello_ns:
            self._send_hellos(now)
        for peer, nbr in self._nbrs.items():
            if nbr.dead_ns is not None and nbr.dead_ns <= now:
                self._transition(peer, nbr, NeighbourInput.DEAD, now)
            if nbr.request_id is not None and nbr.request_due_ns <= now:
                self._send_request(peer, nbr, now)
            for origin, (seq, due) in list(nbr.pending.items()):
                if due <= now:
                    entry = self._db.get(origin)
                    if entry is None or entry.advert.seq < seq:
                        del nbr.pending[origin]  # aged out meanwhile
                    else:
                        self.counters["retransmissions"] += 1
                        self._send_advert(peer, nbr, entry, now)
        if now >= self._refresh_ns:
            self._own_dirty = True
        for origin, entry in list(self._db.items()):
            if origin != self.node and entry.expiry(config.max_age_ns) <= now:
                del self._db[origin]
                self._expiry_ns = None
                self._spf_dirty = True
        self._finish(now)

    def set_link_metrics(self, peer: str, metrics: LinkMetrics, now: int) -> None:
        """New measurements of the link to ``peer``; re-advertised if the neighbour is up."""
        self._enter(now)
        nbr = self._neighbour(peer)
        self._check_metrics(peer, metrics)
        if metrics != nbr.metrics:
            nbr.metrics = metrics
            self._own_dirty |= nbr.state is NeighbourState.UP
        self._finish(now)

    def link_down(self, peer: str, now: int) -> None:
        """The transport lost ``peer``: it is down at once, without waiting for the dead timer."""
        self._enter(now)
        self._transition(peer, self._neighbour(peer), NeighbourInput.LINK_DOWN, now)
        self._finish(now)

    def heard_from(self, peer: str, now: int) -> None:
        """Something other than a hello came from ``peer``: it lives, though its hellos may
        be late behind a backlog on a busy link. Its dead timer starts again; only hellos
        move its state."""
        nbr = self._nbrs.get(peer)
        if nbr is not None and nbr.dead_ns is not None:
            nbr.dead_ns = max(nbr.dead_ns, now + self.config.dead_interval_ns)

    def link_up(self, peer: str, now: int) -> None:
        """The transport reaches ``peer`` again: say hello now rather than at the next tick."""
        self._enter(now)
        self._neighbour(peer)
        self._send_hello(peer, now)
        self._finish(now)

    # -- outputs and queries -------------------------------------------------------------------

    def pop_outputs(self) -> list[RoutingOutput]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> int | None:
        if self._started_ns is None:
            return None
        times = [self._next_hello_ns, self._refresh_ns]
        for nbr in self._nbrs.values():
            if nbr.dead_ns is not None:
                times.append(nbr.dead_ns)
            if nbr.request_id is not None:
                times.append(nbr.request_due_ns)
            times.extend(due for _, due in nbr.pending.values())
            times.extend(expiry for _, expiry in nbr.awaiting.values())
        if self._expiry_ns is None:  # recomputed only after the database changed
            others = (e for origin, e in self._db.items() if origin != self.node)
            self._expiry_ns = min((e.expiry(self.config.max_age_ns) for e in others), default=-1)
        if self._expiry_ns >= 0:
            times.append(self._expiry_ns)
        wait_until = self._started_ns + self.config.startup_ns
        if self._converged_at is None and self._now < wait_until:
            times.append(wait_until)
        return min(times)

    @property
    def converged(self) -> bool:
        return self._converged_at is not None

    @property
    def converged_at_ns(self) -> int | None:
        return self._converged_at

    def table(self) -> dict[str, RouteEntry]:
        """The current routing table by destination (partial before ``converged``)."""
        return dict(self._table)

    def route(self, destination: str) -> RouteEntry:
        """The route to ``destination``: ``NotConverged`` before the first full table,
        ``Unreachable`` (naming this node and the destination) when there is none."""
        if destination == self.node:
            raise InvalidArgument(f"{destination!r} is this node: it needs no route")
        if self._converged_at is None:
            not_before = (self._started_ns or 0) + self.config.startup_ns
            raise NotConverged(
                f"routing has not converged yet, so there is no answer for {destination!r}"
                " (try again shortly)",
                node=self.node,
                not_before_ns=not_before,
            )
        entry = self._table.get(destination)
        if entry is not None:
            return entry
        if destination in self._db:
            why = (
                "every path to it is down, has a link below the fidelity threshold"
                f" {self.config.fidelity_threshold}, or passes a node that cannot swap"
            )
        else:
            why = "no node of that name is known to routing (no advert from it)"
        raise Unreachable(f"no route to {destination!r}: {why}", node=self.node)

    def neighbours(self) -> dict[str, NeighbourState]:
        return {peer: nbr.state for peer, nbr in self._nbrs.items()}

    def database(self) -> dict[str, LinkStateAdvert]:
        """The link-state database, with ages as of the last input."""
        return {o: self._aged(e, self._now) for o, e in sorted(self._db.items())}

    # -- neighbours ----------------------------------------------------------------------------

    def _on_hello(self, sender: str, nbr: Neighbour, hello: RoutingHello, now: int) -> None:
        config = self.config
        ours = (config.hello_interval_ns, config.dead_interval_ns, config.fidelity_threshold)
        theirs = (hello.hello_interval_ns, hello.dead_interval_ns, hello.fidelity_threshold)
        if ours != theirs:
            raise ProtocolError(
                f"{sender!r} runs routing with (hello_interval_ns, dead_interval_ns,"
                f" fidelity_threshold) = {theirs}, this node with {ours}: they must agree",
                node=self.node,
            )
        nbr.dead_ns = now + config.dead_interval_ns
        two_way = self.node in hello.heard
        event = NeighbourInput.HELLO_TWO_WAY if two_way else NeighbourInput.HELLO_ONE_WAY
        if self._transition(sender, nbr, event, now):
            self._send_hello(sender, now)

    def _transition(self, peer: str, nbr: Neighbour, event: NeighbourInput, now: int) -> bool:
        old = nbr.state
        new = next_neighbour_state(old, event)
        if new is old:
            return False
        nbr.state = new
        if new is NeighbourState.DOWN:
            nbr.dead_ns = None
            nbr.pending.clear()
        if old is NeighbourState.UP:
            self._out.append(NeighbourDown(peer, event.value))
            self._own_dirty = True
            nbr.request_id = None
            nbr.awaiting.clear()
            nbr.pending.clear()
        if new is NeighbourState.UP:
            self._out.append(NeighbourUp(peer))
            self._own_dirty = True
            nbr.request_id = self._next_request_id
            self._next_request_id += 1
            self._send_request(peer, nbr, now)
        return True

    def _send_hellos(self, now: int) -> None:
        for peer in self._nbrs:
            self._send_hello(peer, now)
        self._next_hello_ns = now + self.config.hello_interval_ns

    def _send_hello(self, peer: str, now: int) -> None:
        self._hello_seq += 1
        heard = tuple(p for p, n in self._nbrs.items() if n.state is not NeighbourState.DOWN)
        config = self.config
        hello = RoutingHello(
            self.node,
            self._hello_seq,
            heard,
            config.hello_interval_ns,
            config.dead_interval_ns,
            config.fidelity_threshold,
        )
        self._out.append(SendTo(peer, hello))

    # -- flooding and database exchange ----------------------------------------------------------

    def _on_advert(self, sender: str, nbr: Neighbour, advert: LinkStateAdvert, now: int) -> None:
        origin, seq = advert.origin, advert.seq
        pending = nbr.pending.get(origin)
        if pending is not None and pending[0] <= seq:
            del nbr.pending[origin]  # the sender has it already: an implicit acknowledgement
        self._out.append(SendTo(sender, AdvertAck(self.node, origin, seq)))
        if advert.age_ns >= self.config.max_age_ns:
            return
        current = self._db.get(origin)
        order = 1 if current is None else compare_adverts(advert, current.advert)
        if order > 0 and origin == self.node:  # ours from before a restart: jump past it
            self._seq = seq
            self._own_dirty = True
        elif order > 0:
            entry = DbEntry(advert, now)
            self._db[origin] = entry
            self._expiry_ns = None
            if current is None or advert_content(current.advert) != advert_content(advert):
                self._spf_dirty = True
            for peer, other in self._nbrs.items():
                if peer != sender and other.state is NeighbourState.UP:
                    self._send_advert(peer, other, entry, now)
        elif order == 0:
            self.counters["duplicates"] += 1
        else:
            assert current is not None
            self._send_advert(sender, nbr, current, now)

    def _on_request(self, sender: str, request: DatabaseRequest, now: int) -> None:
        theirs = {h.origin: h.seq for h in request.headers}
        newer = [
            e
            for origin, e in sorted(self._db.items())
            if e.advert.seq > theirs.get(origin, 0) and e.age(now) < self.config.max_age_ns
        ]
        headers = tuple(AdvertHeader(e.advert.origin, e.advert.seq, e.age(now)) for e in newer)
        self._out.append(
            SendTo(sender, DatabaseDescription(self.node, request.request_id, headers))
        )
        nbr = self._nbrs[sender]
        for entry in newer:
            self._send_advert(sender, nbr, entry, now)
        # If it holds something newer than we do, ask for it, even though our own request was
        # answered: we may have missed floods while it was not UP here, and it would not know.
        ours = {origin: e.advert.seq for origin, e in self._db.items()}
        behind = any(h.seq > ours.get(h.origin, 0) for h in request.headers)
        if behind and nbr.state is NeighbourState.UP and nbr.request_id is None:
            nbr.request_id = self._next_request_id
            self._next_request_id += 1
            self._send_request(sender, nbr, now)

    def _send_request(self, peer: str, nbr: Neighbour, now: int) -> None:
        assert nbr.request_id is not None
        headers = tuple(
            AdvertHeader(o, e.advert.seq, e.age(now)) for o, e in sorted(self._db.items())
        )
        self._out.append(SendTo(peer, DatabaseRequest(self.node, nbr.request_id, headers)))
        nbr.request_due_ns = now + self.config.retransmit_interval_ns

    def _send_advert(self, peer: str, nbr: Neighbour, entry: DbEntry, now: int) -> None:
        """Send (reliably) our copy of an advert, aged to ``now``."""
        self.counters["adverts_sent"] += 1
        self._out.append(SendTo(peer, self._aged(entry, now)))
        due = now + self.config.retransmit_interval_ns
        nbr.pending[entry.advert.origin] = (entry.advert.seq, due)

    @staticmethod
    def _aged(entry: DbEntry, now: int) -> LinkStateAdvert:
        return dataclasses.replace(entry.advert, age_ns=entry.age(now))

    def _originate(self, now: int) -> None:
        self._seq += 1
        self.counters["adverts_originated"] += 1
        links = tuple(
            AdvertLink(peer, nbr.metrics.rate_hz, nbr.metrics.fidelity)
            for peer, nbr in self._nbrs.items()
            if nbr.state is NeighbourState.UP
        )
        advert = LinkStateAdvert(self.node, self._seq, 0, self.memory_qubits, links)
        old = self._db.get(self.node)
        entry = self._db[self.node] = DbEntry(advert, now)
        if old is None or advert_content(old.advert) != advert_content(advert):
            self._spf_dirty = True
        self._refresh_ns = now + self.config.advert_refresh_ns
        for peer, nbr in self._nbrs.items():
            if nbr.state is NeighbourState.UP:
                self._send_advert(peer, nbr, entry, now)

    # -- bookkeeping -----------------------------------------------------------------------------

    def _enter(self, now: int) -> None:
        if self._started_ns is None:
            raise FailedPrecondition("the routing core is not started", node=self.node)
        self._now = now

    def _finish(self, now: int) -> None:
        """After every input: originate, recompute routes, check convergence."""
        if self._own_dirty:
            self._own_dirty = False
            self._originate(now)
        for nbr in self._nbrs.values():
            for origin, (seq, expiry) in list(nbr.awaiting.items()):
                entry = self._db.get(origin)
                if expiry <= now or (entry is not None and entry.advert.seq >= seq):
                    del nbr.awaiting[origin]
        if self._spf_dirty:
            self._spf_dirty = False
            self._recompute()
        if self._converged_at is None:
            assert self._started_ns is not None
            waited = now >= self._started_ns + self.config.startup_ns
            up = [n for n in self._nbrs.values() if n.state is NeighbourState.UP]
            if waited and all(n.synced for n in up):
                self._converged_at = now
                self._out.append(RoutingConverged(now))

    def _recompute(self) -> None:
        self.counters["spf_runs"] += 1
        adverts = {origin: e.advert for origin, e in self._db.items()}
        graph = usable_graph(adverts, self.config.fidelity_threshold)
        memory = {origin: a.memory_qubits for origin, a in adverts.items()}
        table = shortest_paths(self.node, graph, memory)
        if table != self._table:
            self._table = table
            self._out.append(RoutesChanged(tuple(table[d] for d in sorted(table))))

    def _neighbour(self, peer: str) -> Neighbour:
        nbr = self._nbrs.get(peer)
        if nbr is None:
            raise NotFound(f"{peer!r} is not a neighbour of {self.node!r}", node=self.node)
        return nbr

    def _check_metrics(self, peer: str, metrics: LinkMetrics) -> None:
        if not isinstance(metrics, LinkMetrics) or not is_finite_metrics(metrics):
            raise InvalidArgument(
                f"metrics of the link to {peer!r} need a finite rate ≥ 0 and a fidelity in"
                f" [0, 1], got {metrics!r}"
            )
