"""What the pipeline needs from an input and from an output, and what SQL stores share.

A *source* yields the input's records in pages (dicts that hold the id
field); a *sink* upserts rows keyed by id and says which ids it already
holds, which is how a restarted run skips finished rows. Three kinds of each:
SQLite (store_sqlite), PostgreSQL (store_postgres) and CSV (store_csv).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from katyusha.batch.config import Store
from katyusha.core.errors import ConfigError

Record = dict[str, Any]

# The dead-letter table's columns, after the id.
DEAD_LETTER_COLUMNS = ("status", "reason", "attempts", "failed_at", "record")


class StoreError(Exception):
    """A store cannot be opened, read or written; the message names the config field."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where


class Source(Protocol):
    fields: list[str]  # every field of a record, the id field included (known once open)

    async def open(self) -> None: ...

    async def count(self) -> int: ...

    def pages(self) -> AsyncIterator[list[Record]]: ...

    async def close(self) -> None: ...


class Sink(Protocol):
    async def open(self) -> None: ...

    async def finished(self, ids: Sequence[Any]) -> set[Any]:
        """The ids of ``ids`` that the sink holds already."""
        ...

    async def write(self, rows: Sequence[Record]) -> None:
        """Upsert ``rows`` (each holds the id column and every other column) in one batch."""
        ...

    async def clear(self) -> None: ...

    async def close(self) -> None: ...


class PagedSource:
    """What every source keeps: the store, the id field, the wanted fields, the page size."""

    def __init__(self, store: Store, id_column: str, columns: tuple[str, ...] | None, page_size: int):
        self.store = store
        self.id_column = id_column
        self.wanted = columns
        self.page_size = page_size
        self.fields: list[str] = []


class KeyedSink:
    """What every sink keeps: the store, the id column and the other columns, in order."""

    def __init__(self, store: Store, id_column: str, columns: tuple[str, ...]):
        self.store = store
        self.id_column = id_column
        self.columns = columns


def quote(name: str) -> str:
    """A checked identifier (config.py allows letters, digits, _ and one dot) in double quotes."""
    return ".".join(f'"{part}"' for part in name.split("."))


def value_kinds(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, str | None]:
    """Per column, the kind of its first non-null value: int, float, bool, str or json."""
    kinds: dict[str, str | None] = {}
    for column in columns:
        kinds[column] = None
        for row in rows:
            value = row.get(column)
            if value is not None:
                kinds[column] = _kind(value)
                break
    return kinds


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def flat(value: Any) -> Any:
    """A value a plain SQL column or a CSV cell takes: mappings and lists as JSON text."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def matching(ids: Sequence[Any], found: set[str]) -> set[Any]:
    """The ids of ``ids`` whose text is in ``found`` (stores may hand ids back as text or numbers)."""
    return {i for i in ids if str(i) in found}


def select_fields(have: list[str], id_column: str, wanted: tuple[str, ...] | None, where: str) -> list[str]:
    """The fields to read: the id first, then the wanted columns (default: all).

    Raises ConfigError (the file names a column the input lacks) at ``where``.id or .columns[i].
    """
    if id_column not in have:
        raise ConfigError(f"{where}.id", f"no column {id_column!r} (columns: {', '.join(have)})")
    for i, column in enumerate(wanted or ()):
        if column not in have:
            raise ConfigError(f"{where}.columns[{i}]",
                              f"no column {column!r} (columns: {', '.join(have)})")
    rest = [c for c in (wanted or have) if c != id_column]
    return [id_column, *rest]


def keyset_queries(fields: Sequence[str], table: str, id_column: str, limit: str, after: str
                   ) -> tuple[str, str]:
    """The first page's query and the next pages' (``id > after``), in id order.

    ``limit`` and ``after`` are the driver's parameter marks (``?`` or ``$1``).
    """
    cols = ", ".join(quote(f) for f in fields)
    table, key = quote(table), quote(id_column)
    first = f"SELECT {cols} FROM {table} WHERE {key} IS NOT NULL ORDER BY {key} LIMIT {limit}"
    later = f"SELECT {cols} FROM {table} WHERE {key} > {after} ORDER BY {key} LIMIT {limit}"
    return first, later


def check_columns(have: Sequence[str], needed: Sequence[str], where: str, table: str) -> None:
    """Raise ConfigError at ``where`` when the existing ``table`` lacks a column to be written."""
    missing = [c for c in needed if c not in have]
    if missing:
        raise ConfigError(where, f"table {table} has no column {', '.join(missing)} "
                                 f"(it has {', '.join(have)})")
