"""The agent's conntrack clean-up (python/tether/agent/conntrack.py) in a real network
namespace: it finds the connections a redirect NATed and deletes exactly those it is told
to, never the target's own."""

from __future__ import annotations

import json
import random
import socket
import sys
from pathlib import Path

import pytest

PYTHON_DIR = str(Path(__file__).resolve().parents[2] / "python")
APP, AGENT = 8080, 9999

# An "app" on APP and an "agent" on AGENT that accept and keep every connection open.
SERVERS = f"""
import socket, threading
def keep(port):
    s = socket.create_server(("0.0.0.0", port), reuse_port=False)
    held = []
    while True:
        held.append(s.accept()[0])
for port in ({APP}, {AGENT}):
    threading.Thread(target=keep, args=(port,), daemon=True).start()
threading.Event().wait()
"""

FORGET = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tether.agent import conntrack
how = sys.argv[2]
live = conntrack.listening_ports()
pick = (lambda e: True) if how == "all" else (lambda e: e.reply_sport not in live)
gone = conntrack.forget(int(sys.argv[3]), pick)
left = [[e.sport, e.dport, e.reply_sport] for e in conntrack.Conntrack().entries()]
print(json.dumps({"gone": gone, "left": left}))
"""


@pytest.fixture
def pod(pod_factory):
    pod = pod_factory("ct", cmd=[sys.executable, "-c", SERVERS])
    pod.wait_port(APP)
    pod.wait_port(AGENT)
    return pod


def forget(pod, how: str, port: int = APP) -> dict:
    res = pod.exec([sys.executable, "-c", FORGET, PYTHON_DIR, how, str(port)], check=True)
    return json.loads(res.stdout)


def test_forget_deletes_the_redirected_entries_of_a_port_and_keeps_the_targets_own(pod):
    base = random.randrange(20000, 30000, 10)
    pod.exec(["nft", f"add table ip t; add chain ip t pre {{ type nat hook prerouting "
              f"priority -100; }}; add rule ip t pre tcp dport {APP} tcp sport "
              f"{base}-{base + 1} redirect to :{AGENT}"], check=True)
    clients = []
    for sport in (base, base + 1, base + 5):  # two redirected, one to the app itself
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("0.0.0.0", sport))
        c.connect((pod.ip, APP))
        clients.append(c)
    try:
        # The agent still listens: nothing of it is stale.
        kept = forget(pod, "stale")
        assert kept["gone"] == 0
        assert sorted(e[0] for e in kept["left"] if e[1] == APP) == [base, base + 1, base + 5]
        assert forget(pod, "all", port=APP + 1)["gone"] == 0  # another port: untouched
        done = forget(pod, "all")
        assert done["gone"] == 2
        assert [e for e in done["left"] if e[1] == APP] == [[base + 5, APP, APP]]
    finally:
        for c in clients:
            c.close()
