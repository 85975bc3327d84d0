"""Patient count by FHIR query (simple analysis), in the style of PrivateAIM's documentation.

Each analysis node asks its FHIR server ``Patient?_summary=count`` and sends the total to the
aggregator, which adds the counts up. This file is the analysis image's entrypoint, unchanged on a
FLAME node and in the local harnesses (``flame.star.run_star_script`` and ``StarModelTester``).
"""

from flame.star import StarAggregator, StarAnalyzer, StarModel


class MyAnalyzer(StarAnalyzer):
    def __init__(self, flame):
        """
        Initializes the custom Analyzer node.
        :param flame: Instance of FlameCoreSDK to interact with the FLAME components.
        """
        super().__init__(flame)  # Connects this analyzer to the FLAME components

    def analysis_method(self, data, aggregator_results):
        """
        Performs analysis on the retrieved data from data sources.
        :param data: A list of dictionaries containing the data from each data source.
                     - Each dictionary corresponds to a data source.
                     - Keys are the queries executed, and values are the results (dict for FHIR, str for S3).
        :param aggregator_results: Results from the aggregator in previous iterations.
                                   - None in the first iteration.
        :return: Any result of your analysis on one node (ex. patient count).
        """
        # In this example we take the first FHIR data source and read the total number of patients
        patient_count = float(data[0]["Patient?_summary=count"]["total"])
        return patient_count


class MyAggregator(StarAggregator):
    def __init__(self, flame):
        """
        Initializes the custom Aggregator node.
        :param flame: Instance of FlameCoreSDK to interact with the FLAME components.
        """
        super().__init__(flame)  # Connects this aggregator to the FLAME components

    def aggregation_method(self, analysis_results):
        """
        Aggregates the results received from all analyzer nodes.
        :param analysis_results: A list of analysis results from each analyzer node.
        :return: The aggregated result (ex. total patient count across all analyzers).
        """
        total_patient_count = sum(analysis_results)
        return total_patient_count

    def has_converged(self, result, last_result):
        """
        Determines if the aggregation process has converged.
        :param result: The current aggregated result.
        :param last_result: The aggregated result from the previous iteration.
        :return: True if the aggregation has converged; False to continue iterations.
        """
        # A simple analysis converges after one iteration
        return True


def main():
    """
    Sets up and initiates the distributed analysis using the FLAME components.

    - Defines the custom analyzer and aggregator classes.
    - Specifies the type of data and queries to execute.
    - Configures analysis parameters like iteration behavior and output format.
    """
    StarModel(
        analyzer=MyAnalyzer,  # Custom analyzer class (must inherit from StarAnalyzer)
        aggregator=MyAggregator,  # Custom aggregator class (must inherit from StarAggregator)
        data_type="fhir",  # Type of data source ('fhir' or 's3')
        query="Patient?_summary=count",  # Query or list of queries to retrieve data
        simple_analysis=True,  # True for single-iteration; False for multi-iterative analysis
        output_type="str",  # Output format for the final result ('str', 'bytes', or 'pickle')
        analyzer_kwargs=None,  # Additional keyword arguments for the custom analyzer constructor
        aggregator_kwargs=None,  # Additional keyword arguments for the custom aggregator constructor
    )


if __name__ == "__main__":
    main()
