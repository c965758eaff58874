"""Settings of the routing core, its convergence bound and the not-converged error."""

from __future__ import annotations

from dataclasses import dataclass

from qnet.errors import InvalidArgument
from qnet.errors import NotConverged as NotConverged  # re-exported: routing raises it

_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Timers and the fidelity threshold. The hello settings and the threshold must be equal
    on every node (hellos carry them and a mismatch is refused)."""

    hello_interval_ns: int = 1 * _S
    #: A neighbour silent this long is dead; a few hello intervals.
    dead_interval_ns: int = 4 * _S
    #: Unacknowledged adverts and database requests are resent this often.
    retransmit_interval_ns: int = _S // 4
    #: The origin re-sends an unchanged advert this often; keep max_age − refresh above the
    #: time an advert takes to cross the network.
    advert_refresh_ns: int = 900 * _S
    max_age_ns: int = 1800 * _S
    #: Links are costed at the rate that reaches this fidelity (``routing_spf.link_metrics``);
    #: a link advertised below it is not used.
    fidelity_threshold: float = 0.8
    #: How long after ``start`` a node listens before its first table is final (every live
    #: neighbour has said hello by then); None: one dead interval. Two hello intervals are
    #: enough for that, and a dead interval sized to ride out a busy daemon would only delay
    #: the first routes.
    startup_wait_ns: int | None = None

    @property
    def startup_ns(self) -> int:
        return self.dead_interval_ns if self.startup_wait_ns is None else self.startup_wait_ns

    def __post_init__(self) -> None:
        for name in (
            "hello_interval_ns",
            "dead_interval_ns",
            "retransmit_interval_ns",
            "advert_refresh_ns",
            "max_age_ns",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
        if self.dead_interval_ns <= self.hello_interval_ns:
            raise InvalidArgument("dead_interval_ns must exceed hello_interval_ns")
        if self.advert_refresh_ns >= self.max_age_ns:
            raise InvalidArgument("advert_refresh_ns must be below max_age_ns")
        wait = self.startup_wait_ns
        if wait is not None and (isinstance(wait, bool) or not isinstance(wait, int) or wait <= 0):
            raise InvalidArgument(f"startup_wait_ns must be a positive integer, got {wait!r}")
        threshold = self.fidelity_threshold
        if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
            raise InvalidArgument(f"fidelity_threshold must be in [0, 1], got {threshold!r}")


def convergence_bound_ns(config: RoutingConfig, hops: int, max_delay_ns: int) -> int:
    """D + (k + 5)·d: the bound of the module docstring, for k = ``hops`` and d =
    ``max_delay_ns``, without message loss."""
    return max(config.dead_interval_ns, config.startup_ns) + (hops + 5) * max_delay_ns
