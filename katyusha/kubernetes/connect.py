"""An API client for the cluster (the pod's service account inside a cluster, else a kubeconfig), and its answers.

The rule is client-go's: an explicit kubeconfig wins; inside a pod
(``KUBERNETES_SERVICE_HOST`` set) the service account's token and CA are
used (kubernetes_asyncio re-reads the token file every minute, so rotated
tokens keep working); otherwise ``$KUBECONFIG`` or ``~/.kube/config``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

try:
    from kubernetes_asyncio import config as kube_config
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.client.exceptions import ApiException
    from kubernetes_asyncio.config.incluster_config import (
        SERVICE_CERT_FILENAME,
        SERVICE_HOST_ENV_NAME,
        SERVICE_TOKEN_FILENAME,
        InClusterConfigLoader,
    )
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "katyusha.kubernetes needs kubernetes_asyncio: pip install 'katyusha[kubernetes]'"
    ) from exc


class ConnectError(Exception):
    """No usable cluster configuration; the message says which source was tried and why it failed."""


async def configuration(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
) -> Configuration:
    """The client configuration: ``kubeconfig`` (a file) and ``context``, else inside a pod its service account.

    ``token_file``/``ca_file`` are where Kubernetes mounts the service
    account's; ``environ`` defaults to the process's. Raises ConnectError
    naming the source tried and why it failed.
    """
    env = os.environ if environ is None else environ
    result = Configuration()
    try:
        if kubeconfig is None and env.get(SERVICE_HOST_ENV_NAME):
            InClusterConfigLoader(token_filename=token_file, cert_filename=ca_file, environ=dict(env)).load_and_set(
                result
            )
        else:
            await kube_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=result, persist_config=False
            )
    except (kube_config.ConfigException, OSError, ValueError) as exc:
        where = kubeconfig or ("the service account" if env.get(SERVICE_HOST_ENV_NAME) else "the default kubeconfig")
        raise ConnectError(f"cannot configure the Kubernetes client from {where}: {exc}") from None
    return result


async def api_client(kubeconfig: str | None = None, context: str | None = None, **options: Any) -> ApiClient:
    """A kubernetes_asyncio ApiClient from :func:`configuration` (close it with ``await client.close()``).

    Raises ConnectError.
    """
    return ApiClient(await configuration(kubeconfig, context, **options))


async def json_body(response: Any) -> Any:
    """The decoded JSON body of a raw response (a call made with ``_preload_content=False``).

    Such calls do not check the status, so this does: a non-2xx status raises
    ApiException with the status and the API's message (a Status document's
    ``message``), as the preloading calls would.
    """
    data = await response.read()
    if not 200 <= response.status <= 299:
        reason = getattr(response, "reason", None) or ""
        try:
            status_doc = json.loads(data)
            if isinstance(status_doc, dict) and status_doc.get("message"):
                reason = f"{reason}: {status_doc['message']}" if reason else str(status_doc["message"])
        except ValueError:
            pass
        raise ApiException(status=response.status, reason=reason)
    return json.loads(data)
