"""Fault suite: the examples under every fault class, at increasing rates, with several seeds.

Run ``python benchmarks/faults.py`` (``--quick`` for one seed and the lowest and highest rate). Every run is
``flame sim EXAMPLE --data examples/data --faults SPEC --seed S`` in its own process, exactly as a user runs it,
bounded by ``--timeout`` inside and a harder bound outside. Each example is first run without faults; that
result is the reference. Every faulty run is then put in one class:

- **finished**: exit 0, the report says ok, and the final result equals the fault-free one (to 1e-9 relative);
- **failed cleanly**: exit 1, a report was written, no node is left running, and the report names an error;
- **timed out**: ``--timeout`` ran out; flame sim stopped every node and wrote its report (exit 124). Bounded, so
  not a hang, but the federation did not finish in time: a slow run, or one that waits for something lost;
- **hung**: the process outlived the outer bound, or exited without writing its report (must be 0);
- **wrong result**: a final result reached the hub that differs from the fault-free one (must be 0);
- **unclean**: anything else (an exit code other than 0/1, exit 0 with a report that is not ok, exit 1 with no
  error named, a node still "running" in the report).

It prints one table per fault class and example, then the totals, and exits 1 when any run hung, gave a wrong
result or ended uncleanly. Two runs go at a time (``--jobs``); the figures are counts, not timings, so a
loaded machine changes how long it takes, not what it finds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
EXAMPLES = {
    "mean_std": ROOT / "examples" / "mean_std" / "analysis.py",
    "patient_count": ROOT / "examples" / "patient_count" / "analysis.py",
    "logistic_regression": ROOT / "examples" / "logistic_regression" / "analysis.py",
    "secure_mean": ROOT / "examples" / "secure_mean" / "analysis.py",
}
CLASSES = ("finished", "failed cleanly", "timed out", "hung", "wrong result", "unclean")

#: fault class -> rate -> the --faults text. Rates grow left to right; times are seconds of stack time
#: (a fault-free run of an example takes 0.5 to 3 s there).
FAULTS: dict[str, Callable[[str], str]] = {
    "drop": lambda r: {"low": "drop=0.1", "mid": "drop=0.3", "high": "drop=0.5"}[r],
    "duplicate": lambda r: {"low": "duplicate=0.1", "mid": "duplicate=0.5", "high": "duplicate=1"}[r],
    "delay": lambda r: {"low": "delay=0.2:0.05", "mid": "delay=0.5:0.2", "high": "delay=1:0.5"}[r],
    "reorder": lambda r: {"low": "reorder=0.2", "mid": "reorder=0.5", "high": "reorder=1"}[r],
    "outage-broker": lambda r: "outage=message-broker@0.1-" + {"low": "0.4", "mid": "1", "high": "3"}[r],
    "outage-storage": lambda r: "outage=storage@0.1-" + {"low": "0.4", "mid": "1", "high": "3"}[r],
    "expire": lambda r: {
        "low": "expire=node-1@0.2",
        "mid": "expire=node-1@0.2;expire=aggregator@0.3",
        "high": "expire=node-1@0.1;expire=node-2@0.2;expire=node-3@0.3;expire=aggregator@0.4",
    }[r],
    "restart": lambda r: {
        "low": "restart=node-1@0.3",
        "mid": "restart=node-1@0.2;restart=aggregator@0.4",
        "high": "restart=node-1@0;restart=node-2@0.3;restart=aggregator@0.5;restart=node-3@0.8",
    }[r],
    "offline": lambda r: "offline=node-1@0.2-" + {"low": "0.7", "mid": "1.5", "high": "4"}[r],
}
RATES = ("low", "mid", "high")


@dataclass
class Outcome:
    example: str
    fault: str
    rate: str
    seed: int
    spec: str
    kind: str
    seconds: float
    detail: str = ""
    result: Any = field(default=None, repr=False)


def same(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Results equal up to float rounding: the order in which updates arrive may change the last bits.

    A run that failed after its final result reached the hub reports the hub's copy: for an analysis
    whose output type is ``str`` that is the text of the result, compared with the text of the other.
    """
    if isinstance(a, str) != isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    return bool(a == b)


def run_sim(example: str, spec: str, seed: int, timeout: float, workdir: Path, scale: float) -> Outcome:
    """One ``flame sim`` run in its own process group, classified."""
    report = workdir / f"{example}-{abs(hash((spec, seed))):x}" / "report.json"
    cmd = [sys.executable, "-m", "flame", "sim", str(EXAMPLES[example]), "--data", str(DATA)]
    cmd += ["--seed", str(seed), "--no-live", "--timeout", str(timeout), "--report", str(report)]
    cmd += ["--time-scale", str(scale)]
    if spec:
        cmd += ["--faults", spec]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    outcome = Outcome(example, "", "", seed, spec, "unclean", 0.0)
    try:
        out, _ = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        outcome.kind, outcome.detail = "hung", f"still running {timeout + 30:.0f} s after start"
        outcome.seconds = time.monotonic() - started
        return outcome
    outcome.seconds = time.monotonic() - started
    tail = out.decode(errors="replace").strip().splitlines()[-3:]
    if not report.is_file():
        outcome.kind, outcome.detail = "hung", f"exit {proc.returncode} without a report: {tail}"
        return outcome
    data = json.loads(report.read_text())
    outcome.result = data.get("result")
    nodes = data.get("run", {}).get("nodes", {})
    running = sorted(n for n, v in nodes.items() if v.get("status") in ("starting", "running", "started"))
    errors = [*data.get("errors", []), *(v.get("error") for v in nodes.values() if v.get("error"))]
    if proc.returncode == 0 and data.get("ok"):
        outcome.kind = "finished"
    elif proc.returncode == 1 and not running and errors:
        outcome.kind, outcome.detail = "failed cleanly", str(errors[0])[:160]
    elif proc.returncode == 124 and data.get("status") == "timeout" and not running:
        outcome.kind, outcome.detail = "timed out", str(errors[0])[:160] if errors else ""
    else:
        outcome.detail = (
            f"exit {proc.returncode}, ok={data.get('ok')}, running={running}, errors={errors[:2]}"
        )
    return outcome


def plan(
    examples: list[str], faults: list[str], rates: tuple[str, ...], seeds: list[int]
) -> Iterator[Outcome]:
    for example in examples:
        for fault in faults:
            for rate in rates:
                for seed in seeds:
                    yield Outcome(example, fault, rate, seed, FAULTS[fault](rate), "", 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, the lowest and highest rate")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per case (default 3)")
    parser.add_argument("--examples", nargs="*", default=list(EXAMPLES), choices=list(EXAMPLES))
    parser.add_argument("--faults", nargs="*", default=list(FAULTS), choices=list(FAULTS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="flame sim --timeout of each run (60)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.1,
        help="flame sim --time-scale: the platform's periods and the resend interval (30 s) times this (0.1)",
    )
    parser.add_argument("--json", type=Path, help="also write every run's outcome here")
    args = parser.parse_args(argv)
    seeds = [1] if args.quick else list(range(1, args.seeds + 1))
    rates = ("low", "high") if args.quick else RATES

    with tempfile.TemporaryDirectory(prefix="flame-faults-") as tmp:
        workdir = Path(tmp)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            references = dict(
                zip(
                    args.examples,
                    pool.map(
                        lambda e: run_sim(e, "", 0, args.timeout, workdir, args.time_scale), args.examples
                    ),
                    strict=True,
                )
            )
            for name, ref in references.items():
                if ref.kind != "finished":
                    print(f"the fault-free run of {name} did not finish: {ref.detail}", file=sys.stderr)
                    return 1
            cases = list(plan(args.examples, args.faults, rates, seeds))
            started = time.monotonic()

            def one(case: Outcome) -> Outcome:
                got = run_sim(case.example, case.spec, case.seed, args.timeout, workdir, args.time_scale)
                got.fault, got.rate = case.fault, case.rate
                if got.result is not None and not same(got.result, references[case.example].result):
                    got.kind, got.detail = "wrong result", f"got {str(got.result)[:160]}"
                return got

            outcomes = list(pool.map(one, cases))
    wall = time.monotonic() - started
    print_tables(outcomes, args.examples)
    totals = Counter(o.kind for o in outcomes)
    print(
        f"\n{len(outcomes)} runs in {wall:.0f} s: "
        + ", ".join(f"{totals.get(kind, 0)} {kind}" for kind in CLASSES)
    )
    bad = [o for o in outcomes if o.kind in ("hung", "wrong result", "unclean")]
    for o in bad:
        print(f"  {o.kind}: {o.example} --faults '{o.spec}' --seed {o.seed}: {o.detail}")
    if args.json:
        args.json.write_text(
            json.dumps([{k: v for k, v in vars(o).items() if k != "result"} for o in outcomes], indent=1)
        )
    return 1 if bad else 0


def print_tables(outcomes: list[Outcome], examples: list[str]) -> None:
    header = f"{'fault':<15} {'rate':<5} {'example':<20} {'runs':>4} " + " ".join(f"{c:>14}" for c in CLASSES)
    print(header)
    print("-" * len(header))
    groups: dict[tuple[str, str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.fault, o.rate, o.example), []).append(o)
    for (fault, rate, example), group in groups.items():
        counts = Counter(o.kind for o in group)
        print(
            f"{fault:<15} {rate:<5} {example:<20} {len(group):>4} "
            + " ".join(f"{counts.get(c, 0):>14}" for c in CLASSES)
        )
    print("-" * len(header))
    for example in examples:
        counts = Counter(o.kind for o in outcomes if o.example == example)
        print(
            f"{'all':<15} {'':<5} {example:<20} {sum(counts.values()):>4} "
            + " ".join(f"{counts.get(c, 0):>14}" for c in CLASSES)
        )


if __name__ == "__main__":
    sys.exit(main())
