"""Disclosure control enforced by the node: what may leave a hospital, the release audit, central DP.

Every payload that leaves a node through the runtime (messages and intermediate data to other nodes,
the final result for the hub) passes the node's :class:`DisclosureGuard`. The rules are the node's
(:class:`DisclosurePolicy`: library defaults, tightened by the hospital's policy file named by
``FLAME_DISCLOSURE_POLICY``, tightened further by an analysis, loosened by nobody); a refusal raises
:class:`~flame.errors.DisclosureRefusedError` naming the rule and the field. Modules:

* :mod:`~flame.disclosure.policy`: the policy, its defaults, loading and tighten-only merging;
* :mod:`~flame.disclosure.checks`: the checks on an outgoing payload, what the node knows of its data;
* :mod:`~flame.disclosure.audit`: the release record, the log line and the project's ledger;
* :mod:`~flame.disclosure.differencing`: the same statistic over nearly the same records;
* :mod:`~flame.disclosure.dp`: central differential privacy with OpenDP and the project's budget;
* :mod:`~flame.disclosure.guard`: the gate that ties them together.
"""

from __future__ import annotations

from flame.disclosure import dp
from flame.disclosure.audit import LEDGER_TAG, Ledger, ReleaseRecord
from flame.disclosure.checks import Finding, Inspection, LocalData, inspect
from flame.disclosure.guard import DisclosureGuard
from flame.disclosure.policy import POLICY_ENV, DisclosurePolicy, load_policy_file, policy_from_env
from flame.errors import DisclosureRefusedError

__all__ = [
    "LEDGER_TAG",
    "POLICY_ENV",
    "DisclosureGuard",
    "DisclosurePolicy",
    "DisclosureRefusedError",
    "Finding",
    "Inspection",
    "Ledger",
    "LocalData",
    "ReleaseRecord",
    "dp",
    "inspect",
    "load_policy_file",
    "policy_from_env",
]
