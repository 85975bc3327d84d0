"""The differencing guard: the same statistic over two record sets that differ by a few records.

Releasing a mean over 600 patients and later the same mean over 599 hands out the value of the one
patient left out: ``600 * m1 - 599 * m2``. From the ledger, a typed statistic (one that carries its
record count ``n``) is refused when the project already released a statistic of the same field path
and kind whose record count differs from this one by at least 1 and fewer than ``min_cell_count``.

Limits of the rule (what it does not catch):

* "The same statistic" means the same field path and kind. An analysis that renames the field, or
  releases the same quantity through another statistic (a sum instead of a mean), is not compared.
* Equal counts are not compared: two sets of 600 that swap one patient for another pass, and so do
  differences of ``min_cell_count`` or more that still isolate a small group by repeated differences.
* Only typed statistics carry a record count; untyped numbers are listed in the audit but not guarded.
* The ledger is per node and per project: releases in other projects, or on other nodes over
  overlapping patients, are not compared.
* Concurrent analyses of one project on one node read the ledger each at its start and may both
  release before seeing the other's entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flame.disclosure.checks import Finding, Statistic
from flame.disclosure.policy import DisclosurePolicy


def check(
    statistics: Iterable[Statistic], entries: Iterable[dict[str, Any]], policy: DisclosurePolicy
) -> list[Finding]:
    """Findings (``differencing``, refused) for statistics that difference against earlier releases."""
    released: dict[tuple[str, str], set[int]] = {}
    for entry in entries:
        if entry.get("outcome") == "refused":
            continue
        for stat in entry.get("statistics") or ():
            try:
                key = (str(stat["path"]), str(stat["kind"]))
                released.setdefault(key, set()).add(int(stat["n"]))
            except (KeyError, TypeError, ValueError):
                continue
    findings = []
    for stat in statistics:
        if stat.n <= 0:
            continue
        for earlier in sorted(released.get((stat.path, stat.kind), ())):
            gap = abs(stat.n - earlier)
            if 0 < gap < policy.min_cell_count:
                findings.append(
                    Finding(
                        "differencing",
                        stat.path,
                        "refused" if policy.enforcing else "warned",
                        f"this {stat.kind} over {stat.n} records differs by {gap} from one released "
                        f"earlier in the project over {earlier}; the difference would isolate "
                        f"fewer than {policy.min_cell_count} records",
                    )
                )
                break
    return findings


__all__ = ["check"]
