"""``fhir_to_csv``: pivot a FHIR search Bundle of ``Observation`` or ``QuestionnaireResponse`` resources
into a table, as PrivateAIM's SDK does.

Each cell comes from one entry: ``col_key_seq`` finds the column id, ``row_key_seq`` the row id and
``value_key_seq`` the value. Key sequences are dotted paths into the Bundle *entry* (so they start with
``resource.``, e.g. ``resource.subject.reference``). Lists on the way are searched element by element,
the first match wins; at the last key an exact key wins, else the first key that contains it (so
``resource.value`` reaches ``valueQuantity``).

- ``Observation``: one cell per entry; a row key is required (usually the subject).
- ``QuestionnaireResponse``: one row per response, one column per item of ``resource.item``; the first
  two keys of the column and value sequences (``resource.item``) are skipped and the rest are looked up
  in each item (e.g. ``resource.item.linkId`` and ``resource.item.answer.value``). Rows are numbered
  ``0, 1, ...`` across all pages (PrivateAIM's SDK restarts the count on every page, so rows of later
  pages overwrite earlier ones; ours does not).

``row_id_filters`` keeps only rows whose id contains one of the strings; otherwise ``col_id_filters``
keeps only columns whose id contains one of them. When ``next_page`` is given, the Bundle's ``next`` link
is followed (``next_page`` receives the part of the link after ``/fhir/`` and returns the next Bundle)
until a page has none.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from flame.errors import PayloadError, ProtocolError

KNOWN_RESOURCES = ("Observation", "QuestionnaireResponse")

Table = dict[Any, dict[Any, Any]]


def fhir_to_csv(
    fhir_data: Mapping[str, Any],
    col_key_seq: str,
    value_key_seq: str,
    input_resource: str,
    row_key_seq: str | None = None,
    row_id_filters: Sequence[str] | None = None,
    col_id_filters: Sequence[str] | None = None,
    row_col_name: str = "",
    separator: str = ",",
    output_type: Literal["file", "dict"] = "file",
    *,
    next_page: Callable[[str], Mapping[str, Any]] | None = None,
    max_pages: int = 10_000,
) -> io.StringIO | Table:
    """The table of a FHIR Bundle: a ``StringIO`` of CSV (``output_type='file'``) or ``{column: {row: value}}``."""
    if input_resource not in KNOWN_RESOURCES:
        raise ValueError(
            f"input_resource must be one of {', '.join(KNOWN_RESOURCES)}, got {input_resource!r}"
        )
    if input_resource == "Observation" and not row_key_seq:
        raise ValueError("input_resource 'Observation' needs row_key_seq (e.g. 'resource.subject.reference')")
    if output_type not in ("file", "dict"):
        raise ValueError(f"output_type must be 'file' or 'dict', got {output_type!r}")
    if not isinstance(fhir_data, Mapping):
        raise PayloadError(f"fhir_data must be a FHIR Bundle (a dict), got {type(fhir_data).__name__}")
    col_keys = _keys(col_key_seq, "col_key_seq")
    value_keys = _keys(value_key_seq, "value_key_seq")
    row_keys = _keys(row_key_seq, "row_key_seq") if row_key_seq else []
    table: Table = {}
    page: Mapping[str, Any] = fhir_data
    seen: set[str] = set()
    responses = 0
    for _ in range(max_pages):
        for entry in page.get("entry") or []:
            if input_resource == "Observation":
                _observation(entry, table, col_keys, row_keys, value_keys, row_id_filters, col_id_filters)
            else:
                _questionnaire(entry, table, col_keys, value_keys, col_id_filters, str(responses))
                responses += 1
        link = _next_link(page)
        if next_page is None or link is None:
            break
        tail = _fhir_tail(link)
        if tail in seen:
            raise ProtocolError(f"the FHIR server links back to a page already read ({tail[:120]})")
        seen.add(tail)
        page = next_page(tail)
        if not isinstance(page, Mapping):
            raise ProtocolError(f"the next page of the FHIR search is not a Bundle: {type(page).__name__}")
    if output_type == "dict":
        return table
    return _to_csv(table, row_col_name, separator)


def _keys(seq: str | None, name: str) -> list[str]:
    if not isinstance(seq, str) or not seq or any(not k for k in seq.split(".")):
        raise ValueError(f"{name} must be a dotted key path such as 'resource.code.coding.code', got {seq!r}")
    return seq.split(".")


def _passes(value: Any, filters: Sequence[str] | None) -> bool:
    return filters is None or (value is not None and any(f in str(value) for f in filters))


def _observation(
    entry: Any,
    table: Table,
    col_keys: list[str],
    row_keys: list[str],
    value_keys: list[str],
    row_filters: Sequence[str] | None,
    col_filters: Sequence[str] | None,
) -> None:
    col_id = search(entry, col_keys)
    row_id = search(entry, row_keys)
    if row_filters is not None:
        if not _passes(row_id, row_filters):
            return
    elif not _passes(col_id, col_filters):
        return
    table.setdefault(_hashable(col_id), {})[_hashable(row_id)] = search(entry, value_keys)


def _questionnaire(
    entry: Any,
    table: Table,
    col_keys: list[str],
    value_keys: list[str],
    col_filters: Sequence[str] | None,
    row_id: str,
) -> None:
    resource = entry.get("resource") if isinstance(entry, Mapping) else None
    items = resource.get("item") if isinstance(resource, Mapping) else None
    for item in items if isinstance(items, list) else []:
        col_id = search(item, col_keys[2:]) if len(col_keys) > 2 else None
        if not _passes(col_id, col_filters):
            continue
        value = search(item, value_keys[2:]) if len(value_keys) > 2 else None
        table.setdefault(_hashable(col_id), {})[row_id] = value


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return str(value)
    return value


def search(node: Any, keys: Sequence[str]) -> Any:
    """The first value at the dotted path ``keys`` in ``node`` (lists searched element by element), or None."""
    if not keys:
        return None
    if isinstance(node, list):
        for item in node:
            found = search(item, keys)
            if found is not None:
                return found
        return None
    if not isinstance(node, Mapping):
        return None
    key = keys[0]
    if len(keys) > 1:
        return search(node[key], keys[1:]) if key in node else None
    if key in node:
        return node[key]
    for name, value in node.items():
        if isinstance(name, str) and key in name:
            return value
    return None


def _next_link(page: Mapping[str, Any]) -> str | None:
    for link in page.get("link") or []:
        if isinstance(link, Mapping) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _fhir_tail(url: str) -> str:
    """The part of a link after ``/fhir/`` (the whole link if it has none, as PrivateAIM's SDK does)."""
    parts = urlsplit(url)
    cut = parts.path.rfind("/fhir/")
    if cut < 0:
        return url.split("/fhir/")[-1]
    tail = parts.path[cut + len("/fhir/") :]
    return tail + ("?" + parts.query if parts.query else "")


def _to_csv(table: Table, row_col_name: str, separator: str) -> io.StringIO:
    columns = list(table)
    rows = list(dict.fromkeys(row for column in table.values() for row in column))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=separator, lineterminator="\n")
    writer.writerow([row_col_name, *(str(c) for c in columns)])
    for row in rows:
        writer.writerow([str(row), *(str(table[c][row]) if row in table[c] else "" for c in columns)])
    text = out.getvalue().rstrip("\n")
    result = io.StringIO(text)
    result.seek(0)
    return result


__all__ = ["KNOWN_RESOURCES", "fhir_to_csv", "search"]
