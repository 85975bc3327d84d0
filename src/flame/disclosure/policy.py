"""The disclosure policy of a node: what may leave it.

The policy belongs to the node, not to the analysis. The library's defaults apply everywhere; a
hospital tightens them with a JSON file named by the container's ``FLAME_DISCLOSURE_POLICY``
environment variable (``flame sim --policy FILE`` sets it per emulated node); an analysis may tighten
them further at run time (:meth:`DisclosurePolicy.tighten`). Nothing can loosen them: a setting that
would is refused with :class:`~flame.errors.ConfigurationError` naming it, so an analysis never runs
under rules other than it believes, and a typo in a hospital's file never quietly weakens the node.

"Tighter" per setting: a larger minimum (cell count, records), a smaller ratio or fraction, more
identifier names and patterns, ``enforce`` over ``warn``, ``refuse`` over ``suppress``, a smaller
privacy budget.

File format (every key optional)::

    {"min_cell_count": 10, "min_records": 10, "max_parameter_ratio": 0.2,
     "identifier_columns": ["kis_case_no"], "identifier_patterns": ["^KH-[0-9]{8}$"],
     "small_cells": "refuse", "mode": "enforce", "dp_epsilon_budget": 3.0, "dp_delta_budget": 1e-6}
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from flame.errors import ConfigurationError

#: The container's environment variable that names the node's policy file.
POLICY_ENV = "FLAME_DISCLOSURE_POLICY"

Mode = Literal["enforce", "warn"]
SmallCells = Literal["refuse", "suppress"]


def normalise_name(name: object) -> str:
    """A column or key name as identifier lists compare it: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


#: Column and key names that identify a person (compared after :func:`normalise_name`).
DEFAULT_IDENTIFIER_COLUMNS: frozenset[str] = frozenset(
    normalise_name(n)
    for n in (
        "patient_id",
        "patient",
        "pid",
        "subject_id",
        "person_id",
        "case_id",
        "encounter_id",
        "mrn",
        "medical_record_number",
        "ssn",
        "social_security_number",
        "insurance_number",
        "kvnr",
        "name",
        "first_name",
        "given_name",
        "last_name",
        "family_name",
        "surname",
        "full_name",
        "birthdate",
        "birth_date",
        "date_of_birth",
        "dob",
        "address",
        "street",
        "postcode",
        "postal_code",
        "zip",
        "zip_code",
        "phone",
        "telephone",
        "email",
        "e_mail",
    )
)

#: Values that look like direct identifiers wherever they occur in a payload.
DEFAULT_IDENTIFIER_PATTERNS: tuple[str, ...] = (
    # e-mail address; starts only where a run of address characters starts and bounds each part, so a
    # long string without an "@" is scanned in linear time, not quadratic
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b",
    r"\b[A-Z][0-9]{9}\b",  # German health insurance number (KVNR)
    r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",  # US social security number
)


@dataclass(frozen=True)
class DisclosurePolicy:
    """The rules every payload leaving the node must pass. The defaults are the library's."""

    #: smallest non-zero cell of a count table that may leave (DataSHIELD ``nfilter.tab``)
    min_cell_count: int = 5
    #: fewest records behind any released statistic (DataSHIELD ``nfilter.subset``)
    min_records: int = 5
    #: largest ratio of fitted parameters to records (DataSHIELD ``nfilter.glm``)
    max_parameter_ratio: float = 0.33
    #: a sequence at least this fraction of the node's record count long is row-level data
    row_fraction: float = 0.5
    #: identifier-like column and key names (normalised)
    identifier_columns: frozenset[str] = DEFAULT_IDENTIFIER_COLUMNS
    #: regular expressions of identifier-like values
    identifier_patterns: tuple[str, ...] = DEFAULT_IDENTIFIER_PATTERNS
    #: small cells of count tables: refuse the payload, or suppress the cells (set them missing)
    small_cells: SmallCells = "refuse"
    #: ``enforce`` refuses; ``warn`` logs the refusal and releases anyway (for trying an analysis out)
    mode: Mode = "enforce"
    #: total epsilon that differentially private releases of one project may spend on this node
    dp_epsilon_budget: float = 10.0
    #: total delta that differentially private releases of one project may spend on this node
    dp_delta_budget: float = 1e-5
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int("min_cell_count", self.min_cell_count, 1)
        _check_int("min_records", self.min_records, 1)
        _check_fraction("max_parameter_ratio", self.max_parameter_ratio)
        _check_fraction("row_fraction", self.row_fraction)
        if self.small_cells not in ("refuse", "suppress"):
            raise ConfigurationError("small_cells", f"is {self.small_cells!r}", "'refuse' or 'suppress'")
        if self.mode not in ("enforce", "warn"):
            raise ConfigurationError("mode", f"is {self.mode!r}", "'enforce' or 'warn'")
        for name in ("dp_epsilon_budget", "dp_delta_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigurationError(name, f"is {value!r}", "a finite number >= 0")
            if not math.isfinite(value):
                raise ConfigurationError(name, f"is {value!r}", "a finite number >= 0")
        compiled = []
        for pattern in self.identifier_patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise ConfigurationError(
                    "identifier_patterns", f"{pattern!r} is not a regular expression ({exc})", "a regex"
                ) from None
        object.__setattr__(self, "_compiled", tuple(compiled))

    @property
    def patterns(self) -> tuple[re.Pattern[str], ...]:
        """The compiled identifier patterns."""
        return self._compiled

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    # -- tighten-only changes -----------------------------------------------------------------------

    def tighten(self, settings: Mapping[str, Any] | None = None, /, **more: Any) -> DisclosurePolicy:
        """This policy with ``settings`` applied; every one must be at least as strict as now.

        Raises :class:`ConfigurationError` naming a setting that is unknown or would loosen the policy.
        """
        changes: dict[str, Any] = {**(settings or {}), **more}
        known = {f.name for f in fields(self) if not f.name.startswith("_")}
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ConfigurationError(
                    f"disclosure policy: {name}", "is not a setting", f"one of {', '.join(sorted(known))}"
                )
            current = getattr(self, name)
            new = _coerce(name, value)
            if not _at_least_as_strict(name, new, current):
                raise ConfigurationError(
                    f"disclosure policy: {name}",
                    f"{_show(new)} would loosen the node's setting {_show(current)}",
                    "a value at least as strict (a policy can be tightened, never loosened)",
                )
            values[name] = _merge(name, new, current)
        return replace(self, **values)

    def summary(self) -> dict[str, Any]:
        """The settings as plain values (for logs and reports)."""
        return {
            "min_cell_count": self.min_cell_count,
            "min_records": self.min_records,
            "max_parameter_ratio": self.max_parameter_ratio,
            "row_fraction": self.row_fraction,
            "identifier_columns": len(self.identifier_columns),
            "identifier_patterns": len(self.identifier_patterns),
            "small_cells": self.small_cells,
            "mode": self.mode,
            "dp_epsilon_budget": self.dp_epsilon_budget,
            "dp_delta_budget": self.dp_delta_budget,
        }


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(name, f"is {value!r}", f"a whole number >= {minimum}")


def _check_fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigurationError(name, f"is {value!r}", "a number in (0, 1]")


def _coerce(name: str, value: Any) -> Any:
    if name == "identifier_columns":
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise ConfigurationError(f"disclosure policy: {name}", f"is {value!r}", "a list of names")
        return frozenset(normalise_name(v) for v in value)
    if name == "identifier_patterns":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigurationError(f"disclosure policy: {name}", f"is {value!r}", "a list of regexes")
        return tuple(str(v) for v in value)
    return value


_STRICTER_WORDS = {"mode": ("warn", "enforce"), "small_cells": ("suppress", "refuse")}


def _at_least_as_strict(name: str, new: Any, current: Any) -> bool:
    if name in ("identifier_columns", "identifier_patterns"):
        return True  # merged as a union: names and patterns can only be added
    if name in _STRICTER_WORDS:
        order = _STRICTER_WORDS[name]
        if new not in order:
            raise ConfigurationError(f"disclosure policy: {name}", f"is {new!r}", " or ".join(order))
        return order.index(new) >= order.index(current)
    if isinstance(new, bool) or not isinstance(new, int | float):
        raise ConfigurationError(f"disclosure policy: {name}", f"is {new!r}", "a number")
    if name in ("min_cell_count", "min_records"):
        return bool(new >= current)
    return bool(new <= current)  # ratios, fractions and budgets: smaller is stricter


def _merge(name: str, new: Any, current: Any) -> Any:
    if name == "identifier_columns":
        return frozenset(current) | new
    if name == "identifier_patterns":
        return tuple(dict.fromkeys((*current, *new)))
    return new


def _show(value: Any) -> str:
    if isinstance(value, frozenset | tuple):
        return f"{len(value)} entries"
    return repr(value)


# -- loading ----------------------------------------------------------------------------------------


def load_policy_file(path: str | Path, base: DisclosurePolicy | None = None) -> DisclosurePolicy:
    """``base`` (default: the library's defaults) tightened by the JSON object in ``path``."""
    where = f"{POLICY_ENV}={path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            where, f"cannot be read ({exc.strerror or exc})", "a readable JSON file"
        ) from None
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(where, f"is not JSON ({exc})", "a JSON object of policy settings") from None
    if not isinstance(settings, dict):
        raise ConfigurationError(where, "is not a JSON object", "a JSON object of policy settings")
    return (base or DisclosurePolicy()).tighten(settings)


def policy_from_env(environ: Mapping[str, str] | None = None) -> DisclosurePolicy:
    """The node's policy: the defaults, tightened by the file ``FLAME_DISCLOSURE_POLICY`` names (if set)."""
    env = os.environ if environ is None else environ
    path = env.get(POLICY_ENV, "").strip()
    if not path:
        return DisclosurePolicy()
    return load_policy_file(path)


def policy_files(options: Iterable[str], node_names: Iterable[str]) -> dict[str, str]:
    """``flame sim --policy`` values (``FILE`` for every node, ``NODE=FILE`` for one) as node -> file.

    Each file is read and checked now, so a bad one is a usage error before anything starts; a later
    ``NODE=FILE`` replaces an earlier ``FILE`` for that node. Raises :class:`ConfigurationError`.
    """
    names = list(node_names)
    chosen: dict[str, str] = {}
    for option in options:
        node, sep, file = option.partition("=")
        if not sep:
            node, file = "", option
        if node and node not in names:
            raise ConfigurationError(
                f"--policy {option}", f"names no node {node!r}", f"one of {', '.join(names)}, or just FILE"
            )
        path = str(Path(file).resolve())
        load_policy_file(path)
        for name in [node] if node else names:
            chosen[name] = path
    return chosen


__all__ = [
    "DEFAULT_IDENTIFIER_COLUMNS",
    "DEFAULT_IDENTIFIER_PATTERNS",
    "POLICY_ENV",
    "DisclosurePolicy",
    "load_policy_file",
    "normalise_name",
    "policy_files",
    "policy_from_env",
]
