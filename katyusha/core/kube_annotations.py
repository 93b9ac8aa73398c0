"""Per-service settings from Kubernetes annotations: the KPA's, and the pods' container concurrency.

Knative reads a revision's autoscaling settings from its
``autoscaling.knative.dev/*`` annotations. On plain Kubernetes the scaled
object is a Deployment fronted by a Service, so both may carry them: the
Service's apply first and the Deployment's override them (the Deployment is
what is scaled, so it has the last word). Other annotations (Kubernetes' own
``deployment.kubernetes.io/revision``, a tool's) are left alone.

``katyusha.dev/container-concurrency`` (on the Service or the Deployment,
the Deployment's winning) is the pods' container concurrency: how many
requests one pod runs at once (0: unlimited). In Knative it comes from the
revision spec; here it caps the KPA target (``container-concurrency``),
travels with every discovered pod to katyusha's per-pod capacity, and turns
on subsetting between katyusha replicas when asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from katyusha.core.autoscaler_config import ANNOTATION_PREFIX, KPAConfig, parse_int
from katyusha.core.errors import ConfigError

CONCURRENCY_ANNOTATION = "katyusha.dev/container-concurrency"


def _annotations(document: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not document:
        return {}
    meta = document.get("metadata")
    found = meta.get("annotations") if isinstance(meta, Mapping) else None
    return found if isinstance(found, Mapping) else {}


def _where(document: Mapping[str, Any] | None) -> str:
    meta = document.get("metadata") if document else None
    if not isinstance(meta, Mapping):
        return "?"
    return f"{document.get('kind', 'object')} {meta.get('namespace', '')}/{meta.get('name', '?')}"


def container_concurrency(service: Mapping[str, Any] | None, deployment: Mapping[str, Any] | None = None) -> int | None:
    """The pods' container concurrency from the two objects' annotations (None: neither says).

    Raises ConfigError naming the object and annotation when the value is not a whole number >= 0.
    """
    found: int | None = None
    for document in (service, deployment):
        value = _annotations(document).get(CONCURRENCY_ANNOTATION)
        if value is None:
            continue
        where = f"{_where(document)}: {CONCURRENCY_ANNOTATION}"
        found = parse_int(where, value)
        if found < 0:
            raise ConfigError(where, f"must be 0 (unlimited) or more, got {found}")
    return found


def kpa_config(
    base: KPAConfig, service: Mapping[str, Any] | None, deployment: Mapping[str, Any] | None = None
) -> KPAConfig:
    """``base`` with the Service's, then the Deployment's, autoscaling annotations and container concurrency.

    ``service`` and ``deployment`` are the objects' JSON documents (either may
    be None). Raises ConfigError naming the object and annotation for an
    unknown ``autoscaling.knative.dev/`` name or a bad value.
    """
    config = base
    for document in (service, deployment):
        mine = {k: v for k, v in _annotations(document).items() if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX)}
        try:
            config = config.with_annotations(mine)
        except ConfigError as exc:
            raise ConfigError(f"{_where(document)}: {exc.key}", str(exc)[len(exc.key) + 2 :]) from None
    concurrency = container_concurrency(service, deployment)
    if concurrency is not None:
        config = dataclasses.replace(config, container_concurrency=concurrency)
    return config
