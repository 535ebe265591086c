"""The README's first command: the built-in demo must run to the end on a fresh machine."""

import re
import subprocess
import sys

from e2e_support import eventually_no_agents


def test_demo_walkthrough_succeeds_and_leaves_nothing_behind():
    res = subprocess.run([sys.executable, "-m", "tether.demo"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "This is a silly demo" in res.stdout
    assert "DEBUG DB Endpoint: silly-demo-db" in res.stdout
    target = re.search(r"target: process/(\d+)", res.stdout)
    assert target is not None
    eventually_no_agents(int(target.group(1)))
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "silly-de" not in netns
