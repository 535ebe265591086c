"""The pure parts of the Kubernetes target: paths, selectors, agent objects."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client as k
from tether.config import AgentConfig
from tether.targets import TargetError
from tether.targets.kube_agent import (
    ephemeral_container,
    job,
    owner_reference,
    plan,
    secret_object,
    targetless_job,
)
from tether.targets.kube_api import label_selector, resource_path
from tether.targets.kube_resolve import PodRef, choose_container, parse_path, pod_state

POD = PodRef(namespace="staging", name="silly-demo-abc", uid="u", container="app",
             container_id="containerd://feed", node_name="node-1", via="deployment/silly-demo")


@pytest.mark.parametrize("path,expected", [
    ("deployment/x", ("deployment", "x", None)),
    ("pod/x/container/app", ("pod", "x", "app")),
    ("rollout/r", ("rollout", "r", None)),
])
def test_parse_path(path, expected):
    assert parse_path(path) == expected


@pytest.mark.parametrize("path", ["deployment", "deployment/x/app", "daemonset/x", "pod//"])
def test_parse_path_rejects(path):
    with pytest.raises(TargetError, match="target"):
        parse_path(path)


def test_label_selector_from_model_and_dict():
    sel = k.V1LabelSelector(match_labels={"b": "2", "a": "1"}, match_expressions=[
        k.V1LabelSelectorRequirement(key="tier", operator="In", values=["web", "api"]),
        k.V1LabelSelectorRequirement(key="canary", operator="DoesNotExist")])
    assert label_selector(sel) == "a=1,b=2,tier in (web,api),!canary"
    assert label_selector({"matchLabels": {"app": "x"}}) == "app=x"


def test_resource_paths():
    assert resource_path("v1", "s", "pods", "p", "portforward") == \
        "/api/v1/namespaces/s/pods/p/portforward"
    assert resource_path("batch/v1", "s", "jobs") == "/apis/batch/v1/namespaces/s/jobs"


def _pod(phase="Running", ready="True", containers=("app",), annotations=None):
    return k.V1Pod(
        metadata=k.V1ObjectMeta(name="p", annotations=annotations),
        spec=k.V1PodSpec(containers=[k.V1Container(name=c) for c in containers]),
        status=k.V1PodStatus(phase=phase, conditions=[k.V1PodCondition(type="Ready",
                                                                      status=ready)]))


def test_pod_state():
    assert pod_state(_pod()) == (True, "ready")
    assert pod_state(_pod(ready="False"))[0] is False
    assert pod_state(_pod(phase="Pending")) == (False, "Pending")


def test_container_choice_skips_sidecars_and_honours_the_default_annotation():
    assert choose_container(_pod(containers=("istio-proxy", "app")), None, "pod/p") == "app"
    annotated = _pod(containers=("a", "b"),
                     annotations={"kubectl.kubernetes.io/default-container": "b"})
    assert choose_container(annotated, None, "pod/p") == "b"
    with pytest.raises(TargetError, match="has no container 'c'"):
        choose_container(annotated, "c", "pod/p")


def test_ephemeral_container_takes_the_secret_by_reference_only():
    cfg = AgentConfig(disabled_capabilities=("CAP_NET_RAW",), ttl=5)
    p = plan(cfg)
    body = ephemeral_container(p, POD, cfg, "info")
    [c] = body["spec"]["ephemeralContainers"]
    k.ApiClient()._ApiClient__deserialize(c, "V1EphemeralContainer")
    assert c["targetContainerName"] == "app"
    assert {"name": "TETHER_AGENT_SECRET", "valueFrom": {"secretKeyRef": {
        "name": p.name, "key": "secret"}}} in c["env"]
    assert all("value" not in e for e in c["env"] if e["name"] == "TETHER_AGENT_SECRET")
    assert "NET_RAW" not in c["securityContext"]["capabilities"]["add"]
    assert c["args"][c["args"].index("--idle-exit") + 1] == "5"
    assert f"127.0.0.1:{p.port}" in c["args"]


def test_job_spec_is_pinned_labelled_and_expires():
    cfg = AgentConfig(ttl=3, labels={"team": "a"}, image_pull_secrets=("regcred",))
    body = job(plan(cfg), POD, cfg, "info")
    model = k.ApiClient()._ApiClient__deserialize(body, "V1Job")
    assert model.spec.ttl_seconds_after_finished == 3
    spec = body["spec"]["template"]["spec"]
    assert spec["nodeName"] == "node-1" and spec["hostPID"] is True
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    labels = body["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "tether" and labels["team"] == "a"
    args = spec["containers"][0]["args"]
    assert args[:3] == ["--container-id", "containerd://feed", "--enter-netns"]


def test_job_mounts_the_secret_as_a_file_and_the_secret_is_owned_by_the_job():
    cfg = AgentConfig()
    p = plan(cfg)
    body = job(p, POD, cfg, "info")
    spec = body["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert c["env"] == []  # nothing of the secret in the Job
    assert spec["volumes"] == [{"name": "session-secret", "secret": {
        "secretName": p.name, "defaultMode": 0o400}}]
    mount = c["volumeMounts"][0]
    assert mount["readOnly"] and c["args"][-2:] == ["--secret-file",
                                                    f"{mount['mountPath']}/secret"]
    owner = owner_reference("batch/v1", "Job", p.name, "uid-1")
    obj = secret_object(p, "s3cret", owner)
    k.ApiClient()._ApiClient__deserialize(obj, "V1Secret")
    assert obj["metadata"]["ownerReferences"] == [owner]
    assert base64.b64decode(obj["data"]["secret"]) == b"s3cret"


def test_targetless_job_is_an_ordinary_pod_of_the_namespace():
    agent = AgentConfig(ttl=7, labels={"team": "a"}, image_pull_secrets=("regcred",))
    body = targetless_job(plan(agent), agent, "debug")
    spec = body["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert "--targetless" in c["args"] and "--target-pid" not in c["args"]
    assert c["args"][c["args"].index("--idle-exit") + 1] == "7"
    assert body["spec"]["ttlSecondsAfterFinished"] == 7
    assert not {"hostPID", "nodeName", "tolerations"} & set(spec)  # no node to follow
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["env"] == [] and "--secret-file" in c["args"]
    labels = body["spec"]["template"]["metadata"]["labels"]
    assert labels["tether.dev/targetless"] == "true" and labels["team"] == "a"
    assert labels["app.kubernetes.io/managed-by"] == "tether"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    k.ApiClient()._ApiClient__deserialize(body, "V1Job")  # the client's model accepts it
