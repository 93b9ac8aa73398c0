"""The batch file (``katyusha batch CONFIG.yaml``): read, check, and turn into settings.

Every error is a ConfigError naming the field's path (``request.url``,
``output.sqlite.batch.count``, ``retry.retry-on[2]``). Keys are written with
dashes (``max-in-flight``); underscores are accepted too. docs/batch.md is the
reference for every field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from katyusha.batch.template import Body, Column
from katyusha.config_values import int_in_range, parse_host, parse_seconds, read_yaml_mapping
from katyusha.core.errors import ConfigError

KINDS = ("sqlite", "postgres", "csv")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METHODS = ("POST", "PUT", "PATCH", "GET", "DELETE")
# 502 is in the default list on purpose: katyusha answers it when the pod
# failed before answering (it does not resend a POST itself), and a batch
# request may be sent again because results are upserted by id.
DEFAULT_RETRY_ON = (429, 502, 503, 504)


@dataclass(frozen=True)
class Store:
    """Where rows are read or written: a SQLite file, a PostgreSQL database or a CSV file."""

    kind: str
    where: str  # the config path of the block, e.g. "input.sqlite"
    path: str | None = None  # sqlite, csv
    dsn: str | None = None  # postgres
    table: str | None = None  # sqlite, postgres


@dataclass(frozen=True)
class InputConfig:
    store: Store
    id: str = "id"
    columns: tuple[str, ...] | None = None  # None: every column
    page_size: int = 500


@dataclass(frozen=True)
class RequestConfig:
    url: str
    method: str = "POST"
    body: Body | None = None  # None: the record's fields, the id left out
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 30.0
    records_per_request: int = 1


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = 8
    backoff: float = 0.2
    max_backoff: float = 10.0
    retry_on: frozenset[int] = frozenset(DEFAULT_RETRY_ON)


@dataclass(frozen=True)
class OutputConfig:
    store: Store
    id: str = "id"
    columns: tuple[tuple[str, Column], ...] = (("result", Column("response")),)
    batch_count: int = 40
    batch_period: float = 0.5


@dataclass(frozen=True)
class BatchConfig:
    input: InputConfig
    request: RequestConfig
    output: OutputConfig
    dead_letter: Store
    max_in_flight: int = 1
    retry: RetryConfig = field(default_factory=RetryConfig)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    progress: str = "auto"  # auto: a bar only on a terminal; on; off


# -- small readers ----------------------------------------------------------------


def _block(raw: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    """A mapping with known keys only (dashes or underscores), keyed by the dashed name."""
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"must be a mapping, got {_kind(raw)}")
    out: dict[str, tuple[str, Any]] = {}
    for key, value in raw.items():
        name = str(key).replace("_", "-")
        if name not in allowed:
            raise ConfigError(_join(where, key), f"unknown field (known: {', '.join(allowed)})")
        out[name] = (_join(where, key), value)
    for name in required:
        if name not in out:
            raise ConfigError(_join(where, name), "missing (required)")
    return out


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _text(where: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(where, f"must be a non-empty string, got {raw!r}")
    return raw.strip()


def _ident(where: str, raw: Any, dotted: bool = False) -> str:
    text = _text(where, raw)
    parts = text.split(".") if dotted else [text]
    if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        shape = "NAME or SCHEMA.NAME" if dotted else "a name"
        raise ConfigError(where, f"must be {shape} of letters, digits and _, got {raw!r}")
    return text


def _url(where: str, raw: Any) -> str:
    text = _text(where, raw)
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(where, f"bad port in {raw!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(where, f"must be an http:// or https:// URL, got {raw!r}")
    return text


def _status_list(where: str, raw: Any) -> frozenset[int]:
    if not isinstance(raw, list):
        raise ConfigError(where, f"must be a list of HTTP status codes, got {_kind(raw)}")
    codes = set()
    for i, item in enumerate(raw):
        code = int_in_range(400, 599)(f"{where}[{i}]", item)
        codes.add(code)
    return frozenset(codes)


# -- stores -------------------------------------------------------------------------

_STORE_FIELDS = {"sqlite": ("path", "table"), "postgres": ("dsn", "table"), "csv": ("path",)}


def _store(raw: Any, where: str, extra: tuple[str, ...]) -> tuple[Store, dict]:
    """The one kind block of ``raw`` (``{sqlite: {...}}``) and its remaining fields."""
    if not isinstance(raw, Mapping) or len(raw) != 1 or next(iter(raw)) not in KINDS:
        got = list(raw) if isinstance(raw, Mapping) else _kind(raw)
        raise ConfigError(where, f"must hold exactly one of {', '.join(KINDS)}, got {got}")
    kind = next(iter(raw))
    inner = f"{where}.{kind}"
    fields = _block(raw[kind], inner, (*_STORE_FIELDS[kind], *extra), _STORE_FIELDS[kind])
    store = Store(
        kind,
        inner,
        path=_text(*fields["path"]) if "path" in fields else None,
        dsn=_text(*fields["dsn"]) if "dsn" in fields else None,
        table=_ident(*fields["table"], dotted=True) if "table" in fields else None,
    )
    return store, fields


def _input(raw: Any) -> InputConfig:
    store, f = _store(raw, "input", ("id", "columns", "page-size"))
    columns = None
    if "columns" in f:
        where, value = f["columns"]
        if not isinstance(value, list) or not value:
            raise ConfigError(where, f"must be a non-empty list of column names, got {value!r}")
        if store.kind == "csv":
            columns = tuple(_text(f"{where}[{i}]", c) for i, c in enumerate(value))
        else:
            columns = tuple(_ident(f"{where}[{i}]", c) for i, c in enumerate(value))
    id_column = "id"
    if "id" in f:
        id_column = _text(*f["id"]) if store.kind == "csv" else _ident(*f["id"])
    page = int_in_range(1, 100_000)(*f["page-size"]) if "page-size" in f else 500
    return InputConfig(store, id_column, columns, page)


def _output(raw: Any) -> OutputConfig:
    store, f = _store(raw, "output", ("id", "columns", "batch"))
    id_column = _ident(*f["id"]) if "id" in f else "id"
    columns = OutputConfig.columns
    if "columns" in f:
        where, value = f["columns"]
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(where, f"must map column names to sources, got {value!r}")
        parsed = []
        for name, source in value.items():
            path = f"{where}.{name}"
            column = _ident(path, name)
            if column == id_column:
                raise ConfigError(path, f"{column!r} is the id column, written from the input's id")
            parsed.append((column, Column.parse(source, path)))
        columns = tuple(parsed)
    count, period = 40, 0.5
    if "batch" in f:
        b = _block(f["batch"][1], f["batch"][0], ("count", "period"))
        if "count" in b:
            count = int_in_range(1, 100_000)(*b["count"])
        if "period" in b:
            period = parse_seconds(*b["period"])
    return OutputConfig(store, id_column, columns, count, period)


def _default_dead_letter(output: Store) -> Store:
    if output.kind == "csv":
        assert output.path is not None
        stem = output.path[:-4] if output.path.endswith(".csv") else output.path
        return Store("csv", "dead-letter.csv", path=f"{stem}.dead-letter.csv")
    return Store(output.kind, f"dead-letter.{output.kind}", path=output.path, dsn=output.dsn,
                 table=f"{output.table}_dead_letter")


def _request(raw: Any) -> RequestConfig:
    f = _block(raw, "request", ("url", "method", "body", "fields", "headers", "timeout",
                                "records-per-request"), ("url",))
    method = "POST"
    if "method" in f:
        where, value = f["method"]
        method = _text(where, value).upper()
        if method not in _METHODS:
            raise ConfigError(where, f"must be one of {', '.join(_METHODS)}, got {value!r}")
    if "body" in f and "fields" in f:
        raise ConfigError("request.fields", "give either request.body or request.fields, not both")
    body = None
    if "body" in f:
        body = Body(f["body"][1], f["body"][0])
    elif "fields" in f:
        where, value = f["fields"]
        if not isinstance(value, list) or not value:
            raise ConfigError(where, f"must be a non-empty list of field names, got {value!r}")
        names = [_text(f"{where}[{i}]", v) for i, v in enumerate(value)]
        body = Body.of_fields(names, where)
    headers: list[tuple[str, str]] = []
    if "headers" in f:
        where, value = f["headers"]
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"must map header names to values, got {_kind(value)}")
        for name, text in value.items():
            if not isinstance(text, str | int | float) or isinstance(text, bool):
                raise ConfigError(f"{where}.{name}", f"must be a string, got {text!r}")
            headers.append((str(name), str(text)))
    return RequestConfig(
        url=_url(*f["url"]),
        method=method,
        body=body,
        headers=tuple(headers),
        timeout=parse_seconds(*f["timeout"]) if "timeout" in f else 30.0,
        records_per_request=(int_in_range(1, 1000)(*f["records-per-request"])
                             if "records-per-request" in f else 1),
    )


def _retry(raw: Any) -> RetryConfig:
    f = _block(raw, "retry", ("max-retries", "backoff", "max-backoff", "retry-on"))
    base = RetryConfig()
    retry = RetryConfig(
        max_retries=int_in_range(0, 1000)(*f["max-retries"]) if "max-retries" in f else base.max_retries,
        backoff=parse_seconds(*f["backoff"]) if "backoff" in f else base.backoff,
        max_backoff=parse_seconds(*f["max-backoff"]) if "max-backoff" in f else base.max_backoff,
        retry_on=_status_list(*f["retry-on"]) if "retry-on" in f else base.retry_on,
    )
    if retry.max_backoff < retry.backoff:
        raise ConfigError("retry.max-backoff", f"must be at least retry.backoff ({retry.backoff:g}s)")
    return retry


def parse(document: Mapping) -> BatchConfig:
    """Settings from a parsed batch file; raises ConfigError naming the bad field's path."""
    f = _block(document, "", ("input", "request", "output", "dead-letter", "max-in-flight",
                              "retry", "metrics", "progress"))

    def need(name: str) -> Any:
        if name not in f:
            raise ConfigError(name, "missing (required)")
        return f[name][1]

    # In the file's order, so the first error reported is the first one a reader meets.
    inp = _input(need("input"))
    request = _request(need("request"))
    output = _output(need("output"))
    dead = _default_dead_letter(output.store)
    if "dead-letter" in f:
        dead, _ = _store(f["dead-letter"][1], "dead-letter", ())
    if output.store.kind != "csv" and dead.kind == output.store.kind and (
        (dead.path, dead.dsn, dead.table) == (output.store.path, output.store.dsn, output.store.table)
    ):
        raise ConfigError("dead-letter", "must not be the output table itself")
    metrics_host, metrics_port = "127.0.0.1", 0
    if "metrics" in f:
        m = _block(f["metrics"][1], "metrics", ("host", "port"))
        if "host" in m:
            metrics_host = parse_host(*m["host"])
        if "port" in m:
            metrics_port = int_in_range(0, 65535)(*m["port"])
    progress = "auto"
    if "progress" in f:
        where, value = f["progress"]
        # YAML reads a bare on/off as a boolean.
        progress = ("on" if value else "off") if isinstance(value, bool) else value
        if progress not in ("auto", "on", "off"):
            raise ConfigError(where, f"must be auto, on or off, got {value!r}")
    return BatchConfig(
        input=inp,
        request=request,
        output=output,
        dead_letter=dead,
        max_in_flight=int_in_range(1, 10_000)(*f["max-in-flight"]) if "max-in-flight" in f else 1,
        retry=_retry(f["retry"][1]) if "retry" in f else RetryConfig(),
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        progress=progress,
    )


def load(path: str) -> BatchConfig:
    """Read and check the batch file at ``path``; raises ConfigError naming the field."""
    return parse(read_yaml_mapping(path, path))
