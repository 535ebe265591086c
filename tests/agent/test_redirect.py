"""The agent's nftables redirect (python/tether/agent/redirect.py), in real network namespaces.

Each test runs a target pod with an "app" listening on APP_PORT and an "agent" listener on
AGENT_PORT that answers with the original destination it looked up. The Redirector itself
runs in a separate Python process inside the pod (as the agent does), driven over stdin.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PYTHON_DIR = str(Path(__file__).resolve().parents[2] / "python")
APP_PORT = 8080
AGENT_PORT = 9999
DUAL_STACK_AGENT_PORT = 9998
AGENT_GID = 4242

# "app" on APP_PORT (dual stack); "agent" on AGENT_PORT, one IPv4 and one IPv6-only socket,
# and on DUAL_STACK_AGENT_PORT, answering "agent <original ip> <original port> <family>".
SERVERS = f"""
import socket, sys, threading
from tether.agent.redirect import original_dst

def serve(sock, answer):
    sock.listen(64)
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(answer(conn).encode() + b"\\n")

def listener(family, port, v6only=None):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    return s

def agent(conn):
    ip, port = original_dst(conn)
    return f"agent {{ip}} {{port}} {{conn.family.name}}"

jobs = [
    (listener(socket.AF_INET6, {APP_PORT}, 0), lambda c: "app"),
    (listener(socket.AF_INET, {AGENT_PORT}), agent),
    (listener(socket.AF_INET6, {AGENT_PORT}, 1), agent),
    (listener(socket.AF_INET6, {DUAL_STACK_AGENT_PORT}, 0), agent),
]
for sock, answer in jobs:
    threading.Thread(target=serve, args=(sock, answer), daemon=True).start()
threading.Event().wait()
"""

# The agent side: a Redirector driven by JSON lines on stdin, answering "ok" or the error.
DRIVER = """
import json, sys
from tether.agent.redirect import Redirector
r = Redirector(**json.loads(sys.argv[1]))
print(json.dumps(["ok", r.table]), flush=True)
for line in sys.stdin:
    cmd, *args = json.loads(line)
    try:
        attr = r._context().run if cmd == "raw" else getattr(r, cmd)
        result = attr(*args) if callable(attr) else attr
        print(json.dumps(["ok", result]), flush=True)
    except Exception as e:
        print(json.dumps([type(e).__name__, str(e)]), flush=True)
"""

# A client inside the pod: connect, optionally as AGENT_GID or with the bypass mark.
CLIENT = f"""
import os, socket, sys
from tether.agent.redirect import bypass
host, port, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if how == "gid":
    os.setgid({AGENT_GID})
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
if how == "mark":
    bypass(s)
s.settimeout(2)
s.connect((host, port))
print(s.makefile().readline().strip())
"""

ENV = {"PYTHONPATH": PYTHON_DIR, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


class Agent:
    """A Redirector in its own process inside the pod."""

    def __init__(self, pod, **kwargs):
        self.proc = pod.popen(
            [sys.executable, "-c", DRIVER, json.dumps(kwargs)],
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        status, self.table = self._reply()
        assert status == "ok", self.table

    def _reply(self):
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"driver died: {self.proc.stderr.read()}")
        return json.loads(line)

    def __call__(self, cmd, *args):
        self.proc.stdin.write(json.dumps([cmd, *args]) + "\n")
        self.proc.stdin.flush()
        return self._reply()


@pytest.fixture
def target(pod_factory):
    pod = pod_factory(
        "target", cmd=[sys.executable, "-c", SERVERS], env={"PYTHONPATH": PYTHON_DIR}
    )
    pod.wait_port(APP_PORT)
    pod.wait_port(AGENT_PORT)
    return pod


def ask_from_host(ip, port):
    with socket.create_connection((ip, port), timeout=2) as s:
        return s.makefile().readline().strip()


def ask_from_pod(pod, host, port, how="plain"):
    out = pod.exec([sys.executable, "-c", CLIENT, host, str(port), how], env=ENV)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def tether_tables(pod):
    out = pod.exec(["nft", "list", "tables"])
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if "tether_" in line]


def test_redirect_steals_connections_from_outside_and_remove_gives_them_back(target):
    agent = Agent(target)
    assert ask_from_host(target.ip, APP_PORT) == "app"
    assert agent("add", APP_PORT, AGENT_PORT) == ["ok", None]
    assert ask_from_host(target.ip, APP_PORT) == f"agent {target.ip} {APP_PORT} AF_INET"
    assert agent("remove", APP_PORT) == ["ok", None]
    assert ask_from_host(target.ip, APP_PORT) == "app"
    assert agent("remove", APP_PORT) == ["ok", None]  # idempotent


def test_add_replaces_an_existing_redirect(target):
    agent = Agent(target)
    agent("add", APP_PORT, 1)
    agent("add", APP_PORT, AGENT_PORT)
    assert agent("ports") == ["ok", {str(APP_PORT): AGENT_PORT}]
    assert ask_from_host(target.ip, APP_PORT).startswith("agent ")


def test_table_is_an_owner_table_and_close_deletes_it(target):
    agent = Agent(target)
    assert tether_tables(target) == [f"table inet {agent.table}"]
    _, ruleset = agent("ruleset")
    assert "flags owner" in ruleset
    agent("close")
    assert tether_tables(target) == []


def test_pods_own_connections_are_stolen_but_the_agents_are_not(target):
    agent = Agent(target, skgid=AGENT_GID)
    agent("add", APP_PORT, AGENT_PORT)
    assert (
        ask_from_pod(target, target.ip, APP_PORT)
        == f"agent {target.ip} {APP_PORT} AF_INET"
    )
    assert (
        ask_from_pod(target, "127.0.0.1", APP_PORT)
        == f"agent 127.0.0.1 {APP_PORT} AF_INET"
    )
    # The agent reaches the original app: by its dedicated gid, or by the bypass mark.
    assert ask_from_pod(target, target.ip, APP_PORT, how="gid") == "app"
    assert ask_from_pod(target, target.ip, APP_PORT, how="mark") == "app"
    assert ask_from_pod(target, "127.0.0.1", APP_PORT, how="mark") == "app"


def test_without_skgid_only_the_mark_exempts(target):
    agent = Agent(target)
    agent("add", APP_PORT, AGENT_PORT)
    assert ask_from_pod(target, target.ip, APP_PORT, how="gid").startswith("agent ")
    assert ask_from_pod(target, target.ip, APP_PORT, how="mark") == "app"


def test_outgoing_connections_to_other_hosts_are_not_stolen(target, pod_factory):
    other = pod_factory(
        "other", cmd=[sys.executable, "-c", SERVERS], env={"PYTHONPATH": PYTHON_DIR}
    )
    other.wait_port(APP_PORT)
    agent = Agent(target)
    agent("add", APP_PORT, AGENT_PORT)
    assert ask_from_pod(target, other.ip, APP_PORT) == "app"


def test_original_dst_over_ipv6(target):
    agent = Agent(target)
    agent("add", APP_PORT, AGENT_PORT)
    assert ask_from_pod(target, "::1", APP_PORT) == f"agent ::1 {APP_PORT} AF_INET6"


def test_original_dst_of_ipv4_on_a_dual_stack_socket(target):
    agent = Agent(target)
    agent("add", APP_PORT, DUAL_STACK_AGENT_PORT)
    assert (
        ask_from_host(target.ip, APP_PORT) == f"agent {target.ip} {APP_PORT} AF_INET6"
    )
    assert ask_from_pod(target, "::1", APP_PORT) == f"agent ::1 {APP_PORT} AF_INET6"


def test_sigkill_of_the_agent_leaves_nothing_behind(target):
    agent = Agent(target)
    agent("add", APP_PORT, AGENT_PORT)
    assert ask_from_host(target.ip, APP_PORT).startswith("agent ")
    assert tether_tables(target)
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    deadline = time.monotonic() + 1.0
    while tether_tables(target):
        assert time.monotonic() < deadline, "the owner table outlived its agent"
        time.sleep(0.02)
    assert ask_from_host(target.ip, APP_PORT) == "app"


def test_libnftables_errors_become_exceptions_with_its_message(target):
    agent = Agent(target)
    status, message = agent(
        "raw", "add element inet nonexistent_table redirects { 1 : 2 }\n"
    )
    assert status == "RedirectError"
    assert "No such file or directory" in message
    status, message = agent("raw", "this is not nft\n")
    assert status == "RedirectError" and "syntax error" in message
    status, message = agent("add", 0, 1)
    assert status == "ValueError" and "port 0" in message


def test_missing_cap_net_admin_is_named(target):
    code = "from tether.agent.redirect import Redirector; Redirector()"
    out = target.exec(
        [
            "setpriv",
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
            sys.executable,
            "-c",
            code,
        ],
        env=ENV,
    )
    assert out.returncode != 0
    assert "CAP_NET_ADMIN is missing" in out.stderr
    assert tether_tables(target) == []


def test_missing_libnftables_is_named(monkeypatch):
    from tether.agent import redirect

    monkeypatch.setattr(redirect, "LIBNFTABLES", "libnftables-missing.so.0")
    with pytest.raises(redirect.RedirectError, match="libnftables1"):
        redirect.Redirector()
