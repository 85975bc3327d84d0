"""Test the patient count analysis locally before submitting it, as PrivateAIM's documentation shows.

``StarModelTester`` runs one analyzer per data split and one aggregator (here through the emulated FLAME
node stack) and prints the final result. Each split is what ``get_fhir_data`` would return on that
node: one dictionary per FHIR data source, ``{query: Bundle}``. The splits below count the patients in
the sample data of ``examples/data``.
"""

import json
from pathlib import Path

from patient_count import MyAggregator, MyAnalyzer

from flame.star import StarModelTester

DATA = Path(__file__).resolve().parent.parent / "data"


def patient_count_bundle(node: str) -> dict:
    """A FHIR search Bundle as ``Patient?_summary=count`` answers it for one node's sample data."""
    bundle = json.loads((DATA / node / "fhir" / "patients.json").read_text())
    total = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    return {"resourceType": "Bundle", "type": "searchset", "total": total}


if __name__ == "__main__":
    data_splits = [
        [{"Patient?_summary=count": patient_count_bundle(node)}] for node in ("node-1", "node-2", "node-3")
    ]
    StarModelTester(
        data_splits=data_splits,
        analyzer=MyAnalyzer,
        aggregator=MyAggregator,
        data_type="fhir",
        query="Patient?_summary=count",
        simple_analysis=True,
        output_type="str",
        result_filepath=None,  # None: print the final result
    )
