"""qnet-channeld as a real process: start it, use it over gRPC, stop it cleanly."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest
import trio

from qnet.channel.client import open_channel_client
from qnet.demo.physics import correlation_signs
from qnet.physical.gates import Basis
from qnet.physical.params import LinkParams, NodeParams
from qnet.runtime.processes import start_channeld

pytestmark = pytest.mark.process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_generate_and_measure_pairs_through_the_daemon() -> None:
    pairs = 240
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon = await nursery.start(start_channeld, ["--seed", "3", "--time-scale", "0.2"])
            async with open_channel_client(daemon.address) as client:
                assert (await client.health()).serving
                alice = await client.register("alice", NodeParams(memory_qubits=8))
                bob = await client.register("bob", NodeParams(memory_qubits=8))
                theory = await alice.declare_link("bob", LinkParams(length_km=10))
                qa, qb = await alice.allocate(8), await bob.allocate(8)
                agree = dict.fromkeys((Basis.Z, Basis.X), 0)
                count = dict.fromkeys((Basis.Z, Basis.X), 0)
                async with alice.heralds() as ha, bob.heralds() as hb:
                    await alice.start_generation("bob", qa)
                    await bob.start_generation("alice", qb)
                    for k in range(pairs):
                        ea, eb = await anext(ha), await anext(hb)
                        assert ea.sequence == eb.sequence == k + 1
                        basis = (Basis.Z, Basis.X)[k % 2]
                        ma = await alice.measure(ea.qubit, basis, keep=True)
                        mb = await bob.measure(eb.qubit, basis, keep=True)
                        sign = correlation_signs(ea.bell_index)[basis]
                        agree[basis] += (ma == mb) == (sign == 1)
                        count[basis] += 1
                        await alice.start_generation("bob", [ea.qubit])
                        await bob.start_generation("alice", [eb.qubit])
                await alice.stop_generation("bob")
                await bob.stop_generation("alice")
                await alice.free(qa)
                await bob.free(qb)
                assert (await client.health()).qubits_in_use == 0
            nursery.cancel_scope.cancel()
    # The heralded state is w|Ψ±⟩⟨Ψ±| + (1 − w)|11⟩⟨11| with w = F. Sign-adjusted, ⟨ZZ⟩ =
    # w − (1 − w) and ⟨XX⟩ = w (|11⟩ has none), so the outcomes agree with the Bell state's
    # correlation with probability (1 + ⟨σσ⟩)/2: w in Z and (1 + w)/2 in X.
    w = theory.fidelity
    for basis, expected in ((Basis.Z, w), (Basis.X, (1 + w) / 2)):
        n = count[basis]
        bound = 5 * math.sqrt(expected * (1 - expected) / n) + 1 / n
        assert abs(agree[basis] / n - expected) <= bound, (basis, agree[basis], n, expected)
    assert not _alive(daemon.pid)


async def test_sigterm_stops_cleanly() -> None:
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "qnet.daemons.channeld", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive_some(1)
        assert b"ready on 127.0.0.1:" in line
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
        await proc.stdout.aclose()


async def test_busy_port_is_a_clear_error() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            first = await nursery.start(start_channeld, [])
            port = first.address.rsplit(":", 1)[1]
            result = await trio.run_process(
                [sys.executable, "-m", "qnet.daemons.channeld", "--port", port],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            nursery.cancel_scope.cancel()
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr.decode()
