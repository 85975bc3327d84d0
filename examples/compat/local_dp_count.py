"""Number of diabetic patients released with local differential privacy, in the style of PrivateAIM's
documentation.

Each analysis node counts the patients with ``diabetes == 1`` in its ``patients.csv`` (S3); the
aggregator adds the counts. ``StarLocalDPModel`` submits the total through the storage service's local
DP endpoint, which adds Laplace noise of scale ``sensitivity / epsilon`` before the result reaches the
hub: adding or removing one patient changes a count by at most 1, hence ``sensitivity=1``.
"""

from io import BytesIO

import pandas as pd

from flame.star import StarAggregator, StarAnalyzer, StarLocalDPModel

EPSILON = 1.0
SENSITIVITY = 1.0


class DiabetesCounter(StarAnalyzer):
    def __init__(self, flame):
        """
        Initializes the custom Analyzer node.
        :param flame: Instance of FlameCoreSDK to interact with the FLAME components.
        """
        super().__init__(flame)

    def analysis_method(self, data, aggregator_results):
        """
        Counts this node's diabetic patients.
        :param data: A list with one dictionary per S3 data source ({key: file content as bytes}).
        :param aggregator_results: None (a simple analysis has one iteration).
        :return: the number of patients with diabetes.
        """
        df = pd.read_csv(BytesIO(data[0]["patients.csv"]))
        return int(df["diabetes"].sum())


class TotalCounter(StarAggregator):
    def __init__(self, flame):
        """
        Initializes the custom Aggregator node.
        :param flame: Instance of FlameCoreSDK to interact with the FLAME components.
        """
        super().__init__(flame)

    def aggregation_method(self, analysis_results):
        """
        Adds the counts of all analyzer nodes.
        :param analysis_results: A list of analysis results from each analyzer node.
        :return: the total count (local DP applies to one number).
        """
        return sum(analysis_results)

    def has_converged(self, result, last_result):
        """
        A simple analysis converges after one iteration; local DP is applied when this is True.
        """
        return True


def main():
    StarLocalDPModel(
        analyzer=DiabetesCounter,
        aggregator=TotalCounter,
        data_type="s3",
        query="patients.csv",
        simple_analysis=True,
        output_type="str",
        epsilon=EPSILON,  # privacy budget of the release
        sensitivity=SENSITIVITY,  # largest change one patient can cause in the result
    )


if __name__ == "__main__":
    main()
