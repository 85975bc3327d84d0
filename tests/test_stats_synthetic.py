"""The study columns of the synthetic generator (categorical covariates, missing values, time to event)."""

from __future__ import annotations

import pandas as pd
import pytest

from flame.sim.synthetic import generate_patients, generate_study_patients


def test_study_columns_are_deterministic_and_leave_the_patients_columns_alone() -> None:
    study = generate_study_patients(3000, 7, site="node-1", missing=0.1)
    assert study.equals(generate_study_patients(3000, 7, site="node-1", missing=0.1))
    patients = generate_patients(3000, 7, site="node-1")
    for column in ("patient_id", "age", "systolic_bp", "diabetes", "gender"):
        pd.testing.assert_series_equal(study[column], patients[column])
    assert set(study["group"]) == {"A", "B"}
    assert set(study["stage"].dropna()) == {"I", "II", "III", "IV"}
    for column in ("bmi", "cholesterol", "stage"):
        assert 0.07 < study[column].isna().mean() < 0.13
    assert study["time"].min() >= 1 and study["time"].max() <= 1827
    assert 0.3 < study["event"].mean() < 0.7  # events and censoring both common
    assert study["time"].duplicated().any()  # ties, as whole days give them
    arm_b = study["group"] == "B"
    change = study["systolic_bp_followup"] - study["systolic_bp"]
    assert change[arm_b].mean() < change[~arm_b].mean() - 2


def test_missing_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="missing"):
        generate_study_patients(10, 1, missing=1.0)
