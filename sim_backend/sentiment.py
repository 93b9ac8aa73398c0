"""The sentiment app: VADER sentiment analysis, answered as the seed's Knative service did.

``POST /post`` with ``{"text": "..."}`` answers
``{"Compound": c, "Negative": n, "Neutral": u, "Positive": p}``. A JSON array
of such objects answers an array of results in the same order, so a batch
driver may send several records in one request. Bad input gets 400 naming
what was wrong (``[2].text: must be a string, got null``); another path 404,
another method 405.

It runs inside the emulated pod (``sim-backend --app sentiment``): the data
app admits the request first, so a pod that is not warm still answers 503 and
the lifecycle (states, cold starts, the admin API) is unchanged. The work is
real: the request takes the CPU time VADER needs, and the service-time
distribution and speed settings are not used.

vaderSentiment ships its lexicons inside the package, so nothing is fetched
at run time (tests/test_sentiment.py checks this with sockets disabled).
"""

from __future__ import annotations

import json
import time

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from katyusha.core.errors import BadInput
from katyusha.proxy.asgi import read_body, respond_json

PATH = "/post"
MAX_BODY = 1 << 20  # a batch of a few thousand tweets; more is a client mistake
MAX_ITEMS = 1000


class BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: list | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or []


def scores(analyzer: SentimentIntensityAnalyzer, text: str) -> dict:
    """VADER's four scores under the seed app's key names."""
    raw = analyzer.polarity_scores(text)
    return {
        "Compound": raw["compound"],
        "Negative": raw["neg"],
        "Neutral": raw["neu"],
        "Positive": raw["pos"],
    }


def _text_of(item: object, where: str) -> str:
    if not isinstance(item, dict):
        raise BadRequest(400, f"{where or 'body'}: must be an object with a \"text\" field, "
                              f"got {_kind(item)}")
    if "text" not in item:
        raise BadRequest(400, f"{where}text: missing (send {{\"text\": \"...\"}})")
    text = item["text"]
    if not isinstance(text, str):
        raise BadRequest(400, f"{where}text: must be a string, got {_kind(text)}")
    return text


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def analyse(analyzer: SentimentIntensityAnalyzer, body: bytes) -> object:
    """The response document for a request body; raises BadRequest (400) naming the bad part."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, f"body: not JSON ({exc})") from None
    if isinstance(document, list):
        if not document:
            raise BadRequest(400, "body: an empty array has nothing to analyse")
        if len(document) > MAX_ITEMS:
            raise BadRequest(400, f"body: at most {MAX_ITEMS} items, got {len(document)}")
        texts = [_text_of(item, f"[{i}].") for i, item in enumerate(document)]
        return [scores(analyzer, text) for text in texts]
    return scores(analyzer, _text_of(document, ""))


class SentimentApp:
    """Serves an admitted request of the pod; always releases the pod's request slot."""

    def __init__(self) -> None:
        self.analyzer = SentimentIntensityAnalyzer()

    async def serve(self, pod, record: dict, scope, receive, send) -> None:
        start = pod.now()
        record["service_start"] = time.time()
        try:
            try:
                body = await read_body(receive, MAX_BODY)
            except BadInput as exc:
                raise BadRequest(413, f"body: {exc}") from None
            record["bytes_in"] = len(body)
            pod.counters.bytes_in += len(body)
            if scope["path"] != PATH:
                raise BadRequest(404, f"no route {scope['path']}; the app answers POST {PATH}")
            if scope["method"] != "POST":
                raise BadRequest(405, f"{scope['method']} {PATH}: only POST",
                                 [(b"allow", b"POST")])
            status, document, extra = 200, analyse(self.analyzer, body), []
        except BadRequest as exc:
            status, document, extra = exc.status, {"error": str(exc), "status": exc.status}, exc.headers
        finally:
            pod.machine.request_finished()
        elapsed = pod.now() - start
        record.update(service_end=time.time(), service_ms=elapsed * 1e3, status=status)
        if status == 200:
            pod.counters.served += 1
            pod.counters.service_s += elapsed
        await respond_json(send, status, document, extra)
