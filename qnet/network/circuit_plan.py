"""A circuit's plan: per-link fidelity targets and the cutoff, from the end-to-end target.

The tail makes it when the setup arrives. Werner parameters (w = (4F − 1)/3) multiply along a
swapped chain, so the end-to-end target is split evenly over the links in w, after setting
aside what the swaps' gate noise, the tail's correction and memory waiting will cost:

    w_link = (w_target / (Π_swaps g · c_tail · D))^(1/k)

where g is each intermediate node's Bell-measurement factor, c the correction gates' factor,
and D the decay budget: every qubit of the chain may wait up to the cutoff, and the cutoff is
chosen so that one qubit's memory keeps ``WAIT_FACTOR`` of the Werner parameter over it (an
unswapped pair older than that is discarded). When the links deliver above their targets, the
fidelity left over lengthens the cutoff instead, so fewer pairs are thrown away. Each link's
target must be reachable by its link layer (``estimate.plan``, purifying if it must);
otherwise the circuit is UNSUPPORTED and the reason names the link.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from qnet.errors import Unsupported
from qnet.link import estimate
from qnet.network import bell_diagonal as bd
from qnet.physical.params import NodeParams
from qnet.topology import Topology

#: Werner-parameter share one qubit may lose to memory while it waits for its partner.
WAIT_FACTOR = 0.995
#: The longest any unswapped pair waits, whatever the memory (nothing waits forever).
MAX_CUTOFF_NS = 1_000_000_000
#: Targets are aimed this far above the split, so rounding in the plan never lands below.
_MARGIN = 1e-6
#: Extra delay before delivery the plan allows beyond the configured latency: link layers
#: plan with the delays they measure (heralds, peer round trips), which the tail cannot see,
#: so a link that only just reaches its target on paper would refuse it.
PLAN_SLACK_NS = 250_000


@dataclass(frozen=True, slots=True)
class CircuitPlan:
    link_fidelity: tuple[float, ...]
    cutoff_ns: int
    #: Slowest link's delivery rate at its target: a bound on the circuit's pair rate.
    rate_hz: float
    #: End-to-end fidelity if no qubit waited at all (the target is met with waiting).
    fidelity_no_wait: float


def cutoff_ns(nodes: list[NodeParams], keep: float = WAIT_FACTOR) -> int:
    """The longest wait (at most ``MAX_CUTOFF_NS``) that keeps the share ``keep`` of a
    Werner parameter in every one of these memories."""
    cut = MAX_CUTOFF_NS
    for params in nodes:
        if not params.noisy_memory or bd.idle_factor(params, cut) >= keep:
            continue
        lo, hi = 0, cut
        while hi - lo > 1000:
            mid = (lo + hi) // 2
            if bd.idle_factor(params, mid) >= keep:
                lo = mid
            else:
                hi = mid
        cut = lo
    return cut


def plan_circuit(
    path: tuple[str, ...], topology: Topology, min_fidelity: float, *, latency_ns: int = 0
) -> CircuitPlan:
    """Targets for every link of ``path``, or ``Unsupported`` naming what cannot be met."""
    if len(path) < 2:
        raise Unsupported(f"a circuit needs two nodes, path is {path!r}")
    params = [topology.node(name).params for name in path]
    k = len(path) - 1
    cut = cutoff_ns(params)
    factor = 1.0
    for mid in params[1:-1]:
        factor *= bd.werner_parameter(bd.bell_measurement(bd.PERFECT, bd.PERFECT, mid))
    factor *= bd.werner_parameter(bd.corrected(bd.PERFECT, 2, params[-1]))
    # Every qubit but the two ends' is swapped after at most one cutoff; the ends wait about
    # as long in all for the rest of the chain.
    factor *= WAIT_FACTOR ** (2 * k)
    w_target = (4.0 * min_fidelity - 1.0) / 3.0
    if w_target <= 0.0:
        w_link = 0.0
    elif factor <= 0.0 or w_target >= factor:
        raise Unsupported(
            f"fidelity {min_fidelity:.4f} over {k} links is beyond what swapping and memory"
            f" on {'-'.join(path)} allow (even perfect links give at most"
            f" {(1 + 3 * factor) / 4:.4f})"
        )
    else:
        w_link = (w_target / factor) ** (1.0 / k)
    f_link = min(1.0, (1.0 + 3.0 * w_link) / 4.0 + _MARGIN) if w_target > 0 else 0.0
    targets: list[float] = []
    delivered: list[float] = []
    rate = math.inf
    for a, b in itertools.pairwise(path):
        link = topology.link(a, b).params
        master, slave = sorted((a, b))
        found = estimate.plan(
            link,
            topology.node(master).params,
            topology.node(slave).params,
            f_link,
            latency_ns + PLAN_SLACK_NS,
        )
        if found is None:
            raise Unsupported(
                f"link {a}-{b} cannot deliver fidelity {f_link:.4f}, which {k} links need for"
                f" {min_fidelity:.4f} end to end"
            )
        targets.append(f_link)
        delivered.append(found.fidelity)
        rate = min(rate, found.rate_hz)
    # Links usually deliver above their targets (no bright-state knob, or a coarse one): what
    # the end-to-end target leaves over buys longer waits, so fewer pairs are cut off.
    no_wait = factor / WAIT_FACTOR ** (2 * k) * math.prod((4.0 * f - 1.0) / 3.0 for f in delivered)
    if w_target > 0.0 and no_wait > w_target:
        per_qubit = (w_target / no_wait) ** (1.0 / (2 * k))
        cut = max(cut, cutoff_ns(params, per_qubit))
    return CircuitPlan(tuple(targets), cut, rate, (1.0 + 3.0 * no_wait) / 4.0)
