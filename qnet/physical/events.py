"""Events the channel core emits for the nodes (frozen: they cross task and process lines)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeraldEvent:
    """A heralded pair: one event per end of the link, with the same ``sequence``."""

    #: The node this event is for, and the node at the other end of the link.
    node: str
    peer: str
    #: Canonical link name ("a|b", a < b).
    link_id: str
    #: Pair sequence on the link, counting from 1, equal at both ends.
    sequence: int
    #: The node's half of the pair.
    qubit: int
    #: Heralded Bell state, x + 2z for (I ⊗ X^x Z^z)|Φ+⟩.
    bell_index: int
    #: Attempts of this memory pair since it began attempting, plus those of pairs that broke
    #: up (a qubit disarmed) since the link's previous success: with one pair attempting at a
    #: time, every attempt since the previous success (or since both ends were armed).
    attempts: int
    #: When the successful attempt's photons left the memories (decoherence counts from here).
    emitted_ns: int
    #: When the herald reached the node.
    time_ns: int
    #: Single-click bright-state population used; 0 for double-click.
    bright_state: float
