"""Throughput of the trio <-> grpcio bridge on loopback: unary calls/s, stream messages/s.

Usage: python tests/bench/bench_bridge.py [--runs 5] [--calls 2000] [--messages 20000]
Prints the median of the runs; messages are 16 bytes, calls are sequential.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import AsyncIterator
from functools import partial

import grpc
import trio

from qnet.runtime.grpc_bridge import (
    TrioGrpcBridge,
    close_channel,
    insecure_channel,
    serve,
    server_stream,
    unary_call,
)

PAYLOAD = b"x" * 16


async def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


async def flood(request: bytes, context: grpc.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(int(request)):
        yield PAYLOAD


async def bench(runs: int, calls: int, messages: int) -> tuple[float, float]:
    bridge = TrioGrpcBridge()
    handler = grpc.method_handlers_generic_handler(
        "bench.Bridge",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(bridge.unary_unary(echo)),
            "Flood": grpc.unary_stream_rpc_method_handler(bridge.unary_stream(flood)),
        },
    )

    def register(server: grpc.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    unary_rates: list[float] = []
    stream_rates: list[float] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, register))
        channel = insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary("/bench.Bridge/Echo", None, None)
        stream = channel.unary_stream("/bench.Bridge/Flood", None, None)
        await unary_call(call, PAYLOAD)  # connect before timing
        for _ in range(runs):
            start = trio.current_time()
            for _ in range(calls):
                await unary_call(call, PAYLOAD)
            unary_rates.append(calls / (trio.current_time() - start))

            start = trio.current_time()
            received = 0
            async with server_stream(stream, b"%d" % messages) as responses:
                async for _ in responses:
                    received += 1
            assert received == messages
            stream_rates.append(messages / (trio.current_time() - start))
        await close_channel(channel)
        nursery.cancel_scope.cancel()
    return statistics.median(unary_rates), statistics.median(stream_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    unary_rate, stream_rate = trio.run(bench, args.runs, args.calls, args.messages)
    print(f"unary calls/s (median of {args.runs}):          {unary_rate:,.0f}")
    print(f"server-stream messages/s (median of {args.runs}): {stream_rate:,.0f}")


if __name__ == "__main__":
    main()
