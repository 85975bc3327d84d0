"""The analyzer's handle on its node's data: sources, FHIR resources, S3 objects, DataFrames.

Author code runs in a worker thread; every method here hands the request to the node runtime's event
loop and waits for it (bounded by ``timeout``, :func:`~flame.node.loop.call_in_loop`), so the runtime stays
responsive meanwhile; the request's own errors (a FHIR server's timeout included) reach the caller as
they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from flame.clients.data_api import DataAPI, DataSourceInfo, fhir_dataframe, read_dataframe
from flame.errors import DataNotFoundError
from flame.node.loop import call_in_loop

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")


class Data:
    """The data sources of one analysis node (none on an aggregator without data access)."""

    def __init__(self, api: DataAPI | None, loop: asyncio.AbstractEventLoop, timeout: float = 600.0) -> None:
        self._api = api
        self._loop = loop
        self.timeout = timeout

    def _run(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        return call_in_loop(self._loop, coro, self.timeout, what)

    @property
    def api(self) -> DataAPI:
        if self._api is None:
            raise DataNotFoundError("this node has no data access (DATA_SOURCE_TOKEN is none_needed)")
        return self._api

    def sources(self) -> list[DataSourceInfo]:
        """The node's data sources for this project."""
        return self._run(self.api.sources(), "the data source list")

    def _source(self, kind: str, name: str | None) -> str:
        sources = [s for s in self.sources() if s.kind == kind and (name is None or s.name == name)]
        if not sources:
            raise DataNotFoundError(f"no {kind} data source{f' named {name!r}' if name else ''} on this node")
        return sources[0].name

    def fhir(self, query: str, *, source: str | None = None) -> list[dict[str, Any]]:
        """The resources a FHIR search returns, all pages followed (first FHIR source by default)."""
        name = self._source("fhir", source)
        return self._run(self.api.kong.fhir(name, query), f"FHIR query {query!r}")

    def fhir_count(self, resource_type: str, *, source: str | None = None) -> int:
        """``Type?_summary=count``: how many resources of a type the source holds."""
        name = self._source("fhir", source)
        return self._run(self.api.kong.fhir_count(name, resource_type), f"FHIR count of {resource_type}")

    def fhir_dataframe(self, query: str, *, source: str | None = None) -> pd.DataFrame:
        """FHIR resources as a DataFrame, one row per resource, dotted column names."""
        return fhir_dataframe(self.fhir(query, source=source))

    def s3_keys(self, prefix: str = "", *, source: str | None = None) -> list[str]:
        name = self._source("s3", source)
        return self._run(self.api.kong.s3_keys(name, prefix), "the S3 listing")

    def s3_bytes(self, key: str, *, source: str | None = None) -> bytes:
        name = self._source("s3", source)
        return self._run(self.api.kong.s3_object(name, key), f"S3 object {key!r}")

    def dataframe(self, key: str, *, source: str | None = None, **read_kwargs: Any) -> pd.DataFrame:
        """A CSV or Parquet object of an S3 source as a DataFrame."""
        return read_dataframe(self.s3_bytes(key, source=source), key, **read_kwargs)
