"""Neighbour state of the routing core, as a transition table.

::

    DOWN ── hello not listing us ──► INIT ── hello listing us ──► UP
    DOWN ── hello listing us ─────────────────────────────────► UP
    UP ──── hello not listing us ──► INIT
    INIT, UP ── dead interval or link down ──► DOWN

DOWN: no hello heard for a dead interval (or the transport lost the link). INIT: we hear its
hellos but they do not list us yet. UP: two-way; its link counts in our advert and adverts
flood to it. Hellos are the only way up, so a neighbour that restarted (its hello no longer
lists us) goes through INIT and the two ends exchange databases again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from qnet.network.routing_events import LinkMetrics


class NeighbourState(Enum):
    DOWN = "down"
    #: We hear its hellos; they do not list us yet.
    INIT = "init"
    #: Two-way: its links count and adverts flood to it.
    UP = "up"


class NeighbourInput(Enum):
    HELLO_ONE_WAY = "hello not listing us"
    HELLO_TWO_WAY = "hello listing us"
    DEAD = "dead interval expired"
    LINK_DOWN = "link down"


#: Every legal (state, input). DEAD in DOWN is absent: no dead timer runs in DOWN.
NEIGHBOUR_TRANSITIONS: dict[tuple[NeighbourState, NeighbourInput], NeighbourState] = {
    (NeighbourState.DOWN, NeighbourInput.HELLO_ONE_WAY): NeighbourState.INIT,
    (NeighbourState.DOWN, NeighbourInput.HELLO_TWO_WAY): NeighbourState.UP,
    (NeighbourState.DOWN, NeighbourInput.LINK_DOWN): NeighbourState.DOWN,
    (NeighbourState.INIT, NeighbourInput.HELLO_ONE_WAY): NeighbourState.INIT,
    (NeighbourState.INIT, NeighbourInput.HELLO_TWO_WAY): NeighbourState.UP,
    (NeighbourState.INIT, NeighbourInput.DEAD): NeighbourState.DOWN,
    (NeighbourState.INIT, NeighbourInput.LINK_DOWN): NeighbourState.DOWN,
    (NeighbourState.UP, NeighbourInput.HELLO_ONE_WAY): NeighbourState.INIT,
    (NeighbourState.UP, NeighbourInput.HELLO_TWO_WAY): NeighbourState.UP,
    (NeighbourState.UP, NeighbourInput.DEAD): NeighbourState.DOWN,
    (NeighbourState.UP, NeighbourInput.LINK_DOWN): NeighbourState.DOWN,
}


def next_neighbour_state(state: NeighbourState, event: NeighbourInput) -> NeighbourState:
    try:
        return NEIGHBOUR_TRANSITIONS[(state, event)]
    except KeyError:  # only the core's own timers could ask this: a bug here
        raise AssertionError(f"neighbour: {event.value!r} in state {state.value!r}") from None


@dataclass(slots=True)
class Neighbour:
    metrics: LinkMetrics
    state: NeighbourState = NeighbourState.DOWN
    dead_ns: int | None = None
    #: Our outstanding DatabaseRequest to it: id and when to resend.
    request_id: int | None = None
    request_due_ns: int = 0
    #: Adverts its description promised: origin → (seq, time it ages out).
    awaiting: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Unacknowledged adverts sent to it: origin → (seq, when to resend).
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def synced(self) -> bool:
        return self.request_id is None and not self.awaiting
