"""Deterministic synthetic patients for the emulated node stack: CSV and FHIR R4 data with a known model.

Everything here is a pure function of its arguments (numpy's PCG64 seeded through a ``SeedSequence``; no
network, no clock): the same ``(n, seed, site)`` gives the same patients, bit for bit.

**Patients** (:func:`generate_patients`): one row per patient, columns :data:`COLUMNS`:

- ``patient_id``: ``"{site}-p{i:05d}"`` (``i`` from 1), a valid FHIR id, distinct for distinct sites
  (a site name that is not a FHIR id, or a long one, is shortened and suffixed with a hash of it);
- ``gender``: ``"male"``/``"female"`` (1:1); ``birthdate``: ISO date; ``age``: whole years at
  :data:`REFERENCE_DATE` (2026-01-01), 18 to 90, drawn Normal(50 + age shift, 16);
- ``bmi`` (kg/m2, 1 decimal, 16 to 55): 27 + bmi shift + 0.04 (age - 50) + Normal(0, 4.5);
- ``systolic_bp`` (mm[Hg], whole numbers as float, 90 to 210): 118 + 0.5 (age - 50) + 0.7 (bmi - 27) +
  4 male + Normal(0, 14);
- ``cholesterol`` (total, mg/dL, 1 decimal, 110 to 350): 195 + 0.5 (age - 50) + Normal(0, 35);
- ``smoker`` (0/1): Bernoulli(0.22 - 0.002 (age - 50), clipped to 0.05..0.45);
- ``diabetes`` (0/1): the outcome, Bernoulli(sigmoid(X @ beta)).

**The outcome model** (what a federated logistic regression should recover): ``X`` = :func:`design_matrix`
of the frame, the columns :data:`FEATURES` computed from the rounded values of the frame itself:

=================  ====================================  ====================================
feature            definition                            true coefficient
=================  ====================================  ====================================
``intercept``      1                                     calibrated to ``prevalence`` (below)
``age``            (age - 50) / 10                       0.6  (odds ratio 1.8 per decade)
``bmi``            (bmi - 27) / 5                        0.8
``systolic_bp``    (systolic_bp - 130) / 20              0.3
``cholesterol``    (cholesterol - 200) / 40              0.2
``smoker``         smoker (0/1)                          0.4
``male``           1 if gender == "male" else 0          0.3
=================  ====================================  ====================================

The intercept is the one that makes the expected prevalence of an unshifted site (age and bmi shift 0)
equal ``prevalence`` (default :data:`DEFAULT_PREVALENCE`, 0.12, intercept about -2.71); it does not
depend on the site, so pooling the sites gives one well-specified logistic model. See
:func:`true_coefficients` (and :data:`TRUE_COEFFICIENTS` for the default prevalence).

**Heterogeneous sites**: each site's age and bmi distributions are shifted by
(:func:`site_profile`) an age shift uniform in [-8, 8] years and a bmi shift uniform in [-2.5, 2.5],
drawn from ``(seed, site)`` and scaled by ``heterogeneity`` (0: identically distributed sites).

**FHIR** (:func:`to_fhir`, :func:`from_fhir`), per patient, in this order: ``Patient`` (``id``,
``gender``, ``birthDate``, tagged as test data ``HTEST``); ``Observation`` ``{id}-bmi`` (LOINC 39156-5),
``{id}-sbp`` (8480-6), ``{id}-chol`` (2093-3), each ``status: final`` with ``code``,
``subject: {"reference": "Patient/{id}"}``, ``effectiveDateTime`` (a date in 2025 derived from the id)
and a UCUM ``valueQuantity``; ``{id}-smoking`` (72166-2, SNOMED 77176002 smoker / 266919005 never
smoked); and, for diabetes == 1, ``Condition`` ``{id}-dm`` (SNOMED 44054006, active, confirmed).

**Files** (:func:`write_site`): ``FOLDER/s3/patients.csv`` and ``FOLDER/fhir/patients.json`` (a
``collection`` Bundle, one entry a line), ``patients-0001.json`` ... (``bundle_size`` patients a file) or
``FOLDER/fhir/resources.ndjson``. :func:`generate_federation` writes ``ROOT/node-1`` ... ``ROOT/node-N``,
the layout ``FlameStack.create(n, data_root=ROOT)`` serves. :func:`split_csv` and
:func:`split_fhir_bundle` split one file across nodes keeping each patient's rows/resources together.

Command line: ``python -m flame.sim.synthetic OUT --sites 3 --patients 200 150 250 --seed 2026``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from flame.sim.fhir_search import load_file

#: Ages are whole years completed at this date.
REFERENCE_DATE = date(2026, 1, 1)
#: Expected diabetes prevalence of an unshifted site, by default.
DEFAULT_PREVALENCE = 0.12
#: The columns of :func:`generate_patients`, in order.
COLUMNS = (
    "patient_id",
    "site",
    "gender",
    "birthdate",
    "age",
    "bmi",
    "systolic_bp",
    "cholesterol",
    "smoker",
    "diabetes",
)
#: The columns of :func:`design_matrix`, in order.
FEATURES = ("intercept", "age", "bmi", "systolic_bp", "cholesterol", "smoker", "male")
#: The true coefficients except the intercept (see the module docstring for the feature scaling).
SLOPES: Mapping[str, float] = {
    "age": 0.6,
    "bmi": 0.8,
    "systolic_bp": 0.3,
    "cholesterol": 0.2,
    "smoker": 0.4,
    "male": 0.3,
}
#: Largest per-site shifts (at ``heterogeneity=1``): age in years, bmi in kg/m2.
MAX_AGE_SHIFT = 8.0
MAX_BMI_SHIFT = 2.5

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
#: The LOINC codes of the Observations: column -> (code, display, UCUM unit).
OBSERVATION_CODES: Mapping[str, tuple[str, str, str]] = {
    "bmi": ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2"),
    "systolic_bp": ("8480-6", "Systolic blood pressure", "mm[Hg]"),
    "cholesterol": ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL"),
}
SMOKING_STATUS = ("72166-2", "Tobacco smoking status")
SMOKER = ("77176002", "Smoker")
NEVER_SMOKED = ("266919005", "Never smoked tobacco")
DIABETES = ("44054006", "Diabetes mellitus type 2")

_OBS_SUFFIX = {"bmi": "bmi", "systolic_bp": "sbp", "cholesterol": "chol"}
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_SITE_ID = re.compile(r"[^A-Za-z0-9\-]+")
_URN_NAMESPACE = uuid.UUID("5b0e3f7c-2d4a-4c8e-9f61-7a3d2b1c0e95")
_CALIBRATION_SEED = 20260101
_CALIBRATION_SIZE = 50_000
_STREAM_PATIENTS = 1
_STREAM_PROFILE = 2

FloatArray = npt.NDArray[np.float64]
FhirFormat = Literal["bundle", "ndjson"]


# -- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteProfile:
    """How one site's population differs from the reference one (added to the means)."""

    age_shift: float
    bmi_shift: float


def site_profile(seed: int, site: str, *, heterogeneity: float = 1.0) -> SiteProfile:
    """The age and bmi shifts of ``site`` under ``seed`` (uniform in +-8 years, +-2.5 kg/m2, times
    ``heterogeneity``)."""
    rng = np.random.default_rng(_seed_sequence(seed, site, _STREAM_PROFILE))
    age, bmi = rng.uniform(-1.0, 1.0, size=2)
    return SiteProfile(
        age_shift=float(age) * MAX_AGE_SHIFT * heterogeneity,
        bmi_shift=float(bmi) * MAX_BMI_SHIFT * heterogeneity,
    )


def design_matrix(df: pd.DataFrame) -> FloatArray:
    """The model's features (:data:`FEATURES`, intercept first) of a patient frame, one row per patient."""
    age = df["age"].to_numpy(dtype=np.float64)
    return np.column_stack(
        [
            np.ones(len(df)),
            (age - 50.0) / 10.0,
            (df["bmi"].to_numpy(dtype=np.float64) - 27.0) / 5.0,
            (df["systolic_bp"].to_numpy(dtype=np.float64) - 130.0) / 20.0,
            (df["cholesterol"].to_numpy(dtype=np.float64) - 200.0) / 40.0,
            df["smoker"].to_numpy(dtype=np.float64),
            (df["gender"].astype(str).to_numpy() == "male").astype(np.float64),
        ]
    ).astype(np.float64)


def true_coefficients(prevalence: float = DEFAULT_PREVALENCE) -> dict[str, float]:
    """The true coefficients of the outcome model, by :data:`FEATURES` name, for ``prevalence``."""
    return {"intercept": _intercept(prevalence), **SLOPES}


def true_beta(prevalence: float = DEFAULT_PREVALENCE) -> FloatArray:
    """:func:`true_coefficients` as a vector in :data:`FEATURES` order."""
    coefficients = true_coefficients(prevalence)
    return np.array([coefficients[name] for name in FEATURES], dtype=np.float64)


@functools.lru_cache(maxsize=32)
def _intercept(prevalence: float) -> float:
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be strictly between 0 and 1, not {prevalence}")
    rng = np.random.default_rng(np.random.SeedSequence(_CALIBRATION_SEED))
    frame = _draw_covariates(rng, _CALIBRATION_SIZE, SiteProfile(0.0, 0.0))
    slopes = design_matrix(frame)[:, 1:] @ np.array([SLOPES[name] for name in FEATURES[1:]])
    low, high = -20.0, 20.0
    for _ in range(60):
        middle = (low + high) / 2.0
        if float(np.mean(_sigmoid(middle + slopes))) < prevalence:
            low = middle
        else:
            high = middle
    return round((low + high) / 2.0, 10)


def _sigmoid(z: FloatArray | float) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64))), dtype=np.float64)


def _seed_sequence(seed: int, site: str, stream: int) -> np.random.SeedSequence:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    site_key = int.from_bytes(hashlib.sha256(site.encode("utf-8")).digest()[:8], "big")
    return np.random.SeedSequence([int(seed), site_key, stream])


# -- patients ----------------------------------------------------------------------------------------------


def generate_patients(
    n: int,
    seed: int,
    *,
    site: str = "site-1",
    prevalence: float = DEFAULT_PREVALENCE,
    heterogeneity: float = 1.0,
    profile: SiteProfile | None = None,
) -> pd.DataFrame:
    """``n`` synthetic patients of ``site``: a frame with :data:`COLUMNS` (see the module docstring).

    Deterministic in ``(n, seed, site, prevalence, heterogeneity, profile)``. The site's shifts are
    :func:`site_profile` ``(seed, site, heterogeneity=...)`` unless ``profile`` gives them explicitly.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, not {n!r}")
    if not site:
        raise ValueError("site must be a non-empty string")
    if profile is None:
        profile = site_profile(seed, site, heterogeneity=heterogeneity)
    beta = true_beta(prevalence)
    rng = np.random.default_rng(_seed_sequence(seed, site, _STREAM_PATIENTS))
    frame = _draw_covariates(rng, int(n), profile)
    risk = _sigmoid(design_matrix(frame) @ beta)
    diabetes = (rng.random(int(n)) < risk).astype(np.int64)
    prefix = _id_prefix(site)
    frame.insert(0, "patient_id", [f"{prefix}-p{i:05d}" for i in range(1, int(n) + 1)])
    frame.insert(1, "site", [site] * int(n))
    frame["diabetes"] = diabetes
    return frame.loc[:, list(COLUMNS)].reset_index(drop=True)


def _draw_covariates(rng: np.random.Generator, n: int, profile: SiteProfile) -> pd.DataFrame:
    """Everything but ids and the outcome; the order of the draws is part of the determinism contract."""
    male = rng.random(n) < 0.5
    age_years = np.clip(rng.normal(50.0 + profile.age_shift, 16.0, n), 18.02, 90.98)
    days = np.round(age_years * 365.2425).astype(np.int64)
    birth = np.datetime64(REFERENCE_DATE.isoformat(), "D") - days.astype("timedelta64[D]")
    age = _ages_at(birth, REFERENCE_DATE)
    agec = age.astype(np.float64) - 50.0
    bmi = np.round(np.clip(27.0 + profile.bmi_shift + 0.04 * agec + rng.normal(0.0, 4.5, n), 16.0, 55.0), 1)
    sbp = np.round(
        np.clip(118.0 + 0.5 * agec + 0.7 * (bmi - 27.0) + 4.0 * male + rng.normal(0.0, 14.0, n), 90.0, 210.0)
    )
    cholesterol = np.round(np.clip(195.0 + 0.5 * agec + rng.normal(0.0, 35.0, n), 110.0, 350.0), 1)
    smoker = (rng.random(n) < np.clip(0.22 - 0.002 * agec, 0.05, 0.45)).astype(np.int64)
    return pd.DataFrame(
        {
            "gender": np.where(male, "male", "female").tolist(),
            "birthdate": np.datetime_as_string(birth, unit="D").tolist(),
            "age": age,
            "bmi": bmi.astype(np.float64),
            "systolic_bp": sbp.astype(np.float64),
            "cholesterol": cholesterol.astype(np.float64),
            "smoker": smoker,
        }
    )


def _ages_at(birth: npt.NDArray[np.datetime64], when: date) -> npt.NDArray[np.int64]:
    """Whole years completed at ``when`` by people born on ``birth`` (days)."""
    years = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    months = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    days = (birth - birth.astype("datetime64[M]")).astype(np.int64) + 1
    before_birthday = (months > when.month) | ((months == when.month) & (days > when.day))
    return np.asarray(when.year - years - before_birthday.astype(np.int64), dtype=np.int64)


def _age_at(birth: date, when: date) -> int:
    return when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))


#: The true coefficients at :data:`DEFAULT_PREVALENCE` (the intercept is about -2.71).
TRUE_COEFFICIENTS: Mapping[str, float] = true_coefficients()


def _id_prefix(site: str) -> str:
    """``site`` itself if it is short and made of FHIR id characters (no dots), else a slug and a hash."""
    if _SITE_ID.search(site) is None and len(site) <= 40:
        return site
    slug = _SITE_ID.sub("-", site).strip("-")[:30] or "site"
    return f"{slug}-{hashlib.sha256(site.encode('utf-8')).hexdigest()[:8]}"


# -- FHIR --------------------------------------------------------------------------------------------------


def to_fhir(df: pd.DataFrame) -> list[dict[str, Any]]:
    """FHIR R4 resources of a patient frame: per patient its Patient, Observations and Condition.

    Missing (NaN) measurements get no Observation; a frame without a column gets none of its resources.
    """
    resources: list[dict[str, Any]] = []
    for row in df.to_dict("records"):
        pid = str(row["patient_id"])
        if not _FHIR_ID.match(pid):
            raise ValueError(f"patient_id {pid!r} is not a valid FHIR id")
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": pid,
            "meta": {
                "tag": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "HTEST",
                        "display": "test health data",
                    }
                ]
            },
        }
        if _present(row.get("gender")):
            patient["gender"] = str(row["gender"])
        if _present(row.get("birthdate")):
            patient["birthDate"] = str(row["birthdate"])
        resources.append(patient)
        subject = {"reference": f"Patient/{pid}"}
        effective = _effective_date(pid)
        for column, (code, display, unit) in OBSERVATION_CODES.items():
            value = row.get(column)
            if not _present(value):
                continue
            resources.append(
                {
                    **_observation_head(f"{pid}-{_OBS_SUFFIX[column]}", code, display),
                    "subject": subject,
                    "effectiveDateTime": effective,
                    "valueQuantity": {"value": _number(value), "unit": unit, "system": UCUM, "code": unit},
                }
            )
        if _present(row.get("smoker")):
            answer = SMOKER if _flag(row["smoker"]) else NEVER_SMOKED
            resources.append(
                {
                    **_observation_head(f"{pid}-smoking", *SMOKING_STATUS),
                    "subject": subject,
                    "effectiveDateTime": effective,
                    "valueCodeableConcept": {
                        "coding": [{"system": SNOMED, "code": answer[0], "display": answer[1]}]
                    },
                }
            )
        if _present(row.get("diabetes")) and _flag(row["diabetes"]):
            resources.append(
                {
                    "resourceType": "Condition",
                    "id": f"{pid}-dm",
                    "clinicalStatus": _concept(
                        "http://terminology.hl7.org/CodeSystem/condition-clinical", "active"
                    ),
                    "verificationStatus": _concept(
                        "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed"
                    ),
                    "code": {"coding": [{"system": SNOMED, "code": DIABETES[0], "display": DIABETES[1]}]},
                    "subject": subject,
                }
            )
    return resources


def from_fhir(resources: Iterable[Mapping[str, Any]], *, site: str | None = None) -> pd.DataFrame:
    """The patient frame back from FHIR resources shaped like :func:`to_fhir`'s (one row per Patient).

    ``age`` is recomputed at :data:`REFERENCE_DATE`; ``site`` fills the site column (None if not given);
    missing measurements are NaN; ``diabetes`` is 1 for a Patient with an active SNOMED 44054006 Condition.
    """
    patients: dict[str, dict[str, Any]] = {}
    facts: list[tuple[str, str, Any]] = []
    codes = {code: column for column, (code, *_) in OBSERVATION_CODES.items()}
    for resource in resources:
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            pid = str(resource["id"])
            birth = resource.get("birthDate")
            patients[pid] = {
                "patient_id": pid,
                "site": site,
                "gender": resource.get("gender"),
                "birthdate": birth,
                "age": _age_at(date.fromisoformat(birth), REFERENCE_DATE) if birth else None,
            }
            continue
        ref = (resource.get("subject") or {}).get("reference", "")
        if not isinstance(ref, str) or not ref.startswith("Patient/"):
            continue
        pid = ref[len("Patient/") :]
        resource_codes = {c.get("code") for c in (resource.get("code") or {}).get("coding", [])}
        if rtype == "Observation":
            for code in resource_codes:
                if code in codes and "valueQuantity" in resource:
                    facts.append((pid, codes[code], float(resource["valueQuantity"]["value"])))
                elif code == SMOKING_STATUS[0]:
                    answers = {c.get("code") for c in resource["valueCodeableConcept"].get("coding", [])}
                    facts.append((pid, "smoker", int(SMOKER[0] in answers)))
        elif rtype == "Condition" and DIABETES[0] in resource_codes:
            status = {c.get("code") for c in (resource.get("clinicalStatus") or {}).get("coding", [])}
            if not status or "active" in status:
                facts.append((pid, "diabetes", 1))
    for row in patients.values():
        row.update({"bmi": math.nan, "systolic_bp": math.nan, "cholesterol": math.nan, "smoker": 0})
        row["diabetes"] = 0
    for pid, column, value in facts:
        if pid in patients:
            patients[pid][column] = value
    return pd.DataFrame(list(patients.values()), columns=list(COLUMNS))


def collection_bundle(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``collection`` Bundle of ``resources``, each entry with a deterministic ``urn:uuid`` fullUrl."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": _full_url(r), "resource": dict(r)} for r in resources],
    }


def dump_bundle(resources: Iterable[Mapping[str, Any]]) -> str:
    """:func:`collection_bundle` as JSON text with one entry a line (compact, and readable in a diff)."""
    bundle = collection_bundle(resources)
    entries = ",\n".join(json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in bundle["entry"])
    head = '{"resourceType":"Bundle","type":"collection","entry":['
    return f"{head}\n{entries}\n]}}\n" if entries else f"{head}]}}\n"


def _observation_head(rid: str, code: str, display: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
    }


def _concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _full_url(resource: Mapping[str, Any]) -> str:
    name = f"{resource['resourceType']}/{resource.get('id', '')}"
    return f"urn:uuid:{uuid.uuid5(_URN_NAMESPACE, name)}"


def _effective_date(pid: str) -> str:
    offset = int.from_bytes(hashlib.sha256(pid.encode("utf-8")).digest()[:4], "big") % 365
    return (date(2025, 1, 1) + timedelta(days=offset)).isoformat()


def _present(value: Any) -> bool:
    if value is None or value is pd.NA:
        return False
    return not (isinstance(value, float) and math.isnan(value))


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "t")
    return bool(value)


def _number(value: Any) -> float | int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return float(value)


# -- files -------------------------------------------------------------------------------------------------


def write_site(
    folder: Path | str,
    df: pd.DataFrame,
    *,
    fhir: bool | FhirFormat = True,
    csv: bool = True,
    bundle_size: int | None = None,
) -> list[Path]:
    """Write one node's data folder; returns the files written.

    ``csv``: ``folder/s3/patients.csv``. ``fhir`` (True means ``"bundle"``): ``"bundle"`` writes
    ``folder/fhir/patients.json``, a collection Bundle, or with ``bundle_size`` several Bundles
    ``patients-0001.json`` ... of at most ``bundle_size`` patients each (earlier ``patients-NNNN.json``
    files are removed); ``"ndjson"`` writes ``folder/fhir/resources.ndjson``, one resource a line.
    """
    if bundle_size is not None and bundle_size < 1:
        raise ValueError(f"bundle_size must be at least 1, not {bundle_size}")
    fmt: FhirFormat | None = "bundle" if fhir is True else (None if fhir is False else fhir)
    if fmt not in (None, "bundle", "ndjson"):
        raise ValueError(f"fhir must be a bool, 'bundle' or 'ndjson', not {fhir!r}")
    root = Path(folder)
    written: list[Path] = []
    if csv:
        path = root / "s3" / "patients.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False, lineterminator="\n")
        written.append(path)
    if fmt is not None:
        fhir_dir = root / "fhir"
        fhir_dir.mkdir(parents=True, exist_ok=True)
        if fmt == "ndjson":
            path = fhir_dir / "resources.ndjson"
            lines = (json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in to_fhir(df))
            path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            written.append(path)
        elif bundle_size is None:
            path = fhir_dir / "patients.json"
            path.write_text(dump_bundle(to_fhir(df)), encoding="utf-8")
            written.append(path)
        else:
            for stale in fhir_dir.glob("patients-[0-9][0-9][0-9][0-9].json"):
                stale.unlink()
            for number, start in enumerate(range(0, len(df), bundle_size), 1):
                path = fhir_dir / f"patients-{number:04d}.json"
                path.write_text(dump_bundle(to_fhir(df.iloc[start : start + bundle_size])), encoding="utf-8")
                written.append(path)
    return written


def generate_federation(
    root: Path | str,
    sites: int = 3,
    patients_per_site: int | Sequence[int] = 200,
    seed: int = 0,
    *,
    prevalence: float = DEFAULT_PREVALENCE,
    heterogeneity: float = 1.0,
    fhir: bool | FhirFormat = True,
    csv: bool = True,
    bundle_size: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Write ``root/node-1`` ... ``root/node-{sites}`` (see :func:`write_site`); returns the frames by site.

    ``patients_per_site`` is one count for every site or one per site. Site ``node-i`` is generated as
    :func:`generate_patients` ``(count, seed, site="node-i", ...)``.
    """
    if sites < 1:
        raise ValueError(f"sites must be at least 1, not {sites}")
    counts = [patients_per_site] * sites if isinstance(patients_per_site, int) else list(patients_per_site)
    if len(counts) != sites:
        raise ValueError(f"patients_per_site has {len(counts)} counts for {sites} sites")
    frames: dict[str, pd.DataFrame] = {}
    for i, count in enumerate(counts, 1):
        name = f"node-{i}"
        frame = generate_patients(count, seed, site=name, prevalence=prevalence, heterogeneity=heterogeneity)
        write_site(Path(root) / name, frame, fhir=fhir, csv=csv, bundle_size=bundle_size)
        frames[name] = frame
    return frames


# -- splitting one file across nodes -------------------------------------------------------------------------


def split_csv(path: Path | str, n: int, seed: int, *, id_column: str = "patient_id") -> list[pd.DataFrame]:
    """Split a CSV file across ``n`` nodes: all rows of a patient (same ``id_column``) on one node.

    Patients are shuffled with ``seed`` and dealt into ``n`` parts of near-equal patient counts; rows keep
    their file order within a part. Without ``id_column`` every row is its own patient; rows with an empty
    id are each their own patient too. Parts may be empty when there are fewer patients than nodes.
    """
    _check_parts(n)
    df = pd.read_csv(path, dtype={id_column: str})
    if id_column in df.columns:
        ids = df[id_column]
        keys = [str(v) if _present(v) else f"\0row{i}" for i, v in enumerate(ids.tolist())]
    else:
        keys = [f"\0row{i}" for i in range(len(df))]
    assignment = _assign(keys, n, seed)
    node_of_row = np.array([assignment[k] for k in keys], dtype=np.int64)
    return [df.iloc[np.flatnonzero(node_of_row == part)].reset_index(drop=True) for part in range(n)]


def split_fhir_bundle(path: Path | str, n: int, seed: int) -> list[list[dict[str, Any]]]:
    """Split the resources of a FHIR file (a Bundle, a resource or a list of them; or NDJSON) across nodes.

    The file is read as the emulator's FHIR server reads its folders
    (:func:`flame.sim.fhir_search.load_file`). Every resource goes with its patient: a Patient by its id, another resource by its first reference to
    a Patient (``subject``, ``patient``, ``beneficiary`` or else anywhere in it; ``urn:uuid`` references
    to Bundle entries are resolved and rewritten to ``Patient/id``). Patients are shuffled with ``seed``
    and dealt into ``n`` parts of near-equal patient counts; resources of no patient (Organization,
    Practitioner, Medication, ...) are copied to every part. Resources keep their file order in a part.
    """
    _check_parts(n)
    resources = load_file(path)
    keys = [_patient_key(r) for r in resources]
    assignment = _assign([k for k in keys if k is not None], n, seed)
    parts: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for resource, key in zip(resources, keys, strict=True):
        if key is None:
            for part in parts:
                part.append(resource)
        else:
            parts[assignment[key]].append(resource)
    return parts


def _check_parts(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of nodes must be a positive integer, not {n!r}")


def _assign(keys: Sequence[str], n: int, seed: int) -> dict[str, int]:
    """Each distinct key (in first-seen order) shuffled with ``seed`` and dealt into ``n`` near-equal parts."""
    distinct = list(dict.fromkeys(keys))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), len(distinct), n]))
    order = rng.permutation(len(distinct))
    assignment: dict[str, int] = {}
    for part, chunk in enumerate(np.array_split(order, n)):
        for index in chunk.tolist():
            assignment[distinct[index]] = part
    return assignment


def _patient_key(resource: Mapping[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id', '')}"
    for field in ("subject", "patient", "beneficiary"):
        ref = _patient_reference(resource.get(field))
        if ref is not None:
            return ref
    return _patient_reference(resource)


def _patient_reference(node: Any) -> str | None:
    """The first ``Patient/id`` reference in ``node`` (depth first), without a base URL or history."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            parts = [p for p in ref.split("/") if p]
            if "_history" in parts:
                parts = parts[: parts.index("_history")]
            if len(parts) >= 2 and parts[-2] == "Patient":
                return f"Patient/{parts[-1]}"
        for value in node.values():
            found = _patient_reference(value)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _patient_reference(value)
            if found is not None:
                return found
    return None


# -- command line ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flame.sim.synthetic OUT [--sites N] [--patients N ...] [--seed S] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m flame.sim.synthetic",
        description="Write deterministic synthetic patients for N emulated nodes: OUT/node-1 ... OUT/node-N, "
        "each with s3/patients.csv and fhir/ (a FHIR R4 collection Bundle or NDJSON).",
    )
    parser.add_argument("out", type=Path, help="the data root (FlameStack.create(n, data_root=OUT))")
    parser.add_argument("--sites", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument(
        "--patients",
        type=int,
        nargs="+",
        default=[200],
        metavar="N",
        help="patients per node: one count for all, or one per node (default 200)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--prevalence", type=float, default=DEFAULT_PREVALENCE)
    parser.add_argument("--heterogeneity", type=float, default=1.0, help="scale of the site shifts (0: none)")
    parser.add_argument("--ndjson", action="store_true", help="write fhir/resources.ndjson, not a Bundle")
    parser.add_argument("--bundle-size", type=int, default=None, help="at most this many patients a Bundle")
    parser.add_argument("--no-fhir", action="store_true", help="write no FHIR data")
    parser.add_argument("--no-csv", action="store_true", help="write no CSV")
    args = parser.parse_args(argv)
    counts: int | list[int] = args.patients[0] if len(args.patients) == 1 else list(args.patients)
    fhir: bool | FhirFormat = False if args.no_fhir else ("ndjson" if args.ndjson else "bundle")
    try:
        frames = generate_federation(
            args.out,
            sites=args.sites,
            patients_per_site=counts,
            seed=args.seed,
            prevalence=args.prevalence,
            heterogeneity=args.heterogeneity,
            fhir=fhir,
            csv=not args.no_csv,
            bundle_size=args.bundle_size,
        )
    except ValueError as exc:
        parser.error(str(exc))
    for name, frame in frames.items():
        print(
            f"{args.out / name}: {len(frame)} patients, {int(frame['diabetes'].sum())} with diabetes, "
            f"mean age {frame['age'].mean():.1f}, mean bmi {frame['bmi'].mean():.1f}"
        )
    return 0


# -- study columns for flame.stats ----------------------------------------------------------------------


def generate_study_patients(
    n: int, seed: int, *, site: str = "site-1", missing: float = 0.05, **patient_options: Any
) -> pd.DataFrame:
    """:func:`generate_patients` plus the columns a statistician's study has, deterministic like it.

    Added columns (drawn from their own random stream, so the patients' columns stay as they are):

    - ``group``: treatment arm ``"A"``/``"B"`` (1:1);
    - ``stage``: ``"I"`` to ``"IV"``, more advanced with age (categorical covariate);
    - ``systolic_bp_followup``: the blood pressure a year later, 4 mm[Hg] lower in arm B (paired
      measurements), Normal(0, 8) change;
    - ``time``, ``event``: whole days to an event or censoring (ties occur), ``event`` 1 for an event,
      0 for censored. Exponential hazard 1/2000 per day times exp(0.3 (age - 50)/10 + 0.5 diabetes
      - 0.4 [group B] + 0.25 per stage above I), censored by uniform drop-out over 5 years and at 5 years;
    - ``missing`` (a fraction, default 0.05) of ``bmi``, ``cholesterol`` and ``stage`` set missing
      (completely at random).
    """
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be a fraction in [0, 1), not {missing!r}")
    frame = generate_patients(n, seed, site=site, **patient_options)
    rng = np.random.default_rng(_seed_sequence(seed, site, 3))
    count = len(frame)
    group_b = rng.random(count) < 0.5
    agec = (frame["age"].to_numpy(dtype=np.float64) - 50.0) / 10.0
    stage_index = np.clip(np.floor(rng.normal(1.2 + 0.35 * agec, 0.9, count)), 0, 3).astype(np.int64)
    stages = np.array(["I", "II", "III", "IV"], dtype=object)[stage_index]
    followup = np.round(
        frame["systolic_bp"].to_numpy(dtype=np.float64) - 4.0 * group_b + rng.normal(0.0, 8.0, count)
    )
    hazard = (
        np.exp(
            0.3 * agec
            + 0.5 * frame["diabetes"].to_numpy(dtype=np.float64)
            - 0.4 * group_b
            + 0.25 * stage_index
        )
        / 2000.0
    )
    event_time = rng.exponential(1.0 / hazard)
    dropout = rng.uniform(0.0, 5 * 365.25 * 1.6, count)
    horizon = 5 * 365.25
    observed = np.minimum(np.minimum(event_time, dropout), horizon)
    frame["group"] = np.where(group_b, "B", "A").tolist()
    frame["stage"] = stages.tolist()
    frame["systolic_bp_followup"] = followup
    frame["time"] = np.maximum(np.ceil(observed), 1.0).astype(np.int64)
    frame["event"] = (event_time <= np.minimum(dropout, horizon)).astype(np.int64)
    for column in ("bmi", "cholesterol", "stage"):
        gone = rng.random(count) < missing
        frame[column] = frame[column].astype(object if column == "stage" else np.float64).where(~gone, None)
        if column != "stage":
            frame[column] = frame[column].astype(np.float64)
    return frame


if __name__ == "__main__":
    sys.exit(main())
