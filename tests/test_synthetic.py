"""The synthetic patient generator: determinism, ranges, FHIR structure, splitting, and the known model."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flame.sim import synthetic as syn
from flame.sim.fhir_search import FhirStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
BASE = "http://fhir.test/fhir"


def fhir_total(store: FhirStore, rtype: str, **params: str) -> int:
    bundle = store.search(rtype, [*params.items(), ("_summary", "count")], BASE)
    return int(bundle["total"])


# -- determinism -------------------------------------------------------------------------------------------


def test_same_seed_same_patients_and_resources() -> None:
    a = syn.generate_patients(300, 7, site="a")
    b = syn.generate_patients(300, 7, site="a")
    pd.testing.assert_frame_equal(a, b)
    assert syn.to_fhir(a) == syn.to_fhir(b)
    assert syn.dump_bundle(syn.to_fhir(a)) == syn.dump_bundle(syn.to_fhir(b))


def test_other_seed_or_site_other_patients() -> None:
    base = syn.generate_patients(300, 7, site="a")
    other_seed = syn.generate_patients(300, 8, site="a")
    other_site = syn.generate_patients(300, 7, site="b")
    for other in (other_seed, other_site):
        assert not np.array_equal(base["bmi"].to_numpy(), other["bmi"].to_numpy())
        assert not base["birthdate"].equals(other["birthdate"])
    assert syn.to_fhir(base) != syn.to_fhir(other_seed)
    assert syn.site_profile(7, "a") == syn.site_profile(7, "a")
    assert syn.site_profile(7, "a") != syn.site_profile(8, "a")
    assert syn.site_profile(7, "a") != syn.site_profile(7, "b")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        syn.generate_patients(-1, 0)
    with pytest.raises(ValueError):
        syn.generate_patients(10, -1)
    with pytest.raises(ValueError):
        syn.generate_patients(10, 0, prevalence=1.0)
    with pytest.raises(ValueError):
        syn.generate_federation(Path("unused"), sites=3, patients_per_site=(1, 2))
    empty = syn.generate_patients(0, 0)
    assert list(empty.columns) == list(syn.COLUMNS) and len(empty) == 0


# -- shapes and ranges -------------------------------------------------------------------------------------


def test_columns_types_and_ranges() -> None:
    df = syn.generate_patients(2000, 3, site="site-x")
    assert list(df.columns) == list(syn.COLUMNS)
    assert len(df) == 2000 and df["patient_id"].is_unique
    assert (df["site"] == "site-x").all()
    assert set(df["gender"]) == {"male", "female"}
    assert 0.4 < (df["gender"] == "male").mean() < 0.6
    assert df["birthdate"].map(lambda s: bool(ISO_DATE.match(s))).all()
    ages = [
        syn.REFERENCE_DATE.year - b.year - ((b.month, b.day) > (1, 1))
        for b in map(date.fromisoformat, df["birthdate"])
    ]
    assert df["age"].tolist() == ages
    for column in ("age", "smoker", "diabetes"):
        assert pd.api.types.is_integer_dtype(df[column])
    for column in ("bmi", "systolic_bp", "cholesterol"):
        assert pd.api.types.is_float_dtype(df[column])
    assert df["age"].between(18, 90).all()
    assert df["bmi"].between(16, 55).all()
    assert df["systolic_bp"].between(90, 210).all()
    assert df["cholesterol"].between(110, 350).all()
    assert set(df["smoker"]) == {0, 1} and set(df["diabetes"]) == {0, 1}
    assert 35 < df["age"].mean() < 65 and 23 < df["bmi"].mean() < 32
    assert 0.1 < df["smoker"].mean() < 0.35
    assert 0.04 < df["diabetes"].mean() < 0.3


def test_prevalence_and_heterogeneity() -> None:
    reference = syn.generate_patients(20000, 1, site="ref", profile=syn.SiteProfile(0.0, 0.0))
    assert abs(reference["diabetes"].mean() - syn.DEFAULT_PREVALENCE) < 0.01
    rare = syn.generate_patients(20000, 1, site="ref", profile=syn.SiteProfile(0.0, 0.0), prevalence=0.03)
    assert abs(rare["diabetes"].mean() - 0.03) < 0.006
    assert syn.site_profile(1, "ref", heterogeneity=0.0) == syn.SiteProfile(0.0, 0.0)
    for site in ("node-1", "node-2", "node-3"):
        profile = syn.site_profile(2026, site)
        assert abs(profile.age_shift) <= syn.MAX_AGE_SHIFT and abs(profile.bmi_shift) <= syn.MAX_BMI_SHIFT
    young = syn.generate_patients(5000, 1, site="a", profile=syn.SiteProfile(-8.0, -2.5))
    old = syn.generate_patients(5000, 1, site="b", profile=syn.SiteProfile(8.0, 2.5))
    assert old["age"].mean() - young["age"].mean() > 12
    assert old["bmi"].mean() - young["bmi"].mean() > 4
    assert old["diabetes"].mean() > young["diabetes"].mean()


def test_ids_unique_across_sites(tmp_path: Path) -> None:
    frames = syn.generate_federation(tmp_path, sites=3, patients_per_site=(30, 20, 40), seed=5)
    assert list(frames) == ["node-1", "node-2", "node-3"]
    assert [len(f) for f in frames.values()] == [30, 20, 40]
    ids = pd.concat(frames.values())["patient_id"]
    assert ids.is_unique and ids.map(lambda s: bool(FHIR_ID.match(s))).all()
    odd = [syn.generate_patients(5, 0, site=s)["patient_id"] for s in ("a_b", "a-b", "a.b", "x" * 80)]
    all_odd = pd.concat(odd)
    assert all_odd.is_unique and all_odd.map(lambda s: bool(FHIR_ID.match(s))).all()


# -- FHIR --------------------------------------------------------------------------------------------------


def check_coding(concept: Any, system: str | None = None) -> list[str]:
    assert isinstance(concept, dict) and isinstance(concept["coding"], list) and concept["coding"]
    for coding in concept["coding"]:
        assert isinstance(coding["system"], str) and coding["system"].startswith("http")
        assert isinstance(coding["code"], str) and coding["code"]
        if system is not None:
            assert coding["system"] == system
    return [c["code"] for c in concept["coding"]]


def check_resource(resource: dict[str, Any], patients: set[str]) -> None:
    """Structural checks against FHIR R4 (the elements this generator writes)."""
    rtype = resource["resourceType"]
    assert FHIR_ID.match(resource["id"])
    if rtype == "Patient":
        assert resource["gender"] in ("male", "female", "other", "unknown")
        assert ISO_DATE.match(resource["birthDate"])
        return
    assert resource["subject"]["reference"] in {f"Patient/{p}" for p in patients}
    if rtype == "Observation":
        assert resource["status"] == "final"
        (code,) = check_coding(resource["code"], syn.LOINC)
        assert ISO_DATE.match(resource["effectiveDateTime"])
        if code == syn.SMOKING_STATUS[0]:
            assert check_coding(resource["valueCodeableConcept"], syn.SNOMED)[0] in (
                syn.SMOKER[0],
                syn.NEVER_SMOKED[0],
            )
        else:
            assert code in {"39156-5", "8480-6", "2093-3"}
            quantity = resource["valueQuantity"]
            assert isinstance(quantity["value"], (int, float)) and not isinstance(quantity["value"], bool)
            assert quantity["system"] == "http://unitsofmeasure.org"
            assert (
                quantity["code"]
                == quantity["unit"]
                == {"39156-5": "kg/m2", "8480-6": "mm[Hg]"}.get(code, "mg/dL")
            )
    elif rtype == "Condition":
        assert check_coding(resource["code"], syn.SNOMED) == ["44054006"]
        assert check_coding(resource["clinicalStatus"]) == ["active"]
        assert check_coding(resource["verificationStatus"]) == ["confirmed"]
    else:
        raise AssertionError(f"unexpected resource type {rtype}")


def test_fhir_structure() -> None:
    df = syn.generate_patients(400, 11, site="node-9")
    resources = syn.to_fhir(df)
    patients = {r["id"] for r in resources if r["resourceType"] == "Patient"}
    assert patients == set(df["patient_id"])
    for resource in resources:
        check_resource(resource, patients)
    keys = [(r["resourceType"], r["id"]) for r in resources]
    assert len(keys) == len(set(keys))
    counts = pd.Series([r["resourceType"] for r in resources]).value_counts()
    assert counts["Patient"] == 400 and counts["Observation"] == 4 * 400
    assert counts["Condition"] == df["diabetes"].sum()
    by_code: dict[str, list[float]] = {}
    for r in resources:
        if r["resourceType"] == "Observation" and "valueQuantity" in r:
            by_code.setdefault(r["code"]["coding"][0]["code"], []).append(r["valueQuantity"]["value"])
    assert by_code["39156-5"] == df["bmi"].tolist()
    assert by_code["8480-6"] == df["systolic_bp"].tolist()
    assert by_code["2093-3"] == df["cholesterol"].tolist()


def test_fhir_round_trip_and_missing_values() -> None:
    df = syn.generate_patients(150, 4, site="s")
    back = syn.from_fhir(syn.to_fhir(df), site="s")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    holes = df.copy()
    holes.loc[0, "bmi"] = np.nan
    resources = syn.to_fhir(holes)
    assert "s-p00001-bmi" not in {r["id"] for r in resources}
    assert np.isnan(syn.from_fhir(resources).loc[0, "bmi"])


def test_written_site_loads_in_the_emulated_fhir_server(tmp_path: Path) -> None:
    df = syn.generate_patients(120, 2, site="node-1")
    written = syn.write_site(tmp_path / "node-1", df)
    assert written == [tmp_path / "node-1/s3/patients.csv", tmp_path / "node-1/fhir/patients.json"]
    bundle = json.loads(written[1].read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert all(u.startswith("urn:uuid:") for u in urls) and len(set(urls)) == len(urls)
    assert [e["resource"] for e in bundle["entry"]] == syn.to_fhir(df)

    store = FhirStore.from_folder(tmp_path / "node-1" / "fhir")
    assert len(store.resources("Patient")) == len(df)
    assert fhir_total(store, "Patient") == len(df)
    assert fhir_total(store, "Condition", code=f"{syn.SNOMED}|44054006") == df["diabetes"].sum()
    assert fhir_total(store, "Observation", code=f"{syn.LOINC}|39156-5") == len(df)
    assert fhir_total(store, "Patient", gender="male") == (df["gender"] == "male").sum()
    first = df["patient_id"].iloc[0]
    assert fhir_total(store, "Observation", subject=f"Patient/{first}") == 4
    pd.testing.assert_frame_equal(pd.read_csv(written[0]), df, check_dtype=False)


def test_ndjson_and_bundle_size(tmp_path: Path) -> None:
    df = syn.generate_patients(45, 2, site="n")
    (nd,) = syn.write_site(tmp_path / "a", df, fhir="ndjson", csv=False)
    assert nd == tmp_path / "a/fhir/resources.ndjson" and not (tmp_path / "a/s3").exists()
    assert [json.loads(line) for line in nd.read_text().splitlines()] == syn.to_fhir(df)
    chunks = syn.write_site(tmp_path / "b", df, csv=False, bundle_size=20)
    assert [p.name for p in chunks] == ["patients-0001.json", "patients-0002.json", "patients-0003.json"]
    syn.write_site(tmp_path / "b", df.iloc[:20], csv=False, bundle_size=20)
    assert [p.name for p in (tmp_path / "b/fhir").iterdir()] == ["patients-0001.json"]
    for folder in (tmp_path / "a/fhir", tmp_path / "b/fhir"):
        store = FhirStore.from_folder(folder)
        assert fhir_total(store, "Patient") == (45 if folder.parent.name == "a" else 20)
    assert syn.write_site(tmp_path / "c", df, fhir=False, csv=False) == []


# -- splitting ---------------------------------------------------------------------------------------------


def test_split_csv_keeps_patients_whole(tmp_path: Path) -> None:
    df = syn.generate_patients(101, 3, site="src")
    visits = pd.concat([df, df.assign(bmi=df["bmi"] + 1.0)]).reset_index(drop=True)  # two rows a patient
    path = tmp_path / "visits.csv"
    visits.to_csv(path, index=False)
    parts = syn.split_csv(path, 4, seed=9)
    assert len(parts) == 4
    assert sorted(len(p["patient_id"].unique()) for p in parts) == [25, 25, 25, 26]
    seen = [set(p["patient_id"]) for p in parts]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 101
    assert all((p["patient_id"].value_counts() == 2).all() for p in parts)
    key = ["patient_id", "bmi"]
    rejoined = pd.concat(parts).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(rejoined, visits.sort_values(key).reset_index(drop=True), check_dtype=False)
    for part in parts:  # file order kept within a part
        assert part.index.equals(pd.RangeIndex(len(part)))
        assert list(part["patient_id"].iloc[: len(part) // 2]) == list(
            part["patient_id"].iloc[len(part) // 2 :]
        )
    again = syn.split_csv(path, 4, seed=9)
    assert all(a.equals(b) for a, b in zip(parts, again, strict=True))
    other = syn.split_csv(path, 4, seed=10)
    assert [set(p["patient_id"]) for p in other] != seen
    tiny = tmp_path / "tiny.csv"
    pd.DataFrame({"x": [1, 2]}).to_csv(tiny, index=False)
    assert [len(p) for p in syn.split_csv(tiny, 3, seed=0)] in ([1, 1, 0], [1, 0, 1], [0, 1, 1])
    with pytest.raises(ValueError):
        syn.split_csv(tiny, 0, seed=0)


def test_split_fhir_bundle_keeps_patients_whole(tmp_path: Path) -> None:
    df = syn.generate_patients(60, 3, site="src")
    resources = syn.to_fhir(df)
    org = {"resourceType": "Organization", "id": "hospital", "name": "Synthetic Hospital"}
    path = tmp_path / "all.json"
    path.write_text(syn.dump_bundle([org, *resources]))
    parts = syn.split_fhir_bundle(path, 3, seed=1)
    assert [sum(r["resourceType"] == "Patient" for r in p) for p in parts] == [20, 20, 20]
    for part in parts:
        assert part[0] == org  # shared resources go to every node
        patients = {r["id"] for r in part if r["resourceType"] == "Patient"}
        for resource in part[1:]:
            check_resource(resource, patients)  # every reference resolves within the part
    flat = [r for p in parts for r in p if r["resourceType"] != "Organization"]
    assert sorted(json.dumps(r, sort_keys=True) for r in flat) == sorted(
        json.dumps(r, sort_keys=True) for r in resources
    )
    assert syn.split_fhir_bundle(path, 3, seed=1) == parts
    assert syn.split_fhir_bundle(path, 3, seed=2) != parts
    nd = tmp_path / "all.ndjson"
    nd.write_text("".join(json.dumps(r) + "\n" for r in resources))
    nd_parts = syn.split_fhir_bundle(nd, 3, seed=1)
    assert nd_parts == [p[1:] for p in parts]


def test_split_fhir_bundle_resolves_urn_references(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1"}},
            {"fullUrl": "urn:uuid:p2", "resource": {"resourceType": "Patient"}},
            {
                "fullUrl": "urn:uuid:o1",
                "resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:p2"}},
            },
            {
                "resource": {
                    "resourceType": "Encounter",
                    "id": "e1",
                    "subject": {"reference": "http://x/fhir/Patient/p1/_history/2"},
                }
            },
        ],
    }
    path = tmp_path / "tx.json"
    path.write_text(json.dumps(bundle))
    parts = syn.split_fhir_bundle(path, 2, seed=0)
    assert sorted(len(p) for p in parts) == [2, 2]
    for part in parts:
        patient = part[0]
        assert patient["resourceType"] == "Patient"
        assert f"Patient/{patient['id']}" in part[1]["subject"]["reference"]
    observation = next(r for p in parts for r in p if r["resourceType"] == "Observation")
    assert observation["subject"] == {"reference": "Patient/p2"}


# -- the model ---------------------------------------------------------------------------------------------


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Maximum likelihood logistic regression by Newton steps: (coefficients, standard errors)."""
    beta = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        hessian = x.T @ (x * (p * (1.0 - p))[:, None])
        step = np.linalg.solve(hessian, x.T @ (y - p))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    covariance = np.linalg.inv(x.T @ (x * (p * (1.0 - p))[:, None]))
    return beta, np.sqrt(np.diag(covariance))


def test_true_coefficients_documented() -> None:
    assert tuple(syn.TRUE_COEFFICIENTS) == syn.FEATURES
    assert syn.TRUE_COEFFICIENTS["intercept"] == pytest.approx(-2.71, abs=0.01)
    assert syn.true_beta().tolist() == [syn.TRUE_COEFFICIENTS[f] for f in syn.FEATURES]
    assert syn.true_coefficients(0.3)["intercept"] > syn.TRUE_COEFFICIENTS["intercept"]


def test_pooled_logistic_regression_recovers_the_model() -> None:
    frames = [
        syn.generate_patients(n, 42, site=site)
        for n, site in ((1700, "node-1"), (1500, "node-2"), (1800, "node-3"))
    ]
    pooled = pd.concat(frames, ignore_index=True)
    assert len(pooled) == 5000
    beta, se = fit_logistic(syn.design_matrix(pooled), pooled["diabetes"].to_numpy(dtype=float))
    truth = syn.true_beta()
    assert np.all(np.abs(beta - truth) < 4 * se), (beta, truth, se)
    assert np.all(np.abs(beta - truth) < 0.35), (beta, truth)
    assert np.all(se < 0.15)


# -- files and the command line ----------------------------------------------------------------------------


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fed"
    assert syn.main([str(out), "--sites", "2", "--patients", "20", "30", "--seed", "3", "--ndjson"]) == 0
    assert "node-2: 30 patients" in capsys.readouterr().out
    assert len(pd.read_csv(out / "node-2/s3/patients.csv")) == 30
    store = FhirStore.from_folder(out / "node-1/fhir")
    assert fhir_total(store, "Patient") == 20
    with pytest.raises(SystemExit):
        syn.main([str(out), "--sites", "3", "--patients", "1", "2"])


def test_committed_examples_are_reproducible(tmp_path: Path) -> None:
    readme = (EXAMPLES / "README.md").read_text()
    command = "python -m flame.sim.synthetic examples/data --sites 3 --patients 200 150 250 --seed 2026"
    assert command in readme
    syn.main([str(tmp_path), "--sites", "3", "--patients", "200", "150", "250", "--seed", "2026"])
    committed = sorted(p.relative_to(EXAMPLES) for p in EXAMPLES.rglob("*") if p.is_file())
    assert committed == sorted([Path("README.md")] + [p.relative_to(tmp_path) for p in tmp_path.rglob("*.*")])
    total = 0
    for rel in committed:
        total += (EXAMPLES / rel).stat().st_size
        if rel.name != "README.md":
            assert (EXAMPLES / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    assert total < 1_500_000
    assert [len(pd.read_csv(EXAMPLES / f"node-{i}/s3/patients.csv")) for i in (1, 2, 3)] == [200, 150, 250]
