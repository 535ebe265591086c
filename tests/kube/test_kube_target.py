"""Scenes on a Kubernetes target, through the stand-in API server and the real client.

The config files are the seed's shape: ``{"target": {"path": "deployment/silly-demo",
"namespace": "staging"}, "agent": {"namespace": "staging"}}``.
"""

from __future__ import annotations

import base64
import sys
import time

import pytest

POD_ENV = {"DB_HOST": "db.staging.svc", "DB_PASSWORD": "s3cr3t", "PATH": "/usr/bin:/bin"}
SEED = {"target": {"path": "deployment/silly-demo", "namespace": "staging"},
        "agent": {"namespace": "staging"}}
PRINTENV = [sys.executable, "-c",
            "import os; print('DB_PASSWORD=' + os.environ.get('DB_PASSWORD', '<unset>'))"]


def with_agent(**agent):
    return {**SEED, "agent": {**SEED["agent"], **agent}}


@pytest.mark.parametrize("ephemeral", [False, True], ids=["job", "ephemeral"])
def test_program_sees_the_deployments_pod_environment(kube, kube_tether, ephemeral):
    kube.deploy("silly-demo", "staging", env=POD_ENV)
    res = kube_tether(PRINTENV, config=with_agent(ephemeral=ephemeral))
    assert res.returncode == 0, res.stderr
    assert "DB_PASSWORD=s3cr3t" in res.stdout
    assert "agent running; connecting" in res.stderr


def test_the_job_is_deleted_when_the_session_ends(kube, kube_tether):
    kube.deploy("silly-demo", "staging", env=POD_ENV)
    res = kube_tether(PRINTENV, config=SEED)
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 5
    while (kube.list("jobs", "staging") or kube.agent_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kube.list("jobs", "staging") == []
    assert kube.agent_processes() == []


def test_ephemeral_agent_exits_after_ttl(kube, kube_tether):
    kube.deploy("silly-demo", "staging", env=POD_ENV)
    res = kube_tether(PRINTENV, config=with_agent(ephemeral=True, ttl=1))
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 5
    while kube.agent_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kube.agent_processes() == []


@pytest.mark.parametrize("path", ["pod/{pod}/container/app", "replicaset/{rs}",
                                  "service/silly-demo"])
def test_every_kind_resolves_to_the_running_pod(kube, kube_tether, path):
    [pod] = kube.deploy("silly-demo", "staging", env=POD_ENV)
    rs = pod["metadata"]["ownerReferences"][0]["name"]
    cfg = {**SEED, "target": {"path": path.format(pod=pod["metadata"]["name"], rs=rs),
                              "namespace": "staging"}}
    res = kube_tether(PRINTENV, config=cfg)
    assert res.returncode == 0, res.stderr
    assert "DB_PASSWORD=s3cr3t" in res.stdout


def one_line_error(res):
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_missing_deployment_says_not_found_and_how_to_list(kube, kube_tether):
    kube.deploy("other", "staging")
    line = one_line_error(kube_tether(PRINTENV, config=SEED))
    assert "deployment 'silly-demo'" in line and "not found" in line
    assert "tether ls -n staging" in line


def test_pod_not_ready_says_so(kube, kube_tether):
    kube.deploy("silly-demo", "staging", ready=False)
    line = one_line_error(kube_tether(PRINTENV, config=SEED))
    assert "no ready pod" in line and "running, not ready" in line


def test_forbidden_names_the_rbac_rule_to_add(kube, kube_tether):
    kube.deploy("silly-demo", "staging")
    kube.forbid("create", "jobs", "staging")
    line = one_line_error(kube_tether(PRINTENV, config=SEED))
    assert 'cannot create resource "jobs"' in line
    assert '{apiGroups: ["batch"], resources: ["jobs"], verbs: ["create"]}' in line


def test_forbidden_ephemeral_containers_names_the_subresource(kube, kube_tether):
    kube.deploy("silly-demo", "staging")
    kube.forbid("patch", "pods/ephemeralcontainers")
    line = one_line_error(kube_tether(PRINTENV, config=with_agent(ephemeral=True)))
    assert 'resources: ["pods/ephemeralcontainers"], verbs: ["patch"]' in line


def test_forbidden_secrets_name_the_rule_and_leave_no_job(kube, kube_tether):
    kube.deploy("silly-demo", "staging")
    kube.forbid("create", "secrets")
    line = one_line_error(kube_tether(PRINTENV, config=SEED))
    assert '{apiGroups: [""], resources: ["secrets"], verbs: ["create"]}' in line
    assert kube.list("jobs", "staging") == []


def test_forbidden_port_forward_names_the_rule(kube, kube_tether):
    kube.deploy("silly-demo", "staging")
    kube.forbid("create", "pods/portforward")
    line = one_line_error(kube_tether(PRINTENV, config=with_agent(ephemeral=True)))
    assert 'resources: ["pods/portforward"], verbs: ["create"]' in line


def test_unknown_container_lists_the_containers(kube, kube_tether):
    kube.deploy("silly-demo", "staging", containers=("app", "istio-proxy"))
    cfg = {**SEED, "target": {"path": "deployment/silly-demo/container/nope",
                              "namespace": "staging"}}
    line = one_line_error(kube_tether(PRINTENV, config=cfg))
    assert "no container 'nope'" in line and "app, istio-proxy" in line


def test_sidecar_is_not_picked(kube, kube_tether):
    kube.deploy("silly-demo", "staging", env=POD_ENV, containers=("istio-proxy", "app"))
    res = kube_tether(PRINTENV, config=with_agent(ephemeral=True))
    assert res.returncode == 0, res.stderr
    assert "using 'app'" in res.stderr


def test_image_pull_backoff_warns_then_times_out(kube, kube_tether):
    kube.deploy("silly-demo", "staging")
    res = kube_tether(PRINTENV, config=with_agent(ephemeral=True, image="example.com/nope:1",
                                                  startup_timeout=1))
    assert "cannot pull the agent image example.com/nope:1 (ImagePullBackOff" in res.stderr
    line = one_line_error(res)
    assert "did not start within agent.startup_timeout=1s" in line


def test_unreachable_api_server(kube, kube_tether, tmp_path):
    kube.deploy("silly-demo", "staging")
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text(kube.kubeconfig.read_text().replace(kube.server.url, "http://127.0.0.1:9"))
    line = one_line_error(kube_tether(PRINTENV, config=SEED, env={"KUBECONFIG": str(bad)}))
    assert "cannot reach the Kubernetes API server at http://127.0.0.1:9" in line


def test_ls_lists_the_namespaces_targets(kube, kube_tether):
    [pod] = kube.deploy("silly-demo", "staging")
    kube.deploy("multi", "staging", containers=("app", "istio-proxy"), service=False)
    kube.deploy("elsewhere", "prod")
    res = kube_tether([], cmd="ls", args=["-n", "staging", "--json"])
    assert res.returncode == 0, res.stderr
    import json

    targets = json.loads(res.stdout)
    assert "deployment/silly-demo" in targets and "deployment/multi" in targets
    assert "service/silly-demo" in targets
    assert f"pod/{pod['metadata']['name']}" in targets
    assert any(t.startswith("pod/multi-") and t.endswith("/container/istio-proxy")
               for t in targets)
    assert not any("elsewhere" in t for t in targets)
    plain = kube_tether([], cmd="ls", args=["-n", "staging"])
    assert plain.stdout.splitlines() == targets


def run_in_background(kube_tether, tmp_path, config):
    import threading

    flag = tmp_path / "started"
    prog = [sys.executable, "-c",
            f"import time, pathlib; pathlib.Path({str(flag)!r}).touch(); time.sleep(30)"]
    box = {}
    t = threading.Thread(target=lambda: box.update(res=kube_tether(prog, config=config)))
    t.start()
    deadline = time.monotonic() + 20
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists()
    return t, box


def test_deleting_the_target_pod_ends_the_program_with_a_message(kube, kube_tether, tmp_path):
    [pod] = kube.deploy("silly-demo", "staging", env=POD_ENV)
    t, box = run_in_background(kube_tether, tmp_path, with_agent(ephemeral=True))
    kube.delete_pod("staging", pod["metadata"]["name"])
    t.join(15)
    res = box["res"]
    assert res.returncode != 0
    assert f"target pod/{pod['metadata']['name']} was deleted" in res.stderr, res.stderr


@pytest.mark.parametrize("ephemeral", [False, True], ids=["job", "ephemeral"])
def test_the_session_secret_is_in_no_pod_or_job_and_goes_with_the_session(
        kube, kube_env, tmp_path, ephemeral):
    """Whoever may get pods and jobs learns nothing that lets them talk to the agent."""
    import json
    import subprocess

    from e2e_support import tether_cmd

    kube.deploy("silly-demo", "staging", env=POD_ENV)
    cfg = tmp_path / "tether.json"
    cfg.write_text(json.dumps(with_agent(ephemeral=ephemeral)))
    proc = subprocess.Popen(
        tether_cmd() + ["exec", "-f", str(cfg), "--", sys.executable, "-c",
                        "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=kube_env, cwd=tmp_path)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        [secret] = kube.list("secrets", "staging", "app.kubernetes.io/managed-by=tether")
        value = base64.b64decode(secret["data"]["secret"]).decode()
        assert len(value) >= 32
        [owner] = secret["metadata"]["ownerReferences"]
        if ephemeral:
            assert owner["kind"] == "Pod" and owner["name"].startswith("silly-demo-")
        else:
            [job] = kube.list("jobs", "staging")
            assert (owner["kind"], owner["uid"]) == ("Job", job["metadata"]["uid"])
        readable = json.dumps([kube.list("pods", "staging"), kube.list("jobs", "staging")])
        assert value not in readable
    finally:
        _out, err = proc.communicate("", timeout=30)
    assert proc.returncode == 0, err
    assert kube.list("secrets", "staging") == []


def test_ls_where_nothing_may_be_listed_says_so_once(kube, kube_tether):
    """An editor plugin runs `ls --json` and shows what comes back: one error, once, as a
    JSON object on stdout (not a line per kind of target)."""
    import json

    for plural in ("deployments", "statefulsets", "jobs", "cronjobs", "services", "rollouts",
                   "pods"):
        kube.forbid("list", plural)
    plain = kube_tether([], cmd="ls", args=["-n", "staging"])
    assert plain.returncode == 1
    lines = [line for line in plain.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, plain.stderr
    assert "forbidden" in lines[0] and "more kinds of target" in lines[0]
    res = kube_tether([], cmd="ls", args=["-n", "staging", "--json"])
    assert res.returncode == 1
    assert json.loads(res.stdout)["error"] == lines[0].removeprefix("Error: ")
