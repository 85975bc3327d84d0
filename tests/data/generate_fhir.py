"""Regenerate the FHIR fixture of tests/data/fhir (deterministic; run from the repository root).

25 Patients ``pat-01`` ... ``pat-25``: ``gender`` female for odd numbers, male for even ones;
``birthDate`` ``{1950+i}-{(i % 9) + 1:02d}-15``. Observations per patient ``i``: ``obs-{i}-h`` (LOINC
8302-2, body height) and ``obs-{i}-w`` (LOINC 29463-7, body weight), plus ``obs-{i}-g`` (LOINC 2339-0,
glucose) when ``i % 5 == 0``; ``effectiveDateTime`` ``2020-01-{i:02d}T10:00:00Z``. Conditions:
``cond-{i}-dm`` (SNOMED 44054006, diabetes) when ``i % 3 == 0``, ``cond-{i}-htn`` (SNOMED 38341003,
hypertension) when ``i % 4 == 0``.

Files: ``bundle-a.json`` (transaction Bundle: Patients 1-15 with ``urn:uuid`` fullUrls and the Observations
of Patients 1-5 referring to them by ``urn:uuid``), ``patients-b.ndjson`` (Patients 16-24),
``more/patient-25.json`` (a single resource), ``observations.ndjson`` (the other Observations, referring
to ``Patient/pat-XX``), ``conditions.json`` (collection Bundle).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "fhir"
NS = uuid.UUID("7d1b0c9e-3f5a-4e2b-8c6d-9a0f1e2d3c4b")
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OBS_CODES = {
    "h": ("8302-2", "Body height", 150.0, "cm"),
    "w": ("29463-7", "Body weight", 50.0, "kg"),
    "g": ("2339-0", "Glucose", 80.0, "mg/dL"),
}


def pid(i: int) -> str:
    return f"pat-{i:02d}"


def patient(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid(i),
        "identifier": [{"system": "urn:flame:test:mrn", "value": f"MRN{i:04d}"}],
        "name": [{"family": f"Family{i:02d}", "given": [f"Given{i:02d}"]}],
        "gender": "female" if i % 2 else "male",
        "birthDate": f"{1950 + i}-{(i % 9) + 1:02d}-15",
    }


def observations(i: int, subject: str) -> list[dict[str, Any]]:
    kinds = ["h", "w"] + (["g"] if i % 5 == 0 else [])
    out = []
    for kind in kinds:
        code, display, base, unit = OBS_CODES[kind]
        out.append(
            {
                "resourceType": "Observation",
                "id": f"obs-{i:02d}-{kind}",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                "subject": {"reference": subject},
                "effectiveDateTime": f"2020-01-{i:02d}T10:00:00Z",
                "valueQuantity": {"value": base + i, "unit": unit},
            }
        )
    return out


def conditions(i: int) -> list[dict[str, Any]]:
    out = []
    for suffix, code, display, every in (
        ("dm", "44054006", "Diabetes mellitus type 2", 3),
        ("htn", "38341003", "Hypertension", 4),
    ):
        if i % every == 0:
            out.append(
                {
                    "resourceType": "Condition",
                    "id": f"cond-{i:02d}-{suffix}",
                    "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
                    "subject": {"reference": f"Patient/{pid(i)}"},
                    "onsetDateTime": f"{2000 + i}-06-01",
                }
            )
    return out


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def write_ndjson(path: Path, items: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in items), encoding="utf-8")


def main() -> None:
    entries = []
    urns = {i: f"urn:uuid:{uuid.uuid5(NS, pid(i))}" for i in range(1, 16)}
    for i in range(1, 16):
        entries.append(
            {
                "fullUrl": urns[i],
                "resource": patient(i),
                "request": {"method": "PUT", "url": f"Patient/{pid(i)}"},
            }
        )
    for i in range(1, 6):
        for obs in observations(i, urns[i]):
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid5(NS, obs['id'])}",
                    "resource": obs,
                    "request": {"method": "PUT", "url": f"Observation/{obs['id']}"},
                }
            )
    write_json(OUT / "bundle-a.json", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    write_ndjson(OUT / "patients-b.ndjson", [patient(i) for i in range(16, 25)])
    write_json(OUT / "more" / "patient-25.json", patient(25))
    write_ndjson(
        OUT / "observations.ndjson", [o for i in range(6, 26) for o in observations(i, f"Patient/{pid(i)}")]
    )
    write_json(
        OUT / "conditions.json",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": c} for i in range(1, 26) for c in conditions(i)],
        },
    )


if __name__ == "__main__":
    main()
