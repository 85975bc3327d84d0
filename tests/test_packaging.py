"""What an installed SDK brings: metadata, extras, the licence, the demo's data and the templates."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ROOT / "src" / "flame" / "demo_files"
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project: dict[str, object] = data["project"]
    return project


def _names(requirements: object) -> set[str]:
    assert isinstance(requirements, list)
    return {re.split(r"[\[<>=!~; ]", str(r), maxsplit=1)[0].lower() for r in requirements}


def test_the_demo_data_shipped_in_the_package_is_the_examples() -> None:
    # flame demo runs examples/mean_std on examples/data; an installed wheel has its own copy of both
    pairs = [(ROOT / "examples/mean_std/analysis.py", PACKAGED / "mean_std/analysis.py")]
    pairs += [
        (ROOT / f"examples/data/node-{i}/s3/patients.csv", PACKAGED / f"data/node-{i}/s3/patients.csv")
        for i in (1, 2, 3)
    ]
    for source, copy in pairs:
        assert filecmp.cmp(source, copy, shallow=False), f"{copy} differs from {source}: copy it again"
    size = sum(p.stat().st_size for p in PACKAGED.rglob("*") if p.is_file())
    assert size < 1_500_000, size


def test_licence_file_is_the_apache_2_text_the_metadata_names() -> None:
    project = _project()
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202


def test_a_node_installs_no_emulator_packages_and_the_extras_say_what_is_optional() -> None:
    project = _project()
    runtime = _names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    assert not {"minio", "rich", "pyarrow", "matplotlib"} & runtime
    assert "opendp" in runtime  # the node's differential privacy
    assert _names(extras["sim"]) == {"minio", "rich"}
    assert _names(extras["parquet"]) == {"pyarrow"} and _names(extras["plot"]) == {"matplotlib"}
    assert "flame-python-sdk[sim,parquet,plot,docs]" in extras["test"]
    assert {"scipy", "formulaic"} <= runtime  # flame.stats runs on the nodes
    # msgpack 1.0.x lacks Packer(buf_size=...), which the codec uses: every payload would fail
    assert "msgpack>=1.1" in _names(project["dependencies"]) | set(project["dependencies"])
    classifiers = project["classifiers"]
    assert isinstance(classifiers, list)
    versions = [
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions[0] == str(project["requires-python"]).removeprefix(">=")


@pytest.mark.integration
def test_the_wheel_ships_licence_demo_files_and_templates(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("flame_python_sdk-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        demo = [info for info in archive.infolist() if info.filename.startswith("flame/demo_files/")]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"flame/demo_files/mean_std/analysis.py", "flame/demo_files/data/node-2/s3/patients.csv"} <= names
    assert sum(info.file_size for info in demo) < 1_500_000
    assert {"flame/templates/Dockerfile", "flame/templates/requirements-test.txt"} <= names
    assert "License-Expression: Apache-2.0" in metadata
    for extra in ("sim", "parquet", "plot", "test"):
        assert f"Provides-Extra: {extra}" in metadata
    assert 'Requires-Dist: minio>=7.2; extra == "sim"' in metadata
    assert "Requires-Dist: msgpack>=1.1\n" in metadata
