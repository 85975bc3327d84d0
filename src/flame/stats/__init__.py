"""Federated statistics, each equal to the pooled computation, each judged by the node's disclosure policy.

Every function returns a ready :class:`flame.Analysis` (a :class:`~flame.stats.framework.StatsAnalysis`)
that ``flame.run`` runs on FLAME nodes and the local simulation runs unchanged::

    import flame
    from flame import stats

    flame.run(stats.describe(["age", "bmi"], source="patients.csv", where="age >= 18"))

The final result is plain data; ``analysis.interpret(final)`` makes the typed result of it, with
``to_frame()``, ``summary()`` and, where a picture helps, ``plot()`` (matplotlib: the ``plot`` extra).
The per-node and combining steps of every statistic are public functions (``describe_local``,
``describe_combine``, ...), for an author's own Analyzer and Aggregator.
"""

from __future__ import annotations

from flame.stats.describe import (
    CrossTable,
    Description,
    Matrix,
    corr,
    cov,
    crossproducts_combine,
    crossproducts_local,
    crosstab,
    crosstab_combine,
    crosstab_local,
    describe,
    describe_combine,
    describe_local,
    level_counts,
    union_levels,
)
from flame.stats.framework import (
    StatsAggregator,
    StatsAnalysis,
    StatsAnalyzer,
    Step,
    build_analysis,
    interpret,
    node_policy,
)
from flame.stats.glm import GLMResult, glm, glm_combine, glm_fit, glm_local, local_levels, union_of_levels
from flame.stats.hypothesis_tests import (
    TestResult,
    chi2_from_table,
    chi2_test,
    differences_local,
    fisher_exact,
    fisher_from_table,
    group_summaries_local,
    paired_combine,
    ttest,
    ttest_paired,
    welch_combine,
)
from flame.stats.quantiles import (
    Quantiles,
    median,
    quantile_estimates,
    quantile_search_local,
    quantile_search_start,
    quantile_search_step,
    quantiles,
)
from flame.stats.results import StatsResult
from flame.stats.source import Source, as_source, parse_where, where_mask
from flame.stats.survival import (
    CoxResult,
    KaplanMeier,
    LogRank,
    cox,
    cox_combine,
    cox_fit,
    cox_local,
    kaplan_meier,
    kaplan_meier_table,
    logrank,
    logrank_test,
    quantise,
    survival_combine,
    survival_local,
    time_grid,
)

__all__ = [
    "CoxResult",
    "CrossTable",
    "Description",
    "GLMResult",
    "KaplanMeier",
    "LogRank",
    "Matrix",
    "Quantiles",
    "Source",
    "StatsAggregator",
    "StatsAnalysis",
    "StatsAnalyzer",
    "StatsResult",
    "Step",
    "TestResult",
    "as_source",
    "build_analysis",
    "chi2_from_table",
    "chi2_test",
    "corr",
    "cov",
    "cox",
    "cox_combine",
    "cox_fit",
    "cox_local",
    "crossproducts_combine",
    "crossproducts_local",
    "crosstab",
    "crosstab_combine",
    "crosstab_local",
    "describe",
    "describe_combine",
    "describe_local",
    "differences_local",
    "fisher_exact",
    "fisher_from_table",
    "glm",
    "glm_combine",
    "glm_fit",
    "glm_local",
    "group_summaries_local",
    "interpret",
    "kaplan_meier",
    "kaplan_meier_table",
    "level_counts",
    "local_levels",
    "logrank",
    "logrank_test",
    "median",
    "node_policy",
    "paired_combine",
    "parse_where",
    "quantile_estimates",
    "quantile_search_local",
    "quantile_search_start",
    "quantile_search_step",
    "quantiles",
    "quantise",
    "survival_combine",
    "survival_local",
    "time_grid",
    "ttest",
    "ttest_paired",
    "union_levels",
    "union_of_levels",
    "welch_combine",
    "where_mask",
]
