"""What ``qnet up``, ``qnet status``, ``qnet links``, ``qnet routes``, ``qnet restart`` and
``qnet circuit`` print: gathered from the daemons of a run directory (each RPC bounded), laid
out as plain-text tables."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import trio

from qnet.daemon import procs
from qnet.daemon.launcher import DownResult, RestartResult, UpResult
from qnet.daemon.rundir import DaemonRecord, NetworkState
from qnet.errors import QnetError
from qnet.security.tls import ClientTLS
from qnet.v1 import node_pb2 as pb

#: Bound on each daemon's answer to ``qnet status`` and ``qnet links``.
RPC_TIMEOUT_S = 3.0


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n else "-"


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _shown(daemons: Sequence[DaemonRecord]) -> list[DaemonRecord]:
    """The backend first, then the nodes in topology order."""
    return sorted(daemons, key=lambda d: d.program == "qnetd")


def format_up(result: UpResult) -> str:
    state = result.state
    rows = [
        [d.name, d.program, d.address, str(d.pid), _mib(procs.resident_bytes(d.pid)), d.log]
        for d in _shown(state.daemons())
    ]
    head = (
        f"network {state.network} is up: {len(state.nodes)} nodes healthy, linked and routed in"
        f" {result.elapsed_s:.2f} s (time scale {state.time_scale:g});"
        f" run directory {result.run_dir}"
    )
    table = format_table(["NAME", "PROGRAM", "ADDRESS", "PID", "RSS", "LOG"], rows)
    return "\n".join([*result.notes, head, table])


def format_down(result: DownResult, run_dir: str) -> str:
    if result.network is None:
        return f"no network is recorded in {run_dir}: nothing to stop"
    parts = [f"stopped network {result.network}: {len(result.stopped)} daemons"]
    if result.killed:
        parts.append("killed after the grace period: " + ", ".join(d.name for d in result.killed))
    if result.already_gone:
        parts.append("already exited: " + ", ".join(d.name for d in result.already_gone))
    return "; ".join(parts)


# -- status ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusRow:
    record: DaemonRecord
    health: str  # healthy | starting | unreachable | exited
    uptime_s: float | None = None
    memory: str = "-"
    neighbours: str = "-"
    routing: str = "-"
    detail: str = ""

    @property
    def healthy(self) -> bool:
        return self.health == "healthy"


async def _node_status(record: DaemonRecord, tls: ClientTLS | None) -> StatusRow:
    from qnet.daemon.control import open_daemon_client

    if not record.running():
        return StatusRow(record, "exited")
    try:
        with trio.fail_after(RPC_TIMEOUT_S):
            async with open_daemon_client(record.address, tls) as client:
                st = await client.status()
    except trio.TooSlowError:
        return StatusRow(record, "unreachable", detail=f"no answer in {RPC_TIMEOUT_S:g} s")
    except QnetError as exc:
        health = "starting" if "starting" in str(exc) else "unreachable"
        return StatusRow(record, health, detail=str(exc))
    linked = sum(n.connected for n in st.neighbours)
    down = [n.peer for n in st.neighbours if not n.connected]
    return StatusRow(
        record,
        "healthy" if not down else "degraded",
        uptime_s=st.uptime_s,
        memory=f"{st.memory_qubits_in_use}/{st.memory_qubits_total}",
        neighbours=f"{linked}/{len(st.neighbours)}",
        routing="converged" if st.routing_converged else "converging",
        detail=f"not linked to {', '.join(down)}" if down else "",
    )


async def _channel_status(record: DaemonRecord, tls: ClientTLS | None) -> StatusRow:
    from qnet.channel.client import open_channel_client

    if not record.running():
        return StatusRow(record, "exited")
    try:
        with trio.fail_after(RPC_TIMEOUT_S):
            async with open_channel_client(record.address, tls) as client:
                h = await client.health()
    except trio.TooSlowError:
        return StatusRow(record, "unreachable", detail=f"no answer in {RPC_TIMEOUT_S:g} s")
    except QnetError as exc:
        return StatusRow(record, "unreachable", detail=str(exc))
    return StatusRow(
        record,
        "healthy" if h.serving else "starting",
        uptime_s=h.uptime_s,
        memory=f"{h.qubits_in_use} (all nodes)",
        detail=f"{h.nodes} nodes, {h.links} links registered",
    )


async def gather_status(state: NetworkState) -> list[StatusRow]:
    rows: dict[str, StatusRow] = {}

    async def one(record: DaemonRecord) -> None:
        if record.program == "qnetd":
            rows[record.name] = await _node_status(record, state.client_tls(record.name))
        else:
            rows[record.name] = await _channel_status(record, state.client_tls())

    async with trio.open_nursery() as nursery:
        for record in state.daemons():
            nursery.start_soon(one, record)
    return [rows[d.name] for d in _shown(state.daemons())]


def format_status(state: NetworkState, rows: Sequence[StatusRow]) -> str:
    table = [
        [
            r.record.name,
            r.health,
            str(r.record.pid),
            r.record.address,
            _duration(r.uptime_s) if r.uptime_s is not None else "-",
            r.memory,
            _mib(procs.resident_bytes(r.record.pid)) if r.health != "exited" else "-",
            r.neighbours,
            r.routing,
            r.detail,
        ]
        for r in rows
    ]
    healthy = sum(r.healthy for r in rows)
    head = f"network {state.network} ({state.status}): {healthy}/{len(rows)} daemons healthy"
    headers = [
        *("NAME", "HEALTH", "PID", "ADDRESS", "UPTIME", "QUBITS", "RSS", "LINKED", "ROUTING"),
        "DETAIL",
    ]
    return head + "\n" + format_table(headers, table)


# -- links -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkRow:
    link_id: str
    connected: str
    heralds: int
    pairs: int
    errors: int
    rate_hz: float
    fidelity: float


async def gather_links(state: NetworkState) -> tuple[list[LinkRow], list[str]]:
    """One row per link, and the daemons that did not answer. A link's figures come from the
    end that delivered more pairs, on a tie the one that measured a rate (only an end that
    issued requests does)."""
    from qnet.daemon.control import open_daemon_client

    ends: dict[str, list[tuple[str, pb.LinkStats]]] = {}
    failures: list[str] = []

    async def one(record: DaemonRecord) -> None:
        try:
            with trio.fail_after(RPC_TIMEOUT_S):
                async with open_daemon_client(
                    record.address, state.client_tls(record.name)
                ) as client:
                    resp = await client.links()
        except (trio.TooSlowError, QnetError) as exc:
            failures.append(f"{record.name}: {exc or 'no answer'}")
            return
        for link in resp.links:
            ends.setdefault(link.link_id, []).append((record.name, link))

    async with trio.open_nursery() as nursery:
        for record in state.nodes.values():
            nursery.start_soon(one, record)
    rows = []
    for link_id in sorted(ends):
        seen = ends[link_id]
        best = max(seen, key=lambda e: (e[1].pairs_delivered, e[1].rate_hz, e[1].heralds))[1]
        up = sum(e[1].connected for e in seen)
        rows.append(
            LinkRow(
                link_id=link_id,
                connected=f"{up}/2 ends" if up < 2 else "yes",
                heralds=best.heralds,
                pairs=best.pairs_delivered,
                errors=best.errors,
                rate_hz=best.rate_hz,
                fidelity=best.mean_fidelity,
            )
        )
    return rows, sorted(failures)


def format_links(state: NetworkState, rows: Sequence[LinkRow], failures: Sequence[str]) -> str:
    table = [
        [
            r.link_id.replace("|", " - "),
            r.connected,
            str(r.heralds),
            str(r.pairs),
            str(r.errors),
            f"{r.rate_hz:.1f}",
            "-" if math.isnan(r.fidelity) else f"{r.fidelity:.4f}",
        ]
        for r in rows
    ]
    headers = ["LINK", "CONNECTED", "HERALDS", "PAIRS", "ERRORS", "RATE (pairs/s)", "FIDELITY"]
    out = [f"network {state.network}: {len(rows)} links (rate per physical second)"]
    out.append(format_table(headers, table))
    out += [f"no answer from {f}" for f in failures]
    return "\n".join(out)


# -- routes ----------------------------------------------------------------------------------

_STATE_NAMES = {
    pb.ROUTING_NEIGHBOUR_STATE_DOWN: "down",
    pb.ROUTING_NEIGHBOUR_STATE_INIT: "init",
    pb.ROUTING_NEIGHBOUR_STATE_UP: "up",
}


async def gather_routes(state: NetworkState, node: str) -> pb.RoutesResponse:
    """The routing state of ``node``'s daemon (bounded)."""
    from qnet.daemon.control import open_daemon_client

    record = state.running_node(node)
    try:
        with trio.fail_after(RPC_TIMEOUT_S):
            async with open_daemon_client(record.address, state.client_tls(node)) as client:
                return await client.routes()
    except trio.TooSlowError:
        raise QnetError(f"{node} did not answer in {RPC_TIMEOUT_S:g} s") from None


def format_routes(state: NetworkState, routes: pb.RoutesResponse) -> str:
    status = "converged" if routes.converged else "not converged yet (the table may be partial)"
    if routes.converged and not routes.complete:
        status += "; differs from the topology with every node and link up"
    head = (
        f"routes of {routes.node} (network {state.network}): {status};"
        f" cost in seconds per Bell pair at fidelity {routes.fidelity_threshold:g}"
    )
    rows = [
        [
            r.destination,
            r.next_hop,
            " ".join(r.path),
            f"{r.cost_s:.4g}",
            f"{r.fidelity:.4f}",
        ]
        for r in routes.routes
    ]
    headers = ["DESTINATION", "NEXT HOP", "PATH", "COST (s)", "FIDELITY"]
    table = format_table(headers, rows) if rows else "no routes"
    neighbours = ", ".join(f"{n.peer} {_STATE_NAMES.get(n.state, '?')}" for n in routes.neighbours)
    return "\n".join([head, table, f"neighbours: {neighbours or 'none'}"])


def format_restart(result: RestartResult) -> str:
    d = result.record
    what = "restarted" if result.was_running else "started again (it was not running)"
    head = (
        f"{d.name} {what} in {result.elapsed_s:.2f} s: pid {d.pid}, address {d.address},"
        " linked and routed"
    )
    return "\n".join([*result.notes, head])


# -- circuit ---------------------------------------------------------------------------------

#: Expectation of σ⊗σ for each Bell state (Φ+, Ψ+, Φ−, Ψ−), per basis.
_PARITY = {
    "Z": (1, -1, 1, -1),
    "X": (1, 1, -1, -1),
    "Y": (-1, 1, 1, -1),
}


@dataclass
class CircuitReport:
    """One circuit between two nodes, its pairs measured on delivery at both ends."""

    head: str
    tail: str
    basis: str
    requested: int
    path: list[str]
    link_fidelity: list[float]
    cutoff_ns: int
    #: Pairs whose two halves were both delivered and measured.
    pairs: int = 0
    #: From the ``opened`` event to the last pair.
    seconds: float = 0.0
    fidelity_sum: float = 0.0
    #: Σ of the products of the two ±1 outcomes, and of their predictions from each pair's
    #: weights and both nodes' measurement errors.
    product_sum: float = 0.0
    predicted_sum: float = 0.0
    closed: str = ""
    timed_out: bool = False

    @property
    def rate_hz(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


async def run_circuit(
    state: NetworkState,
    head: str,
    tail: str,
    *,
    pairs: int,
    min_fidelity: float,
    basis: str,
    timeout_s: float,
) -> CircuitReport:
    """Open a circuit ``head`` → ``tail`` for ``pairs`` pairs, each half measured in
    ``basis`` by its daemon on delivery; bounded by ``timeout_s`` once opened."""
    from qnet.daemon.control import open_daemon_client
    from qnet.physical.gates import Basis
    from qnet.topology import load_topology

    if pairs < 1:
        raise QnetError(f"--pairs must be at least 1, got {pairs}")
    if basis not in _PARITY:
        raise QnetError(f"--basis must be Z, X or Y, got {basis!r}")
    near, far = state.running_node(head), state.running_node(tail)
    topology = load_topology(state.topology)
    flips = (1 - 2 * topology.node(head).params.measure_error) * (
        1 - 2 * topology.node(tail).params.measure_error
    )
    halves: dict[str, dict[int, pb.CircuitPair]] = {head: {}, tail: {}}
    ends: dict[str, str] = {}

    async def read(name: str, events: AsyncIterator[pb.CircuitEvent]) -> None:
        async for event in events:
            kind = event.WhichOneof("event")
            if kind == "pair":
                halves[name][event.pair.index] = event.pair
            elif kind == "closed":
                c = event.closed
                code = pb.CircuitCloseCode.Name(c.code).removeprefix("CIRCUIT_CLOSE_CODE_")
                ends[name] = f"{code.lower()} by {c.node} ({c.reason})"
                return

    on_delivery = Basis(basis)
    setup_s = RPC_TIMEOUT_S * 3  # connecting, subscribing and the circuit's setup
    # One deadline over all of it, the reading's own bound inside: the streams' gRPC deadline
    # (trio's, when they start) then always outlasts the reading.
    try:
        with trio.fail_after(setup_s + timeout_s):
            async with (
                open_daemon_client(near.address, state.client_tls(head)) as a,
                open_daemon_client(far.address, state.client_tls(tail)) as b,
                b.circuit_events(measure_on_delivery=on_delivery) as tail_events,
                a.open_circuit(
                    tail, min_fidelity=min_fidelity, number=pairs, measure_on_delivery=on_delivery
                ) as (opened, head_events),
            ):
                report = CircuitReport(
                    head,
                    tail,
                    basis,
                    pairs,
                    list(opened.path),
                    list(opened.link_fidelity),
                    opened.cutoff_ns,
                )
                start = trio.current_time()
                with trio.move_on_after(timeout_s) as limit:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(read, head, head_events)
                        nursery.start_soon(read, tail, tail_events)
                report.timed_out = limit.cancelled_caught
                report.seconds = trio.current_time() - start
    except trio.TooSlowError:
        raise QnetError(f"the circuit {head} → {tail} did not open in {setup_s:g} s") from None
    parity = _PARITY[basis]
    for index in sorted(set(halves[head]) & set(halves[tail])):
        mine, theirs = halves[head][index], halves[tail][index]
        report.pairs += 1
        report.fidelity_sum += mine.fidelity_estimate
        report.product_sum += 1 - 2 * (mine.outcome ^ theirs.outcome)
        expected = sum(w * s for w, s in zip(mine.weights, parity, strict=False))
        report.predicted_sum += expected * flips
    report.closed = ends.get(head, "still open at the time limit")
    return report


def format_circuit(report: CircuitReport) -> str:
    r = report
    n = max(r.pairs, 1)
    targets = " ".join(f"{f:.3f}" for f in r.link_fidelity)
    mean = r.product_sum / n
    # The standard error of a mean of ±1 values.
    error = math.sqrt(max(1 - mean**2, 0.0) / n)
    lines = [
        f"circuit {r.head} → {r.tail} over {' '.join(r.path)} (link targets {targets},"
        f" cutoff {r.cutoff_ns / 1e6:.3g} ms)",
        f"{r.pairs} of {r.requested} pairs delivered and measured at both ends in"
        f" {r.seconds:.2f} s: {r.rate_hz:.1f} pairs/s; mean estimated fidelity"
        f" {r.fidelity_sum / n:.4f}",
        f"⟨{r.basis}{r.basis}⟩ measured {mean:+.3f} ± {error:.3f}, predicted"
        f" {r.predicted_sum / n:+.3f} (from the pairs' estimated Bell weights and the nodes'"
        " measurement errors)",
        f"closed: {r.closed}" + (" — stopped at the time limit" if r.timed_out else ""),
    ]
    return "\n".join(lines)
