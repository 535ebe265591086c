"""The agent's Kubernetes objects: an ephemeral container, or a Job pinned to the node.

Pure functions from (target pod, agent settings, session) to API bodies; no I/O here, so
the shapes are tested without a cluster.  Both strategies make the agent listen on
``127.0.0.1:<port>`` *inside the target pod's network namespace*, so the orchestrator
always reaches it through the target pod's port-forward:

* ephemeral: the container joins the pod's network namespace and, through
  ``targetContainerName``, the app container's process namespace (the app is pid 1);
* job: a pod on the target's node with ``hostPID`` finds the app container's process by
  its container id (``/proc/*/cgroup``) and enters its network namespace.

Targetless sessions (``targetless_job``) have no target pod: the agent's own pod is the
network context and the port-forward goes to it.

The session secret lives in a Secret of its own (``secret_object``), never in a pod or Job
spec, so whoever may only get pods and jobs cannot read it: the Job's pod mounts it as a
file (``--secret-file``); an ephemeral container (which cannot add volumes to a pod) gets
it through ``env.valueFrom.secretKeyRef``.  The Secret is owned by the Job (or by the target
pod for an ephemeral container), so the garbage collector removes it with its owner.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..config import AgentConfig
from .kube_resolve import PodRef

DEFAULT_IMAGE = f"ghcr.io/tether-dev/tether-agent:{__version__}"
CAPABILITIES = ("SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW")
LABELS = {"app.kubernetes.io/name": "tether-agent", "app.kubernetes.io/managed-by": "tether"}
# Short of the user's own: small, so a crowded node still schedules it.
DEFAULT_RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"},
                     "limits": {"cpu": "500m", "memory": "256Mi"}}
DEFAULT_TOLERATIONS = [{"operator": "Exists"}]


@dataclass(frozen=True)
class AgentPlan:
    name: str  # container name (ephemeral) or Job name
    port: int
    image: str


def plan(agent: AgentConfig) -> AgentPlan:
    suffix = secrets.token_hex(3)
    return AgentPlan(name=f"tether-agent-{suffix}",
                     port=40000 + secrets.randbelow(20000),
                     image=agent.image or DEFAULT_IMAGE)


def _capabilities(agent: AgentConfig) -> list[str]:
    disabled = {c.upper().removeprefix("CAP_") for c in agent.disabled_capabilities}
    return [c for c in CAPABILITIES if c not in disabled]


def _idle_exit(agent: AgentConfig) -> str:
    return str(max(1, int(agent.ttl)))


SECRET_KEY = "secret"
SECRET_DIR = "/var/run/tether"
SECRET_VOLUME = "session-secret"


def secret_object(p: AgentPlan, secret: str, owner: dict[str, Any]) -> dict[str, Any]:
    """The Secret holding the session secret (same name as the agent), owned by ``owner``
    (an ownerReference: the Job, or the target pod for an ephemeral container)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": p.name, "labels": dict(LABELS), "ownerReferences": [owner]},
        "type": "Opaque",
        "data": {SECRET_KEY: base64.b64encode(secret.encode()).decode()},
    }


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "blockOwnerDeletion": False}


def _env(agent: AgentConfig, p: AgentPlan | None = None) -> list[dict[str, Any]]:
    """The agent's environment; with ``p``, the secret comes from the Secret by reference."""
    env: list[dict[str, Any]] = []
    if p is not None:
        env.append({"name": "TETHER_AGENT_SECRET", "valueFrom": {
            "secretKeyRef": {"name": p.name, "key": SECRET_KEY}}})
    if agent.json_log:
        env.append({"name": "TETHER_LOG_JSON", "value": "1"})
    return env


def _secret_volume(p: AgentPlan) -> dict[str, Any]:
    return {"name": SECRET_VOLUME, "secret": {"secretName": p.name, "defaultMode": 0o400}}


_SECRET_MOUNT = {"name": SECRET_VOLUME, "mountPath": SECRET_DIR, "readOnly": True}
_SECRET_ARGS = ["--secret-file", f"{SECRET_DIR}/{SECRET_KEY}"]


def ephemeral_container(p: AgentPlan, target: PodRef, agent: AgentConfig,
                        log_level: str) -> dict[str, Any]:
    """The body for ``PATCH pods/<name>/ephemeralcontainers`` (strategic merge)."""
    container: dict[str, Any] = {
        "name": p.name,
        "image": p.image,
        "imagePullPolicy": agent.image_pull_policy,
        "command": ["tether-agent"],
        "args": ["--listen", f"127.0.0.1:{p.port}", "--target-pid", "1",
                 "--idle-exit", _idle_exit(agent), "--log-level", log_level],
        "env": _env(agent, p),
        "targetContainerName": target.container,
        "securityContext": {"privileged": bool(agent.privileged),
                            "capabilities": {"add": _capabilities(agent)}},
    }
    return {"spec": {"ephemeralContainers": [container]}}


def job(p: AgentPlan, target: PodRef, agent: AgentConfig, log_level: str) -> dict[str, Any]:
    """A Job on the target's node whose agent enters the target container's netns."""
    labels = {**LABELS, "tether.dev/target-pod": target.name[:63], **dict(agent.labels)}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostPID": True,
        "nodeName": target.node_name or None,
        "tolerations": list(agent.tolerations) if agent.tolerations is not None
        else DEFAULT_TOLERATIONS,
        "containers": [{
            "name": "agent",
            "image": p.image,
            "imagePullPolicy": agent.image_pull_policy,
            "command": ["tether-agent"],
            "args": ["--container-id", target.container_id, "--enter-netns",
                     "--listen", f"127.0.0.1:{p.port}", "--idle-exit", _idle_exit(agent),
                     "--log-level", log_level, *_SECRET_ARGS],
            "env": _env(agent),
            "volumeMounts": [dict(_SECRET_MOUNT)],
            "resources": dict(agent.resources) if agent.resources is not None
            else DEFAULT_RESOURCES,
            "securityContext": {"privileged": bool(agent.privileged),
                                "capabilities": {"add": _capabilities(agent)}},
        }],
        "volumes": [_secret_volume(p)],
    }
    return _job_body(p, labels, agent, pod_spec)


def targetless_job(p: AgentPlan, agent: AgentConfig, log_level: str) -> dict[str, Any]:
    """A Job whose pod *is* the agent's network context (no target: outgoing and DNS only).

    The agent runs as the pod's main process with ``--targetless`` (it acts in its own
    namespaces), so it needs no hostPID, no node and no capabilities: it is an ordinary pod
    of the namespace, which Pod Security "baseline" admits.  A Job rather than a bare Pod:
    ``ttlSecondsAfterFinished`` removes the pod after the agent's idle exit when the laptop
    died, and the RBAC is the Job strategy's.
    """
    labels = {**LABELS, "tether.dev/targetless": "true", **dict(agent.labels)}
    security: dict[str, Any] = (
        {"privileged": True} if agent.privileged else
        {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
         "seccompProfile": {"type": "RuntimeDefault"}})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "agent",
            "image": p.image,
            "imagePullPolicy": agent.image_pull_policy,
            "command": ["tether-agent"],
            "args": ["--targetless", "--listen", f"127.0.0.1:{p.port}",
                     "--idle-exit", _idle_exit(agent), "--log-level", log_level,
                     *_SECRET_ARGS],
            "env": _env(agent),
            "volumeMounts": [dict(_SECRET_MOUNT)],
            "resources": dict(agent.resources) if agent.resources is not None
            else DEFAULT_RESOURCES,
            "securityContext": security,
        }],
        "volumes": [_secret_volume(p)],
    }
    if agent.tolerations is not None:  # no target node to follow: the scheduler's default
        pod_spec["tolerations"] = list(agent.tolerations)
    return _job_body(p, labels, agent, pod_spec)


def _job_body(p: AgentPlan, labels: dict[str, str], agent: AgentConfig,
              pod_spec: dict[str, Any]) -> dict[str, Any]:
    if agent.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in agent.image_pull_secrets]
    if agent.service_account:
        pod_spec["serviceAccountName"] = agent.service_account
    if agent.priority_class:
        pod_spec["priorityClassName"] = agent.priority_class
    if agent.node_selector:
        pod_spec["nodeSelector"] = dict(agent.node_selector)
    pod_spec = {k: v for k, v in pod_spec.items() if v is not None}
    meta = {"name": p.name, "labels": labels, "annotations": dict(agent.annotations)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": int(agent.ttl),
            "template": {"metadata": {"labels": labels,
                                      "annotations": dict(agent.annotations)},
                         "spec": pod_spec},
        },
    }
