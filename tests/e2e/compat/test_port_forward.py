"""`tether port-forward -L [local:]host:port`: programs that do not run under tether reach
hosts as the target sees them.  The incumbent's `mirrord port-forward -L` makes each
connection to the local port from the target, resolving a host name in the target when
the connection comes in (`mirrord/cli/src/config.rs`, `PortForwardArgs`)."""

from __future__ import annotations

import socket
import sys
import time

import pytest
from e2e_support import BackgroundTether, eventually_no_agents

ECHO = ("import socket\ns = socket.create_server(('127.0.0.1', 7000))\nwhile True:\n"
        "    c, _ = s.accept()\n    c.sendall(b'pod got ' + c.recv(100))\n    c.close()\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port: int, text: bytes = b"hello") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(text)
        return s.recv(100)


@pytest.fixture
def echo_pod(pod_factory):
    """A server on the pod's own loopback (unreachable from this machine), and a name that
    only the pod's /etc/hosts knows."""
    pod = pod_factory("pf", hosts={"db.internal": "127.0.0.1"},
                      cmd=[sys.executable, "-c", ECHO])
    return pod


def test_local_ports_reach_the_targets_hosts_by_name_and_address(echo_pod, tmp_path):
    by_name, by_addr, refused = free_port(), free_port(), free_port()
    pf = BackgroundTether(["port-forward", "-t", f"process/{echo_pod.pid}",
                           "-L", f"{by_name}:db.internal:7000", "-L", f"{by_addr}:127.0.0.1:7000",
                           "-L", f"{refused}:127.0.0.1:7999"], cwd=tmp_path)
    try:
        pf.wait_for(f"forwarding 127.0.0.1:{refused}")
        deadline = time.monotonic() + 10
        while True:  # the server in the pod may still be starting
            try:
                assert ask(by_name) == b"pod got hello"
                break
            except (ConnectionError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert ask(by_addr, b"again") == b"pod got again"
        # nothing listens on the pod's 7999: the local client sees the refusal
        with socket.create_connection(("127.0.0.1", refused), timeout=10) as s:
            with pytest.raises(ConnectionResetError):
                s.recv(10)
        pf.wait_for("Connection refused (in the target)")
    finally:
        pf.stop()
    assert pf.proc.returncode == 0, pf.output
    eventually_no_agents(echo_pod.pid)


def test_bad_mapping_is_one_line_naming_it(tmp_path):
    import subprocess

    from e2e_support import tether_cmd

    res = subprocess.run(tether_cmd() + ["port-forward", "-t", "process/1", "-L", "80:db"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "Invalid value for -L" in res.stderr and "'db'" in res.stderr


def test_a_local_port_in_use_is_one_line_and_starts_no_agent(echo_pod):
    import subprocess

    from e2e_support import agents_running, tether_cmd

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run(tether_cmd() + ["port-forward", "-t", f"process/{echo_pod.pid}",
                                             "-L", f"{port}:db.internal:7000"],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip() == (f"Error: -L {port}:db.internal:7000: cannot listen on "
                                  f"127.0.0.1:{port}: Address already in use")
    assert agents_running(echo_pod.pid) == []
