"""Which daemons the suite checks: from a run directory's state file or from addresses.

A run directory (what ``qnet up`` writes) holds ``state.json``: ``{"version": 1, "network":
…, "channel": {"address": …, "pid": …} | null, "nodes": {NAME: {"address": "host:port",
"pid": PID, …}}}``. It is read here as plain JSON, not through the daemon's own code. A node
whose recorded process no longer runs is not a target: its name is left free, and if a
running daemon declares it as a neighbour the spec peer may take it (a *slot*).

Addresses are ``host:port`` or ``NAME=host:port``; the names are asked of each daemon
(NodeAdmin.Health) either way, so a mislabelled address is caught before any case runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from qnet.interop.wire import VERSION, open_channel
from qnet.v1 import node_pb2 as npb
from qnet.v1 import node_pb2_grpc as ngrpc


class TargetError(Exception):
    """The targets cannot be determined (no state file, a daemon that does not answer)."""


@dataclass(frozen=True, slots=True)
class Slot:
    """A neighbour name that a running daemon declares but nothing serves: the spec peer can
    take it. ``master`` tells whether the slot is the master of its link (the lower name)."""

    name: str
    daemon: str

    @property
    def master(self) -> bool:
        return self.name < self.daemon


@dataclass(slots=True)
class Targets:
    #: Node name -> "host:port" of its daemon.
    daemons: dict[str, str]
    #: The channel backend's address, "" when unknown.
    channel: str = ""
    network: str = ""
    #: Free neighbour names the spec peer may take (filled by ``find_slots``).
    slots: list[Slot] = field(default_factory=list)

    def slot(self, *, master: bool | None = None) -> Slot | None:
        for slot in self.slots:
            if master is None or slot.master == master:
                return slot
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0): look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def from_run_dir(path: Path) -> Targets:
    state_file = path / "state.json"
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TargetError(f"no network is recorded in {path} (no state.json)") from None
    except (OSError, ValueError) as exc:
        raise TargetError(f"{state_file} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise TargetError(f"{state_file} is not a version-1 qnet state file")
    if data.get("certs_dir"):
        raise TargetError(
            f"the network of {path} uses mutual TLS; this suite speaks plaintext gRPC only"
        )
    daemons: dict[str, str] = {}
    for name, record in dict(data.get("nodes") or {}).items():
        address = str(record.get("address") or "")
        pid = int(record.get("pid") or 0)
        if address and pid > 0 and _running(pid):
            daemons[str(name)] = address
    if not daemons:
        raise TargetError(f"no daemon recorded in {state_file} is running")
    channel = data.get("channel") or {}
    return Targets(daemons, str(channel.get("address") or ""), str(data.get("network") or ""))


def from_addresses(entries: list[str], timeout_s: float = 5.0) -> Targets:
    """Targets from ``host:port`` or ``NAME=host:port`` entries, names checked by Health."""
    daemons: dict[str, str] = {}
    for entry in entries:
        label, _, address = entry.rpartition("=")
        try:
            name = node_name(address, timeout_s)
        except grpc.RpcError as exc:
            raise TargetError(f"{address} does not answer NodeAdmin.Health: {exc}") from None
        if label and label != name:
            raise TargetError(f"{address} runs node {name!r}, not {label!r}")
        daemons[name] = address
    return Targets(daemons)


def node_name(address: str, timeout_s: float) -> str:
    with open_channel(address) as channel:
        health = ngrpc.NodeAdminStub(channel).Health(
            npb.NodeHealthRequest(protocol_version=VERSION), timeout=timeout_s
        )
    return str(health.node)


def complete(targets: Targets, timeout_s: float = 5.0) -> Targets:
    """Fill in the channel address and the spec-peer slots from the daemons' Status: a slot
    is a neighbour that is not a target and to which its daemon has no open stream."""
    for name, address in sorted(targets.daemons.items()):
        try:
            with open_channel(address) as channel:
                status = ngrpc.NodeAdminStub(channel).Status(
                    npb.StatusRequest(protocol_version=VERSION), timeout=timeout_s
                )
        except grpc.RpcError as exc:
            raise TargetError(
                f"{name} at {address} does not answer NodeAdmin.Status: {exc}"
            ) from None
        if not targets.channel:
            targets.channel = str(status.channel)
        if not targets.network:
            targets.network = str(status.network)
        for neighbour in status.neighbours:
            taken = {s.name for s in targets.slots}
            if (
                neighbour.peer not in targets.daemons
                and not neighbour.connected
                and neighbour.peer not in taken
            ):
                targets.slots.append(Slot(neighbour.peer, name))
    return targets
