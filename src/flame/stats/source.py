"""Where a statistic's data comes from on each node, and the row filter applied before it.

A source is an S3 object key (CSV, TSV or Parquet) or a FHIR search flattened to columns (one row per
resource, dotted column names; ``columns`` renames them). ``where`` filters rows before the
statistic: a small expression language of comparisons and boolean operators on column names and
literals (``"age >= 18 and gender == 'female'"``, ``"bmi > 30 | smoker == 1"``,
``"18 <= age < 65"``, ``"site in ['a', 'b']"``). It runs on the node, so it is parsed and evaluated
here, never handed to ``eval`` or ``DataFrame.query``: function calls, attributes, subscripts,
arithmetic and variables from the caller's scope are refused.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flame.errors import ConfigurationError

if TYPE_CHECKING:
    from flame.federated.data import Data

#: Object keys with these endings are read as tables from an S3 source.
TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")
#: ``Patient``, ``Observation?code=...``: a FHIR search (a resource type, optionally with parameters).
_FHIR_QUERY = re.compile(r"^[A-Z][A-Za-z]+(\?.*)?$")
#: Longest ``where`` expression accepted (characters).
MAX_WHERE = 2000


@dataclass(frozen=True)
class Source:
    """The table a statistic reads on every node.

    Give ``key`` (an S3 object key) or ``fhir`` (a FHIR search such as ``"Patient?gender=female"``).
    ``columns`` renames columns after reading (``{"bmi": "valueQuantity.value"}``: new name -> read
    name; with FHIR, only the renamed columns are kept). ``where`` filters rows; ``data_source`` names
    the node's data source when it has several of the kind.
    """

    key: str | None = None
    fhir: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    where: str | None = None
    data_source: str | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.fhir is None):
            raise ConfigurationError(
                "source", "needs exactly one of key= (S3) or fhir= (a FHIR search)", 'e.g. "patients.csv"'
            )
        if self.where is not None:
            parse_where(self.where)  # refuse a bad filter before anything runs on a node
        object.__setattr__(self, "columns", dict(self.columns))

    @property
    def label(self) -> str:
        text = self.key if self.key is not None else f"FHIR {self.fhir}"
        return f"{text} where {self.where}" if self.where else str(text)

    def load(self, data: Data) -> pd.DataFrame:
        """This node's rows: read, renamed, filtered."""
        if self.key is not None:
            frame = data.dataframe(self.key, source=self.data_source)
        else:
            assert self.fhir is not None
            frame = data.fhir_dataframe(self.fhir, source=self.data_source)
            if self.columns:
                missing = [read for read in self.columns.values() if read not in frame.columns]
                if missing and len(frame):
                    raise ConfigurationError(
                        "source columns",
                        f"{', '.join(map(repr, missing))} not among the FHIR columns",
                        f"some of {', '.join(sorted(map(str, frame.columns))[:20])}",
                    )
                frame = frame.reindex(columns=list(self.columns.values()))
        return self.prepare(frame)

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rename and filter a table already read (what :meth:`load` does after reading)."""
        if self.columns:
            frame = frame.rename(columns={read: new for new, read in self.columns.items()})
        if self.where:
            frame = frame.loc[where_mask(frame, self.where)]
        return frame.reset_index(drop=True)


def as_source(source: Source | str, where: str | None = None) -> Source:
    """A :class:`Source` from what a ``flame.stats`` function was given.

    A string is a FHIR search when it looks like one (``"Patient"``, ``"Observation?code=..."``),
    else an S3 object key. ``where`` given here is combined with the source's own by ``and``.
    """
    if isinstance(source, Source):
        if where is None:
            return source
        combined = f"({source.where}) and ({where})" if source.where else where
        return Source(source.key, source.fhir, source.columns, combined, source.data_source)
    if not isinstance(source, str) or not source.strip():
        raise ConfigurationError(
            "source", f"is {source!r:.60}", 'an S3 object key ("patients.csv"), a FHIR search or a Source'
        )
    text = source.strip()
    if not text.lower().endswith(TABLE_SUFFIXES) and _FHIR_QUERY.match(text):
        return Source(fhir=text, where=where)
    return Source(key=text, where=where)


# -- the row filter -------------------------------------------------------------------------------

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_HINT = (
    "comparisons of columns with literals joined by and/or/not (or &, |, ~ around parenthesised "
    "comparisons), e.g. \"age >= 18 and sex == 'f'\" or \"(age >= 18) & (sex == 'f')\""
)


def parse_where(text: str) -> ast.Expression:
    """The checked syntax tree of a ``where`` expression; :class:`ConfigurationError` if not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError("where", f"is {text!r:.60}", _HINT)
    if len(text) > MAX_WHERE:
        raise ConfigurationError("where", f"is {len(text)} characters long (at most {MAX_WHERE})", _HINT)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigurationError("where", f"{text!r} is not an expression ({exc.msg})", _HINT) from None
    _check(tree.body, text)
    return tree


def _refuse(node: ast.AST, text: str) -> ConfigurationError:
    part = ast.get_source_segment(text.strip(), node) or type(node).__name__
    return ConfigurationError("where", f"{part!r} is not allowed in a row filter", _HINT)


def _check(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, text)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd | ast.BitOr):
        _check(node.left, text)
        _check(node.right, text)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.Invert):
        _check(node.operand, text)
    elif isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(right, ast.List | ast.Tuple | ast.Set) or not all(
                    _literal(e) for e in right.elts
                ):
                    raise _refuse(right, text)
            elif type(op) not in _COMPARE:
                raise _refuse(node, text)
        if not any(isinstance(o, ast.Name) for o in operands):
            raise ConfigurationError("where", "a comparison without a column name", _HINT)
        for operand in operands:
            if not (
                isinstance(operand, ast.Name)
                or _literal(operand)
                or isinstance(operand, ast.List | ast.Tuple | ast.Set)
            ):
                raise _refuse(operand, text)
    elif isinstance(node, ast.Name):
        return  # a boolean column
    else:
        raise _refuse(node, text)


def _literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None or isinstance(node.value, bool | int | float | str)
    return (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    )


def where_mask(frame: pd.DataFrame, text: str) -> pd.Series:
    """The rows of ``frame`` that ``text`` selects (missing values compare False, as in pandas)."""
    tree = parse_where(text)
    mask = _evaluate(tree.body, frame, text)
    if not isinstance(mask, pd.Series):
        raise ConfigurationError("where", f"{text!r} does not depend on any column", _HINT)
    return mask.fillna(False).astype(bool)


def _value(node: ast.AST, frame: pd.DataFrame, text: str) -> Any:
    if isinstance(node, ast.Name):
        if node.id not in frame.columns:
            raise ConfigurationError(
                "where",
                f"names the column {node.id!r}, which this node's table does not have",
                f"one of {', '.join(map(str, frame.columns[:30]))}",
            )
        return frame[node.id]
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [ast.literal_eval(e) for e in node.elts]
    return ast.literal_eval(node)


def _compare(left: Any, op: ast.cmpop, right: Any) -> Any:
    if isinstance(op, ast.In | ast.NotIn):
        if not isinstance(left, pd.Series):
            raise ConfigurationError("where", "'in' needs a column on its left", _HINT)
        inside = left.isin(right)
        return ~inside & left.notna() if isinstance(op, ast.NotIn) else inside
    if right is None or left is None:
        column = left if right is None else right
        if not isinstance(op, ast.Eq | ast.NotEq) or not isinstance(column, pd.Series):
            raise ConfigurationError("where", "None compares with == or != to a column only", _HINT)
        return column.isna() if isinstance(op, ast.Eq) else column.notna()
    try:
        result = _COMPARE[type(op)](left, right)
    except TypeError as exc:
        raise ConfigurationError("where", f"cannot compare these values ({exc})", _HINT) from None
    if isinstance(result, pd.Series):
        present = (left.notna() if isinstance(left, pd.Series) else True) & (
            right.notna() if isinstance(right, pd.Series) else True
        )
        return result & present
    return result


def _evaluate(node: ast.AST, frame: pd.DataFrame, text: str) -> Any:
    if isinstance(node, ast.BoolOp):
        values = [_evaluate(v, frame, text) for v in node.values]
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        joined = values[0]
        for value in values[1:]:
            joined = combine(joined, value)
        return joined
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, frame, text), _evaluate(node.right, frame, text)
        return operator.and_(left, right) if isinstance(node.op, ast.BitAnd) else operator.or_(left, right)
    if isinstance(node, ast.UnaryOp):
        return ~_as_bool(_evaluate(node.operand, frame, text))
    if isinstance(node, ast.Compare):
        values = [_value(node.left, frame, text), *(_value(c, frame, text) for c in node.comparators)]
        result: Any = True
        for i, op in enumerate(node.ops):
            result = result & _compare(values[i], op, values[i + 1])
        return result
    if isinstance(node, ast.Name):
        return _as_bool(_value(node, frame, text))
    raise _refuse(node, text)


def _as_bool(value: Any) -> Any:
    if isinstance(value, pd.Series):
        if value.dtype.kind == "b":
            return value
        if value.dtype.kind in "iuf":
            return value.fillna(0).astype(bool) & value.notna()
        raise ConfigurationError("where", f"the column {value.name!r} is not boolean", _HINT)
    return bool(value) if not isinstance(value, np.ndarray) else value.astype(bool)


__all__ = ["Source", "as_source", "parse_where", "where_mask"]
