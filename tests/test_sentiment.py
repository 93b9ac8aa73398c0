"""The sentiment app: VADER scores under the seed's names, as a pod behind nonna and katyusha."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.katyusha_fleet import katyusha, start_pods
from tests.procs import Proc, get_json, script, wait_for


def post(url: str, body: bytes, method: str = "POST") -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_vader_runs_without_the_network():
    # Sockets fail in this child: a lexicon download at run time would raise.
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network disabled in this test')\n"
        "socket.socket.connect = refuse\nsocket.getaddrinfo = refuse\nsocket.create_connection = refuse\n"
        "from sim_backend.sentiment import SentimentApp, analyse\n"
        "import json\n"
        "print(json.dumps(analyse(SentimentApp().analyzer, b'{\"text\": \"What a wonderful, happy day!\"}')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert set(scores) == {"Compound", "Negative", "Neutral", "Positive"}
    assert scores["Compound"] > 0.5 and scores["Negative"] == 0.0


@pytest.fixture(scope="module")
def sentiment_pod():
    pods = start_pods([1.0], extra=("--app", "sentiment", "--image-size-mb", "0", "--start-s", "0.3"))
    yield pods[0]
    pods[0].stop()


def test_pod_answers_the_seed_apps_document(sentiment_pod):
    with katyusha("--pod", sentiment_pod.spec) as proxy:
        status, good = post(proxy.url + "/post", b'{"text": "I love this airline, great crew"}')
        assert status == 200 and set(good) == {"Compound", "Negative", "Neutral", "Positive"}
        assert good["Compound"] > 0.5
        status, bad = post(proxy.url + "/post", b'{"text": "the worst, rude and late flight"}')
        assert status == 200 and bad["Compound"] < -0.5
        # Several records in one request: one result each, in order.
        status, many = post(proxy.url + "/post", b'[{"text": "great"}, {"text": "awful"}]')
        assert status == 200 and [m["Compound"] > 0 for m in many] == [True, False]


@pytest.mark.parametrize("body, message", [
    (b"not json", "body: not JSON"),
    (b'{"txt": "hi"}', "text: missing"),
    (b'{"text": 5}', "text: must be a string, got a number"),
    (b'{"text": null}', "text: must be a string, got null"),
    (b'[{"text": "ok"}, {"text": []}]', "[1].text: must be a string, got an array"),
    (b"[]", "empty array"),
    (b'"hello"', "must be an object"),
])
def test_bad_input_gets_400_naming_the_problem(sentiment_pod, body, message):
    status, answer = post(sentiment_pod.nonna.url + "/post", body)
    assert status == 400 and message in answer["error"], answer
    # The pod is not stuck afterwards: its slot was given back.
    assert post(sentiment_pod.nonna.url + "/post", b'{"text": "fine"}')[0] == 200
    assert get_json(sentiment_pod.backend.admin + "/state")["in_flight"] == 0


def test_other_paths_and_methods(sentiment_pod):
    assert post(sentiment_pod.backend.url + "/other", b"{}")[0] == 404
    status, answer = post(sentiment_pod.backend.url + "/post", None, method="GET")
    assert status == 405 and "only POST" in answer["error"]


def test_lifecycle_is_emulated_around_the_app(sentiment_pod):
    admin = sentiment_pod.backend.admin
    request = urllib.request.Request(admin + "/state", method="PUT", data=b'{"state": "warmdisk"}',
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()
    status, answer = post(sentiment_pod.backend.url + "/post", b'{"text": "hello"}')
    assert status == 503 and answer["state"] == "warmdisk"
    request = urllib.request.Request(admin + "/state", method="PUT", data=b'{"state": "warm"}',
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()
    wait_for(lambda: get_json(admin + "/state")["state"] == "warm", 10, "the pod to be warm again")
    assert post(sentiment_pod.backend.url + "/post", b'{"text": "hello"}')[0] == 200
    counters = get_json(admin + "/state")["counters"]
    assert counters["served"] >= 1 and counters["rejected"] >= 1


def test_unknown_app_is_a_config_error():
    proc = Proc([script("sim-backend"), "--port", "0", "--admin-port", "0", "--app", "vader"],
                ready_timeout=0)
    assert proc.popen.wait(30) == 2
    assert "--app: unknown app 'vader' (one of emulated, sentiment)" in proc.output
