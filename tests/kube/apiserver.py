"""A stand-in Kubernetes API server for tether's tests (no control plane can run here).

It speaks the real wire protocol to the real ``kubernetes`` client through a generated
kubeconfig: JSON objects built from the client's own models
(``ApiClient().sanitize_for_serialization(V1Pod(...))``), errors as ``V1Status`` (401,
403 with the RBAC sentence of a real API server, 404, 409, 422), strategic-merge / merge /
JSON patches of ``pods/<name>/ephemeralcontainers``, container logs, and the
``pods/<name>/portforward`` subresource over the ``v4.channel.k8s.io`` websocket
subprotocol.  aiohttp serves it: it is already installed as a dependency of the
``kubernetes`` client itself, so the stand-in adds no package.

Its "kubelet" realizes pods as tether.testbed network namespaces running real processes.
Containers of the agent run the real ``tether-agent`` of this checkout:

* an ephemeral container joins the pod's network namespace (``nsenter --net``); pods here
  share the host's pid namespace, so the one translation the stand-in makes is the one a
  pid namespace would make: ``--target-pid 1`` becomes the host pid of the target
  container's first process;
* a Job's pod runs its container on the host (``hostPID``), where the agent finds the
  target container by the container id in ``/proc/<pid>/cgroup``: app containers are
  placed in a ``pids`` cgroup named after their container id, as runtimes do.

Images: only names ending in ``tether-agent`` (any registry/tag) "exist" (``images``);
anything else stays in ErrImagePull/ImagePullBackOff, like a real kubelet.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ctypes
import datetime
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from kubernetes import client as k
from tether.targets.process import agent_command
from tether.testbed import PodFactory

TOKEN = "tether-stand-in-token"
USER = "tether-dev"
NODE = "stand-in-node"
CGROUP_ROOT = Path("/sys/fs/cgroup/pids/tether-kube")
_SERIALIZER = k.ApiClient()

# (group, version, plural) -> kind
RESOURCES = {
    ("", "v1", "pods"): "Pod",
    ("", "v1", "services"): "Service",
    ("", "v1", "endpoints"): "Endpoints",
    ("", "v1", "secrets"): "Secret",
    ("apps", "v1", "deployments"): "Deployment",
    ("apps", "v1", "replicasets"): "ReplicaSet",
    ("apps", "v1", "statefulsets"): "StatefulSet",
    ("batch", "v1", "jobs"): "Job",
    ("batch", "v1", "cronjobs"): "CronJob",
}


def ser(model: Any) -> dict[str, Any]:
    return _SERIALIZER.sanitize_for_serialization(model)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def response(self) -> web.Response:
        status = ser(k.V1Status(api_version="v1", kind="Status", metadata=k.V1ListMeta(),
                                status="Failure", message=self.message, reason=self.reason,
                                code=self.code))
        if self.details:
            status["details"] = self.details
        return web.json_response(status, status=self.code)


def not_found(plural: str, name: str, group: str = "") -> ApiError:
    what = f"{plural}.{group}" if group else plural
    return ApiError(404, "NotFound", f'{what} "{name}" not found', {"name": name, "kind": plural})


def matches(selector: str, labels: dict[str, str]) -> bool:
    for term in re.findall(r"[^,()]+(?:\([^)]*\))?", selector or ""):
        term = term.strip()
        if not term:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            values = {v.strip() for v in m.group(3).split(",")}
            inside = labels.get(m.group(1)) in values
            if inside != (m.group(2) == "in"):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _setns_socket(netns_path: str) -> socket.socket:
    """A TCP socket created inside a network namespace (from a throwaway thread)."""
    out: dict[str, Any] = {}

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["sock"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]


# Exit 0 when the DNS server on 127.0.0.1 answers an A record for argv[1].
_DNS_PROBE = r"""
import socket, struct, sys
q = struct.pack(">HHHHHH", 7, 0x100, 1, 0, 0, 0) + b"".join(
    bytes([len(p)]) + p.encode() for p in sys.argv[1].split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(q, ("127.0.0.1", 53))
sys.exit(0 if struct.unpack(">H", s.recv(512)[6:8])[0] > 0 else 1)
"""


class Container:
    """A running container process of the kubelet (agent containers)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log


class Cluster:
    """State + kubelet + controllers; the HTTP layer is in :class:`StandIn`."""

    def __init__(self, pods: PodFactory, workdir: Path) -> None:
        self.pods = pods
        self.workdir = workdir
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name)
        self.forbidden: set[tuple[str, str, str]] = set()  # (verb, resource, namespace|"*")
        self.images = re.compile(r"(^|/)tether-agent(:[^/]*)?$")
        self.netns: dict[str, Any] = {}  # pod name -> testbed Pod
        self.containers: dict[tuple[str, str, str], Container] = {}  # (ns, pod, container)
        self.cgroups: list[Path] = []
        self.forwards: set[web.WebSocketResponse] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._rv = 1000
        self._cluster_net: Any = None
        self._dns: Any = None
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._kubelet_loop, daemon=True)
        self._monitor.start()

    # ---- store ----
    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        with self.lock:
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            self.objects[(plural, meta.get("namespace", ""), meta["name"])] = obj
        return obj

    def get(self, plural: str, ns: str, name: str, group: str = "") -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                raise not_found(plural, name, group)
            return obj

    def list(self, plural: str, ns: str, selector: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [o for (p, n, _), o in sorted(self.objects.items())
                    if p == plural and n == ns
                    and matches(selector, o["metadata"].get("labels") or {})]

    def check_rbac(self, verb: str, resource: str, ns: str, name: str | None,
                   group: str = "") -> None:
        if {(verb, resource, ns), (verb, resource, "*")} & self.forbidden:
            what = f'{resource.split("/")[0]} "{name}"' if name else resource.split("/")[0]
            raise ApiError(403, "Forbidden",
                           f'{what} is forbidden: User "{USER}" cannot {verb} resource '
                           f'"{resource}" in API group "{group}" in the namespace "{ns}"')

    def forbid(self, verb: str, resource: str, namespace: str = "*") -> None:
        self.forbidden.add((verb, resource, namespace))

    # ---- workloads the tests create ----
    def deploy(self, name: str, namespace: str = "staging", *, env: dict[str, str] | None = None,
               cmd: list[str] | None = None, replicas: int = 1, ready: bool = True,
               containers: tuple[str, ...] = ("app",), port: int = 8080,
               service: bool = True) -> list[dict[str, Any]]:
        """A Deployment, its ReplicaSet and pods (realized as netns), and a Service."""
        labels = {"app": name}
        template = k.V1PodTemplateSpec(
            metadata=k.V1ObjectMeta(labels=labels),
            spec=k.V1PodSpec(containers=[
                k.V1Container(name=c, image=f"ghcr.io/example/{name}:1.0",
                              env=[k.V1EnvVar(name=a, value=b) for a, b in (env or {}).items()],
                              ports=[k.V1ContainerPort(container_port=port)])
                for c in containers]))
        dep = ser(k.V1Deployment(
            api_version="apps/v1", kind="Deployment",
            metadata=k.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
            spec=k.V1DeploymentSpec(replicas=replicas, selector=k.V1LabelSelector(
                match_labels=labels), template=template),
            status=k.V1DeploymentStatus(replicas=replicas,
                                        ready_replicas=replicas if ready else 0)))
        self.put("deployments", dep)
        rs_name = f"{name}-{secrets.token_hex(5)[:9]}"
        rs_labels = {**labels, "pod-template-hash": rs_name.rsplit("-", 1)[1]}
        rs = ser(k.V1ReplicaSet(
            api_version="apps/v1", kind="ReplicaSet",
            metadata=k.V1ObjectMeta(name=rs_name, namespace=namespace, labels=rs_labels,
                                    owner_references=[self._owner(dep)]),
            spec=k.V1ReplicaSetSpec(replicas=replicas, selector=k.V1LabelSelector(
                match_labels=rs_labels), template=template),
            status=k.V1ReplicaSetStatus(replicas=replicas)))
        self.put("replicasets", rs)
        pods = []
        for _ in range(replicas):
            pod_name = f"{rs_name}-{secrets.token_hex(3)[:5]}"
            pods.append(self.run_pod(pod_name, namespace, rs_labels, template, env or {}, cmd,
                                     owner=self._owner(rs), ready=ready))
        if service:
            self.put("services", ser(k.V1Service(
                api_version="v1", kind="Service",
                metadata=k.V1ObjectMeta(name=name, namespace=namespace),
                spec=k.V1ServiceSpec(selector=labels, ports=[k.V1ServicePort(
                    port=80, target_port=port, protocol="TCP")], cluster_ip="10.96.0.10"))))
        return pods

    def _owner(self, obj: dict[str, Any]) -> Any:
        return k.V1OwnerReference(api_version=obj["apiVersion"], kind=obj["kind"],
                                  name=obj["metadata"]["name"], uid=obj["metadata"]["uid"],
                                  controller=True)

    def run_pod(self, name: str, ns: str, labels: dict[str, str], template: Any,
                env: dict[str, str], cmd: list[str] | None, owner: Any = None,
                ready: bool = True) -> dict[str, Any]:
        netns = self.pods(name, env=env, cmd=cmd)
        self.netns[name] = netns
        cid = f"containerd://{secrets.token_hex(32)}"
        self._cgroup(cid, netns.pid)
        spec = copy.deepcopy(template.spec)
        spec.node_name = NODE
        statuses = [k.V1ContainerStatus(
            name=c.name, image=c.image, image_id=f"{c.image}@sha256:{'0' * 64}",
            ready=ready, restart_count=0, started=True,
            container_id=cid if i == 0 else f"containerd://{secrets.token_hex(32)}",
            state=k.V1ContainerState(running=k.V1ContainerStateRunning(started_at=now())))
            for i, c in enumerate(spec.containers)]
        cond = "True" if ready else "False"
        pod = ser(k.V1Pod(
            api_version="v1", kind="Pod",
            metadata=k.V1ObjectMeta(name=name, namespace=ns, labels=labels,
                                    owner_references=[owner] if owner else None),
            spec=spec,
            status=k.V1PodStatus(
                phase="Running", pod_ip=netns.ip, host_ip="198.18.0.1", start_time=now(),
                conditions=[k.V1PodCondition(type=t, status=cond if t in ("Ready",
                            "ContainersReady") else "True") for t in
                            ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
                container_statuses=statuses)))
        return self.put("pods", pod)

    def _cgroup(self, cid: str, pid: int) -> None:
        path = CGROUP_ROOT / cid.partition("://")[2]
        with contextlib.suppress(OSError):
            path.mkdir(parents=True, exist_ok=True)
            (path / "cgroup.procs").write_text(str(pid))
            self.cgroups.append(path)

    def delete_pod(self, ns: str, name: str) -> None:
        with self.lock:
            pod = self.objects.pop(("pods", ns, name), None)
            doomed = [key for key in self.containers if key[:2] == (ns, name)]
        if pod is not None:
            self.collect_dependents(ns, pod["metadata"]["uid"])
        for key in doomed:
            self._kill(self.containers.pop(key))
        netns = self.netns.pop(name, None)
        if netns is not None:
            self.pods._teardown(netns.name)

    # ---- secrets and the garbage collector ----
    def create_secret(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        meta["namespace"] = ns
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", "Secret")
        if "stringData" in body:  # the API server folds stringData into data
            body.setdefault("data", {}).update(
                {k_: base64.b64encode(v.encode()).decode()
                 for k_, v in body.pop("stringData").items()})
        with self.lock:
            if ("secrets", ns, meta.get("name", "")) in self.objects:
                raise ApiError(409, "AlreadyExists", f'secrets "{meta["name"]}" already exists',
                               {"name": meta["name"], "kind": "secrets"})
            return self.put("secrets", body)

    def collect_dependents(self, ns: str, owner_uid: str) -> None:
        """What the garbage collector does: objects owned by a deleted one go with it."""
        with self.lock:
            dependents = [key for key, obj in self.objects.items() if key[1] == ns and any(
                ref.get("uid") == owner_uid
                for ref in obj["metadata"].get("ownerReferences") or [])]
        for plural, _, name in dependents:
            if plural == "pods":
                self.delete_pod(ns, name)
            else:
                with self.lock:
                    self.objects.pop((plural, ns, name), None)

    def _secret_value(self, ns: str, name: str, key: str, wait: float = 10.0) -> bytes:
        """A Secret's key, waiting for the Secret as a kubelet retries a missing one."""
        deadline = time.monotonic() + wait
        while True:
            with self.lock:
                obj = self.objects.get(("secrets", ns, name))
            if obj is not None and key in (obj.get("data") or {}):
                return base64.b64decode(obj["data"][key])
            if time.monotonic() > deadline:
                raise LookupError(f'secret "{name}" (key {key}) not found')
            time.sleep(0.02)

    def _env(self, ns: str, container: dict[str, Any]) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for e in container.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                env[e["name"]] = self._secret_value(ns, ref["name"], ref["key"]).decode()
            else:
                env[e["name"]] = e.get("value", "")
        return env

    def _mount_secrets(self, ns: str, pod: str, pod_spec: dict[str, Any],
                       container: dict[str, Any], argv: list[str]) -> list[str]:
        """Secret volumes become files (0400) in a directory of the pod; the container runs
        on the host here, so arguments naming the mount path are pointed at it."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or [] if v.get("secret")}
        for mount in container.get("volumeMounts") or []:
            vol = volumes.get(mount["name"])
            if vol is None:
                continue
            where = self.workdir / "volumes" / f"{ns}.{pod}.{mount['name']}"
            where.mkdir(parents=True, exist_ok=True)
            name = vol["secret"]["secretName"]
            deadline = time.monotonic() + 10
            while True:
                with self.lock:
                    obj = self.objects.get(("secrets", ns, name))
                if obj is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            if obj is None:
                raise LookupError(f'MountVolume.SetUp failed: secret "{name}" not found')
            for key, value in (obj.get("data") or {}).items():
                f = where / key
                f.write_bytes(base64.b64decode(value))
                f.chmod(vol["secret"].get("defaultMode", 0o644))
            prefix = mount["mountPath"].rstrip("/") + "/"
            argv = [str(where) + "/" + a[len(prefix):] if a.startswith(prefix) else a
                    for a in argv]
        return argv

    # ---- kubelet: agent containers ----
    def _command(self, container: dict[str, Any], target_pid: int | None) -> list[str]:
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        if argv and argv[0] == "tether-agent":
            argv = agent_command() + argv[1:]
        if target_pid is not None and "--target-pid" in argv:
            i = argv.index("--target-pid")
            if argv[i + 1] == "1":  # pid 1 of the target container's pid namespace
                argv[i + 1] = str(target_pid)
        return argv

    def _start(self, ns: str, pod: str, container: dict[str, Any], argv: list[str]) -> Container:
        log = self.workdir / f"{ns}.{pod}.{container['name']}.log"
        env = self._env(ns, container)
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        c = Container(proc, log)
        self.containers[(ns, pod, container["name"])] = c
        return c

    def _realize(self, ns: str, pod: str, container: dict[str, Any], argv: list[str]) -> None:
        """Run ``argv`` as the main process of a new pod in the cluster network, with the
        cluster DNS and the namespace's search domains in its resolv.conf."""
        net, dns = self.cluster_network(), self.cluster_dns()
        log = self.workdir / f"{ns}.{pod}.{container['name']}.log"
        env = self._env(ns, container)
        netns = self.pods(pod, env=env, behind=net, dns=dns.ip,
                          cmd=["sh", "-c", 'exec "$@" >>"$0" 2>&1', str(log), *argv])
        with open(f"/etc/netns/{netns.name}/resolv.conf", "a") as f:
            f.write(f"search {ns}.svc.cluster.local svc.cluster.local cluster.local\n"
                    "options ndots:5\n")
        self.netns[pod] = netns
        assert netns.main is not None
        self.containers[(ns, pod, container["name"])] = Container(netns.main, log)

    # ---- the cluster network: pods of their own, services, DNS ----
    def cluster_network(self) -> Any:
        """A router netns: pods behind it reach each other; the host (the laptop) cannot
        reach them (198.19.0.0/16 is not routed on the host)."""
        with self.lock:
            if self._cluster_net is None:
                net = self.pods("cluster")
                net.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
                self._cluster_net = net
            return self._cluster_net

    def cluster_dns(self) -> Any:
        """dnsmasq in the cluster network answering ``<name>.<ns>.svc.cluster.local``."""
        with self.lock:
            if self._dns is None:
                hosts = self.workdir / "cluster-dns"
                hosts.mkdir(exist_ok=True)
                self._dns = self.pods("clusterdns", behind=self.cluster_network(), cmd=[
                    "dnsmasq", "-k", "--user=root", "--no-resolv", "--no-hosts", "--port=53",
                    f"--pid-file={self.workdir / 'dnsmasq.pid'}", f"--hostsdir={hosts}",
                    "--listen-address=0.0.0.0", "--bind-interfaces",
                    "--local=/cluster.local/", "--local=//"])
                self._dns.wait_port(53)
            return self._dns

    def service_pod(self, name: str, namespace: str = "staging", *,
                    cmd: list[str] | None = None) -> Any:
        """A pod in the cluster network named ``<name>.<namespace>.svc.cluster.local`` in
        the cluster DNS: what only the namespace's pods reach and resolve."""
        dns = self.cluster_dns()
        pod = self.pods(name, cmd=cmd, behind=self.cluster_network())
        record = self.workdir / "cluster-dns" / f"{name}.{namespace}"
        record.write_text(f"{pod.ip}\t{name}.{namespace}.svc.cluster.local\n")
        fqdn = f"{name}.{namespace}.svc.cluster.local"
        for _ in range(50):  # dnsmasq reads new files of --hostsdir through inotify
            if dns.exec([sys.executable, "-c", _DNS_PROBE, fqdn]).returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the cluster DNS does not answer {fqdn}")
        return pod

    def _kill(self, c: Container) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(timeout=2)

    def _set_state(self, ns: str, pod: str, field: str, name: str, image: str,
                   state: Any, ready: bool = False) -> None:
        with self.lock:
            obj = self.objects.get(("pods", ns, pod))
            if obj is None:
                return
            statuses = obj["status"].setdefault(field, [])
            status = ser(k.V1ContainerStatus(
                name=name, image=image, image_id="", ready=ready, restart_count=0,
                state=state))
            for i, s in enumerate(statuses):
                if s["name"] == name:
                    statuses[i] = status
                    break
            else:
                statuses.append(status)
            self.put("pods", obj)

    def run_ephemeral(self, ns: str, pod: str, container: dict[str, Any]) -> None:
        """Start an ephemeral container after a short "creating" phase (in a thread)."""
        field, name, image = "ephemeralContainerStatuses", container["name"], container["image"]
        self._set_state(ns, pod, field, name, image, k.V1ContainerState(
            waiting=k.V1ContainerStateWaiting(reason="ContainerCreating")))

        def later() -> None:
            time.sleep(0.1)
            if not self.images.search(image):
                self._pull_backoff(ns, pod, field, name, image)
                return
            target = container.get("targetContainerName")
            netns = self.netns.get(pod)
            if netns is None:
                return
            argv = ["nsenter", f"--net={netns.netns_path}", "--"] + self._command(
                container, netns.pid if target else None)
            try:
                self._start(ns, pod, container, argv)
            except LookupError as exc:
                self._set_state(ns, pod, field, name, image, k.V1ContainerState(
                    waiting=k.V1ContainerStateWaiting(reason="CreateContainerConfigError",
                                                      message=str(exc))))
                return
            self._set_state(ns, pod, field, name, image, k.V1ContainerState(
                running=k.V1ContainerStateRunning(started_at=now())))

        threading.Thread(target=later, daemon=True).start()

    def _pull_backoff(self, ns: str, pod: str, field: str, name: str, image: str) -> None:
        msg = (f'Back-off pulling image "{image}": failed to resolve reference "{image}": '
               f"{image.split(':')[0]}: not found")
        self._set_state(ns, pod, field, name, image, k.V1ContainerState(
            waiting=k.V1ContainerStateWaiting(reason="ImagePullBackOff", message=msg)))

    # ---- job controller ----
    def create_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        job = ser(_SERIALIZER._ApiClient__deserialize(body, "V1Job")) if hasattr(
            _SERIALIZER, "_ApiClient__deserialize") else body
        job.setdefault("apiVersion", "batch/v1")
        job.setdefault("kind", "Job")
        meta = job["metadata"]
        meta["namespace"] = ns
        with self.lock:
            if ("jobs", ns, meta["name"]) in self.objects:
                raise ApiError(409, "AlreadyExists",
                               f'jobs.batch "{meta["name"]}" already exists',
                               {"name": meta["name"], "group": "batch", "kind": "jobs"})
            job["status"] = {"active": 1, "startTime": now()}
            self.put("jobs", job)
        uid = meta["uid"]
        tmpl = job["spec"]["template"]
        pod_name = f"{meta['name']}-{secrets.token_hex(3)[:5]}"
        labels = {**(tmpl.get("metadata", {}).get("labels") or {}), "controller-uid": uid,
                  "batch.kubernetes.io/controller-uid": uid, "job-name": meta["name"],
                  "batch.kubernetes.io/job-name": meta["name"]}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                                 "name": meta["name"], "uid": uid,
                                                 "controller": True}]},
               "spec": copy.deepcopy(tmpl["spec"]),
               "status": {"phase": "Pending"}}
        self.put("pods", pod)
        threading.Thread(target=self._run_job_pod, args=(ns, pod_name), daemon=True).start()
        return job

    def _run_job_pod(self, ns: str, pod_name: str) -> None:
        time.sleep(0.05)
        with self.lock:
            pod = self.objects.get(("pods", ns, pod_name))
            if pod is None:
                return
            pod["status"].update({"phase": "Pending", "hostIP": "198.18.0.1",
                                  "startTime": now()})
            container = pod["spec"]["containers"][0]
        field, name, image = "containerStatuses", container["name"], container["image"]
        self._set_state(ns, pod_name, field, name, image, k.V1ContainerState(
            waiting=k.V1ContainerStateWaiting(reason="ContainerCreating")))
        time.sleep(0.1)
        if not self.images.search(image):
            self._pull_backoff(ns, pod_name, field, name, image)
            return
        try:
            argv = self._mount_secrets(ns, pod_name, pod["spec"], container,
                                       self._command(container, None))
            if pod["spec"].get("hostPID"):
                self._start(ns, pod_name, container, argv)
            else:  # a pod of its own (targetless agent): a network namespace in the cluster
                self._realize(ns, pod_name, container, argv)
        except LookupError as exc:
            self._set_state(ns, pod_name, field, name, image, k.V1ContainerState(
                waiting=k.V1ContainerStateWaiting(reason="CreateContainerConfigError",
                                                  message=str(exc))))
            return
        with self.lock:
            pod["status"]["phase"] = "Running"
            if pod_name in self.netns:
                pod["status"]["podIP"] = self.netns[pod_name].ip
        self._set_state(ns, pod_name, field, name, image, k.V1ContainerState(
            running=k.V1ContainerStateRunning(started_at=now())), ready=True)

    def delete_job(self, ns: str, name: str) -> None:
        job = self.get("jobs", ns, name, "batch")
        with self.lock:
            self.objects.pop(("jobs", ns, name), None)
        self.collect_dependents(ns, job["metadata"]["uid"])
        for pod in self.list("pods", ns, f"job-name={name}"):
            self.delete_pod(ns, pod["metadata"]["name"])

    def _kubelet_loop(self) -> None:
        """Notice exited containers; finish Jobs; apply ttlSecondsAfterFinished."""
        finished: dict[tuple[str, str], float] = {}
        while not self._stop.wait(0.1):
            for (ns, pod, name), c in list(self.containers.items()):
                code = c.proc.poll()
                if code is None or getattr(c, "reported", False):
                    continue
                c.reported = True  # type: ignore[attr-defined]
                with self.lock:
                    obj = self.objects.get(("pods", ns, pod))
                if obj is None:
                    continue
                ephemeral = any(e["name"] == name for e in obj["spec"].get(
                    "ephemeralContainers") or [])
                field = "ephemeralContainerStatuses" if ephemeral else "containerStatuses"
                self._set_state(ns, pod, field, name, "", k.V1ContainerState(
                    terminated=k.V1ContainerStateTerminated(
                        exit_code=code, reason="Completed" if code == 0 else "Error",
                        finished_at=now())))
                if not ephemeral:
                    with self.lock:
                        obj["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
                    job = (obj["metadata"].get("labels") or {}).get("job-name")
                    if job:
                        with self.lock:
                            jobobj = self.objects.get(("jobs", ns, job))
                        if jobobj is not None:
                            jobobj["status"] = {"succeeded" if code == 0 else "failed": 1,
                                                "completionTime": now()}
                            ttl = jobobj["spec"].get("ttlSecondsAfterFinished")
                            if ttl is not None:
                                finished[(ns, job)] = time.monotonic() + ttl
            for (ns, job), when in list(finished.items()):
                if time.monotonic() >= when:
                    finished.pop((ns, job))
                    with contextlib.suppress(ApiError):
                        self.delete_job(ns, job)

    def drop_port_forwards(self) -> None:
        """Close every open port-forward (an API server restart, a flaky load balancer)."""
        assert self.loop is not None
        for ws in list(self.forwards):
            asyncio.run_coroutine_threadsafe(ws.close(), self.loop)

    def agent_processes(self) -> list[Container]:
        return [c for c in self.containers.values() if c.proc.poll() is None]

    def close(self) -> None:
        self._stop.set()
        for c in list(self.containers.values()):
            self._kill(c)
        self.containers.clear()
        for path in reversed(self.cgroups):
            for _ in range(20):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


# --------------------------------------------------------------------------- HTTP


def _patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    if "json-patch" in content_type:
        out = copy.deepcopy(target)
        for op in patch:
            if op.get("op") != "add":
                raise ApiError(422, "Invalid", f"the stand-in only applies add, not {op!r}")
            parts = [p for p in op["path"].split("/") if p]
            node = out
            for part in parts[:-1]:
                node = node.setdefault(part, {}) if isinstance(node, dict) else node[int(part)]
            if parts[-1] == "-":
                node.append(op["value"])
            else:
                node[parts[-1]] = op["value"]
        return out
    strategic = "strategic" in content_type

    def merge(a: Any, b: Any, key: str = "") -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for name, value in b.items():
                if value is None:
                    out.pop(name, None)
                else:
                    out[name] = merge(a.get(name), value, name)
            return out
        if strategic and isinstance(a, list) and isinstance(b, list) and key in (
                "ephemeralContainers", "containers", "env"):
            out_list = list(a)
            for item in b:
                idx = next((i for i, x in enumerate(out_list) if x.get("name") == item.get(
                    "name")), None)
                if idx is None:
                    out_list.append(item)
                else:
                    out_list[idx] = merge(out_list[idx], item)
            return out_list
        return copy.deepcopy(b)

    return merge(target, patch)


class StandIn:
    """The HTTP front: routes, authentication, RBAC, subresources."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.app = web.Application(middlewares=[self._errors])
        r = self.app.router
        r.add_route("*", "/api/v1/namespaces/{ns}/{plural}", self.collection)
        r.add_route("*", "/api/v1/namespaces/{ns}/{plural}/{name}", self.item)
        r.add_route("*", "/api/v1/namespaces/{ns}/{plural}/{name}/{sub}", self.subresource)
        r.add_route("*", "/apis/{group}/{version}/namespaces/{ns}/{plural}", self.collection)
        r.add_route("*", "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self.item)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.loop = asyncio.new_event_loop()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[..., Any]) -> Any:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return ApiError(401, "Unauthorized", "Unauthorized").response()
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()

    def _kind(self, request: web.Request) -> tuple[str, str]:
        info = request.match_info
        group = info.get("group", "")
        key = (group, info.get("version", "v1"), info["plural"])
        if key not in RESOURCES:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return group, info["plural"]

    async def collection(self, request: web.Request) -> web.StreamResponse:
        group, plural = self._kind(request)
        ns = request.match_info["ns"]
        c = self.cluster
        if request.method == "GET":
            c.check_rbac("list", plural, ns, None, group)
            items = c.list(plural, ns, request.query.get("labelSelector", ""))
            kind = RESOURCES[(group, request.match_info.get("version", "v1"), plural)]
            return web.json_response({"apiVersion": f"{group}/v1" if group else "v1",
                                      "kind": f"{kind}List",
                                      "metadata": {"resourceVersion": str(c._rv)},
                                      "items": items})
        if request.method == "POST" and plural == "secrets":
            c.check_rbac("create", plural, ns, None, group)
            return web.json_response(c.create_secret(ns, await request.json()), status=201)
        if request.method == "POST" and plural == "jobs":
            c.check_rbac("create", plural, ns, None, group)
            body = await request.json()
            if not (body.get("metadata") or {}).get("name"):
                raise ApiError(422, "Invalid", "Job.batch is invalid: metadata.name: Required "
                               "value: name or generateName is required")
            return web.json_response(c.create_job(ns, body), status=201)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    async def item(self, request: web.Request) -> web.StreamResponse:
        group, plural = self._kind(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        c = self.cluster
        if request.method == "GET":
            c.check_rbac("get", plural, ns, name, group)
            return web.json_response(c.get(plural, ns, name, group))
        if request.method == "DELETE":
            c.check_rbac("delete", plural, ns, name, group)
            obj = copy.deepcopy(c.get(plural, ns, name, group))
            if plural == "jobs":
                await asyncio.to_thread(c.delete_job, ns, name)
            elif plural == "pods":
                await asyncio.to_thread(c.delete_pod, ns, name)
            else:
                with c.lock:
                    c.objects.pop((plural, ns, name), None)
                c.collect_dependents(ns, obj["metadata"]["uid"])
            return web.json_response(obj)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    async def subresource(self, request: web.Request) -> web.StreamResponse:
        ns, name, sub = (request.match_info[x] for x in ("ns", "name", "sub"))
        if request.match_info["plural"] != "pods":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        c = self.cluster
        if sub == "ephemeralcontainers" and request.method == "PATCH":
            c.check_rbac("patch", "pods/ephemeralcontainers", ns, name)
            return await self._ephemeral(request, ns, name)
        if sub == "log" and request.method == "GET":
            c.check_rbac("get", "pods/log", ns, name)
            return self._log(request, ns, name)
        if sub == "portforward":
            c.check_rbac("create", "pods/portforward", ns, name)
            return await self._portforward(request, ns, name)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    async def _ephemeral(self, request: web.Request, ns: str, name: str) -> web.Response:
        c = self.cluster
        pod = c.get("pods", ns, name)
        body = json.loads(await request.text())
        patched = _patch(pod, body, request.headers.get("Content-Type", ""))
        before = {e["name"]: e for e in pod["spec"].get("ephemeralContainers") or []}
        after = patched["spec"].get("ephemeralContainers") or []
        names = [e.get("name") for e in after]
        problems = []
        if len(set(names)) != len(names):
            problems.append("spec.ephemeralContainers: Duplicate value")
        for gone in set(before) - set(names):
            problems.append(f"spec.ephemeralContainers[{gone}]: Forbidden: may not be removed")
        app_names = {x["name"] for x in pod["spec"]["containers"]}
        new = [e for e in after if e.get("name") not in before]
        for e in new:
            if not e.get("image"):
                problems.append(f"spec.ephemeralContainers[{e.get('name')}].image: Required value")
            t = e.get("targetContainerName")
            if t is not None and t not in app_names:
                problems.append(f"spec.ephemeralContainers[{e.get('name')}].targetContainerName"
                                f': Not found: "{t}"')
            if e.get("resources"):
                problems.append(f"spec.ephemeralContainers[{e.get('name')}].resources: "
                                "Forbidden: cannot be set for an Ephemeral Container")
        if problems:
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: ' + ", ".join(problems))
        try:  # the client's own model must accept what we store
            _SERIALIZER._ApiClient__deserialize(patched["spec"], "V1PodSpec")
        except Exception as exc:  # noqa: BLE001
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: {exc}') from None
        with c.lock:
            pod["spec"]["ephemeralContainers"] = after
            c.put("pods", pod)
        for e in new:
            c.run_ephemeral(ns, name, e)
        return web.json_response(pod)

    def _log(self, request: web.Request, ns: str, name: str) -> web.Response:
        c = self.cluster
        c.get("pods", ns, name)
        container = request.query.get("container", "")
        entry = c.containers.get((ns, name, container))
        if entry is None:
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is '
                           "waiting to start: ContainerCreating")
        lines = entry.log.read_text(errors="replace").splitlines()
        tail = int(request.query.get("tailLines", "0") or 0)
        return web.Response(text="\n".join(lines[-tail:] if tail else lines) + "\n")

    async def _portforward(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        c = self.cluster
        c.get("pods", ns, name)
        netns = c.netns.get(name)
        if netns is None:
            raise ApiError(400, "BadRequest", f"pod {name} has no network namespace here")
        ports = [int(p) for p in request.query.getall("ports", []) for p in p.split(",")]
        if len(ports) != 1:
            raise ApiError(400, "BadRequest", "the stand-in forwards exactly one port")
        port = ports[0]
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",), autoping=True)
        await ws.prepare(request)
        c.forwards.add(ws)
        head = bytes([port & 0xFF, port >> 8])
        await ws.send_bytes(b"\x00" + head)
        await ws.send_bytes(b"\x01" + head)
        loop = asyncio.get_running_loop()
        sock = await asyncio.to_thread(_setns_socket, netns.netns_path)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            await ws.send_bytes(b"\x01" + (
                f"error forwarding port {port} to pod {name}, uid : failed to execute portforward "
                f"in network namespace \"{netns.netns_path}\": failed to connect to localhost:"
                f"{port} inside namespace: {exc.strerror}").encode())
            await ws.close()
            c.forwards.discard(ws)
            return ws
        reader, writer = await asyncio.open_connection(sock=sock)

        async def upstream() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    writer.write(msg.data[1:])
                    await writer.drain()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break

        async def downstream() -> None:
            while data := await reader.read(262144):
                await ws.send_bytes(b"\x00" + data)

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await ws.close()
            c.forwards.discard(ws)
        return ws

    # ---- lifecycle ----
    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self._runner = web.AppRunner(self.app, access_log=None)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self.cluster.loop = self.loop
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="kube stand-in", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop(self) -> None:
        async def shutdown() -> None:
            for ws in list(self.cluster.forwards):
                await ws.close()
            if self._runner is not None:
                await self._runner.cleanup()

        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def kubeconfig(self, path: Path, namespace: str | None = "default") -> Path:
        """A kubeconfig for the stand-in; ``namespace=None``: a context that sets none."""
        context = {"cluster": "stand-in", "user": USER}
        if namespace is not None:
            context["namespace"] = namespace
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": USER, "user": {"token": TOKEN}}],
            "contexts": [{"name": "stand-in", "context": context}],
        }))
        return path
