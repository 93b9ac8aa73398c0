"""Open the store a batch file names: its source or sink by kind (SQLite, PostgreSQL, CSV).

Apart from :mod:`katyusha.batch.stores`, which the store modules import, so
that no import circle runs through the kinds.
"""

from __future__ import annotations

from collections.abc import Sequence

from katyusha.batch.config import Store
from katyusha.batch.stores import Sink, Source


def open_source(store: Store, id_column: str, columns: tuple[str, ...] | None, page_size: int) -> Source:
    if store.kind == "sqlite":
        from katyusha.batch.store_sqlite import SqliteSource

        return SqliteSource(store, id_column, columns, page_size)
    if store.kind == "postgres":
        from katyusha.batch.store_postgres import PostgresSource

        return PostgresSource(store, id_column, columns, page_size)
    from katyusha.batch.store_csv import CsvSource

    return CsvSource(store, id_column, columns, page_size)


def open_sink(store: Store, id_column: str, columns: Sequence[str]) -> Sink:
    """A sink of rows with ``id_column`` then ``columns``, created on first write when missing."""
    if store.kind == "sqlite":
        from katyusha.batch.store_sqlite import SqliteSink

        return SqliteSink(store, id_column, tuple(columns))
    if store.kind == "postgres":
        from katyusha.batch.store_postgres import PostgresSink

        return PostgresSink(store, id_column, tuple(columns))
    from katyusha.batch.store_csv import CsvSink

    return CsvSink(store, id_column, tuple(columns))
