"""Patient count: how many patients the hospitals hold together, by FHIR ``Patient?_summary=count``.

Non-iterative (one round). Each hospital answers with its count only; the aggregator adds them up.
Run locally: ``flame sim examples/patient_count/analysis.py --data examples/data --nodes 3``.
"""

from __future__ import annotations

from typing import Any

import flame


class PatientCount(flame.Analyzer):
    """Counts this hospital's Patient resources on its FHIR server."""

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, int]:
        return {"patients": data.fhir_count("Patient")}


class TotalCount(flame.Aggregator):
    """Adds the hospitals' counts."""

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, int]:
        return {"patients": sum(update["patients"] for update in updates.values()), "hospitals": len(updates)}


if __name__ == "__main__":
    flame.run(PatientCount(), TotalCount(), max_rounds=1)
