"""Pooled median BMI by bisection (an iterative analysis with ``has_converged``), in the style of
PrivateAIM's documentation.

Each analysis node reads its BMI Observations (LOINC 39156-5) from FHIR and turns the Bundle into a
table with ``fhir_to_csv``. In the first iteration the nodes send their count, minimum and maximum;
from then on the aggregator proposes a value (``mid``) and the nodes answer how many of their
patients lie at or below it. The aggregator halves the interval that must hold the pooled median until
it is narrower than ``TOLERANCE``: no node ever sends a single BMI value.
"""

import math

from flame.star import StarAggregator, StarAnalyzer, StarModel

BMI_QUERY = "Observation?code=http://loinc.org|39156-5"
TOLERANCE = 0.01


class MedianAnalyzer(StarAnalyzer):
    def __init__(self, flame):
        """
        Initializes the custom Analyzer node.
        :param flame: Instance of FlameCoreSDK to interact with the FLAME components.
        """
        super().__init__(flame)

    def analysis_method(self, data, aggregator_results):
        """
        Counts this node's BMI values.
        :param data: A list with one dictionary per FHIR data source ({query: Bundle}).
        :param aggregator_results: None in the first iteration, then the aggregator's current interval.
        :return: count, minimum and maximum (first iteration), else how many values lie at or below 'mid'.
        """
        table = self.flame.fhir_to_csv(
            data[0][BMI_QUERY],
            col_key_seq="resource.code.coding.code",
            value_key_seq="resource.valueQuantity.value",
            input_resource="Observation",
            row_key_seq="resource.subject.reference",
            output_type="dict",
        )
        values = [float(v) for v in table.get("39156-5", {}).values()]
        if aggregator_results is None:
            return {"n": len(values), "min": min(values), "max": max(values)}
        return {"below": sum(1 for v in values if v <= aggregator_results["mid"])}


class MedianAggregator(StarAggregator):
    def __init__(self, flame):
        """
        Initializes the custom Aggregator node.
        :param flame: Instance of FlameCoreSDK to interact with the FLAME components.
        """
        super().__init__(flame)

    def aggregation_method(self, analysis_results):
        """
        Narrows the interval (low, high] that holds the pooled lower median.
        :param analysis_results: A list of analysis results from each analyzer node.
        :return: the interval, the next value to ask about ('mid') and the current estimate ('median').
        """
        if self.num_iterations == 0:
            n = sum(r["n"] for r in analysis_results)
            low = min(r["min"] for r in analysis_results) - 1.0
            high = max(r["max"] for r in analysis_results)
            k = math.ceil(n / 2)
        else:
            state = self.latest_result
            n, k, low, high = state["n"], state["k"], state["low"], state["high"]
            if sum(r["below"] for r in analysis_results) >= k:
                high = state["mid"]
            else:
                low = state["mid"]
        return {"n": n, "k": k, "low": low, "high": high, "mid": (low + high) / 2, "median": high}

    def has_converged(self, result, last_result):
        """
        Determines if the aggregation process has converged.
        :param result: The current aggregated result.
        :param last_result: The aggregated result from the previous iteration.
        :return: True once the interval is narrower than TOLERANCE.
        """
        return result["high"] - result["low"] < TOLERANCE


def main():
    StarModel(
        analyzer=MedianAnalyzer,
        aggregator=MedianAggregator,
        data_type="fhir",
        query=BMI_QUERY,
        simple_analysis=False,  # iterate until has_converged answers True
        output_type="str",
    )


if __name__ == "__main__":
    main()
