"""Datagrams between any two nodes of a qnet.sim network, forwarded along the routes."""

from __future__ import annotations

import pytest
import trio

from qnet.errors import AlreadyExists, InvalidArgument, Unreachable
from qnet.network.datagram import DatagramCore, NetDatagram
from qnet.sim import open_network
from tests.network.circuithelpers import chain
from tests.network.linkhelpers import example


async def test_a_datagram_crosses_the_network_in_order(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(chain(5)) as net:
        # (protocol 1 is the transport layer's own)
        inbox = net.node("n4").listen_datagrams(5)
        for i in range(20):
            net.node("n0").send_datagram("n4", 5, f"hello {i}".encode())
        with trio.fail_after(1):
            got = [await inbox.receive() for _ in range(20)]
        assert [d.payload for d in got] == [f"hello {i}".encode() for i in range(20)]
        assert {d.source for d in got} == {"n0"}
        assert net.node("n2").datagrams.counters["forwarded"] == 20


async def test_datagrams_follow_the_best_route_and_reroute(autojump_clock: trio.abc.Clock) -> None:
    async with open_network(example("diamond")) as net:
        inbox = net.node("bob").listen_datagrams(7)
        net.node("alice").send_datagram("bob", 7, b"via r1")
        with trio.fail_after(1):
            assert (await inbox.receive()).payload == b"via r1"
        assert net.node("r1").datagrams.counters["forwarded"] == 1
        await net.stop_node("r1")
        routing = net.node("alice").routing
        with trio.fail_after(5):
            version = routing.version
            while net.node("alice").route("bob").next_hop != "r2":
                version = await routing.wait_changed(version)
        net.node("alice").send_datagram("bob", 7, b"via r2")
        with trio.fail_after(1):
            assert (await inbox.receive()).payload == b"via r2"
        assert net.node("r2").datagrams.counters["forwarded"] == 1


async def test_no_route_is_a_typed_error_and_bad_input_is_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_network(chain(3)) as net:
        with pytest.raises(Unreachable):
            net.node("n0").send_datagram("elsewhere", 1, b"x")
        with pytest.raises(InvalidArgument):
            net.node("n0").send_datagram("n2", 1, "not bytes")  # type: ignore[arg-type]
        net.node("n2").listen_datagrams(9)
        with pytest.raises(AlreadyExists):
            net.node("n2").listen_datagrams(9)
        with pytest.raises(AlreadyExists):
            net.node("n2").listen_datagrams(1)  # the transport layer's


def test_a_spent_hop_limit_or_a_route_back_drops_the_datagram() -> None:
    core = DatagramCore("m", lambda destination: "a")
    core.on_message("b", NetDatagram("b", "z", 1, 1, b"x"))
    core.on_message("a", NetDatagram("b", "z", 5, 1, b"x"))  # would go straight back to a
    assert core.pop_outputs() == []
    assert core.counters["dropped"] == 2
    core.on_message("b", NetDatagram("b", "z", 5, 1, b"x"))
    (out,) = core.pop_outputs()
    assert out.message.hop_limit == 4  # type: ignore[union-attr]
