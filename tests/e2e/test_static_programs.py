"""Scene 6, beyond the incumbent: programs the layer cannot reach (a static C binary, a Go
binary built without cgo) still get the target's network, through seccomp user
notification, with the program unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"
ECHO = ("import socket\ns = socket.create_server(('0.0.0.0', 7000))\nwhile True:\n"
        "    c, _ = s.accept()\n    c.recv(100)\n    c.sendall(b'pong from behind\\n')\n"
        "    c.close()\n")


@pytest.fixture(scope="module")
def static_programs(tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out / "dial-c"), str(PROGRAMS / "dial.c")],
                   check=True)
    subprocess.run(["go", "build", "-o", str(out / "dial-go"), str(PROGRAMS / "dial.go")],
                   check=True, capture_output=True,
                   env={**os.environ, "CGO_ENABLED": "0", "GO111MODULE": "off",
                        "GOCACHE": str(out / "gocache"), "HOME": str(out)})
    return {"c": out / "dial-c", "go": out / "dial-go"}


@pytest.fixture
def backend_with_private_server(pod_factory):
    front = pod_factory("backend", env={"APP": "backend"})
    behind = pod_factory("private", behind=front, cmd=[sys.executable, "-c", ECHO])
    behind.wait_port(7000)
    return front, behind


@pytest.mark.parametrize("relay", [False, True], ids=["socket-handed-over", "relayed"])
@pytest.mark.parametrize("lang", ["c", "go"])
def test_static_program_reaches_a_host_only_the_target_can_reach(
        tether, static_programs, backend_with_private_server, lang, relay):
    # relayed: how a Kubernetes target works (its link cannot carry sockets)
    front, behind = backend_with_private_server
    program = str(static_programs[lang])
    direct = subprocess.run([program, f"{behind.ip}:7000"], capture_output=True, text=True,
                            timeout=30)
    assert "pong" not in direct.stdout  # this machine cannot reach it
    res = tether(front, [program, f"{behind.ip}:7000"],
                 env={"TETHER_OUTGOING_RELAY": "1"} if relay else None)
    assert res.returncode == 0, res.stderr
    assert "pong from behind" in res.stdout


def test_seccomp_can_be_turned_off(tether, static_programs, backend_with_private_server):
    front, behind = backend_with_private_server
    res = tether(front, [str(static_programs["go"]), f"{behind.ip}:7000"],
                 env={"TETHER_SECCOMP": "never"})
    assert "pong" not in res.stdout


def test_go_resolves_cluster_names_with_the_targets_nameserver(
        tether, static_programs, pod_factory):
    # Go's resolver reads this machine's resolv.conf and talks DNS itself: its queries go
    # to the target's nameserver instead, like the pod's would.
    front = pod_factory("backend", env={"APP": "backend"})
    behind = pod_factory("private", behind=front, cmd=[sys.executable, "-c", ECHO])
    name = "silly-demo-db.staging.svc.cluster.local"
    ns = pod_factory("cdns", cmd=["dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=53",
                                  "--listen-address=0.0.0.0", "--bind-interfaces",
                                  f"--host-record={name},{behind.ip}", "--local=//"])
    behind.wait_port(7000)
    with open(f"/etc/netns/{front.name}/resolv.conf", "w") as f:
        f.write(f"nameserver {ns.ip}\noptions timeout:1 attempts:1\n")
    res = tether(front, [str(static_programs["go"]), f"{name}:7000", f"{name}."])
    assert res.returncode == 0, res.stderr
    assert "pong from behind" in res.stdout
    assert f"lookup {name}. [{behind.ip}] <nil>" in res.stdout


TARGET_APP = (
    "import http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        b = b'This is a silly demo\\n'\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(b)\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n")


@pytest.fixture(scope="module")
def go_server(tmp_path_factory):
    out = tmp_path_factory.mktemp("goserver")
    subprocess.run(["go", "build", "-o", str(out / "server"), str(PROGRAMS / "server.go")],
                   check=True, capture_output=True,
                   env={**os.environ, "CGO_ENABLED": "0", "GO111MODULE": "off",
                        "GOCACHE": str(out / "gocache"), "HOME": str(out)})
    return str(out / "server")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode().strip()


def _run_go_server(go_server, pod, mode, tmp_path):
    import json

    cfg = tmp_path / f"{mode}.json"
    cfg.write_text(json.dumps({"target": f"process/{pod.pid}",
                               "feature": {"network": {"incoming": mode}}}))
    from e2e_support import tether_cmd

    proc = subprocess.Popen(tether_cmd() + ["exec", "-f", str(cfg), "--", go_server],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if f"{'stealing' if mode == 'steal' else 'mirroring'} port 8080" in line:
            return proc
    raise AssertionError("the Go server's port was never subscribed")


@pytest.mark.parametrize("local_port_taken", [False, True])
def test_go_server_steals_the_targets_port(go_server, pod_factory, tmp_path, local_port_taken):
    import socket

    pod = pod_factory("backend", env={"APP": "backend"}, cmd=[sys.executable, "-c", TARGET_APP])
    pod.wait_port(8080)
    blocker = None
    if local_port_taken:
        try:
            blocker = socket.create_server(("0.0.0.0", 8080), reuse_port=False)
        except OSError:
            pass  # something here holds 8080 already: the case we want
    try:
        proc = _run_go_server(go_server, pod, "steal", tmp_path)
        try:
            assert _get(f"http://{pod.ip}:8080/?user=me") == "This is a silly demo from Go"
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        assert "Handling request URI=/?user=me" in err
    finally:
        if blocker is not None:
            blocker.close()
    assert _get(f"http://{pod.ip}:8080/") == "This is a silly demo"  # the target's again


def test_go_server_gets_a_copy_of_mirrored_requests(go_server, pod_factory, tmp_path):
    pod = pod_factory("backend", env={"APP": "backend"}, cmd=[sys.executable, "-c", TARGET_APP])
    pod.wait_port(8080)
    proc = _run_go_server(go_server, pod, "mirror", tmp_path)
    try:
        assert _get(f"http://{pod.ip}:8080/?something=else") == "This is a silly demo"
        time.sleep(1.0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Handling request URI=/?something=else" in err


@pytest.mark.parametrize("parent", ["sh", "python", "node"])
def test_static_program_started_by_a_dynamic_parent_is_supervised_too(
        tether, static_programs, backend_with_private_server, parent):
    # The layer's exec hooks see the parent start a binary they cannot reach and run it
    # through tether-launch, which puts it under the supervisor first.
    front, behind = backend_with_private_server
    program, where = str(static_programs["go"]), f"{behind.ip}:7000"
    argv = {
        "sh": ["sh", "-c", f"{program} {where}"],
        "python": ["python3", "-c",
                   f"import subprocess; subprocess.run([{program!r}, {where!r}])"],
        "node": ["node", "-e",
                 f"require('child_process').spawnSync({program!r}, [{where!r}], "
                 "{stdio: 'inherit'})"],
    }[parent]
    res = tether(front, argv)
    assert res.returncode == 0, res.stderr
    assert "pong from behind" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("lang", ["c", "go"])
def test_debugger_breaks_in_a_program_that_has_the_targets_network(
        tether, static_programs, backend_with_private_server, lang, tmp_path):
    # Scene 6: `tether exec -- gdb --args ./app`, breakpoints included.
    front, behind = backend_with_private_server
    if lang == "go":
        program, where = str(static_programs["go"]), "main.main"
    else:
        program, where = str(tmp_path / "dial-dbg"), "main"
        subprocess.run(["gcc", "-g", "-O0", "-o", program, str(PROGRAMS / "dial.c")],
                       check=True)
    res = tether(front, ["gdb", "-batch", "-nx", "-ex", f"break {where}", "-ex", "run",
                         "-ex", "continue", "--args", program, f"{behind.ip}:7000"],
                 timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Breakpoint 1," in res.stdout, res.stdout
    assert "pong from behind" in res.stdout, res.stdout + res.stderr


def test_a_static_program_runs_even_when_the_session_is_gone(static_programs, tmp_path):
    # A process outliving its session (its orchestrator gone) execs a static binary: the
    # launcher cannot attach, says so once, and runs it - no exec loop, no hang.
    import tether

    layer = str(Path(tether.__file__).resolve().parent / "libtether_layer.so")
    env = {"PATH": os.environ["PATH"], "LD_PRELOAD": layer, "TETHER_LAYER_SO": layer,
           "TETHER_LAYER_SOCK": str(tmp_path / "gone.sock"), "TETHER_LAYER_CONFIG": "skip=",
           "TETHER_ENV_APPLIED": "1"}
    res = subprocess.run(["sh", "-c", f"{static_programs['c']} 127.0.0.1:9; echo done"],
                         capture_output=True, text=True, timeout=20, env=env)
    assert res.stdout.strip().endswith("done")
    assert res.stderr.count("runs without the target's network") == 1, res.stderr
