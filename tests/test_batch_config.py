"""The batch file: every mistake is refused before anything runs, naming the field's path;
and the pieces that decide without I/O (body templates, the window, retries)."""

from __future__ import annotations

import datetime
import decimal
import random
import sqlite3
import textwrap

import pytest

from katyusha.batch.cli import main
from katyusha.batch.config import RetryConfig
from katyusha.batch.retry import Verdict, backoff, classify
from katyusha.batch.template import Body, Column
from katyusha.batch.window import Window
from katyusha.core.errors import ConfigError

GOOD = """\
input:
  sqlite: {path: IN, table: tweets}
request:
  url: http://127.0.0.1:9/post
  body: {text: "{text}"}
output:
  sqlite: {path: OUT, table: sentiment, columns: {compound: response.Compound}}
"""


@pytest.fixture
def files(tmp_path):
    with sqlite3.connect(tmp_path / "in.db") as conn:
        conn.execute("CREATE TABLE tweets (id INTEGER PRIMARY KEY, text TEXT)")

    def write(text: str, *replace: tuple[str, str]) -> str:
        for old, new in replace:
            assert old in text, old
            text = text.replace(old, new)
        text = text.replace("IN", str(tmp_path / "in.db")).replace("OUT", str(tmp_path / "out.db"))
        path = tmp_path / "b.yaml"
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def run(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().err


BAD = [
    ("request:", "requests:", "requests: unknown field (known: input, request, output"),
    ("input:\n  sqlite: {path: IN, table: tweets}\n", "", "input: missing (required)"),
    ("sqlite: {path: IN, table: tweets}", "mysql: {path: IN}",
     "input: must hold exactly one of sqlite, postgres, csv, got ['mysql']"),
    ("{path: IN, table: tweets}", "{path: IN}", "input.sqlite.table: missing (required)"),
    ("table: tweets}", "table: 'tweets; DROP TABLE x'}", "input.sqlite.table: must be NAME or SCHEMA.NAME"),
    ("table: tweets}", "table: tweets, page_size: 0}", "input.sqlite.page_size: must be a whole number"),
    ("http://127.0.0.1:9/post", "ftp://127.0.0.1/post", "request.url: must be an http:// or https:// URL"),
    ("body: {text: \"{text}\"}", "method: TRACE", "request.method: must be one of POST, PUT, PATCH"),
    ("body: {text: \"{text}\"}", "body: {text: \"{text\"}",
     "request.body.text: unmatched '{' in '{text' (write {{ for a literal one)"),
    ("body: {text: \"{text}\"}", "body: {a: [1, \"{}\"]}", "request.body.a[1]: empty placeholder"),
    ("body: {text: \"{text}\"}", "body: {text: \"{text}\"}\n  fields: [text]",
     "request.fields: give either request.body or request.fields, not both"),
    ("body: {text: \"{text}\"}", "body: {text: \"{txt}\"}",
     "request.body.text: no field 'txt' in the input (it has: id, text)"),
    ("body: {text: \"{text}\"}", "fields: [text, lang]",
     "request.fields[1]: no field 'lang' in the input"),
    ("body: {text: \"{text}\"}", "timeout: soon", "request.timeout: must be a positive duration"),
    ("output:", "max-in-flight: 0\noutput:", "max-in-flight: must be a whole number from 1 to 10000, got 0"),
    ("output:", "retry: {retry-on: [503, 200]}\noutput:",
     "retry.retry-on[1]: must be a whole number from 400 to 599, got 200"),
    ("output:", "retry: {backoff: 2s, max-backoff: 1s}\noutput:",
     "retry.max-backoff: must be at least retry.backoff (2s)"),
    ("output:", "retry: {tries: 3}\noutput:", "retry.tries: unknown field (known: max-retries"),
    ("compound: response.Compound", "compound: body.Compound",
     "output.sqlite.columns.compound: must be one of response, response.PATH, record.FIELD"),
    ("compound: response.Compound", "id: response.Compound", "output.sqlite.columns.id: 'id' is the id column"),
    ("compound: response.Compound", "t: record.tex",
     "output.sqlite.columns.t: no field 'tex' in the input"),
    ("columns: {compound: response.Compound}", "batch: {count: 40, period: soon}",
     "output.sqlite.batch.period: must be a positive duration"),
    ("output:", "dead-letter:\n  sqlite: {path: OUT, table: sentiment}\noutput:",
     "dead-letter: must not be the output table itself"),
    ("output:", "progress: maybe\noutput:", "progress: must be auto, on or off, got 'maybe'"),
    ("output:", "metrics: {port: 70000}\noutput:", "metrics.port: must be a whole number from 0 to 65535"),
    ("table: tweets}", "table: tweets, columns: [text, lang]}",
     "input.sqlite.columns[1]: no column 'lang' (columns: id, text)"),
    ("table: tweets}", "table: tweets, id: key}", "input.sqlite.id: no column 'key'"),
]


@pytest.mark.parametrize("old, new, message", BAD, ids=[b[2].split(":")[0] for b in BAD])
def test_a_bad_batch_file_exits_2_naming_the_field(files, capsys, old, new, message):
    status, err = run(capsys, files(GOOD, (old, new)))
    assert status == 2, err
    assert f"katyusha batch: error: {message}" in err
    assert "Traceback" not in err


def test_a_bad_flag_names_the_flag(files, capsys):
    status, err = run(capsys, files(GOOD), "--max-in-flight", "six")
    assert status == 2 and "error: --max-in-flight: must be a whole number" in err


def test_a_file_that_is_not_yaml_names_the_file(tmp_path, capsys):
    path = tmp_path / "b.yaml"
    path.write_text("input: [unclosed\n")
    status, err = run(capsys, str(path))
    assert status == 2 and f"{path} is not valid YAML" in err


@pytest.mark.parametrize("old, new, message", [
    ("sqlite: {path: IN, table: tweets}", "sqlite: {path: /nowhere/in.db, table: tweets}",
     "input.sqlite.path: no SQLite file at /nowhere/in.db"),
    ("table: tweets}", "table: tweet}", "input.sqlite.table: no table tweet in"),
    ("sqlite: {path: IN, table: tweets}", "csv: {path: /nowhere/in.csv}",
     "input.csv.path: cannot read /nowhere/in.csv: No such file or directory"),
    ("sqlite: {path: OUT, table: sentiment", "sqlite: {path: /nowhere/out.db, table: sentiment",
     "output.sqlite.path: cannot open /nowhere/out.db as SQLite: unable to open database file"),
])
def test_a_store_that_cannot_be_opened_exits_1_naming_the_field(files, capsys, old, new, message):
    status, err = run(capsys, files(GOOD, (old, new)))
    assert status == 1 and f"katyusha batch: error: {message}" in err, err
    assert "Traceback" not in err


# -- body templates and output columns ------------------------------------------------------


def test_a_lone_placeholder_keeps_the_type_and_text_is_formatted():
    body = Body({"text": "{text}", "score": "{score}", "note": "#{id}: {text} {{x}}",
                 "tags": ["{lang}", 3, None, True], "nested": {"when": "{at}"}}, "request.body")
    record = {"id": 7, "text": "hi", "score": decimal.Decimal("0.5"), "lang": None,
              "at": datetime.date(2024, 5, 1)}
    assert body.render(record) == {"text": "hi", "score": 0.5, "note": "#7: hi {x}",
                                   "tags": [None, 3, None, True], "nested": {"when": "2024-05-01"}}
    assert set(body.fields) == {"text", "score", "id", "lang", "at"}
    assert body.fields["at"] == "request.body.nested.when"


def test_a_field_list_sends_those_fields():
    body = Body.of_fields(["text", "odd{name}"], "request.fields")
    assert body.render({"id": 1, "text": "t", "odd{name}": 2}) == {"text": "t", "odd{name}": 2}


def test_columns_read_the_response_the_record_and_the_attempt():
    meta = {"status": 200, "attempts": 2, "latency_ms": 3.5}
    response = {"Compound": 0.4, "parts": [{"x": 1}]}
    record = {"id": 1, "text": "t"}
    assert Column.parse("response.Compound", "c").value(record, response, meta) == 0.4
    assert Column.parse("response.parts.0.x", "c").value(record, response, meta) == 1
    assert Column.parse("response", "c").value(record, response, meta) == response
    assert Column.parse("record.text", "c").value(record, response, meta) == "t"
    assert Column.parse("attempts", "c").value(record, response, meta) == 2
    with pytest.raises(LookupError, match="the response has no response.Missing"):
        Column.parse("response.Missing", "c").value(record, response, meta)
    with pytest.raises(ConfigError, match="c: empty step"):
        Column.parse("response..x", "c")


# -- the window and retries ------------------------------------------------------------------


def test_window_halves_once_per_round_trip_and_grows_back():
    window = Window(8)
    epochs = [window.sent() for _ in range(8)]
    assert not window.can_send()
    for epoch in epochs[:5]:  # five 503s from one burst: one cut
        window.overloaded(epoch)
    assert window.size == 4 and window.cuts == 1
    assert window.in_flight == 3 and window.can_send()
    later = window.sent()
    window.overloaded(later)  # sent after the cut: cuts again
    assert window.size == 2 and window.cuts == 2
    for _ in range(100):
        window.succeeded(window.sent())
    assert window.size == 8 and window.smallest == 2
    for _ in range(10):
        window.overloaded(window.sent())
    assert window.size == 1 and window.limit == 1


def test_classify_follows_benthos_and_the_documented_lists():
    retry_on = RetryConfig().retry_on
    assert classify(200, retry_on) is classify(204, retry_on) is Verdict.OK
    for status in (429, 503, 504, None):
        assert classify(status, retry_on) is Verdict.OVERLOADED
    assert classify(502, retry_on) is Verdict.RETRY
    for status in (400, 404, 409, 413, 500, 501):
        assert classify(status, retry_on) is Verdict.DEAD
    assert classify(503, frozenset({500})) is Verdict.DEAD
    assert classify(500, frozenset({500})) is Verdict.RETRY


def test_backoff_doubles_with_jitter_up_to_the_limit_and_honours_retry_after():
    config = RetryConfig(backoff=0.1, max_backoff=1.0)
    rng = random.Random(1)
    for retry, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (12, 1.0)]:
        delays = [backoff(config, retry, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
    assert backoff(config, 1, rng, retry_after=0.7) == 0.7
    assert backoff(config, 1, rng, retry_after=30) == 1.0
