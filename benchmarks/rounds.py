"""Benchmark federated rounds on the emulated stack: time per round for growing federations.

Run ``python benchmarks/rounds.py`` (``--quick`` for a smaller run). It prints:

- **rounds**: for ``inprocess`` (fast mode: httpx's ASGI transport, no sockets) and ``served`` (uvicorn
  on loopback, every request of a node and every webhook to an analysis API real HTTP) and 3, 10 and 50 analysis nodes, a federation of a trivial
  analysis (each node returns ``{"count": 1, "round": r}``, the aggregator sums) over ``--rounds`` rounds.
  ``s/round`` is the steady round period: from the aggregator's first ``aggregate`` call to its last,
  divided by the rounds in between; one period is a whole round trip of the protocol (aggregate
  sent, acknowledged, checkpoints on both sides, every node analyses and sends its update, the
  aggregator collects them). ``setup`` is from the start of the run to the first aggregate (start-up
  of every node plus round 1), ``end`` from the last aggregate to the end of the run (final result,
  ``analysis_finished``, shutdown). ``ms/node`` is the period per analysis node;
- **large**: 500 analysis nodes in fast mode, two rounds: the round period, the whole run, and the peak
  memory: ``ru_maxrss`` of the process minus its value before the stack was created, and (in a second
  run, since tracing slows everything) the ``tracemalloc`` peak of the Python heap;
- **baselines**, measured in the same run: a bare reliable message (``send_message`` until acknowledged)
  between two nodes of a stack, per mode, and the 3-node round. Ratios are printed against both.

``--only-large`` runs only the large case (``--large N``, default 1,000 there) and, with
``--baseline-src DIR`` (an older source tree), the same case of that tree after it, each with its CPU
seconds and the targets (a round in 3 s, start-up plus round 1 in 10 s, no dropped delivery, 2 GiB).
``--startup`` times a cold ``import flame`` plus first use of the author API (wall and CPU, median of
5) against ``python -c pass`` and, with ``--baseline-src``, the older tree.

Every case runs in a fresh subprocess: its memory is its own, and process-wide state (the registry of
secrets to redact, which every node adds its data key to) does not carry over from one case to the next.
All nodes of a case share one event loop and one CPU (analysis code runs in worker threads), as in
``flame sim``; the pod orchestrator's periodic checks are off (its health checks every 0.1 s of every
node would dominate at 500 nodes), the webhook delivery timeout is the platform's 10 s unscaled. The
script reports; it exits 0 unless a case fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

# ``--src DIR``: the SDK source tree to measure (an older commit's, for a baseline); else this checkout's
sys.path.insert(
    0,
    str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve())
    if "--src" in sys.argv
    else str(Path(__file__).resolve().parents[1] / "src"),
)

from flame.federated import Aggregator, Analyzer, Data, FederationOptions
from flame.node import Timeouts
from flame.sim.federation import run_federation
from flame.sim.launch import Mode, start_node
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack

SRC = sys.path[0]
#: the targets of the large case (1,000 nodes, fast mode)
TARGET_PERIOD_S = 3.0
TARGET_SETUP_S = 10.0
TARGET_RSS_MB = 2048.0
#: platform-like bounds, generous for one overloaded process; resends after 5 s without acknowledgement
TIMEOUTS = Timeouts(startup=600.0, request=120.0, send=600.0, attempt=5.0, shutdown=30.0)
OPTIONS = dict(round_deadline=600.0, send_timeout=600.0)


def settings() -> StackSettings:
    # the platform's webhook timeout (10 s) unscaled: a loop busy with 500 nodes is not a lost webhook
    return StackSettings.fast(po_enabled=False, delivery_timeout=1000.0)


class TrivialAnalyzer(Analyzer):
    def analyze(self, data: Data, aggregate: Any | None, round: int) -> Any:
        return {"count": 1, "round": round}


class TimedAggregator(Aggregator):
    """Sums the updates and records when each round's aggregate is computed."""

    #: perf_counter() of every aggregate() call, across incarnations (class-level on purpose)
    stamps: list[float] = []  # noqa: RUF012

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
        TimedAggregator.stamps.append(time.perf_counter())
        return {"count": sum(u["count"] for u in updates.values()), "round": round}


# -- one case, in a subprocess --------------------------------------------------------------------------


async def federation_case(mode: Mode, nodes: int, rounds: int) -> dict[str, Any]:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu_before = time.process_time()
    TimedAggregator.stamps.clear()
    stack = FlameStack.create(nodes, settings=settings())
    try:
        began = time.perf_counter()
        run = await run_federation(
            stack,
            TrivialAnalyzer,
            TimedAggregator,
            FederationOptions(max_rounds=rounds, **OPTIONS),  # type: ignore[arg-type]
            mode=mode,
            timeout=3600,
            timeouts=TIMEOUTS,
        )
        ended = time.perf_counter()
        stamps = TimedAggregator.stamps
        if not run.ok or run.result["count"] != nodes or len(stamps) != rounds:
            raise RuntimeError(f"the federation failed: {json.dumps(run.report(), default=str)[:2000]}")
        period = (stamps[-1] - stamps[0]) / (rounds - 1) if rounds > 1 else float("nan")
        return {
            "mode": mode,
            "nodes": nodes,
            "rounds": rounds,
            "period": period,
            "setup": stamps[0] - began,
            "end": ended - stamps[-1],
            "total": ended - began,
            "cpu": time.process_time() - cpu_before,
            "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
            "dropped": run.events.get("delivery.dropped", 0),
            "retried": run.events.get("delivery.retry", 0),
            "messages": run.events.get("broker.sent", 0),
        }
    finally:
        await stack.aclose()


async def rtt_case(mode: Mode, count: int) -> dict[str, Any]:
    """A bare reliable message: ``send_message`` from node-1 to the aggregator until acknowledged."""
    stack = FlameStack.create(1, settings=settings())
    await stack.start()
    if mode == "served":
        await stack.serve()
    started = []
    try:
        sender = await start_node(stack, "node-1", mode, timeouts=TIMEOUTS)
        started.append(sender)
        receiver = await start_node(stack, "aggregator", mode, timeouts=TIMEOUTS)
        started.append(receiver)
        times = []
        for i in range(count + 10):
            began = time.perf_counter()
            _acked, missing = await sender.send_message([receiver.node_id], "bench", {"i": i})
            if missing:
                raise RuntimeError(f"message {i} was not acknowledged")
            if i >= 10:
                times.append(time.perf_counter() - began)
        return {"mode": mode, "median": statistics.median(times), "mean": statistics.fmean(times)}
    finally:
        for node in started:
            await node.stop()
        await stack.aclose()


def run_case(args: argparse.Namespace) -> None:
    if args.tracemalloc:
        tracemalloc.start()
    if args.case == "rtt":
        result = asyncio.run(rtt_case(args.mode, args.count))
    else:
        result = asyncio.run(federation_case(args.mode, args.nodes, args.rounds))
    if args.tracemalloc:
        result["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    print(json.dumps(result))


def subprocess_case(*argv: str, src: str = SRC) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", *argv, "--src", src]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- start-up and the large case against a baseline tree ----------------------------------------------

#: an analysis file's first use of the author API: import, subclass, options (no node is started)
FIRST_USE = (
    "import flame\n"
    "class A(flame.Analyzer):\n"
    "    def analyze(self, data, aggregate, round): return {}\n"
    "class B(flame.Aggregator):\n"
    "    def aggregate(self, updates, round, previous): return {}\n"
    "flame.FederationOptions(max_rounds=2)\n"
    "flame.run\n"
)


#: where the cold processes cache their bytecode (PYTHONPYCACHEPREFIX)
PYCACHE = str(Path(tempfile.gettempdir()) / "flame-bench-pycache")


def cold_seconds(code: str, src: str | None, repeats: int = 5) -> tuple[float, float]:
    """Median wall and CPU time of ``python -c code`` in a fresh process (``src`` first on its path).

    As a user's runs: bytecode is cached (one warm-up run first), not compiled again in every process;
    it goes to a folder of its own, so the measured trees stay as they are.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    if src is not None:
        env["PYTHONPATH"] = src
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    times, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        times.append(time.perf_counter() - began)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(times), statistics.median(cpus)


def startup_report(baseline_src: str | None) -> None:
    trees = [("this tree", SRC)] + ([("baseline", baseline_src)] if baseline_src else [])
    print(f"start-up, cold process, median of 5 (load {os.getloadavg()[0]:.1f}); wall and CPU:")
    rows = [("python -c pass", cold_seconds("pass", None))]
    for _ in range(2):  # interleaved, twice
        rows += [(f"import flame + first use, {name}", cold_seconds(FIRST_USE, tree)) for name, tree in trees]
    for label, (wall, cpu) in rows:
        print(f"  {label:<38} {wall * 1000:7.0f} ms wall {cpu * 1000:7.0f} ms CPU")
    print()


def large_report(nodes: int, baseline_src: str | None, tracemalloc_run: bool) -> None:
    runs = [("this tree", SRC)] + ([("baseline", baseline_src)] if baseline_src else [])
    print(f"large: {nodes} analysis nodes, fast mode (inprocess), 2 rounds, load {os.getloadavg()[0]:.1f}")
    header = (
        f"  {'tree':<10} {'s/round':>8} {'ms/node':>8} {'setup s':>8} {'total s':>8} {'cpu s':>7} "
        f"{'RSS MB':>7} {'msgs':>6} {'drops':>6}"
    )
    print(header)
    rows = []
    for name, tree in runs:
        row = subprocess_case(
            "federation", "--mode", "inprocess", "--nodes", str(nodes), "--rounds", "2", src=tree
        )
        rows.append((name, row))
        print(
            f"  {name:<10} {row['period']:8.2f} {row['period'] / nodes * 1000:8.2f} {row['setup']:8.2f} "
            f"{row['total']:8.2f} {row.get('cpu', float('nan')):7.1f} {row['rss_mb']:7.0f} "
            f"{row['messages']:6d} {row['dropped']:6d}",
            flush=True,
        )
    mine = rows[0][1]
    print(
        f"  targets: round {TARGET_PERIOD_S:g} s ({'met' if mine['period'] <= TARGET_PERIOD_S else 'not met'}), "
        f"start-up + round 1 {TARGET_SETUP_S:g} s ({'met' if mine['setup'] <= TARGET_SETUP_S else 'not met'}), "
        f"0 drops ({'met' if mine['dropped'] == 0 else 'not met'}), "
        f"{TARGET_RSS_MB:g} MB ({'met' if mine['rss_mb'] <= TARGET_RSS_MB else 'not met'})"
    )
    if tracemalloc_run:
        traced = subprocess_case(
            "federation", "--mode", "inprocess", "--nodes", str(nodes), "--rounds", "2", "--tracemalloc"
        )
        print(
            f"  tracemalloc peak (this tree) {traced['traced_peak_mb']:.1f} MB (traced run: {traced['total']:.1f} s)"
        )


# -- the report ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 and 10 nodes, 100 instead of 500")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per federation (default 5; quick 3)")
    parser.add_argument("--large", type=int, default=None, help="nodes of the large case (default 500)")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the traced run of the large case")
    parser.add_argument(
        "--only-large", action="store_true", help="only the large case (with --baseline-src: both trees)"
    )
    parser.add_argument("--startup", action="store_true", help="only the start-up times of a cold process")
    parser.add_argument("--baseline-src", help="an older SDK source tree to measure in the same run")
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=["federation", "rtt"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="inprocess", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.case:
        run_case(args)
        return 0
    if args.startup:
        startup_report(args.baseline_src)
        return 0
    if args.only_large:
        large_report(args.large or 1000, args.baseline_src, not args.no_tracemalloc)
        return 0

    sizes = [3, 10] if args.quick else [3, 10, 50]
    large = args.large or (100 if args.quick else 500)
    modes: list[Mode] = ["inprocess", "served"]
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s); "
        f"{args.rounds} rounds per federation; each case in its own process\n"
    )

    rtt = {
        mode: subprocess_case("rtt", "--mode", mode, "--count", "30" if args.quick else "100")
        for mode in modes
    }
    rows: list[dict[str, Any]] = []
    for mode in modes:
        for nodes in sizes:
            row = subprocess_case(
                "federation", "--mode", mode, "--nodes", str(nodes), "--rounds", str(args.rounds)
            )
            rows.append(row)
            print(f"  done: {mode} {nodes} nodes ({row['total']:.1f} s)", file=sys.stderr, flush=True)

    print("baselines")
    for mode in modes:
        print(
            f"  bare reliable message (send until acknowledged), {mode:<9}: median {rtt[mode]['median'] * 1000:6.2f} ms"
        )
    print()
    header = (
        f"{'mode':<10} {'nodes':>5} {'s/round':>8} {'ms/node':>8} {'x 3-node':>9} {'x msg':>7} "
        f"{'setup s':>8} {'end s':>7} {'total s':>8} {'msgs':>6} {'drops':>6}"
    )
    print(header)
    print("-" * len(header))
    for mode in modes:
        base = next(r for r in rows if r["mode"] == mode and r["nodes"] == sizes[0])["period"]
        for row in (r for r in rows if r["mode"] == mode):
            print(
                f"{mode:<10} {row['nodes']:>5} {row['period']:8.3f} {row['period'] / row['nodes'] * 1000:8.2f} "
                f"{row['period'] / base:9.1f} {row['period'] / rtt[mode]['median']:7.0f} {row['setup']:8.2f} "
                f"{row['end']:7.2f} {row['total']:8.2f} {row['messages']:6d} {row['dropped']:6d}"
            )
    print()

    big = subprocess_case("federation", "--mode", "inprocess", "--nodes", str(large), "--rounds", "2")
    print(f"large: {large} analysis nodes, fast mode (inprocess), 2 rounds")
    print(
        f"  round period            {big['period']:8.2f} s   ({big['period'] / large * 1000:.2f} ms per node; "
        f"x{big['period'] / rows[0]['period']:.0f} the 3-node round, x{big['period'] / rtt['inprocess']['median']:.0f} a bare message)"
    )
    print(
        f"  setup (start-up + round 1) {big['setup']:5.2f} s, end {big['end']:.2f} s, whole run {big['total']:.2f} s"
    )
    print(
        f"  peak RSS growth         {big['rss_mb']:8.1f} MB   ({big['rss_mb'] * 1024 / large:.0f} KB per node)"
    )
    print(f"  messages {big['messages']}, webhook deliveries dropped {big['dropped']}")
    if not args.no_tracemalloc:
        traced = subprocess_case(
            "federation", "--mode", "inprocess", "--nodes", str(large), "--rounds", "2", "--tracemalloc"
        )
        print(
            f"  tracemalloc peak        {traced['traced_peak_mb']:8.1f} MB   (traced run: {traced['total']:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
