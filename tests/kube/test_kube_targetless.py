"""Targetless sessions: no target, the agent runs as a pod of its own in the namespace and
the program gets the namespace's outgoing network and DNS through it.

The stand-in's cluster network is a router namespace: pods behind it (the agent's pod, a
``db`` service pod, the cluster DNS) reach each other; this machine reaches none of them
and its resolver knows no ``*.svc.cluster.local`` name.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from e2e_support import tether_cmd
from kube_programs import CLIENT_THEN_WAIT, ECHO

AGENTS = "app.kubernetes.io/managed-by=tether"


@pytest.fixture
def db(kube):
    return kube.service_pod("db", "staging", cmd=[sys.executable, "-c", ECHO])


def _unreachable_from_here(ip: str) -> bool:
    try:
        socket_ = socket.create_connection((ip, 7000), timeout=0.5)
    except OSError:
        return True
    socket_.close()
    return False


def test_targetless_session_uses_the_namespaces_dns_and_network(kube, kube_env, db, tmp_path):
    assert _unreachable_from_here(db.ip)  # the point: only the cluster's pods reach it
    proc = subprocess.Popen(
        tether_cmd() + ["exec", "-t", "targetless", "-n", "staging", "--",
                        sys.executable, "-c", CLIENT_THEN_WAIT, "db"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=kube_env, cwd=tmp_path)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        resolved = proc.stdout.readline()
        reply = proc.stdout.readline()
        assert resolved == f"resolved: {db.ip}\n", resolved + "".join(err)
        # During the session: one agent pod (of a Job) in staging, running the agent.
        pods = kube.list("pods", "staging", AGENTS)
        assert len(pods) == 1, pods
        agent_pod = pods[0]
        assert agent_pod["status"]["phase"] == "Running"
        assert agent_pod["metadata"]["labels"]["tether.dev/targetless"] == "true"
        # The db saw the agent pod's address: the connection left from the agent's pod.
        assert reply == f"reply: pong ping from {agent_pod['status']['podIP']}\n", reply
        proc.stdin.close()
        assert proc.wait(15) == 0, "".join(err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(2)
    log = "".join(err)
    assert "no environment, files or incoming traffic" in log, log
    assert log.count("targetless session in namespace staging") == 1, log
    # After the session: the Job and its pod are gone.
    assert kube.list("pods", "staging", AGENTS) == []
    assert kube.list("jobs", "staging", AGENTS) == []
    assert kube.agent_processes() == []


def test_targetless_from_the_contexts_namespace(kube, kube_tether, db, tmp_path):
    """No target, no -n: the kubeconfig's context names the namespace."""
    cfg = kube.server.kubeconfig(tmp_path / "kubeconfig-staging", namespace="staging")
    res = kube_tether([sys.executable, "-c", CLIENT_THEN_WAIT, "db.staging.svc.cluster.local"],
                      env={"KUBECONFIG": str(cfg)}, args=[])
    assert res.returncode == 0, res.stderr
    assert f"resolved: {db.ip}" in res.stdout, res.stdout + res.stderr
    assert "reply: pong ping from 198.19." in res.stdout, res.stdout
    assert kube.list("jobs", "staging", AGENTS) == []


def test_targetless_refuses_to_steal(kube, kube_tether):
    res = kube_tether(["true"], args=["-n", "staging"],
                      config={"feature": {"network": {"incoming": "steal"}}})
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no target to steal traffic from" in lines[0], res.stderr
    assert kube.list("jobs", "staging", AGENTS) == []  # nothing was created


def test_targetless_mirror_settings_are_ignored_with_a_warning(kube, kube_tether):
    """The config file's form: mirrord's "path": "targetless" with a namespace."""
    res = kube_tether([sys.executable, "-c", "print('ran')"],
                      config={"target": {"path": "targetless", "namespace": "staging"},
                              "feature": {"network": {"incoming": {"mode": "mirror",
                                                                   "ports": [8080]}}}})
    assert res.returncode == 0, res.stderr
    assert "ran" in res.stdout
    assert "feature.network.incoming is ignored" in res.stderr, res.stderr


def test_no_target_without_kubernetes_keeps_the_process_hint(kube_tether, tmp_path):
    res = kube_tether(["true"], env={"KUBECONFIG": str(tmp_path / "missing"),
                                     "HOME": str(tmp_path)})
    assert res.returncode != 0
    assert "no target given: pass --target process/<pid> (or set target.path" in res.stderr


def test_no_target_and_no_namespace_says_how_to_name_one(kube, kube_tether, tmp_path):
    cfg = kube.server.kubeconfig(tmp_path / "kubeconfig-nons", namespace=None)
    res = kube_tether(["true"], env={"KUBECONFIG": str(cfg)})
    assert res.returncode != 0
    assert "-n <namespace>) for a targetless session" in res.stderr, res.stderr
    assert kube.list("jobs", "default", AGENTS) == []


def test_agent_pod_deleted_mid_session_ends_the_program(kube, kube_env, tmp_path):
    proc = subprocess.Popen(
        tether_cmd() + ["exec", "-n", "staging", "--", sys.executable, "-c",
                        "import time; print('up', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kube_env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "up\n"
        [pod] = kube.list("pods", "staging", AGENTS)
        start = time.monotonic()
        kube.delete_pod("staging", pod["metadata"]["name"])
        proc.wait(10)
        assert time.monotonic() - start < 8
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode != 0
    assert "the agent's pod/" in err and "was deleted" in err, err
