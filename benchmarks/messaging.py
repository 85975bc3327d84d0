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
request of a node and every webhook to an analysis API is real HTTP) and ``inprocess`` (httpx's ASGI transport, no sockets). The baseline is a raw httpx
POST round trip to a trivial uvicorn endpoint on loopback, with and without ``TCP_NODELAY`` on the
server's connections (a listening socket of protocol 0 gets none from asyncio: Nagle's algorithm then
holds every response body back until the client's delayed ACK, about 40 ms).

Everything runs on one asyncio event loop in one process (stack, both nodes, their uvicorn servers),
unlike a real deployment where each node is its own process: the throughput is bounded by one CPU.
``--processes`` measures that deployment instead: the stack served in one process, the aggregator and
node-1 each a process of its own started from a container's environment (``--src DIR`` or
``--baseline-src DIR`` runs an older source tree, interleaved with this one, ``--repeats`` times each):
ping-pong (send until acknowledged plus the reply) p50/p99, acknowledged messages per second, and the
CPU time of all three processes per message, the figure a loaded machine distorts least, and the HTTP
requests both nodes made per message (what each message costs the stack).
A hop is two HTTP exchanges between processes (sender -> its broker; the receiver's sidecar -> the
analysis API) and an in-process hand-over inside the stack (broker -> the receiver's sidecar), so about
two raw round trips is its floor. Two environment factors matter and are
printed: whether ``sniffio`` is importable (httpcore 1.0.x tries ``import sniffio`` whenever it creates
a lock; when it is missing every such failed import scans ``sys.path``, ~1.5 ms per hop here) and
``--uvloop``. The script reports; it always exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

# ``--src DIR``: the SDK source tree to measure (an older commit's, for a baseline); else this checkout's
sys.path.insert(
    0,
    str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve())
    if "--src" in sys.argv
    else str(Path(__file__).resolve().parents[1] / "src"),
)

from flame.clients.base import RetryPolicy
from flame.config import NodeConfig
from flame.node import AsyncNode, Timeouts
from flame.sim.launch import Mode, start_node
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack

SRC = sys.path[0]
TARGET_P50_MS = 5.0
TARGET_P99_MS = 15.0
TARGET_RATE = 1000.0
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


# -- nodes as separate processes ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _line(stream: asyncio.StreamReader, timeout: float, what: str) -> str:
    raw = await asyncio.wait_for(stream.readline(), timeout)
    if not raw:
        raise RuntimeError(f"the {what} process ended without answering")
    return raw.decode().strip()


async def processes_case(args: argparse.Namespace) -> dict[str, Any]:
    """The stack served in this process; the aggregator and node-1 each in a process of their own.

    As on FLAME: each node's analysis serves its API on a port of its own, and every hop between
    processes is real HTTP on loopback (sender -> its sidecar and broker; the receiver's sidecar ->
    its analysis API; the acknowledgement back the same way); the broker hands a webhook to the
    receiver's sidecar inside the stack's process.
    """
    cpu_began = time.process_time()
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False, delivery_timeout=500.0))
    await stack.start()
    await stack.serve()
    # The stack stands in for services that are not this Python process on FLAME: its start-up objects
    # are exempt from the cycle collector's full collections (40-80 ms pauses here otherwise), for
    # every tree measured alike
    gc.collect(1)
    gc.freeze()
    children: list[asyncio.subprocess.Process] = []
    try:
        parties = {"aggregator": "receiver", "node-1": "sender"}
        for name, role in parties.items():  # the receiver first: it is subscribed before the sender starts
            port = _free_port()
            stack.attach_analysis(name, f"http://127.0.0.1:{port}")
            env = {
                **{
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith("FLAME_") or k == "FLAME_BENCH_PROFILE"
                },
                **stack.env(name),
                "FLAME_ANALYSIS_PORT": str(port),
                "FLAME_ANALYSIS_HOST": "127.0.0.1",
            }
            argv = [sys.executable, str(Path(__file__).resolve()), "--party", role, "--src", SRC]
            argv += ["--messages", str(args.messages), "--warmup", str(args.warmup)]
            argv += ["--throughput", str(args.throughput), "--concurrency", str(args.concurrency)]
            child = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE)
            children.append(child)
            assert child.stdout is not None
            ready = await _line(child.stdout, 60, role)
            if ready != "ready":
                raise RuntimeError(f"the {role} process said {ready!r} instead of ready")
        sender = children[1]
        assert sender.stdout is not None
        result: dict[str, Any] = json.loads(await _line(sender.stdout, 600, "sender"))
        receiver = children[0]
        assert receiver.stdout is not None
        received: dict[str, Any] = json.loads(await _line(receiver.stdout, 60, "receiver"))
        for child in children:
            await asyncio.wait_for(child.wait(), 60)
            if child.returncode != 0:
                raise RuntimeError(f"a node process exited with {child.returncode}")
        result["deliveries_dropped"] = len(stack.events.select("delivery.dropped"))
        # CPU of the stack and both node processes (start-up included) per acknowledged message: what
        # a loaded machine changes least (wall-clock latencies there mostly measure the wait for a core)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time() - cpu_began + used.ru_utime + used.ru_stime
        messages = 2 * (args.warmup + args.messages) + args.throughput + 1
        result["cpu_ms_per_msg"] = cpu * 1000 / messages
        # HTTP requests both nodes made (start-up included) per message: what each message costs the stack
        result["requests_per_msg"] = (result.pop("requests") + received["requests"]) / messages
        return result
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
        await stack.aclose()


async def party(role: str, args: argparse.Namespace) -> None:
    """One node of :func:`processes_case`, from a FLAME container's environment."""
    node = AsyncNode(NodeConfig.from_env(), timeouts=TIMEOUTS, retry=RetryPolicy(attempts=3, base_delay=0.05))
    requests = [0]

    async def count(_: httpx.Request) -> None:
        requests[0] += 1

    node.http.event_hooks["request"].append(count)
    await node.start()
    peer = node.partners[0]
    print("ready", flush=True)
    try:
        if role == "receiver":
            for _ in range(args.warmup + args.messages):
                found = await node.await_messages([peer], "ping", timeout=60)
                ping = found[peer] or []
                await node.send_message([peer], "pong", {"i": ping[0].body["i"]})
            await node.await_messages([peer], "done", timeout=600)
            print(json.dumps({"requests": requests[0]}), flush=True)
            return
        rtts: list[float] = []
        acks: list[float] = []
        for i in range(args.warmup + args.messages):
            pong = asyncio.ensure_future(node.await_messages([peer], "pong", timeout=60))
            began = time.perf_counter()
            _, missing = await node.send_message([peer], "ping", {"i": i})
            acked_at = time.perf_counter()
            await pong
            if missing:
                raise RuntimeError(f"ping {i} was not acknowledged")
            if i >= args.warmup:
                rtts.append(time.perf_counter() - began)
                acks.append(acked_at - began)
        rate = await throughput_acked(node, peer, args.throughput, args.concurrency)
        await node.send_message([peer], "done", {})
        rtt = summary("ping-pong", rtts)
        ack = summary("ack", acks)
        print(
            json.dumps(
                {
                    "p50": rtt.p50,
                    "p99": rtt.p99,
                    "mean": rtt.mean,
                    "ack_p50": ack.p50,
                    "ack_p99": ack.p99,
                    "rate": rate,
                    "resent": node.messenger.resent,
                    "requests": requests[0],
                }
            ),
            flush=True,
        )
    finally:
        await node.stop()


async def throughput_acked(node: AsyncNode, peer: str, count: int, concurrency: int) -> float:
    """Acknowledged messages per second from ``node`` to ``peer``, ``concurrency`` sends in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            _, missing = await node.send_message([peer], "flood", {"i": i})
            if missing:
                raise RuntimeError(f"flood message {i} was not acknowledged")

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - began)


def processes_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    header = (
        f"{'tree':<28} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'ack p50':>8} {'ack p99':>8} "
        f"{'acked/s':>8} {'cpu ms/msg':>10} {'req/msg':>7} {'resent':>6} {'drops':>6}"
    )
    lines = [header, "-" * len(header)]
    for name, r in rows:
        lines.append(
            f"{name:<28} {r['p50']:8.2f} {r['p99']:8.2f} {r['mean']:8.2f} {r['ack_p50']:8.2f} "
            f"{r['ack_p99']:8.2f} {r['rate']:8.0f} {r['cpu_ms_per_msg']:10.2f} {r['requests_per_msg']:7.2f} "
            f"{r['resent']:6d} "
            f"{r['deliveries_dropped']:6d}"
        )
    return "\n".join(lines)


def run_processes(args: argparse.Namespace) -> None:
    """``--processes``: the cross-process case for this tree and, interleaved, for ``--baseline-src``."""
    trees = [("this tree", SRC)]
    if args.baseline_src:
        trees.insert(0, ("baseline " + Path(args.baseline_src).name, str(Path(args.baseline_src).resolve())))
    rows: list[tuple[str, dict[str, Any]]] = []
    for repeat in range(args.repeats):
        for name, tree in trees:
            argv = [sys.executable, str(Path(__file__).resolve()), "--case", "processes", "--src", tree]
            argv += ["--messages", str(args.messages), "--warmup", str(args.warmup)]
            argv += ["--throughput", str(args.throughput), "--concurrency", str(args.concurrency)]
            done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1200)
            if done.returncode != 0:
                raise RuntimeError(f"the case of {name} failed:\n{done.stderr[-3000:]}")
            rows.append((f"{name} #{repeat + 1}", json.loads(done.stdout.strip().splitlines()[-1])))
            print(f"  done: {name} #{repeat + 1}", file=sys.stderr, flush=True)
    print(
        f"nodes as separate processes, stack served (real HTTP on loopback); ping-pong: send until "
        f"acknowledged plus the reply, {args.messages} after {args.warmup} warm-up; acked/s: "
        f"{args.throughput} messages, {args.concurrency} in flight; {os.cpu_count()} CPU(s), load "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(processes_table(rows))
    mine = [r for name, r in rows if name.startswith("this tree")]
    p50 = statistics.median(r["p50"] for r in mine)
    p99 = statistics.median(r["p99"] for r in mine)
    rate = statistics.median(r["rate"] for r in mine)
    print(
        f"\nthis tree (median of runs): p50 {p50:.2f} ms (target {TARGET_P50_MS:g}), p99 {p99:.2f} ms "
        f"(target {TARGET_P99_MS:g}), {rate:.0f} acked msg/s (target {TARGET_RATE:g})"
    )


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
    parser.add_argument(
        "--processes", action="store_true", help="only the case with each node in a process of its own"
    )
    parser.add_argument(
        "--baseline-src", help="with --processes: also measure this SDK source tree, interleaved"
    )
    parser.add_argument("--repeats", type=int, default=2, help="with --processes: runs per tree")
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=["processes"], help=argparse.SUPPRESS)
    parser.add_argument("--party", choices=["sender", "receiver"], help=argparse.SUPPRESS)
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
    if arguments.party and os.environ.get("FLAME_BENCH_PROFILE"):  # a profile of each node process
        import cProfile

        cProfile.run(
            "asyncio.run(party(arguments.party, arguments))",
            f"{os.environ['FLAME_BENCH_PROFILE']}.{arguments.party}.prof",
        )
    elif arguments.party:
        asyncio.run(party(arguments.party, arguments))
    elif arguments.case == "processes":
        print(json.dumps(asyncio.run(processes_case(arguments))))
    elif arguments.processes:
        run_processes(arguments)
    else:
        asyncio.run(main(arguments))
