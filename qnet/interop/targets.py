"""Which daemons the suite checks: from a run directory's state file or from addresses.

A run directory (what ``qnet up`` writes) holds ``state.json``: ``{"version": 1, "network":
…, "channel": {"address": …, "pid": …} | null, "nodes": {NAME: {"address": "host:port",
"pid": PID, …}}}``. It is read here as plain JSON, not through the daemon's own code. A node
whose recorded process no longer runs is not a target: its name is left free, and if a
running daemon declares it as a neighbour the spec peer may take it (a *slot*).

Addresses are ``host:port`` or ``NAME=host:port``; the names are asked of each daemon
(NodeAdmin.Health) either way, so a mislabelled address is caught before any case runs.

Mutual TLS: a state file with ``certs_dir``, or an explicit certificate directory (``qnet
interop --certs DIR``), makes every call go over TLS (``qnet.interop.tls``). A daemon's
certificate is checked against its node's name; only the first Health call to an unlabelled
address, whose name is not known yet, checks it against the dialed host instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from qnet.interop.tls import CertDir, MissingCredential, node_server_name
from qnet.interop.wire import VERSION, open_channel, status_of
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
    #: The network's certificate directory when its daemons use mutual TLS, else None.
    certs: CertDir | None = None

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


def certs_dir(path: Path) -> CertDir:
    """A certificate directory the suite can use, or ``TargetError`` saying why not."""
    certs = CertDir(path.absolute())
    problem = certs.check()
    if problem:
        raise TargetError(problem)
    return certs


def from_run_dir(path: Path, certs: CertDir | None = None) -> Targets:
    """The running daemons of a run directory; ``certs`` replaces the certificate directory
    its state records (TLS either way)."""
    state_file = path / "state.json"
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TargetError(f"no network is recorded in {path} (no state.json)") from None
    except (OSError, ValueError) as exc:
        raise TargetError(f"{state_file} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise TargetError(f"{state_file} is not a version-1 qnet state file")
    recorded = str(data.get("certs_dir") or "")
    if certs is None and recorded:
        # qnet up records it absolute; a relative one is taken as the run directory's.
        certs = certs_dir(path / recorded)
    daemons: dict[str, str] = {}
    for name, record in dict(data.get("nodes") or {}).items():
        address = str(record.get("address") or "")
        pid = int(record.get("pid") or 0)
        if address and pid > 0 and _running(pid):
            daemons[str(name)] = address
    if not daemons:
        raise TargetError(f"no daemon recorded in {state_file} is running")
    channel = data.get("channel") or {}
    return Targets(
        daemons,
        str(channel.get("address") or ""),
        str(data.get("network") or ""),
        certs=certs,
    )


def from_addresses(
    entries: list[str], timeout_s: float = 5.0, certs: CertDir | None = None
) -> Targets:
    """Targets from ``host:port`` or ``NAME=host:port`` entries, names checked by Health."""
    daemons: dict[str, str] = {}
    for entry in entries:
        label, _, address = entry.rpartition("=")
        try:
            name = node_name(address, timeout_s, certs, label)
        except grpc.RpcError as exc:
            raise TargetError(
                f"{address} does not answer NodeAdmin.Health: {status_of(exc)}{_hint(certs, label)}"
            ) from None
        if label and label != name:
            raise TargetError(f"{address} runs node {name!r}, not {label!r}")
        daemons[name] = address
    return Targets(daemons, certs=certs)


def _hint(certs: CertDir | None, name: str) -> str:
    if certs is None:
        return " (if the daemons use mutual TLS, give their certificate directory: --certs DIR)"
    if name:
        return f" (over TLS with {certs.path}, its certificate checked for node {name})"
    return (
        f" (over TLS with {certs.path}, its certificate checked against the address's host:"
        " label it NAME=HOST:PORT to check the node's name instead)"
    )


def node_name(
    address: str, timeout_s: float, certs: CertDir | None = None, expected: str = ""
) -> str:
    """The node the daemon at ``address`` says it runs; over TLS its certificate must carry
    ``expected``'s name, or (no name expected) the address's host."""
    tls = None
    if certs is not None:
        server = node_server_name(expected) if expected else ""
        try:
            tls = certs.app(server)
        except MissingCredential as exc:
            raise TargetError(str(exc)) from None
    with open_channel(address, tls) as channel:
        health = ngrpc.NodeAdminStub(channel).Health(
            npb.NodeHealthRequest(protocol_version=VERSION), timeout=timeout_s
        )
    return str(health.node)


def complete(targets: Targets, timeout_s: float = 5.0) -> Targets:
    """Fill in the channel address and the spec-peer slots from the daemons' Status: a slot
    is a neighbour that is not a target and to which its daemon has no open stream."""
    for name, address in sorted(targets.daemons.items()):
        tls = None
        if targets.certs is not None:
            try:
                tls = targets.certs.node_app(name)
            except MissingCredential as exc:
                raise TargetError(f"cannot reach the daemons over TLS: {exc}") from None
        try:
            with open_channel(address, tls) as channel:
                status = ngrpc.NodeAdminStub(channel).Status(
                    npb.StatusRequest(protocol_version=VERSION), timeout=timeout_s
                )
        except grpc.RpcError as exc:
            raise TargetError(
                f"{name} at {address} does not answer NodeAdmin.Status: {status_of(exc)}"
                f"{_hint(targets.certs, name)}"
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
