"""A short soak (tests/bench/soak.py): 10 application connections over every pair of chain4's
nodes, exchanging measure-directly pairs and messages for 15 s through `qnet up` daemons, with
memory enough for every connection's circuit. No call may fail, every daemon's resident memory
may grow by at most GROWTH_BYTES, and once every connection closed the backend holds no qubit
for any application (the link layers then hold none either: nothing asks them for pairs).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from tests.bench.soak import run_soak, soak_topology
from tests.process.test_circuits_process import CHAIN4, _up
from tests.process.test_qnet_up import Network

pytestmark = pytest.mark.process

CONNECTIONS = 10
DURATION_S = 15.0
#: Resident memory one daemon may gain over the soak: its buffers and counters warm up, then
#: stay (tens of MiB would be a leak of per-round state).
GROWTH_BYTES = 16 * 2**20


@pytest.fixture(scope="module")
def chain4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    topology = soak_topology(CHAIN4, 4 * CONNECTIONS + 16, tmp_path_factory.mktemp("soak"))
    yield from _up(topology, tmp_path_factory)


async def test_short_soak(chain4: Network) -> None:
    with trio.fail_after(DURATION_S + 60):
        result = await run_soak(
            chain4.run_dir, connections=CONNECTIONS, duration_s=DURATION_S, call_timeout_s=20
        )
    print("\n" + "\n".join(result.lines()))
    assert not result.failures, result.failures
    assert sum(result.errors.values()) == 0
    assert result.pairs > 0
    assert result.messages == result.pairs  # a message each way per round, as pairs are 2
    for name, start in result.rss_start.items():
        assert result.rss_end[name] - start <= GROWTH_BYTES, (name, start, result.rss_end[name])
    assert result.qubits_end == 0, result.qubits_by_node_end
