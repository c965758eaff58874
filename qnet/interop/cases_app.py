"""Cases of the Application service (node.proto Application.Session; DESIGN.md §7): socket
semantics, teleportation fidelity, ownership of qubits, and bad input refused while the daemon
goes on serving."""

from __future__ import annotations

import math
from typing import Any

import grpc

from qnet.interop import stats
from qnet.interop.cases_link import request
from qnet.interop.cases_network import far_pair
from qnet.interop.registry import Context, Failed, case, check
from qnet.interop.wire import VERSION, Pump, RequestQueue, StreamEnded, expect_error
from qnet.v1 import channel_pb2 as cpb
from qnet.v1 import node_pb2 as npb

PORT = 4711
TELEPORT_ROUNDS = 16
EPR_PAIRS = 4


class Session:
    """One Application.Session stream: requests by id, answers matched to them."""

    def __init__(self, ctx: Context, node: str) -> None:
        self.ctx = ctx
        self.node = node
        self.requests: RequestQueue[npb.SessionRequest] = RequestQueue()
        call = ctx.app(node).Session(iter(self.requests), timeout=ctx.remaining())
        self.pump: Pump[npb.SessionResponse] = Pump(call, f"session-{node}")
        self.answers: dict[int, npb.SessionResponse] = {}
        self.next_id = 1
        first = self.pump.next(ctx.remaining(10))
        check(
            first.id == 0 and first.WhichOneof("result") == "opened",
            f"{node}: session began with {first}",
        )
        check(first.opened.node == node, f"a session on {node} opened on {first.opened.node!r}")

    def send(self, **command: Any) -> int:
        rid = self.next_id
        self.next_id += 1
        self.requests.put(npb.SessionRequest(protocol_version=VERSION, id=rid, **command))
        return rid

    def wait(self, rid: int, timeout: float | None = None) -> npb.SessionResponse:
        limit = self.ctx.remaining(30) if timeout is None else timeout
        while rid not in self.answers:
            try:
                answer = self.pump.next(limit)
            except StreamEnded as end:
                raise Failed(f"{self.node}: the session ended: {end.status}") from None
            self.answers[answer.id] = answer
        return self.answers.pop(rid)

    def call(self, **command: Any) -> npb.SessionResponse:
        return self.wait(self.send(**command))

    def ok(self, **command: Any) -> npb.SessionResponse:
        answer = self.call(**command)
        kind = answer.WhichOneof("result")
        if kind == "error":
            name = next(iter(command))
            raise Failed(f"{self.node}: {name} failed: {answer.error.type}: {answer.error.message}")
        return answer

    def error(self, **command: Any) -> str:
        """The error type of a request that must fail."""
        answer = self.call(**command)
        check(
            answer.WhichOneof("result") == "error",
            f"{self.node}: {next(iter(command))} did not fail: {answer}",
        )
        return str(answer.error.type)

    def close(self) -> None:
        self.requests.put(
            npb.SessionRequest(
                protocol_version=VERSION, id=self.next_id, goodbye=npb.SessionGoodbye()
            )
        )
        self.requests.close()
        self.pump.ended.wait(5.0)
        self.pump.cancel()


def connected_pair(ctx: Context, server: str, client: str, port: int) -> tuple[Session, Session]:
    """A session on ``server`` accepting on ``port`` (socket 2) and one on ``client``
    connected to it (socket 1)."""
    srv = Session(ctx, server)
    cli = Session(ctx, client)
    srv.ok(bind=npb.SocketBind(socket=1, port=port))
    srv.ok(listen=npb.SocketListen(socket=1))
    accept = srv.send(accept=npb.SocketAccept(socket=1, new_socket=2))
    conn = cli.ok(connect=npb.SocketConnect(socket=1, node=server, port=port))
    check(
        conn.connected.peer_node == server and conn.connected.peer_port == port,
        f"connected to {conn.connected}",
    )
    acc = srv.wait(accept)
    check(acc.WhichOneof("result") == "accepted", f"accept answered {acc}")
    check(
        acc.accepted.peer_node == client and acc.accepted.peer_port == conn.connected.local_port,
        f"accepted peer {acc.accepted.peer_node}:{acc.accepted.peer_port}, connector is "
        f"{client}:{conn.connected.local_port}",
    )
    return srv, cli


@case(
    "app.sockets",
    "node.proto Application.Session (sockets); DESIGN.md §7",
    "connect/accept, ordered messages, close, a waiting recv, a refused connect",
    timeout_s=60.0,
)
def sockets(ctx: Context) -> str:
    head, tail, _ = far_pair(ctx, hops=1)
    srv, cli = connected_pair(ctx, tail, head, PORT)
    try:
        for text in (b"one", b"two", b"three"):
            cli.ok(send=npb.SocketSend(socket=1, data=text))
        got = [srv.ok(recv=npb.SocketRecv(socket=2)).data.data for _ in range(3)]
        check(got == [b"one", b"two", b"three"], f"messages arrived as {got}")
        # A recv with nothing to read waits; the client stops waiting (timeout) and the answer
        # comes once data does: the request always runs to its answer.
        pending = cli.send(recv=npb.SocketRecv(socket=1))
        try:
            early = cli.wait(pending, timeout=0.5)
            raise Failed(f"a recv with nothing sent was answered: {early}")
        except TimeoutError:
            pass
        srv.ok(send=npb.SocketSend(socket=2, data=b"late"))
        check(cli.wait(pending).data.data == b"late", "the waiting recv got other data")
        cli.ok(close=npb.SocketClose(socket=1))
        end = srv.ok(recv=npb.SocketRecv(socket=2))
        check(end.data.end and not end.data.data, f"recv after the peer closed: {end}")
        srv.ok(close=npb.SocketClose(socket=2))
        cli.ok(wait_closed=npb.SocketWaitClosed(socket=1))
        refused = cli.error(connect=npb.SocketConnect(socket=3, node=tail, port=PORT + 1))
    finally:
        cli.close()
        srv.close()
    return (
        f"{head} -> {tail}:{PORT}: 3 messages in order, a waiting recv answered late, EOF,"
        f" close; connect to a closed port: {refused}"
    )


_STATES = {
    # name: (gates to prepare it from |0>, basis it measures to 0 in)
    "|0>": ([], "Z"),
    "|+>": ([cpb.GATE_H], "X"),
    "|+i>": ([cpb.GATE_H, cpb.GATE_S], "Y"),
}


@case(
    "app.teleport",
    "node.proto SocketSendQubit/SocketRecvQubit; DESIGN.md §6 Transport",
    "teleported states arrive with the fidelity the pairs allow",
    timeout_s=120.0,
)
def teleport(ctx: Context) -> str:
    head, tail, path = far_pair(ctx, hops=1)
    srv, cli = connected_pair(ctx, tail, head, PORT + 2)
    right = 0
    total = 0
    fidelities = []
    try:
        # The pairs' fidelity, from the epr stream of the same connection (a teleported
        # qubit's own estimate is 1 by definition).
        for _ in range(EPR_PAIRS):
            mine = cli.send(epr=npb.SocketEpr(socket=1))
            theirs = srv.ok(epr=npb.SocketEpr(socket=2))
            pair = cli.wait(mine)
            check(pair.WhichOneof("result") == "qubit", f"epr answered {pair}")
            check(pair.qubit.number == theirs.qubit.number, "the ends took different epr pairs")
            fidelities.append(pair.qubit.fidelity)
            cli.ok(free=npb.QubitFree(qubit=pair.qubit.id))
            srv.ok(free=npb.QubitFree(qubit=theirs.qubit.id))
        for _name, (gates, basis) in _STATES.items():
            for _ in range(TELEPORT_ROUNDS):
                q = cli.ok(allocate=npb.QubitAllocate()).qubit.id
                for gate in gates:
                    cli.ok(gate=npb.QubitGate(gate=gate, qubits=[q]))
                recv = srv.send(recv_qubit=npb.SocketRecvQubit(socket=2))
                cli.ok(send_qubit=npb.SocketSendQubit(socket=1, qubit=q))
                got = srv.wait(recv)
                check(got.WhichOneof("result") == "qubit", f"recv_qubit answered {got}")
                outcome = srv.ok(
                    measure=npb.QubitMeasure(qubit=got.qubit.id, basis=stats_basis(basis))
                )
                right += outcome.outcomes.outcomes[0] == 0
                total += 1
    finally:
        cli.close()
        srv.close()
    f_pair = stats.mean(fidelities)
    expected = (2 * f_pair + 1) / 3  # a Werner pair of fidelity F teleports with (2F + 1)/3
    bound = stats.binomial_bound(total - right, total, 1 - expected, allowance=ctx.allowance)
    check(bound.ok, f"teleportation error rate {bound}")
    route = "-".join(path)
    return f"{route}: {right}/{total} right; pairs F {f_pair:.3f} give {expected:.3f}; {bound}"


def stats_basis(name: str) -> cpb.Basis.ValueType:
    return {"Z": cpb.BASIS_Z, "X": cpb.BASIS_X, "Y": cpb.BASIS_Y}[name]


@case(
    "app.not-owned",
    "node.proto Application.Session (qubits); LinkLayer.MeasureQubit",
    "a qubit another session holds, or nobody does, is refused",
)
def app_not_owned(ctx: Context) -> str:
    node = sorted(ctx.targets.daemons)[0]
    a = Session(ctx, node)
    b = Session(ctx, node)
    try:
        q = a.ok(allocate=npb.QubitAllocate()).qubit.id
        denied = b.error(gate=npb.QubitGate(gate=cpb.GATE_X, qubits=[q]))
        check(denied == "PermissionDenied", f"a gate on another session's qubit: {denied}")
        denied = b.error(measure=npb.QubitMeasure(qubit=q, basis=cpb.BASIS_Z))
        check(denied == "PermissionDenied", f"measuring another session's qubit: {denied}")
        unknown = b.error(measure=npb.QubitMeasure(qubit=987_654_321, basis=cpb.BASIS_Z))
        check(unknown == "NotFound", f"measuring a qubit nobody holds: {unknown}")
        a.ok(measure=npb.QubitMeasure(qubit=q, basis=cpb.BASIS_Z))
        gone = a.error(free=npb.QubitFree(qubit=q))
        check(gone == "NotFound", f"freeing a measured qubit: {gone}")
    finally:
        a.close()
        b.close()
    status = expect_error(
        lambda: ctx.link(node).MeasureQubit(
            npb.MeasureQubitRequest(protocol_version=VERSION, qubit=987_654_321, basis=cpb.BASIS_Z),
            timeout=ctx.remaining(10),
        )
    )
    check(
        status is not None and status.code == grpc.StatusCode.NOT_FOUND,
        f"LinkLayer.MeasureQubit of a qubit not held: {status}",
    )
    return "PermissionDenied for another session's qubit; NotFound for unknown or measured ones"


@case(
    "app.bad-input",
    "node.proto (errors); DESIGN.md §7 (typed errors)",
    "malformed requests refused with the right error, the daemon still serving",
)
def bad_input(ctx: Context) -> str:
    node = sorted(ctx.targets.daemons)[0]
    seen = []
    s = Session(ctx, node)
    try:
        probes: dict[str, tuple[dict[str, Any], str]] = {
            "bind port 0": ({"bind": npb.SocketBind(socket=1, port=0)}, "InvalidArgument"),
            "bind port 70000": ({"bind": npb.SocketBind(socket=1, port=70000)}, "InvalidArgument"),
            "listen on an unknown socket": ({"listen": npb.SocketListen(socket=99)}, "NotFound"),
            "gate on no qubit": (
                {"gate": npb.QubitGate(gate=cpb.GATE_X, qubits=[])},
                "InvalidArgument",
            ),
            "rotation by NaN": (
                {"gate": npb.QubitGate(gate=cpb.GATE_RX, qubits=[1], angle=math.nan)},
                "InvalidArgument",
            ),
            "epr_measure on no socket": (
                {"epr_measure": npb.SocketEprMeasure(socket=99, count=1)},
                "NotFound",
            ),
        }
        for what, (command, expected) in probes.items():
            got = s.error(**command)
            check(not expected or got == expected, f"{what}: {got}, expected {expected}")
            seen.append(f"{what}: {got}")
        s.ok(allocate=npb.QubitAllocate())  # the session goes on
    finally:
        s.close()
    rpc = {
        "Routes timeout_s 1e6": (
            lambda: ctx.admin(node).Routes(
                npb.RoutesRequest(protocol_version=VERSION, timeout_s=1e6, after_version=1),
                timeout=ctx.remaining(10),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "Status version 99": (
            lambda: ctx.admin(node).Status(
                npb.StatusRequest(protocol_version=99), timeout=ctx.remaining(10)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        "circuit to itself": (
            lambda: list(
                ctx.network(node).OpenCircuit(
                    npb.OpenCircuitRequest(
                        protocol_version=VERSION, destination=node, min_fidelity=0.5, number=1
                    ),
                    timeout=ctx.remaining(10),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "circuit to nobody": (
            lambda: list(
                ctx.network(node).OpenCircuit(
                    npb.OpenCircuitRequest(
                        protocol_version=VERSION,
                        destination="interop-nobody",
                        min_fidelity=0.5,
                        number=1,
                    ),
                    timeout=ctx.remaining(10),
                )
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        "CREATE fidelity NaN": (
            lambda: list(
                ctx.link(node).LinkCreate(
                    request("x", 1, min_fidelity=math.nan), timeout=ctx.remaining(10)
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "SetPeers for a non-neighbour": (
            lambda: ctx.admin(node).SetPeers(
                npb.SetPeersRequest(
                    protocol_version=VERSION, addresses={"interop-nobody": "127.0.0.1:1"}
                ),
                timeout=ctx.remaining(10),
            ),
            None,
        ),
    }
    for what, (call, code) in rpc.items():
        status = expect_error(call)
        check(status is not None, f"{what}: accepted")
        assert status is not None
        check(
            code is None or status.code == code,
            f"{what}: {status}, expected {code.name if code else 'an error'}",
        )
        seen.append(f"{what}: {status.code.name}")
    health = ctx.admin(node).Health(
        npb.NodeHealthRequest(protocol_version=VERSION), timeout=ctx.remaining(10)
    )
    check(health.serving, f"{node} stopped serving after bad input")
    return "; ".join(seen)
