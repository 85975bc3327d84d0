"""Protocols: pure functions over the values nodes exchange.

Nothing in this package does I/O or imports the node runtime, the service clients or the emulator:
each function takes values and returns values, so it runs the same on a FLAME node, in a local
federation and in a test.

* :mod:`flame.protocols.aggregation`: combining the nodes' updates (sums, counts, weighted means
  / FedAvg, pooled mean and variance, histograms, concatenation).
"""

from flame.protocols.aggregation import (
    AggregationError,
    Histogram,
    MeanVariance,
    Summary,
    concatenate,
    count,
    fed_avg,
    merged_histogram,
    pooled_mean_variance,
    summarise,
    total,
    weighted_mean,
)

__all__ = [
    "AggregationError",
    "Histogram",
    "MeanVariance",
    "Summary",
    "concatenate",
    "count",
    "fed_avg",
    "merged_histogram",
    "pooled_mean_variance",
    "summarise",
    "total",
    "weighted_mean",
]
