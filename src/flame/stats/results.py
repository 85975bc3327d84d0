"""Typed results of the federated statistics: ``to_frame()``, ``summary()``, ``plot()``.

Every result knows how many records each node contributed (``nodes``) and in total (``n``). The
summary prints the table the way statsmodels and lifelines users read it, followed by the records
per node.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from flame.errors import ConfigurationError


@dataclass(frozen=True)
class StatsResult:
    """Base of every ``flame.stats`` result."""

    #: The statistic and its arguments, e.g. ``"describe(age, bmi)"``.
    title: str
    #: Records each analysis node contributed (after the ``where`` filter), by node id.
    nodes: Mapping[str, int] = field(default_factory=dict)
    #: Federation rounds the statistic took.
    rounds: int = 1

    @property
    def n(self) -> int:
        """Records over all nodes."""
        return sum(int(v) for v in self.nodes.values())

    def to_frame(self) -> pd.DataFrame:
        """The result as a pandas DataFrame."""
        raise NotImplementedError

    def notes(self) -> list[str]:
        """Lines printed under the table (method, tolerance, suppressed cells)."""
        return []

    def summary(self) -> str:
        """A readable report: title, table, notes, records per node and in total."""
        return format_summary(self.title, self.to_frame(), self.notes(), self.nodes, self.rounds)

    def __str__(self) -> str:
        return self.summary()

    def plot(self, ax: Any = None) -> Any:
        """A matplotlib picture of the result (``pip install 'flame-python-sdk[plot]'``)."""
        raise ConfigurationError(
            "plot", f"{type(self).__name__} has no picture", "use summary() or to_frame()"
        )


def pyplot() -> Any:
    """``matplotlib.pyplot``, imported on first use; a clear error when the extra is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError(
            "plot",
            "needs matplotlib, which is not installed",
            "pip install 'flame-python-sdk[plot]' (or pip install matplotlib)",
        ) from None
    return plt


def axes(ax: Any) -> Any:
    """``ax``, or new axes of a new figure."""
    if ax is not None:
        return ax
    _, new = pyplot().subplots()
    return new


def format_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "."
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.4e}"
        return f"{value:.4f}"
    return str(value)


def format_p(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "."
    return "<1e-16" if value < 1e-16 else f"{value:.4g}"


def format_table(frame: pd.DataFrame) -> str:
    """A plain-text table: index on the left, numbers formatted for reading."""
    shown = frame.copy()
    for column in shown.columns:
        if str(column).startswith("P>") or str(column) in ("p", "p-value", "p_value"):
            shown[column] = [format_p(float(v)) for v in shown[column]]
        else:
            shown[column] = [format_number(v) for v in shown[column]]
    text: str = shown.to_string()
    return text


def format_summary(
    title: str, table: pd.DataFrame, notes: list[str], nodes: Mapping[str, int], rounds: int
) -> str:
    rule = "=" * max(60, min(110, max((len(line) for line in format_table(table).splitlines()), default=60)))
    lines = [title, rule, format_table(table), rule.replace("=", "-")]
    lines.extend(notes)
    total = sum(int(v) for v in nodes.values())
    per_node = ", ".join(f"{node}: {count}" for node, count in sorted(nodes.items()))
    lines.append(f"Records: {total} in total over {len(nodes)} node(s) ({per_node}); rounds: {rounds}")
    return "\n".join(lines)


__all__ = ["StatsResult", "axes", "format_number", "format_p", "format_summary", "format_table", "pyplot"]
