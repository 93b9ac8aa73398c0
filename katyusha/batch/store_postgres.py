"""PostgreSQL (asyncpg) as input (keyset pages by id) and as output (batched upserts by id).

A batch is written in one statement: the rows go as one JSON array and
``jsonb_populate_recordset`` turns each into a row of the table's own types,
so a number lands in a ``double precision`` column and an object in a
``jsonb`` one without per-column conversions here.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from katyusha.batch.config import Store
from katyusha.batch.stores import (
    KeyedSink,
    PagedSource,
    Record,
    StoreError,
    check_columns,
    keyset_queries,
    matching,
    quote,
    select_fields,
    value_kinds,
)
from katyusha.batch.template import jsonable

_SQL_TYPES = {"int": "bigint", "float": "double precision", "bool": "boolean", "str": "text",
              "json": "jsonb", None: "text"}
CONNECT_TIMEOUT = 10.0
_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)


async def connect(store: Store) -> asyncpg.Connection:
    """A connection to ``store.dsn``; raises StoreError naming the dsn field and the reason."""
    assert store.dsn is not None
    try:
        return await asyncpg.connect(store.dsn, timeout=CONNECT_TIMEOUT)
    except (*_ERRORS, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"no answer within {CONNECT_TIMEOUT:g}s"
        raise StoreError(f"{store.where}.dsn", f"cannot connect to {redact(store.dsn)}: {reason}") from None


async def _columns_of(conn: asyncpg.Connection, table: str) -> list[str] | None:
    """The table's column names, or None when it does not exist."""
    if await conn.fetchval("SELECT to_regclass($1)", quote(table)) is None:
        return None
    statement = await conn.prepare(f"SELECT * FROM {quote(table)} LIMIT 0")
    return [attribute.name for attribute in statement.get_attributes()]


class PostgresSource(PagedSource):
    def __init__(self, store: Store, id_column: str, columns: tuple[str, ...] | None, page_size: int):
        assert store.table is not None
        super().__init__(store, id_column, columns, page_size)
        self._conn: asyncpg.Connection | None = None

    async def open(self) -> None:
        """Raises StoreError when the server, the table or a column cannot be reached."""
        self._conn = await connect(self.store)
        try:
            have = await _columns_of(self._conn, self.store.table)
        except _ERRORS as exc:
            raise StoreError(f"{self.store.where}.table", str(exc)) from None
        if have is None:
            raise StoreError(f"{self.store.where}.table", f"no table {self.store.table}")
        self.fields = select_fields(have, self.id_column, self.wanted, self.store.where)

    async def count(self) -> int:
        try:
            return await self._conn.fetchval(f"SELECT count(*) FROM {quote(self.store.table)}")
        except _ERRORS as exc:
            raise StoreError(self.store.where, f"counting {self.store.table}: {exc}") from None

    async def pages(self) -> AsyncIterator[list[Record]]:
        first, after = keyset_queries(self.fields, self.store.table, self.id_column, "$1", "$2")
        last: Any = None
        while True:
            try:
                if last is None:
                    rows = await self._conn.fetch(first, self.page_size)
                else:
                    rows = await self._conn.fetch(after, self.page_size, last)
            except _ERRORS as exc:
                raise StoreError(self.store.where, f"reading {self.store.table}: {exc}") from None
            if not rows:
                return
            last = rows[-1][0]
            yield [dict(row.items()) for row in rows]

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


class PostgresSink(KeyedSink):
    def __init__(self, store: Store, id_column: str, columns: tuple[str, ...]):
        assert store.table is not None
        super().__init__(store, id_column, columns)
        self._id_type: str | None = None  # known once the table exists
        self._conn: asyncpg.Connection | None = None
        # The reader asks finished() while the writer writes; one connection runs one query.
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Raises StoreError when the server cannot be reached or the table lacks a column."""
        self._conn = await connect(self.store)
        where = f"{self.store.where}.table"
        try:
            have = await _columns_of(self._conn, self.store.table)
            if have is not None:
                self._id_type = await self._type_of(self.id_column)
        except _ERRORS as exc:
            raise StoreError(where, str(exc)) from None
        if have is not None:
            check_columns(have, (self.id_column, *self.columns), where, self.store.table)

    async def _type_of(self, column: str) -> str | None:
        return await self._conn.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped",
            quote(self.store.table), column)

    async def finished(self, ids: Sequence[Any]) -> set[Any]:
        if self._id_type is None or not ids:
            return set()
        key = quote(self.id_column)
        # Cast the text array to the id's own type so the primary key's index is used.
        sql = (f"SELECT {key}::text FROM {quote(self.store.table)} "
               f"WHERE {key} = ANY($1::text[]::{self._id_type}[])")
        try:
            async with self._lock:
                rows = await self._conn.fetch(sql, [str(i) for i in ids])
        except _ERRORS as exc:
            raise StoreError(f"{self.store.where}.table", f"reading {self.store.table}: {exc}") from None
        return matching(ids, {row[0] for row in rows})

    async def write(self, rows: Sequence[Record]) -> None:
        if not rows:
            return
        names = (self.id_column, *self.columns)
        table, cols = quote(self.store.table), ", ".join(quote(n) for n in names)
        updates = ", ".join(f"{quote(n)} = EXCLUDED.{quote(n)}" for n in self.columns)
        action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        sql = (f"INSERT INTO {table} ({cols}) SELECT {cols} FROM "
               f"jsonb_populate_recordset(NULL::{table}, $1::jsonb) "
               f"ON CONFLICT ({quote(self.id_column)}) {action}")
        document = json.dumps([{n: jsonable(row.get(n)) for n in names} for row in rows])
        id_type = self._id_type
        try:
            async with self._lock, self._conn.transaction():
                if id_type is None:
                    await self._conn.execute(self._create_sql(rows))
                    id_type = await self._type_of(self.id_column)
                await self._conn.execute(sql, document)
        except _ERRORS as exc:
            raise StoreError(f"{self.store.where}.table", f"writing to {self.store.table}: {exc}") from None
        self._id_type = id_type

    def _create_sql(self, rows: Sequence[Record]) -> str:
        kinds = value_kinds(rows, (self.id_column, *self.columns))
        defs = [f"{quote(self.id_column)} {_SQL_TYPES[kinds[self.id_column]]} PRIMARY KEY"]
        defs += [f"{quote(c)} {_SQL_TYPES[kinds[c]]}" for c in self.columns]
        return f"CREATE TABLE IF NOT EXISTS {quote(self.store.table)} ({', '.join(defs)})"

    async def clear(self) -> None:
        if self._id_type is not None:
            async with self._lock:
                await self._conn.execute(f"DELETE FROM {quote(self.store.table)}")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
