"""Faults: the agent dies mid-connection; garbage on the channel.  The program gets an error
on the affected socket, never a hang, and everything else keeps working."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from e2e_support import tether_cmd

pytestmark = pytest.mark.e2e
PROGS = os.path.join(os.path.dirname(__file__), "programs")
ECHO_PORT = 7000


def _local_echo():
    srv = socket.create_server(("127.0.0.1", 0))

    def run():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(100), b"")],
                             daemon=True).start()

    threading.Thread(target=run, daemon=True).start()
    return srv


def _agent_pid(target_pid: int) -> int:
    out = subprocess.run(["pgrep", "-f", "--", f"--target-pid {target_pid} "], capture_output=True,
                         text=True).stdout.split()
    assert out, "no agent found"
    return int(out[0])


@pytest.mark.parametrize("relay", ["0", "1"], ids=["fd", "relay"])
def test_agent_killed_mid_connection(scene, relay):
    front, behind = scene
    srv = _local_echo()
    proc = subprocess.Popen(
        tether_cmd() + ["exec", "-t", f"process/{front.pid}", "--", "python3",
                        os.path.join(PROGS, "survivor.py"), "db.internal", str(ECHO_PORT),
                        str(srv.getsockname()[1])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TETHER_OUTGOING_RELAY": relay})
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(_agent_pid(front.pid), signal.SIGKILL)
        time.sleep(0.3)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        srv.close()
    lines = out.splitlines()
    if relay == "1":
        # The relayed connection is gone with the agent: an error or EOF, at once.
        assert lines[0] in ("remote: eof", "remote: error 104", "remote: error 32"), out
    else:
        # The socket was made in the pod and belongs to the program: it outlives the agent.
        assert lines[0] == "remote: data", out
    assert float(lines[1].split()[1]) < 5, out
    assert lines[2] == "local: data", out + err


@pytest.mark.parametrize("frame", ["ffffffff", "00000003c1c1c1", "00000002a161"],
                         ids=["oversized", "undecodable", "not-a-map"])
def test_malformed_message_closes_that_session_only(tether, scene, frame):
    front, behind = scene
    res = tether(front, ["python3", os.path.join(PROGS, "bad_frame.py"), "db.internal", frame])
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["bad session: closed", f"resolved: {behind.ip}"]
