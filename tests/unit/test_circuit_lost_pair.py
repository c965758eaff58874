"""A link pair the head loses after the tail delivered its end-to-end pair (the link layer ends
the request with EXPIRED: the slave lost its half after the master delivered). The head can
never deliver that index, so the circuit ends at both ends with a reason; nothing waits."""

from __future__ import annotations

from qnet.link.events import CreateErr, ErrorCode, Kind, PairOk
from qnet.network.circuit import CircuitCore, Output
from qnet.network.circuit_events import (
    CircuitClosed,
    CloseCode,
    EndToEndPair,
    LinkCreate,
    ToPeer,
)
from tests.network.circuithelpers import chain

NAMES = ("n0", "n1")


class OneHop:
    """Head n0 and tail n1, their messages delivered at once unless held back."""

    def __init__(self) -> None:
        topology = chain(len(NAMES))
        self.cores = {n: CircuitCore(n, topology) for n in NAMES}
        self.outputs: dict[str, list[Output]] = {n: [] for n in NAMES}
        self.held: list[tuple[str, ToPeer]] = []
        self.hold = False
        self.cid = self.cores["n0"].open(NAMES, 0.6, 0, 0)
        self.pump()
        (create,) = [o for o in self.outputs["n0"] if isinstance(o, LinkCreate)]
        self.label = create.request.purpose
        self.qubit = 100

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for name, core in self.cores.items():
                for out in core.pop_outputs():
                    if isinstance(out, ToPeer) and self.hold:
                        self.held.append((name, out))
                    elif isinstance(out, ToPeer):
                        self.cores[out.peer].on_message(name, out.message, 0)
                        moved = True
                    else:
                        self.outputs[name].append(out)

    def release(self) -> None:
        self.hold = False
        for name, out in self.held:
            self.cores[out.peer].on_message(name, out.message, 0)
        self.held.clear()
        self.pump()

    def link_pair(self, node: str, seq: int) -> None:
        self.qubit += 1
        ok = PairOk(
            "n0", 1, self.label, ("n0-n1", seq), Kind.KEEP, self.qubit, None, None, 0, 0.95, 0,
            seq,
        )  # fmt: skip
        self.cores[node].on_link_pair(NAMES[1 - NAMES.index(node)], ok, None, 0)
        self.pump()

    def expired(self, node: str, seqs: tuple[int, int]) -> None:
        reason = "n0 lost its half of pair"
        err = CreateErr("n0", 1, ErrorCode.EXPIRED, seqs, reason, purpose=self.label)
        self.cores[node].on_link_error(NAMES[1 - NAMES.index(node)], err, 0)
        self.pump()

    def delivered(self, node: str) -> list[int]:
        return [o.index for o in self.outputs[node] if isinstance(o, EndToEndPair)]

    def closed(self, node: str) -> CircuitClosed | None:
        return next((o for o in self.outputs[node] if isinstance(o, CircuitClosed)), None)


def test_pairs_both_ends_hold_are_delivered_at_both() -> None:
    hop = OneHop()
    hop.link_pair("n1", 1)
    hop.link_pair("n0", 1)
    assert hop.delivered("n0") == hop.delivered("n1") == [0]


def test_a_completion_waiting_for_a_half_the_head_lost_ends_the_circuit() -> None:
    hop = OneHop()
    hop.link_pair("n1", 1)  # the tail completes index 0 at once
    assert hop.delivered("n1") == [0]
    hop.expired("n0", (1, 1))
    hop.expired("n1", (1, 1))
    for node in NAMES:
        closed = hop.closed(node)
        assert closed is not None, node
        assert closed.code is CloseCode.UNREACHABLE
        assert "lost its half of an end-to-end pair" in closed.reason
    assert hop.delivered("n0") == []
    assert hop.cores["n0"].counters["lost_after_delivery"] == 1
    assert hop.cores["n0"].reserved == hop.cores["n1"].reserved == 0


def test_a_completion_arriving_after_the_loss_ends_the_circuit_too() -> None:
    hop = OneHop()
    hop.hold = True  # the tail's PairComplete is still on its way
    hop.link_pair("n1", 1)
    hop.expired("n0", (1, 1))
    assert hop.closed("n0") is None
    hop.release()
    closed = hop.closed("n0")
    assert closed is not None
    assert closed.code is CloseCode.UNREACHABLE
    assert hop.closed("n1") is not None


def test_a_loss_before_the_tail_saw_the_pair_costs_nothing() -> None:
    hop = OneHop()
    hop.expired("n1", (1, 1))
    hop.expired("n0", (1, 1))
    hop.link_pair("n1", 2)
    hop.link_pair("n0", 2)
    assert hop.closed("n0") is None
    assert hop.closed("n1") is None
    assert hop.delivered("n0") == hop.delivered("n1") == [0]
