"""SQLite as input (keyset pages by id) and as output (batched upserts by id).

sqlite3 blocks, so each store keeps one connection on its own worker thread
and the event loop awaits it. The output runs in WAL mode, so a reader of the
same file (the input, or a person watching progress) never blocks a write.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from katyusha.batch.config import Store
from katyusha.batch.stores import (
    KeyedSink,
    PagedSource,
    Record,
    StoreError,
    check_columns,
    flat,
    keyset_queries,
    matching,
    quote,
    select_fields,
    value_kinds,
)

_SQL_TYPES = {"int": "INTEGER", "float": "REAL", "bool": "INTEGER", "str": "TEXT", "json": "TEXT",
              None: ""}
_IN_CHUNK = 500  # SQLite's bound on parameters is 32766; stay far below it


class _Connection:
    """One sqlite3 connection, used only from its own thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-sqlite")
        self.conn: sqlite3.Connection | None = None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self, connect: Callable[[], Any], where: str, failure: str) -> Any:
        """Run ``connect`` (which sets ``conn``) on the thread; sqlite3 errors become StoreError."""
        try:
            return await self.call(connect)
        except sqlite3.Error as exc:
            raise StoreError(where, f"{failure}: {exc}") from None

    async def close(self) -> None:
        if self.conn is not None:
            await self.call(self.conn.close)
            self.conn = None
        self._pool.shutdown(wait=False)


def _columns_of(conn: sqlite3.Connection, table: str) -> list[str] | None:
    """The table's column names, or None when it does not exist."""
    try:
        cursor = conn.execute(f"SELECT * FROM {quote(table)} LIMIT 0")
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return [d[0] for d in cursor.description]


class SqliteSource(PagedSource):
    def __init__(self, store: Store, id_column: str, columns: tuple[str, ...] | None, page_size: int):
        assert store.path is not None and store.table is not None
        super().__init__(store, id_column, columns, page_size)
        self._db = _Connection()

    async def open(self) -> None:
        """Raises StoreError when the file, the table or a column is missing."""
        where, path = self.store.where, self.store.path
        if not Path(path).is_file():
            raise StoreError(f"{where}.path", f"no SQLite file at {path}")

        def connect() -> list[str] | None:
            # Read-only: a wrong path must not create an empty database.
            self._db.conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
            self._db.conn.execute("PRAGMA busy_timeout = 30000")
            return _columns_of(self._db.conn, self.store.table)

        have = await self._db.open(connect, f"{where}.path", f"cannot read {path} as SQLite")
        if have is None:
            raise StoreError(f"{where}.table", f"no table {self.store.table} in {path}")
        self.fields = select_fields(have, self.id_column, self.wanted, where)

    async def count(self) -> int:
        sql = f"SELECT count(*) FROM {quote(self.store.table)}"
        try:
            return (await self._db.call(lambda: self._db.conn.execute(sql).fetchone()))[0]
        except sqlite3.Error as exc:
            raise StoreError(self.store.where, f"counting {self.store.table}: {exc}") from None

    async def pages(self) -> AsyncIterator[list[Record]]:
        first, after = keyset_queries(self.fields, self.store.table, self.id_column, "?", "?")
        last: Any = None
        while True:
            args = (self.page_size,) if last is None else (last, self.page_size)
            sql = first if last is None else after
            try:
                rows = await self._db.call(lambda s=sql, a=args: self._db.conn.execute(s, a).fetchall())
            except sqlite3.Error as exc:
                raise StoreError(self.store.where, f"reading {self.store.path}: {exc}") from None
            if not rows:
                return
            last = rows[-1][0]
            yield [dict(zip(self.fields, row, strict=True)) for row in rows]

    async def close(self) -> None:
        await self._db.close()


class SqliteSink(KeyedSink):
    def __init__(self, store: Store, id_column: str, columns: tuple[str, ...]):
        assert store.path is not None and store.table is not None
        super().__init__(store, id_column, columns)
        self._exists = False
        self._db = _Connection()

    async def open(self) -> None:
        """Raises StoreError when the file cannot be opened or the table lacks a column."""
        where, path = self.store.where, self.store.path

        def connect() -> list[str] | None:
            self._db.conn = sqlite3.connect(path)
            self._db.conn.execute("PRAGMA busy_timeout = 30000")
            self._db.conn.execute("PRAGMA journal_mode = WAL")
            self._db.conn.execute("PRAGMA synchronous = NORMAL")
            return _columns_of(self._db.conn, self.store.table)

        have = await self._db.open(connect, f"{where}.path", f"cannot open {path} as SQLite")
        self._exists = have is not None
        if have is not None:
            check_columns(have, (self.id_column, *self.columns), f"{where}.table",
                          f"{self.store.table} in {path}")

    async def finished(self, ids: Sequence[Any]) -> set[Any]:
        if not self._exists or not ids:
            return set()
        table, key = quote(self.store.table), quote(self.id_column)

        def query() -> set[str]:
            found: set[str] = set()
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = list(ids[start:start + _IN_CHUNK])
                marks = ", ".join("?" * len(chunk))
                for (value,) in self._db.conn.execute(
                        f"SELECT {key} FROM {table} WHERE {key} IN ({marks})", chunk):
                    found.add(str(value))
            return found

        return matching(ids, await self._db.call(query))

    async def write(self, rows: Sequence[Record]) -> None:
        if not rows:
            return
        names = (self.id_column, *self.columns)
        cols = ", ".join(quote(n) for n in names)
        updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in self.columns)
        action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        sql = (f"INSERT INTO {quote(self.store.table)} ({cols}) VALUES ({', '.join('?' * len(names))}) "
               f"ON CONFLICT ({quote(self.id_column)}) {action}")
        values = [tuple(flat(row.get(n)) for n in names) for row in rows]
        create = None if self._exists else self._create_sql(rows)

        def run() -> None:
            with self._db.conn:  # one transaction per batch
                if create:
                    self._db.conn.execute(create)
                self._db.conn.executemany(sql, values)

        try:
            await self._db.call(run)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.store.where}.table",
                             f"writing to {self.store.table} in {self.store.path}: {exc}") from None
        self._exists = True

    def _create_sql(self, rows: Sequence[Record]) -> str:
        kinds = value_kinds(rows, (self.id_column, *self.columns))
        defs = [f"{quote(self.id_column)} {_SQL_TYPES[kinds[self.id_column]]} PRIMARY KEY"]
        defs += [f"{quote(c)} {_SQL_TYPES[kinds[c]]}".rstrip() for c in self.columns]
        return f"CREATE TABLE IF NOT EXISTS {quote(self.store.table)} ({', '.join(defs)})"

    async def clear(self) -> None:
        if self._exists:
            sql = f"DELETE FROM {quote(self.store.table)}"

            def run() -> None:
                with self._db.conn:
                    self._db.conn.execute(sql)

            await self._db.call(run)

    async def close(self) -> None:
        await self._db.close()
