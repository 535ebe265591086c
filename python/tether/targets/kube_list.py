"""``tether ls``: the targets of a namespace, as the paths ``--target`` accepts.

Lists pods (running ones; ``pod/<name>/container/<c>`` for each container of a multi-
container pod), deployments, statefulsets, jobs, cronjobs, services with a selector and
Argo rollouts (when that resource exists).  A kind the user may not list is skipped with
a warning naming the RBAC rule; only when nothing can be listed is it an error.
"""

from __future__ import annotations

import logging
from typing import Any

from . import TargetError
from .kube_api import KubeApi

log = logging.getLogger("tether")

# (kind in paths, group/version, plural, list model)
LISTED = (
    ("deployment", "apps/v1", "deployments", "V1DeploymentList"),
    ("statefulset", "apps/v1", "statefulsets", "V1StatefulSetList"),
    ("job", "batch/v1", "jobs", "V1JobList"),
    ("cronjob", "batch/v1", "cronjobs", "V1CronJobList"),
    ("service", "v1", "services", "V1ServiceList"),
    ("rollout", "argoproj.io/v1alpha1", "rollouts", "object"),
    ("pod", "v1", "pods", "V1PodList"),
)


def _paths(kind: str, item: Any) -> list[str]:
    if isinstance(item, dict):  # custom resources come back as plain JSON
        return [f"{kind}/{item['metadata']['name']}"]
    name = item.metadata.name
    if kind == "service" and not (item.spec and item.spec.selector):
        return []
    if kind == "pod":
        if item.status is None or item.status.phase != "Running":
            return []
        containers = [c.name for c in item.spec.containers]
        if len(containers) == 1:
            return [f"pod/{name}"]
        return [f"pod/{name}/container/{c}" for c in containers]
    return [f"{kind}/{name}"]


def list_targets(api: KubeApi, namespace: str) -> list[str]:
    found: list[str] = []
    errors: list[str] = []
    for kind, gv, plural, model in LISTED:
        try:
            items = api.list(f"listing {plural}", gv, namespace, plural, model)
        except TargetError as exc:
            text = str(exc)
            if text.startswith("cannot reach"):
                raise
            if kind == "rollout" and "not found" in text:
                continue  # Argo Rollouts is not installed in this cluster
            errors.append(text)
            continue
        for item in items:
            found.extend(_paths(kind, item))
    if errors and not found:  # one error, not one line per kind that failed
        raise TargetError(errors[0] if len(errors) == 1 else
                          f"{errors[0]} (and {len(errors) - 1} more kinds of target could "
                          "not be listed either)")
    for text in errors:  # some kinds listed: say which could not be
        log.warning("%s", text)
    return sorted(found, key=lambda p: ([k for k, *_ in LISTED].index(p.split("/")[0]), p))
