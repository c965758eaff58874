"""``qnet.sim``'s own clock (``JumpClock``) and its alarms, and whole networks run on it.

Most tests here run on pytest-trio's autojump ``MockClock``, under which the drivers sleep on
cancel scopes; ``qnet.sim.run`` (scripts, benchmarks) uses ``JumpClock``, under which they
sleep on its alarms. The tests below take the ``jump_clock`` fixture, so pytest-trio runs them
on a ``JumpClock``: the same scenarios then go through the alarm path.
"""

from __future__ import annotations

import math

import pytest
import trio

from qnet.network.circuit_events import CloseCode
from qnet.network.routing_spf import path_fidelity
from qnet.sim import JumpClock, open_network
from qnet.sim import run as sim_run
from tests.network.circuithelpers import chain, idle, run_circuit, until


@pytest.fixture
def jump_clock() -> JumpClock:
    return JumpClock()


async def test_time_jumps_to_each_deadline_without_real_waiting(jump_clock: JumpClock) -> None:
    assert trio.current_time() == 0.0
    await trio.sleep(2.5)
    assert trio.current_time() == 2.5
    with trio.move_on_after(1.0):
        await trio.sleep_forever()
    assert trio.current_time() == 3.5


async def test_an_alarm_wakes_its_task_at_its_deadline(jump_clock: JumpClock) -> None:
    alarm = jump_clock.alarm()
    alarm.deadline = 1.25
    await alarm.wait()
    assert trio.current_time() == 1.25
    # A deadline that has passed: back at once (a checkpoint), no time passes.
    alarm.deadline = 1.0
    await alarm.wait()
    assert trio.current_time() == 1.25


async def test_moving_an_alarm_earlier_or_later_moves_the_wake_up(jump_clock: JumpClock) -> None:
    alarm = jump_clock.alarm()
    woke: list[float] = []

    async def sleeper() -> None:
        alarm.deadline = 10.0
        await alarm.wait()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.sleep(1.0)
        alarm.deadline = 2.0  # earlier
        await trio.sleep(0.5)
        alarm.deadline = 3.0  # later again: the 2.0 entry is stale
    assert woke == [3.0]


async def test_alarms_and_cancel_scopes_wake_in_time_order(jump_clock: JumpClock) -> None:
    order: list[tuple[str, float]] = []

    async def on_alarm(at: float) -> None:
        alarm = jump_clock.alarm()
        alarm.deadline = at
        await alarm.wait()
        order.append(("alarm", trio.current_time()))

    async def on_sleep(at: float) -> None:
        await trio.sleep_until(at)
        order.append(("sleep", trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_alarm, 2.0)
        nursery.start_soon(on_sleep, 1.0)
        nursery.start_soon(on_sleep, 3.0)
        nursery.start_soon(on_alarm, 0.5)
    assert order == [("alarm", 0.5), ("sleep", 1.0), ("alarm", 2.0), ("sleep", 3.0)]


async def test_a_task_waiting_on_an_alarm_can_be_cancelled(jump_clock: JumpClock) -> None:
    alarm = jump_clock.alarm()
    alarm.deadline = 5.0
    with trio.move_on_after(1.0):
        await alarm.wait()
    assert trio.current_time() == 1.0
    # The cancelled wait left nothing behind: the clock goes on to other deadlines.
    await trio.sleep(10.0)
    assert trio.current_time() == 11.0


async def test_an_alarm_set_to_infinity_sleeps_until_moved(jump_clock: JumpClock) -> None:
    alarm = jump_clock.alarm()
    woke: list[float] = []

    async def sleeper() -> None:
        alarm.deadline = math.inf
        await alarm.wait()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.sleep(4.0)
        assert woke == []
        alarm.deadline = 6.0
    assert woke == [6.0]


@pytest.mark.parametrize("hops", [1, 3])
async def test_circuit_pairs_on_the_jump_clock(jump_clock: JumpClock, hops: int) -> None:
    """The drivers' alarm path (node timers, backend heralds, fibre delays) delivers the same
    exact physics as the cancel-scope path the other tests take."""
    f = 0.95
    async with open_network(chain(hops + 1, source_fidelity=f)) as net:
        with trio.fail_after(60):
            run = await run_circuit(net, "n0", f"n{hops}", number=8, min_fidelity=0.6)
        assert [p.index for p in run.pairs] == list(range(8))
        assert run.head_closed is not None
        assert run.head_closed.code is CloseCode.COMPLETED
        expected = path_fidelity([f] * hops)
        for pair in run.pairs:
            assert pair.true_weights[0] == pytest.approx(expected, abs=1e-9)
            assert pair.head.fidelity_estimate == pytest.approx(expected, abs=1e-9)
        with trio.fail_after(5):
            await until(net, lambda: idle(net))


async def test_noisy_memories_on_the_jump_clock(jump_clock: JumpClock) -> None:
    """Depolarising memories: estimates follow the true state (both take the closed forms)."""
    topology = chain(4, source_fidelity=0.95, memory_depolar_rate_hz=20.0, memory_qubits=4)
    async with open_network(topology) as net:
        with trio.fail_after(60):
            run = await run_circuit(net, "n0", "n3", number=6, min_fidelity=0.5)
        for pair in run.pairs:
            assert pair.head.fidelity_estimate == pytest.approx(pair.true_weights[0], abs=1e-9)


def _pairs_of_one_run(seed: int) -> list[tuple[int, float]]:
    async def main() -> list[tuple[int, float]]:
        async with open_network(chain(3, source_fidelity=0.95, seed=seed)) as net:
            run = await run_circuit(net, "n0", "n2", number=5, min_fidelity=0.6)
            return [(p.head.qubit, p.true_weights[0]) for p in run.pairs]

    return sim_run(main)


def test_qnet_sim_run_repeats_for_a_seed() -> None:
    first = _pairs_of_one_run(4)
    assert len(first) == 5
    assert _pairs_of_one_run(4) == first
