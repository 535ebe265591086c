"""IPv6: a program under tether connects over IPv6 from the target and serves the target's
IPv6 clients when it steals.  The incumbent handles IPv6 only with `feature.network.ipv6`
on ("turn on if your application listens to incoming traffic over IPv6, or connects to
other services over IPv6", mirrord's configuration reference); tether handles it without
the switch, and `ipv6: false` keeps IPv6 sockets on this machine as mirrord's default does.
The pods get an IPv6 address of their own on their loopback: only they reach it."""

from __future__ import annotations

import sys
import time

import pytest
from e2e_support import BackgroundTether

V6 = "fd00:7e7e::2"
SERVE = ("import socket, sys\ns = socket.create_server((sys.argv[1], int(sys.argv[2])), "
         "family=socket.AF_INET6)\nwhile True:\n    c, _ = s.accept()\n"
         "    c.sendall(b'pod answers ' + c.recv(100)); c.close()\n")
CLIENT = ("import socket, sys\ntry:\n    c = socket.create_connection((sys.argv[1], "
          "int(sys.argv[2])), timeout=5)\n    c.sendall(b'v6')\n    print(c.recv(100).decode())\n"
          "except OSError as e:\n    print(type(e).__name__)\n")


@pytest.fixture
def v6_pod(pod_factory):
    pod = pod_factory("v6", cmd=["sh", "-c", f'ip -6 addr add {V6}/128 dev lo && exec "$0" "$@"',
                                 sys.executable, "-c", SERVE, V6, "7000"])
    deadline = time.monotonic() + 5
    while pod.exec([sys.executable, "-c", CLIENT, V6, "7000"]).stdout.strip() != "pod answers v6":
        assert time.monotonic() < deadline, "the pod's IPv6 server did not start"
        time.sleep(0.05)
    return pod


def test_outgoing_over_ipv6_leaves_from_the_target(tether, v6_pod):
    res = tether(v6_pod, [sys.executable, "-c", CLIENT, V6, "7000"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "pod answers v6"


def test_ipv6_false_keeps_ipv6_on_this_machine(tether, v6_pod):
    res = tether(v6_pod, [sys.executable, "-c", CLIENT, V6, "7000"],
                 config={"feature": {"network": {"ipv6": False}}})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("Error")  # no route to the pod's address from here


LOCAL_SERVER = ("import socket, sys\ns = socket.create_server(('::', 8080), "
                "family=socket.AF_INET6, dualstack_ipv6=True)\nprint('listening', flush=True)\n"
                "while True:\n    c, _ = s.accept()\n"
                "    c.sendall(b'laptop answers ' + c.recv(100)); c.close()\n")


def test_steal_serves_the_targets_ipv6_clients(v6_pod, tmp_path):
    session = BackgroundTether(["exec", "-t", f"process/{v6_pod.pid}", "--steal", "--",
                                sys.executable, "-u", "-c", LOCAL_SERVER], cwd=tmp_path)
    try:
        session.wait_for("listening")
        res = v6_pod.exec([sys.executable, "-c", CLIENT, V6, "8080"])
        assert res.stdout.strip() == "laptop answers v6", session.output
        res = v6_pod.exec([sys.executable, "-c", CLIENT, "::1", "8080"])
        assert res.stdout.strip() == "laptop answers v6", session.output
    finally:
        session.stop()
