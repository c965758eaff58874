"""The link-state database's entries and the order of adverts from one origin."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from qnet.network.routing_events import AdvertLink, LinkStateAdvert


@dataclass(frozen=True, slots=True)
class DbEntry:
    """An advert as this node holds it: the advert as received and when."""

    advert: LinkStateAdvert
    received_ns: int

    def age(self, now: int) -> int:
        return self.advert.age_ns + now - self.received_ns

    def expiry(self, max_age_ns: int) -> int:
        return self.received_ns + max_age_ns - self.advert.age_ns


def advert_content(advert: LinkStateAdvert) -> tuple[int, tuple[AdvertLink, ...]]:
    """What SPF reads of an advert (not its seq or age)."""
    return advert.memory_qubits, advert.links


def compare_adverts(a: LinkStateAdvert, b: LinkStateAdvert) -> int:
    """Which of two adverts from one origin is newer (1: ``a``, -1: ``b``, 0: the same).
    The higher seq; for equal seqs and different content (an origin that restarted and
    reached its old seq again) the larger digest, as OSPF compares checksums, so every node
    picks the same one and the origin, seeing a version of its own above its current one,
    jumps past it."""
    if a.seq != b.seq:
        return 1 if a.seq > b.seq else -1
    if advert_content(a) == advert_content(b):
        return 0
    da, db = _digest(a), _digest(b)
    return 1 if da > db else -1


def _digest(advert: LinkStateAdvert) -> str:
    body = {"memory_qubits": advert.memory_qubits, "links": advert.to_dict()["links"]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
