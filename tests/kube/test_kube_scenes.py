"""The seed's scenes on a Kubernetes target, through the stand-in API server: the agent
link is a TCP port-forward that cannot carry descriptors, so every incoming stream and
every outgoing connection travels through the relay (tether.relay).

The configs are the seed's own files (tests/configs/{mirror,steal,filter}.json:
``deployment/silly-demo`` in namespace ``staging``), used unchanged.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import BackgroundTether
from kube_programs import CLIENT, ECHO

TESTS = Path(__file__).resolve().parent.parent
CONFIGS = TESTS / "configs"
SILLY = str(TESTS / "e2e" / "incoming" / "silly_server.py")
PORT = 8080
TARGET_ANSWER = "This is a silly demo\n"
LOCAL_ANSWER = "This is a silly demo with tether\n"


class KubeSession(BackgroundTether):
    """`tether exec -f <seed config>` running the local silly server, in the background."""

    def __init__(self, env: dict[str, str], config: str, tmp: Path,
                 argv: list[str] | None = None) -> None:
        argv = argv or [sys.executable, SILLY, str(PORT), LOCAL_ANSWER.strip()]
        super().__init__(["exec", "-f", str(CONFIGS / config), "--", *argv], cwd=tmp, env=env)

    def wait_for(self, text: str, timeout: float = 20) -> None:
        super().wait_for(text, timeout)

    def stop(self, timeout: float = 10) -> None:
        super().stop(timeout)


@pytest.fixture
def silly(kube):
    """deployment/silly-demo in staging, its pod serving the target's answer on 8080."""
    [pod] = kube.deploy("silly-demo", "staging",
                        cmd=[sys.executable, SILLY, str(PORT), TARGET_ANSWER.strip()])
    netns = kube.netns[pod["metadata"]["name"]]
    netns.wait_port(PORT)
    return netns


@pytest.fixture
def kube_session(kube_env, tmp_path):
    started: list[KubeSession] = []

    def start(config: str, argv: list[str] | None = None) -> KubeSession:
        s = KubeSession(kube_env, config, tmp_path, argv)
        started.append(s)
        s.wait_for("port 8080 of the target")
        assert any("(relayed over the agent link)" in line for line in s.lines), s.output
        return s

    yield start
    for s in started:
        s.stop()


def curl(pod, path: str = "/") -> str:
    res = subprocess.run(["curl", "-sS", "-m", "5", f"http://{pod.ip}:{PORT}{path}"],
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    return res.stdout


def target_answers_within(pod, seconds: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        res = subprocess.run(["curl", "-sS", "-m", "1", f"http://{pod.ip}:{PORT}/probe"],
                             capture_output=True, text=True)
        if res.stdout == TARGET_ANSWER:
            return
        time.sleep(0.05)
    raise AssertionError(f"the target did not answer again within {seconds}s")


def test_mirror_target_answers_and_local_program_logs_a_copy(silly, kube_session):
    s = kube_session("mirror.json")
    assert curl(silly, "/?mirrored=1") == TARGET_ANSWER
    s.wait_for("Handling request URI=/?mirrored=1", timeout=5)


def test_steal_local_answers_then_target_again_after_exit(silly, kube_session):
    s = kube_session("steal.json")
    assert curl(silly, "/?stolen=1") == LOCAL_ANSWER
    s.wait_for("Handling request URI=/?stolen=1", timeout=5)
    line = next(ln for ln in s.lines if "URI=/?stolen=1" in ln)
    assert "peer=198.18." in line, line  # the real client, not the relay on loopback
    s.stop()
    target_answers_within(silly, 2)


def test_filter_vfarcic_local_others_target(silly, kube_session):
    s = kube_session("filter.json")
    assert curl(silly, "/?user=vfarcic") == LOCAL_ANSWER
    assert curl(silly, "/?user=someone") == TARGET_ANSWER
    assert curl(silly, "/") == TARGET_ANSWER
    s.wait_for("URI=/?user=vfarcic", timeout=5)
    assert "URI=/?user=someone" not in s.output




def test_outgoing_and_dns_reach_what_only_the_pod_reaches(kube, pod_factory, kube_tether):
    [pod] = kube.deploy("silly-demo", "staging")
    front = kube.netns[pod["metadata"]["name"]]
    db = pod_factory("db", behind=front, cmd=[sys.executable, "-c", ECHO])
    front.exec(["sh", "-c", f"for i in $(seq 50); do nc -z {db.ip} 7000 && exit 0; "
                            "sleep 0.1; done; exit 1"])
    # A name only the pod knows (its /etc/hosts; the file is the pod's, edited in place).
    with open(front.root / "etc" / "hosts", "a") as hosts:
        hosts.write(f"{db.ip}\tdb.internal\n")
    res = kube_tether([sys.executable, "-c", CLIENT, "db.internal"],
                      args=["-f", str(CONFIGS / "steal.json")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resolved: {db.ip}" in res.stdout
    assert "reply: pong ping from" in res.stdout, res.stdout


# The program of the reconnect scene: it serves the stolen port 8080 and, for each request,
# resolves db.internal (a name only the pod knows) and talks to it, answering with its pid.
RESILIENT = r'''
import os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            c = socket.create_connection(("db.internal", 7000), timeout=3)
            c.sendall(b"ping"); body = c.recv(1024); c.close()
        except OSError as e:
            body = f"error {e}".encode()
        body = f"pid {os.getpid()} ".encode() + body
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
'''


def test_dropped_port_forward_is_reestablished_and_the_program_keeps_its_state(
        kube, silly, pod_factory, kube_env, tmp_path):
    db = pod_factory("db", behind=silly, cmd=[sys.executable, "-c", ECHO])
    silly.exec(["sh", "-c", f"for i in $(seq 50); do nc -z {db.ip} 7000 && exit 0; "
                            "sleep 0.1; done; exit 1"])
    with open(silly.root / "etc" / "hosts", "a") as hosts:
        hosts.write(f"{db.ip}\tdb.internal\n")
    s = KubeSession(kube_env, "steal.json", tmp_path, [sys.executable, "-c", RESILIENT])
    try:
        s.wait_for("port 8080 of the target")
        before = curl(silly, "/before")
        assert before.startswith("pid ") and "pong ping" in before, before
        for drop in (1, 2):  # the API server may cut it again later: each time it comes back
            kube.drop_port_forwards()
            dropped = time.monotonic()
            after = ""
            while time.monotonic() - dropped < 10:  # meanwhile the target answers itself
                res = subprocess.run(
                    ["curl", "-sS", "-m", "2", f"http://{silly.ip}:{PORT}/after"],
                    capture_output=True, text=True)
                if res.stdout.startswith("pid ") and "pong ping" in res.stdout:
                    after = res.stdout
                    break
                time.sleep(0.1)
            # Stolen again by the same process: DNS and the outgoing connection work again.
            assert after.split()[:2] == before.split()[:2], (after, s.output)
            assert s.proc.poll() is None
            # tether says it once per drop
            deadline = time.monotonic() + 5
            while sum("reconnected after" in line for line in s.lines) < drop:
                assert time.monotonic() < deadline, s.output
                time.sleep(0.05)
            assert sum("dropped" in line for line in s.lines) == drop, s.output
    finally:
        s.stop()
    target_answers_within(silly, 2)


def test_an_agent_that_is_really_gone_still_ends_the_session(kube, silly, kube_session):
    s = kube_session("steal.json")
    for c in kube.agent_processes():
        c.proc.kill()
    s.proc.wait(30)
    assert "lost the connection to the agent" in s.output or "lost the agent" in s.output, \
        s.output
    target_answers_within(silly, 2)
