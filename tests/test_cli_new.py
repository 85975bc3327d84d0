"""``flame new``: a project from the templates that passes its own test and runs under ``flame sim``."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from flame import __version__
from flame.cli import main
from flame.newproject import FILES, ProjectError, create_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("projects")
    assert main(["new", "Mean-Age", "--dir", str(parent)]) == 0
    return parent / "Mean-Age"


def pooled(project: Path) -> pd.Series:
    frames = [pd.read_csv(path) for path in sorted(project.glob("data/node-*/s3/data.csv"))]
    return pd.concat(frames)["age"]


def test_the_project_has_its_files(project: Path) -> None:
    names = {path.name for path in project.iterdir()}
    assert names == {*FILES.values(), "data"}
    assert sorted(p.parent.parent.name for p in project.glob("data/*/s3/data.csv")) == [
        "node-1",
        "node-2",
        "node-3",
    ]
    analysis = (project / "analysis.py").read_text()
    assert "from analyzer import MeanAnalyzer\n" in analysis
    assert "from aggregator import MeanAggregator\n" in analysis
    assert "flame.run(MeanAnalyzer(), MeanAggregator()" in analysis
    for name in ("analysis.py", "analyzer.py", "aggregator.py", "test_analysis.py", "make_data.py"):
        text = (project / name).read_text()
        assert "_generic" not in text and "type: ignore" not in text, name
        compile(text, name, "exec")
    assert "from analyzer import COLUMN, DATA_KEY\n" in (project / "test_analysis.py").read_text()


def test_the_dockerfile_builds_a_flame_analysis_image(project: Path) -> None:
    lines = (project / "Dockerfile").read_text().splitlines()
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    # the SDK comes from its wheel, not from PyPI, and without the emulator's extra
    wheel = f"flame_python_sdk-{__version__}-py3-none-any.whl"
    assert f"COPY wheels/{wheel} /tmp/" in instructions
    assert f"RUN pip install /tmp/{wheel} \\" in instructions
    assert "COPY analysis.py analyzer.py aggregator.py ./" in instructions
    assert "EXPOSE 8000" in instructions
    assert instructions[-1] == 'CMD ["python", "analysis.py"]'
    assert "docker build -t mean-age ." in (project / "Dockerfile").read_text()  # tags are lower case
    assert "data/" in (project / ".dockerignore").read_text().splitlines()
    readme = (project / "README.md").read_text()
    assert readme.startswith("# Mean-Age\n") and "{{" not in readme
    # the test's own dependencies are declared: pytest and the SDK's wheel with the emulator's extra
    requirements = (project / "requirements-test.txt").read_text().splitlines()
    assert f"./wheels/{wheel}[sim]" in requirements and "pytest>=8" in requirements


def test_sample_data_is_deterministic(project: Path, tmp_path: Path) -> None:
    again = create_project("again", tmp_path)
    for path in project.glob("data/*/s3/data.csv"):
        assert (again / path.relative_to(project)).read_bytes() == path.read_bytes()
    other = create_project("other", tmp_path, seed=1)
    assert (other / "data/node-1/s3/data.csv").read_bytes() != (
        project / "data/node-1/s3/data.csv"
    ).read_bytes()
    frame = pd.read_csv(project / "data/node-2/s3/data.csv")
    assert list(frame.columns) == ["patient_id", "age", "bmi"] and len(frame) == 55


def test_existing_folders_and_bad_names_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["new", "taken", "--dir", str(tmp_path)]) == 1
    assert "the folder is not empty" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]  # left as it was
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProjectError, match="not a folder"):
        create_project("file", tmp_path)
    for bad in ("../up", "a/b", "", "-x", ".."):
        with pytest.raises(ProjectError, match="not a project name"):
            create_project(bad, tmp_path)
    (tmp_path / "empty").mkdir()
    assert (create_project("empty", tmp_path) / "analysis.py").is_file()  # an empty folder is fine


def test_templates_are_in_the_package() -> None:
    templates = resources.files("flame").joinpath("templates")
    for template in FILES:
        assert templates.joinpath(template).is_file(), template


def test_the_project_passes_its_own_test(project: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_analysis.py"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_the_project_runs_under_flame_sim_unchanged(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    code = main(
        [
            "sim",
            str(project / "analysis.py"),
            "--data",
            str(project / "data"),
            "--no-live",
            "--report",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(report.read_text())["result"]
    ages = pooled(project)
    assert result["n"] == len(ages) and result["nodes"] == 3
    assert result["mean"] == pytest.approx(ages.mean(), rel=1e-12)
    assert f"final result: {result}" in out


@pytest.mark.process
def test_the_project_runs_as_node_processes(project: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flame",
            "sim",
            "analysis.py",
            "--data",
            "data",
            "--processes",
            "--no-live",
            "--report",
            str(report),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    texts = [entry["text"] for entry in json.loads(report.read_text())["final_results"].values()]
    ages = pooled(project)
    assert len(texts) == 1 and f"'n': {len(ages)}" in texts[0]
