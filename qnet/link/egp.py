"""The EGP core: one per (node, link). Sans-IO: every input takes ``now`` (ns); outputs are
queued for ``pop_outputs``; ``next_deadline`` says when ``on_timer`` is due.

Roles. The master (the lexicographically smaller node name, which is also the end whose
bright-state setting the backend uses) owns every decision: the order requests are served in,
which request each heralded pair serves, which pairs are purified together, when a request
times out or fails. The slave follows: it delivers a pair only once the master has assigned
it, so both ends deliver the same pair ids, in the same order per request.

Distributed queue. The origin of a request sends ``QueueAdd``; a master-origin request is
served only once the slave has acknowledged it; a slave-origin request is live as soon as
the master has it. Messages are reliable (``reliable.py``); whatever arrives before it can be
used (an assignment before its herald or before its request) is buffered.

Time. Deadlines are absolute times on the physical clock both ends share (the backend's),
``create``'s ``now`` plus ``max_time_ns``; only the master acts on them, and tells the slave.
Plans (bright state, purification rounds) aim at the fidelity a pair has when delivered; the
delay they allow for beyond light in fibre is measured (heralds' lateness, peer round trips),
and the master plans a request again when pairs miss because the delays grew.

Ends. A request completes, or the master ends it (``master.terminate``): TIMEOUT, EXPIRED,
NO_MEMORY (memory stayed full, ``arming.py``), UNSUPPORTED (out of reach, or ``max_misses``
pairs in a row below target at delivery), DENIED, or CANCELLED by its origin (``cancel``; a
slave origin asks the master with ``Cancel``). The master's decisions live in ``master.py``,
the slave's side in ``slave.py``, purification in ``purify.py``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qnet.errors import InvalidArgument, NotFound, ProtocolError
from qnet.link import arming, estimate, master, purify, slave
from qnet.link.events import (
    Ack,
    BasisChoice,
    Cancel,
    CreateErr,
    CreateRequest,
    ErrorCode,
    Expire,
    Free,
    Kind,
    MeasureQubit,
    MemoryFull,
    Output,
    PairAssign,
    PairDiscard,
    PairOk,
    PeerMessage,
    Purify,
    PurifyResult,
    QueueAdd,
    Terminate,
)
from qnet.link.purify import Round
from qnet.link.reliable import Deduplicator, ReliableSender, SmoothedDelay
from qnet.link.requests import STREAM_PAIRS, Finish, ReqInput, ReqState, Request, RequestKey
from qnet.physical.gates import Basis, Matrix
from qnet.physical.heralding import fibre_delay_ns
from qnet.physical.params import LinkParams, NodeParams

_BASES = (Basis.Z, Basis.X, Basis.Y)
#: Smallest measured delay that plans allow for: below it, none (qnet.sim measures exactly 0).
_MIN_LATENCY_BUCKET_NS = 125_000


@dataclass(frozen=True, slots=True)
class EgpConfig:
    """Static facts one core needs: both nodes' parameters (estimates cover both halves)."""

    node: str
    peer: str
    link: LinkParams
    local: NodeParams
    remote: NodeParams
    #: First retransmission timeout; None: two classical round trips over the link + 100 µs.
    rto_ns: int | None = None
    max_rto_ns: int = 1_000_000_000
    #: Open requests the master accepts before it DENIES more.
    max_queue: int = 256
    #: How long memory may stay full (allocations failing at either end) before the request
    #: at the head fails with NO_MEMORY; None: 50 retransmission timeouts. Until then a failed
    #: allocation is back-pressure: users free what they were given, and arming retries.
    memory_wait_ns: int | None = None
    #: Qubits kept armed at once while there is work. More than one hides the round trip from
    #: a herald to the next arm (a few ms between processes), at the cost of memory.
    pipeline: int = 4
    #: Slave: how long to wait for our herald of a pair the master already assigned before
    #: taking it as lost (the request then ends EXPIRED at both ends); None: 4 retransmission
    #: timeouts. Between daemons the herald comes from the backend and the assignment from
    #: the peer, by streams of different processes: a loaded machine delays one behind the
    #: other by far more than that, and the backend loses no herald short of its session
    #: breaking (which ends the daemon).
    herald_grace_ns: int | None = None
    #: Expected processing and messaging delay beyond the fibre's (0 in qnet.sim): plans aim
    #: at the fidelity pairs will have when they are delivered that much later.
    latency_ns: int = 0
    #: Pairs in a row that may fall below a request's fidelity at delivery before the master
    #: ends it with UNSUPPORTED: the plan promised better, so the model is wrong for this link
    #: now, and waiting for max_time would only burn pairs. Well above ``pipeline``, since up
    #: to that many pairs armed for the previous request may land on a new one.
    max_misses: int = 32
    #: How long an acknowledgement may wait for another message to the peer to travel with
    #: (0: sent at once, alone if need be). Between daemons each message costs a gRPC message
    #: at both ends, and the slave's other traffic to the master (the network layer's, which
    #: the node adds with ``take_acks``) comes often enough to carry most of them. Keep it
    #: well below the retransmission timeout; the Ack reports the wait, so measured round
    #: trips leave it out.
    ack_delay_ns: int = 0


@dataclass(slots=True)
class Pair:
    """A heralded pair as this end knows it: its local qubit and the predicted state, which
    is ``rho`` (master's qubit first) at times ``times`` = (master side, slave side)."""

    seq: int
    qubit: int
    bell_index: int
    emitted_ns: int
    alpha: float | None
    rho: Matrix | None = None
    times: tuple[int, int] = (0, 0)
    #: (time, the ``rho`` it was computed from, ``rho`` aged to that time): offering and
    #: delivering a pair both need it, at the same instant.
    aged: tuple[int, Matrix, Matrix] | None = None
    #: The same for the aged state's Bell coefficients (``EgpCore._weights``).
    weights: tuple[int, Matrix, estimate.BellWeights] | None = None


class EgpCore:
    def __init__(self, config: EgpConfig, *, rng: random.Random | None = None) -> None:
        if config.node == config.peer:
            raise InvalidArgument(f"an EGP link needs two nodes, got {config.node!r} twice")
        self.config = config
        self.node = config.node
        self.peer = config.peer
        self.is_master = config.node < config.peer
        self.master = config.node if self.is_master else config.peer
        self.link_id = f"{self.master}|{config.peer if self.is_master else config.node}"
        local, remote = config.local, config.remote
        self.nodes = (local, remote) if self.is_master else (remote, local)
        self.rng = rng if rng is not None else random.Random(0)
        one_way = fibre_delay_ns(config.link.length_km)
        self._one_way_ns = one_way
        #: Emission to herald in light alone (node → midpoint → node).
        self._flight_ns = 2 * fibre_delay_ns(config.link.length_km / 2)
        #: How much later than light alone heralds reach this core (a loaded node, a slow
        #: backend stream): with the peer messages' round trips, what plans must allow for.
        self._herald_lag = SmoothedDelay()
        rto = config.rto_ns if config.rto_ns is not None else 4 * one_way + 100_000
        self._sender = ReliableSender(rto_ns=rto, max_rto_ns=max(rto, config.max_rto_ns))
        self._backoff_ns = rto
        self._memory_wait_ns = (
            config.memory_wait_ns if config.memory_wait_ns is not None else 50 * rto
        )
        #: When allocations started failing, while they still do: at the master ours or the
        #: slave's (NO_MEMORY after the memory wait), at the slave its own (``MemoryFull``).
        self._full_since: int | None = None
        self._dedup = Deduplicator()
        self._out: list[Output] = []
        #: Acknowledgements held back (``ack_delay_ns``): (message id, when it arrived).
        self._acks: list[tuple[int, int]] = []
        #: The time of the latest input, for acknowledgements leaving with ``pop_outputs``.
        self._last_now = 0
        self.requests: dict[RequestKey, Request] = {}
        #: Requests still open or with pairs waiting to be delivered in order: what every input
        #: looks at, so its cost does not grow with the requests served since start.
        self._live: dict[RequestKey, Request] = {}
        #: KEEP halves delivered to the layer above and not yet freed, as it last reported
        #: (``set_upper_held``; None until its first report), and those delivered since.
        self._upper_held: int | None = None
        #: Qubits of the node in use outside this core (``set_memory_elsewhere``).
        self._elsewhere = 0
        self._unreported = 0
        #: Master: cancellations from the slave whose QueueAdd has not arrived yet. Slave: its
        #: requests it has asked the master to cancel.
        self._cancels: set[RequestKey] = set()
        self._next_create_id = 1
        self._order = 0
        self._turns = 0
        self.pairs: dict[int, Pair] = {}
        self.last_seq = 0
        self._armed = 0
        self._armed_alpha = 0.0
        self._alphas: deque[float] = deque()
        self._arm_blocked_until = -1
        self._next_tag = 1
        self._pending: dict[int, tuple[Any, ...]] = {}
        self._abandoned: set[int] = set()
        self._add_ids: dict[int, RequestKey] = {}
        self.purifying: dict[int, Round] = {}
        self._early: dict[RequestKey, list[PeerMessage]] = {}
        self._waiting_seq: dict[int, list[PeerMessage]] = {}
        #: Slave: when we started waiting for each herald the master already used. Heralds
        #: reach both ends at the same physical time, so a long wait means ours was lost.
        self._herald_due: dict[int, int] = {}
        self._herald_grace_ns = (
            4 * rto if config.herald_grace_ns is None else config.herald_grace_ns
        )
        self._lost: set[int] = set()
        self._discard_later: set[int] = set()
        self._expire_sent: set[RequestKey] = set()
        #: Counters for tests and traces: purification rounds run and failed (master).
        self.counters: dict[str, int] = {"rounds": 0, "failed_rounds": 0}

    # -- upper layer ---------------------------------------------------------------------------

    def create(self, req: CreateRequest, now: int) -> int:
        """Queue a CREATE; returns its create id. An unreachable fidelity is answered at once
        with ERR UNSUPPORTED (in the outputs); a malformed request raises InvalidArgument."""
        self._tick(now)
        self._check_create(req)
        cid = self._next_create_id
        self._next_create_id += 1
        key = (self.node, cid)
        plan, latency = self._plan(req.min_fidelity)
        if plan is None:
            self._out.append(
                CreateErr(
                    self.node,
                    cid,
                    ErrorCode.UNSUPPORTED,
                    None,
                    self._unreachable(req),
                    purpose=req.purpose,
                )
            )
            return cid
        deadline = now + req.max_time_ns if req.max_time_ns > 0 else None
        record = self._new_request(
            key,
            req.number,
            req.min_fidelity,
            deadline,
            req.kind,
            req.basis,
            req.purpose,
            req.priority,
            plan,
            latency,
        )
        msg_id = self._send(
            QueueAdd,
            now,
            origin=self.node,
            create_id=cid,
            number=req.number,
            min_fidelity=req.min_fidelity,
            deadline_ns=-1 if deadline is None else deadline,
            kind=req.kind.value,
            basis=req.basis.value,
            purpose=req.purpose,
            priority=req.priority,
        )
        if self.is_master:
            self._add_ids[msg_id] = key
        else:
            record.order = -1  # the slave arms for its own requests before the master's ack
        arming.update(self, now)
        return cid

    def _check_create(self, req: CreateRequest) -> None:
        if req.create_id is not None:
            raise InvalidArgument("create_id is assigned by the core; leave it None")
        if req.remote != self.peer:
            raise InvalidArgument(f"this EGP serves the link to {self.peer!r}, not {req.remote!r}")
        if not isinstance(req.number, int) or req.number < 1:
            raise InvalidArgument(f"number must be a positive integer, got {req.number!r}")
        if not (math.isfinite(req.min_fidelity) and 0.0 <= req.min_fidelity <= 1.0):
            raise InvalidArgument(f"min_fidelity must be in [0, 1], got {req.min_fidelity!r}")
        if not isinstance(req.max_time_ns, int) or req.max_time_ns < 0:
            raise InvalidArgument(f"max_time_ns must be an integer ≥ 0, got {req.max_time_ns!r}")
        if not isinstance(req.kind, Kind) or not isinstance(req.basis, BasisChoice):
            raise InvalidArgument("kind must be a Kind and basis a BasisChoice")

    def _unreachable(self, req: CreateRequest) -> str:
        best = estimate.plan(self.config.link, *self.nodes, 0.0, self.config.latency_ns)
        top = 0.0 if best is None else best.fidelity
        return (
            f"fidelity {req.min_fidelity} is out of reach on link {self.link_id}"
            f" (raw pairs reach about {top:.4f}; purification up to"
            f" {estimate.MAX_ROUNDS} rounds does not close the gap)"
        )

    def cancel(self, create_id: int, now: int) -> bool:
        """Withdraw a request this end issued. The master ends it with CANCELLED, at both ends
        (a slave asks the master with ``Cancel``: the master decides, as for every other end).
        Pairs assigned before that are still delivered, then both ends report the ERR, and
        what the request held (armed qubits, pairs waiting for delivery or purification) is
        freed. Returns False if the request had already ended."""
        self._tick(now)
        req = self.requests.get((self.node, create_id))
        if req is None:
            if 0 < create_id < self._next_create_id:
                return False  # answered UNSUPPORTED by ``create``, never queued
            raise NotFound(f"{self.node} issued no request {create_id} on link {self.link_id}")
        if not req.open:
            return False
        if self.is_master:
            master.terminate(self, req, ErrorCode.CANCELLED, f"cancelled by {self.node}", now)
        elif req.key not in self._cancels:
            self._cancels.add(req.key)
            self._send(Cancel, now, origin=self.node, create_id=create_id)
        arming.update(self, now)
        return True

    def set_upper_held(self, count: int, now: int) -> bool:
        """How many KEEP halves this core delivered that the layer above still holds (not yet
        measured or freed), counting every OK it has taken from ``pop_outputs``. They fill
        the same memory, so arming counts them: a user that never frees stops the link
        (back-pressure, then NO_MEMORY), and freeing resumes it. From the first report on,
        each KEEP half delivered counts as held until the next report; a layer above that
        never reports is not counted (its frees show up as allocations failing or not).
        True if that changed anything (outputs, or the next deadline, may have)."""
        if not isinstance(count, int) or count < 0:
            raise InvalidArgument(f"held qubits must be an integer ≥ 0, got {count!r}")
        if not self.upper_held_changes(count):
            return False  # nothing new: the common case when a node re-reports after every input
        self._tick(now)
        if self._upper_held is not None and count < self._upper_held + self._unreported:
            self._arm_blocked_until = -1  # room again: arm now, not after the back-off
        self._upper_held = count
        self._unreported = 0
        arming.update(self, now)
        return True

    def upper_held_changes(self, count: int) -> bool:
        """Whether ``set_upper_held(count)`` would change anything: the node asks after every
        input, and most change nothing here."""
        return count != self._upper_held or self._unreported != 0

    def memory_elsewhere_changes(self, count: int) -> bool:
        """Whether ``set_memory_elsewhere(count)`` would change anything."""
        return count != self._elsewhere

    def set_memory_elsewhere(self, count: int, now: int) -> bool:
        """Qubits of this node in use outside this core (other links, other layers): the
        node's memory is shared, so arming counts them too rather than run into the
        backend's NoMemory. Room that grows is used at once. True if that changed
        anything (outputs, or the next deadline, may have)."""
        if not self.memory_elsewhere_changes(count):
            return False
        if count < self._elsewhere:
            self._arm_blocked_until = -1
            self._elsewhere = count
            arming.update(self, now)
            return True
        self._elsewhere = count
        return False

    @property
    def has_outputs(self) -> bool:
        return bool(self._out)

    def memory_used(self) -> int:
        """Qubits of the node this core accounts for: armed, held for the peer or a partner,
        OKs not yet delivered, and halves the layer above still holds."""
        held = len(self.pairs) + self._armed
        for r in self._live.values():
            held += len(r.ready)
        if self._upper_held is not None:
            held += self._upper_held + self._unreported
        return held

    # -- the peer's daemon -----------------------------------------------------------------------

    def start_after(self, sequence: int) -> None:
        """The link's heralds so far, as the backend counted them when this node declared the
        link: a restarted node's heralds number on from there, and that is no loss."""
        self.last_seq = max(self.last_seq, sequence)

    def peer_lost(self, now: int) -> None:
        """The peer's daemon went away (its stream broke): nothing more can be agreed with
        it. Every request this end knows ends here with UNREACHABLE (pairs already delivered
        stay delivered), every qubit this core holds or has armed is freed, and nothing is
        retransmitted: otherwise memory armed for a peer that is gone stays armed for ever.
        The peer, if it lives, ends its side the same way when its stream breaks."""
        self._tick(now)
        reason = f"{self.peer} is unreachable"
        for req in self.requests.values():
            if req.finish is not None and req.reported:
                continue
            if req.open:
                req.fire(ReqInput.FAIL)
            req.pool.clear()
            req.finish = Finish(ErrorCode.UNREACHABLE, req.consumed_range(), req.delivered, reason)
            req.reported = False
            self._check_finish(req)
        for seq in list(self.pairs):
            self._free(seq)
        # Measurements under way finish at the backend (which frees their qubits); what they
        # were for is gone, so their results are dropped.
        self._abandoned.update(self._pending)
        self._pending.clear()
        self.purifying.clear()
        self._sender.forget_all()
        self._cancels.clear()
        self._early.clear()
        self._waiting_seq.clear()
        self._herald_due.clear()
        self._discard_later.clear()
        self._expire_sent.clear()
        self._full_since = None
        self._arm_blocked_until = -1
        arming.update(self, now)

    def peer_restarted(self, now: int) -> None:
        """The peer's daemon is a new process (a new incarnation in its Hello): it kept
        nothing, so this end forgets the requests and message ids they shared, and numbers
        its own messages from 1 again, as the peer's fresh duplicate filter expects."""
        self.peer_lost(now)
        self.requests.clear()
        self._live.clear()
        self._add_ids.clear()
        self._dedup = Deduplicator()
        self._sender.restart_ids()
        self._acks.clear()

    # -- physical layer ------------------------------------------------------------------------

    def on_herald(
        self,
        sequence: int,
        qubit: int,
        bell_index: int,
        emitted_ns: int,
        now: int,
        *,
        bright_state: float | None = None,
    ) -> None:
        """A pair was heralded; ``bright_state`` (the backend reports it) is optional."""
        self._tick(now)
        if sequence in self._lost:
            self._lost.discard(sequence)
            self._free_qubit(qubit)  # a herald we had given up on: its pair is gone already
            return
        if sequence <= self.last_seq:
            raise InvalidArgument(f"herald {sequence} after {self.last_seq}: out of order")
        if bell_index not in range(4):
            raise InvalidArgument(f"Bell index must be 0..3, got {bell_index!r}")
        missing = list(range(self.last_seq + 1, sequence))
        self.last_seq = sequence
        self._herald_lag.sample(max(0, now - emitted_ns - self._flight_ns))
        self._full_since = None
        for seq in [s for s in self._herald_due if s <= sequence]:
            del self._herald_due[seq]
        self._armed = max(0, self._armed - 1)
        alpha = self._alphas.popleft() if self._alphas else None
        if bright_state is not None:
            alpha = bright_state
        pair = Pair(sequence, qubit, bell_index, emitted_ns, alpha)
        self.pairs[sequence] = pair
        if self.is_master:
            if missing:
                # Our herald for these was lost: the slave may hold halves; let it free them.
                self._send(PairDiscard, now, seqs=tuple(missing))
            self._init_state(pair, self.config.link.bright_state if alpha is None else alpha)
            master.place(self, pair, now)
        else:
            for seq in [*missing, sequence]:
                if seq in self._discard_later:
                    self._discard_later.discard(seq)
                    if seq in self.pairs:
                        self._free(seq)
                for msg in self._waiting_seq.pop(seq, []):
                    self._dispatch(msg, now)
        arming.update(self, now)

    def on_measured(self, tag: int, outcome: int, now: int) -> None:
        self._tick(now)
        action = self._pending.pop(tag, None)
        if action is None and tag in self._abandoned:
            self._abandoned.discard(tag)
            return
        if action is None:
            raise InvalidArgument(f"no measurement with tag {tag} is pending")
        if outcome not in (0, 1):
            raise InvalidArgument(f"outcome must be 0 or 1, got {outcome!r}")
        if action[0] == "deliver":
            _, key, index, pair, basis = action
            req = self.requests[key]
            self._ready(req, index, self._ok(req, pair, index, now, None, outcome, basis))
        else:
            purify.purify_measured(self, action, outcome, now)
        arming.update(self, now)

    def on_no_memory(self, now: int) -> None:
        """The last ``Arm`` could not allocate its qubits (nothing was armed)."""
        self._tick(now)
        self._armed = max(0, self._armed - 1)
        if self._alphas:
            self._alphas.pop()
        arming.memory_blocked(self, now, f"{self.node} has no free memory qubit")
        arming.update(self, now)

    # -- peer ----------------------------------------------------------------------------------

    def on_message(self, msg: PeerMessage, now: int) -> None:
        """A message from the peer core. Duplicates are acknowledged and ignored; a message
        that the protocol does not allow here raises ProtocolError."""
        self._tick(now)
        if isinstance(msg, Ack):
            for done in self._sender.acknowledge(msg.msg_ids, now, msg.delays_ns):
                key = self._add_ids.pop(done.msg_id, None) if isinstance(done, QueueAdd) else None
                if key is not None and self.requests[key].state is ReqState.QUEUED:
                    self.requests[key].fire(ReqInput.ACK)
            arming.update(self, now)
            return
        if (self.is_master, type(msg)) not in _HANDLERS:
            role = "master" if self.is_master else "slave"
            raise ProtocolError(f"EGP {type(msg).__name__} is illegal at the {role}")
        msg_id: int = msg.msg_id  # type: ignore[attr-defined]
        if self.config.ack_delay_ns > 0:
            self._acks.append((msg_id, now))
        else:
            self._out.append(Ack((msg_id,)))
        if self._dedup.first_time(msg_id):
            self._dispatch(msg, now)
        arming.update(self, now)

    def _dispatch(self, msg: PeerMessage, now: int) -> None:
        _HANDLERS[(self.is_master, type(msg))](self, msg, now)

    # -- timers and outputs --------------------------------------------------------------------

    def on_timer(self, now: int) -> None:
        self._tick(now)
        self._out.extend(self._sender.due(now))
        if self._acks and self._acks[0][1] + self.config.ack_delay_ns <= now:
            self._out.extend(self.take_acks(now))
        overdue = [seq for seq, t in self._herald_due.items() if t <= now]
        if overdue:
            slave.give_up_heralds(self, max(overdue), now)
        arming.update(self, now)

    def next_deadline(self) -> int | None:
        best = self._sender.next_deadline()
        if self.is_master:
            for r in self._live.values():
                t = r.deadline_ns
                if t is not None and t >= 0 and r.open and (best is None or t < best):
                    best = t
        t = self._arm_blocked_until
        if (
            t >= 0
            and (best is None or t < best)
            and self._armed < self.config.pipeline
            and self._head() is not None
        ):
            best = t
        for t in self._herald_due.values():
            if t >= 0 and (best is None or t < best):
                best = t
        if self._acks:
            t = self._acks[0][1] + self.config.ack_delay_ns
            if t >= 0 and (best is None or t < best):
                best = t
        return best

    def pop_outputs(self) -> list[Output]:
        out, self._out = self._out, []
        if self._acks and any(isinstance(o, PeerMessage) for o in out):
            out.extend(self.take_acks(self._last_now))  # they travel with the others
        return out

    def take_acks(self, now: int) -> list[PeerMessage]:
        """The acknowledgements held back, as one Ack (none if there are none): for the node
        to send with another layer's messages to the peer, or for ``pop_outputs``."""
        if not self._acks:
            return []
        acks, self._acks = self._acks, []
        ids = tuple(msg_id for msg_id, _ in acks)
        return [Ack(ids, tuple(max(0, now - arrived) for _, arrived in acks))]

    @property
    def armed(self) -> int:
        return self._armed

    @property
    def unacknowledged(self) -> int:
        return self._sender.unacknowledged

    # -- requests ------------------------------------------------------------------------------

    def _new_request(
        self,
        key: RequestKey,
        number: int,
        min_fidelity: float,
        deadline: int | None,
        kind: Kind,
        basis: BasisChoice,
        purpose: int,
        priority: int,
        plan: estimate.Plan,
        latency: int,
    ) -> Request:
        self._order += 1
        record = Request(
            key, number, min_fidelity, deadline, kind, basis, purpose, priority, plan, self._order
        )
        record.plan_latency_ns = latency
        if number >= STREAM_PAIRS:
            # A new stream joins the back of the rotation: were it first, streams that come
            # and go (paused, resumed circuits) would starve one that keeps going.
            self._turns += 1
            record.turn = self._turns
        self.requests[key] = self._live[key] = record
        return record

    def _live_requests(self) -> list[Request]:
        """Requests still open or still delivering; ended ones leave the index here."""
        live = [r for r in self._live.values() if r.open or r.ready]
        if len(live) != len(self._live):
            self._live = {r.key: r for r in live}
        return live

    def _tick(self, now: int) -> None:
        """Master: time out requests whose deadline has passed (checked on every input, so a
        late ``on_timer`` cannot let a pair through after the deadline)."""
        self._last_now = now
        if not self.is_master:
            return
        for req in self._live_requests():
            if req.open and req.deadline_ns is not None and req.deadline_ns <= now:
                master.terminate(self, req, ErrorCode.TIMEOUT, "max_time passed", now)

    def _head(self) -> Request | None:
        """The request served next: the master serves only ACTIVE ones; the slave arms for any
        open request it knows, as the master may serve it any moment."""
        head: Request | None = None
        for r in self._live_requests():
            if (r.state is ReqState.ACTIVE if self.is_master else r.open) and (
                head is None or r.service_key() < head.service_key()
            ):
                head = r
        return head

    # -- master: placing pairs -----------------------------------------------------------------

    def _plan(self, min_fidelity: float) -> tuple[estimate.Plan | None, int]:
        """The plan for a new request, and the delay it allows for: the measured one, or the
        configured floor if nothing reaches the target with the measured one (a passing
        spike of delay must not refuse what the link can serve; pairs that then miss make
        the master plan again, or end the request, as for any request)."""
        link, floor = self.config.link, self.config.latency_ns
        latency = self._planning_latency()
        plan = estimate.plan(link, *self.nodes, min_fidelity, latency)
        if plan is None and latency > floor:
            latency = floor
            plan = estimate.plan(link, *self.nodes, min_fidelity, latency)
        return plan, latency

    def _planning_latency(self) -> int:
        """The delay beyond light in fibre that plans allow for before delivery: the
        configured one, or more once heralds and peer round trips show more (their bounds,
        rounded up to 125 µs × 2^k, so that plans, which are cached by latency and slow to
        compute when they purify, change only when the delays do)."""
        extra = self._herald_lag.bound()
        extra += max(0, self._sender.rtt.bound() - 2 * self._one_way_ns) // 2
        bucket = 0
        if extra >= _MIN_LATENCY_BUCKET_NS:
            bucket = _MIN_LATENCY_BUCKET_NS
            while bucket < extra:
                bucket *= 2
        return max(self.config.latency_ns, bucket)

    # -- delivery (both ends) ------------------------------------------------------------------

    def _init_state(self, pair: Pair, alpha: float) -> None:
        if pair.rho is None:
            pair.alpha = alpha
            pair.rho = estimate.fresh_pair(self.config.link, alpha, pair.bell_index)
            pair.times = (pair.emitted_ns, pair.emitted_ns)

    def _estimate(self, pair: Pair, now: int) -> float:
        return self._weights(pair, now)[pair.bell_index]

    def _weights(self, pair: Pair, now: int) -> estimate.BellWeights:
        """The Bell coefficients of the pair's predicted state at ``now``."""
        rho = pair.rho
        assert rho is not None
        memo = pair.weights
        if memo is not None and memo[0] == now and memo[1] is rho:
            return memo[2]
        weights = estimate.aged_weights(rho, self.nodes, (now - pair.times[0], now - pair.times[1]))
        if weights is None:
            weights = estimate.bell_coefficients(self._aged(pair, now))
        pair.weights = (now, rho, weights)
        return weights

    def _aged(self, pair: Pair, now: int) -> Matrix:
        """The pair's predicted state at ``now``."""
        rho = pair.rho
        assert rho is not None
        if pair.aged is not None and pair.aged[0] == now and pair.aged[1] is rho:
            return pair.aged[2]
        aged = estimate.age(rho, self.nodes, (now - pair.times[0], now - pair.times[1]))
        pair.aged = (now, rho, aged)
        return aged

    def _deliver(self, req: Request, pair: Pair, index: int, now: int) -> None:
        req.consume(pair.seq)
        del self.pairs[pair.seq]
        if req.kind is Kind.KEEP:
            self._ready(req, index, self._ok(req, pair, index, now, pair.qubit, None, None))
            return
        basis = _BASES[self.rng.randrange(3)] if req.basis is BasisChoice.RANDOM else None
        basis = basis or Basis(req.basis.value)
        tag = self._tag()
        self._pending[tag] = ("deliver", req.key, index, pair, basis)
        self._out.append(MeasureQubit(tag, pair.qubit, basis))

    def _ok(
        self,
        req: Request,
        pair: Pair,
        index: int,
        now: int,
        qubit: int | None,
        outcome: int | None,
        basis: Basis | None,
    ) -> PairOk:
        weights = self._weights(pair, now)
        return PairOk(
            origin=req.key[0],
            create_id=req.key[1],
            purpose=req.purpose,
            pair_id=(self.link_id, pair.seq),
            kind=req.kind,
            qubit=qubit,
            outcome=outcome,
            basis=basis,
            bell_index=pair.bell_index,
            fidelity_estimate=weights[pair.bell_index],
            estimate_time_ns=now,
            index_in_request=index,
            weights=weights,
        )

    def _ready(self, req: Request, index: int, ok: PairOk) -> None:
        """Emit OKs in index order; after the request's end is reported, pairs past its
        ``keep_count`` are dropped (their qubits freed) instead."""
        if req.finish is not None and index >= req.finish.keep_count and req.reported:
            if ok.qubit is not None:
                self._free_qubit(ok.qubit)
            return
        req.ready[index] = ok
        while req.delivered in req.ready:
            if req.finish is not None and req.delivered >= req.finish.keep_count:
                break
            delivered = req.ready.pop(req.delivered)
            self._out.append(delivered)
            req.delivered += 1
            if delivered.qubit is not None and self._upper_held is not None:
                self._unreported += 1
        self._check_finish(req)

    def _check_finish(self, req: Request) -> None:
        fin = req.finish
        if fin is None:
            if not self.is_master and req.delivered == req.number and req.open:
                req.fire(ReqInput.COMPLETE)
            return
        if req.reported or req.delivered < fin.keep_count:
            return
        req.reported = True
        for index in [i for i in req.ready if i >= fin.keep_count]:
            qubit = req.ready.pop(index).qubit
            if qubit is not None:
                self._free_qubit(qubit)
        if fin.code is not None:
            self._out.append(
                CreateErr(req.key[0], req.key[1], fin.code, fin.seq_range, fin.reason, req.purpose)
            )

    # -- both ends ------------------------------------------------------------------------------

    def _request_from(self, msg: QueueAdd) -> Request:
        try:
            kind, basis = Kind(msg.kind), BasisChoice(msg.basis)
        except ValueError:
            raise ProtocolError(f"EGP QueueAdd has a bad kind or basis: {msg}") from None
        if msg.number < 1 or not 0.0 <= msg.min_fidelity <= 1.0:
            raise ProtocolError(f"EGP QueueAdd has a bad number or fidelity: {msg}")
        plan, latency = self._plan(msg.min_fidelity)
        # rounds = -1 marks a request this end's model cannot serve (the ends disagree).
        plan = plan or estimate.Plan(self.config.link.bright_state, -1, 0.0, 0.0)
        deadline = None if msg.deadline_ns < 0 else msg.deadline_ns
        return self._new_request(
            (msg.origin, msg.create_id),
            msg.number,
            msg.min_fidelity,
            deadline,
            kind,
            basis,
            msg.purpose,
            msg.priority,
            plan,
            latency,
        )

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, cls: Callable[..., PeerMessage], now: int, **fields: Any) -> int:
        msg_id = self._sender.new_id()
        msg = cls(msg_id=msg_id, **fields)
        self._sender.track(msg, msg_id, now)
        self._out.append(msg)
        return msg_id

    def _await_herald(self, seq: int, msg: PeerMessage, now: int) -> None:
        # Each herald the peer has seen and we have not holds one of our memory qubits, so a
        # sequence further ahead than our memory names no pair (and giving up on the heralds
        # up to it would take unbounded work): the peer broke the protocol.
        if seq > self.last_seq + self.config.local.memory_qubits:
            raise ProtocolError(
                f"EGP {type(msg).__name__} names herald {seq}, more than our"
                f" {self.config.local.memory_qubits} memory qubits past our last, {self.last_seq}"
            )
        self._waiting_seq.setdefault(seq, []).append(msg)
        self._herald_due.setdefault(seq, now + self._herald_grace_ns)

    def _tag(self) -> int:
        tag = self._next_tag
        self._next_tag += 1
        return tag

    def _free(self, seq: int) -> None:
        self._free_qubit(self.pairs.pop(seq).qubit)

    def _free_qubit(self, qubit: int) -> None:
        self._out.append(Free(self._tag(), (qubit,)))


_HANDLERS: dict[tuple[bool, type[PeerMessage]], Callable[[EgpCore, Any, int], None]] = {
    (True, QueueAdd): master.on_queue_add,
    (True, PurifyResult): purify.on_purify_result,
    (True, Expire): master.on_expire,
    (True, MemoryFull): master.on_memory_full,
    (True, Cancel): master.on_cancel,
    (False, QueueAdd): slave.on_queue_add,
    (False, PairAssign): slave.on_assign,
    (False, PairDiscard): slave.on_discard,
    (False, Purify): purify.on_purify,
    (False, Terminate): slave.on_terminate,
}
