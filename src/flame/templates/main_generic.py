"""The analysis' entry point: ``python main_generic.py`` on a FLAME node (the image's ``CMD``).

On a node, ``flame.run`` reads the container's environment, learns whether this node aggregates, and
runs the analyzer or the aggregator. Locally, ``flame sim main_generic.py --data data`` runs the same
file on an emulated federation (one aggregator and one node per ``data/node-*`` folder).
"""

from __future__ import annotations

from aggregator_generic import MeanAggregator  # type: ignore[import-not-found]
from analyzer_generic import MeanAnalyzer  # type: ignore[import-not-found]

import flame

if __name__ == "__main__":
    flame.run(MeanAnalyzer(), MeanAggregator(), max_rounds=1)
