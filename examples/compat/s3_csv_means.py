"""Means of age and BMI from CSV files in S3 (simple analysis), in the style of PrivateAIM's documentation.

Each analysis node reads ``patients.csv`` from its S3 data source and sends only the number of patients
and the sums of age and BMI; the aggregator pools them into means.
"""

from io import BytesIO

import pandas as pd

from flame.star import StarAggregator, StarAnalyzer, StarModel


class MyAnalyzer(StarAnalyzer):
    def __init__(self, flame):
        """
        Initializes the custom Analyzer node.
        :param flame: Instance of FlameCoreSDK to interact with the FLAME components.
        """
        super().__init__(flame)

    def analysis_method(self, data, aggregator_results):
        """
        Sums this node's ages and BMIs.
        :param data: A list with one dictionary per S3 data source ({key: file content as bytes}).
        :param aggregator_results: None (a simple analysis has one iteration).
        :return: the number of patients and the sums of their ages and BMIs.
        """
        df = pd.read_csv(BytesIO(data[0]["patients.csv"]))
        return {"n": len(df), "sum_age": float(df["age"].sum()), "sum_bmi": float(df["bmi"].sum())}


class MyAggregator(StarAggregator):
    def __init__(self, flame):
        """
        Initializes the custom Aggregator node.
        :param flame: Instance of FlameCoreSDK to interact with the FLAME components.
        """
        super().__init__(flame)

    def aggregation_method(self, analysis_results):
        """
        Pools the sums of all analyzer nodes into means.
        :param analysis_results: A list of analysis results from each analyzer node.
        :return: the number of patients and the mean age and BMI over all nodes.
        """
        n = sum(r["n"] for r in analysis_results)
        return {
            "patients": n,
            "mean_age": sum(r["sum_age"] for r in analysis_results) / n,
            "mean_bmi": sum(r["sum_bmi"] for r in analysis_results) / n,
        }

    def has_converged(self, result, last_result):
        """A simple analysis converges after one iteration."""
        return True


def main():
    StarModel(
        analyzer=MyAnalyzer,
        aggregator=MyAggregator,
        data_type="s3",
        query="patients.csv",  # the S3 key (a list of keys, or None for every object)
        simple_analysis=True,
        output_type="str",
    )


if __name__ == "__main__":
    main()
