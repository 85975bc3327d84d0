"""One FHIR file loader (flame.sim.fhir_search.load_file): the emulated FHIR server and the data
splitter of `flame sim --split` read the same file the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flame.errors import FlameError
from flame.sim import synthetic as syn
from flame.sim.fhir_search import FhirLoadError, FhirStore, load_file, load_folder

PATIENT_URL = "urn:uuid:7d1c4b7e-0c53-4f44-9a1e-3f7c2a6b9d01"


def _bundle() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": PATIENT_URL, "resource": {"resourceType": "Patient", "gender": "female"}},
            {
                "fullUrl": "urn:uuid:0f0e0d0c-0b0a-4908-8706-050403020100",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "age"},
                    "subject": {"reference": PATIENT_URL},
                },
            },
            # no fullUrl, no id: an id is made for it, the same on every load
            {"resource": {"resourceType": "Organization", "name": "Clinic"}},
            {"resource": {"resourceType": "Patient", "id": "p2"}},
            {"resource": {"resourceType": "Patient", "id": "p2", "gender": "male"}},  # the last counts
        ],
    }


def test_the_server_and_the_splitter_read_a_file_alike(tmp_path: Path) -> None:
    folder = tmp_path / "fhir"
    folder.mkdir()
    path = folder / "bundle.json"
    path.write_text(json.dumps(_bundle()), encoding="utf-8")
    loaded = load_file(path, "bundle.json")
    assert [r["resourceType"] for r in loaded] == ["Patient", "Observation", "Organization", "Patient"]
    patient, observation, organization, p2 = loaded
    assert patient["id"] == PATIENT_URL.removeprefix("urn:uuid:")
    assert observation["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert organization["id"] and load_file(path, "bundle.json")[2]["id"] == organization["id"]
    assert p2 == {"resourceType": "Patient", "id": "p2", "gender": "male"}
    assert load_folder(folder) == loaded
    assert FhirStore.from_folder(folder).resources("Patient") == [patient, p2]
    # the splitter: one part holds everything, as the server would serve it
    (part,) = syn.split_fhir_bundle(path, 1, seed=0)
    assert [r["resourceType"] for r in part] == ["Patient", "Observation", "Organization", "Patient"]
    assert part[1]["subject"] == observation["subject"]
    # two parts: the organization (no patient) goes to both, each patient with its observation
    parts = syn.split_fhir_bundle(path, 2, seed=0)
    assert all(any(r["resourceType"] == "Organization" for r in p) for p in parts)
    holder = next(p for p in parts if any(r.get("id") == patient["id"] for r in p))
    assert any(r["resourceType"] == "Observation" for r in holder)


def test_ndjson_lines_may_hold_bundles(tmp_path: Path) -> None:
    path = tmp_path / "all.ndjson"
    lines = [json.dumps(_bundle()), "", json.dumps({"resourceType": "Patient", "id": "p3"})]
    path.write_text("\n".join(lines), encoding="utf-8")
    assert [r["id"] for r in load_file(path) if r["resourceType"] == "Patient"][-1] == "p3"
    assert len(syn.split_fhir_bundle(path, 1, seed=0)[0]) == 5


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "cannot read"),
        (json.dumps({"id": "x"}), "no resourceType"),
        (json.dumps({"resourceType": "Spaceship", "id": "x"}), "unknown resource type 'Spaceship'"),
        (json.dumps([{"resourceType": "Patient"}, 3]), r"\[1\]: not a FHIR resource"),
    ],
)
def test_what_is_not_fhir_is_refused_naming_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    for load in (lambda: load_file(path), lambda: syn.split_fhir_bundle(path, 2, seed=0)):
        with pytest.raises(FhirLoadError, match=problem) as info:
            load()
        assert "broken.json" in str(info.value)
        assert isinstance(info.value, FlameError) and isinstance(info.value, ValueError)
