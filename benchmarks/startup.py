"""Benchmark start-up: ``flame sim`` of the demo federation, and a large stack's start-up and shutdown.

Run ``python benchmarks/startup.py``. It prints, each case in fresh processes (median of ``--repeats``,
wall and CPU), with ``--baseline-src DIR`` the same case of an older source tree interleaved:

- **demo**: ``flame sim examples/mean_std/analysis.py --data examples/data --nodes 3`` as a whole
  (the command ``make demo`` runs, without its comparison table), against ``python -c pass``;
- **nodes**: ``--nodes N`` analysis nodes in fast mode (in-process transport, one event loop): the
  phases of start-up (``FlameStack.create``, ``start``, every node's runtime started as a local federation
  starts it: sidecar health, identity, webhook subscription, participants, data sources) and of
  shutdown (every runtime stopped, ``FlameStack.aclose``), each in seconds.

The targets of issue 17: the demo within 1 s of wall time; 1,000 nodes started within 10 s. The script
reports; it exits 0 unless a case fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["sim", "examples/mean_std/analysis.py", "--data", "examples/data", "--nodes", "3"]


def cold(argv: list[str], src: str | None) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh ``python argv`` (``src`` first on its path), run in the checkout."""
    env = dict(os.environ)
    # as a user's runs: bytecode cached after the first, in a folder of its own (the trees stay as they are)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "flame-bench-pycache")
    if src is not None:
        env["PYTHONPATH"] = src
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def demo_report(src: str, baseline_src: str | None, repeats: int) -> None:
    trees = [("this tree", src)] + ([("baseline", baseline_src)] if baseline_src else [])
    report = Path(tempfile.mkdtemp(prefix="flame-startup-")) / "report.json"
    argv = ["-m", "flame", *DEMO, "--report", str(report)]
    for _, tree in trees:  # warm: bytecode written, files in the page cache
        cold(argv, tree)
    samples: dict[str, list[tuple[float, float]]] = {"python -c pass": []}
    for _ in range(repeats):
        samples["python -c pass"].append(cold(["-c", "pass"], None))
        for name, tree in trees:  # interleaved
            samples.setdefault(f"flame sim (demo), {name}", []).append(cold(argv, tree))
    print(f"demo: flame {' '.join(DEMO)}, median of {repeats} (load {os.getloadavg()[0]:.1f})")
    for label, rows in samples.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"  {label:<34} {wall * 1000:7.0f} ms wall {cpu * 1000:7.0f} ms CPU")
    print()


async def nodes_case(nodes: int) -> dict[str, Any]:
    from flame.node import Timeouts
    from flame.sim.launch import start_node
    from flame.sim.settings import StackSettings
    from flame.sim.stack import FlameStack

    phases: dict[str, float] = {}
    cpu = time.process_time()
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    stack = FlameStack.create(nodes, settings=StackSettings.fast(po_enabled=False, delivery_timeout=1000.0))
    lap("create")
    await stack.start()
    lap("start")
    timeouts = Timeouts(startup=600.0, request=120.0, send=600.0, attempt=5.0, shutdown=30.0)
    runtimes = await asyncio.gather(*(start_node(stack, name, timeouts=timeouts) for name in stack.nodes))
    lap("nodes started")
    await asyncio.gather(*(node.stop("executed") for node in runtimes))
    lap("nodes stopped")
    await stack.aclose()
    lap("aclose")
    phases["start-up"] = phases["create"] + phases["start"] + phases["nodes started"]
    phases["shutdown"] = phases["nodes stopped"] + phases["aclose"]
    phases["cpu"] = time.process_time() - cpu
    return phases


def nodes_report(nodes: int, src: str, baseline_src: str | None) -> None:
    trees = [("this tree", src)] + ([("baseline", baseline_src)] if baseline_src else [])
    print(f"nodes: {nodes} analysis nodes, fast mode, start-up and shutdown (load {os.getloadavg()[0]:.1f})")
    columns = ["create", "start", "nodes started", "start-up", "nodes stopped", "aclose", "shutdown", "cpu"]
    print("  " + f"{'tree':<10}" + "".join(f"{c:>14}" for c in columns))
    for name, tree in trees:
        env = dict(os.environ, PYTHONPATH=tree)
        done = subprocess.run(
            [sys.executable, __file__, "--case", str(nodes)], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{nodes} nodes ({name}) failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print("  " + f"{name:<10}" + "".join(f"{row[c]:14.2f}" for c in columns), flush=True)
    print()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nodes", type=int, default=300, help="analysis nodes of the start-up case (0: skip)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of the demo per tree (median)")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo case")
    parser.add_argument("--baseline-src", default=None, help="an older source tree to measure interleaved")
    parser.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(asyncio.run(nodes_case(args.case))))
        return 0
    src = str(ROOT / "src")
    if not args.no_demo:
        demo_report(src, args.baseline_src, args.repeats)
    if args.nodes:
        nodes_report(args.nodes, src, args.baseline_src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
