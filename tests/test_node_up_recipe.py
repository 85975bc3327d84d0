"""``flame node up`` as the README's recipe runs it: one stack process, one ``flame run`` process per node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from flame.node.serving import HTTPServer
from flame.sim import FlameStack, StackSettings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mean_std" / "analysis.py"
DATA = ROOT / "examples" / "data"


#: ``flame ARGS`` with the packages of the ``sim`` extra made unimportable: a node needs none of them
WITHOUT_SIM_EXTRA = (
    "import sys; sys.modules.update(rich=None, minio=None); from flame.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def _read_until_ready(process: subprocess.Popen[str], deadline: float) -> str:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # blocks until the stack printed its environments
        lines.append(line)
        if line.startswith("Press Ctrl-C") or time.monotonic() > deadline:
            break
    return "".join(lines)


@pytest.mark.integration
@pytest.mark.process
def test_one_flame_run_per_node_against_flame_node_up(tmp_path: Path) -> None:
    # about 10 s on a quiet machine; the bound leaves room for a loaded one (first imports of pandas, ...)
    deadline = time.monotonic() + 90
    env_dir = tmp_path / "env"
    stack = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flame",
            "node",
            "up",
            "--nodes",
            "3",
            "--data",
            str(DATA),
            "--env-dir",
            str(env_dir),
            "--env-file",
            str(tmp_path / "env.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs: dict[str, subprocess.Popen[str]] = {}
    try:
        output = _read_until_ready(stack, deadline)
        environments = json.loads((tmp_path / "env.json").read_text())
        assert set(environments) == {"aggregator", "node-1", "node-2", "node-3"}
        ports = {name: env["FLAME_ANALYSIS_PORT"] for name, env in environments.items()}
        assert len(set(ports.values())) == 4, ports  # distinct API ports, picked for us
        assert all(env["FLAME_ANALYSIS_HOST"] == "127.0.0.1" for env in environments.values())
        assert f"export FLAME_ANALYSIS_PORT={ports['node-2']}" in output
        # the .env files say the same, for `set -a; . node-1.env`
        lines = (env_dir / "node-1.env").read_text().splitlines()
        assert f"FLAME_ANALYSIS_PORT={ports['node-1']}" in lines
        for name, env in environments.items():
            runs[name] = subprocess.Popen(
                [sys.executable, "-c", WITHOUT_SIM_EXTRA, "-q", "run", str(EXAMPLE)],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        for name, run in runs.items():
            out, _ = run.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert run.returncode == 0, (name, out[-3000:])
        base = output.split(" on ", 1)[1].split()[0]
        analysis_id = environments["node-1"]["ANALYSIS_ID"]
        final = httpx.get(f"{base}/_sim/final/{analysis_id}", timeout=5).json()["results"]
        assert len(final) == 1
        text = httpx.get(f"{base}/_sim/final/{analysis_id}/{final[0]['filename']}", timeout=5).text
        assert "'age'" in text and "'n': 600" in text  # 3 x 200 patients of examples/data
        dropped = httpx.get(f"{base}/_sim/events", params={"kind": "delivery.dropped"}, timeout=5).json()
        assert dropped == []  # every webhook reached its analysis (no 502 from the sidecar)
        attached = httpx.get(f"{base}/_sim/events", params={"kind": "analysis.attach"}, timeout=5).json()
        assert {e["node"] for e in attached} == set(environments)
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.communicate()
        stack.send_signal(signal.SIGINT)
        try:
            out, err = stack.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            stack.kill()
            out, err = stack.communicate()
    assert stack.returncode == 0, err
    assert "stopped." in out
    # flame node up showed how the nodes went, and where the final result is
    assert "aggregator: executed" in out and "node-3: executed" in out
    assert f"final result: {base}/_sim/final/{analysis_id}/{final[0]['filename']}" in out


async def test_admin_route_attaches_an_analysis_at_run_time() -> None:
    api = FastAPI()

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "executing"}

    server = HTTPServer(api, "127.0.0.1", 0)  # a real analysis API on loopback
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
    admin = httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.app), base_url="http://stack")
    async with stack, admin, stack.client("node-1") as node:
        # before: the sidecar has no analysis to forward to
        assert (await node.get("/analysis/healthz")).status_code == 502
        answer = await admin.post("/_sim/nodes/node-1/attach", json={"url": server.url + "/"})
        assert answer.status_code == 200
        assert answer.json() == {"name": "node-1", "analysis": server.url}
        forwarded = await node.get("/analysis/healthz")
        assert forwarded.status_code == 200 and forwarded.json() == {"status": "executing"}
        nodes = {n["name"]: n for n in (await admin.get("/_sim/nodes")).json()}
        assert nodes["node-1"]["analysis"] == server.url
        # a restarted pod's next analysis is attached at the same URL once it calls its sidecar
        await stack.restart_node("node-1")
        assert stack.analysis_client("node-1") is None
        async with stack.client("node-1") as restarted:
            await restarted.get(f"/message-broker/analyses/{stack.analysis_id}/participants/self")
            assert (await restarted.get("/analysis/healthz")).status_code == 200
        # refused: unknown node, no URL, not a URL
        assert (await admin.post("/_sim/nodes/node-9/attach", json={"url": "http://x"})).status_code == 404
        assert (await admin.post("/_sim/nodes/node-1/attach", json={})).status_code == 400
        bad = await admin.post("/_sim/nodes/node-1/attach", json={"url": "ftp://x"})
        assert bad.status_code == 400 and "absolute http(s) URL" in bad.text
        assert (await admin.delete("/_sim/nodes/node-1/attach")).status_code == 204
        assert stack.analysis_client("node-1") is None and stack.expected_analysis("node-1") is None
    await server.aclose()
