"""The seed's own scene on the target type the seed uses: a Go service (static, built
without cgo) on a Kubernetes target reaches its database by the short service name, through
the pod's cluster DNS and search list, over a link that cannot carry descriptors (its DNS
datagrams and its connection are relayed by the agent, the pod's resolv.conf and hosts
copied into memfds)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from e2e.runtimes.runtimes_support import GOPROBE, go_env
from kube_programs import ECHO
from test_kube_scenes import CONFIGS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def goprobe(tmp_path_factory: pytest.TempPathFactory) -> str:
    exe = tmp_path_factory.mktemp("kube-go") / "goprobe"
    subprocess.run(["go", "build", "-o", str(exe), "."], cwd=GOPROBE, check=True,
                   capture_output=True, env=go_env({}), timeout=180)
    return str(exe)


def test_go_service_reaches_its_database_by_service_name(kube, pod_factory, kube_tether,
                                                         goprobe):
    [pod] = kube.deploy("silly-demo", "staging")
    front = kube.netns[pod["metadata"]["name"]]
    db = pod_factory("db", behind=front, cmd=[sys.executable, "-c", ECHO])
    fqdn = "silly-db.staging.svc.cluster.local"
    dns = pod_factory("cdns", behind=front, cmd=[
        "dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=53", "--pid-file=", "--listen-address=0.0.0.0",
        "--bind-interfaces", f"--host-record={fqdn},{db.ip}", "--local=//"])
    # The pod's own files, edited in place: a cluster's resolv.conf, one more hosts entry.
    (front.root / "etc" / "resolv.conf").write_text(
        f"search staging.svc.cluster.local svc.cluster.local cluster.local\n"
        f"nameserver {dns.ip}\noptions ndots:5 timeout:1 attempts:2\n")
    with open(front.root / "etc" / "hosts", "a") as hosts:
        hosts.write(f"{db.ip}\tdb.internal\n")
    front.exec(["sh", "-c", f"for i in $(seq 50); do nc -z {db.ip} 7000 && exit 0; "
                            "sleep 0.1; done; exit 1"])
    res = kube_tether([goprobe, "lookup=silly-db", "dial=silly-db:7000", f"lookup={fqdn}",
                       "lookup=db.internal"], args=["-f", str(CONFIGS / "steal.json")])
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert f"lookup silly-db [{db.ip}] <nil>" in out, out + res.stderr
    assert 'dial silly-db:7000: "pong ping' in out, out + res.stderr
    assert f"lookup {fqdn} [{db.ip}] <nil>" in out, out
    assert f"lookup db.internal [{db.ip}] <nil>" in out, out
