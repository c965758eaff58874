"""The routing core's edges: the wire form of every message, protocol and local errors, the
neighbour state machine over every (state, input), and advert ageing and restarts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.errors import FailedPrecondition, InvalidArgument, NotFound, ProtocolError
from qnet.network.neighbours import NEIGHBOUR_TRANSITIONS, NeighbourInput, NeighbourState
from qnet.network.routing import RoutingConfig, RoutingCore
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
    RoutingHello,
    RoutingMessage,
    SendTo,
    message_from_dict,
)
from tests.unit.test_routing_harness import CONFIG, MS, RoutingNet, chain

_name = st.text("abcdefghij-_.0123456789", min_size=1, max_size=8)
_links = st.lists(
    st.builds(AdvertLink, _name, st.floats(0.0, 1e9), st.floats(0.0, 1.0)),
    max_size=5,
    unique_by=lambda link: link.peer,
)
_headers = st.lists(
    st.builds(AdvertHeader, _name, st.integers(1, 2**62), st.integers(0, 2**62)),
    max_size=5,
    unique_by=lambda h: h.origin,
)
_messages = st.one_of(
    st.builds(
        RoutingHello,
        _name,
        st.integers(1, 2**62),
        st.lists(_name, max_size=4).map(tuple),
        st.integers(1, 10**12),
        st.integers(1, 10**12),
        st.floats(0.0, 1.0),
    ),
    st.builds(
        LinkStateAdvert,
        st.just("origin"),
        st.integers(1, 2**62),
        st.integers(0, 2**62),
        st.integers(0, 10**5),
        _links.map(tuple),
    ),
    st.builds(AdvertAck, _name, _name, st.integers(1, 2**62)),
    st.builds(DatabaseRequest, _name, st.integers(0, 2**62), _headers.map(tuple)),
    st.builds(DatabaseDescription, _name, st.integers(0, 2**62), _headers.map(tuple)),
)


@given(_messages)
def test_every_message_survives_the_wire_form(message: RoutingMessage) -> None:
    data = json.loads(json.dumps(message.to_dict()))
    assert message_from_dict(data) == message


_ADVERT: dict[str, Any] = {
    "type": "link_state_advert",
    "origin": "a",
    "seq": 3,
    "age_ns": 0,
    "memory_qubits": 2,
    "links": [{"peer": "b", "rate_hz": 10.0, "fidelity": 0.9}],
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"type": "nonsense"}, "unknown routing message type"),
        ({"seq": None}, "bad 'seq'"),
        ({"seq": True}, "bad 'seq'"),
        ({"seq": 0}, "seq must be positive"),
        ({"age_ns": -1}, "age"),
        ({"links": "b"}, "bad 'links'"),
        ({"links": [{"peer": "b", "rate_hz": 1.0}]}, "lacks field 'fidelity'"),
        ({"links": [{"peer": "b", "rate_hz": float("nan"), "fidelity": 0.9}]}, "bad 'rate_hz'"),
        ({"links": [{"peer": "b", "rate_hz": 1.0, "fidelity": 1.5}]}, "fidelity 1.5"),
        ({"links": [{"peer": "b", "rate_hz": -1.0, "fidelity": 0.5}]}, "rate -1.0"),
        ({"links": [{"peer": "a", "rate_hz": 1.0, "fidelity": 0.5}]}, "origin itself"),
        ({"links": [_ADVERT["links"][0], _ADVERT["links"][0]]}, "peer twice"),
        ({"links": [7]}, "expected a record"),
    ],
)
def test_malformed_messages_are_protocol_errors(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        message_from_dict({**_ADVERT, **change})
    missing = {k: v for k, v in _ADVERT.items() if k != "origin"}
    with pytest.raises(ProtocolError, match="lacks field 'origin'"):
        message_from_dict(missing)


def _core(**links: float) -> RoutingCore:
    metrics = {peer: LinkMetrics(rate, 0.9) for peer, rate in links.items()}
    return RoutingCore("me", CONFIG, metrics, 4)


def _hello(
    node: str, *, heard: tuple[str, ...] = (), config: RoutingConfig = CONFIG
) -> RoutingHello:
    return RoutingHello(
        node, 1, heard, config.hello_interval_ns, config.dead_interval_ns, config.fidelity_threshold
    )


def test_peers_breaking_the_protocol_are_told_so() -> None:
    core = _core(p=10.0)
    core.start(0)
    with pytest.raises(ProtocolError, match="not a neighbour"):
        core.on_message("stranger", _hello("stranger"), 1)
    with pytest.raises(ProtocolError, match="claims to be from 'q'"):
        core.on_message("p", _hello("q"), 1)
    other = RoutingConfig(hello_interval_ns=CONFIG.hello_interval_ns, dead_interval_ns=9 * MS * 100)
    with pytest.raises(ProtocolError, match="must agree") as info:
        core.on_message("p", _hello("p", heard=("me",), config=other), 1)
    assert info.value.node == "me"
    assert core.neighbours() == {"p": NeighbourState.DOWN}  # a mismatched peer never comes up
    bad = LinkStateAdvert("p", 1, 0, 2, (AdvertLink("p", 1.0, 0.9),))
    with pytest.raises(ProtocolError, match="origin itself"):
        core.on_message("p", bad, 1)


def test_local_misuse_is_refused() -> None:
    core = _core(p=10.0)
    with pytest.raises(FailedPrecondition, match="not started"):
        core.on_timer(0)
    assert core.next_deadline() is None
    core.start(0)
    with pytest.raises(FailedPrecondition, match="already started"):
        core.start(0)
    with pytest.raises(NotFound, match="'q' is not a neighbour"):
        core.link_down("q", 1)
    with pytest.raises(InvalidArgument, match="finite rate"):
        core.set_link_metrics("p", LinkMetrics(float("inf"), 0.9), 1)
    with pytest.raises(InvalidArgument, match="itself"):
        RoutingCore("me", CONFIG, {"me": LinkMetrics(1.0, 1.0)}, 2)
    with pytest.raises(InvalidArgument, match="dead_interval_ns must exceed"):
        RoutingConfig(hello_interval_ns=10, dead_interval_ns=10)
    with pytest.raises(InvalidArgument, match="advert_refresh_ns must be below"):
        RoutingConfig(advert_refresh_ns=10, max_age_ns=10)
    with pytest.raises(InvalidArgument, match="fidelity_threshold"):
        RoutingConfig(fidelity_threshold=1.5)


def test_every_state_and_input_is_in_the_table() -> None:
    pairs = {(s, i) for s in NeighbourState for i in NeighbourInput}
    assert set(NEIGHBOUR_TRANSITIONS) == pairs - {(NeighbourState.DOWN, NeighbourInput.DEAD)}


_INPUTS = st.lists(
    st.sampled_from(["one_way", "two_way", "link_down", "dead", "tick"]), max_size=25
)


@settings(max_examples=300, deadline=None)
@given(_INPUTS)
def test_neighbour_machine_follows_its_table(inputs: list[str]) -> None:
    """h2-style: drive one neighbour through random inputs; the core's state, its NeighbourUp/
    Down outputs and its triggered hellos must follow the table."""
    core = _core(p=10.0)
    core.start(0)
    core.pop_outputs()
    now, last_hello, dead = 0, 0, CONFIG.dead_interval_ns
    state = NeighbourState.DOWN
    for step in inputs:
        now += MS
        event: NeighbourInput | None
        if step in ("one_way", "two_way"):
            heard = ("me",) if step == "two_way" else ()
            core.on_message("p", _hello("p", heard=heard), now)
            last_hello = now
            two = step == "two_way"
            event = NeighbourInput.HELLO_TWO_WAY if two else NeighbourInput.HELLO_ONE_WAY
        elif step == "link_down":
            core.link_down("p", now)
            event = NeighbourInput.LINK_DOWN
        elif step == "dead":
            now = max(now, last_hello + dead)
            core.on_timer(now)
            event = None if state is NeighbourState.DOWN else NeighbourInput.DEAD
        else:  # the core's next timer, whatever it is
            deadline = core.next_deadline()
            assert deadline is not None
            now = max(now, deadline)
            core.on_timer(now)
            expired = state is not NeighbourState.DOWN and now >= last_hello + dead
            event = NeighbourInput.DEAD if expired else None
        new = state if event is None else NEIGHBOUR_TRANSITIONS[(state, event)]
        assert core.neighbours() == {"p": new}
        outputs = core.pop_outputs()
        ups = [o for o in outputs if isinstance(o, NeighbourUp)]
        downs = [o for o in outputs if isinstance(o, NeighbourDown)]
        assert len(ups) == (new is NeighbourState.UP and state is not NeighbourState.UP)
        assert len(downs) == (state is NeighbourState.UP and new is not NeighbourState.UP)
        if step in ("one_way", "two_way") and new is not state:
            hellos = [o for o in outputs if isinstance(o, SendTo)]
            assert any(isinstance(o.message, RoutingHello) for o in hellos)
        state = new


def test_a_stopped_nodes_advert_ages_out_and_live_ones_never_do() -> None:
    config = RoutingConfig(
        hello_interval_ns=100 * MS,
        dead_interval_ns=350 * MS,
        retransmit_interval_ns=50 * MS,
        advert_refresh_ns=1_500 * MS,
        max_age_ns=3_000 * MS,
        fidelity_threshold=0.7,
    )
    net = chain(4)
    net.config = config
    net.start_all()
    net.converge_within_bound()
    net.kill("n3")
    net.converge_within_bound()
    assert all("n3" in c.database() for c in net.cores.values())  # unreachable, not yet aged
    net.run_for(config.max_age_ns)
    assert all("n3" not in c.database() for c in net.cores.values())
    settled = net.last_table_change_ns
    for _ in range(8):  # several refreshes and max ages: every live advert stays
        net.run_for(config.max_age_ns // 3)
        for core in net.cores.values():
            assert set(core.database()) == {"n0", "n1", "n2"}
            assert all(a.age_ns < config.max_age_ns for a in core.database().values())
    assert net.last_table_change_ns == settled
    net.assert_tables_match_reference()


def test_a_restarted_node_jumps_past_its_old_sequence_numbers() -> None:
    net = chain(3)
    net.start_all()
    net.converge_within_bound()
    for rate in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        net.set_metrics("n1", "n2", LinkMetrics(rate, 0.95))
    net.converge_within_bound()
    old = net.cores["n2"].database()["n2"].seq
    net.kill("n2")
    net.start("n2")  # at once: its neighbour still has it UP
    net.converge_within_bound()
    own = net.cores["n2"].database()["n2"]
    assert own.seq > old
    for core in net.cores.values():
        held = core.database()["n2"]
        assert (held.seq, held.links, held.memory_qubits) == (own.seq, own.links, own.memory_qubits)
    downs = [o for _, o in net.records["n1"].outputs if isinstance(o, NeighbourDown)]
    assert downs == [NeighbourDown("n2", "hello not listing us")]


def test_convergence_waits_for_the_database_of_each_neighbour() -> None:
    """A node that starts late learns the whole network from its neighbour at once, but answers
    ``route`` only after a dead interval and once synchronised."""
    net = chain(4)
    late = "n3"
    memory = dict(net.memory)
    net.memory = {n: m for n, m in memory.items() if n != late}
    net.start_all()
    net.converge_within_bound()
    net.memory = memory
    started = net.now
    net.start(late)
    net.run_for(10 * MS)
    assert set(net.cores[late].table()) == {"n0", "n1", "n2"}
    assert not net.cores[late].converged
    net.converge_within_bound()
    converged_at = net.cores[late].converged_at_ns
    assert converged_at == started + CONFIG.dead_interval_ns
    net.assert_routes_answer()


def test_lost_adverts_are_retransmitted() -> None:
    net = chain(4)
    net.faults.loss = 0.3
    net.faults.max_loss_run = 2
    net.start_all()
    net.run_for(3 * CONFIG.dead_interval_ns)
    net.faults.loss = 0.0
    net.converge_within_bound()
    assert sum(c.counters["retransmissions"] for c in net.cores.values()) > 0


def test_a_lone_node_converges_to_an_empty_table() -> None:
    net = RoutingNet({"a": 2, "b": 2}, {})
    net.start_all()
    assert net.hop_diameter() == 0
    net.converge_within_bound()
    assert net.cores["a"].table() == {}
    net.assert_routes_answer()  # b: Unreachable, naming it


def test_other_traffic_keeps_a_neighbour_whose_hellos_are_late_alive() -> None:
    core = _core(p=10.0)
    core.start(0)
    dead = CONFIG.dead_interval_ns
    core.on_message("p", _hello("p", heard=("me",)), MS)
    assert core.neighbours() == {"p": NeighbourState.UP}
    # Its hellos wait behind a backlog, but its other messages keep coming.
    now = MS
    while now < 3 * dead:
        now += dead // 3
        core.heard_from("p", now)
        core.on_timer(now)
    assert core.neighbours() == {"p": NeighbourState.UP}
    core.heard_from("nobody", now)  # not a neighbour: nothing to do
    # Silence: the dead timer runs out as before.
    core.on_timer(now + dead)
    assert core.neighbours() == {"p": NeighbourState.DOWN}
    # A neighbour that is down comes up only by a hello.
    core.heard_from("p", now + dead + MS)
    core.on_timer(now + 3 * dead)
    assert core.neighbours() == {"p": NeighbourState.DOWN}
