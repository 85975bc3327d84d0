"""Start-up cost: what ``import flame`` and a local run load, and what the emulated stack builds up front.

Each import check runs in a fresh interpreter, since this one has loaded everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from flame.sim import FlameStack, storage

SRC = str(Path(__file__).resolve().parents[1] / "src")

#: an analysis file's first use of the author API, up to (not into) ``flame.run``
FIRST_USE = """
import flame

class A(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        return {}

class B(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return {}

flame.FederationOptions(max_rounds=2)
flame.run
"""


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    probe = textwrap.dedent(code) + "\nimport json as _j, sys as _s\nprint(_j.dumps(sorted(_s.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_the_author_api_loads_no_web_framework() -> None:
    """An analysis file's ``import flame`` and first use load neither FastAPI/Starlette nor uvicorn."""
    loaded = top_level(loaded_after(FIRST_USE))
    assert "flame" in loaded
    assert not loaded & {"fastapi", "starlette", "uvicorn", "pydantic"}, loaded & {
        "fastapi",
        "starlette",
        "uvicorn",
        "pydantic",
    }


def test_the_author_api_loads_no_numerics_tokens_or_secure_aggregation() -> None:
    """NumPy, PyJWT and the Paillier protocols load when a run first needs them, not on first use."""
    loaded = loaded_after(FIRST_USE)
    assert not top_level(loaded) & {"numpy", "pandas", "jwt", "gmpy2"}
    assert not loaded & {"flame.federated.secure", "flame.protocols.paillier", "flame.protocols.aggregation"}


def test_the_author_api_and_flame_sim_load_no_s3_client() -> None:
    """S3 (minio) loads when a stack first uses S3 storage, not on first use nor in ``flame sim``."""
    assert "minio" not in top_level(loaded_after(FIRST_USE))
    loaded = top_level(loaded_after("import flame.local.command"))
    assert "flame" in loaded and "minio" not in loaded


async def test_stack_builds_each_service_app_when_first_reached() -> None:
    """A stack builds a service's app on the first request that falls through to it, not up front; then
    keeps it."""
    async with FlameStack.create(1) as stack:
        assert dict(stack.service_apps) == {}
        async with stack.client("node-1") as client:
            response = await client.get("/healthz")
            assert response.status_code == 200
            assert dict(stack.service_apps) == {}
            response = await client.get(
                f"/message-broker/analyses/{stack.analysis_id}/participants/self",
                headers={"Authorization": f"Bearer {stack.node('node-1').token}"},
            )
            assert response.status_code == 200, response.text
            assert dict(stack.service_apps) == {}  # answered by the sidecar's plain handler
            response = await client.get(f"/message-broker/analyses/{stack.analysis_id}/participants/self")
            assert response.status_code == 401  # a refusal is the broker app's
        assert set(stack.service_apps) == {"message-broker"}
        broker_app = stack.service_apps["message-broker"]
        assert stack.service_apps["message-broker"] is broker_app
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=stack.app), base_url="http://stack.sim"
        ) as admin:
            nodes = (await admin.get("/_sim/nodes")).json()
        assert [node["name"] for node in nodes] == ["aggregator", "node-1"]


async def test_a_stack_registers_its_analysis_before_its_storage_app_is_built() -> None:
    """Every stack's storage accepts another stack's analysis at once, as when all apps were built up front."""
    first, second = FlameStack.create(1, seed=1), FlameStack.create(1, seed=2)
    try:
        assert "storage" not in dict(first.service_apps)
        assert storage.project_of(second, first.analysis_id) == first.project_id
    finally:
        for stack in (first, second):
            storage.unregister_analysis(stack.analysis_id)
            await stack.aclose()


async def test_the_stack_client_to_the_outside_is_made_on_first_use() -> None:
    """``stack.http`` is None unless started, one client while started (made when first asked for)."""
    stack = FlameStack.create(1)
    assert stack.http is None
    await stack.start()
    try:
        client = stack.http
        assert isinstance(client, httpx.AsyncClient) and stack.http is client
        assert stack.ssl_context() is stack.ssl_context()
    finally:
        await stack.aclose()
    assert stack.http is None and client.is_closed
