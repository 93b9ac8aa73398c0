"""CSV files as input (read in pages, first line the header) and as output (appended batches).

A CSV file cannot be updated in place, so the output is made idempotent the
other way round: on start the sink reads the ids it already holds (a set of
ids in memory, not the rows) and the pipeline skips them, so no id is written
twice. A driver killed in the middle of a write can leave a torn last line;
on start the sink cuts the file back to its last complete row, and that
row's record is simply processed again.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from katyusha.batch.config import Store
from katyusha.batch.stores import (
    KeyedSink,
    PagedSource,
    Record,
    StoreError,
    flat,
    matching,
    select_fields,
)


class CsvSource(PagedSource):
    def __init__(self, store: Store, id_column: str, columns: tuple[str, ...] | None, page_size: int):
        assert store.path is not None
        super().__init__(store, id_column, columns, page_size)
        self._header: list[str] = []

    async def open(self) -> None:
        """Raises StoreError when the file is missing or its header lacks a wanted column."""
        path = self.store.path
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                self._header = next(csv.reader(handle), [])
        except OSError as exc:
            raise StoreError(f"{self.store.where}.path", f"cannot read {path}: {exc.strerror}") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.store.where}.path", f"{path} is not UTF-8 CSV: {exc}") from None
        if not self._header:
            raise StoreError(f"{self.store.where}.path", f"{path} is empty (its first line must be the header)")
        self.fields = select_fields(self._header, self.id_column, self.wanted, self.store.where)

    async def count(self) -> int:
        def run() -> int:
            with open(self.store.path, newline="", encoding="utf-8") as handle:
                return max(sum(1 for _ in csv.reader(handle)) - 1, 0)

        return await asyncio.to_thread(run)

    async def pages(self) -> AsyncIterator[list[Record]]:
        index = {name: i for i, name in enumerate(self._header)}
        picks = [(name, index[name]) for name in self.fields]
        handle = open(self.store.path, newline="", encoding="utf-8")  # noqa: SIM115 - closed below
        try:
            reader = csv.reader(handle)
            next(reader, None)
            while True:
                try:
                    rows = await asyncio.to_thread(lambda: list(itertools.islice(reader, self.page_size)))
                except (csv.Error, UnicodeDecodeError) as exc:
                    raise StoreError(f"{self.store.where}.path",
                                     f"{self.store.path} line {reader.line_num}: {exc}") from None
                if not rows:
                    return
                page = []
                for row in rows:
                    record = {name: row[i] if i < len(row) else None for name, i in picks}
                    if not record[self.id_column]:
                        raise StoreError(f"{self.store.where}.path", f"{self.store.path} line "
                                         f"{reader.line_num}: no value in id column {self.id_column!r}")
                    page.append(record)
                yield page
        finally:
            handle.close()

    async def close(self) -> None:
        pass


class CsvSink(KeyedSink):
    def __init__(self, store: Store, id_column: str, columns: tuple[str, ...]):
        assert store.path is not None
        super().__init__(store, id_column, columns)
        self.header = [id_column, *columns]
        self.done: set[str] = set()  # the ids in the file, as text
        self._fd: int | None = None
        self.repaired_bytes = 0  # how much of a torn last row was cut off on open

    async def open(self) -> None:
        """Read the ids already written, cut off a torn last row; raises StoreError on a wrong header."""
        path = self.store.path
        try:
            header, ids, good_end, size = await asyncio.to_thread(_scan, path)
            if header is not None and header != self.header:
                raise StoreError(f"{self.store.where}.path",
                                 f"{path} has the header {','.join(header)}; this config writes "
                                 f"{','.join(self.header)} (use another file, or move this one away)")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if good_end < size:
                os.truncate(path, good_end)
                self.repaired_bytes = size - good_end
            if header is None:
                _write_all(self._fd, _encode([self.header]))
        except OSError as exc:
            raise StoreError(f"{self.store.where}.path", f"cannot write {path}: {exc.strerror}") from None
        self.done = ids

    async def finished(self, ids: Sequence[Any]) -> set[Any]:
        return matching(ids, self.done)

    async def write(self, rows: Sequence[Record]) -> None:
        fresh: dict[str, Record] = {}
        for row in rows:  # an id the file holds, or one repeated in the input, is not appended again
            key = str(row[self.id_column])
            if key not in self.done:
                fresh.setdefault(key, row)
        if not fresh:
            return
        data = _encode([[_cell(row.get(name)) for name in self.header] for row in fresh.values()])
        try:
            await asyncio.to_thread(_write_all, self._fd, data)
        except OSError as exc:
            raise StoreError(f"{self.store.where}.path", f"writing {self.store.path}: {exc.strerror}") from None
        self.done.update(fresh)

    async def clear(self) -> None:
        os.truncate(self.store.path, 0)
        _write_all(self._fd, _encode([self.header]))
        self.done.clear()

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _cell(value: Any) -> Any:
    value = flat(value)
    return "" if value is None else value


def _encode(rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _write_all(fd: int, data: bytes) -> None:
    # One batch is one write(2) in practice; the loop only covers a short write.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _scan(path: str) -> tuple[list[str] | None, set[str], int, int]:
    """(header or None, ids of complete rows, offset after the last complete row, file size)."""
    if not Path(path).exists():
        return None, set(), 0, 0
    size = Path(path).stat().st_size
    consumed = 0
    ended = True

    def lines(handle) -> Iterator[str]:
        nonlocal consumed, ended
        for raw in handle:
            consumed += len(raw)
            ended = raw.endswith(b"\n")
            yield raw.decode("utf-8", errors="replace")

    header: list[str] | None = None
    ids: set[str] = set()
    good_end = 0
    with open(path, "rb") as handle:
        reader = csv.reader(lines(handle), strict=True)
        try:
            for row in reader:
                if not ended:
                    break  # the file stops inside this row: a torn write
                if header is None:
                    header = row
                elif row:
                    ids.add(row[0])
                good_end = consumed
        except csv.Error:
            pass  # an unterminated quote at the end: a torn write
    return header, ids, good_end, size
