"""The fleet file's ``nodes:`` list and ``services:`` list: what the placement scheduler places pods on and with.

``nodes`` is either a count (``nodes: 2``: ``node-1`` .. ``node-2``, each
sized to hold every pod slot it carries, so placement never refuses a slot for
room) or a list of nodes with their capacity, pod limit, labels and taints.
``services`` lists the services the pod slots belong to: CPU and RAM requests,
image, node affinity, tolerations, a per-node limit, whether a scale-up is a
gang (all or none), and ``annotations`` (Knative ``autoscaling.knative.dev/*``
settings, validated by the fleet spec against the autoscaler section); without
it there is one service, ``app``, that every slot belongs to.

CPU is written in cores (``2``, ``0.5``) or millicores (``"500m"``); RAM in MiB
(``512``) or with a unit (``"512Mi"``, ``"8Gi"``). Both are kept as integers,
millicores and MiB, the placement model's units. Every mistake raises
:class:`~katyusha.core.errors.ConfigError` whose key is the field path
(``nodes[1].taints[0]``, ``services[0].node_affinity.required[0].match[1].operator``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

from katyusha.config_values import parse_bool
from katyusha.core.errors import BadInput, ConfigError
from katyusha.core.fleetplan import ServiceSpec
from katyusha.core.placement import LabelRequirement, Node, NodeAffinity, Taint, Toleration
from katyusha.core.placement.model import SELECTOR_OPERATORS, TAINT_EFFECTS, TOLERATION_OPERATORS
from katyusha.fleet.fields import listed as _list
from katyusha.fleet.fields import mapping as _mapping
from katyusha.fleet.fields import text as _str
from katyusha.fleet.fields import whole as _int

DEFAULT_SERVICE = "app"
DEFAULT_NODE_CPU = 4000  # millicores
DEFAULT_NODE_RAM = 8192  # MiB
DEFAULT_MAX_PODS = 110  # Kubernetes' default pod limit per node
DEFAULT_SERVICE_CPU = 100
DEFAULT_SERVICE_RAM = 128

_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_NODE_KEYS = {"name", "cpu", "ram", "max_pods", "labels", "taints"}
_SERVICE_KEYS = {"name", "cpu", "ram", "image", "node_selector", "node_affinity", "tolerations", "max_per_node",
                 "gang", "annotations"}
_TAINT_TEXT = re.compile(r"(?P<key>[^=:\s]+)(=(?P<value>[^:\s]*))?:(?P<effect>\S+)")


def derived_nodes(names: Sequence[str], slots_per_node: dict[str, int], services: Sequence[ServiceSpec]) -> tuple[Node, ...]:
    """Nodes for ``nodes: N``: each big enough for every slot it carries, whatever service the slot runs."""
    cpu = max((s.cpu for s in services), default=DEFAULT_SERVICE_CPU)
    ram = max((s.ram for s in services), default=DEFAULT_SERVICE_RAM)
    out = []
    for name in names:
        slots = slots_per_node.get(name, 0)
        out.append(Node(name, cpu=max(DEFAULT_NODE_CPU, slots * cpu), ram=max(DEFAULT_NODE_RAM, slots * ram),
                        max_pods=max(DEFAULT_MAX_PODS, slots)))  # fmt: skip
    return tuple(out)


def parse_nodes(raw: Any) -> tuple[Node, ...]:
    """The ``nodes:`` list as placement nodes (no images yet: those come from the pods' states).

    Raises ConfigError naming ``nodes[i].field``.
    """
    if not isinstance(raw, list) or not raw:
        raise ConfigError("nodes", "must be a number of nodes or a non-empty list of nodes")
    nodes = []
    for where, doc, name in _named_items(raw, "nodes", _NODE_KEYS, "node"):
        cpu = parse_cpu(doc.get("cpu", DEFAULT_NODE_CPU / 1000), f"{where}.cpu")
        ram = parse_ram(doc.get("ram", DEFAULT_NODE_RAM), f"{where}.ram")
        max_pods = _int(doc.get("max_pods", DEFAULT_MAX_PODS), f"{where}.max_pods", low=1)
        labels = _labels(doc.get("labels", {}), f"{where}.labels")
        taints = _list(doc.get("taints", []), f"{where}.taints")
        parsed = tuple(_taint(t, f"{where}.taints[{j}]") for j, t in enumerate(taints))
        nodes.append(Node(name, cpu=cpu, ram=ram, max_pods=max_pods, labels=labels, taints=parsed))
    return tuple(nodes)


def parse_services(raw: Any) -> tuple[tuple[ServiceSpec, ...], dict[str, dict]]:
    """The ``services:`` list (None: the one default service), and each service's ``annotations``.

    Annotations are returned as written (the caller validates them against
    the autoscaler's settings). Raises ConfigError naming ``services[i].field``.
    """
    if raw is None:
        return (ServiceSpec(DEFAULT_SERVICE, DEFAULT_SERVICE_CPU, DEFAULT_SERVICE_RAM, f"{DEFAULT_SERVICE}:latest"),), {}
    if not isinstance(raw, list) or not raw:
        raise ConfigError("services", "must be a non-empty list of services")
    services = []
    annotations: dict[str, dict] = {}
    for where, doc, name in _named_items(raw, "services", _SERVICE_KEYS, "service"):
        cpu = parse_cpu(doc.get("cpu", DEFAULT_SERVICE_CPU / 1000), f"{where}.cpu")
        ram = parse_ram(doc.get("ram", DEFAULT_SERVICE_RAM), f"{where}.ram")
        image = doc.get("image", f"{name}:latest")
        if not isinstance(image, str) or not image.strip():
            raise ConfigError(f"{where}.image", f"must be a non-empty string, not {image!r}")
        affinity = _affinity(doc.get("node_affinity"), doc.get("node_selector"), where)
        tolerations = _list(doc.get("tolerations", []), f"{where}.tolerations")
        tols = tuple(_toleration(t, f"{where}.tolerations[{j}]") for j, t in enumerate(tolerations))
        limit = doc.get("max_per_node")
        if limit is not None:
            limit = _int(limit, f"{where}.max_per_node", low=1)
        gang = parse_bool(f"{where}.gang", doc.get("gang", False))
        if "annotations" in doc:
            annotations[name] = _mapping(doc["annotations"], f"{where}.annotations", None)
        services.append(ServiceSpec(name, cpu, ram, image.strip(), affinity, tols, limit, gang))
    return tuple(services), annotations


def _named_items(raw: list, field: str, keys: set[str], kind: str) -> Iterator[tuple[str, dict, str]]:
    """Each ``field[i]`` of ``raw`` as (its path, its mapping, its name): a name required and used once."""
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        doc = _mapping(item, where, keys)
        if "name" not in doc:
            raise ConfigError(f"{where}.name", "required")
        name = _name(doc["name"], f"{where}.name")
        if name in seen:
            raise ConfigError(f"{where}.name", f"{name!r} is used by another {kind}")
        seen.add(name)
        yield where, doc, name


def parse_cpu(value: Any, where: str) -> int:
    """Millicores from cores (``2``, ``0.5``, ``"1.5"``) or millicores (``"500m"``); above zero."""
    text = str(value).strip() if isinstance(value, str | int | float) and not isinstance(value, bool) else None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", text or "")
    if not match:
        raise ConfigError(where, f"must be cores (2, 0.5) or millicores (\"500m\"), not {value!r}")
    number = float(match[1])
    milli = number if match[2] else number * 1000
    if milli < 1 or milli != math.floor(milli):
        raise ConfigError(where, f"must be a whole number of millicores, at least 1m, not {value!r}")
    return int(milli)


_RAM_UNITS = {"": 1, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}


def parse_ram(value: Any, where: str) -> int:
    """MiB from a number (MiB) or a string with Mi, Gi or Ti; a whole number of MiB above zero."""
    text = str(value).strip() if isinstance(value, str | int | float) and not isinstance(value, bool) else None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(Mi|Gi|Ti)?", text or "")
    if not match:
        raise ConfigError(where, f"must be MiB (512) or a size with a unit (\"512Mi\", \"8Gi\"), not {value!r}")
    mib = float(match[1]) * _RAM_UNITS[match[2] or ""]
    if mib < 1 or mib != math.floor(mib):
        raise ConfigError(where, f"must be a whole number of MiB, at least 1, not {value!r}")
    return int(mib)


def _affinity(raw: Any, selector: Any, where: str) -> NodeAffinity:
    required: list[tuple[LabelRequirement, ...]] = []
    preferred: list[tuple[int, tuple[LabelRequirement, ...]]] = []
    doc = _mapping(raw, f"{where}.node_affinity", {"required", "preferred"})
    for j, term in enumerate(_list(doc.get("required", []), f"{where}.node_affinity.required")):
        at = f"{where}.node_affinity.required[{j}]"
        required.append(_term(_mapping(term, at, {"match"}).get("match"), f"{at}.match"))
    for j, term in enumerate(_list(doc.get("preferred", []), f"{where}.node_affinity.preferred")):
        at = f"{where}.node_affinity.preferred[{j}]"
        item = _mapping(term, at, {"weight", "match"})
        weight = _int(item.get("weight", 1), f"{at}.weight", low=1, high=100)
        preferred.append((weight, _term(item.get("match"), f"{at}.match")))
    if selector is not None:
        labels = _labels(selector, f"{where}.node_selector")
        extra = tuple(LabelRequirement(k, "In", (v,)) for k, v in labels.items())
        # A node selector must hold on top of whichever required term matches: AND it into each.
        required = [term + extra for term in required] if required else [extra]
    return NodeAffinity(required=tuple(required), preferred=tuple(preferred))


def _term(raw: Any, where: str) -> tuple[LabelRequirement, ...]:
    items = _list(raw, where)
    if not items:
        raise ConfigError(where, "must list at least one label expression")
    out = []
    for k, item in enumerate(items):
        at = f"{where}[{k}]"
        doc = _mapping(item, at, {"key", "operator", "values"})
        key = _str(doc.get("key"), f"{at}.key")
        operator = doc.get("operator", "In")
        if operator not in SELECTOR_OPERATORS:
            raise ConfigError(f"{at}.operator", f"must be one of {', '.join(SELECTOR_OPERATORS)}, not {operator!r}")
        values = _list(doc.get("values", []), f"{at}.values")
        if operator in ("In", "NotIn") and not values:
            raise ConfigError(f"{at}.values", f"operator {operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            raise ConfigError(f"{at}.values", f"operator {operator} takes no values")
        out.append(LabelRequirement(key, operator, tuple(_scalar(v, f"{at}.values") for v in values)))
    return tuple(out)


def _taint(raw: Any, where: str) -> Taint:
    if isinstance(raw, str):
        match = _TAINT_TEXT.fullmatch(raw.strip())
        if not match:
            raise ConfigError(where, f"must be KEY[=VALUE]:EFFECT or a mapping, not {raw!r}")
        key, value, effect = match["key"], match["value"] or "", match["effect"]
    else:
        doc = _mapping(raw, where, {"key", "value", "effect"})
        key = _str(doc.get("key"), f"{where}.key")
        value = _scalar(doc.get("value", ""), f"{where}.value")
        effect = doc.get("effect", "NoSchedule")
    if effect not in TAINT_EFFECTS:
        raise ConfigError(where, f"effect must be one of {', '.join(TAINT_EFFECTS)}, not {effect!r}")
    try:
        return Taint(key, value, effect)
    except BadInput as exc:
        raise ConfigError(where, str(exc)) from None


def _toleration(raw: Any, where: str) -> Toleration:
    doc = _mapping(raw, where, {"key", "operator", "value", "effect"})
    operator = doc.get("operator", "Equal")
    if operator not in TOLERATION_OPERATORS:
        raise ConfigError(f"{where}.operator", f"must be one of {', '.join(TOLERATION_OPERATORS)}, not {operator!r}")
    key = doc.get("key", "")
    if operator == "Equal" or key:
        key = _str(key, f"{where}.key")
    effect = doc.get("effect", "")
    if effect and effect not in TAINT_EFFECTS:
        raise ConfigError(f"{where}.effect", f"must be one of {', '.join(TAINT_EFFECTS)} or empty, not {effect!r}")
    value = _scalar(doc.get("value", ""), f"{where}.value")
    if operator == "Exists" and value:
        raise ConfigError(f"{where}.value", "operator Exists takes no value")
    return Toleration(key, operator, value, effect or "")


def _labels(raw: Any, where: str) -> dict[str, str]:
    doc = _mapping(raw, where, None)
    return {_str(key, f"{where}"): _scalar(value, f"{where}.{key}") for key, value in doc.items()}


def _scalar(value: Any, where: str) -> str:
    """A label value: strings as they are, numbers written out (YAML reads ``zone: 1`` as an int)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    raise ConfigError(where, f"must be a string, not {value!r}")


def _name(value: Any, where: str) -> str:
    text = _str(value, where)
    if not _NAME.fullmatch(text):
        raise ConfigError(where, f"{text!r} must be lower-case letters, digits, dots and dashes")
    return text
