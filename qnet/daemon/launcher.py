"""``qnet up``, ``qnet down`` and ``qnet restart``: a whole network as local daemon processes.

``up`` starts qnet-channeld and one qnetd per node at the same time (each daemon waits, bounded,
for the backend to accept connections, so nobody waits for a sequential start), each in its own
session so that it outlives the launcher, with stdout on a pipe for its readiness line and
stderr in ``logs/`` of the run directory. Once every daemon is ready it tells each node its
neighbours' addresses (NodeAdmin.SetPeers), waits until every node's streams to its
neighbours are connected (NodeAdmin.WaitLinked) and then until every node's routing table is
the one the topology gives (NodeAdmin.WaitRoutes); both are events on the daemon's side, not
polls. Any failure on the way stops every daemon it started and names what went wrong.

``restart`` stops one node's daemon if it still runs and starts it again with the command line
recorded for it, then links it up the same way (its new address goes to its neighbours) and
waits for routing to be complete again on every node.

``down`` stops the recorded daemons by PID: SIGTERM (nodes first, then the backend), a bounded
wait for each exit, SIGKILL for leftovers, a check that each PID is gone, then the state file
is removed.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from qnet.daemon import procs
from qnet.daemon.rundir import (
    CHANNEL_PROGRAM,
    NODE_PROGRAM,
    DaemonRecord,
    NetworkState,
    RunDir,
    running_daemons,
)
from qnet.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Timeout,
    Unreachable,
)
from qnet.security.files import CA_CERT
from qnet.topology import Topology, load_topology
from qnet.v1 import node_pb2 as pb

#: Default bound on the whole of ``qnet up`` (start, readiness, links).
UP_TIMEOUT_S = 30.0
#: ``qnet down``: how long daemons get to exit after SIGTERM, and after SIGKILL.
STOP_GRACE_S = 5.0
KILL_WAIT_S = 2.0
_LOG_TAIL_LINES = 6


@dataclass(frozen=True, slots=True)
class UpResult:
    state: NetworkState
    run_dir: Path
    elapsed_s: float
    notes: tuple[str, ...]


def _program(name: str, module: str) -> list[str]:
    """The installed console script beside this interpreter, else ``python -m module``; either
    way ``ps`` shows the program name and its arguments."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [sys.executable, str(script)]
    return [sys.executable, "-m", module]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_port_free(host: str, port: int, what: str, topology: Topology) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # The same option the gRPC server sets: only a live listener makes the port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise FailedPrecondition(
                f"{what}: port {port} on {host} (from {topology.source or 'the topology'})"
                f" is not available: {reason}"
            ) from None


def _free_port(host: str) -> int:
    """A port that is free now. The backend binds it a moment later; should another process
    take it in between, the backend fails to start and ``up`` says so."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _log_tail(path: str) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-_LOG_TAIL_LINES:])


@dataclass(eq=False)
class _Child:
    record: DaemonRecord
    proc: trio.Process


class _Launch:
    """The daemons of one ``qnet up``, and the state file that records them."""

    def __init__(self, run_dir: RunDir, state: NetworkState, deadline: float) -> None:
        self.run_dir = run_dir
        self.state = state
        self.deadline = deadline
        self.children: list[_Child] = []

    async def spawn(self, name: str, program: str, argv: list[str]) -> _Child:
        log = self.run_dir.log_path(name, program)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as err:
            proc = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # its own session: it outlives `qnet up`
            )
        record = DaemonRecord(
            name, program, proc.pid, procs.start_time(proc.pid), str(log), argv=tuple(argv)
        )
        child = _Child(record, proc)
        self.children.append(child)
        self._record(record)
        return child

    def _record(self, record: DaemonRecord) -> None:
        if record.program == CHANNEL_PROGRAM:
            self.state.channel = record
        else:
            self.state.nodes[record.name] = record
        self.run_dir.write_state(self.state)

    async def wait_ready(self, child: _Child) -> None:
        """Read the child's readiness line; record its address."""
        what = f"{child.record.program} {child.record.name}"
        if child.record.program == CHANNEL_PROGRAM:
            what = CHANNEL_PROGRAM
        stdout = child.proc.stdout
        assert stdout is not None
        buf = b""
        with trio.move_on_at(self.deadline) as wait:
            while b"\n" not in buf:
                chunk = await stdout.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        await stdout.aclose()
        if wait.cancelled_caught:
            raise Timeout(
                f"{what} (pid {child.proc.pid}) did not report ready in time;"
                f" log {child.record.log}: {_log_tail(child.record.log)}"
            )
        if b"\n" not in buf:
            with trio.move_on_after(STOP_GRACE_S):
                await child.proc.wait()
            raise Unreachable(
                f"{what} exited (code {child.proc.returncode}) before it was ready;"
                f" log {child.record.log}: {_log_tail(child.record.log)}"
            )
        words = buf.split(b"\n", 1)[0].decode(errors="replace").split()
        if len(words) < 4 or words[1:3] != ["ready", "on"]:
            raise Unreachable(f"{what} printed {buf!r} instead of its readiness line")
        child.record = replace(child.record, address=words[3])
        self._record(child.record)

    async def stop_all(self) -> None:
        """Stop every child (the launcher is still their parent: it reaps them)."""
        with trio.CancelScope(shield=True):
            for child in self.children:
                if child.proc.returncode is None:
                    child.proc.terminate()
            with trio.move_on_after(STOP_GRACE_S):
                for child in self.children:
                    await child.proc.wait()
            for child in self.children:
                if child.proc.returncode is None:
                    child.proc.kill()
                    await child.proc.wait()


def clear_previous(rd: RunDir) -> list[str]:
    """Refuse if a network recorded in ``rd`` still runs; remove a stale record (with a note).
    Call with the lock held."""
    old = rd.read_state()
    if old is None:
        return []
    live = running_daemons(old)
    if live:
        pids = ", ".join(f"{d.name} {d.pid}" for d in live[:4])
        raise AlreadyExists(
            f"network {old.network!r} is already running from {rd.path}"
            f" ({len(live)} daemons alive: {pids}{', …' if len(live) > 4 else ''});"
            f" stop it first with `qnet down --run-dir {rd.path}`"
        )
    rd.remove_state()
    return [
        f"removed the stale state of network {old.network!r} from {rd.state_file}"
        " (none of its daemons was running)"
    ]


async def up(
    topology_path: Path,
    run_dir: Path,
    *,
    time_scale: float | None = None,
    timeout_s: float = UP_TIMEOUT_S,
    log_level: str = "INFO",
) -> UpResult:
    """Start the network of ``topology_path`` (absolute: the daemons read it too); return once
    it is healthy and linked."""
    started = time.monotonic()
    if not topology_path.is_absolute():
        raise InvalidArgument(f"the topology path must be absolute, got {topology_path}")
    topology = load_topology(topology_path)
    parts = topology.components()
    if len(parts) > 1:
        # Routing could never converge: `up` would only time out waiting for it.
        named = "; ".join("{" + ", ".join(part) + "}" for part in parts)
        raise InvalidArgument(
            f"{topology_path}: the network {topology.name} is not connected: its links leave"
            f" {len(parts)} separate parts: {named}; add links between them"
        )
    rd = RunDir(run_dir)
    with rd.lock():
        notes = clear_previous(rd)
        chan = topology.channel
        if chan.port:
            _check_port_free(chan.host, chan.port, "qnet-channeld", topology)
        for spec in topology.nodes:
            if spec.port:
                _check_port_free(spec.host, spec.port, f"node {spec.name}", topology)
        scale = topology.time_scale if time_scale is None else time_scale
        certs = _certs_dir(topology, rd)
        state = NetworkState(
            network=topology.name,
            topology=str(topology_path),
            time_scale=scale,
            started_at=time.time(),
            launcher_pid=os.getpid(),
            certs_dir="" if certs is None else str(certs),
        )
        launch = _Launch(rd, state, trio.current_time() + timeout_s)
        try:
            await _start(launch, topology, topology_path, scale, timeout_s, log_level)
        except BaseException:
            await launch.stop_all()
            rd.remove_state()
            raise
        state.status = "up"
        rd.write_state(state)
    return UpResult(state, rd.path, time.monotonic() - started, tuple(notes))


def _certs_dir(topology: Topology, rd: RunDir) -> Path | None:
    """Where the daemons' credentials are when the topology's TLS is on (None: off): its
    [security] certs_dir, else a fresh set in the run directory (CA key not kept)."""
    if not topology.tls:
        return None
    given = topology.certs_path()
    if given is not None:
        if not (given / CA_CERT).is_file():
            raise FailedPrecondition(
                f"[security] certs_dir {given} holds no {CA_CERT}: create the network's"
                f" credentials with `qnet certs {topology.source or 'TOPOLOGY'} --out {given}`"
            )
        return given.absolute()
    from qnet.security.certs import write_network_certs

    out = rd.path.absolute() / "certs"
    write_network_certs(topology, out, keep_ca_key=False, replace=True)
    return out


async def _start(
    launch: _Launch,
    topology: Topology,
    topology_path: Path,
    scale: float,
    timeout_s: float,
    log_level: str,
) -> None:
    chan = topology.channel
    channel_address = _address(chan.host, chan.port or _free_port(chan.host))
    certs = launch.state.certs_dir
    channel_argv = [
        *_program(CHANNEL_PROGRAM, "qnet.daemons.channeld"),
        *("--host", chan.host, "--port", channel_address.rsplit(":", 1)[1]),
        *("--seed", str(topology.seed), "--time-scale", repr(scale)),
        *("--max-group-qubits", str(topology.max_group_qubits), "--log-level", log_level),
        *(("--certs", certs) if certs else ()),
    ]
    children = [await launch.spawn("channel", CHANNEL_PROGRAM, channel_argv)]
    for spec in topology.nodes:
        argv = _node_argv(spec.name, topology_path, channel_address, timeout_s, log_level, certs)
        children.append(await launch.spawn(spec.name, NODE_PROGRAM, argv))

    ready = {child.record.name: trio.Event() for child in children}
    problems: list[str] = []

    async def start_one(child: _Child) -> None:
        await launch.wait_ready(child)
        ready[child.record.name].set()

    async def link_one(name: str) -> None:
        """Once the node and its neighbours are ready: link it up (overlapping the start of
        other daemons), then wait for its routing."""
        for peer in (name, *topology.neighbours(name)):
            await ready[peer].wait()
        problems.extend(await _link_node(launch, topology, name))

    with trio.move_on_at(launch.deadline + 1.0) as wait:
        async with trio.open_nursery() as nursery:
            for child in children:
                nursery.start_soon(start_one, child)
            for spec in topology.nodes:
                nursery.start_soon(link_one, spec.name)
    if wait.cancelled_caught:
        problems.append("the daemons did not answer WaitLinked or WaitRoutes in time")
    if problems:
        raise Timeout(
            "the network did not link up and route in time: " + "; ".join(sorted(problems))
        )


def _node_argv(
    node: str,
    topology_path: Path,
    channel_address: str,
    timeout_s: float,
    log_level: str,
    certs: str = "",
) -> list[str]:
    return [
        *_program(NODE_PROGRAM, "qnet.daemons.qnetd"),
        *("--node", node, "--topology", str(topology_path)),
        *("--channel", channel_address, "--channel-timeout", f"{timeout_s:g}"),
        *("--log-level", log_level),
        *(("--certs", certs) if certs else ()),
    ]


async def _link_node(
    launch: _Launch, topology: Topology, name: str, *, tell_neighbours: bool = False
) -> list[str]:
    """Tell node ``name`` its neighbours' addresses (and, with ``tell_neighbours``, tell them
    its own), wait until its streams to them are up, then until its routing table is complete.
    Returns the problems, as text."""
    from qnet.daemon import control

    nodes = launch.state.nodes
    tls = launch.state.client_tls
    neighbours = topology.neighbours(name)
    if tell_neighbours:
        for peer in neighbours:
            async with control.open_daemon_client(nodes[peer].address, tls(peer)) as client:
                await client.set_peers({name: nodes[name].address})
    async with control.open_daemon_client(nodes[name].address, tls(name)) as client:
        await client.set_peers({p: nodes[p].address for p in neighbours})
        linked = await client.wait_linked(_remaining(launch))
        if not linked.linked:
            down = [
                f"{n.peer} ({n.last_error or 'no answer yet'})"
                for n in linked.neighbours
                if not n.connected
            ]
            return [f"{name} is not linked to {', '.join(down)}"]
        routes = await client.wait_routes(_remaining(launch))
    if not routes.complete:
        return [_incomplete(topology, routes)]
    return []


def _remaining(launch: _Launch) -> float:
    return max(launch.deadline - trio.current_time(), 0.0)


def _incomplete(topology: Topology, routes: pb.RoutesResponse) -> str:
    if not routes.converged:
        return f"routing on {routes.node} has not converged"
    reached = {r.destination for r in routes.routes}
    missing = [n for n in topology.node_names if n != routes.node and n not in reached]
    if missing:
        return f"{routes.node} has no route to {', '.join(missing)}"
    return f"{routes.node}'s routes differ from the topology's shortest paths"


@dataclass(frozen=True, slots=True)
class DownResult:
    network: str | None
    stopped: tuple[DaemonRecord, ...]
    killed: tuple[DaemonRecord, ...]
    already_gone: tuple[DaemonRecord, ...]


async def down(run_dir: Path) -> DownResult:
    """Stop the network recorded in ``run_dir``; raise if any daemon is still running."""
    rd = RunDir(run_dir)
    with rd.lock():
        state = rd.read_state()
        if state is None:
            return DownResult(None, (), (), ())
        live = running_daemons(state)
        gone = tuple(d for d in state.daemons() if d not in live)
        nodes = [d for d in live if d.program == NODE_PROGRAM]
        others = [d for d in live if d.program != NODE_PROGRAM]
        killed: list[DaemonRecord] = []
        for group in (nodes, others):
            killed += await _stop_group(group)
        left = [d for d in live if d.running()]
        if left:
            names = ", ".join(f"{d.name} (pid {d.pid})" for d in left)
            raise FailedPrecondition(
                f"could not stop {names}; the state file {rd.state_file} is kept"
            )
        rd.remove_state()
    return DownResult(state.network, tuple(live), tuple(killed), gone)


async def _stop_group(daemons: list[DaemonRecord]) -> list[DaemonRecord]:
    """SIGTERM each, wait (bounded) for all; SIGKILL the rest. Returns the killed ones."""
    for d in daemons:
        procs.send_signal(d.pid, signal.SIGTERM, d.start_time)
    exited: dict[int, bool] = {}

    async def wait(d: DaemonRecord, limit: float) -> None:
        exited[d.pid] = await procs.wait_exit(d.pid, limit, d.start_time)

    async with trio.open_nursery() as nursery:
        for d in daemons:
            nursery.start_soon(wait, d, STOP_GRACE_S)
    stubborn = [d for d in daemons if not exited[d.pid]]
    for d in stubborn:
        procs.send_signal(d.pid, signal.SIGKILL, d.start_time)
    async with trio.open_nursery() as nursery:
        for d in stubborn:
            nursery.start_soon(wait, d, KILL_WAIT_S)
    return stubborn


async def stop_nodes(run_dir: Path, names: list[str]) -> list[DaemonRecord]:
    """Stop the named node daemons of the network in ``run_dir`` (the others keep running);
    returns the ones that were running. ``qnet restart NAME`` starts one again."""
    rd = RunDir(run_dir)
    with rd.lock():
        state = rd.read_state()
        if state is None:
            raise FailedPrecondition(f"no network is recorded in {rd.path}: nothing to stop")
        unknown = [n for n in names if n not in state.nodes]
        if unknown:
            known = ", ".join(state.nodes) or "none"
            raise InvalidArgument(
                f"network {state.network} has no node {', '.join(map(repr, unknown))}"
                f" (nodes: {known})"
            )
        live = [state.nodes[n] for n in dict.fromkeys(names) if state.nodes[n].running()]
        await _stop_group(live)
    return live


# -- restart ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestartResult:
    record: DaemonRecord
    #: The daemon it replaced was still running (and was stopped first).
    was_running: bool
    elapsed_s: float
    notes: tuple[str, ...]


async def restart(run_dir: Path, node: str, *, timeout_s: float = UP_TIMEOUT_S) -> RestartResult:
    """Start node ``node`` of the network recorded in ``run_dir`` again (stopping it first if
    it runs); return once it is linked and routing is complete on every running node."""
    started = time.monotonic()
    rd = RunDir(run_dir)
    with rd.lock():
        state = rd.read_state()
        if state is None:
            raise FailedPrecondition(f"no network is recorded in {rd.path}: nothing to restart")
        old = state.nodes.get(node)
        if old is None:
            known = ", ".join(state.nodes) or "none"
            raise InvalidArgument(f"network {state.network} has no node {node!r} (nodes: {known})")
        channel = state.channel
        if channel is None or not channel.running():
            raise FailedPrecondition(
                f"qnet-channeld of network {state.network} is not running; start it and every"
                " node again with `qnet restart --channel`"
            )
        topology = load_topology(state.topology)
        was_running = old.running()
        if was_running:
            await _stop_group([old])
        argv = list(old.argv) or _node_argv(
            node, Path(state.topology), channel.address, timeout_s, "INFO", state.certs_dir
        )
        launch = _Launch(rd, state, trio.current_time() + timeout_s)
        child = await launch.spawn(node, NODE_PROGRAM, argv)
        try:
            with trio.move_on_at(launch.deadline + 1.0) as wait:
                await launch.wait_ready(child)
                problems, notes = await _relink(launch, topology, node)
            if wait.cancelled_caught:
                problems = [f"{node} did not link up and route in time"]
            if problems:
                raise Timeout(f"{node} restarted, but: " + "; ".join(problems))
        except BaseException:
            await launch.stop_all()
            raise
    return RestartResult(child.record, was_running, time.monotonic() - started, tuple(notes))


async def restart_network(run_dir: Path, *, timeout_s: float = UP_TIMEOUT_S) -> UpResult:
    """Start the channel backend of the network in ``run_dir`` again, and with it every node
    daemon: the backend holds every qubit, so when it goes every node's quantum state goes too
    (a daemon exits when it loses the backend) and each node starts afresh. Same topology and
    time scale; new addresses, recorded in the run directory."""
    rd = RunDir(run_dir)
    with rd.lock():
        state = rd.read_state()
        if state is None:
            raise FailedPrecondition(f"no network is recorded in {rd.path}: nothing to restart")
        live = running_daemons(state)
        for group in (
            [d for d in live if d.program == NODE_PROGRAM],
            [d for d in live if d.program != NODE_PROGRAM],
        ):
            await _stop_group(group)
        rd.remove_state()
    return await up(Path(state.topology), run_dir, time_scale=state.time_scale, timeout_s=timeout_s)


async def _relink(launch: _Launch, topology: Topology, node: str) -> tuple[list[str], list[str]]:
    """Link a restarted node to its running neighbours; wait for complete routes everywhere
    if every node runs, else only for the restarted node's routing to converge."""
    from qnet.daemon import control

    nodes = launch.state.nodes
    tls = launch.state.client_tls
    down = [n for n, record in nodes.items() if n != node and not record.running()]
    if not down:
        problems = await _link_node(launch, topology, node, tell_neighbours=True)
        if problems:
            return problems, []

        async def wait_one(name: str) -> None:
            async with control.open_daemon_client(nodes[name].address, tls(name)) as client:
                routes = await client.wait_routes(_remaining(launch))
            if not routes.complete:
                problems.append(_incomplete(topology, routes))

        async with trio.open_nursery() as nursery:
            for name in nodes:
                nursery.start_soon(wait_one, name)
        return problems, []
    note = f"not running: {', '.join(down)}; routes were not checked against the topology"
    async with control.open_daemon_client(nodes[node].address, tls(node)) as client:
        up = [p for p in topology.neighbours(node) if p not in down]
        await client.set_peers({p: nodes[p].address for p in up})
        for peer in up:
            async with control.open_daemon_client(nodes[peer].address, tls(peer)) as neighbour:
                await neighbour.set_peers({node: nodes[node].address})
        await client.wait_linked(_remaining(launch), peers=up)
        routes = await client.routes()
        while not routes.converged and _remaining(launch) > 0:
            routes = await client.routes(after_version=routes.version, timeout_s=_remaining(launch))
    problems = [] if routes.converged else [f"routing on {node} has not converged"]
    return problems, [note]
