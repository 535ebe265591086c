"""Targets: what a session acts inside (a local process today, Kubernetes workloads next).

``resolve_target`` turns the user's target path into an object that can start the agent.
Every target gives the orchestrator the same thing: an authenticated link to an agent.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Config


class TargetError(Exception):
    """The target cannot be used; the message says why and what to do."""


@dataclass
class AgentConnection:
    sock: socket.socket
    description: str
    # A new connection to the same agent after this one dropped (tether.reconnect); None
    # when a dropped connection means the agent is gone (a process target's socketpair).
    # Raises TargetError when the agent or the target is really gone.
    reconnect: Callable[[], Awaitable[socket.socket]] | None = None


class Target(Protocol):
    def describe(self) -> str: ...

    def check(self) -> None:
        """Raise TargetError if the target does not exist or cannot be used."""

    async def start_agent(self, secret: str, log_level: str) -> AgentConnection: ...

    async def wait_gone(self) -> str:
        """Return (with a reason) when the target stops existing."""

    async def stop_agent(self) -> None: ...


def effective_config(target: Target, config: Config) -> Config:
    """The config the session runs with: a target may switch off what it cannot serve
    (a targetless agent has no environment, files or incoming traffic to give)."""
    adjust = getattr(target, "effective_config", None)
    return config if adjust is None else adjust(config)


def resolve_target(path: str | None, namespace: str | None = None,
                   config: Config | None = None) -> Target:
    from .process import ProcessTarget

    if not path or path == "targetless":
        return _targetless(namespace, config)
    kind, _, rest = path.partition("/")
    if kind == "process":
        try:
            pid = int(rest)
        except ValueError:
            raise TargetError(
                f"target {path!r}: expected process/<pid> with a numeric pid") from None
        return ProcessTarget(pid)
    if kind in {"pod", "deployment", "statefulset", "replicaset", "job", "cronjob", "service",
                "rollout"}:
        from .kubernetes import KubernetesTarget

        return KubernetesTarget(path, namespace, config)
    raise TargetError(
        f"target {path!r}: unknown kind {kind!r} (expected process/<pid>, pod/<name>, "
        "deployment/<name>, ...)"
    )


def _targetless(namespace: str | None, config: Config | None) -> Target:
    """No target: an agent pod of its own in a Kubernetes namespace, when one is named."""
    from ..config import Config
    from .kube_targetless import TargetlessTarget, kube_configured, targetless_namespace

    config = config or Config()
    ns = targetless_namespace(config, namespace)
    if ns:
        return TargetlessTarget(ns, config)
    if kube_configured(config):
        raise TargetError(
            "no target given: pass --target process/<pid> or a Kubernetes target "
            "(deployment/<name>, ...), or a namespace (-n <namespace>) for a targetless "
            "session (outgoing traffic and DNS only)")
    raise TargetError(
        "no target given: pass --target process/<pid> (or set target.path in the config file)"
    )
