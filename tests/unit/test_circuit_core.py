"""The circuit core on its own: whatever a neighbour sends, it never fails and never leaks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.link.events import Free
from qnet.network.circuit import CircuitCore
from qnet.network.circuit_events import (
    ChainDiscard,
    CircuitAccept,
    CircuitMessage,
    CircuitPause,
    CircuitReject,
    CircuitResume,
    CircuitSetup,
    CircuitTeardown,
    PairComplete,
    PairTrack,
    ToPeer,
)
from tests.network.circuithelpers import chain

TOPOLOGY = chain(3)
NAMES = st.sampled_from(["n0", "n1", "n2", "x", ""])
PATHS = st.lists(NAMES, max_size=4).map(tuple)
INTS = st.integers(0, 2**64 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
WEIGHTS = st.lists(FLOATS, max_size=5).map(tuple)

MESSAGES: st.SearchStrategy[CircuitMessage] = st.one_of(
    st.builds(
        CircuitSetup,
        NAMES,
        st.integers(0, 3),
        PATHS,
        FLOATS,
        INTS,
        INTS,
        st.lists(st.integers(-5, 10), max_size=4).map(tuple),
    ),
    st.builds(CircuitAccept, NAMES, st.integers(0, 3), WEIGHTS, st.integers(-(2**63), 2**63 - 1)),
    st.builds(CircuitReject, NAMES, st.integers(0, 3), st.text(), NAMES, st.text()),
    st.builds(CircuitTeardown, NAMES, st.integers(0, 3), st.text(), NAMES, st.text()),
    st.builds(
        PairTrack,
        NAMES,
        st.integers(0, 3),
        st.integers(0, 5),
        st.integers(0, 5),
        st.integers(0, 2**32 - 1),
        WEIGHTS,
        INTS,
        INTS,
    ),
    st.builds(ChainDiscard, NAMES, st.integers(0, 3), st.integers(0, 5)),
    st.builds(PairComplete, NAMES, st.integers(0, 3), st.integers(0, 5), INTS, WEIGHTS, INTS),
    st.builds(CircuitPause, NAMES, st.integers(0, 3)),
    st.builds(CircuitResume, NAMES, st.integers(0, 3)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["n0", "n2"]), MESSAGES), max_size=12))
def test_any_messages_from_neighbours_are_survived(
    received: list[tuple[str, CircuitMessage]],
) -> None:
    core = CircuitCore("n1", TOPOLOGY)
    now = 0
    for sender, message in received:
        now += 1_000
        core.on_message(sender, message, now)
        core.on_timer(now)
        assert 0 <= core.reserved <= core.params.memory_qubits
        core.pop_outputs()
    # Whatever state it is in, the node going down releases it all.
    core.link_down("n0", now)
    core.link_down("n2", now)
    assert core.circuits() == {}
    assert core.reserved == 0


def test_a_setup_through_a_full_node_is_rejected_towards_the_head() -> None:
    core = CircuitCore("n1", chain(3, memory_qubits=3))
    core.on_message("n0", CircuitSetup("n0", 1, ("n0", "n1", "n2"), 0.8, 5, 7, (6,)), 0)
    (out,) = core.pop_outputs()
    assert isinstance(out, ToPeer)
    assert out.peer == "n0"
    reject = out.message
    assert isinstance(reject, CircuitReject)
    assert reject.code == "no_memory"
    assert core.reserved == 0


def test_the_tail_plans_and_accepts() -> None:
    core = CircuitCore("n2", TOPOLOGY)
    core.on_message("n1", CircuitSetup("n0", 1, ("n0", "n1", "n2"), 0.8, 5, 7, (6, 4)), 0)
    outs = core.pop_outputs()
    accept = next(o.message for o in outs if isinstance(o, ToPeer))
    assert isinstance(accept, CircuitAccept)
    assert len(accept.link_fidelity) == 2
    assert all(0.8 <= f <= 1.0 for f in accept.link_fidelity)
    assert core.reserved == 2
    core.on_message("n1", CircuitTeardown("n0", 1, "closed", "n0", "bye"), 1)
    assert core.reserved == 0
    assert not any(isinstance(o, Free) for o in core.pop_outputs())  # it held nothing
