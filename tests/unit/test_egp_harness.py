"""Two EGP cores on the real channel core, with a fake classical link that loses, duplicates,
reorders and delays (h11's ConnectionPair / aioquic's client_and_server, for the link layer).

``EgpPair`` is the driver: it moves physical commands to ``ChannelCore``, heralds and
measurement results back, and peer messages through the fake link (serialised to JSON and
back, so the wire form is exercised too). It records every upper-layer event and checks each
KEEP pair's fidelity estimate against the backend's true state when it is delivered. Other
test_egp_* modules import it; the tests here are the basic end-to-end cases.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from qnet.errors import NoMemory, NotFound
from qnet.link.egp import EgpConfig, EgpCore
from qnet.link.events import (
    Arm,
    CreateErr,
    CreateRequest,
    Disarm,
    ErrorCode,
    Free,
    Gates,
    Kind,
    MeasureQubit,
    PairOk,
    PeerMessage,
    UpperEvent,
    message_from_dict,
)
from qnet.physical.channel_core import ChannelCore
from qnet.physical.events import HeraldEvent
from qnet.physical.heralding import fibre_delay_ns
from qnet.physical.params import LinkParams, NodeParams

A, B = "alice", "bob"  # alice < bob: alice is the master


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    #: Extra delay drawn uniformly in [0, jitter_ns] per copy, which also reorders.
    jitter_ns: int = 0


@dataclass
class Record:
    events: list[UpperEvent] = field(default_factory=list)
    held: set[int] = field(default_factory=set)  # KEEP qubits the "upper layer" holds
    lost: set[int] = field(default_factory=set)  # qubits whose herald the test dropped


class EgpPair:
    def __init__(
        self,
        *,
        link: LinkParams | None = None,
        nodes: tuple[NodeParams, NodeParams] | None = None,
        faults: Faults | None = None,
        seed: int = 1,
        free_on_delivery: bool = True,
        report_held: bool = False,
        herald_delay_ns: int = 0,
    ) -> None:
        self.link = link or LinkParams(length_km=2.0)
        params = nodes or (NodeParams(), NodeParams())
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.channel = ChannelCore(seed=seed)
        self.now = 0
        for name, p in zip((A, B), params, strict=True):
            self.channel.register_node(name, p, 0)
        self.channel.declare_link(A, B, self.link, 0)
        self.cores = {
            A: EgpCore(EgpConfig(A, B, self.link, params[0], params[1]), rng=random.Random(seed)),
            B: EgpCore(EgpConfig(B, A, self.link, params[1], params[0]), rng=random.Random(~seed)),
        }
        self.records = {A: Record(), B: Record()}
        self.heralded: dict[int, dict[str, int]] = {}
        self.fidelity_checks: list[tuple[float, float]] = []
        self.drop_herald: Callable[[str, int], bool] = lambda node, seq: False
        self.free_on_delivery = free_on_delivery
        #: Tell each core how many delivered halves its "upper layer" holds (set_upper_held).
        self.report_held = report_held
        #: Heralds reach the cores this late (a loaded node), so pairs age before placement.
        self.herald_delay_ns = herald_delay_ns
        self._late: list[tuple[int, int, HeraldEvent]] = []
        #: Arms the backend refused for lack of memory.
        self.failed_arms = 0
        for name in (A, B) if report_held else ():
            self._report(name)
        self.delay_ns = fibre_delay_ns(self.link.length_km)
        self._wire: list[tuple[int, int, str, dict[str, object]]] = []
        self._tiebreak = 0
        self.messages_sent = 0

    # -- driving -------------------------------------------------------------------------------

    def create(self, node: str, **kwargs: object) -> int:
        other = B if node == A else A
        req = CreateRequest(remote=other, **kwargs)  # type: ignore[arg-type]
        cid = self.cores[node].create(req, self.now)
        self._drain()
        return cid

    def cancel(self, node: str, create_id: int) -> bool:
        taken = self.cores[node].cancel(create_id, self.now)
        self._drain()
        return taken

    def free_held(self, node: str) -> None:
        """The upper layer at ``node`` frees every half it holds."""
        rec = self.records[node]
        self.channel.free(node, tuple(rec.held), self.now)
        rec.held.clear()
        self._report(node)
        self._drain()

    def _report(self, node: str) -> None:
        if self.report_held:
            self.cores[node].set_upper_held(len(self.records[node].held), self.now)

    def next_time(self) -> int | None:
        times = [self.channel.next_deadline(), *(c.next_deadline() for c in self.cores.values())]
        if self._wire:
            times.append(self._wire[0][0])
        if self._late:
            times.append(self._late[0][0])
        return min((t for t in times if t is not None), default=None)

    def step(self) -> bool:
        t = self.next_time()
        if t is None:
            return False
        self.now = max(self.now, t)
        self.channel.advance(self.now)
        while self._late and self._late[0][0] <= self.now:
            self._herald(heapq.heappop(self._late)[2])
            self._drain()
        while self._wire and self._wire[0][0] <= self.now:
            _, _, dst, data = heapq.heappop(self._wire)
            self.cores[dst].on_message(message_from_dict(data), self.now)
            self._drain()
        for core in self.cores.values():
            deadline = core.next_deadline()
            if deadline is not None and deadline <= self.now:
                core.on_timer(self.now)
        self._drain()
        return True

    def run(self, until_ns: int | None = None, max_steps: int = 20_000) -> None:
        """Run until nothing is left to do (or until ``until_ns``)."""
        for _ in range(max_steps):
            t = self.next_time()
            if t is None or (until_ns is not None and t > until_ns):
                if until_ns is not None:
                    self.now = max(self.now, until_ns)
                return
            self.step()
        raise AssertionError("the EGP pair did not settle")

    def _drain(self) -> None:
        busy = True
        while busy:
            busy = False
            for event in self.channel.pop_events():
                busy = True
                self.heralded.setdefault(event.sequence, {})[event.node] = event.qubit
                if self.drop_herald(event.node, event.sequence):
                    self.records[event.node].lost.add(event.qubit)
                elif self.herald_delay_ns:
                    self._tiebreak += 1
                    due = self.now + self.herald_delay_ns
                    heapq.heappush(self._late, (due, self._tiebreak, event))
                else:
                    self._herald(event)
            for name, core in self.cores.items():
                for out in core.pop_outputs():
                    busy = True
                    self._handle(name, out)

    def _herald(self, event: HeraldEvent) -> None:
        self.cores[event.node].on_herald(
            event.sequence,
            event.qubit,
            event.bell_index,
            event.emitted_ns,
            self.now,
            bright_state=event.bright_state or None,
        )

    def _handle(self, name: str, out: object) -> None:
        other = B if name == A else A
        core = self.cores[name]
        ch = self.channel
        if isinstance(out, PeerMessage):
            self._transmit(other, out)
        elif isinstance(out, Arm):
            try:
                qubits = ch.allocate(name, out.count, self.now)
            except NoMemory:
                self.failed_arms += 1
                core.on_no_memory(self.now)
                return
            ch.start_generation(name, other, qubits, self.now, bright_state=out.bright_state)
        elif isinstance(out, Disarm):
            ch.free(name, tuple(ch.stop_generation(name, other, self.now)), self.now)
        elif isinstance(out, MeasureQubit):
            core.on_measured(out.tag, ch.measure(name, out.qubit, out.basis, self.now), self.now)
        elif isinstance(out, Gates):
            for gate, targets, angle in out.ops:
                ch.apply_gate(name, gate, targets, angle, self.now)
        elif isinstance(out, Free):
            ch.free(name, out.qubits, self.now)
        elif isinstance(out, PairOk):
            self.records[name].events.append(out)
            if out.kind is Kind.KEEP:
                assert out.qubit is not None
                self._check_fidelity(name, out)
                if self.free_on_delivery:
                    ch.free(name, (out.qubit,), self.now)
                else:
                    self.records[name].held.add(out.qubit)
                    self._report(name)
        elif isinstance(out, CreateErr):
            self.records[name].events.append(out)
        else:
            raise AssertionError(f"unexpected output {out!r}")

    def _check_fidelity(self, name: str, ok: PairOk) -> None:
        halves = self.heralded[ok.pair_id[1]]
        qa, qb = halves.get(A), halves.get(B)
        if qa is None or qb is None:
            return
        try:
            true = self.channel.oracle_pair_fidelity(qa, qb, ok.bell_index, self.now)
        except NotFound:
            return  # the other half is already measured or freed by its owner
        self.fidelity_checks.append((ok.fidelity_estimate, true))

    def _transmit(self, dst: str, msg: PeerMessage) -> None:
        self.messages_sent += 1
        data = json.loads(json.dumps(msg.to_dict()))
        f = self.faults
        if self.rng.random() < f.loss:
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = self.delay_ns + (self.rng.randint(0, f.jitter_ns) if f.jitter_ns else 0)
            self._tiebreak += 1
            heapq.heappush(self._wire, (self.now + delay, self._tiebreak, dst, data))

    # -- views ---------------------------------------------------------------------------------

    def oks(self, node: str) -> list[PairOk]:
        return [e for e in self.records[node].events if isinstance(e, PairOk)]

    def errs(self, node: str) -> list[CreateErr]:
        return [e for e in self.records[node].events if isinstance(e, CreateErr)]


def check_invariants(pair: EgpPair, created: dict[tuple[str, int], int]) -> None:
    """After the pair settled: matching deliveries, every request ended, nothing leaked.
    ``created`` maps (origin, create_id) to the number of pairs requested."""
    per_node: dict[str, dict[tuple[str, int], list[PairOk]]] = {}
    for node in (A, B):
        oks = pair.oks(node)
        ids = [ok.pair_id for ok in oks]
        assert len(ids) == len(set(ids)), f"{node} delivered a pair twice"
        grouped: dict[tuple[str, int], list[PairOk]] = {}
        for ok in oks:
            grouped.setdefault((ok.origin, ok.create_id), []).append(ok)
        for lst in grouped.values():
            assert [ok.index_in_request for ok in lst] == list(range(len(lst)))
        per_node[node] = grouped
    for key, number in created.items():
        errs = {n: [e for e in pair.errs(n) if (e.origin, e.create_id) == key] for n in (A, B)}
        unsupported = any(e.code is ErrorCode.UNSUPPORTED for e in errs[key[0]])
        if unsupported:
            continue
        ms, ss = per_node[A].get(key, []), per_node[B].get(key, [])
        ends = ([ok.pair_id for ok in ms], [ok.pair_id for ok in ss])
        if ends[0] != ends[1]:
            # Only EXPIRED may leave the ends apart: the slave stops where its pair was lost.
            assert ends[0][: len(ends[1])] == ends[1], (key, ends)
            assert all(any(e.code is ErrorCode.EXPIRED for e in errs[n]) for n in (A, B))
        for m, s in zip(ms, ss, strict=False):
            assert m.bell_index == s.bell_index
        for node in (A, B):
            done = len(per_node[node].get(key, [])) == number
            assert done or errs[node], f"request {key} did not end at {node}"
            assert len(per_node[node].get(key, [])) <= number
    for node in (A, B):
        rec = pair.records[node]
        assert pair.cores[node].armed == 0, f"{node} is still armed"
        in_use = pair.channel.memory_in_use(node)
        assert in_use == len(rec.held) + len(rec.lost), f"{node} leaked qubits"
        assert pair.cores[node].unacknowledged == 0
    for est, true in pair.fidelity_checks:
        assert abs(est - true) <= 0.01, (est, true)


# -- basic end-to-end cases -------------------------------------------------------------------


@pytest.mark.parametrize("origin", [A, B])
@pytest.mark.parametrize("kind", [Kind.KEEP, Kind.MEASURE])
def test_request_delivers_matching_pairs_at_both_ends(origin: str, kind: Kind) -> None:
    pair = EgpPair()
    cid = pair.create(origin, number=3, min_fidelity=0.8, kind=kind)
    pair.run()
    for node in (A, B):
        oks = pair.oks(node)
        assert [ok.index_in_request for ok in oks] == [0, 1, 2]
        assert {(ok.origin, ok.create_id) for ok in oks} == {(origin, cid)}
        assert all(ok.fidelity_estimate >= 0.8 for ok in oks)
    assert [ok.pair_id for ok in pair.oks(A)] == [ok.pair_id for ok in pair.oks(B)]
    check_invariants(pair, {(origin, cid): 3})


def test_lossy_link_still_matches() -> None:
    pair = EgpPair(faults=Faults(loss=0.3, duplicate=0.3, jitter_ns=200_000), seed=5)
    created = {}
    for i, node in enumerate([A, B, A, B]):
        created[(node, pair.create(node, number=2, min_fidelity=0.7 + 0.05 * i))] = 2
    pair.run()
    check_invariants(pair, created)
    assert all(len(pair.oks(n)) == 8 for n in (A, B))


def test_unreachable_fidelity_is_unsupported_at_once() -> None:
    link = LinkParams(length_km=2.0, source_fidelity=0.9)
    pair = EgpPair(link=link, nodes=(NodeParams(gate_error_2q=0.05),) * 2)
    cid = pair.create(B, number=1, min_fidelity=0.999)
    errs = pair.errs(B)
    assert [(e.code, e.create_id) for e in errs] == [(ErrorCode.UNSUPPORTED, cid)]
    assert pair.cores[B].next_deadline() is None  # nothing queued or sent
    pair.run()
    assert pair.errs(A) == []
    assert pair.oks(A) == []


def test_max_time_gives_timeout_at_both_ends() -> None:
    # 300 km of fibre: pairs are rare, so a 50 µs budget runs out first.
    pair = EgpPair(link=LinkParams(length_km=300.0))
    cid = pair.create(B, number=5, min_fidelity=0.5, max_time_ns=50_000)
    pair.run()
    for node in (A, B):
        assert [(e.code, e.create_id) for e in pair.errs(node)] == [(ErrorCode.TIMEOUT, cid)]
    check_invariants(pair, {(B, cid): 5})


def test_memory_exhaustion_gives_no_memory() -> None:
    nodes = (NodeParams(memory_qubits=2), NodeParams(memory_qubits=2))
    pair = EgpPair(nodes=nodes, free_on_delivery=False)
    cid = pair.create(A, number=4, min_fidelity=0.5)
    pair.run()
    for node in (A, B):
        assert [e.code for e in pair.errs(node)] == [ErrorCode.NO_MEMORY]
        assert len(pair.oks(node)) == 2
    check_invariants(pair, {(A, cid): 4})


def test_priority_is_served_first_and_same_order_at_both_ends() -> None:
    pair = EgpPair()
    low = pair.create(A, number=2, min_fidelity=0.6, priority=0)
    high = pair.create(B, number=2, min_fidelity=0.6, priority=5)
    pair.run()
    for node in (A, B):
        order = [(ok.origin, ok.create_id) for ok in pair.oks(node)]
        assert order[-1] == (A, low) or order[0] == (B, high)
    check_invariants(pair, {(A, low): 2, (B, high): 2})


def test_pair_lost_after_its_ok_is_expired_at_both_ends() -> None:
    """The slave's herald of pair 2 is lost; the master has already delivered it, so both
    ends report EXPIRED naming it, and the slave keeps only what came before."""
    pair = EgpPair()
    pair.drop_herald = lambda node, seq: node == B and seq == 2
    cid = pair.create(A, number=4, min_fidelity=0.5)
    pair.run()
    for node in (A, B):
        (err,) = pair.errs(node)
        assert err.code is ErrorCode.EXPIRED
        assert err.seq_range is not None
        assert err.seq_range[0] == 2
    assert [ok.pair_id[1] for ok in pair.oks(B)] == [1]
    assert [ok.pair_id[1] for ok in pair.oks(A)][:2] == [1, 2]
    check_invariants(pair, {(A, cid): 4})


def test_timeout_mid_request_reports_consumed_range() -> None:
    pair = EgpPair(link=LinkParams(length_km=20.0))
    cid = pair.create(A, number=1000, min_fidelity=0.5, max_time_ns=2_000_000)
    pair.run()
    for node in (A, B):
        (err,) = pair.errs(node)
        assert err.code is ErrorCode.TIMEOUT
        assert err.seq_range is not None
        assert 0 < len(pair.oks(node)) < 1000
    assert pair.errs(A)[0].seq_range == pair.errs(B)[0].seq_range
    check_invariants(pair, {(A, cid): 1000})
