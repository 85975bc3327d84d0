"""The analysis on a local federation: the federated mean must equal the mean of all rows pooled.

``flame.simulate`` runs ``main_generic.py`` exactly as ``flame sim main_generic.py --data data`` does:
an emulated FLAME node stack with one aggregator and one node per ``data/node-*`` folder, every node
talking HTTP to its emulated services. Run with ``python -m pytest``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from analyzer_generic import COLUMN, DATA_KEY  # type: ignore[import-not-found]

import flame

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def pooled() -> pd.Series:
    """The column over every node's rows, as if the data were in one place."""
    frames = [pd.read_csv(path) for path in sorted(DATA.glob(f"node-*/s3/{DATA_KEY}"))]
    assert frames, f"no sample data under {DATA}; run python make_data_generic.py"
    return pd.concat(frames)[COLUMN].dropna()


def test_federated_mean_equals_pooled_mean() -> None:
    run = flame.simulate(HERE / "main_generic.py", data=DATA, timeout=120)
    assert run.ok, run.errors
    values = pooled()
    assert run.result["n"] == len(values)
    assert run.result["nodes"] == len(list(DATA.glob("node-*")))
    assert run.result["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert list(run.rounds["round"]) == [1]
