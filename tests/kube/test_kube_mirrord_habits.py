"""`tether port-forward` (and the hostname) against a Kubernetes target (the stand-in API server): the agent
is started in the pod, reached through the API server's port-forward, and a name only the
pod knows is resolved there, as the incumbent's port-forward resolves names in the
target."""

from __future__ import annotations

import socket
import sys
import time

from e2e_support import BackgroundTether

ECHO = ("import socket\ns = socket.create_server(('0.0.0.0', 7000))\nwhile True:\n"
        "    c, _ = s.accept()\n    c.sendall(b'db got ' + c.recv(100))\n    c.close()\n")


def test_port_forward_reaches_a_host_only_the_pod_resolves_and_reaches(kube, kube_env,
                                                                        pod_factory, tmp_path):
    [pod] = kube.deploy("silly-demo", "staging")
    front = kube.netns[pod["metadata"]["name"]]
    db = pod_factory("db", behind=front, cmd=[sys.executable, "-c", ECHO])
    with open(front.root / "etc" / "hosts", "a") as hosts:  # the pod's own file
        hosts.write(f"{db.ip}\tdb.internal\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pf = BackgroundTether(["port-forward", "-t", "deployment/silly-demo", "-n", "staging",
                           "-L", f"{port}:db.internal:7000"], cwd=tmp_path, env=kube_env)
    try:
        pf.wait_for(f"forwarding 127.0.0.1:{port} -> db.internal:7000", timeout=60)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                    c.sendall(b"select 1")
                    answer = c.recv(100)
                if answer == b"db got select 1" or time.monotonic() > deadline:
                    break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise AssertionError(pf.output) from None
            time.sleep(0.05)
        assert answer == b"db got select 1", pf.output
    finally:
        pf.stop()
    assert pf.proc.returncode == 0, pf.output


def test_program_sees_the_pods_hostname_through_the_agent(kube, kube_env, tmp_path):
    """feature.hostname over a Kubernetes target: the agent (not this machine) learns the
    pod's hostname, as the incumbent's `feature.hostname` (on by default) makes it."""
    import json
    import subprocess

    from e2e_support import tether_cmd

    [pod] = kube.deploy("silly-demo", "staging")
    expected = kube.netns[pod["metadata"]["name"]].name  # the pod's UTS name here
    cfg = tmp_path / "t.json"
    cfg.write_text(json.dumps({"target": {"path": "deployment/silly-demo",
                                          "namespace": "staging"}}))
    res = subprocess.run(tether_cmd() + ["exec", "-f", str(cfg), "--", sys.executable, "-c",
                                         "import socket; print(socket.gethostname())"],
                         capture_output=True, text=True, timeout=90, env=kube_env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected != socket.gethostname()
