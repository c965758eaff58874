"""The circuit core: virtual circuits, entanglement swapping and Pauli-frame tracking.

One per node, for every circuit through it. Sans-IO: every input takes ``now`` (ns); outputs
are queued for ``pop_outputs``; ``next_deadline`` says when ``on_timer`` is due.

Setup (two passes, Kozlowski et al. 2020). The head sends ``CircuitSetup`` along the path it
got from its routing table; each hop reserves memory (``window`` qubits per link of the
circuit it has) or rejects, adds its capability and passes it on. The tail plans
(``circuit_plan``: per-link fidelity targets, cutoff) or rejects, and sends ``CircuitAccept``
back; each hop takes its part and starts its downstream link. A ``CircuitReject`` travels to
the head and every hop on its way releases what it reserved; hops past the refusing one never
reserved. The head gives up after ``setup_timeout_ns`` and tears down.

Pairs. The upstream end of each link asks its link layer for KEEP pairs at the link's target,
``window`` at a time, labelled with its circuit label as ``purpose``. An intermediate node
swaps as soon as it holds an unswapped pair on both sides (oldest first), and discards a pair
that waited longer than the cutoff, or the oldest beyond ``window`` on a side.

Tracking. The node after the head knows the head's link pair itself; after its swap it sends a
``PairTrack`` downstream naming the head's pair, the Pauli frame (XOR of Bell indices and
outcomes) and the predicted error weights (``bell_diagonal``). Each intermediate node forwards
the track once it has swapped the pair it names, folding in its own pair and outcome. The tail
decides: with a track for a pair it holds it corrects the frame, delivers the pair as the next
end-to-end index and sends ``PairComplete`` back to the head, which delivers in index order.
Only the tail decides, so both ends deliver the same pairs with the same indices.

Discards. A discarded link pair is announced across its link (``ChainDiscard``); a node that
had already swapped it passes the discard on across its other link, so the discard reaches
whoever holds the rest of that chain (the head, the tail, or an unswapped pair) and nothing
waits forever. Link-layer EXPIRED pairs are discards from the link itself. Discards and tracks
that arrive before their pair are kept until it arrives (or they go stale).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qnet.errors import InvalidArgument, NoMemory, QnetError
from qnet.link import estimate
from qnet.link.events import (
    CreateErr,
    CreateRequest,
    ErrorCode,
    Free,
    Gates,
    Kind,
    MeasureQubit,
    PairOk,
    PhysicalCommand,
)
from qnet.link.requests import STREAM_PAIRS
from qnet.network import bell_diagonal as bd
from qnet.network.circuit_events import (
    NETWORK_PURPOSE_BASE,
    ChainDiscard,
    CircuitAccept,
    CircuitClosed,
    CircuitCommand,
    CircuitEvent,
    CircuitId,
    CircuitIncoming,
    CircuitMessage,
    CircuitOpened,
    CircuitPause,
    CircuitReject,
    CircuitResume,
    CircuitSetup,
    CircuitTeardown,
    CloseCode,
    EndToEndPair,
    LinkCancel,
    LinkCreate,
    PairComplete,
    PairTrack,
    ToPeer,
)
from qnet.network.circuit_plan import plan_circuit
from qnet.network.circuit_state import (
    Circuit,
    Completion,
    HeldPair,
    Phase,
    Role,
    Side,
    Swap,
    Track,
)
from qnet.physical.gates import Basis, GateName
from qnet.topology import Topology

Output = CircuitCommand | PhysicalCommand | CircuitEvent

_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    #: Link pairs a node keeps per side of a circuit (reserved memory per link).
    window: int = 2
    setup_timeout_ns: int = 2_000 * _MS
    #: After a link request fails for want of memory or time, wait this long to ask again.
    retry_ns: int = 1 * _MS
    #: Expected processing and messaging delay per hop beyond light in fibre (for planning).
    latency_ns: int = 0
    #: Early tracks and discards, and pairs an end waits on, are given up after this many
    #: cutoffs (nothing waits forever even if a message was lost).
    stale_cutoffs: int = 10
    #: Ask each link for one open-ended stream of pairs per circuit (memory, shared with the
    #: node's other links, is the flow control), rather than ``window`` pairs at a time: a
    #: request's set-up and end cost messages and re-arming at both ends of the link.
    stream_requests: bool = True
    #: Unswapped pairs an intermediate node keeps on one side before it discards the oldest:
    #: above the reservation, because with streaming requests the node's memory (which the
    #: link layers share) is what limits them, and a discard wastes a pair already made.
    hold_limit: int = 4


#: Pairs asked for in a streaming link request; it ends with the circuit (LinkCancel).
STREAM = STREAM_PAIRS


class CircuitCore:
    def __init__(self, node: str, topology: Topology, config: CircuitConfig | None = None):
        self.node = node
        self.topology = topology
        self.config = config or CircuitConfig()
        self.params = topology.node(node).params
        self._neighbours = set(topology.neighbours(node))
        self._down: set[str] = set()
        self._circuits: dict[CircuitId, Circuit] = {}
        self._by_label: dict[int, CircuitId] = {}
        self._by_up: dict[tuple[str, int], CircuitId] = {}
        self._measuring: dict[int, tuple[CircuitId, int]] = {}
        #: Link requests of ended circuits already cancelled again (see ``_cancel_orphan``).
        self._orphans: set[tuple[str, int]] = set()
        self._out: list[Output] = []
        self._next_circuit = 1
        self._next_label = NETWORK_PURPOSE_BASE
        self._next_tag = 1
        self.reserved = 0
        #: ``reserved_by_link`` as of the last change of circuits (None: to compute).
        self._reserved_by_link: dict[str, int] | None = None
        self.counters: dict[str, int] = {
            "swaps": 0,
            "delivered": 0,
            "cutoff_discards": 0,
            "window_discards": 0,
            "low_fidelity_discards": 0,
            "chain_discards": 0,
            "stale": 0,
            "unknown_messages": 0,
            "lost_after_delivery": 0,
        }

    # -- from above ----------------------------------------------------------------------------

    def open(self, path: tuple[str, ...], min_fidelity: float, number: int, now: int) -> CircuitId:
        """Start setting up a circuit along ``path`` (this node first). ``number`` = 0 asks
        for pairs until ``close``. Raises InvalidArgument or NoMemory at once; later failures
        arrive as ``CircuitClosed``."""
        if len(path) < 2 or path[0] != self.node or len(set(path)) != len(path):
            raise InvalidArgument(
                f"a circuit path must start at {self.node}, reach another node and not repeat"
                f" a node; got {path!r}",
                node=self.node,
            )
        if path[1] not in self._neighbours:
            raise InvalidArgument(f"{path[1]} is not a neighbour of {self.node}", node=self.node)
        if not isinstance(min_fidelity, int | float) or not 0.0 <= min_fidelity <= 1.0:
            raise InvalidArgument(f"min_fidelity must be in [0, 1], got {min_fidelity!r}")
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise InvalidArgument(f"number must be an integer ≥ 0, got {number!r}")
        need = self.config.window
        if self.free_memory() < need:
            raise NoMemory(
                f"{self.node} has {self.free_memory()} memory qubits left to reserve,"
                f" a circuit needs {need}",
                node=self.node,
            )
        cid = (self.node, self._next_circuit)
        self._next_circuit += 1
        c = Circuit(cid, path, 0, Role.HEAD, float(min_fidelity), number, need)
        c.label = self._new_label(cid)
        c.setup_deadline = now + self.config.setup_timeout_ns
        self._add(c)
        self._send(
            path[1],
            CircuitSetup(
                cid[0], cid[1], path, float(min_fidelity), number, c.label, (self.free_memory(),)
            ),
        )
        return cid

    def close(self, cid: CircuitId, now: int) -> None:
        """End a circuit this node is an end of; what it holds is freed."""
        c = self._circuits.get(cid)
        if c is None or c.role is Role.MID:
            raise InvalidArgument(f"{self.node} is not an end of an open circuit {cid!r}")
        self._end(c, CloseCode.CLOSED, self.node, "closed by its end", notify=None)

    def pause(self, cid: CircuitId, now: int) -> None:
        """Stop generating pairs for circuit ``cid``, an end's request (idempotent).

        This node and, told by ``CircuitPause``, every hop on the path withdraw their link
        requests for the circuit; it stays open and keeps its reservations. Pairs made before a
        hop's withdrawal lands still go through swapping and tracking as usual: each is
        delivered at both ends, with the next index, or discarded at both (only the tail
        decides), so nothing leaks and the ends stay in step. The circuit generates while
        neither end holds it paused: this end's pause lasts until this end's ``resume``."""
        c = self._own_end(cid)
        self._set_paused(c, c.role, True, now, came_from=None)

    def resume(self, cid: CircuitId, now: int) -> None:
        """End this end's ``pause`` of circuit ``cid`` (idempotent): unless the other end holds
        it paused, every hop asks its link for pairs again."""
        c = self._own_end(cid)
        self._set_paused(c, c.role, False, now, came_from=None)

    def is_paused(self, cid: CircuitId) -> bool:
        """Whether either end holds ``cid`` paused, as this node last heard."""
        c = self._circuits.get(cid)
        return c is not None and c.paused

    def _own_end(self, cid: CircuitId) -> Circuit:
        c = self._circuits.get(cid)
        if c is None or c.role is Role.MID:
            raise InvalidArgument(f"{self.node} is not an end of an open circuit {cid!r}")
        return c

    def _set_paused(
        self, c: Circuit, end: Role, paused: bool, now: int, *, came_from: Side | None
    ) -> None:
        """End ``end``'s pause flag is now ``paused``: pass it on along the path (away from
        ``came_from``) and start or stop this node's link requests."""
        if (end in c.paused_by) == paused:
            return  # nothing changes, so the hops further on already know
        was = c.paused
        if paused:
            c.paused_by.add(end)
        else:
            c.paused_by.discard(end)
        for side in (Side.UP, Side.DOWN):
            if side is not came_from:
                message = CircuitPause if paused else CircuitResume
                self._send(c.peer(side), message(c.id[0], c.id[1]))
        if c.paused and not was:
            c.retry_at = None
            if c.outstanding > 0 and c.down_peer is not None and c.label is not None:
                # ``outstanding`` stays until the link's CANCELLED arrives: a resume before
                # then must not start a second stream beside the one still winding down.
                self._out.append(LinkCancel(c.down_peer, c.label))
        elif was and not c.paused:
            self._maybe_request(c, now)

    # -- from the link layer -------------------------------------------------------------------

    def on_link_pair(
        self, peer: str, ok: PairOk, weights: Iterable[float] | None, now: int
    ) -> None:
        """A KEEP pair of the link to ``peer`` with a network ``purpose``. ``weights`` are the
        link layer's predicted Bell weights (by Bell index); None means a Werner pair of the
        estimated fidelity."""
        assert ok.qubit is not None
        found = self._circuit_of(peer, ok.origin, ok.purpose)
        if found is None or found[0].phase is not Phase.OPEN:
            self._free(ok.qubit)  # a circuit that ended (or never was here)
            if found is None and ok.origin == self.node:
                self._cancel_orphan(peer, ok.purpose, ok.create_id)
            return
        c, side = found
        absolute = tuple(weights) if weights is not None else _werner_abs(ok)
        pair = HeldPair(
            ok.pair_id[1],
            ok.qubit,
            ok.bell_index,
            bd.relative(absolute, ok.bell_index),
            ok.estimate_time_ns,
        )
        if side is Side.DOWN:
            c.outstanding = max(0, c.outstanding - 1)
        doomed = c.doomed[side]
        if pair.seq in doomed:
            if c.role is not Role.HEAD:
                # (The head keeps the mark until it goes stale: a completion for it may
                # still come, and ends the circuit.)
                del doomed[pair.seq]
            self._free(pair.qubit)
            self._maybe_request(c, now)
            return
        c.pairs(side)[pair.seq] = pair
        if c.role is Role.HEAD:
            early = c.early.pop(pair.seq, None)
            if early is not None:
                self._completed_at_head(c, pair.seq, early, now)
        elif c.role is Role.TAIL:
            if c.position == 1:
                track = Track(pair.seq, pair.nominal, pair.weights, pair.time_ns, pair.time_ns)
                self._complete_at_tail(c, pair, track, now)
            else:
                waiting = c.tracks.pop(pair.seq, None)
                if waiting is not None:
                    self._complete_at_tail(c, pair, waiting[0], now)
        else:
            self._swap_ready(c, now)
        if c.role is Role.MID:
            self._trim(c, side, now)
        self._maybe_request(c, now)

    def on_link_error(self, peer: str, err: CreateErr, now: int) -> None:
        """A link request with a network ``purpose`` ended early (at either end)."""
        found = self._circuit_of(peer, err.origin, err.purpose)
        if found is None:
            return
        c, side = found
        if err.code is ErrorCode.EXPIRED and err.seq_range is not None:
            first, last = err.seq_range
            head = c.role is Role.HEAD and side is Side.DOWN
            for seq in range(first, last + 1):
                if head and seq in c.early:
                    self._lost_after_delivery(c, seq)
                    return
                if seq in c.pairs(side) or self._swap_of(c, side, seq) is not None:
                    self._discarded(c, side, seq, now, announce=False)
                if head:
                    # Our half is gone for good, and the tail may yet complete (and deliver)
                    # the end-to-end pair it belongs to.
                    c.doomed[side][seq] = now + self._stale_ns(c)
        if side is not Side.DOWN or err.origin != self.node:
            return
        c.outstanding = 0
        if err.code is ErrorCode.UNSUPPORTED:
            self._end(c, CloseCode.UNSUPPORTED, self.node, f"link to {peer}: {err.reason}")
            return
        if c.paused:
            return  # ``resume`` asks again
        if err.code is not ErrorCode.CANCELLED:
            # Only a pause cancels a live circuit's request: resumed since, it asks at once.
            c.retry_at = now + self.config.retry_ns
        self._maybe_request(c, now)

    def on_measured(self, tag: int, outcome: int, now: int) -> None:
        entry = self._measuring.pop(tag, None)
        if entry is None:
            return
        cid, up_seq = entry
        c = self._circuits.get(cid)
        swap = c.swaps_by_up.get(up_seq) if c is not None else None
        if c is None or swap is None:
            return  # the chain was discarded while its qubits were measured
        if outcome not in (0, 1):
            # The backend could not measure: the swap is lost, and with it both chains.
            c.swaps_by_up.pop(swap.up.seq, None)
            c.swaps_by_down.pop(swap.down.seq, None)
            if swap.track is not None:
                c.swaps_by_head.pop(swap.track.head_seq, None)
            self._send(c.up_peer, ChainDiscard(c.id[0], c.id[1], swap.up.seq))
            self._send(c.down_peer, ChainDiscard(c.id[0], c.id[1], swap.down.seq))
            return
        swap.outcomes[tag] = outcome
        self._forward_track(c, swap, now)

    # -- from peers ----------------------------------------------------------------------------

    def on_message(self, sender: str, msg: CircuitMessage, now: int) -> None:
        if isinstance(msg, CircuitSetup):
            self._on_setup(sender, msg, now)
            return
        c = self._circuits.get(msg.circuit_id)
        if c is None or sender not in (c.up_peer, c.down_peer):
            self.counters["unknown_messages"] += 1  # late, after the circuit ended here
            return
        from_side = Side.UP if sender == c.up_peer else Side.DOWN
        if isinstance(msg, CircuitAccept) and from_side is Side.DOWN:
            self._on_accept(c, msg, now)
        elif isinstance(msg, CircuitReject) and from_side is Side.DOWN:
            self._release(c)
            if c.role is Role.HEAD:
                self._emit_closed(c, _close_code(msg.code), msg.node, msg.reason)
            else:
                self._send(c.up_peer, msg)
        elif isinstance(msg, CircuitTeardown):
            self._end(c, _close_code(msg.code), msg.node, msg.reason, notify=from_side)
        elif isinstance(msg, PairTrack) and from_side is Side.UP:
            self._on_track(c, msg, now)
        elif isinstance(msg, ChainDiscard):
            self.counters["chain_discards"] += 1
            self._discarded(c, from_side, msg.seq, now, announce=False)
        elif isinstance(msg, PairComplete) and from_side is Side.DOWN:
            self._on_complete(c, msg, now)
        elif isinstance(msg, CircuitPause | CircuitResume):
            # Only the ends pause, and a message travels away from its end: its direction
            # names the end.
            end = Role.HEAD if from_side is Side.UP else Role.TAIL
            self._set_paused(c, end, isinstance(msg, CircuitPause), now, came_from=from_side)
        else:
            self.counters["unknown_messages"] += 1

    def link_down(self, peer: str, now: int) -> None:
        """The link or the neighbour is gone: every circuit through it ends."""
        self._down.add(peer)
        for c in list(self._circuits.values()):
            if peer in (c.up_peer, c.down_peer):
                side = Side.UP if peer == c.up_peer else Side.DOWN
                self._end(
                    c, CloseCode.UNREACHABLE, self.node, f"link to {peer} went down", notify=side
                )

    def link_up(self, peer: str, now: int) -> None:
        self._down.discard(peer)

    # -- time ----------------------------------------------------------------------------------

    def on_timer(self, now: int) -> None:
        for c in list(self._circuits.values()):
            if c.setup_deadline is not None and c.setup_deadline <= now:
                self._end(c, CloseCode.TIMEOUT, self.node, "no answer to the circuit setup")
                continue
            if c.phase is not Phase.OPEN:
                continue
            self._expire(c, now)
            if c.id in self._circuits:
                self._maybe_request(c, now)

    def next_deadline(self) -> int | None:
        best: int | None = None
        for c in self._circuits.values():
            d = self._earliest(c)
            if d is not None and (best is None or d < best):
                best = d
        return best

    def pop_outputs(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    # -- inspection ------------------------------------------------------------------------------

    def free_memory(self) -> int:
        return self.params.memory_qubits - self.reserved

    def circuits(self) -> dict[CircuitId, Circuit]:
        return dict(self._circuits)

    def qubits_held(self) -> int:
        return sum(len(c.held_qubits()) for c in self._circuits.values())

    def qubits_held_by_link(self) -> dict[str, int]:
        """Qubits held here, by the neighbour whose link delivered them."""
        held: dict[str, int] = {}
        for c in self._circuits.values():
            if c.up_peer is not None and c.up_pairs:
                held[c.up_peer] = held.get(c.up_peer, 0) + len(c.up_pairs)
            if c.down_peer is not None and (c.down_pairs or c.ready):
                count = len(c.down_pairs) + len(c.ready)
                held[c.down_peer] = held.get(c.down_peer, 0) + count
        return held

    def reserved_by_link(self) -> Mapping[str, int]:
        """Memory reserved here at setup, by the neighbour whose link the circuits use: a
        circuit's reservation split evenly between its sides. (Computed when a circuit
        comes or goes, not on every call: the node reads it after every input.)"""
        reserved = self._reserved_by_link
        if reserved is None:
            reserved = self._reserved_by_link = {}
            for c in self._circuits.values():
                sides = [p for p in (c.up_peer, c.down_peer) if p is not None]
                if not c.reserved or not sides:
                    continue
                for peer in sides:
                    reserved[peer] = reserved.get(peer, 0) + c.reserved // len(sides)
        return reserved

    def owns_purpose(self, purpose: int) -> bool:
        return purpose >= NETWORK_PURPOSE_BASE

    # -- setup -----------------------------------------------------------------------------------

    def _on_setup(self, sender: str, msg: CircuitSetup, now: int) -> None:
        cid = msg.circuit_id
        path = msg.path
        if cid in self._circuits:
            return  # a duplicate
        position = path.index(self.node) if self.node in path else -1

        def reject(code: CloseCode, reason: str) -> None:
            self._send(sender, CircuitReject(cid[0], cid[1], code.value, self.node, reason))

        if position < 1 or path[position - 1] != sender or len(set(path)) != len(path):
            reject(CloseCode.DENIED, f"{self.node} is not after {sender} on path {path!r}")
            return
        if not 0.0 <= msg.min_fidelity <= 1.0:
            reject(CloseCode.DENIED, f"min_fidelity {msg.min_fidelity} is not in [0, 1]")
            return
        last = position == len(path) - 1
        need = self.config.window * (1 if last else 2)
        if self.free_memory() < need:
            reject(
                CloseCode.NO_MEMORY,
                f"{self.node} has {self.free_memory()} memory qubits free, needs {need}",
            )
            return
        nxt = None if last else path[position + 1]
        if nxt is not None and (nxt not in self._neighbours or nxt in self._down):
            reject(CloseCode.UNREACHABLE, f"{self.node} has no working link to {nxt}")
            return
        role = Role.TAIL if last else Role.MID
        c = Circuit(cid, path, position, role, msg.min_fidelity, msg.number, need)
        c.up_label = msg.label
        self._add(c)
        memory = (*msg.memory_free, self.free_memory())
        if nxt is not None:
            c.label = self._new_label(cid)
            self._send(
                nxt,
                CircuitSetup(cid[0], cid[1], path, msg.min_fidelity, msg.number, c.label, memory),
            )
            return
        try:
            plan = plan_circuit(
                path, self.topology, msg.min_fidelity, latency_ns=self.config.latency_ns
            )
        except QnetError as exc:
            self._release(c)
            reject(CloseCode.UNSUPPORTED, str(exc))
            return
        c.phase = Phase.OPEN
        c.link_fidelity = plan.link_fidelity
        c.cutoff_ns = plan.cutoff_ns
        self._send(sender, CircuitAccept(cid[0], cid[1], plan.link_fidelity, plan.cutoff_ns))
        self._out.append(CircuitIncoming(cid, path, msg.min_fidelity, msg.number))

    def _on_accept(self, c: Circuit, msg: CircuitAccept, now: int) -> None:
        if c.phase is not Phase.SETUP or len(msg.link_fidelity) != len(c.path) - 1:
            self.counters["unknown_messages"] += 1
            return
        c.phase = Phase.OPEN
        c.link_fidelity = msg.link_fidelity
        c.cutoff_ns = max(0, msg.cutoff_ns)
        c.setup_deadline = None
        if c.role is Role.HEAD:
            self._out.append(CircuitOpened(c.id, c.path, c.link_fidelity, c.cutoff_ns))
        else:
            self._send(c.up_peer, msg)
        self._maybe_request(c, now)

    # -- link requests ---------------------------------------------------------------------------

    def _maybe_request(self, c: Circuit, now: int) -> None:
        """Keep the downstream link busy while this node has room for its pairs."""
        peer = c.down_peer
        if peer is None or c.phase is not Phase.OPEN or c.outstanding > 0 or c.label is None:
            return
        if c.paused:
            return
        if c.retry_at is not None:
            if c.retry_at > now:
                return
            c.retry_at = None
        if self.config.stream_requests:
            need = STREAM
        else:
            waiting = len(c.down_pairs) + (len(c.ready) if c.role is Role.HEAD else 0)
            need = self.config.window - waiting
            if need <= 0:
                return
        c.outstanding = need
        request = CreateRequest(
            remote=peer,
            number=need,
            min_fidelity=c.link_fidelity[c.position],
            kind=Kind.KEEP,
            purpose=c.label,
        )
        self._out.append(LinkCreate(request))

    # -- swapping and tracking -------------------------------------------------------------------

    def _swap_ready(self, c: Circuit, now: int) -> None:
        while c.up_pairs and c.down_pairs:
            up = c.up_pairs.pop(next(iter(c.up_pairs)))
            down = c.down_pairs.pop(next(iter(c.down_pairs)))
            tags = (self._tag(), self._tag())
            swap = Swap(up, down, now, tags)
            c.swaps_by_up[up.seq] = swap
            c.swaps_by_down[down.seq] = swap
            if c.position == 1:
                swap.track = Track(up.seq, up.nominal, up.weights, up.time_ns, up.time_ns)
            else:
                waiting = c.tracks.pop(up.seq, None)
                swap.track = waiting[0] if waiting is not None else None
            if swap.track is not None:
                c.swaps_by_head[swap.track.head_seq] = swap
            for tag in tags:
                self._measuring[tag] = (c.id, up.seq)
            self.counters["swaps"] += 1
            self._out.append(
                Gates(
                    self._tag(),
                    ((GateName.CNOT, (up.qubit, down.qubit), 0.0), (GateName.H, (up.qubit,), 0.0)),
                )
            )
            self._out.append(MeasureQubit(tags[0], up.qubit, Basis.Z))
            self._out.append(MeasureQubit(tags[1], down.qubit, Basis.Z))

    def _on_track(self, c: Circuit, msg: PairTrack, now: int) -> None:
        if len(msg.weights) != 4 or not 0 <= msg.nominal < 4:
            self.counters["unknown_messages"] += 1
            return
        track = Track(
            msg.head_seq,
            msg.nominal,
            (msg.weights[0], msg.weights[1], msg.weights[2], msg.weights[3]),
            msg.head_time_ns,
            msg.far_time_ns,
        )
        if c.doomed[Side.UP].get(msg.seq) is not None:
            return
        if c.role is Role.TAIL:
            pair = c.up_pairs.get(msg.seq)
            if pair is not None:
                self._complete_at_tail(c, pair, track, now)
            else:
                c.tracks[msg.seq] = (track, now + self._stale_ns(c))
            return
        swap = c.swaps_by_up.get(msg.seq)
        if swap is None:
            c.tracks[msg.seq] = (track, now + self._stale_ns(c))
            return
        swap.track = track
        c.swaps_by_head[track.head_seq] = swap
        self._forward_track(c, swap, now)

    def _forward_track(self, c: Circuit, swap: Swap, now: int) -> None:
        outcome = swap.outcome
        if outcome is None or swap.track is None or c.down_peer is None or swap.forwarded:
            return
        track = swap.track
        # Memory of the two qubits this node measured, up to the swap; the head's qubit keeps
        # its reference time, the far end's becomes the downstream pair's.
        up = bd.idle(track.weights, self.params, swap.time_ns - track.far_time_ns)
        down = bd.idle(swap.down.weights, self.params, swap.time_ns - swap.down.time_ns)
        joined = bd.bell_measurement(up, down, self.params)
        nominal = track.nominal ^ swap.down.nominal ^ outcome
        swap.forwarded = True
        self._send(
            c.down_peer,
            PairTrack(
                c.id[0],
                c.id[1],
                swap.down.seq,
                track.head_seq,
                nominal,
                joined,
                track.head_time_ns,
                swap.down.time_ns,
            ),
        )

    def _complete_at_tail(self, c: Circuit, pair: HeldPair, track: Track, now: int) -> None:
        del c.up_pairs[pair.seq]
        head = self.topology.node(c.path[0]).params
        q = bd.idle(track.weights, self.params, now - track.far_time_ns)
        q = bd.idle(q, head, now - track.head_time_ns)
        gates = estimate.correction_gates(track.nominal)
        q = bd.corrected(q, len(gates), self.params)
        if bd.fidelity(q) < c.min_fidelity:
            self.counters["low_fidelity_discards"] += 1
            self._free(pair.qubit)
            self._send(c.up_peer, ChainDiscard(c.id[0], c.id[1], pair.seq))
            return
        if gates:
            self._out.append(Gates(self._tag(), tuple((g, (pair.qubit,), 0.0) for g in gates)))
        index = c.next_index
        c.next_index += 1
        c.delivered += 1
        self.counters["delivered"] += 1
        self._out.append(EndToEndPair(c.id, index, pair.qubit, c.path[0], bd.fidelity(q), now, q))
        self._send(c.up_peer, PairComplete(c.id[0], c.id[1], track.head_seq, index, q, now))
        if c.number and c.delivered >= c.number:
            self._end(c, CloseCode.COMPLETED, self.node, f"{c.delivered} pairs delivered")

    def _on_complete(self, c: Circuit, msg: PairComplete, now: int) -> None:
        if len(msg.weights) != 4:
            self.counters["unknown_messages"] += 1
            return
        weights = (msg.weights[0], msg.weights[1], msg.weights[2], msg.weights[3])
        done = Completion(msg.index, weights, msg.time_ns)
        if c.role is Role.MID:
            swap = c.swaps_by_head.pop(msg.head_seq, None)
            if swap is not None:
                c.swaps_by_down.pop(swap.down.seq, None)
                c.swaps_by_up.pop(swap.up.seq, None)
            self._send(c.up_peer, msg)
            return
        if msg.head_seq in c.down_pairs:
            self._completed_at_head(c, msg.head_seq, done, now)
        elif msg.head_seq in c.doomed[Side.DOWN]:
            self._lost_after_delivery(c, msg.head_seq)
        else:
            c.early[msg.head_seq] = done

    def _lost_after_delivery(self, c: Circuit, head_seq: int) -> None:
        """The tail delivered the end-to-end pair of our link pair ``head_seq``, and our half
        of that link pair is gone (the link layer ended with EXPIRED, or a discard reached
        us). This end can never deliver the same index, so the ends would fall out of step:
        the circuit ends at both, with a reason, rather than leave this end waiting."""
        self.counters["lost_after_delivery"] += 1
        reason = (
            f"{self.node} lost its half of an end-to-end pair (link pair {head_seq})"
            f" that {c.path[-1]} had delivered"
        )
        self._end(c, CloseCode.UNREACHABLE, self.node, reason, notify=None)

    def _completed_at_head(self, c: Circuit, head_seq: int, done: Completion, now: int) -> None:
        pair = c.down_pairs.pop(head_seq)
        c.ready[done.index] = (pair, done)
        tail = self.topology.node(c.path[-1]).params
        while c.next_index in c.ready:
            pair, done = c.ready.pop(c.next_index)
            q = bd.idle(done.weights, self.params, now - done.time_ns)
            q = bd.idle(q, tail, now - done.time_ns)
            self._out.append(
                EndToEndPair(c.id, c.next_index, pair.qubit, c.path[-1], bd.fidelity(q), now, q)
            )
            c.next_index += 1
            c.delivered += 1
            self.counters["delivered"] += 1
        self._maybe_request(c, now)

    # -- discards --------------------------------------------------------------------------------

    def _discarded(self, c: Circuit, side: Side, seq: int, now: int, *, announce: bool) -> None:
        """Link pair ``seq`` on ``side`` is gone: free our half, or pass the discard on past
        the swap that joined it. ``announce`` tells the other end of that link too."""
        if announce:
            self._send(c.peer(side), ChainDiscard(c.id[0], c.id[1], seq))
        if side is Side.UP:
            c.tracks.pop(seq, None)
        pair = c.pairs(side).pop(seq, None)
        if pair is not None:
            self._free(pair.qubit)
            self._maybe_request(c, now)
            return
        swap = self._swap_of(c, side, seq)
        if swap is not None:
            c.swaps_by_up.pop(swap.up.seq, None)
            c.swaps_by_down.pop(swap.down.seq, None)
            if swap.track is not None:
                c.swaps_by_head.pop(swap.track.head_seq, None)
            other = Side.DOWN if side is Side.UP else Side.UP
            other_seq = swap.down.seq if side is Side.UP else swap.up.seq
            self._send(c.peer(other), ChainDiscard(c.id[0], c.id[1], other_seq))
            return
        if c.role is Role.HEAD and side is Side.DOWN and seq in c.early:
            return  # completed already; a stale discard
        c.doomed[side][seq] = now + self._stale_ns(c)

    def _swap_of(self, c: Circuit, side: Side, seq: int) -> Swap | None:
        return (c.swaps_by_up if side is Side.UP else c.swaps_by_down).get(seq)

    def _trim(self, c: Circuit, side: Side, now: int) -> None:
        """An intermediate node holds at most ``hold_limit`` unswapped pairs a side."""
        pairs = c.pairs(side)
        while len(pairs) > self.config.hold_limit:
            seq = next(iter(pairs))
            self.counters["window_discards"] += 1
            self._discarded(c, side, seq, now, announce=True)

    def _expire(self, c: Circuit, now: int) -> None:
        stale = self._stale_ns(c)
        for side in (Side.UP, Side.DOWN):
            pairs = c.pairs(side)
            limit = c.cutoff_ns if c.role is Role.MID else stale
            for seq, pair in list(pairs.items()):
                if pair.time_ns + limit <= now and seq in pairs:
                    key = "cutoff_discards" if c.role is Role.MID else "stale"
                    self.counters[key] += 1
                    self._discarded(c, side, seq, now, announce=True)
            for seq, until in list(c.doomed[side].items()):
                if until <= now:
                    del c.doomed[side][seq]
        for seq, (_, until) in list(c.tracks.items()):
            if until <= now:
                del c.tracks[seq]

    def _earliest(self, c: Circuit) -> int | None:
        """The circuit's next deadline (the node reads it after every input, so it is
        worked out with plain loops)."""
        best = c.setup_deadline
        if c.phase is not Phase.OPEN:
            return best
        if c.retry_at is not None and (best is None or c.retry_at < best):
            best = c.retry_at
        limit = c.cutoff_ns if c.role is Role.MID else self._stale_ns(c)
        for pairs in (c.up_pairs, c.down_pairs):
            for p in pairs.values():
                d = p.time_ns + limit
                if best is None or d < best:
                    best = d
        for doomed in c.doomed.values():
            for d in doomed.values():
                if best is None or d < best:
                    best = d
        for _, until in c.tracks.values():
            if best is None or until < best:
                best = until
        return best

    def _stale_ns(self, c: Circuit) -> int:
        return max(c.cutoff_ns, 1) * self.config.stale_cutoffs

    # -- ending ----------------------------------------------------------------------------------

    def _end(
        self,
        c: Circuit,
        code: CloseCode,
        node: str,
        reason: str,
        *,
        notify: Side | None = None,
    ) -> None:
        """Free everything of ``c`` here and tell the neighbours on the path, except the one on
        side ``notify`` (which told us)."""
        for side in (Side.UP, Side.DOWN):
            peer = c.peer(side)
            if peer is not None and side is not notify and peer not in self._down:
                self._send(peer, CircuitTeardown(c.id[0], c.id[1], code.value, node, reason))
        if c.down_peer is not None and c.label is not None and c.phase is Phase.OPEN:
            self._out.append(LinkCancel(c.down_peer, c.label))
        self._release(c)
        if c.role is not Role.MID:
            self._emit_closed(c, code, node, reason)

    def _release(self, c: Circuit) -> None:
        for qubit in c.held_qubits():
            self._free(qubit)
        c.up_pairs.clear()
        c.down_pairs.clear()
        c.ready.clear()
        for tag in [t for t, (cid, _) in self._measuring.items() if cid == c.id]:
            del self._measuring[tag]
        self._circuits.pop(c.id, None)
        self.reserved -= c.reserved
        c.reserved = 0
        self._reserved_by_link = None
        if c.label is not None:
            self._by_label.pop(c.label, None)
        if c.up_peer is not None and c.up_label is not None:
            self._by_up.pop((c.up_peer, c.up_label), None)

    def _emit_closed(self, c: Circuit, code: CloseCode, node: str, reason: str) -> None:
        self._out.append(CircuitClosed(c.id, code, node, reason, c.delivered))

    def _cancel_orphan(self, peer: str, purpose: int, create_id: int) -> None:
        """A request of ours still delivers for a circuit that is gone (its cancel was lost,
        say, while the link was down): a stream request would otherwise run forever."""
        key = (peer, create_id)
        if key in self._orphans:
            return
        if len(self._orphans) > 1024:
            self._orphans.clear()
        self._orphans.add(key)
        self._out.append(LinkCancel(peer, purpose, create_id))

    # -- helpers ---------------------------------------------------------------------------------

    def _add(self, c: Circuit) -> None:
        self._circuits[c.id] = c
        self.reserved += c.reserved
        self._reserved_by_link = None
        if c.up_peer is not None and c.up_label is not None:
            self._by_up[(c.up_peer, c.up_label)] = c.id

    def _new_label(self, cid: CircuitId) -> int:
        label = self._next_label
        self._next_label += 1
        self._by_label[label] = cid
        return label

    def _circuit_of(self, peer: str, origin: str, purpose: int) -> tuple[Circuit, Side] | None:
        if origin == self.node:
            cid = self._by_label.get(purpose)
            side = Side.DOWN
        else:
            cid = self._by_up.get((peer, purpose))
            side = Side.UP
        c = self._circuits.get(cid) if cid is not None else None
        if c is None or c.peer(side) != peer:
            return None
        return c, side

    def _send(self, peer: str | None, msg: CircuitMessage) -> None:
        if peer is not None:
            self._out.append(ToPeer(peer, msg))

    def _free(self, qubit: int) -> None:
        self._out.append(Free(self._tag(), (qubit,)))

    def _tag(self) -> int:
        tag = self._next_tag
        self._next_tag += 1
        return tag


def _werner_abs(ok: PairOk) -> tuple[float, float, float, float]:
    rel = bd.werner(ok.fidelity_estimate)
    w = [rel[ok.bell_index ^ i] for i in range(4)]
    return (w[0], w[1], w[2], w[3])


def _close_code(value: str) -> CloseCode:
    try:
        return CloseCode(value)
    except ValueError:
        return CloseCode.CLOSED
