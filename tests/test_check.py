"""``flame check``: a container's configuration and token, next to the CLI, without the emulator."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from flame.cli import main
from flame.node.loop import LoopThread
from flame.sim.stack import FlameStack


@pytest.fixture
def served() -> Iterator[FlameStack]:
    loop = LoopThread("test-check")
    stack = FlameStack.create(1)
    try:
        loop.run(stack.serve(), 30.0, "serving the stack")
        yield stack
    finally:
        loop.run(stack.aclose(), 30.0, "closing the stack")
        loop.stop()


def test_flame_check_verifies_the_token_against_the_node_jwks(
    served: FlameStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in served.env("node-1").items():
        monkeypatch.setenv(key, value)
    assert main(["check", "--jwks-url", served.jwks_url("node-1")]) == 0
    out = capsys.readouterr().out
    assert served.analysis_id in out and "signature verified" in out


def test_flame_check_says_when_the_token_is_empty(
    served: FlameStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in served.env("node-1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KEYCLOAK_TOKEN", "")
    assert main(["check"]) == 1
    assert "KEYCLOAK_TOKEN is empty" in capsys.readouterr().out


def test_flame_check_is_production_code() -> None:
    code = "import sys, flame.check, flame.cli; assert 'flame.sim' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
