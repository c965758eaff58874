"""Applications on real daemon processes (`qnet up examples/chain4.toml`) through the
Application service: each application is its own session (``RemoteBackend``), and at least one
runs in an OS process of its own.

- alice's application (here) and bob's (a child process) exchange messages, measure-directly
  pairs in Z and X (correlated within a tolerance from the sample size), and teleported qubits,
  then close: bob's recv ends with b"";
- an application killed with SIGKILL leaves nothing allocated for it at its node: its session
  ends, its qubits are freed, its connection is aborted and the peer hears ``Unreachable``;
- a timeout is ``qnet.errors.Timeout`` and the session goes on; bad requests are typed errors.

The network is started once for the module and stopped whatever happens (as in
test_circuits_process); every child process is killed and reaped by the test that started it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import AsyncGenerator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

import qnet
from qnet.api.remote import open_remote
from qnet.daemon.control import open_daemon_client
from qnet.errors import InvalidArgument, NotFound, Timeout, Unreachable
from tests.daemon.test_app_service import agreement, agreement_floor, wait_sessions_gone
from tests.network.circuithelpers import both
from tests.process.test_circuits_process import CHAIN4, _up
from tests.process.test_qnet_up import ROOT, Network

pytestmark = pytest.mark.process

LIMIT_S = 30
PORT = 7

BOB_APP = """
import json, sys, trio
from qnet.api.remote import open_remote

async def main(address, port, n):
    async with open_remote(address) as bob:
        srv = bob.socket()
        await srv.bind(port)
        await srv.listen()
        print("listening", flush=True)
        conn, peer = await srv.accept()
        await conn.send((await conn.recv()).upper())
        bases = ["Z" if i % 2 == 0 else "X" for i in range(n)]
        outcomes = await conn.epr_measure(n, bases)
        teleported = []
        for basis in ("Z", "X", "Z", "X"):
            q = await conn.recv_qubit()
            teleported.append(await bob.measure(q.id, basis))
        end = await conn.recv()
        await conn.close()
        await conn.wait_closed()
        print(json.dumps({"peer": list(peer), "outcomes": outcomes,
                          "teleported": teleported, "end": end.decode()}), flush=True)

trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
"""

ALICE_APP = """
import sys, trio
from qnet.api.remote import open_remote

async def main(address, port):
    async with open_remote(address) as alice:
        for _ in range(3):
            await alice.allocate()
        c = alice.socket()
        await c.connect(("bob", port), min_fidelity=0.5)
        await c.epr()
        await c.epr()
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def chain4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from _up(CHAIN4, tmp_path_factory)


class _App:
    """A child process running an application; its stdout read line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def line(self) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise EOFError(f"the application exited ({self.process.returncode})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


@asynccontextmanager
async def app(code: str, *args: str | int) -> AsyncGenerator[_App]:
    """Run ``code`` as an application process; killed and reaped on the way out."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", code, *map(str, args)], stdout=-1, cwd=ROOT
    )
    try:
        yield _App(process)
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_apps_in_two_processes_exchange_messages_pairs_and_qubits(chain4: Network) -> None:
    n = 96
    fidelity = 0.6
    with trio.fail_after(LIMIT_S):
        async with (
            app(BOB_APP, chain4.address("bob"), PORT, n) as bob,
            open_remote(chain4.address("alice")) as alice,
        ):
            assert await bob.line() == "listening"
            c = alice.socket()
            await c.connect(("bob", PORT), min_fidelity=fidelity)
            await c.send(b"hello")
            assert await c.recv() == b"HELLO"
            bases = ["Z" if i % 2 == 0 else "X" for i in range(n)]
            near = await c.epr_measure(n, bases)
            # |1⟩, |+⟩, |0⟩, |−⟩, read at bob in Z, X, Z, X.
            for gates in ("x", "h", "", "xh"):
                q = await alice.allocate()
                for g in gates:
                    await alice.gate(g, (q.id,))
                await c.send_qubit(q.id)
            await c.close()
            assert await c.recv() == b""
            await c.wait_closed()
            report = json.loads(await bob.line())
            assert report["peer"] == ["alice", c.local[1] if c.local else -1]
            assert report["end"] == ""
            far = report["outcomes"]
            for start in (0, 1):
                a, b = near[start::2], far[start::2]
                assert agreement(a, b) >= agreement_floor(len(a), fidelity), (start, a, b)
            wrong = sum(x != y for x, y in zip(report["teleported"], [1, 0, 0, 1], strict=True))
            assert wrong <= 1, report["teleported"]
            assert await bob.process.wait() == 0


async def test_a_killed_application_leaves_no_qubit_allocated(chain4: Network) -> None:
    with trio.fail_after(LIMIT_S):
        async with (
            open_daemon_client(chain4.address("alice")) as admin,
            open_remote(chain4.address("bob")) as bob,
        ):
            before = await admin.status()
            srv = bob.socket()
            await srv.bind(PORT + 1)
            await srv.listen()
            async with app(ALICE_APP, chain4.address("alice"), PORT + 1) as child:
                (conn, _), ready = await both(srv.accept, child.line)
                assert ready == "ready"
                held = await admin.status()
                assert held.app_sessions == before.app_sessions + 1
                assert held.qubits_held_for_apps == before.qubits_held_for_apps + 5
                child.process.kill()  # SIGKILL: no goodbye of any kind
                assert await child.process.wait() == -9
            status = await wait_sessions_gone(admin, before.app_sessions)
            assert status.qubits_held_for_apps == before.qubits_held_for_apps
            with pytest.raises(Unreachable):
                await conn.recv()
            after = await admin.status()
            assert after.qubits_held_by_transport == 0
            assert after.memory_qubits_in_use <= after.memory_qubits_total


async def test_timeouts_and_bad_requests_leave_the_session_working(chain4: Network) -> None:
    with trio.fail_after(LIMIT_S):
        async with qnet.open_node(chain4.address("alice")) as alice:
            s = alice.socket()
            await s.bind(PORT + 2)
            await s.listen()
            s.settimeout(0.2)
            with pytest.raises(Timeout):
                await s.accept()
            q = await alice.qubit()
            with pytest.raises(InvalidArgument):
                await alice.backend.gate("nope", (q.id,))
            with pytest.raises(NotFound):
                await alice.backend.measure(q.id + 10_000)
            await q.h()
            assert await q.measure("X") == 0
            c = alice.socket()
            with pytest.raises(NotFound):
                await c.connect(("bob", PORT + 3))  # nothing listens there
            assert not math.isnan(q.fidelity)
