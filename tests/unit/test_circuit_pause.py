"""Pausing a circuit in the core: every hop withdraws its link request and asks again on
resume; each end's pause is its own; both are idempotent and legal at either end."""

from __future__ import annotations

import pytest

from qnet.errors import InvalidArgument
from qnet.link.events import CreateErr, ErrorCode
from qnet.network.circuit import CircuitCore, Output
from qnet.network.circuit_events import (
    CircuitId,
    CircuitPause,
    CircuitResume,
    LinkCancel,
    LinkCreate,
    ToPeer,
)
from tests.network.circuithelpers import chain

NAMES = ("n0", "n1", "n2", "n3")


class Path:
    """Four circuit cores on a chain, their messages delivered at once, in order; every other
    output is kept per node for the test to look at."""

    def __init__(self) -> None:
        topology = chain(len(NAMES))
        self.cores = {n: CircuitCore(n, topology) for n in NAMES}
        self.outputs: dict[str, list[Output]] = {n: [] for n in NAMES}
        self.now = 0
        self.cid: CircuitId = self.cores["n0"].open(NAMES, 0.6, 0, self.now)
        self.pump()

    def pump(self) -> None:
        while True:
            moved = False
            for name, core in self.cores.items():
                for out in core.pop_outputs():
                    if isinstance(out, ToPeer):
                        self.cores[out.peer].on_message(name, out.message, self.now)
                        moved = True
                    else:
                        self.outputs[name].append(out)
            if not moved:
                return

    def take(self, name: str) -> list[Output]:
        out, self.outputs[name] = self.outputs[name], []
        return out

    def take_all(self) -> dict[str, list[Output]]:
        return {n: self.take(n) for n in NAMES}

    def cancelled(self, name: str) -> None:
        """The link layer ended ``name``'s withdrawn request with CANCELLED."""
        label = self.cores[name].circuits()[self.cid].label
        assert label is not None
        err = CreateErr(name, 1, ErrorCode.CANCELLED, None, "cancelled", purpose=label)
        peer = NAMES[NAMES.index(name) + 1]
        self.cores[name].on_link_error(peer, err, self.now)
        self.pump()


def _creates(outs: list[Output]) -> list[LinkCreate]:
    return [o for o in outs if isinstance(o, LinkCreate)]


def _cancels(outs: list[Output]) -> list[LinkCancel]:
    return [o for o in outs if isinstance(o, LinkCancel)]


def test_an_open_circuit_asks_every_link_for_pairs() -> None:
    path = Path()
    outs = path.take_all()
    assert [len(_creates(outs[n])) for n in NAMES] == [1, 1, 1, 0]


@pytest.mark.parametrize("end", ["n0", "n3"])
def test_a_pause_at_either_end_withdraws_every_hops_request(end: str) -> None:
    path = Path()
    path.take_all()
    path.cores[end].pause(path.cid, path.now)
    path.pump()
    outs = path.take_all()
    for name in NAMES[:-1]:
        (cancel,) = _cancels(outs[name])
        assert cancel.peer == NAMES[NAMES.index(name) + 1]
        assert not _creates(outs[name])
    assert all(core.is_paused(path.cid) for core in path.cores.values())
    # The link layer's CANCELLED asks for no retry, and leaves no timer behind to spin on.
    for name in NAMES[:-1]:
        path.cancelled(name)
    assert not any(_creates(o) for o in path.take_all().values())
    for core in path.cores.values():
        assert core.circuits()[path.cid].retry_at is None
    # Pausing again changes nothing and says nothing.
    path.cores[end].pause(path.cid, path.now)
    path.pump()
    assert path.take_all() == {n: [] for n in NAMES}
    # Resuming asks every link again, at once.
    path.cores[end].resume(path.cid, path.now)
    path.pump()
    outs = path.take_all()
    assert [len(_creates(outs[n])) for n in NAMES] == [1, 1, 1, 0]
    assert not any(core.is_paused(path.cid) for core in path.cores.values())
    path.cores[end].resume(path.cid, path.now)
    path.pump()
    assert path.take_all() == {n: [] for n in NAMES}


def test_a_resume_before_the_cancel_lands_waits_for_it_rather_than_ask_twice() -> None:
    path = Path()
    path.take_all()
    path.cores["n0"].pause(path.cid, path.now)
    path.pump()
    path.take_all()
    path.cores["n0"].resume(path.cid, path.now)
    path.pump()
    # The withdrawn streams are still winding down: no second one beside them yet.
    assert not any(_creates(o) for o in path.take_all().values())
    for name in NAMES[:-1]:
        path.cancelled(name)
        (create,) = _creates(path.take(name))
        assert create.request.remote == NAMES[NAMES.index(name) + 1]


def test_each_ends_pause_holds_until_that_end_resumes() -> None:
    path = Path()
    path.take_all()
    path.cores["n0"].pause(path.cid, path.now)
    path.cores["n3"].pause(path.cid, path.now)
    path.pump()
    for name in NAMES[:-1]:
        path.cancelled(name)
    path.take_all()
    path.cores["n0"].resume(path.cid, path.now)
    path.pump()
    assert not any(_creates(o) for o in path.take_all().values())
    assert all(core.is_paused(path.cid) for core in path.cores.values())
    path.cores["n3"].resume(path.cid, path.now)
    path.pump()
    outs = path.take_all()
    assert [len(_creates(outs[n])) for n in NAMES] == [1, 1, 1, 0]


def test_a_circuit_paused_during_setup_opens_without_asking_for_pairs() -> None:
    topology = chain(3)
    cores = {n: CircuitCore(n, topology) for n in ("n0", "n1", "n2")}
    cid = cores["n0"].open(("n0", "n1", "n2"), 0.6, 0, 0)
    cores["n0"].pause(cid, 0)
    # Setup, then the pause, hop by hop in order; the accept comes back.
    pending = [("n0", o) for o in cores["n0"].pop_outputs()]
    creates = []
    while pending:
        sender, out = pending.pop(0)
        if isinstance(out, ToPeer):
            cores[out.peer].on_message(sender, out.message, 0)
            pending += [(out.peer, o) for o in cores[out.peer].pop_outputs()]
        elif isinstance(out, LinkCreate):
            creates.append(out)
    assert creates == []
    assert all(core.is_paused(cid) for core in cores.values())


def test_only_an_end_pauses() -> None:
    path = Path()
    with pytest.raises(InvalidArgument):
        path.cores["n1"].pause(path.cid, path.now)
    with pytest.raises(InvalidArgument):
        path.cores["n0"].resume(("n0", 99), path.now)


def test_pause_messages_from_the_wrong_neighbour_are_counted_not_obeyed() -> None:
    path = Path()
    path.take_all()
    path.cores["n1"].on_message("n3", CircuitPause("n0", path.cid[1]), path.now)
    path.cores["n1"].on_message("n0", CircuitResume("n0", 77), path.now)
    assert path.cores["n1"].counters["unknown_messages"] == 2
    assert not path.cores["n1"].is_paused(path.cid)
