"""The README's first command: the built-in demo must run to the end on a fresh machine."""

import re
import subprocess
import sys

from e2e_support import eventually_no_agents


def test_demo_walkthrough_succeeds_and_leaves_nothing_behind():
    res = subprocess.run([sys.executable, "-m", "tether.demo"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "DEBUG DB Endpoint: silly-demo-db" in out  # the pod's environment
    assert "Handling request URI=/?something=else" in out  # mirror
    assert "-> the pod's /videos lists the rows written by both" in out  # remote context
    assert "-> the pod's client got the local app's answer" in out  # steal
    assert "-> my request was answered by my local app" in out  # filtered steal
    assert "-> everyone else keeps the pod's answers" in out
    target = re.search(r"target: process/(\d+)", res.stdout)
    assert target is not None
    eventually_no_agents(int(target.group(1)))
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "silly-de" not in netns
