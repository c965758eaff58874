"""What one node keeps per circuit: its role, the link pairs it holds, swaps and tracking.

Plain mutable records owned by ``CircuitCore``; the transitions live there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from qnet.network.bell_diagonal import Weights
from qnet.network.circuit_events import CircuitId


class Role(Enum):
    HEAD = "head"
    MID = "mid"
    TAIL = "tail"


class Phase(Enum):
    """SETUP until the accept passes this node (or the tail plans); OPEN while pairs flow."""

    SETUP = "setup"
    OPEN = "open"


class Side(Enum):
    """Which of the node's two links of a circuit: towards the head, or towards the tail."""

    UP = "up"
    DOWN = "down"


@dataclass(slots=True)
class HeldPair:
    """A link pair of the circuit whose local half this node holds."""

    seq: int
    qubit: int
    #: The link pair's Bell index and error weights relative to it at ``time_ns`` (the link
    #: layer's estimate, both halves aged to then).
    nominal: int
    weights: Weights
    time_ns: int


@dataclass(slots=True)
class Track:
    """A pair from the head's qubit to one of this node's upstream link pairs (see
    ``PairTrack``)."""

    head_seq: int
    nominal: int
    weights: Weights
    head_time_ns: int
    far_time_ns: int


@dataclass(slots=True)
class Swap:
    """A Bell measurement on an upstream and a downstream pair, and what it waits for."""

    up: HeldPair
    down: HeldPair
    time_ns: int
    #: Measurement tags of the up (control, Z bit) and down (target, X bit) qubits.
    tags: tuple[int, int]
    outcomes: dict[int, int] = field(default_factory=dict)
    track: Track | None = None
    forwarded: bool = False

    @property
    def outcome(self) -> int | None:
        """x + 2z of the Bell measurement, once both qubits are measured."""
        if len(self.outcomes) < 2:
            return None
        return self.outcomes[self.tags[1]] + 2 * self.outcomes[self.tags[0]]


@dataclass(slots=True)
class Completion:
    """At the head: the tail delivered this head pair as ``index``."""

    index: int
    weights: Weights
    time_ns: int


@dataclass(slots=True)
class Circuit:
    id: CircuitId
    path: tuple[str, ...]
    position: int
    role: Role
    min_fidelity: float
    number: int
    reserved: int
    phase: Phase = Phase.SETUP
    #: This node's link-layer purpose on its downstream link (None at the tail).
    label: int | None = None
    #: The upstream node's purpose on the link to this node (None at the head).
    up_label: int | None = None
    link_fidelity: tuple[float, ...] = ()
    cutoff_ns: int = 0
    #: Unswapped (MID) or waiting (ends) link pairs, oldest first, per side.
    up_pairs: dict[int, HeldPair] = field(default_factory=dict)
    down_pairs: dict[int, HeldPair] = field(default_factory=dict)
    swaps_by_up: dict[int, Swap] = field(default_factory=dict)
    swaps_by_down: dict[int, Swap] = field(default_factory=dict)
    swaps_by_head: dict[int, Swap] = field(default_factory=dict)
    #: Tracks that came before their pair (keyed by the upstream seq) and when they go stale.
    tracks: dict[int, tuple[Track, int]] = field(default_factory=dict)
    #: Discards that came before their pair, per side: seq → when the entry goes stale.
    doomed: dict[Side, dict[int, int]] = field(default_factory=lambda: {Side.UP: {}, Side.DOWN: {}})
    #: At the head: completions that came before their pair, and those ready to deliver.
    early: dict[int, Completion] = field(default_factory=dict)
    ready: dict[int, tuple[HeldPair, Completion]] = field(default_factory=dict)
    #: Next end-to-end index to deliver (head) or to assign (tail).
    next_index: int = 0
    delivered: int = 0
    #: Pairs still owed by this node's outstanding link request on its downstream link.
    outstanding: int = 0
    retry_at: int | None = None
    setup_deadline: int | None = None
    #: The ends (``Role.HEAD``/``Role.TAIL``) that hold the circuit paused, as this node last
    #: heard: it makes no link requests for the circuit while any does.
    paused_by: set[Role] = field(default_factory=set)
    #: The neighbours towards the head and towards the tail (None at an end): fixed by
    #: ``path`` and ``position``, and read on every input, so kept rather than derived.
    up_peer: str | None = field(init=False)
    down_peer: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.up_peer = self.path[self.position - 1] if self.position > 0 else None
        last = self.position + 1 >= len(self.path)
        self.down_peer = None if last else self.path[self.position + 1]

    @property
    def paused(self) -> bool:
        return bool(self.paused_by)

    def pairs(self, side: Side) -> dict[int, HeldPair]:
        return self.up_pairs if side is Side.UP else self.down_pairs

    def peer(self, side: Side) -> str | None:
        return self.up_peer if side is Side.UP else self.down_peer

    def held_qubits(self) -> list[int]:
        held = [p.qubit for p in self.up_pairs.values()]
        held += [p.qubit for p in self.down_pairs.values()]
        held += [pair.qubit for pair, _ in self.ready.values()]
        return held
