"""The run directory of a locally launched network: its state file, its lock and its logs.

Layout of a run directory (``.qnet-run`` in the current directory by default, or
``$QNET_RUN_DIR``)::

    state.json        what ``qnet up`` started: network, topology, and per daemon its
                      address, PID, the kernel start time of that PID, its log and its
                      command line (``qnet restart`` starts a node again with it)
    lock              held (flock) while ``qnet up`` or ``qnet down`` changes the network
    logs/NAME.log     each daemon's stderr (``channeld.log``, ``qnetd-NODE.log``)
    certs/            with TLS on and no [security] certs_dir: the network's credentials,
                      made afresh by each ``qnet up`` (``qnet.security.certs``)

The state file is written as soon as the first daemon has a PID (status ``starting``) and
rewritten when the network is up, so an interrupted ``qnet up`` still leaves what ``qnet down``
needs to stop it. A state file whose daemons have all exited is stale and is cleaned up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qnet.daemon.procs import is_running
from qnet.errors import FailedPrecondition, NotFound, Unreachable

if TYPE_CHECKING:
    from qnet.security.tls import ClientTLS

STATE_VERSION = 1
ENV_RUN_DIR = "QNET_RUN_DIR"
DEFAULT_RUN_DIR = ".qnet-run"
CHANNEL_PROGRAM = "qnet-channeld"
NODE_PROGRAM = "qnetd"


def default_run_dir() -> Path:
    return Path(os.environ.get(ENV_RUN_DIR) or DEFAULT_RUN_DIR)


@dataclass(frozen=True, slots=True)
class DaemonRecord:
    """One daemon process of the network."""

    #: Node name, or "channel" for qnet-channeld.
    name: str
    program: str
    pid: int
    #: Kernel start time of ``pid`` (clock ticks since boot), to tell it from a later process
    #: that reuses the PID; None where unknown.
    start_time: int | None
    log: str
    #: ``host:port``; "" until the daemon announced it.
    address: str = ""
    #: The command line it was started with (empty in state files from before it was kept).
    argv: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DaemonRecord:
        fields = dict(data)
        fields["argv"] = tuple(str(a) for a in fields.get("argv", ()))
        return cls(**fields)

    def running(self) -> bool:
        return is_running(self.pid, self.start_time)


@dataclass(slots=True)
class NetworkState:
    network: str
    topology: str
    time_scale: float
    #: "starting" while ``qnet up`` runs, "up" once every daemon is healthy and linked.
    status: str = "starting"
    started_at: float = 0.0
    launcher_pid: int = 0
    channel: DaemonRecord | None = None
    nodes: dict[str, DaemonRecord] = field(default_factory=dict)
    #: The network's credentials when its daemons use mutual TLS, else "".
    certs_dir: str = ""

    def client_tls(self, node: str | None = None) -> ClientTLS | None:
        """The application credential of a network with TLS on (None: plaintext); given
        ``node``, it checks that the daemon it reaches holds that node's certificate."""
        if not self.certs_dir:
            return None
        from qnet.security.identity import Identity
        from qnet.security.tls import load_app_client

        tls = load_app_client(Path(self.certs_dir))
        return tls if node is None else tls.for_server(Identity.node(node))

    def running_node(self, name: str) -> DaemonRecord:
        """The record of node ``name``'s daemon: ``NotFound`` if the network has no such node,
        ``Unreachable`` if its daemon is not running."""
        record = self.nodes.get(name)
        if record is None:
            known = ", ".join(sorted(self.nodes)) or "none"
            raise NotFound(f"network {self.network!r} has no node {name!r} (nodes: {known})")
        if not record.address or not record.running():
            raise Unreachable(
                f"the daemon of {name} (pid {record.pid}) of network {self.network!r}"
                " is not running"
            )
        return record

    def daemons(self) -> list[DaemonRecord]:
        """Nodes first, then the channel: the order to stop them in."""
        out = list(self.nodes.values())
        if self.channel is not None:
            out.append(self.channel)
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = STATE_VERSION
        return data

    @classmethod
    def from_json(cls, data: Any) -> NetworkState:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} qnet state")
        channel = data.get("channel")
        return cls(
            network=str(data["network"]),
            topology=str(data["topology"]),
            time_scale=float(data["time_scale"]),
            status=str(data["status"]),
            started_at=float(data["started_at"]),
            launcher_pid=int(data["launcher_pid"]),
            channel=DaemonRecord.from_json(channel) if channel is not None else None,
            nodes={str(k): DaemonRecord.from_json(v) for k, v in dict(data["nodes"]).items()},
            certs_dir=str(data.get("certs_dir", "")),
        )


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def log_path(self, name: str, program: str) -> Path:
        return self.logs / (f"{program}-{name}.log" if program == NODE_PROGRAM else "channeld.log")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory's lock, or fail at once if another command holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FailedPrecondition(
                    f"another `qnet up` or `qnet down` is working on {self.path} right now"
                ) from None
            yield
        finally:
            os.close(fd)  # releases the lock

    def read_state(self) -> NetworkState | None:
        """The recorded network, or None when there is none."""
        try:
            text = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return NetworkState.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(
                f"{self.state_file} is not a qnet state file ({exc}); if no qnetd or"
                " qnet-channeld of it is still running, remove it"
            ) from None

    def write_state(self, state: NetworkState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state_file)

    def remove_state(self) -> None:
        self.state_file.unlink(missing_ok=True)


def running_daemons(state: NetworkState) -> list[DaemonRecord]:
    return [d for d in state.daemons() if d.running()]
