"""The README's main job (``flame demo``) and the token self-check (``flame demo --selfcheck``).

``flame demo`` (``make demo``) runs ``flame sim`` of the mean example on three hospitals: the emulated
FLAME node stack, the node runtimes and the star protocol, with a live display; then it prints the
federated mean and standard deviation next to the ones computed on the pooled data, and fails unless
they agree. ``flame demo --selfcheck`` instead checks, through real HTTP, what every analysis container
relies on first: its configuration, its Keycloak token against the node Keycloak's JWKS (expired,
foreign and forged tokens rejected) and the pickle-free codec.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flame import codec
from flame.config import NodeConfig
from flame.errors import (
    FlameError,
    PickleRefusedError,
    TokenAudienceError,
    TokenError,
    TokenExpiredError,
    TokenSignatureError,
)
from flame.node.loop import LoopThread
from flame.tokens import check_token, seconds_remaining

#: Where the mean example and its data live in a checkout of the project.
#: The repository's examples in a checkout; the copy shipped in the package when installed from a wheel.
_REPOSITORY_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = (
    _REPOSITORY_EXAMPLES
    if (_REPOSITORY_EXAMPLES / "mean_std" / "analysis.py").is_file()
    else Path(__file__).resolve().parent / "demo_files"
)


def run_demo(console: Console | None = None, examples: Path = EXAMPLES) -> int:
    """``flame sim`` of the mean example on three hospitals, then federated vs pooled; 0 when they agree."""
    import pandas as pd

    from flame.local.api import simulate
    from flame.local.report import print_summary

    console = console or Console()
    analysis, data = examples / "mean_std" / "analysis.py", examples / "data"
    if not analysis.is_file() or not data.is_dir():
        console.print(f"[red]the mean example is not at {analysis}[/]: run the demo from a checkout")
        return 1
    console.print(
        f"[bold]flame sim {analysis.relative_to(examples.parent)} --data {data.relative_to(examples.parent)} --nodes 3[/]"
    )
    outcome = simulate(analysis, data=data, nodes=3, timeout=120.0, console=console, live=console.is_terminal)
    print_summary(outcome.outcome, console)
    if not outcome.ok:
        return 1
    federated = outcome.result
    pooled = pd.concat(
        [pd.read_csv(folder / "s3" / "patients.csv") for folder in sorted(data.glob("node-*"))]
    )
    table = Table(title="Federated (three hospitals) and pooled (all patients in one place)")
    for column in ("column", "n", "federated mean", "pooled mean", "federated std", "pooled std"):
        table.add_column(column, justify="right")
    agree = True
    for column, figures in federated.items():
        mean, std = float(pooled[column].mean()), float(pooled[column].std(ddof=1))
        agree &= math.isclose(figures["mean"], mean, rel_tol=1e-9) and math.isclose(
            figures["std"], std, rel_tol=1e-9
        )
        agree &= figures["n"] == len(pooled)
        table.add_row(
            column,
            str(figures["n"]),
            f"{figures['mean']:.6f}",
            f"{mean:.6f}",
            f"{figures['std']:.6f}",
            f"{std:.6f}",
        )
    console.print(table)
    if not agree:
        console.print("[bold red]The federated result differs from the pooled one.[/]")
        return 1
    console.print(
        "[bold green]The federated result equals the pooled one (to 1e-9); no patient row left a hospital.[/]"
    )
    return 0


def run_selfcheck(analysis_nodes: int = 3, console: Console | None = None) -> int:
    """Run the self-check on a served emulated stack; 0 when every check passed."""
    console = console or Console()
    loop = LoopThread("flame-selfcheck")
    try:
        return loop.run(_selfcheck(analysis_nodes, console), 300.0, "the self-check")
    finally:
        loop.stop()


async def _selfcheck(analysis_nodes: int, console: Console) -> int:
    from flame.sim import FlameStack

    failures: list[str] = []
    stack = FlameStack.create(analysis_nodes)
    try:
        base = await stack.serve()
        console.print(f"[bold]Emulated FLAME node stack[/] on {base}")
        console.print(
            f"analysis {stack.analysis_id}, DEPLOYMENT_NAME {stack.node('aggregator').deployment_name}"
        )
        table = Table(title="Configuration and token of each node's analysis container")
        for column in ("node", "role", "data access", "token expires in", "signature"):
            table.add_column(column)
        for name in stack.nodes:
            env = stack.env(name)
            config = NodeConfig.from_env(env)
            assert config.keycloak_token is not None
            claims = await asyncio.to_thread(
                check_token, config.keycloak_token, config.analysis_id, jwks_url=stack.jwks_url(name)
            )
            table.add_row(
                name,
                stack.node(name).role,
                "yes" if config.has_data_access else "none_needed",
                f"{claims.seconds_remaining()} s",
                "RS256 verified",
            )
        console.print(table)

        node = stack.node("node-1")
        jwks = stack.jwks_url("node-1")
        checks: list[tuple[str, Callable[[], Any], type[TokenError]]] = [
            (
                "expired token",
                lambda: check_token(
                    node.issuer.mint(stack.analysis_id, 60, issued_at=time.time() - 3600),
                    stack.analysis_id,
                    jwks_url=jwks,
                ),
                TokenExpiredError,
            ),
            (
                "token of another analysis",
                lambda: check_token(node.issuer.mint("another-analysis"), stack.analysis_id, jwks_url=jwks),
                TokenAudienceError,
            ),
            (
                "forged token (payload changed)",
                lambda: check_token(_forge(node.token), stack.analysis_id, jwks_url=jwks),
                TokenSignatureError,
            ),
        ]
        for label, call, expected in checks:
            try:
                await asyncio.to_thread(call)
            except expected as exc:
                console.print(f"  [green]rejected[/] {label}: {type(exc).__name__}")
            else:
                failures.append(f"{label} was accepted")
        remaining = seconds_remaining(node.token)
        if not 0 < remaining <= stack.settings.token_lifetime:
            failures.append(f"token_remaining_time {remaining} is outside (0, lifetime]")
        failures.extend(_check_codec(console))
    except FlameError as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        await stack.aclose()
    if failures:
        for failure in failures:
            console.print(f"[bold red]FAILED[/] {failure}")
        return 1
    console.print("[bold green]Self-check passed.[/]")
    return 0


def _forge(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _check_codec(console: Console) -> list[str]:
    import numpy as np
    import pandas as pd

    payload = {
        "round": 3,
        "ciphertext": 7**900,
        "weights": np.linspace(-1.0, 1.0, 1000).reshape(10, 100),
        "counts": pd.DataFrame({"site": ["a", "b"], "n": [12, 30]}),
        "special": [math.inf, -0.0, None, b"\x00\xff", ("tuple", 1)],
    }
    data = codec.encode(payload)
    back = codec.decode(data)
    failures = []
    if not (
        back["ciphertext"] == payload["ciphertext"]
        and np.array_equal(back["weights"], payload["weights"])
        and back["counts"].equals(payload["counts"])
        and back["special"][1:] == payload["special"][1:]
        and back["special"][0] == math.inf
    ):
        failures.append("codec round trip changed the payload")
    try:
        codec.decode(pickle.dumps({"a": 1}))
        failures.append("pickled data was accepted without allow_pickle")
    except PickleRefusedError:
        pass
    console.print(f"  [green]codec[/] round trip of {len(data)} bytes exact; pickle refused by default")
    return failures
