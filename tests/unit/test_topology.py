"""Topology files: examples, defaults, round trips, and errors located by file, line and field."""

from __future__ import annotations

import re
import textwrap
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.errors import InvalidArgument, NotFound
from qnet.names import link_id
from qnet.physical.params import LinkParams, NodeParams, Scheme
from qnet.topology import (
    EndpointSpec,
    LinkSpec,
    NodeSpec,
    RoutingSpec,
    Topology,
    TopologyError,
    load_topology,
    parse_topology,
    topology_to_toml,
)
from qnet.topology.lines import KeyLines
from qnet.topology.model import MAX_GROUP_QUBITS_LIMIT, MAX_SEED

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def refused(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse_topology(toml(text), Path("t.toml"))
    return info.value


# -- the examples -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_example_loads_and_round_trips(path: Path) -> None:
    top = load_topology(path)
    assert top.name == path.stem
    assert top.source == path
    assert path.read_text(encoding="utf-8").startswith("# "), "each example opens with a comment"
    assert parse_topology(topology_to_toml(top)) == top


def test_the_examples_the_issue_asks_for_are_there() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.toml")} >= {
        "two_nodes",
        "chain4",
        "ring10",
        "diamond",
        "noisy_two_nodes",
    }


def test_two_nodes() -> None:
    top = load_topology(EXAMPLES / "two_nodes.toml")
    assert top.node_names == ("alice", "bob")
    assert [(link.id, link.params.length_km) for link in top.links] == [("alice|bob", 10.0)]


def test_chain4_matches_the_design_snippet() -> None:
    top = load_topology(EXAMPLES / "chain4.toml")
    assert (top.name, top.seed) == ("chain4", 7)
    assert top.node_names == ("alice", "r1", "r2", "bob")
    assert [link.id for link in top.links] == ["alice|r1", "r1|r2", "bob|r2"]
    assert {link.params.length_km for link in top.links} == {5.0}
    assert top.neighbours("r1") == ("alice", "r2")
    assert top.neighbours("bob") == ("r2",)
    alice = top.node("alice").params
    assert (alice.t1_s, alice.t2_s, alice.gate_error_2q) == (10.0, 1.0, 1e-3)


def test_ring10_is_a_ring() -> None:
    top = load_topology(EXAMPLES / "ring10.toml")
    assert top.node_names == tuple(f"n{i}" for i in range(10))
    assert len(top.links) == 10
    for i in range(10):
        assert set(top.neighbours(f"n{i}")) == {f"n{(i - 1) % 10}", f"n{(i + 1) % 10}"}


def test_diamond_has_two_disjoint_paths() -> None:
    top = load_topology(EXAMPLES / "diamond.toml")
    assert set(top.neighbours("alice")) == {"r1", "r2"}
    assert set(top.neighbours("bob")) == {"r1", "r2"}
    assert set(top.neighbours("r1")) == {"alice", "bob"}
    assert set(top.neighbours("r2")) == {"alice", "bob"}
    assert top.link("alice", "r1").params.length_km < top.link("alice", "r2").params.length_km


def test_noisy_two_nodes_is_much_noisier() -> None:
    quiet = load_topology(EXAMPLES / "two_nodes.toml").node("alice").params
    noisy = load_topology(EXAMPLES / "noisy_two_nodes.toml").node("alice").params
    assert noisy.measure_error >= 10 * quiet.measure_error
    assert noisy.gate_error_2q > quiet.gate_error_2q
    assert noisy.t2_s < quiet.t2_s


# -- defaults, overrides, helpers --------------------------------------------------------------

OVERRIDES = """
[network]
name = "net"
seed = 3
time_scale = 0.5
max_group_qubits = 12

[channel]
port = 7000

[defaults.node]
t1_s = 10
t2_s = 1.0
port = 0

[defaults.link]
length_km = 7
scheme = "double_click"

[[node]]
name = "alice"
t1_s = 20.0
host = "10.0.0.1"
port = 7001

[[node]]
name = "bob"

[[node]]
name = "carol"

[[link]]
between = ["bob", "alice"]
length_km = 3

[[link]]
between = ["alice", "carol"]
"""


def test_defaults_and_overrides_apply() -> None:
    top = parse_topology(toml(OVERRIDES))
    assert (top.name, top.seed, top.time_scale, top.max_group_qubits) == ("net", 3, 0.5, 12)
    assert top.channel == EndpointSpec("127.0.0.1", 7000)
    alice, bob = top.node("alice"), top.node("bob")
    assert alice.params == NodeParams(t1_s=20.0, t2_s=1.0)
    assert bob.params == NodeParams(t1_s=10.0, t2_s=1.0)
    assert type(bob.params.t1_s) is float  # an integer in the file, a float in the params
    assert (alice.host, alice.port, bob.host, bob.port) == ("10.0.0.1", 7001, "127.0.0.1", 0)
    first, second = top.links
    assert (first.a, first.b, first.id) == ("bob", "alice", "alice|bob")
    assert first.params == LinkParams(length_km=3.0, scheme=Scheme.DOUBLE_CLICK)
    assert second.params == LinkParams(length_km=7.0, scheme=Scheme.DOUBLE_CLICK)


def test_everything_has_a_default() -> None:
    top = parse_topology('[[node]]\nname = "solo"\n')
    assert top == Topology("qnet", nodes=(NodeSpec("solo"),))
    assert (top.seed, top.time_scale, top.max_group_qubits, top.links) == (0, 1.0, 10, ())
    assert top.channel == EndpointSpec("127.0.0.1", 0)
    assert top.routing == RoutingSpec(200.0, 2000.0, 100.0, 0.8)


def test_network_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "lab-3.toml"
    path.write_text('[[node]]\nname = "a"\n', encoding="utf-8")
    assert load_topology(path).name == "lab-3"
    odd = tmp_path / "my lab.toml"
    odd.write_text('[[node]]\nname = "a"\n', encoding="utf-8")
    assert load_topology(odd).name == "qnet"


def test_a_disconnected_network_is_allowed() -> None:
    top = parse_topology(
        toml("""
        [[node]]
        name = "a"
        [[node]]
        name = "b"
        [[node]]
        name = "c"
        [[link]]
        between = ["a", "b"]
        """)
    )
    assert top.neighbours("c") == ()
    assert top.links_of("c") == ()


def test_helpers() -> None:
    top = parse_topology(toml(OVERRIDES))
    assert top.node_names == ("alice", "bob", "carol")
    assert [link.id for link in top.links_of("alice")] == ["alice|bob", "alice|carol"]
    assert top.neighbours("alice") == ("bob", "carol")
    assert top.link("carol", "alice") is top.links[1]
    assert top.links[0].id == link_id("alice", "bob")
    assert top.node("alice").endpoint == EndpointSpec("10.0.0.1", 7001)
    with pytest.raises(NotFound, match="dave"):
        top.node("dave")
    with pytest.raises(NotFound, match="dave"):
        top.neighbours("dave")
    with pytest.raises(NotFound, match=re.escape("bob|carol")):
        top.link("bob", "carol")
    with pytest.raises(NotFound):
        top.links[0].other("carol")


def test_round_trip_keeps_overrides() -> None:
    top = parse_topology(toml(OVERRIDES))
    text = topology_to_toml(top)
    assert parse_topology(text) == top
    assert "[defaults.node]" in text  # what every node shares is written once


def test_source_takes_no_part_in_equality() -> None:
    text = toml(OVERRIDES)
    assert parse_topology(text, Path("a.toml")) == parse_topology(text)
    assert parse_topology(text, Path("a.toml")).source == Path("a.toml")
    assert parse_topology(text).source is None


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b'\xef\xbb\xbf[[node]]\nname = "a"\n')
    assert load_topology(path).node_names == ("a",)


# -- construction in code is checked too --------------------------------------------------------


def test_topology_checks_itself() -> None:
    a, b = NodeSpec("a"), NodeSpec("b")
    top = Topology("x", nodes=[a, b], links=[LinkSpec("a", "b")])  # type: ignore[arg-type]
    assert top.nodes == (a, b)  # lists become tuples, so equal topologies compare equal
    with pytest.raises(InvalidArgument, match="no nodes"):
        Topology("x")
    with pytest.raises(InvalidArgument, match="duplicate node name 'a'"):
        Topology("x", nodes=(a, a))
    with pytest.raises(InvalidArgument, match="unknown node 'c'"):
        Topology("x", nodes=(a, b), links=(LinkSpec("a", "c"),))
    with pytest.raises(InvalidArgument, match=re.escape("duplicate link a|b")):
        Topology("x", nodes=(a, b), links=(LinkSpec("a", "b"), LinkSpec("b", "a")))
    with pytest.raises(InvalidArgument, match="to itself"):
        LinkSpec("a", "a")
    with pytest.raises(InvalidArgument, match="port"):
        NodeSpec("a", port=70000)
    with pytest.raises(InvalidArgument, match="seed"):
        Topology("x", seed=-1, nodes=(a,))
    with pytest.raises(InvalidArgument, match="already used"):
        Topology("x", nodes=(NodeSpec("a", port=1),), channel=EndpointSpec(port=1))


def test_same_port_on_another_host_is_fine() -> None:
    top = Topology(
        "x",
        nodes=(
            NodeSpec("a", host="10.0.0.1", port=5000),
            NodeSpec("b", host="10.0.0.2", port=5000),
        ),
    )
    assert len(top.nodes) == 2


# -- errors: file, line and field ---------------------------------------------------------------


def test_the_issue_example_message() -> None:
    err = refused("""
        [network]
        name = "chain4"
        seed = 7

        [[node]]
        name = "alice"
        [[node]]
        name = "r1"

        [[link]]
        between = ["alice", "r1"]
        length_km = -5
        """)
    assert str(err) == "t.toml:12: link alice|r1: length_km must be in [0.0, 20000.0], got -5"
    assert (err.file, err.line, err.field) == ("t.toml", 12, "length_km")
    assert isinstance(err, InvalidArgument)


def test_unknown_field_suggests_the_close_one() -> None:
    err = refused("""
        [[node]]
        name = "a"
        [[node]]
        name = "b"
        [[link]]
        between = ["a", "b"]
        [[link]]
        between = ["b", "a"]
        lenght_km = 5
        """)
    assert str(err) == (
        "t.toml:9: unknown field 'lenght_km' in [[link]] 2; did you mean 'length_km'?"
    )
    assert err.field == "lenght_km"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            '[network]\nname = "n"\nsed = 1\n[[node]]\nname = "a"\n',
            3,
            "unknown field 'sed' in [network]; did you mean 'seed'?",
        ),
        (
            '[defaults.node]\nt1_s = 1\nt2 = 1\n[[node]]\nname = "a"\n',
            3,
            "unknown field 't2' in [defaults.node]",
        ),
        (
            '[defaults.lnk]\nlength_km = 1\n[[node]]\nname = "a"\n',
            1,
            "unknown field 'lnk' in [defaults]; did you mean 'link'?",
        ),
        (
            '[[node]]\nname = "a"\n[[node]]\nname = "b"\nmemory_qbits = 3\n',
            5,
            "unknown field 'memory_qbits' in [[node]] 2; did you mean 'memory_qubits'?",
        ),
        (
            '[netwrok]\nname = "n"\n[[node]]\nname = "a"\n',
            1,
            "unknown table 'netwrok' at top level; did you mean 'network'?",
        ),
        ('seed = 3\n[[node]]\nname = "a"\n', 1, "unknown field 'seed' at top level"),
        (
            '[channel]\nhost = "h"\nprot = 1\n[[node]]\nname = "a"\n',
            3,
            "unknown field 'prot' in [channel]; did you mean 'port'?",
        ),
    ],
)
def test_unknown_fields_and_tables(text: str, line: int, message: str) -> None:
    err = refused(text)
    assert err.line == line
    assert message in str(err)
    assert str(err).startswith(f"t.toml:{line}: ")


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        (  # a string where a number is expected
            '[[node]]\nname = "a"\nt1_s = "10"\n',
            3,
            "t1_s",
            "node a: t1_s must be a number, got string '10'",
        ),
        (  # a boolean is never a number
            '[network]\nseed = true\n[[node]]\nname = "a"\n',
            2,
            "seed",
            "[network]: seed must be an integer, got boolean true",
        ),
        (
            '[defaults.link]\nlength_km = false\n[[node]]\nname = "a"\n',
            2,
            "length_km",
            "[defaults.link]: length_km must be a number, got boolean false",
        ),
        (  # a float is not an integer
            '[[node]]\nname = "a"\nmemory_qubits = 4.0\n',
            3,
            "memory_qubits",
            "node a: memory_qubits must be an integer, got 4.0",
        ),
        (
            '[[node]]\nname = "a"\n[[node]]\nname = "b"\n[[link]]\nbetween = ["a", "b"]\n'
            'scheme = "triple_click"\n',
            7,
            "scheme",
            "link a|b: scheme must be one of 'single_click', 'double_click', got string",
        ),
        (
            '[[node]]\nname = "a"\nt1_s = [1]\n',
            3,
            "t1_s",
            "t1_s must be a number, got an array",
        ),
        (
            '[[node]]\nname = "a"\nt1_s = 1' + "0" * 400 + "\n",
            3,
            "t1_s",
            "t1_s must be a finite number",
        ),
        (
            "[[node]]\nname = 3\n",
            2,
            "name",
            "[[node]] 1: name must be a string, got 3",
        ),
    ],
)
def test_wrong_types(text: str, line: int, field: str, message: str) -> None:
    err = refused(text)
    assert (err.line, err.field) == (line, field)
    assert message in str(err)


def test_an_integer_is_accepted_for_a_float_field() -> None:
    top = parse_topology('[[node]]\nname = "a"\nt1_s = 3\nt2_s = 2\n')
    assert top.node("a").params.t1_s == 3.0


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        (
            '[network]\nname = "n"\nseed = -1\n[[node]]\nname = "a"\n',
            3,
            "seed",
            "[network]: seed must be an integer in [0, 9223372036854775807], got -1",
        ),
        (
            '[network]\ntime_scale = 0\n[[node]]\nname = "a"\n',
            2,
            "time_scale",
            "time_scale must be in (0,",
        ),
        (
            f'[network]\nmax_group_qubits = {MAX_GROUP_QUBITS_LIMIT + 1}\n[[node]]\nname = "a"\n',
            2,
            "max_group_qubits",
            "max_group_qubits must be an integer in [2, 14]",
        ),
        (
            '[network]\nname = "my net"\n[[node]]\nname = "a"\n',
            2,
            "name",
            "[network]: name must be 1-64 characters",
        ),
        (  # a default out of range is blamed on the defaults table
            '[defaults.node]\n\nmeasure_error = 0.7\n[[node]]\nname = "a"\n',
            3,
            "measure_error",
            "[defaults.node]: measure_error must be in [0.0, 0.5], got 0.7",
        ),
        (
            '[[node]]\nname = "a"\nport = 70000\n',
            3,
            "port",
            "node a: port must be an integer in [0, 65535], got 70000",
        ),
        (
            '[[node]]\nname = "a"\nhost = "my host"\n',
            3,
            "host",
            "node a: host must be a host name or IP address",
        ),
        (
            '[[node]]\nname = "a"\n[[node]]\nname = "b"\n[[link]]\nbetween = ["a", "b"]\n'
            "detector_efficiency = 0\n",
            7,
            "detector_efficiency",
            "link a|b: detector_efficiency must be in (0.0, 1.0], got 0",
        ),
        (
            '[channel]\nport = -1\n[[node]]\nname = "a"\n',
            2,
            "port",
            "[channel]: port must be an integer in [0, 65535], got -1",
        ),
    ],
)
def test_out_of_range(text: str, line: int, field: str, message: str) -> None:
    err = refused(text)
    assert (err.line, err.field) == (line, field)
    assert message in str(err)


def test_routing_settings() -> None:
    top = parse_topology(
        toml("""
        [routing]
        hello_interval_ms = 50
        dead_interval_ms = 250.5
        retransmit_interval_ms = 20
        fidelity_threshold = 0.9

        [[node]]
        name = "a"
        """)
    )
    assert top.routing == RoutingSpec(50.0, 250.5, 20.0, 0.9)
    assert type(top.routing.hello_interval_ms) is float
    assert parse_topology(topology_to_toml(top)) == top
    assert "[routing]" not in topology_to_toml(Topology("n", nodes=(NodeSpec("a"),)))


@pytest.mark.parametrize(
    ("body", "line", "field", "message"),
    [
        (
            "hello_interval_ms = 0",
            2,
            "hello_interval_ms",
            "hello_interval_ms must be in (0, 60000] ms",
        ),
        (
            "dead_interval_ms = 1e9",
            2,
            "dead_interval_ms",
            "dead_interval_ms must be in (0, 600000]",
        ),
        ("retransmit_interval_ms = -5", 2, "retransmit_interval_ms", "got -5"),
        ("fidelity_threshold = 1.01", 2, "fidelity_threshold", "must be in [0, 1], got 1.01"),
        ("fidelity_threshold = true", 2, "fidelity_threshold", "must be a number, got boolean"),
        ('hello_interval_ms = "1s"', 2, "hello_interval_ms", "must be a number, got string"),
        # Each alone is in range; together they break dead > hello, blamed on what is set.
        (
            "hello_interval_ms = 2000",
            2,
            "hello_interval_ms",
            "must exceed hello_interval_ms (2000)",
        ),
        ("\ndead_interval_ms = 200", 3, "dead_interval_ms", "dead_interval_ms (200) must exceed"),
        ("hello_ms = 5", 2, "hello_ms", "did you mean 'hello_interval_ms'?"),
    ],
)
def test_routing_settings_out_of_range(body: str, line: int, field: str, message: str) -> None:
    err = refused(f'[routing]\n{body}\n[[node]]\nname = "a"\n')
    assert (err.line, err.field) == (line, field)
    assert message in str(err)
    assert str(err).startswith(f"t.toml:{line}: ")


def test_routing_spec_checks_itself() -> None:
    with pytest.raises(InvalidArgument, match="must exceed"):
        RoutingSpec(hello_interval_ms=100, dead_interval_ms=100)
    with pytest.raises(InvalidArgument, match="fidelity_threshold"):
        RoutingSpec(fidelity_threshold=float("nan"))
    with pytest.raises(InvalidArgument, match="RoutingSpec"):
        Topology("n", nodes=(NodeSpec("a"),), routing=None)  # type: ignore[arg-type]


def test_a_rule_across_fields_blames_the_entry_that_breaks_it() -> None:
    err = refused("""
        [defaults.node]
        t1_s = 10
        t2_s = 1

        [[node]]
        name = "a"

        [[node]]
        name = "b"
        t1_s = 0.2
        """)
    assert (err.line, err.field) == (10, "t1_s")
    assert "node b: t2_s must be at most 2·t1_s" in str(err)


def test_duplicate_node_names() -> None:
    err = refused("""
        [[node]]
        name = "alice"

        [[node]]
        name = "bob"

        [[node]]
        # the same again
        name = "alice"
        """)
    assert str(err) == "t.toml:9: duplicate node name 'alice'"
    assert err.field == "name"


def test_invalid_node_name() -> None:
    err = refused('[[node]]\nname = "al ice"\n')
    assert (err.line, err.field) == (2, "name")
    assert "[[node]] 1: node name must be 1-64 characters" in str(err)


def test_missing_name_and_between() -> None:
    err = refused('[[node]]\nname = "a"\n[[node]]\nt1_s = 1\n')
    assert (err.line, err.field) == (3, "name")
    assert "[[node]] 2: missing field 'name'" in str(err)
    err = refused('[[node]]\nname = "a"\n[[link]]\nlength_km = 1\n')
    assert (err.line, err.field) == (3, "between")
    assert "[[link]] 1: missing field 'between'" in str(err)


def test_link_to_an_undeclared_node() -> None:
    err = refused("""
        [[node]]
        name = "alice"
        [[node]]
        name = "bob"

        [[link]]
        between = ["alice", "bbo"]
        """)
    assert str(err) == "t.toml:7: link alice|bbo: unknown node 'bbo'; did you mean 'bob'?"


def test_link_from_a_node_to_itself() -> None:
    err = refused('[[node]]\nname = "a"\n[[link]]\nlength_km = 1\nbetween = ["a", "a"]\n')
    assert str(err) == "t.toml:5: [[link]] 1: a link from 'a' to itself"


def test_duplicate_links_either_way_round() -> None:
    err = refused("""
        [[node]]
        name = "a"
        [[node]]
        name = "b"
        [[link]]
        between = ["a", "b"]
        [[link]]
        between = ["b", "a"]
        """)
    assert str(err) == "t.toml:8: duplicate link a|b"


@pytest.mark.parametrize(
    "between",
    ['["a"]', '["a", "b", "c"]', '"a-b"', '["a", 2]'],
)
def test_between_must_be_two_names(between: str) -> None:
    err = refused(f'[[node]]\nname = "a"\n[[node]]\nname = "b"\n[[link]]\nbetween = {between}\n')
    assert (err.line, err.field) == (6, "between")
    assert "between must be an array of two node names" in str(err)


def test_no_nodes() -> None:
    err = refused('[network]\nname = "empty"\n')
    assert "no nodes" in str(err)
    assert err.line == 1


def test_duplicate_explicit_ports() -> None:
    err = refused("""
        [[node]]
        name = "a"
        port = 7001

        [[node]]
        name = "b"
        port = 7001
        """)
    assert str(err) == "t.toml:7: node b: port 7001 on 127.0.0.1 is already used by node a"
    assert err.field == "port"


def test_duplicate_port_from_the_defaults_is_blamed_on_the_defaults() -> None:
    err = refused("""
        [defaults.node]
        port = 7001
        [[node]]
        name = "a"
        [[node]]
        name = "b"
        """)
    assert (err.line, err.field) == (2, "port")


def test_node_port_clashing_with_the_channel() -> None:
    err = refused('[channel]\nport = 9000\n[[node]]\nname = "a"\nport = 9000\n')
    assert str(err) == "t.toml:5: node a: port 9000 on 127.0.0.1 is already used by the channel"


def test_ephemeral_ports_never_clash() -> None:
    top = parse_topology('[[node]]\nname = "a"\n[[node]]\nname = "b"\n')
    assert [n.port for n in top.nodes] == [0, 0]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[[node]]\nname = "a"\nt1_s = \n', 3),
        ('[network]\nname = "a"\nname = "b"\n', 3),  # duplicate key: TOML refuses it
        ('[[node]]\nname = "a\n', 2),
        ('[[node]]\nname = "a"\n[link\n', 3),
    ],
)
def test_toml_syntax_errors_name_the_line(text: str, line: int) -> None:
    err = refused(text)
    assert err.line == line
    assert str(err).startswith(f"t.toml:{line}: invalid TOML: ")


def test_table_shapes() -> None:
    err = refused('[node]\nname = "a"\n')
    assert (err.line, str(err)) == (1, "t.toml:1: node entries must be tables, written [[node]]")
    err = refused('network = 5\n[[node]]\nname = "a"\n')
    assert (err.line, err.field) == (1, "network")
    assert "[network] must be a table, got 5" in str(err)


def test_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(TopologyError, match=re.escape("missing.toml: cannot read")) as info:
        load_topology(missing)
    assert info.value.line is None
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[[node]]\nname = "a"\n# caf\xe9\n')
    with pytest.raises(TopologyError, match=r"bad.toml:3: not valid UTF-8"):
        load_topology(bad)


def test_load_names_the_path_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[[node]]\nname = "a"\nt1_s = -1\n', encoding="utf-8")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert str(info.value).startswith(f"{path}:3: node a: t1_s must be in")


# -- finding lines in awkward TOML --------------------------------------------------------------


def test_lines_survive_multiline_values_comments_and_odd_keys() -> None:
    text = toml('''
        # [[node]] in a comment is not a table
        [ network ]  # spaces in a header
        name = "n"   # a comment with "quotes" and [brackets]
        "seed" = 1

        [[node]]
        name = "a#b"
        host = """
        [[node]]
        name = "fake"
        """
        t1_s = 2.0

        [[node]]
        name = 'b'
        params.extra = [
          1, # ]
          "]",
        ]
        port = 5

        [node.sub]
        key = 1

        [[link]]
        between = { a = 1 }
        ''')
    lines = KeyLines(text)
    assert lines.line(("network",)) == 2
    assert lines.line(("network", "seed")) == 4
    assert lines.line(("node", 0)) == 6
    assert lines.line(("node", 0, "t1_s")) == 12
    assert lines.line(("node", 1, "name")) == 15
    assert lines.line(("node", 1, "params", "extra")) == 16
    assert lines.line(("node", 1, "port")) == 20
    assert lines.line(("node", 1, "sub", "key")) == 23
    assert lines.line(("node", 1, "missing")) == 14  # falls back to the table's header
    assert lines.line(("link", 0, "between", "a")) == 26  # falls back to the enclosing key
    assert lines.line(("nowhere",)) == 1


def test_an_error_after_a_multiline_array_names_the_right_line() -> None:
    err = refused("""
        [[node]]
        name = "a"
        [[node]]
        name = "b"
        [[link]]
        between = [
          "a",
          "b",
        ]
        source_fidelity = 0.1
        """)
    assert (err.line, err.field) == (10, "source_fidelity")


# -- round trips of random topologies -----------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True)
floats = partial(st.floats, allow_nan=False, allow_infinity=False)


def shared_or(strategy: st.SearchStrategy[float], *common: float) -> st.SearchStrategy[float]:
    # Common values make several entries share a field, which the writer moves to [defaults].
    return st.one_of(st.sampled_from(common), strategy)


@st.composite
def node_params(draw: st.DrawFn) -> NodeParams:
    t1 = draw(shared_or(floats(min_value=0.0, max_value=1e9), 0.0, 10.0))
    t2 = draw(shared_or(floats(min_value=0.0, max_value=min(2 * t1, 1e9) if t1 > 0 else 1e9), 0.0))
    return NodeParams(
        memory_qubits=draw(st.integers(1, 100_000)),
        t1_s=t1,
        t2_s=t2,
        memory_depolar_rate_hz=draw(shared_or(floats(min_value=0.0, max_value=1e12), 0.0)),
        gate_error_1q=draw(shared_or(floats(min_value=0.0, max_value=1.0), 1e-4)),
        gate_error_2q=draw(shared_or(floats(min_value=0.0, max_value=1.0), 1e-3)),
        measure_error=draw(shared_or(floats(min_value=0.0, max_value=0.5), 0.01)),
    )


link_params = st.builds(
    LinkParams,
    length_km=shared_or(floats(min_value=0.0, max_value=20_000.0), 5.0),
    attenuation_db_per_km=shared_or(floats(min_value=0.0, max_value=10.0), 0.2),
    scheme=st.sampled_from(Scheme),
    detector_efficiency=floats(min_value=0.0, max_value=1.0, exclude_min=True),
    emission_efficiency=floats(min_value=0.0, max_value=1.0, exclude_min=True),
    source_fidelity=floats(min_value=0.25, max_value=1.0),
    bright_state=floats(min_value=0.0, max_value=0.5, exclude_min=True),
    attempt_overhead_ns=st.integers(1, 10**12),
)
routing_specs = st.one_of(
    st.just(RoutingSpec()),
    st.builds(
        lambda hello, extra, retransmit, threshold: RoutingSpec(
            hello, min(hello + extra, 600_000.0), retransmit, threshold
        ),
        floats(min_value=0.001, max_value=60_000.0),
        floats(min_value=0.001, max_value=600_000.0),
        floats(min_value=0.001, max_value=60_000.0),
        floats(min_value=0.0, max_value=1.0),
    ).filter(lambda r: r.dead_interval_ms > r.hello_interval_ms),
)
hosts = st.sampled_from(["127.0.0.1", "localhost", "::1", "node-7.example.org"])
ports = st.one_of(st.just(0), st.integers(1, 65535))


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    node_names = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    channel = EndpointSpec(draw(hosts), draw(ports))
    taken = {(channel.host, channel.port)}
    nodes = []
    for name in node_names:
        host, port = draw(hosts), draw(ports)
        if (host, port) in taken:
            port = 0
        taken.add((host, port))
        params = draw(st.one_of(st.just(NodeParams()), node_params()))
        nodes.append(NodeSpec(name, params, host, port))
    pairs: list[tuple[str, str]] = []
    if len(node_names) > 1:
        pair = st.tuples(st.sampled_from(node_names), st.sampled_from(node_names))
        pairs = draw(
            st.lists(
                pair.filter(lambda p: p[0] != p[1]), max_size=12, unique_by=lambda p: link_id(*p)
            )
        )
    links = tuple(
        LinkSpec(a, b, draw(st.one_of(st.just(LinkParams()), link_params))) for a, b in pairs
    )
    return Topology(
        name=draw(names),
        seed=draw(st.integers(0, MAX_SEED)),
        time_scale=draw(shared_or(floats(min_value=0.0, max_value=1e9, exclude_min=True), 1.0)),
        max_group_qubits=draw(st.integers(2, MAX_GROUP_QUBITS_LIMIT)),
        nodes=tuple(nodes),
        links=links,
        channel=channel,
        routing=draw(routing_specs),
    )


@settings(max_examples=200, deadline=None)
@given(topologies())
def test_random_topologies_round_trip(top: Topology) -> None:
    text = topology_to_toml(top)
    assert parse_topology(text) == top


@settings(max_examples=50, deadline=None)
@given(topologies())
def test_lines_found_in_written_topologies(top: Topology) -> None:
    text = topology_to_toml(top)
    lines = text.splitlines()
    found = KeyLines(text)
    for k, node in enumerate(top.nodes):
        assert lines[found.line(("node", k, "name")) - 1] == f'name = "{node.name}"'
    for k, link in enumerate(top.links):
        assert lines[found.line(("link", k, "between")) - 1].startswith(
            f'between = ["{link.a}", "{link.b}"]'
        )
