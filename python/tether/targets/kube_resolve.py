"""From a target path (``deployment/silly-demo[/container/app]``) to one running, ready pod.

Owns: the workload kinds tether accepts, how each finds its pods (the workload's selector,
a CronJob's latest Job, a Service's selector, an Argo Rollout's selector or workloadRef),
which pod wins (running, ready, not being deleted, oldest first) and which container of it
(the named one, the ``kubectl.kubernetes.io/default-container``, or the only one that is not
a well-known sidecar).  Every failure is a TargetError that says what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import TargetError
from .kube_api import KubeApi, label_selector

log = logging.getLogger("tether")

KINDS = ("pod", "deployment", "statefulset", "replicaset", "job", "cronjob", "service",
         "rollout")
SIDECARS = {"istio-proxy", "istio-init", "linkerd-proxy", "linkerd-init", "vault-agent",
            "vault-agent-init", "envoy", "envoy-sidecar", "cloud-sql-proxy",
            "datadog-agent", "fluent-bit", "fluentd"}
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


@dataclass(frozen=True)
class PodRef:
    """The pod (and container) a session acts inside."""

    namespace: str
    name: str
    uid: str
    container: str
    container_id: str  # runtime://id, for the Job strategy
    node_name: str
    via: str  # the path the user gave, e.g. deployment/silly-demo

    def describe(self) -> str:
        return f"pod/{self.name}/container/{self.container} (namespace {self.namespace})"


def parse_path(path: str) -> tuple[str, str, str | None]:
    parts = path.split("/")
    if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "container") or not all(parts):
        raise TargetError(f"target {path!r}: expected <kind>/<name>[/container/<container>], "
                          "e.g. deployment/silly-demo")
    if parts[0] not in KINDS:
        raise TargetError(f"target {path!r}: unknown kind {parts[0]!r}; expected one of "
                          f"{', '.join(KINDS)}")
    return parts[0], parts[1], parts[3] if len(parts) == 4 else None


def pod_state(pod: Any) -> tuple[bool, str]:
    """(ready, a few words on why not) for one pod."""
    meta, status = pod.metadata, pod.status
    if meta.deletion_timestamp is not None:
        return False, "terminating"
    phase = (status.phase if status else None) or "Pending"
    if phase != "Running":
        why = phase
        for cs in (status.container_statuses or []) if status else []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason:
                why = f"{phase} ({cs.name}: {waiting.reason})"
                break
        return False, why
    for cond in status.conditions or []:
        if cond.type == "Ready":
            if cond.status == "True":
                return True, "ready"
            break
    not_ready = [cs.name for cs in status.container_statuses or [] if not cs.ready]
    return False, "running, not ready" + (f" ({', '.join(not_ready)})" if not_ready else "")


def choose_container(pod: Any, wanted: str | None, path: str) -> str:
    names = [c.name for c in pod.spec.containers]
    if wanted is not None:
        if wanted not in names:
            raise TargetError(f"target {path!r}: pod {pod.metadata.name} has no container "
                              f"{wanted!r} (it has {', '.join(names)})")
        return wanted
    if len(names) == 1:
        return names[0]
    default = (pod.metadata.annotations or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if default in names:
        return default
    apps = [n for n in names if n not in SIDECARS] or names
    chosen = apps[0]
    log.info("pod %s has containers %s; using %r (choose one with %s/container/<name>)",
             pod.metadata.name, ", ".join(names), chosen, path)
    return chosen


class Resolver:
    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def resolve(self, path: str, namespace: str) -> PodRef:
        kind, name, container = parse_path(path)
        if kind == "pod":
            pod = self.read_pod(name, namespace, f"target {path!r}: pod {name!r}")
            ready, why = pod_state(pod)
            if not ready:
                raise TargetError(f"target {path!r}: pod {name} in {namespace!r} is not ready "
                                  f"({why}); wait until it is, or pick another pod")
        else:
            selector = self.selector(kind, name, namespace, path)
            pod = self.ready_pod(selector, namespace, path)
        chosen = choose_container(pod, container, path)
        cid = ""
        for cs in (pod.status.container_statuses or []):
            if cs.name == chosen:
                cid = cs.container_id or ""
        return PodRef(namespace=namespace, name=pod.metadata.name, uid=pod.metadata.uid or "",
                      container=chosen, container_id=cid,
                      node_name=pod.spec.node_name or "", via=path)

    def read_pod(self, name: str, namespace: str, what: str) -> Any:
        return self.api.get(what, "v1", namespace, "pods", name, "V1Pod")

    def selector(self, kind: str, name: str, namespace: str, path: str) -> str:
        what = f"target {path!r}: {kind} {name!r}"
        api = self.api
        if kind in ("deployment", "statefulset", "replicaset"):
            model = {"deployment": "V1Deployment", "statefulset": "V1StatefulSet",
                     "replicaset": "V1ReplicaSet"}[kind]
            obj = api.get(what, "apps/v1", namespace, f"{kind}s", name, model)
            return label_selector(obj.spec.selector)
        if kind == "job":
            obj = api.get(what, "batch/v1", namespace, "jobs", name, "V1Job")
            return label_selector(obj.spec.selector) or f"job-name={name}"
        if kind == "cronjob":
            api.get(what, "batch/v1", namespace, "cronjobs", name, "V1CronJob")
            jobs = api.list(f"target {path!r}: the jobs of cronjob {name!r}", "batch/v1",
                            namespace, "jobs", "V1JobList")
            own = [j for j in jobs if any(o.kind == "CronJob" and o.name == name
                                          for o in j.metadata.owner_references or [])]
            if not own:
                raise TargetError(f"target {path!r}: cronjob {name!r} has no job yet; wait for "
                                  "its next run or target a job/pod directly")
            latest = max(own, key=lambda j: str(j.metadata.creation_timestamp or ""))
            return self.selector("job", latest.metadata.name, namespace, path)
        if kind == "service":
            svc = api.get(what, "v1", namespace, "services", name, "V1Service")
            sel = svc.spec.selector or {}
            if not sel:
                raise TargetError(f"target {path!r}: service {name!r} has no selector (its "
                                  "endpoints are managed by hand); target a pod instead")
            return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
        if kind == "rollout":
            obj = api.get(what, "argoproj.io/v1alpha1", namespace, "rollouts", name)
            spec = obj.get("spec") or {}
            if spec.get("selector"):
                return label_selector(spec["selector"])
            ref = spec.get("workloadRef") or {}
            if ref.get("kind") == "Deployment" and ref.get("name"):
                return self.selector("deployment", ref["name"], namespace, path)
            raise TargetError(f"target {path!r}: rollout {name!r} has neither a selector nor "
                              "a Deployment workloadRef")
        raise TargetError(f"target {path!r}: unknown kind {kind!r}")

    def ready_pod(self, selector: str, namespace: str, path: str) -> Any:
        pods = self.api.list(f"target {path!r}: its pods", "v1", namespace, "pods",
                             "V1PodList", selector)
        if not pods:
            raise TargetError(f"target {path!r} has no pods in namespace {namespace!r} "
                              f"(selector {selector}); scale it up or check the name")
        states = [(pod_state(p), p) for p in pods]
        ready = [p for (ok, _), p in states if ok]
        if not ready:
            detail = ", ".join(f"{p.metadata.name}: {why}" for (_, why), p in states[:5])
            raise TargetError(f"target {path!r} has no ready pod in namespace {namespace!r} "
                              f"({detail}); wait until one is ready (kubectl get pods -n "
                              f"{namespace})")
        ready.sort(key=lambda p: (str(p.metadata.creation_timestamp or ""), p.metadata.name))
        return ready[0]
