"""Topology files (TOML): the nodes, links and parameters of a network, checked on load.

Format (DESIGN.md §8)::

    [network]          name, seed, time_scale (physical s per wall s), max_group_qubits
    [defaults.node]    any NodeParams field, host, port (0 = pick a free port)
    [defaults.link]    any LinkParams field
    [[node]]           name = "alice", plus per-node overrides
    [[link]]           between = ["alice", "r1"], plus per-link overrides
    [channel]          host, port of qnet-channeld
    [routing]          hello_interval_ms, dead_interval_ms, retransmit_interval_ms (daemon
                       wall-clock ms), fidelity_threshold
    [security]         tls = "auto" | "on" | "off" (auto: on when an address is off
                       loopback), certs_dir (the network's credentials, from `qnet certs`)

Every field has a default and a range check. A refused file raises ``TopologyError`` naming the
file, the line and the field. ``model`` holds the dataclasses, ``schema`` the fields each table
accepts, ``lines`` the line finder, ``parse`` and ``write`` the two directions.
"""

from qnet.topology.model import (
    DEFAULT_HOST,
    DEFAULT_MAX_GROUP_QUBITS,
    EndpointSpec,
    LinkSpec,
    NodeSpec,
    RoutingSpec,
    SecuritySpec,
    Topology,
    TopologyError,
)
from qnet.topology.parse import load_topology, parse_topology
from qnet.topology.write import topology_to_toml

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_GROUP_QUBITS",
    "EndpointSpec",
    "LinkSpec",
    "NodeSpec",
    "RoutingSpec",
    "SecuritySpec",
    "Topology",
    "TopologyError",
    "load_topology",
    "parse_topology",
    "topology_to_toml",
]
