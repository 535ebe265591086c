"""Scene: another user of the developer's machine tries to take the program's relayed
connections (the path of Kubernetes targets): it watches /proc/net for new loopback ports
and connects or sends to each at once.  Every connection stays the program's, and none of
the thief's bytes reaches the pod's server.

tether and the thief share a network namespace of their own, so the thief sees only this
session's loopback ports (not those of other tests running beside it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from e2e_support import tether_cmd

PROGS = os.path.join(os.path.dirname(__file__), "programs")
ECHO_PORT = 7000

pytestmark = pytest.mark.e2e


def test_an_unprivileged_thief_racing_for_the_relay_gets_nothing(scene, tmp_path):
    front, _behind = scene
    thief = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
         "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
         os.path.join(PROGS, "relay_thief.py")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert thief.stdout is not None and thief.stdout.readline() == "watching\n"
        res = subprocess.run(
            ["nsenter", f"--net=/proc/{thief.pid}/ns/net", "--", *tether_cmd(), "exec", "-t",
             f"process/{front.pid}", "--", sys.executable,
             os.path.join(PROGS, "many_connects.py"), "db.internal", str(ECHO_PORT), "40"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**os.environ, "TETHER_OUTGOING_RELAY": "1"})
    finally:
        report, _ = thief.communicate(timeout=10)  # closing its stdin stops it
    assert res.returncode == 0, res.stdout + res.stderr + report
    assert "ok 40" in res.stdout
    tries = {k: int(n) for k, n in re.findall(r"(tcp|udp) tries (\d+)", report)}
    stolen = [int(n) for n in re.findall(r"stolen (\d+)", report)]
    assert stolen == [0, 0], report
    # The thief saw the relay's UDP ports (else this proves nothing); a TCP relay has no
    # listener for longer than its own connect (tests/features/test_outgoing.py races it).
    assert tries["udp"] > 0, report
