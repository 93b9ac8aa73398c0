"""``katyusha batch`` with PostgreSQL as input, output and dead letter: a real server started
on loopback in a temporary directory (Debian's postgresql package; .ci/run installs it)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.batch_stack import (
    SCORES,
    Driver,
    Postgres,
    batch_file,
    free_port,
    pg_bindir,
    sentiment_service,
    tweets,
)
from tests.procs import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def postgres():
    bindir = pg_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed: apt-get install postgresql "
                    "(make test-deps does it)")
    server = Postgres(bindir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service():
    with sentiment_service(2) as proxy:
        yield proxy


def _table(pg: Postgres, name: str, rows: list[tuple]) -> None:
    pg.execute(f"DROP TABLE IF EXISTS {name}", f"DROP TABLE IF EXISTS {name}_out",
               f"DROP TABLE IF EXISTS {name}_out_dead_letter",
               f"CREATE TABLE {name} (id bigint PRIMARY KEY, text text)",
               f"INSERT INTO {name} VALUES ($1, $2)", rows=rows)


def test_postgres_to_postgres_killed_and_restarted_writes_every_row_once(postgres, service, tmp_path):
    rows = tweets(3000)
    _table(postgres, "tweets", rows)
    columns = {**SCORES, "raw": "response", "text": "record.text"}
    config = batch_file(tmp_path / "b.yaml", service.url,
                        {"postgres": {"dsn": postgres.dsn, "table": "tweets", "page-size": 250}},
                        {"postgres": {"dsn": postgres.dsn, "table": "tweets_out", "columns": columns}},
                        **{"max-in-flight": 4})
    first = Driver(config)
    wait_for(lambda: first.metric("batch_output_sent_total") >= 400, 60, "400 rows written")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    partial = postgres.execute(fetch="SELECT count(*) FROM tweets_out")[0][0]
    assert 400 <= partial < 3000
    second = Driver(config)
    assert second.wait() == 0, second.output
    got = postgres.execute(fetch="SELECT id, text, compound, raw->>'Compound' FROM tweets_out ORDER BY id")
    assert [r[0] for r in got] == [i for i, _ in rows]
    assert [r[1] for r in got] == [t for _, t in rows]
    assert all(float(r[3]) == r[2] for r in got)
    assert second.summary["skipped"] == partial
    # The table was created with the values' types: numbers as numbers, the document as jsonb.
    types = dict(postgres.execute(fetch="SELECT column_name, data_type FROM information_schema.columns "
                                        "WHERE table_name = 'tweets_out'"))
    assert types == {"id": "bigint", "compound": "double precision", "negative": "double precision",
                     "neutral": "double precision", "positive": "double precision", "raw": "jsonb",
                     "text": "text"}


def test_dead_letters_go_to_a_postgres_table(postgres, service, tmp_path):
    rows = [(i, None if i == 5 else t) for i, t in tweets(20)]
    _table(postgres, "few", rows)
    config = batch_file(tmp_path / "b.yaml", service.url,
                        {"postgres": {"dsn": postgres.dsn, "table": "few"}},
                        {"postgres": {"dsn": postgres.dsn, "table": "few_out", "columns": SCORES}})
    driver = Driver(config)
    assert driver.wait() == 3, driver.output
    assert postgres.execute(fetch="SELECT count(*) FROM few_out")[0][0] == 19
    dead = postgres.execute(fetch="SELECT id, status, attempts, reason FROM few_out_dead_letter")
    assert len(dead) == 1 and dead[0][:3] == (5, 400, 1) and "text: must be a string" in dead[0][3]


def test_an_unreachable_server_is_a_clear_error(tmp_path):
    dsn = f"postgresql://batch:secret@127.0.0.1:{free_port()}/postgres"
    config = batch_file(tmp_path / "b.yaml", "http://127.0.0.1:9",
                        {"postgres": {"dsn": dsn, "table": "tweets"}},
                        {"csv": {"path": str(tmp_path / "out.csv")}})
    driver = Driver(config)
    assert driver.wait() == 1
    assert "error: input.postgres.dsn: cannot connect to postgresql://batch:***@127.0.0.1" in driver.output
    assert "Traceback" not in driver.output and "secret" not in driver.output


def test_a_missing_table_names_the_field(postgres, tmp_path):
    config = batch_file(tmp_path / "b.yaml", "http://127.0.0.1:9",
                        {"postgres": {"dsn": postgres.dsn, "table": "no_such_table"}},
                        {"csv": {"path": str(tmp_path / "out.csv")}})
    driver = Driver(config)
    assert driver.wait() == 1
    assert "error: input.postgres.table: no table no_such_table" in driver.output


def test_output_server_lost_mid_run_is_a_clear_error_and_a_rerun_finishes(postgres, service, tmp_path):
    rows = tweets(3000)
    _table(postgres, "lost", rows)
    sink = Postgres(postgres.bindir)  # its own server, to stop under the driver
    try:
        config = batch_file(tmp_path / "b.yaml", service.url,
                            {"postgres": {"dsn": postgres.dsn, "table": "lost"}},
                            {"postgres": {"dsn": sink.dsn, "table": "lost_out", "columns": SCORES}},
                            **{"max-in-flight": 2})
        first = Driver(config)
        wait_for(lambda: first.metric("batch_output_sent_total") >= 200, 60, "200 rows written")
        sink.halt()
        assert first.wait(60) == 1
        assert "error: output.postgres.table: writing to lost_out" in first.output, first.output
        assert "Traceback" not in first.output
        sink.start()
        second = Driver(config)
        assert second.wait() == 0, second.output
        ids = [r[0] for r in sink.execute(fetch="SELECT id FROM lost_out ORDER BY id")]
        assert ids == [i for i, _ in rows]
    finally:
        sink.stop()
