"""``katyusha batch`` end to end: real sentiment pods behind nonna behind ``katyusha serve``,
the driver as a child process, SQLite and CSV inputs and outputs on disk."""

from __future__ import annotations

import os
import signal
import urllib.request

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tests.batch_stack import (
    SCORES,
    Driver,
    batch_file,
    csv_file,
    csv_rows,
    sentiment_service,
    sqlite_rows,
    sqlite_table,
    tweets,
)
from tests.procs import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def service():
    with sentiment_service(2) as proxy:
        yield proxy


def test_sqlite_to_sqlite_writes_every_row_once_with_its_scores(service, tmp_path):
    rows = tweets(400)
    sqlite_table(tmp_path / "in.db", rows)
    out = tmp_path / "out.db"
    config = batch_file(tmp_path / "b.yaml", service.url,
                        {"sqlite": {"path": str(tmp_path / "in.db"), "table": "tweets"}},
                        {"sqlite": {"path": str(out), "table": "sentiment", "columns": SCORES}},
                        **{"max-in-flight": 4})
    driver = Driver(config)
    assert driver.wait() == 0, driver.output
    got = sqlite_rows(out, "SELECT id, compound, negative, neutral, positive FROM sentiment")
    assert sorted(r[0] for r in got) == [i for i, _ in rows]
    vader = SentimentIntensityAnalyzer()
    text = dict(rows)
    for id_, compound, negative, neutral, positive in got[:50]:
        expected = vader.polarity_scores(text[id_])
        assert (compound, negative, neutral, positive) == (
            expected["compound"], expected["neg"], expected["neu"], expected["pos"])
    summary = driver.summary
    assert summary["written"] == 400 and summary["dead_letters"] == 0
    assert summary["statuses"] == {"200": 400}
    assert "400 written, 0 to the dead letter" in driver.output


def test_csv_to_csv_and_a_second_run_skips_finished_rows(service, tmp_path):
    rows = tweets(300)
    csv_file(tmp_path / "in.csv", rows)
    out = tmp_path / "out.csv"
    config = batch_file(tmp_path / "b.yaml", service.url, {"csv": {"path": str(tmp_path / "in.csv")}},
                        {"csv": {"path": str(out), "columns": {"compound": "response.Compound",
                                                               "text": "record.text"}}},
                        **{"max-in-flight": 3})
    first = Driver(config)
    assert first.wait() == 0, first.output
    written = csv_rows(out)
    assert sorted(int(r["id"]) for r in written) == [i for i, _ in rows]
    assert {r["text"] for r in written} == {t for _, t in rows}
    before = out.read_bytes()
    second = Driver(config)
    assert second.wait() == 0, second.output
    assert second.summary["skipped"] == 300 and second.summary["requests"] == 0
    assert out.read_bytes() == before


@pytest.mark.parametrize("kind", ["sqlite", "csv"])
def test_driver_killed_mid_run_and_restarted_loses_and_duplicates_nothing(service, tmp_path, kind):
    rows = tweets(3000)
    if kind == "sqlite":
        sqlite_table(tmp_path / "in.db", rows)
        inp = {"sqlite": {"path": str(tmp_path / "in.db"), "table": "tweets", "page-size": 200}}
        out = {"sqlite": {"path": str(tmp_path / "out.db"), "table": "sentiment", "columns": SCORES}}
    else:
        csv_file(tmp_path / "in.csv", rows)
        inp = {"csv": {"path": str(tmp_path / "in.csv"), "page-size": 200}}
        out = {"csv": {"path": str(tmp_path / "out.csv"), "columns": SCORES}}

    def ids_written() -> list[int]:
        if kind == "sqlite":
            if not (tmp_path / "out.db").exists():
                return []
            return [r[0] for r in sqlite_rows(tmp_path / "out.db", "SELECT id FROM sentiment")]
        return [int(r["id"]) for r in csv_rows(tmp_path / "out.csv")]

    config = batch_file(tmp_path / "b.yaml", service.url, inp, out, **{"max-in-flight": 4})
    first = Driver(config)
    wait_for(lambda: first.metric("batch_output_sent_total") >= 400, 60, "400 rows written")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    partial = ids_written()
    assert 400 <= len(partial) < 3000 and len(set(partial)) == len(partial)
    second = Driver(config)
    assert second.wait() == 0, second.output
    final = ids_written()
    assert sorted(final) == [i for i, _ in rows]  # every id, exactly once
    assert second.summary["skipped"] == len(partial)
    assert second.summary["written"] == 3000 - len(partial)


def test_metrics_on_the_admin_port(service, tmp_path):
    sqlite_table(tmp_path / "in.db", tweets(2000))
    config = batch_file(tmp_path / "b.yaml", service.url,
                        {"sqlite": {"path": str(tmp_path / "in.db"), "table": "tweets"}},
                        {"sqlite": {"path": str(tmp_path / "out.db"), "table": "s", "columns": SCORES,
                                    "batch": {"count": 40, "period": "500ms"}}})
    driver = Driver(config)
    try:
        wait_for(lambda: driver.metric("batch_output_sent_total") >= 80, 60, "two batches written")
        with urllib.request.urlopen(driver.metrics_url, timeout=5) as response:
            text = response.read().decode()
        for name in ("batch_input_received_total", "batch_output_sent_total",
                     "batch_output_batch_sent_total", "batch_request_duration_seconds_bucket",
                     "batch_retries_total", "batch_dead_letters_total", "batch_window"):
            assert f"# TYPE {name.removesuffix('_bucket').removesuffix('_total')}" in text, name
        # One scrape: the counters at one moment (two scrapes let a batch land between them).
        received, sent, batches = driver.metrics("batch_input_received_total", "batch_output_sent_total",
                                                 "batch_output_batch_sent_total")
        assert received >= sent
        # Batches of 40 rows (the period only closes the last, partial one).
        assert batches * 40 >= sent
    finally:
        driver.popen.send_signal(signal.SIGTERM)
        status = driver.wait()
    assert status == 128 + signal.SIGTERM
    assert "stopped early (interrupted)" in driver.output and "run the same command again" in driver.output
    done = sqlite_rows(tmp_path / "out.db", "SELECT count(*) FROM s")[0][0]
    assert done == driver.summary["written"] > 0


def test_a_record_the_service_refuses_goes_to_the_dead_letter_at_once(service, tmp_path):
    rows = tweets(60)
    broken = {7, 30}
    sqlite_table(tmp_path / "in.db", [(i, None if i in broken else t) for i, t in rows])
    config = batch_file(tmp_path / "b.yaml", service.url,
                        {"sqlite": {"path": str(tmp_path / "in.db"), "table": "tweets"}},
                        {"sqlite": {"path": str(tmp_path / "out.db"), "table": "s", "columns": SCORES}})
    driver = Driver(config)
    assert driver.wait() == 3, driver.output  # done, with dead letters
    ok = sqlite_rows(tmp_path / "out.db", "SELECT id FROM s")
    assert sorted(r[0] for r in ok) == sorted(set(dict(rows)) - broken)
    dead = sqlite_rows(tmp_path / "out.db",
                       "SELECT id, status, attempts, reason, record FROM s_dead_letter ORDER BY id")
    assert [(d[0], d[1], d[2]) for d in dead] == [(7, 400, 1), (30, 400, 1)]
    assert all("text: must be a string, got null" in d[3] for d in dead)
    assert '"text": null' in dead[0][4]
    # A second run leaves them alone; --retry-dead-letters tries them again.
    again = Driver(config)
    assert again.wait() == 0 and again.summary["requests"] == 0
    retried = Driver(config, "--retry-dead-letters")
    assert retried.wait() == 3
    assert retried.summary["requests"] == 2 and retried.summary["dead_letters"] == 2


def test_a_pod_that_is_not_warm_yet_answers_503_and_no_row_fails(tmp_path):
    from tests.batch_stack import SENTIMENT
    from tests.katyusha_fleet import katyusha, start_pods

    pod = start_pods([1.0], extra=(*SENTIMENT, "--state", "warmdisk"))[0]
    try:
        # katyusha is told the pod is there; the pod answers 503 until it is warm.
        with katyusha("--pod", pod.spec) as proxy:
            sqlite_table(tmp_path / "in.db", tweets(40))
            config = batch_file(tmp_path / "b.yaml", proxy.url,
                                {"sqlite": {"path": str(tmp_path / "in.db"), "table": "tweets"}},
                                {"csv": {"path": str(tmp_path / "out.csv"), "columns": SCORES}},
                                retry={"backoff": "100ms", "max-backoff": "1s", "max-retries": 20},
                                **{"max-in-flight": 4})
            driver = Driver(config)
            wait_for(lambda: driver.metric("batch_retries_total") > 0, 30, "a retry")
            request = urllib.request.Request(pod.backend.admin + "/state", method="PUT",
                                             data=b'{"state": "warm"}')
            urllib.request.urlopen(request, timeout=10).read()
            assert driver.wait() == 0, driver.output
            assert sorted(int(r["id"]) for r in csv_rows(tmp_path / "out.csv")) == list(range(1, 41))
            assert driver.summary["statuses"]["503"] > 0 and driver.summary["retries"] > 0
    finally:
        pod.stop()


def test_backpressure_a_full_l1_queue_slows_the_driver_and_no_row_fails(tmp_path):
    # One request in katyusha at a time and no room to wait: the rest get 503 "L1 queue full".
    with sentiment_service(1, "--katyusha-junbanmachi-concurrent-request", "1",
                           "--queue-length", "1") as proxy:
        sqlite_table(tmp_path / "in.db", tweets(300))
        config = batch_file(tmp_path / "b.yaml", proxy.url,
                            {"sqlite": {"path": str(tmp_path / "in.db"), "table": "tweets"}},
                            {"sqlite": {"path": str(tmp_path / "out.db"), "table": "s", "columns": SCORES}},
                            **{"max-in-flight": 8})
        driver = Driver(config)
        assert driver.wait() == 0, driver.output
    summary = driver.summary
    assert summary["written"] == 300 and summary["dead_letters"] == 0
    assert summary["statuses"].get("503", 0) > 0  # the queue did push back
    assert summary["window"]["smallest"] <= 2  # and the driver slowed down
    # Without the window, 8 in flight against room for 2 would be refused most of the time.
    assert summary["statuses"]["503"] < 0.5 * summary["requests"], summary
    assert sorted(r[0] for r in sqlite_rows(tmp_path / "out.db", "SELECT id FROM s")) == list(range(1, 301))


def test_csv_output_cut_in_the_middle_of_a_row_is_repaired(service, tmp_path):
    csv_file(tmp_path / "in.csv", tweets(100))
    out = tmp_path / "out.csv"
    config = batch_file(tmp_path / "b.yaml", service.url, {"csv": {"path": str(tmp_path / "in.csv")}},
                        {"csv": {"path": str(out), "columns": SCORES}})
    assert Driver(config).wait() == 0
    data = out.read_bytes()
    out.write_bytes(data[:-7])  # as if the driver died inside its last write
    torn_id = int(data.rstrip(b"\n").rsplit(b"\n", 1)[1].split(b",")[0])
    repair = Driver(config)
    assert repair.wait() == 0, repair.output
    assert repair.summary["requests"] == 1 and repair.summary["written"] == 1
    ids = [int(r["id"]) for r in csv_rows(out)]
    assert sorted(ids) == list(range(1, 101)) and ids[-1] == torn_id
    assert os.path.getsize(out) == len(data)


def test_retries_then_dead_letter_against_a_pod_answering_503_then_500(tmp_path):
    """As Benthos's http processor: 503 is tried again with backoff, 500 goes to the dead letter
    at once, and a 503 that never ends goes there after max-retries, with its status and reason."""
    from tests.batch_stack import ScriptedPod
    from tests.katyusha_fleet import katyusha

    def answer(text: str, attempt: int):
        kind = text.split()[0]
        if kind == "flaky" and attempt <= 2:
            return 503, {"error": "warming up"}
        if kind == "broken":
            return 500, {"error": "model crashed"}
        if kind == "down":
            return 503, {"error": "still down"}
        return 200, {"Compound": 0.5, "Negative": 0.0, "Neutral": 0.5, "Positive": 0.5}

    kinds = {i: ("flaky", "broken", "down", "fine")[i % 4] for i in range(1, 41)}
    pod = ScriptedPod(answer)
    try:
        with katyusha("--pod", f"{pod.url},name=scripted") as proxy:
            sqlite_table(tmp_path / "in.db", [(i, f"{kind} {i}") for i, kind in kinds.items()])
            config = batch_file(
                tmp_path / "b.yaml", proxy.url,
                {"sqlite": {"path": str(tmp_path / "in.db"), "table": "tweets"}},
                {"sqlite": {"path": str(tmp_path / "out.db"), "table": "s",
                            "columns": {"compound": "response.Compound", "attempts": "attempts"}}},
                retry={"max-retries": 3, "backoff": "10ms", "max-backoff": "50ms"},
                **{"max-in-flight": 4})
            driver = Driver(config)
            assert driver.wait() == 3, driver.output
    finally:
        pod.stop()
    ok = dict(sqlite_rows(tmp_path / "out.db", "SELECT id, attempts FROM s"))
    assert ok == {i: (3 if kind == "flaky" else 1) for i, kind in kinds.items()
                  if kind in ("flaky", "fine")}
    dead = {r[0]: r[1:] for r in sqlite_rows(
        tmp_path / "out.db", "SELECT id, status, attempts, reason FROM s_dead_letter")}
    assert set(dead) == {i for i, kind in kinds.items() if kind in ("broken", "down")}
    for i, (status, attempts, reason) in dead.items():
        if kinds[i] == "broken":
            assert (status, attempts) == (500, 1) and reason == 'HTTP 500: {"error": "model crashed"}'
            assert pod.attempts[f"broken {i}"] == 1
        else:
            assert (status, attempts) == (503, 4) and reason.startswith("gave up after 4 attempts: HTTP 503")
            assert pod.attempts[f"down {i}"] == 4
    summary = driver.summary
    assert summary["retries"] == 10 * 2 + 10 * 3 and summary["dead_letters"] == 20


def test_several_records_per_request(service, tmp_path):
    rows = tweets(203)
    csv_file(tmp_path / "in.csv", rows)
    config = batch_file(tmp_path / "b.yaml", service.url, {"csv": {"path": str(tmp_path / "in.csv")}},
                        {"sqlite": {"path": str(tmp_path / "out.db"), "table": "s",
                                    "columns": {"compound": "response.Compound", "text": "record.text"}}},
                        request={"records-per-request": 10}, **{"max-in-flight": 2})
    driver = Driver(config)
    assert driver.wait() == 0, driver.output
    assert driver.summary["requests"] == 21  # 20 of 10 records and one of 3
    got = sqlite_rows(tmp_path / "out.db", "SELECT id, text, compound FROM s ORDER BY CAST(id AS INTEGER)")
    assert [(int(i), t) for i, t, _ in got] == rows
    vader = SentimentIntensityAnalyzer()
    assert all(c == vader.polarity_scores(t)["compound"] for _, t, c in got)


def test_csv_output_never_holds_an_id_twice_even_when_the_input_repeats_it(service, tmp_path):
    rows = tweets(30)
    csv_file(tmp_path / "in.csv", [*rows, rows[4], rows[17]])  # ids 5 and 18 twice
    config = batch_file(tmp_path / "b.yaml", service.url, {"csv": {"path": str(tmp_path / "in.csv")}},
                        {"csv": {"path": str(tmp_path / "out.csv"), "columns": SCORES}})
    assert Driver(config).wait() == 0
    assert sorted(int(r["id"]) for r in csv_rows(tmp_path / "out.csv")) == list(range(1, 31))
