"""Conventions of the ``flame`` command: --version, -q/-v, documented exit codes, ``flame run`` off a node."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from flame.cli import NODE_VARIABLES, main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mean_std" / "analysis.py"


@pytest.fixture
def flame_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("flame")
    root_level, level = logging.getLogger().level, logger.level
    yield logger
    logger.setLevel(level)
    logging.getLogger().setLevel(root_level)


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"flame {metadata.version('flame-python-sdk')}"


def test_help_documents_exit_codes_and_loudness(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "-q, --quiet" in out and "-v, --verbose" in out and "--version" in out
    for line in ("0    success", "1    the analysis failed", "2    usage error"):
        assert line in out


@pytest.mark.parametrize(
    ("flags", "level"), [(["-v"], logging.DEBUG), (["-q"], logging.WARNING), (["-qq"], logging.ERROR)]
)
def test_quiet_and_verbose_set_the_flame_logger_only(
    flags: list[str], level: int, flame_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in NODE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    root_level = logging.getLogger().level
    assert main([*flags, "run", str(EXAMPLE)]) == 2  # not on a node: nothing runs, the level is set
    assert flame_logger.level == level
    assert logging.getLogger().level == root_level


def test_quiet_and_verbose_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["-q", "-v", "run", str(EXAMPLE)])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_flame_run_off_a_node_says_how_to_run_locally_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k not in NODE_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-m", "flame", "run", str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "ConfigurationError: ANALYSIS_ID: is not set" in done.stderr
    assert "not on a FLAME node: none of ANALYSIS_ID" in done.stderr
    assert f"flame sim {EXAMPLE} --data DIR --nodes 3" in done.stderr
    assert "flame node up --nodes 3 --data DIR" in done.stderr


def test_flame_run_with_a_broken_node_environment_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in NODE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANALYSIS_ID", "not-a-uuid")
    assert main(["run", str(EXAMPLE)]) == 2
    err = capsys.readouterr().err
    assert "ConfigurationError: ANALYSIS_ID: 'not-a-uuid' is not a UUID" in err
    assert "not on a FLAME node" not in err  # it is one, misconfigured


def test_an_emulator_command_without_the_sim_extra_names_the_extra() -> None:
    blocked = "import sys; sys.modules.update(rich=None, minio=None); from flame.cli import main; sys.exit(main(['demo']))"
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "comes with the SDK's 'sim' extra: pip install 'flame-python-sdk[sim]'" in done.stderr


def test_the_node_side_imports_nothing_of_the_sim_extra() -> None:
    probe = (
        "import sys; sys.modules.update(rich=None, minio=None); "
        "import flame, flame.runner, flame.star, flamesdk, flame.node.runtime, flame.federated, flame.cli; "
        "print(sorted(m for m in sys.modules if m.startswith('flame.sim')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
