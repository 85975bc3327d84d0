"""The ``flame`` command line: ``flame new``, ``flame sim``, ``flame run``, ``flame demo``, ``flame check``,
``flame node up``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flame.errors import FlameError

SIM_EPILOG = """\
fault rules (--faults; times in seconds since the stack started):
  drop=0.2                 drop 20 % of deliveries (also duplicate=P, reorder=P)
  drop=0.2@node-1>aggregator   only from node-1 to the aggregator (node-1> or >aggregator: one end)
  delay=0.3:0.05           delay 30 % of deliveries by 0.05 s (reorder=P:SECONDS: shuffle window)
  outage=storage@2-4       every node's storage answers 503 from 2 s to 4 s (@2: to the end;
                           services: message-broker, storage, hub-adapter, kong, po)
  outage=storage@2-4@node-1   only node-1's storage
  expire=node-1@3          node-1's tokens expire at 3 s
  restart=node-2@5         node-2's pod is restarted at 5 s
  offline=node-1@2-6       node-1 is unreachable from 2 s to 6 s (node-1@2: until the end)
  Probabilities lie in [0, 1], times are finite and not negative, a window starts before it ends,
  and nodes are aggregator, node-1 ... node-N; anything else is refused with exit code 2.

exit codes:
  0    every node executed and the final result reached the hub
  1    the federation failed (a node failed, the quorum was lost, no final result)
  2    usage error (options, fault plan)
  124  --timeout ran out: the run was stopped, its report says "status": "timeout"
"""


MAIN_EPILOG = """\
exit codes (every command):
  0    success (flame sim, flame run: the analysis ran to its end)
  1    the analysis failed (a node failed, no final result, an error of the analysis)
  2    usage error: bad options, not a FLAME node (flame run without its environment)
  124  flame sim --timeout ran out
"""

#: optional packages -> the extra of the SDK that installs them
EXTRAS = {"rich": "sim", "minio": "sim", "pyarrow": "parquet", "matplotlib": "plot"}

#: the five variables a FLAME node gives an analysis container
NODE_VARIABLES = ("ANALYSIS_ID", "PROJECT_ID", "DEPLOYMENT_NAME", "KEYCLOAK_TOKEN", "DATA_SOURCE_TOKEN")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flame`` command; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _set_log_level(args)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(
            f"flame: this command needs {exc.name}, which comes with the SDK's {extra!r} extra: "
            f"pip install 'flame-python-sdk[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except FlameError as exc:
        print(f"flame: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class _VersionAction(argparse.Action):
    """``--version``: looks the installed version up only when asked (package metadata costs ~30 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show program's version number and exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("flame-python-sdk")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _set_log_level(args: argparse.Namespace) -> None:
    """``-q``/``-v``: the level of the ``flame`` logger only (never the root logger's)."""
    import logging

    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    if verbosity:
        level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity == -1 else logging.ERROR
        logging.getLogger("flame").setLevel(level)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flame",
        description="Federated analyses on FLAME nodes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=MAIN_EPILOG,
    )
    parser.add_argument("--version", action=_VersionAction)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="log less: warnings only (-qq: errors only); the 'flame' logger, not the root logger",
    )
    loudness.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more: debug messages of the 'flame' logger"
    )
    commands = parser.add_subparsers(title="commands")

    demo = commands.add_parser("demo", help="run the README's main job: a three-hospital federation")
    demo.add_argument(
        "--selfcheck",
        action="store_true",
        help="check configuration, tokens and codec on the emulated stack instead",
    )
    demo.set_defaults(handler=_demo)

    check = commands.add_parser("check", help="check this container's configuration and token")
    check.add_argument("--jwks-url", help="verify the token's signature against this JWKS URL")
    check.set_defaults(handler=_check)

    node = commands.add_parser("node", help="the emulated FLAME node stack")
    node_commands = node.add_subparsers(title="node commands")
    up = node_commands.add_parser(
        "up",
        help="serve an emulated node stack on loopback until Ctrl-C",
        description="Serve an emulated FLAME node stack on loopback and print, per node, the environment "
        "under which 'flame run ANALYSIS.py' (or 'python ANALYSIS.py') joins it as that node's analysis. "
        "Run one per node, the aggregator included.",
    )
    up.add_argument("--nodes", type=int, default=3, help="number of analysis nodes (plus one aggregator)")
    up.add_argument(
        "--data", type=Path, help="data folder with one sub-folder per node (node-1, node-2, ...)"
    )
    up.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    up.add_argument("--storage", type=Path, help="folder that keeps node storage (default: temporary)")
    up.add_argument("--seed", type=int, default=0, help="seed of ids and injected faults")
    up.add_argument("--faults", default="", help="fault plan, e.g. 'drop=0.1;outage=storage@5-8'")
    up.add_argument("--env-file", type=Path, help="also write each node's environment as JSON here")
    up.add_argument(
        "--env-dir",
        type=Path,
        help="also write each node's environment to DIR/NAME.env (KEY=VALUE lines, for 'set -a; . FILE')",
    )
    up.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="node NAME's analysis API listens at URL (default: a free port on 127.0.0.1 per node, in "
        "FLAME_ANALYSIS_PORT); repeatable. POST /_sim/nodes/NAME/attach does the same at run time",
    )
    up.set_defaults(handler=_node_up)

    new = commands.add_parser("new", help="create an analysis project from the template")
    new.add_argument("name", help="the project's folder name (letters, digits, '-', '_', '.')")
    new.add_argument("--dir", type=Path, default=Path("."), help="where to create it (default: here)")
    new.add_argument("--seed", type=int, default=0, help="seed of the sample data")
    new.set_defaults(handler=_new)

    sim = commands.add_parser(
        "sim",
        help="run an analysis file on a local federation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SIM_EPILOG,
    )
    sim.add_argument("analysis", type=Path, help="the analysis file (calls flame.run(...))")
    sim.add_argument(
        "--nodes",
        type=int,
        help="analysis nodes, plus one aggregator (default: node folders in --data, or 3)",
    )
    data = sim.add_mutually_exclusive_group()
    data.add_argument("--data", type=Path, help="data folder: DIR/node-1, DIR/node-2, ... with fhir/ and s3/")
    data.add_argument("--split", type=Path, help="split one CSV or FHIR Bundle/NDJSON file across the nodes")
    sim.add_argument("--seed", type=int, default=0, help="seed of ids, the split and injected faults")
    sim.add_argument(
        "--faults",
        default="",
        help="fault plan: rules separated by ';' (see the forms below), e.g. 'drop=0.1;restart=node-1@5'",
    )
    how = sim.add_mutually_exclusive_group()
    how.add_argument("--served", action="store_true", help="serve the stack on loopback (real HTTP)")
    how.add_argument(
        "--processes", action="store_true", help="run every node as 'python ANALYSIS.py' in its own process"
    )
    sim.add_argument("--max-rounds", type=int, help="override the file's max_rounds")
    sim.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="hard limit of the whole run, seconds (600): then the nodes are stopped, the report is "
        "written and flame sim exits 124 (clean-up may take up to 7 s more)",
    )
    sim.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply the platform's delays and periods (and the resend interval), e.g. 0.1 (default 1)",
    )
    sim.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="[NODE=]FILE",
        help="a node's disclosure policy file (JSON; FLAME_DISCLOSURE_POLICY on a node): FILE for every "
        "node, NODE=FILE for one; repeatable. It tightens the library's defaults, never loosens them",
    )
    sim.add_argument("--report", type=Path, help="run report (default: flame-runs/<timestamp>/report.json)")
    sim.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write the run as one self-contained HTML page (timeline, rounds, faults, result, audit)",
    )
    sim.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write the final result into DIR: a DataFrame as result.csv, bytes as result.bin, else result.json",
    )
    sim.add_argument(
        "--json",
        action="store_true",
        help="print a machine-readable summary (status, result, rounds, errors) on stdout, the rest on stderr",
    )
    sim.add_argument("--no-live", action="store_true", help="plain log lines instead of the live table")
    sim.set_defaults(handler=_sim)

    run = commands.add_parser(
        "run",
        help="run an analysis file on this node (a container's entrypoint)",
        description="Run an analysis file on a FLAME node, or against one node of 'flame node up' with the "
        "environment it prints. To run a whole federation on this machine, use 'flame sim'.",
    )
    run.add_argument("analysis", type=Path, help="the analysis file")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed on to the file (sys.argv)")
    run.set_defaults(handler=_run)
    return parser


def _new(args: argparse.Namespace) -> int:
    from flame.newproject import new_command

    return new_command(args)


def _sim(args: argparse.Namespace) -> int:
    from flame.local.command import sim_command

    return sim_command(args)


def _run(args: argparse.Namespace) -> int:
    return run_file(args.analysis, args.args)


def _not_a_node_message(path: Path) -> str:
    return (
        f"flame run: not on a FLAME node: none of {', '.join(NODE_VARIABLES)} is set.\n"
        "'flame run' is the entrypoint of an analysis container on a FLAME node. To run this analysis here:\n"
        f"  flame sim {path} --data DIR --nodes 3\n"
        "      a whole federation on this machine, in one command;\n"
        "  flame node up --nodes 3 --data DIR\n"
        f"      an emulated node stack: it prints, per node, the environment to run 'flame run {path}' in."
    )


def run_file(path: Path, argv: Sequence[str] = ()) -> int:
    """``flame run``: run an analysis file as ``python PATH ARGV...`` does (its folder first on ``sys.path``).

    Returns 0 when the file ran to its end, 1 (with the message on stderr) on a :class:`FlameError`, 2 on
    a :class:`ConfigurationError` (the node's environment or the options are wrong; off a node, with how
    to run the analysis locally instead); other exceptions propagate with their traceback, as under
    ``python``. Production code: no ``flame.sim`` here.
    """
    import os
    import runpy

    from flame.errors import ConfigurationError

    if not path.is_file():
        print(f"flame run: {path}: no such file", file=sys.stderr)
        return 1
    folder = str(path.resolve().parent)
    saved_argv = sys.argv
    sys.argv = [str(path), *argv]
    sys.path.insert(0, folder)
    try:
        runpy.run_path(str(path), run_name="__main__")
    except ConfigurationError as exc:
        print(f"flame run: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not any(os.environ.get(name) for name in NODE_VARIABLES):
            print(_not_a_node_message(path), file=sys.stderr)
        return 2
    except FlameError as exc:
        print(f"flame run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from flame.demo import run_demo, run_selfcheck

    return run_selfcheck() if args.selfcheck else run_demo()


def _check(args: argparse.Namespace) -> int:
    from flame.check import check_environment

    return check_environment(jwks_url=args.jwks_url)


def _node_up(args: argparse.Namespace) -> int:
    return asyncio.run(_serve_stack(args))


def _write_environments(args: argparse.Namespace, environments: dict[str, dict[str, str]]) -> None:
    if args.env_file is not None:
        args.env_file.write_text(json.dumps(environments, indent=2))
    if args.env_dir is not None:
        args.env_dir.mkdir(parents=True, exist_ok=True)
        for name, env in environments.items():
            lines = [f"{key}={shlex.quote(value)}" for key, value in env.items()]
            (args.env_dir / f"{name}.env").write_text("\n".join(lines) + "\n")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that are free now (all bound at once, then released)."""
    import socket

    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _parse_attach(values: Sequence[str], nodes: Sequence[str]) -> dict[str, str]:
    from urllib.parse import urlsplit

    attach: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or name not in nodes:
            raise SystemExit(
                f"flame node up: --attach {value!r}: expected NAME=URL with NAME one of {', '.join(nodes)}"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SystemExit(
                f"flame node up: --attach {value!r}: URL must be absolute, e.g. http://127.0.0.1:8001"
            )
        attach[name] = url.rstrip("/")
    return attach


def analysis_environment(url: str) -> dict[str, str]:
    """``FLAME_ANALYSIS_HOST``/``_PORT`` for an analysis API at ``url`` on this machine (else nothing)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        return {}
    return {"FLAME_ANALYSIS_HOST": "127.0.0.1", "FLAME_ANALYSIS_PORT": str(parts.port)}


async def _report_statuses(stack: Any, base: str) -> None:
    """Print each node's status as its analysis reports it, and where the final results are."""
    seen = stack.po.version
    statuses = stack.po.statuses()
    announced: set[str] = set()
    aggregator = next(node.name for node in stack.nodes.values() if node.role == "aggregator")
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            seen = await stack.po.wait_changed(seen, timeout=5.0)
        for name, status in stack.po.statuses().items():
            if statuses.get(name) != status:
                statuses[name] = status
                error = stack.po.record(name).error
                print(f"[{stack.now():7.1f} s] {name}: {status}{f' ({error})' if error else ''}", flush=True)
        if statuses.get(aggregator) == "executed":
            for filename in sorted(set(await stack.final_results()) - announced):
                announced.add(filename)
                print(f"final result: {base}/_sim/final/{stack.analysis_id}/{filename}", flush=True)


async def _serve_stack(args: argparse.Namespace) -> int:
    from flame.sim import FlameStack, parse_faults
    from flame.sim.backends import LocalFolderBackend

    if args.nodes < 1:
        raise SystemExit("flame node up: --nodes must be at least 1")
    if args.data is not None and not args.data.is_dir():
        raise SystemExit(f"flame node up: --data {args.data} is not a folder")
    backend = None
    if args.storage is not None:
        args.storage.mkdir(parents=True, exist_ok=True)
        backend = LocalFolderBackend(args.storage)
    try:
        faults = parse_faults(args.faults, seed=args.seed)
    except FlameError as exc:
        raise SystemExit(f"flame node up: {exc}") from None
    stack = FlameStack.create(
        args.nodes, data_root=args.data, storage_backend=backend, seed=args.seed, faults=faults
    )
    try:
        faults.validate(stack.nodes)
    except FlameError as exc:
        await stack.aclose()
        raise SystemExit(f"flame node up: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        attach = _parse_attach(args.attach, list(stack.nodes))
    except SystemExit:
        await stack.aclose()
        raise
    try:
        base = await stack.serve(port=args.port)
        ports = iter(_free_ports(len(stack.nodes) - len(attach)))
        for name in stack.nodes:
            stack.expect_analysis(name, attach.get(name) or f"http://127.0.0.1:{next(ports)}")

        def environment(name: str) -> dict[str, str]:
            return {**stack.env(name), **analysis_environment(stack.expected_analysis(name) or "")}

        environments = {name: environment(name) for name in stack.nodes}
        print(f"emulated FLAME node stack on {base} (analysis {stack.analysis_id})")
        for name, env in environments.items():
            node = stack.node(name)
            print(
                f"\n# node {name} ({node.role}, node id {node.node_id}); its analysis API: "
                f"{stack.expected_analysis(name)}"
            )
            for key, value in env.items():
                print(f"export {key}={shlex.quote(value)}")
        _write_environments(args, environments)
        print(
            "\nRun one analysis per node, the aggregator included, each in a shell with that node's "
            "variables:\n  flame run ANALYSIS.py\nPress Ctrl-C to stop.",
            flush=True,
        )

        def restarted(node: Any, env: dict[str, str]) -> None:
            environments[node.name] = environment(node.name)
            print(f"\n# node {node.name} was restarted: its new environment", flush=True)
            for key, value in environments[node.name].items():
                print(f"export {key}={shlex.quote(value)}", flush=True)
            _write_environments(args, environments)

        stack.on_restart(restarted)
        watcher = asyncio.ensure_future(_report_statuses(stack, base))
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    finally:
        await stack.aclose()
        print("stopped.", flush=True)
    return 0
