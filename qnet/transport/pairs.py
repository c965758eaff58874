"""A connection's end-to-end pairs: who uses which pair, the epr and measure-directly streams,
teleportation, and flow control by the ends' windows.

Pairs come from the connection's circuit with an index each, the same at both ends. The
accepting end (the circuit's tail, which holds every pair before the connecting end does) is
the *allocator*: it decides each index's ``PairUse`` in index order as the pair arrives, and
tells the connecting end (the *follower*) in ``PairUses`` records. The follower holds a pair
until it knows its use, and remembers a use until its pair arrives. So both ends agree on
every pair without a round trip per pair, and the epr stream's k-th pair is the same at both.

The allocator chooses, for each pair, in this order: a qubit the follower wants to teleport
(the follower's ``PairDemand.teleports``), one of its own, a measure-directly slot both ends
asked for, the epr stream if both ends have room (the follower's ``epr_limit`` = pairs its
application took + its calls waiting, or + its window while its application called ``epr``
within ``prefetch_idle_ns``; the allocator's own window) or an ``epr`` call waits at the
allocator, a pair kept ready for the next ``send_qubit`` of either end, else RELEASE: both
ends free it. Flow control therefore bounds what each end holds for its application by its
window, and an end whose application does not use the epr stream holds none of its pairs; the
surplus is freed at once, and a connection that wants nothing at either end pauses its circuit
(``Connection`` asks the driver, after ``TransportConfig.pause_after_ns`` without demand).

Teleportation: a qubit waits in ``sends`` until a pair assigned to its direction is here (a
confirmed pair); then ``BellMeasure``; the outcomes go as a ``Teleport`` record, in the order
of the ``send_qubit`` calls; the receiver applies ``Correct`` and delivers its half. An end
that sent a qubit within ``prefetch_idle_ns`` keeps ``teleport_prefetch`` pairs of its
direction ready (the follower asks for them in its teleport demand), so that its next
``send_qubit`` measures at once; it gives a ready pair back unused, alone (the receiver only
waits for bits), with ``Teleport`` bits x = z = ``RELEASED``: once it stopped sending, and when
the pair waited ``max_ready_age_ns`` (it decoheres in memory, and its fidelity estimate from
arrival no longer holds) — a fresh one replaces it.

When an output closes the allocator ends the epr and measure-directly streams (``PairsEnd``,
after every EPR/MEASURE use it gave); calls those streams can no longer serve are answered
with ``PairsEnded``. Teleportation goes on while an output is open. Once both ``Fin``s are out
(ours is queued only after our last teleport's bits, the peer's arrived after its last) no use
but RELEASE can follow: the allocator stops telling uses and both ends free pairs as they come
(``close_uses``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from qnet.errors import ProtocolError
from qnet.physical.gates import Basis
from qnet.transport.events import (
    BellMeasure,
    ConnId,
    Correct,
    EprPair,
    Free,
    MeasuredPair,
    MeasurePair,
    Output,
    PairsEnded,
    PairUse,
    QubitReceived,
    QubitSent,
)

#: Teleport bits (x = z = RELEASED) of a pair its sender kept ready and gave back unused.
RELEASED = -2


@dataclass(frozen=True, slots=True)
class HeldPair:
    index: int
    qubit: int
    fidelity: float
    #: When the pair reached this end (ns of the core's clock): a pair kept ready ages from
    #: then.
    since: int = 0


@dataclass(frozen=True, slots=True)
class _BellPending:
    number: int
    index: int
    qubit: int


@dataclass(frozen=True, slots=True)
class _MeasurePending:
    slot: int
    index: int
    basis: Basis


@dataclass(frozen=True, slots=True)
class _BellDone:
    index: int
    qubit: int
    #: (x, z) to send, or None if the measurement failed.
    bits: tuple[int, int] | None


class PairStream:
    def __init__(
        self,
        conn: ConnId,
        *,
        allocator: bool,
        window: int,
        peer_epr_limit: int,
        prefetch: int = 0,
        prefetch_idle_ns: int = 0,
        max_ready_age_ns: int = 0,
        hold: int = 0,
        out: list[Output],
        new_tag: Callable[[], int],
        new_measure_tag: Callable[[], int],
    ) -> None:
        """``new_tag`` numbers commands nobody answers; ``new_measure_tag`` those answered by
        ``on_measured`` (the core routes those answers back here)."""
        self.conn = conn
        self.allocator = allocator
        self.window = window
        self.prefetch = prefetch
        self.prefetch_idle_ns = prefetch_idle_ns
        self.max_ready_age_ns = max_ready_age_ns
        self.hold = hold
        self._out = out
        self._new_tag = new_tag
        self._new_measure_tag = new_measure_tag
        self.mine = PairUse.FROM_ACCEPTOR if allocator else PairUse.FROM_CONNECTOR
        self.theirs = PairUse.FROM_CONNECTOR if allocator else PairUse.FROM_ACCEPTOR
        #: Pairs here and not consumed, by index; and the uses known for unconsumed indices.
        self.held: dict[int, HeldPair] = {}
        self.use_of: dict[int, PairUse] = {}
        #: Allocator: pairs not decided yet: those that came before a lower index (decided
        #: in index order), and up to ``hold`` that no demand wanted when they came, kept for
        #: the next demand rather than released (``_hold_head``).
        self.early: dict[int, HeldPair] = {}
        #: Allocator: next index to decide. Follower: next index a PairUses must start at.
        self.next_index = 0
        # epr stream: indices in stream order, not yet given; calls not yet answered.
        self.epr_queue: deque[int] = deque()
        self.epr_wanted = 0
        self.epr_given = 0
        self.epr_assigned = 0
        #: The application called ``epr`` within ``prefetch_idle_ns`` (until
        #: ``epr_active_until``): only then does this end hold pairs ahead of its calls (its
        #: window), so that pairs of a stream nobody uses do not sit in memory.
        self.epr_active = False
        self.epr_active_until = 0
        self.epr_limit = 0
        #: Follower: the pairs taken when it sent ``EprRelease`` (no pair is taken until the
        #: allocator's ``EprCut`` answers), and whether that record is due.
        self.epr_hold: int | None = None
        self.epr_release_due = False
        #: Allocator: the ``EprCut`` to send.
        self.epr_cut_due: int | None = None
        # measure-directly stream: the basis of every slot the application asked for.
        self.measure_bases: list[Basis] = []
        self.measures_requested = 0
        self.measures_assigned = 0
        self.measure_slot: dict[int, int] = {}  # index → slot, assigned and not measured yet
        self.measure_results: dict[int, MeasuredPair] = {}
        self.measures_delivered = 0
        # teleportation, this end sending: qubits waiting for a pair, and pairs for them.
        self.sends: deque[int] = deque()
        self.sends_requested = 0
        self.sends_started = 0
        self.my_pairs: deque[int] = deque()
        #: Pairs assigned to this end's direction so far (used, ready or released), and
        #: those released unused.
        self.mine_assigned = 0
        self.ready_released = 0
        #: Prefetch: this end sent a qubit lately (until ``prefetch_until``), so it keeps
        #: ``prefetch`` pairs of its direction ready beyond the qubits waiting to go.
        self.prefetching = False
        self.prefetch_until = 0
        #: Follower: the teleport demand told so far (the allocator assigns up to it).
        self.teleports_demand = 0
        self.bell_done: dict[int, _BellDone] = {}
        self.sends_reported = 0
        # teleportation, this end receiving: Teleport records waiting for their pair.
        self.incoming: deque[tuple[int, int, int]] = deque()
        self.received = 0
        self.teleports_lost = 0
        self.ready_received_released = 0
        self.tags: dict[int, _BellPending | _MeasurePending] = {}
        #: No more EPR/MEASURE uses; no use but RELEASE at all.
        self.ended = False
        #: This end's output closed (no send_qubit can follow); its Fin is queued (no record
        #: can follow).
        self.ended_output = False
        self.fin_queued = False
        self.uses_closed = False
        #: The circuit is closed or closing: a pair still in flight is freed on arrival.
        self.circuit_closed = False
        # The allocator's view of the follower's demand.
        self.peer_epr_limit = peer_epr_limit
        self.peer_measures = 0
        self.peer_teleports = 0
        self.peer_teleports_assigned = 0
        #: Allocator: the follower counts as asking for pairs until then (its demand last
        #: changed ``prefetch_idle_ns`` before; ``_in_use``).
        self.peer_active_until = 0
        #: Allocator: a pair went unused for lack of teleports (``_surplus``) since the
        #: connection last looked.
        self.surplus = False
        # Allocator output for the connection to send: uses from ``uses_first`` on; whether
        # PairsEnd is due. Both ends: Teleport bits, in send order.
        self.uses_out: list[int] = []
        self.uses_first = 0
        self.pairs_end_due = False
        self.teleports_out: list[tuple[int, int, int]] = []

    # -- the application -------------------------------------------------------------------------

    def want_epr(self, now: int = 0) -> None:
        self.epr_wanted += 1
        self.epr_active = True
        self.epr_active_until = now + self.prefetch_idle_ns
        self._progress()
        self._check_ended()

    def want_measures(self, count: int, basis: Basis) -> None:
        self.measure_bases.extend([basis] * count)
        self.measures_requested += count
        self._progress()
        self._check_ended()

    def send_qubit(self, qubit: int, now: int = 0) -> None:
        self.sends.append(qubit)
        self.sends_requested += 1
        if self.prefetch and not self.ended_output:
            self.prefetching = True
            self.prefetch_until = now + self.prefetch_idle_ns
        self._progress()

    def demand(self) -> tuple[int, int, int]:
        """The follower's PairDemand: epr limit, measure slots and teleports asked for."""
        # Counts only grow (slots the ended stream will not serve still count, so that the
        # demand the allocator sees never goes down). Teleports: every qubit sent, every
        # ready pair released unused, and the ready pairs to keep while prefetching.
        ready = self.prefetch if self.prefetching else 0
        wanted = self.sends_requested + self.ready_released + ready
        self.teleports_demand = max(self.teleports_demand, wanted)
        self.epr_limit = max(self.epr_limit, self.epr_given + self._epr_room())
        return (self.epr_limit, self.measures_requested, self.teleports_demand)

    def _epr_room(self) -> int:
        """Follower: pairs of the epr stream beyond those given that it may hold: one per call
        waiting, or its window while its application uses the stream."""
        return max(self.epr_wanted, self.window if self.epr_active else 0)

    # -- pairs -----------------------------------------------------------------------------------

    def on_pair(self, pair: HeldPair) -> None:
        index = pair.index
        if self.circuit_closed or (self.allocator and self.uses_closed):
            self._free((pair.qubit,))  # nobody can use it any more
            return
        if index in self.held or index in self.early:
            self._free((pair.qubit,))
            raise ProtocolError(f"pair {index} of connection {self.conn} delivered twice")
        if self.allocator:
            if index < self.next_index:
                self._free((pair.qubit,))
                raise ProtocolError(f"pair {index} of connection {self.conn} delivered twice")
            self.early[index] = pair
            self._progress()
            return
        use = self.use_of.get(index)
        if use is None and (self.uses_closed or index < self.next_index):
            # Both outputs closed: nothing but RELEASE can come for it. (Below next_index and
            # without a use, it was consumed before: a second delivery.)
            self._free((pair.qubit,))
            if not self.uses_closed:
                raise ProtocolError(f"pair {index} of connection {self.conn} delivered twice")
            return
        self.held[index] = pair
        if use is not None:
            self._settle(index)
        self._progress()

    def _decide_waiting(self) -> None:
        """Allocator: decide the pairs here in index order, until a missing index or a pair
        to hold for demand (``_hold_head``)."""
        while self.next_index in self.early:
            if self._hold_head():
                break
            if self._surplus():
                self.surplus = True
            self._decide(self.early.pop(self.next_index))
            self.next_index += 1

    def _hold_head(self) -> bool:
        """Whether the next pair to decide waits for demand instead of being released.

        An application whose calls come a little slower than the circuit's pairs would
        otherwise see most pairs released while its next call is on its way, each costing a
        whole end-to-end pair's work at every node of the path. Held, a pair serves that
        call at once, and the memory it takes at both ends holds the circuit's end links
        back to the rate the applications take pairs at. ``expire`` releases a held pair
        after ``max_ready_age_ns`` (it decoheres) and one beyond ``hold`` at once."""
        return (
            not (self.uses_closed or self.circuit_closed)
            and self._unwanted_in_use()
            and sum(i >= self.next_index for i in self.early) <= self.hold
        )

    def _surplus(self) -> bool:
        """Allocator: the next pair goes unused while the applications use the connection
        for teleports only, with ``hold`` pairs held already: the circuit makes pairs
        faster than the qubits come, and the connection pauses it until the next demand
        (``Connection``). Epr streams do not pause for it: their windows fill and drain
        with every call, and pausing there cost more than the pairs it saved."""
        return (
            self._unwanted_in_use()
            and not self.epr_active
            and self.peer_epr_limit <= self.epr_assigned
        )

    def _unwanted_in_use(self) -> bool:
        """Allocator, holding pairs: no demand wants the next pair, though an application
        is using the connection."""
        return self.hold > 0 and self._choose() is PairUse.RELEASE and self._in_use()

    def _in_use(self) -> bool:
        """Allocator: an application of either end was asking for pairs (within
        ``prefetch_idle_ns``) when the next pair to decide came: only then is it held for
        the next call."""
        head = self.early.get(self.next_index)
        came = head.since if head is not None else 0
        return (
            self.epr_active
            or self.prefetching
            or self.peer_active_until > came
            or len(self.measure_bases) > self.measures_assigned
        )

    def _decide(self, pair: HeldPair) -> None:
        if self.uses_closed:
            self._free((pair.qubit,))
            return
        use = self._choose()
        if not self.uses_out:
            self.uses_first = pair.index
        self.uses_out.append(use.value)
        self.held[pair.index] = pair
        self._assign(pair.index, use)

    def _choose(self) -> PairUse:
        if self.peer_teleports > self.peer_teleports_assigned:
            return self.theirs
        if len(self.sends) > len(self.my_pairs):
            return self.mine
        if not self.ended:
            if min(len(self.measure_bases), self.peer_measures) > self.measures_assigned:
                return PairUse.MEASURE
            if self.epr_assigned < self.peer_epr_limit and len(self.epr_queue) < self.window:
                return PairUse.EPR
            if self.epr_assigned < self.epr_given + self.epr_wanted:
                # A call here waits: the follower holds its half until its own call, as the
                # allocator does for the follower's calls within the limit it set.
                return PairUse.EPR
        if self.prefetching and len(self.my_pairs) < len(self.sends) + self.prefetch:
            return self.mine  # kept ready for the next send_qubit
        return PairUse.RELEASE

    def wants_pairs(self) -> bool:
        """Allocator: whether the next pair would be put to a use (not RELEASE), i.e. some
        demand of either end is open. Without any, the circuit may pause."""
        return not (self.uses_closed or self.circuit_closed) and (
            self._choose() is not PairUse.RELEASE
        )

    def on_uses(self, first_index: int, uses: tuple[int, ...]) -> None:
        """Follower: the allocator's uses of ``first_index`` onwards."""
        if self.allocator:
            raise ProtocolError("the connecting end does not assign pair uses")
        if first_index != self.next_index:
            raise ProtocolError(f"pair uses from {first_index}, expected {self.next_index}")
        for offset, value in enumerate(uses):
            try:
                use = PairUse(value)
            except ValueError:
                raise ProtocolError(f"unknown pair use {value!r}") from None
            self._check_use(use)
            self._assign(first_index + offset, use)
        self.next_index += len(uses)
        self._progress()

    def _check_use(self, use: PairUse) -> None:
        if self.uses_closed and use not in (PairUse.RELEASE, self.mine):
            # (A pair for a teleport of ours can follow: we asked for pairs to keep ready
            # before our Fin.)
            raise ProtocolError(f"pair use {use.name} after both outputs closed")
        if use in (PairUse.EPR, PairUse.MEASURE) and self.ended:
            raise ProtocolError(f"pair use {use.name} after PairsEnd")
        if use is PairUse.MEASURE and self.measures_assigned >= len(self.measure_bases):
            raise ProtocolError("a measure-directly pair nobody asked for")
        if use is self.mine and self.mine_assigned >= self.teleports_demand:
            raise ProtocolError("a teleportation pair for a qubit nobody sends")

    def _assign(self, index: int, use: PairUse) -> None:
        if self.uses_closed and use is self.mine:
            # Asked for (to keep ready) before our Fin; nothing can be sent with it now, and
            # the allocator frees its half when the connection ends.
            self.mine_assigned += 1
            use = PairUse.RELEASE
        self.use_of[index] = use
        if use is PairUse.EPR:
            self.epr_queue.append(index)
            self.epr_assigned += 1
        elif use is PairUse.MEASURE:
            self.measure_slot[index] = self.measures_assigned
            self.measures_assigned += 1
        elif use is self.mine:
            self.my_pairs.append(index)
            self.mine_assigned += 1
        elif use is self.theirs:
            self.peer_teleports_assigned += 1
        self._settle(index)

    def _settle(self, index: int) -> None:
        """Act at once on a pair whose use and qubit are both known, where the use says so."""
        pair = self.held.get(index)
        use = self.use_of.get(index)
        if pair is None or use is None:
            return
        if use is PairUse.RELEASE:
            self._consume(index)
            self._free((pair.qubit,))
        elif use is PairUse.MEASURE:
            self._consume(index)
            slot = self.measure_slot.pop(index)
            tag = self._new_measure_tag()
            basis = self.measure_bases[slot]
            self.tags[tag] = _MeasurePending(slot, index, basis)
            self._out.append(MeasurePair(tag, pair.qubit, basis))

    def _consume(self, index: int) -> HeldPair:
        self.use_of.pop(index, None)
        return self.held.pop(index)

    def _progress(self) -> None:
        # Serving a call can make room for a held pair's use, which can serve another.
        while True:
            if self.allocator:
                self._decide_waiting()
            self._serve()
            if not (self.allocator and self._decidable()):
                return

    def _decidable(self) -> bool:
        return self.next_index in self.early and not self._hold_head()

    def _serve(self) -> None:
        while (
            self.epr_wanted
            and self.epr_queue
            and self.epr_queue[0] in self.held
            and self.epr_hold is None
        ):
            pair = self._consume(self.epr_queue.popleft())
            self.epr_wanted -= 1
            self._out.append(
                EprPair(self.conn, self.epr_given, pair.index, pair.qubit, pair.fidelity)
            )
            self.epr_given += 1
            if not self.epr_wanted and not self.epr_active:
                self._release_idle_epr()  # the last call, served after the stream went idle
        while self.sends and self.my_pairs and self.my_pairs[0] in self.held:
            pair = self._consume(self.my_pairs.popleft())
            qubit = self.sends.popleft()
            tag = self._new_measure_tag()
            self.tags[tag] = _BellPending(self.sends_started, pair.index, qubit)
            self.sends_started += 1
            self._out.append(BellMeasure(tag, qubit, pair.qubit))
        if not self.prefetching:
            for pair in self.ready():  # assigned while prefetching, come since
                self._release_ready(pair)
        while self.incoming and self.incoming[0][0] in self.held:
            index, x, z = self.incoming.popleft()
            pair = self._consume(index)
            if x < 0:
                if x == RELEASED:
                    self.ready_received_released += 1
                else:
                    self.teleports_lost += 1
                self._free((pair.qubit,))
                continue
            self._out.append(Correct(self._new_tag(), pair.qubit, x, z))
            self._out.append(QubitReceived(self.conn, self.received, pair.qubit))
            self.received += 1

    # -- from the peer ---------------------------------------------------------------------------

    def on_demand(self, epr_limit: int, measures: int, teleports: int, now: int = 0) -> None:
        """Allocator: the follower's cumulative demand (never decreasing)."""
        if not self.allocator:
            raise ProtocolError("the accepting end does not send pair demand")
        if measures < self.peer_measures or teleports < self.peer_teleports:
            raise ProtocolError("pair demand went down")
        if (epr_limit, measures, teleports) != (
            self.peer_epr_limit,
            self.peer_measures,
            self.peer_teleports,
        ):
            self.peer_active_until = now + self.prefetch_idle_ns
        # The epr limit goes down when the follower releases its unclaimed pairs: it never
        # takes back what was assigned, so only a rise matters.
        self.peer_epr_limit = max(self.peer_epr_limit, epr_limit)
        self.peer_measures, self.peer_teleports = measures, teleports
        self._progress()

    def on_epr_release(self, taken: int) -> None:
        """Allocator: the follower took ``taken`` pairs of the epr stream and takes no more
        until our ``EprCut``. Pairs that neither application took, nor an ``epr`` call
        waiting here will take, are released at both ends."""
        if not self.allocator:
            raise ProtocolError("the accepting end does not release epr pairs")
        if not 0 <= taken <= self.epr_assigned:
            raise ProtocolError(f"EprRelease took {taken} of {self.epr_assigned} epr pairs")
        first = min(max(self.epr_given + self.epr_wanted, taken), self.epr_assigned)
        self._cut_epr(first)
        self.peer_epr_limit = first
        self.epr_cut_due = first

    def on_epr_cut(self, first: int) -> None:
        """Follower: the epr stream's pairs from number ``first`` on are released."""
        if self.allocator or self.epr_hold is None:
            raise ProtocolError("EprCut without an EprRelease")
        if not self.epr_hold <= first <= self.epr_assigned:
            raise ProtocolError(
                f"EprCut from {first}: took {self.epr_hold}, assigned {self.epr_assigned}"
            )
        self._cut_epr(first)
        self.epr_hold = None
        self.epr_limit = max(self.epr_limit, first)
        self._progress()

    def _cut_epr(self, first: int) -> None:
        """Release the epr stream's pairs numbered ``first`` and on (assigned, not taken)."""
        keep = first - self.epr_given
        queued = list(self.epr_queue)
        self.epr_queue = deque(queued[:keep])
        self.epr_assigned = first
        for index in queued[keep:]:
            if index in self.held:
                self._free((self._consume(index).qubit,))
            else:
                self.use_of[index] = PairUse.RELEASE  # freed when it arrives

    def on_teleport(self, index: int, x: int, z: int) -> None:
        waiting = any(i == index for i, _, _ in self.incoming)
        if self.use_of.get(index) is not self.theirs or waiting:
            raise ProtocolError(f"Teleport on pair {index}, which is not for a teleport to here")
        if (x, z) not in ((-1, -1), (RELEASED, RELEASED)) and (x not in (0, 1) or z not in (0, 1)):
            raise ProtocolError(f"Teleport bits ({x}, {z}) are not bits")
        self.incoming.append((index, x, z))
        self._progress()

    def on_pairs_end(self) -> None:
        if self.allocator or self.ended:
            raise ProtocolError("PairsEnd from the accepting end only, once")
        self.ended = True
        self._check_ended()

    # -- physical results ------------------------------------------------------------------------

    def on_measured(self, tag: int, outcomes: tuple[int, ...]) -> None:
        pending = self.tags.pop(tag)
        ok = bool(outcomes) and all(o in (0, 1) for o in outcomes)
        if isinstance(pending, _MeasurePending):
            outcome = outcomes[0] if ok and len(outcomes) == 1 else -1
            self.measure_results[pending.slot] = MeasuredPair(
                self.conn, pending.slot, pending.index, pending.basis, outcome
            )
            while self.measures_delivered in self.measure_results:
                self._out.append(self.measure_results.pop(self.measures_delivered))
                self.measures_delivered += 1
            return
        # Outcome of the qubit gives Z, of the pair half gives X (standard teleportation).
        bits = (outcomes[1], outcomes[0]) if ok and len(outcomes) == 2 else None
        self.bell_done[pending.number] = _BellDone(pending.index, pending.qubit, bits)
        # Bits go out in the order of the send_qubit calls, so the k-th qubit received is
        # the k-th sent even if results come back out of order.
        while self.sends_reported in self.bell_done:
            done = self.bell_done.pop(self.sends_reported)
            x, z = done.bits if done.bits is not None else (-1, -1)
            self.teleports_out.append((done.index, x, z))
            self._out.append(
                QubitSent(self.conn, self.sends_reported, done.qubit, done.bits is not None)
            )
            self.sends_reported += 1

    # -- pairs kept ready --------------------------------------------------------------------------

    def ready(self) -> list[HeldPair]:
        """Pairs of this end's direction here and waiting for a qubit to teleport."""
        waiting = len(self.sends)
        out = []
        for index in list(self.my_pairs)[waiting:]:
            pair = self.held.get(index)
            if pair is not None:
                out.append(pair)
        return out

    def deadline(self) -> int | None:
        """When ``expire`` has work: prefetch going idle, or the oldest ready pair aging."""
        times = [self.prefetch_until] if self.prefetching else []
        if self.epr_active:
            times.append(self.epr_active_until)
        ready = self.ready()
        if ready and self.max_ready_age_ns:
            times.append(min(p.since for p in ready) + self.max_ready_age_ns)
        held = self.early.get(self.next_index) if self.allocator else None
        if held is not None and self.max_ready_age_ns:
            times.append(held.since + self.max_ready_age_ns)
        return min(times, default=None)

    def expire(self, now: int) -> None:
        """Stop prefetching once no qubit was sent for ``prefetch_idle_ns``; give back ready
        pairs that aged past ``max_ready_age_ns`` (fresh ones replace them while
        prefetching): a pair waiting in memory decoheres, and its fidelity estimate from
        arrival would no longer hold."""
        if self.epr_active and now >= self.epr_active_until:
            self.epr_active = False
            self._release_idle_epr()
        if self.prefetching and now >= self.prefetch_until:
            self.stop_prefetch()
        elif self.max_ready_age_ns:
            for pair in self.ready():
                if now - pair.since >= self.max_ready_age_ns:
                    self._release_ready(pair)
        if self.allocator and self.max_ready_age_ns:
            while (held := self.early.get(self.next_index)) is not None and (
                now - held.since >= self.max_ready_age_ns
            ):
                self._decide(self.early.pop(self.next_index))  # RELEASE, or a use come since
                self.next_index += 1
            self._progress()

    def _release_idle_epr(self) -> None:
        """Follower: its application stopped taking epr pairs with pairs of the stream still
        here or on their way (its window): ask the allocator to release those neither end
        took, rather than keep them in memory until the connection ends (a later
        ``send_qubit`` could otherwise find no memory for its pair). Until the answer, no
        pair of the stream is taken, and the demand no longer counts the window."""
        if (
            self.allocator
            or self.epr_hold is not None
            or self.epr_wanted
            or self.epr_limit <= self.epr_given
            or self.ended
            or self.ended_output
            or self.uses_closed
            or self.circuit_closed
        ):
            return
        self.epr_hold = self.epr_given
        self.epr_release_due = True
        self.epr_limit = self.epr_given

    def stop_prefetch(self) -> None:
        self.prefetching = False
        for pair in self.ready():
            self._release_ready(pair)

    def _release_ready(self, pair: HeldPair) -> None:
        """Give back a ready pair unused: the peer frees its half on the ``RELEASED`` bits.
        The sender alone decides this, since the receiver waits for the bits anyway."""
        self.my_pairs.remove(pair.index)
        self._consume(pair.index)
        self._free((pair.qubit,))
        self.ready_released += 1
        if not self.fin_queued:  # after our Fin the peer frees its half when the end comes
            self.teleports_out.append((pair.index, RELEASED, RELEASED))

    # -- ending ----------------------------------------------------------------------------------

    def end(self) -> None:
        """This end's output closed: no more qubits to send, so pairs kept ready for them go
        back. Allocator: the epr and measure-directly streams end."""
        self.ended_output = True
        self.stop_prefetch()
        if self.allocator and not self.ended:
            self.ended = True
            self.pairs_end_due = True
            self._check_ended()

    def _check_ended(self) -> None:
        """Answer the calls the ended streams can no longer serve (the newest ones)."""
        if not self.ended:
            return
        lost_epr = max(0, self.epr_wanted - len(self.epr_queue))
        lost_slots = max(0, len(self.measure_bases) - self.measures_assigned)
        if lost_epr or lost_slots:
            self.epr_wanted -= lost_epr
            del self.measure_bases[self.measures_assigned :]
            self._out.append(PairsEnded(self.conn, lost_epr, lost_slots))

    def circuit_gone(self) -> None:
        """The circuit closed (or is closing) when nothing waited on it: pairs not here never
        will be, so the streams end and what counted on them is answered."""
        self.ended = True
        self.circuit_closed = True
        for index in [i for i in self.use_of if i not in self.held]:
            del self.use_of[index]
        self.epr_queue = deque(i for i in self.epr_queue if i in self.held)
        self._check_ended()

    def close_uses(self) -> None:
        """Both Fins are out: only RELEASE can follow, so free pairs without a use."""
        self.uses_closed = True
        for index in [i for i in self.held if i not in self.use_of]:
            self._free((self.held.pop(index).qubit,))
        self._free(tuple(p.qubit for p in self.early.values()))
        self.early.clear()

    @property
    def sending_done(self) -> bool:
        """Every qubit handed to ``send_qubit`` went out (its bits queued), so a Fin may
        follow."""
        return not (
            self.sends
            or self.bell_done
            or self.teleports_out
            or any(isinstance(p, _BellPending) for p in self.tags.values())
        )

    @property
    def busy(self) -> bool:
        """Something is still owed to this end's application or to the peer."""
        return bool(
            self.incoming
            or (self.epr_wanted and self.epr_queue)
            or self.measure_slot
            or self.measure_results
            or self.tags
            or self.bell_done
            or self.sends
        )

    def release_all(self) -> tuple[tuple[int, ...], int]:
        """The connection failed: free every pair; returns the qubits handed to ``send_qubit``
        that were never touched, and how many were being or had been Bell-measured without
        their bits sent (lost)."""
        self._free(tuple(p.qubit for p in self.held.values()))
        self._free(tuple(p.qubit for p in self.early.values()))
        returned = tuple(self.sends)
        lost = sum(isinstance(p, _BellPending) for p in self.tags.values()) + len(self.bell_done)
        self.held.clear()
        self.early.clear()
        self.use_of.clear()
        self.sends.clear()
        self.bell_done.clear()
        self.tags.clear()
        self.epr_queue.clear()
        self.my_pairs.clear()
        self.incoming.clear()
        self.measure_slot.clear()
        self.measure_results.clear()
        return returned, lost

    def held_qubits(self) -> list[int]:
        """Every qubit this stream is responsible for (pairs and qubits waiting to be sent)."""
        return (
            [p.qubit for p in self.held.values()]
            + [p.qubit for p in self.early.values()]
            + list(self.sends)
        )

    def _free(self, qubits: tuple[int, ...]) -> None:
        if qubits:
            self._out.append(Free(self._new_tag(), qubits))
