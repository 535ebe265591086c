"""Kubernetes targets: ``pod/``, ``deployment/``, ... ``rollout/`` (``/container/<name>``).

``check`` resolves the target to one running, ready pod (kube_resolve).  ``start_agent``
starts the agent next to it with the strategy ``agent.ephemeral`` picks (kube_agent),
shows progress on the terminal while the image is pulled and the container starts,
warns on ImagePullBackOff, and connects through the target pod's port-forward
(kube_portforward).  ``wait_gone`` ends the session when the pod is deleted or replaced,
or when the port-forward drops; ``stop_agent`` closes the connection and deletes the
Job.  An ephemeral container cannot be removed from a pod: its agent exits by itself
``agent.ttl`` seconds after its orchestrator left, like the Job's (which the API server
then deletes after ``ttlSecondsAfterFinished``), so nothing outlives a dead laptop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..config import AgentConfig, Config
from . import AgentConnection, TargetError, kube_agent
from .kube_api import KubeApi, Rule, resource_path, status_message
from .kube_portforward import Bridge
from .kube_resolve import PodRef, Resolver

log = logging.getLogger("tether")

_PULL_TROUBLE = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_FATAL_WAITING = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                  "InvalidImageName", "ErrImageNeverPull"}


class KubernetesTarget:
    def __init__(self, path: str, namespace: str | None, config: Config | None = None) -> None:
        config = config or Config()
        self.path = path
        self.config = config
        self.agent_cfg: AgentConfig = config.agent
        self.api = KubeApi(config.kubeconfig, config.kube_context,
                           config.accept_invalid_certificates)
        self._namespace = namespace
        self.pod: PodRef | None = None
        self.plan: kube_agent.AgentPlan | None = None
        self._job: str | None = None  # Job name (job strategy)
        self._agent_pod: str | None = None  # the pod running the agent's container
        self._agent_container: str | None = None
        self._bridge: Bridge | None = None
        self._secret: tuple[str, str] | None = None  # the session's Secret: (namespace, name)
        self._dropped: asyncio.Future[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- Target protocol ----
    @property
    def namespace(self) -> str:
        if self._namespace:
            return self._namespace
        self.api.client()
        return self.api.default_namespace

    def describe(self) -> str:
        if self.pod is not None and self.path.split("/")[0] != "pod":
            return f"{self.path} (pod/{self.pod.name}) in namespace {self.pod.namespace}"
        return f"{self.path} in namespace {self.namespace}"

    def check(self) -> None:
        if self.pod is None:
            self.pod = Resolver(self.api).resolve(self.path, self.namespace)
            log.debug("target %s is %s", self.path, self.pod.describe())

    async def start_agent(self, secret: str, log_level: str) -> AgentConnection:
        self.check()
        assert self.pod is not None
        self._loop = asyncio.get_running_loop()
        self._dropped = self._loop.create_future()
        self.plan = kube_agent.plan(self.agent_cfg)
        deadline = time.monotonic() + float(self.agent_cfg.startup_timeout)
        if self.agent_cfg.ephemeral:
            await asyncio.to_thread(self._create_ephemeral, secret, log_level)
        else:
            await asyncio.to_thread(self._create_job, secret, log_level)
        await self._wait_running(deadline)
        log.info("agent running; connecting through the API server's port-forward")
        sock = await asyncio.to_thread(self._connect, deadline)
        where = (f"ephemeral container {self.plan.name}" if self.agent_cfg.ephemeral
                 else f"job/{self.plan.name}")
        return AgentConnection(sock, f"tether-agent ({where}) in {self.pod.describe()}",
                               reconnect=self.reconnect_agent)

    async def reconnect_agent(self) -> Any:
        """A new port-forward to the agent after the last one dropped (tether.reconnect);
        TargetError when the agent or the target pod is gone for good."""
        gone = await asyncio.to_thread(self._pod_gone)
        if gone:
            raise TargetError(gone)
        kind, _reason, _message = await asyncio.to_thread(self._agent_state)
        if kind == "terminated":
            raise TargetError(f"the agent exited ({await self.agent_failure()})")
        if self._bridge is not None:
            self._bridge.stop()
        return await asyncio.to_thread(self._connect, time.monotonic() + 5.0, True)

    async def agent_failure(self) -> str:
        return await asyncio.to_thread(self._failure_reason)

    async def wait_gone(self) -> str:
        assert self.pod is not None and self._dropped is not None
        watch = asyncio.ensure_future(self._watch_pod())
        done, _ = await asyncio.wait([watch, self._dropped],
                                     return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if watch in done:
            return str(watch.result())
        # The port-forward dropped: say so, unless the pod itself went away.
        try:
            gone = await asyncio.wait_for(asyncio.to_thread(self._pod_gone), 0.8)
        except TimeoutError:
            gone = None
        return gone or self._dropped.result()

    async def stop_agent(self) -> None:
        if self._bridge is not None:
            await asyncio.to_thread(self._bridge.stop, 1.0)
        if self._secret is not None:
            await asyncio.to_thread(self._delete_secret)
        if self._job is not None:
            job, self._job = self._job, None
            try:
                await asyncio.to_thread(self._delete_job, job)
            except TargetError as exc:
                log.warning("could not delete job/%s (%s); it goes away after agent.ttl", job,
                            exc)

    # ---- agent start ----
    def _agent_namespace(self) -> str:
        assert self.pod is not None
        return self.agent_cfg.namespace or self.pod.namespace

    def _create_secret(self, ns: str, secret: str, owner: dict[str, Any]) -> None:
        """The session secret as a Secret of its own (kube_agent.secret_object)."""
        assert self.plan is not None
        body = kube_agent.secret_object(self.plan, secret, owner)
        self.api.call(f"secret/{self.plan.name}", Rule("", "secrets", "create"), ns,
                      self.api.request, "POST", resource_path("v1", ns, "secrets"), body=body)
        self._secret = (ns, self.plan.name)

    def _delete_secret(self) -> None:
        if self._secret is None:
            return
        ns, name = self._secret
        self._secret = None
        try:
            self.api.call(f"secret/{name}", Rule("", "secrets", "delete"), ns,
                          self.api.request, "DELETE", resource_path("v1", ns, "secrets", name))
        except TargetError as exc:
            if "not found" not in str(exc):
                log.warning("could not delete secret/%s (%s); it goes away with its owner",
                            name, exc)

    def _create_ephemeral(self, secret: str, log_level: str) -> None:
        assert self.pod is not None and self.plan is not None
        # The Secret first (the container reads it at start), owned by the target pod.
        self._create_secret(self.pod.namespace, secret, kube_agent.owner_reference(
            "v1", "Pod", self.pod.name, self.pod.uid))
        body = kube_agent.ephemeral_container(self.plan, self.pod, self.agent_cfg, log_level)
        log.info("creating the agent (ephemeral container %s in pod/%s, image %s)",
                 self.plan.name, self.pod.name, self.plan.image)
        try:
            self.api.request(
                "PATCH", resource_path("v1", self.pod.namespace, "pods", self.pod.name,
                                       "ephemeralcontainers"),
                body=body, content_type="application/strategic-merge-patch+json")
        except Exception as exc:
            self._raise_start_error(exc, Rule("", "pods/ephemeralcontainers", "patch"),
                                    self.pod.namespace, "ephemeral container")
        self._agent_pod, self._agent_container = self.pod.name, self.plan.name

    def _create_job(self, secret: str, log_level: str) -> None:
        assert self.pod is not None and self.plan is not None
        if not self.pod.container_id:
            raise TargetError(f"target {self.path}: container {self.pod.container} of pod "
                              f"{self.pod.name} has no container id yet; retry in a moment")
        ns = self._agent_namespace()
        body = kube_agent.job(self.plan, self.pod, self.agent_cfg, log_level)
        log.info("creating the agent (job/%s in namespace %s on node %s, image %s)",
                 self.plan.name, ns, self.pod.node_name or "?", self.plan.image)
        self._post_job(ns, body, secret)

    def _post_job(self, ns: str, body: dict[str, Any], secret: str) -> None:
        """Create the agent's Job, then its Secret owned by the Job (the pod waits for the
        Secret's volume, as a kubelet does)."""
        assert self.plan is not None
        try:
            created = self.api.request("POST", resource_path("batch/v1", ns, "jobs"), body=body)
        except Exception as exc:
            self._raise_start_error(exc, Rule("batch", "jobs", "create"), ns, "job")
        self._job = self.plan.name
        uid = str(((created or {}).get("metadata") or {}).get("uid") or "")
        self._create_secret(ns, secret, kube_agent.owner_reference(
            "batch/v1", "Job", self.plan.name, uid))

    def _raise_start_error(self, exc: Exception, rule: Rule, ns: str, what: str) -> None:
        from kubernetes.client.rest import ApiException

        if not isinstance(exc, ApiException):
            raise exc
        status = int(exc.status or 0)
        msg = status_message(exc)
        if status == 422 and what == "ephemeral container":
            raise TargetError(
                f"the API server refused the agent's ephemeral container in pod/"
                f"{self.pod.name if self.pod else '?'}: {msg}; set agent.ephemeral to false "
                "to start the agent as a Job instead") from None
        if status == 404 and what == "ephemeral container":
            raise TargetError(f"pod/{self.pod.name if self.pod else '?'} disappeared before "
                              "the agent could start; run the command again") from None
        raise self.api.error(f"starting the agent ({what})", rule, ns, exc) from None

    async def _wait_running(self, deadline: float) -> None:
        shown: set[str] = set()
        delay = 0.05
        while True:
            state = await asyncio.to_thread(self._agent_state)
            kind, reason, message = state
            if kind == "running":
                return
            if kind == "terminated":
                raise TargetError(f"the agent exited while starting in {self.describe()}: "
                                  f"{await self.agent_failure()}")
            key = f"{kind}:{reason}"
            if reason in _PULL_TROUBLE and key not in shown:
                log.warning("cannot pull the agent image %s (%s: %s); check agent.image, "
                            "agent.image_pull_secrets, or push the image (docs/kubernetes.md)",
                            self.plan.image if self.plan else "?", reason, message)
            elif reason in _FATAL_WAITING:
                raise TargetError(f"the agent container cannot start ({reason}: {message})")
            elif key not in shown and reason:
                log.info("agent %s: %s", "pending" if kind == "pending" else "waiting",
                         {"ContainerCreating": "creating the container (pulling the image)",
                          "PodInitializing": "pod initializing"}.get(reason, reason))
            shown.add(key)
            if time.monotonic() > deadline:
                hint = (f" ({reason}: {message})" if reason else "")
                raise TargetError(
                    f"the agent did not start within agent.startup_timeout="
                    f"{self.agent_cfg.startup_timeout}s{hint}; raise the timeout or check the "
                    f"agent with `kubectl describe pod -n {self._agent_namespace()}`")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _agent_state(self) -> tuple[str, str, str]:
        """("pending"|"waiting"|"running"|"terminated", reason, message)."""
        assert self.pod is not None and self.plan is not None
        if self._job is not None and self._agent_pod is None:
            ns = self._agent_namespace()
            pods = self.api.list(f"the agent's pod (job/{self._job})", "v1", ns, "pods",
                                 "V1PodList", f"job-name={self._job}")
            if not pods:
                return "pending", "", ""
            self._agent_pod, self._agent_container = pods[0].metadata.name, "agent"
            log.info("agent pod %s scheduled", self._agent_pod)
        ns = self._agent_namespace() if self._job else self.pod.namespace
        pod = self.api.get(f"pod/{self._agent_pod}", "v1", ns, "pods", self._agent_pod, "V1Pod")
        statuses = (pod.status.ephemeral_container_statuses if self.agent_cfg.ephemeral
                    else pod.status.container_statuses) or []
        for cs in statuses:
            if cs.name != self._agent_container or cs.state is None:
                continue
            if cs.state.running is not None:
                return "running", "", ""
            if cs.state.terminated is not None:
                t = cs.state.terminated
                return "terminated", t.reason or "", t.message or ""
            if cs.state.waiting is not None:
                return "waiting", cs.state.waiting.reason or "", cs.state.waiting.message or ""
        return "pending", "", ""

    def _open_forward(self) -> Any:
        assert self.pod is not None and self.plan is not None
        return self.api.portforward(self.pod.namespace, self.pod.name, self.plan.port)

    def _connect(self, deadline: float, again: bool = False) -> Any:
        from kubernetes.client.rest import ApiException

        assert self.pod is not None and self.plan is not None
        try:
            forward = self._open_forward()
        except ApiException as exc:
            reason = str(exc.reason or exc)
            if "403" in reason:
                rule = Rule("", "pods/portforward", "create")
                raise TargetError(f"port-forward to pod/{self.pod.name} is forbidden; add this "
                                  f"rule to your Role in namespace {self.pod.namespace!r}: "
                                  f"{rule.yaml()}") from None
            raise TargetError(f"cannot open a port-forward to pod/{self.pod.name}: "
                              f"{reason}") from None
        self._bridge = Bridge(self._open_forward, self.plan.port,
                              connect_deadline=deadline,
                              on_drop=(lambda _reason: None) if again else self._on_drop,
                              what=f"pod/{self.pod.name}")
        return self._bridge.start(forward)

    def _on_drop(self, reason: str) -> None:  # called from the bridge's thread
        loop, fut = self._loop, self._dropped
        if loop is None or fut is None:
            return

        def settle() -> None:
            if not fut.done():
                fut.set_result(reason)

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # loop closed: the session is over anyway
            pass

    # ---- failure, watch, cleanup ----
    def _failure_reason(self) -> str:
        """The agent's own last words (its log), or its container state."""
        if self._agent_pod is None or self._agent_container is None:
            return "the agent was not created"
        ns = self._agent_namespace() if self._job else (self.pod.namespace if self.pod else "")
        try:
            text = self.api.request(
                "GET", resource_path("v1", ns, "pods", self._agent_pod, "log"),
                query={"container": self._agent_container, "tailLines": 50},
                response_type="str")
        except Exception:  # noqa: BLE001 - fall back to the container state
            text = ""
        for line in reversed(str(text or "").splitlines()):
            if line.startswith("tether-agent: "):
                return line[len("tether-agent: "):]
        try:
            kind, reason, message = self._agent_state()
        except TargetError as exc:
            return str(exc)
        return f"agent container {kind}" + (f" ({reason}: {message})" if reason else "")

    def _pod_gone(self) -> str | None:
        """Why the target pod is no longer usable, or None while it is."""
        assert self.pod is not None
        ref = self.pod
        try:
            pod = self.api.request("GET", resource_path("v1", ref.namespace, "pods", ref.name),
                                   response_type="V1Pod", timeout=10)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "status", None) == 404:
                return f"target pod/{ref.name} was deleted"
            log.debug("watching pod/%s: %s", ref.name, exc)
            return None
        if pod.metadata.uid != ref.uid:
            return f"target pod/{ref.name} was replaced"
        if pod.metadata.deletion_timestamp is not None:
            return f"target pod/{ref.name} is being deleted"
        if pod.status and pod.status.phase in ("Succeeded", "Failed"):
            return f"target pod/{ref.name} has stopped ({pod.status.phase})"
        return None

    async def _watch_pod(self) -> str:
        while True:
            await asyncio.sleep(2.0)
            gone = await asyncio.to_thread(self._pod_gone)
            if gone:
                return gone

    def _delete_job(self, name: str) -> None:
        ns = self._agent_namespace()
        self.api.call(f"job/{name}", Rule("batch", "jobs", "delete"), ns, self.api.request,
                      "DELETE", resource_path("batch/v1", ns, "jobs", name),
                      query={"propagationPolicy": "Background"})
