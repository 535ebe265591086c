"""The thin adapter between tether and the ``kubernetes`` client.

Owns: loading the kubeconfig (``kubeconfig``, ``kube_context``, in-cluster as a fallback),
the API objects tether reads and writes, and turning every ``ApiException`` into one
``TargetError`` sentence that says what to do (not found, not ready, forbidden with the
exact RBAC rule to add, the API server unreachable).  Nothing else in tether imports the
``kubernetes`` package directly, so a client upgrade touches this file only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from . import TargetError

log = logging.getLogger("tether")

T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    """One RBAC permission, as a user adds it to a Role."""

    group: str
    resource: str
    verb: str

    def yaml(self) -> str:
        return (f'{{apiGroups: ["{self.group}"], resources: ["{self.resource}"], '
                f'verbs: ["{self.verb}"]}}')


def status_message(exc: Any) -> str:
    """The ``message`` of the V1Status an API server sends with an error."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body.strip().startswith("{"):
        try:
            return str(json.loads(body).get("message") or "").strip()
        except ValueError:
            pass
    return str(getattr(exc, "reason", "") or exc).strip()


class KubeApi:
    """One API client per process (a forked orchestrator makes its own)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 accept_invalid_certificates: bool | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.accept_invalid_certificates = accept_invalid_certificates
        self._client: Any = None
        self._pid = 0
        self.host = ""
        self.default_namespace = "default"

    # ---- client ----
    def client(self) -> Any:
        if self._client is not None and self._pid == os.getpid():
            return self._client
        from kubernetes import client as kclient
        from kubernetes import config as kconfig

        cfg = kclient.Configuration()
        path = os.path.expanduser(self.kubeconfig) if self.kubeconfig else None
        try:
            kconfig.load_kube_config(config_file=path, context=self.context,
                                     client_configuration=cfg, persist_config=False)
            _, active = kconfig.list_kube_config_contexts(config_file=path)
            if self.context:
                contexts, _ = kconfig.list_kube_config_contexts(config_file=path)
                active = next((c for c in contexts if c["name"] == self.context), active)
            self.default_namespace = (active or {}).get("context", {}).get("namespace") or "default"
        except (kconfig.ConfigException, FileNotFoundError, OSError) as exc:
            if self.kubeconfig or self.context or "KUBERNETES_SERVICE_HOST" not in os.environ:
                where = self.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
                raise TargetError(
                    f"cannot load the Kubernetes configuration from {where}: {exc}; set "
                    "KUBECONFIG or `kubeconfig`/`kube_context` in the config file"
                ) from None
            kconfig.load_incluster_config(client_configuration=cfg)
        if self.accept_invalid_certificates:
            cfg.verify_ssl = False
        self.host = cfg.host
        self._client = kclient.ApiClient(cfg)
        self._pid = os.getpid()
        return self._client

    def context_namespace(self) -> str | None:
        """The namespace the kubeconfig's (chosen) context sets, None if it sets none."""
        from kubernetes import config as kconfig

        path = os.path.expanduser(self.kubeconfig) if self.kubeconfig else None
        try:
            contexts, active = kconfig.list_kube_config_contexts(config_file=path)
        except (kconfig.ConfigException, FileNotFoundError, OSError) as exc:
            raise TargetError(f"cannot read the Kubernetes configuration: {exc}") from None
        if self.context:
            active = next((c for c in contexts if c["name"] == self.context), None)
        return ((active or {}).get("context") or {}).get("namespace") or None

    # ---- REST ----
    # The generated CoreV1Api/AppsV1Api modules take seconds to import (thousands of
    # validated methods); tether needs a dozen calls, so it builds them with the client's
    # own request machinery (auth, TLS, proxies, token refresh) and model deserializer.
    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                body: Any = None, content_type: str | None = None,
                response_type: str | None = "object", timeout: float | None = 30) -> Any:
        api = self.client()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        method, url, headers, body, post = api.param_serialize(
            method=method, resource_path=path, query_params=params or None,
            header_params=headers, body=body, auth_settings=["BearerToken"])
        response = api.call_api(method, url, header_params=headers, body=body,
                                post_params=post, _request_timeout=timeout)
        response.read()
        types = {"200": response_type, "201": response_type, "202": response_type}
        return api.response_deserialize(response, types).data

    def portforward(self, namespace: str, pod: str, port: int) -> Any:
        """Open ``pods/<pod>/portforward`` (websocket, v4.channel.k8s.io) with the client."""
        from kubernetes.stream.ws_client import portforward_call

        api = self.client()
        _, url, headers, _, _ = api.param_serialize(
            method="GET", resource_path=f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward",
            query_params=[("ports", str(port))], header_params={}, auth_settings=["BearerToken"])
        return portforward_call(api.configuration, "GET", url, headers=headers,
                                query_params=[("ports", str(port))])

    # ---- calls ----
    def call(self, what: str, rule: Rule, namespace: str, fn: Callable[..., T], *args: Any,
             **kw: Any) -> T:
        """Call ``fn``; turn an API error into a TargetError about ``what``."""
        from kubernetes.client.rest import ApiException

        try:
            return fn(*args, **kw)
        except ApiException as exc:
            raise self.error(what, rule, namespace, exc) from None
        except OSError as exc:  # urllib3 wraps most, not all
            raise TargetError(
                f"cannot reach the Kubernetes API server at {self.host}: {exc}"
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith("urllib3"):
                raise TargetError(
                    f"cannot reach the Kubernetes API server at {self.host}: "
                    f"{getattr(exc, 'reason', exc)}; check the cluster and your kubeconfig"
                ) from None
            raise

    def get(self, what: str, gv: str, namespace: str, plural: str, name: str,
            model: str = "object") -> Any:
        """GET one object (``gv``: "v1", "apps/v1", ...) as a client model."""
        return self.call(what, Rule(api_group(gv), plural, "get"), namespace, self.request,
                         "GET", resource_path(gv, namespace, plural, name), response_type=model)

    def list(self, what: str, gv: str, namespace: str, plural: str, model: str,
             selector: str | None = None) -> list[Any]:
        data = self.call(what, Rule(api_group(gv), plural, "list"), namespace, self.request,
                         "GET", resource_path(gv, namespace, plural),
                         query={"labelSelector": selector or None}, response_type=model)
        return list(data.get("items") or []) if isinstance(data, dict) else list(data.items)

    def error(self, what: str, rule: Rule, namespace: str, exc: Any) -> TargetError:
        status = int(getattr(exc, "status", 0) or 0)
        msg = status_message(exc)
        if status == 404:
            return TargetError(f"{what} not found in namespace {namespace!r}: {msg}; list the "
                               f"targets with `tether ls -n {namespace}`")
        if status == 403:
            return TargetError(
                f"{what}: forbidden: {msg}; add this rule to your Role in namespace "
                f"{namespace!r}: {rule.yaml()} (docs/kubernetes.md has a complete Role)"
            )
        if status == 401:
            return TargetError(f"{what}: the API server at {self.host} rejected your "
                               "credentials (401); refresh them (log in again) and retry")
        if status == 0:
            return TargetError(f"cannot reach the Kubernetes API server at {self.host}: {msg}")
        return TargetError(f"{what}: the API server answered {status}: {msg}")

    def sanitize(self, obj: Any) -> Any:
        return self.client().sanitize_for_serialization(obj)


def api_group(gv: str) -> str:
    """The RBAC apiGroup of a group/version ("" for the core "v1")."""
    return gv.split("/")[0] if "/" in gv else ""


def resource_path(gv: str, namespace: str, plural: str, name: str | None = None,
                  sub: str | None = None) -> str:
    """``/api/v1/...`` or ``/apis/<group>/<version>/...`` for a namespaced resource."""
    base = "/api/v1" if gv in ("", "v1") else f"/apis/{gv}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def label_selector(selector: Any) -> str:
    """A V1LabelSelector (model or dict) as the ``labelSelector`` query string."""
    if selector is None:
        return ""
    if not isinstance(selector, dict):
        selector = {"matchLabels": getattr(selector, "match_labels", None),
                    "matchExpressions": [
                        {"key": e.key, "operator": e.operator, "values": e.values}
                        for e in (getattr(selector, "match_expressions", None) or [])]}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)
