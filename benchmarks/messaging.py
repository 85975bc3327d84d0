"""Benchmark reliable messaging between two node runtimes on the emulated stack.

Run ``python benchmarks/messaging.py`` (``--quick`` for fewer messages). For each mode it starts a fresh
stack with an aggregator and one analysis node and measures:

- **hop latency**: from the start of ``send_message`` on the sender until ``await_messages`` returns
  on the receiver (the receiver is already waiting), one message at a time, after a warm-up; reported
  as p50, p99 and mean in ms. ``ack p50`` is the sender's view: until ``send_message`` returned with
  the acknowledgement;
- **throughput**: acknowledged messages per second when many messages are sent at once
  (``--throughput`` messages, at most ``--concurrency`` in flight), until all are acknowledged.

Modes: ``served`` (stack served by uvicorn on loopback, both analysis APIs served by uvicorn: every
hop is real HTTP) and ``inprocess`` (httpx's ASGI transport, no sockets). The baseline is a raw httpx
POST round trip to a trivial uvicorn endpoint on loopback, with and without ``TCP_NODELAY`` on the
server's connections (a listening socket of protocol 0 gets none from asyncio: Nagle's algorithm then
holds every response body back until the client's delayed ACK, about 40 ms).

Everything runs on one asyncio event loop in one process (stack, both nodes, their uvicorn servers),
unlike a real deployment where each node is its own process: the throughput is bounded by one CPU.
A hop is three HTTP exchanges (sender -> its broker; broker -> the receiver's sidecar; sidecar -> the
analysis API), so about three raw round trips is its floor. Two environment factors matter and are
printed: whether ``sniffio`` is importable (httpcore 1.0.x tries ``import sniffio`` whenever it creates
a lock; when it is missing every such failed import scans ``sys.path``, ~1.5 ms per hop here) and
``--uvloop``. The script reports; it always exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flame.clients.base import RetryPolicy
from flame.node import AsyncNode, Timeouts
from flame.sim.launch import Mode, start_node
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack

TARGET_P50_MS = 5.0
TIMEOUTS = Timeouts(startup=10.0, request=10.0, send=30.0, attempt=5.0, await_messages=10.0, shutdown=5.0)


@dataclass
class Result:
    name: str
    p50: float
    p99: float
    mean: float
    ack_p50: float | None = None
    rate: float | None = None
    resent: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, seconds: list[float]) -> Result:
    ms = [s * 1000 for s in seconds]
    return Result(name, percentile(ms, 0.5), percentile(ms, 0.99), statistics.fmean(ms))


# -- baseline: one raw HTTP round trip ----------------------------------------------------------------


async def _trivial_app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _listen(proto: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def baseline(requests: int, nodelay: bool) -> Result:
    """Raw httpx POST round trips (keep-alive) to a trivial uvicorn endpoint on loopback."""
    sock = _listen(socket.IPPROTO_TCP if nodelay else 0)
    server = uvicorn.Server(uvicorn.Config(_trivial_app, lifespan="off", log_level="warning"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    times: list[float] = []
    try:
        async with httpx.AsyncClient() as client:
            for i in range(requests + 20):
                began = time.perf_counter()
                answer = await client.post(url, json={"i": i, "pad": "x" * 200})
                elapsed = time.perf_counter() - began
                assert answer.status_code == 200
                if i >= 20:
                    times.append(elapsed)
    finally:
        server.should_exit = True
        await task
    label = "raw POST, server TCP_NODELAY" if nodelay else "raw POST, server without NODELAY"
    return summary(label, times)


# -- messaging ----------------------------------------------------------------------------------------


async def hop_latencies(
    sender: AsyncNode, receiver: AsyncNode, count: int
) -> tuple[list[float], list[float]]:
    """Per message: (send start -> receiver's await returns, send start -> send acknowledged)."""
    hops: list[float] = []
    acks: list[float] = []
    for i in range(count):
        waiting = asyncio.ensure_future(receiver.await_messages([sender.node_id], "bench", timeout=10))
        await asyncio.sleep(0)  # the receiver is waiting before the send starts
        began = time.perf_counter()
        sending = asyncio.ensure_future(sender.send_message([receiver.node_id], "bench", {"i": i}))
        await waiting
        hops.append(time.perf_counter() - began)
        acked, missing = await sending
        acks.append(time.perf_counter() - began)
        assert acked == [receiver.node_id] and not missing, (acked, missing)
    return hops, acks


async def throughput(sender: AsyncNode, receiver: AsyncNode, count: int, concurrency: int) -> float:
    """Acknowledged messages per second, ``concurrency`` sends in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            acked, missing = await sender.send_message([receiver.node_id], "flood", {"i": i})
            assert acked and not missing

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - began
    found = await receiver.await_messages([sender.node_id], "flood", timeout=10)
    assert len(found[sender.node_id] or []) == count
    return count / elapsed


async def messaging(name: str, mode: Mode, args: argparse.Namespace) -> Result:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False, delivery_timeout=500.0))
    await stack.start()
    if mode == "served":
        await stack.serve()
    retry = RetryPolicy(attempts=3, base_delay=0.05)
    nodes: list[AsyncNode] = []
    try:
        sender = await start_node(stack, "node-1", mode, timeouts=TIMEOUTS, retry=retry)
        nodes.append(sender)
        receiver = await start_node(stack, "aggregator", mode, timeouts=TIMEOUTS, retry=retry)
        nodes.append(receiver)
        await hop_latencies(sender, receiver, args.warmup)
        hops, acks = await hop_latencies(sender, receiver, args.messages)
        rate = await throughput(sender, receiver, args.throughput, args.concurrency)
        result = summary(name, hops)
        result.ack_p50 = percentile([a * 1000 for a in acks], 0.5)
        result.rate = rate
        result.resent = sender.messenger.resent
        return result
    finally:
        for node in nodes:
            await node.stop()
        await stack.aclose()


def table(results: list[Result]) -> str:
    header = f"{'scenario':<36} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'ack p50':>8} {'msgs/s':>8} {'resent':>6}"
    lines = [header, "-" * len(header)]
    for r in results:
        ack = f"{r.ack_p50:8.2f}" if r.ack_p50 is not None else f"{'':>8}"
        rate = f"{r.rate:8.0f}" if r.rate is not None else f"{'':>8}"
        resent = f"{r.resent:6d}" if r.rate is not None else f"{'':>6}"
        lines.append(f"{r.name:<36} {r.p50:8.2f} {r.p99:8.2f} {r.mean:8.2f} {ack} {rate} {resent}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    results = [
        await baseline(args.messages, nodelay=True),
        await baseline(args.messages, nodelay=False),
        await messaging("served", "served", args),
        await messaging("inprocess", "inprocess", args),
    ]
    print(
        f"hop latency over {args.messages} messages after {args.warmup} warm-up; throughput: "
        f"{args.throughput} messages, {args.concurrency} in flight; Python {sys.version.split()[0]}, "
        f"loop {type(asyncio.get_running_loop()).__module__.split('.')[0]}, sniffio importable: "
        f"{importlib.util.find_spec('sniffio') is not None}"
    )
    print(table(results))
    served = results[2]
    verdict = "yes" if served.p50 < TARGET_P50_MS else "no"
    print(f"\nserved p50 < {TARGET_P50_MS:g} ms: {verdict} ({served.p50:.2f} ms)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="timed messages for the hop latency")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--throughput", type=int, default=500, help="messages of the throughput run")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="50 messages, 100 for throughput")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.warmup, args.throughput = 50, 5, 100
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    arguments = parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(arguments))
