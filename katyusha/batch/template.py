"""The request body built from a record, and the output columns read from a result.

No code runs from the config: a body template is JSON-like data whose strings
may hold ``{field}`` placeholders, and an output column names one of a few
fixed sources (``response.Compound``, ``record.text``, ``status``, ...).

* A string that is exactly one placeholder, ``"{score}"``, becomes the field's
  value with its type (a number stays a number, NULL becomes null).
* A placeholder inside other text, ``"tweet {id}: {text}"``, is written out as
  text; ``{{`` and ``}}`` are literal braces.
* Mappings and lists are walked; numbers, booleans and null are kept.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from katyusha.core.errors import ConfigError

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class _Text:
    """A string with placeholders: literal pieces and field names, in order."""

    parts: tuple[tuple[bool, str], ...]  # (is_field, literal or field name)

    def render(self, record: Mapping[str, Any]) -> str:
        return "".join(_as_text(record[p]) if is_field else p for is_field, p in self.parts)


@dataclass(frozen=True)
class _Field:
    name: str

    def render(self, record: Mapping[str, Any]) -> Any:
        return jsonable(record[self.name])


def _compile_string(text: str, where: str, fields: dict[str, str]):
    parts: list[tuple[bool, str]] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        if match.start() > pos:
            parts.append((False, text[pos:match.start()]))
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append((False, token[0]))
        elif token in ("{", "}"):
            raise ConfigError(where, f"unmatched {token!r} in {text!r} (write {token * 2} for a literal one)")
        else:
            name = match.group(1).strip()
            if not name:
                raise ConfigError(where, f"empty placeholder {{}} in {text!r}")
            fields.setdefault(name, where)
            parts.append((True, name))
        pos = match.end()
    if pos < len(text):
        parts.append((False, text[pos:]))
    if len(parts) == 1 and parts[0][0]:
        return _Field(parts[0][1])
    if not any(is_field for is_field, _ in parts):
        return "".join(p for _, p in parts)
    return _Text(tuple(parts))


def _compile(value: Any, where: str, fields: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _compile_string(value, where, fields)
    if isinstance(value, Mapping):
        compiled = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}.{key}", "keys of the body must be strings")
            compiled[key] = _compile(item, f"{where}.{key}", fields)
        return compiled
    if isinstance(value, list):
        return [_compile(item, f"{where}[{i}]", fields) for i, item in enumerate(value)]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise ConfigError(where, f"a body holds mappings, lists, strings, numbers, booleans or null, "
                             f"got {type(value).__name__}")


def _render(node: Any, record: Mapping[str, Any]) -> Any:
    if isinstance(node, _Field | _Text):
        return node.render(record)
    if isinstance(node, dict):
        return {key: _render(item, record) for key, item in node.items()}
    if isinstance(node, list):
        return [_render(item, record) for item in node]
    return node


class Body:
    """A compiled body template. ``fields`` maps each field used to the config path using it."""

    def __init__(self, template: Any, where: str):
        self.fields: dict[str, str] = {}
        self._root = _compile(template, where, self.fields)

    @classmethod
    def of_fields(cls, names: Iterable[str], where: str) -> Body:
        """The body ``{name: value, ...}`` of the named fields (any name, braces included)."""
        names = list(names)
        body = cls({}, where)
        body._root = {name: _Field(name) for name in names}
        body.fields = {name: f"{where}[{i}]" for i, name in enumerate(names)}
        return body

    def render(self, record: Mapping[str, Any]) -> Any:
        """The JSON document for ``record``; every field used must be in it (checked at start)."""
        return _render(self._root, record)


def check_fields(used: Mapping[str, str], available: Iterable[str]) -> None:
    """Raise ConfigError at the config path of the first field that the input does not have."""
    have = list(available)
    for name, where in used.items():
        if name not in have:
            raise ConfigError(where, f"no field {name!r} in the input (it has: {', '.join(have)})")


def jsonable(value: Any) -> Any:
    """A value json.dumps accepts: decimals as numbers, dates as ISO text, bytes as base64."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def _as_text(value: Any) -> str:
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


# -- output columns -------------------------------------------------------------

SOURCES = ("response", "response.PATH", "record.FIELD", "status", "attempts", "latency_ms")


@dataclass(frozen=True)
class Column:
    """Where one output column's value comes from."""

    source: str  # response | record | status | attempts | latency_ms
    path: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, where: str) -> Column:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(where, f"must be one of {', '.join(SOURCES)}, got {raw!r}")
        head, _, rest = raw.strip().partition(".")
        if head in ("status", "attempts", "latency_ms") and not rest:
            return cls(head)
        if head == "response":
            path = tuple(rest.split(".")) if rest else ()
        elif head == "record" and rest:
            path = (rest,)
        else:
            raise ConfigError(where, f"must be one of {', '.join(SOURCES)}, got {raw!r}")
        if any(not part for part in path):
            raise ConfigError(where, f"empty step in {raw!r}")
        return cls(head, path)

    def value(self, record: Mapping[str, Any], response: Any, meta: Mapping[str, Any]) -> Any:
        """The column's value; raises LookupError naming the missing step of the response."""
        if self.source == "record":
            return jsonable(record[self.path[0]])
        if self.source != "response":
            return meta[self.source]
        node = response
        for step in self.path:
            if isinstance(node, Mapping) and step in node:
                node = node[step]
            elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
                node = node[int(step)]
            else:
                raise LookupError(f"the response has no {'.'.join(('response', *self.path))}")
        return node
