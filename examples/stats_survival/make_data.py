"""Synthetic study data for ``analysis.py``: one CSV of patients with follow-up times and events.

``python examples/stats_survival/make_data.py study.csv [PATIENTS]`` writes ``PATIENTS`` (default 3000)
synthetic patients (``flame.sim.synthetic.generate_study_patients``: age, diabetes, treatment arm,
stage, days to an event or censoring within five years); ``flame sim --split study.csv`` then deals
them out to the hospitals.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flame.sim.synthetic import generate_study_patients


def write(target: Path, patients: int = 3000, seed: int = 14) -> Path:
    """Write the study CSV to ``target``."""
    generate_study_patients(patients, seed, site="study").to_csv(target, index=False, lineterminator="\n")
    return target


if __name__ == "__main__":
    path = write(
        Path(sys.argv[1] if len(sys.argv) > 1 else "study.csv"),
        int(sys.argv[2]) if len(sys.argv) > 2 else 3000,
    )
    print(f"wrote {path}")
