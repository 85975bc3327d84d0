"""Federated survival analysis with ``flame.stats``: does treatment arm B live longer, adjusted for age,
diabetes and stage? A Cox proportional-hazards model over every hospital's patients.

Event times never leave a hospital: every hospital counts on a public grid of half-years over three
years (``GRID``); a hospital refuses when a half-year holds 1 to 4 of its events. Each round it sends,
per half-year, the sums over its patients leaving the risk set there (of ``exp(x'b)`` and its
derivatives at the current coefficients); the aggregator pools the risk sets and takes a
Newton-Raphson step until the partial likelihood settles. The result equals lifelines' Cox fit
(Efron ties) of the pooled patients with their times on the same grid. Run locally::

    python examples/stats_survival/make_data.py study.csv
    flame sim examples/stats_survival/analysis.py --split study.csv --nodes 3

and compare with the pooled fit and Kaplan-Meier curves (lifelines, from the test extra)::

    python examples/stats_survival/pooled.py study.csv

``KAPLAN_MEIER`` and ``LOGRANK`` are the curves per arm and their test, ready for ``flame.run`` too.
"""

from __future__ import annotations

import flame
from flame import stats

#: half-years over three years: the public time grid (days)
GRID = stats.time_grid(183, 1096)
COVARIATES = "age + diabetes + group + stage"

ANALYSIS = stats.cox(COVARIATES, time="time", event="event", source="study.csv", grid=GRID)
KAPLAN_MEIER = stats.kaplan_meier("time", "event", source="study.csv", grid=GRID, group="group")
LOGRANK = stats.logrank("time", "event", "group", source="study.csv", grid=GRID)

if __name__ == "__main__":
    flame.run(ANALYSIS)
