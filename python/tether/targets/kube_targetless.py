"""Targetless Kubernetes sessions: no target, an agent pod of its own in a namespace.

With no ``target.path`` (or ``"path": "targetless"``) and a namespace tether can name
(``target.namespace`` / ``-n``, ``agent.namespace``, or the namespace the kubeconfig's
context sets), ``tether exec`` starts the agent as a pod of that namespace and the program
gets the namespace's **outgoing network and DNS** through it: cluster names, services and
pod addresses the laptop cannot reach.  There is no application to read an environment or
files from, nor traffic to mirror or steal, so those features are off (said once on the
terminal); asking to steal is an error.

The agent pod comes from a Job (``kube_agent.targetless_job``): the same progress output,
RBAC and clean-up as the Job strategy (deleted at session end; the agent exits
``agent.ttl`` seconds after its orchestrator left and ``ttlSecondsAfterFinished`` removes
the pod after that, so a dead laptop leaves nothing).  The port-forward goes to the agent's
own pod.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any

from ..config import Config, IncomingConfig
from . import AgentConnection, TargetError, kube_agent
from .kube_api import KubeApi
from .kube_resolve import PodRef
from .kubernetes import KubernetesTarget

log = logging.getLogger("tether")


def kube_configured(config: Config) -> bool:
    """Whether this machine has a Kubernetes configuration tether would use."""
    if config.kubeconfig or config.kube_context:
        return True
    paths = os.environ.get("KUBECONFIG", "")
    candidates = [p for p in paths.split(os.pathsep) if p] or [
        os.path.expanduser("~/.kube/config")]
    if any(os.path.isfile(os.path.expanduser(p)) for p in candidates):
        return True
    return "KUBERNETES_SERVICE_HOST" in os.environ


def targetless_namespace(config: Config, namespace: str | None) -> str | None:
    """The namespace a targetless session runs in, or None when none is named.

    ``-n`` / ``target.namespace`` first (the namespace whose network the user asked for),
    then ``agent.namespace``, then the namespace the kubeconfig's context *sets* (a
    context without one is not taken as a wish to run in "default").
    """
    if namespace:
        return namespace
    if config.agent.namespace:
        return config.agent.namespace
    if not kube_configured(config):
        return None
    api = KubeApi(config.kubeconfig, config.kube_context, config.accept_invalid_certificates)
    try:
        return api.context_namespace()
    except TargetError:
        return None


class TargetlessTarget(KubernetesTarget):
    """The agent runs as its own pod in ``namespace``; outgoing traffic and DNS only."""

    def __init__(self, namespace: str, config: Config | None = None) -> None:
        config = config or Config()
        super().__init__("targetless", namespace, config)
        # An ephemeral container needs a pod to join; there is none.
        self.agent_cfg = dataclasses.replace(self.agent_cfg, ephemeral=False)
        self._announced = False

    def describe(self) -> str:
        if self._agent_pod:
            return f"targetless (agent pod/{self._agent_pod} in namespace {self.namespace})"
        return f"targetless (namespace {self.namespace})"

    def check(self) -> None:
        incoming = self.config.feature.network.incoming
        if incoming.mode == "steal":
            raise TargetError(
                "a targetless session has no target to steal traffic from "
                "(feature.network.incoming.mode is 'steal'); name a target "
                "(-t deployment/<name>) or set feature.network.incoming to \"off\"")
        if self._announced:
            return
        self._announced = True  # check() runs before the fork and again in the orchestrator
        if incoming.mode == "mirror" and dataclasses.replace(
                incoming, mode="mirror") != IncomingConfig():
            log.warning("targetless: feature.network.incoming is ignored (no target to mirror "
                        "traffic from)")
        log.info("targetless session in namespace %s: the agent runs as a pod of its own; "
                 "outgoing traffic and DNS go through it (no environment, files or incoming "
                 "traffic: there is no target)", self.namespace)

    def effective_config(self, config: Config) -> Config:
        """The session's config: what needs a target is off (see Target.effective_config)."""
        return _targetless_features(config)

    async def start_agent(self, secret: str, log_level: str) -> AgentConnection:
        self.check()
        self._loop = asyncio.get_running_loop()
        self._dropped = self._loop.create_future()
        self.plan = kube_agent.plan(self.agent_cfg)
        deadline = time.monotonic() + float(self.agent_cfg.startup_timeout)
        await asyncio.to_thread(self._create_targetless, secret, log_level)
        await self._wait_running(deadline)
        log.info("agent running; connecting through the API server's port-forward")
        sock = await asyncio.to_thread(self._connect, deadline)
        return AgentConnection(sock, f"tether-agent (job/{self.plan.name}, targetless) in "
                                     f"pod/{self._agent_pod} (namespace {self.namespace})",
                               reconnect=self.reconnect_agent)

    async def reconnect_agent(self) -> Any:
        try:
            return await super().reconnect_agent()
        except TargetError as exc:
            raise TargetError(str(exc).replace("target pod/", "the agent's pod/", 1)) from None

    async def wait_gone(self) -> str:
        reason = await super().wait_gone()
        return reason.replace("target pod/", "the agent's pod/", 1)

    # ---- KubernetesTarget hooks ----
    def _agent_namespace(self) -> str:
        return self.namespace

    def _create_targetless(self, secret: str, log_level: str) -> None:
        assert self.plan is not None
        ns = self.namespace
        body = kube_agent.targetless_job(self.plan, self.agent_cfg, log_level)
        log.info("creating the agent (job/%s in namespace %s, targetless, image %s)",
                 self.plan.name, ns, self.plan.image)
        self._post_job(ns, body, secret)

    def _agent_state(self) -> tuple[str, str, str]:
        if self.pod is None:  # the agent's own pod is the one the session follows
            pods = self.api.list(f"the agent's pod (job/{self._job})", "v1", self.namespace,
                                 "pods", "V1PodList", f"job-name={self._job}")
            if not pods:
                return "pending", "", ""
            meta = pods[0].metadata
            self.pod = PodRef(namespace=self.namespace, name=meta.name, uid=meta.uid,
                              container="agent", container_id="",
                              node_name=(pods[0].spec.node_name or ""), via="targetless")
            self._agent_pod, self._agent_container = meta.name, "agent"
            log.info("agent pod %s scheduled", meta.name)
        return super()._agent_state()


def _targetless_features(config: Config) -> Config:
    """``config`` with what needs a target turned off: environment, files, incoming."""
    feature = config.feature
    network = dataclasses.replace(feature.network,
                                  incoming=IncomingConfig(mode="off"))
    new = dataclasses.replace(feature, env=dataclasses.replace(feature.env, enabled=False),
                              fs=dataclasses.replace(feature.fs, mode="local"),
                              network=network)
    return dataclasses.replace(config, feature=new)
