"""The test harness itself: pods as network namespaces (tests/harness/pods.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from harness.pods import (
    NETNS_DIR,
    STATE_DIR,
    PodError,
    PodFactory,
    cleanup_stale,
    make_pod,
)

HTTP_SERVER = [sys.executable, "-m", "http.server", "8000", "--bind", "0.0.0.0"]

# Connects to argv[1]:argv[2] and prints "ok" or the error; runs inside a pod.
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("ok")
except OSError as e:
    print("error", e)
"""


def connect_from_host(ip: str, port: int) -> str:
    try:
        socket.create_connection((ip, port), timeout=2).close()
        return "ok"
    except OSError as e:
        return f"error {e}"


def test_host_blackholes_the_test_range(pod):
    routes = subprocess.run(
        ["ip", "route", "show", "type", "blackhole"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "198.18.0.0/15" in routes.stdout
    # The pod's own /30 is more specific and still works.
    assert connect_from_host(pod.ip, 1).startswith("error")  # refused, not blackholed
    assert "refused" in connect_from_host(pod.ip, 1)


def test_pod_serves_http_to_the_host(pod_factory):
    web = pod_factory("web", cmd=HTTP_SERVER)
    assert web.ip.startswith("198.18.")
    assert web.name.startswith("tt-web-") and len(web.name) <= 15
    web.wait_port(8000)
    with urllib.request.urlopen(f"http://{web.ip}:8000/", timeout=5) as resp:
        assert resp.status == 200


def test_pods_reach_each_other_through_the_host(pod_factory):
    web = pod_factory("web", cmd=HTTP_SERVER)
    client = pod_factory("client")
    web.wait_port(8000)
    out = client.exec([sys.executable, "-c", CONNECT, web.ip, "8000"])
    assert out.stdout.strip() == "ok", out


def test_behind_pod_is_reachable_only_from_its_front_pod(pod_factory):
    front = pod_factory("backend")
    db = pod_factory("db", behind=front, cmd=HTTP_SERVER)
    assert db.ip.startswith("198.19.")
    db.wait_port(8000)
    out = front.exec([sys.executable, "-c", CONNECT, db.ip, "8000"])
    assert out.stdout.strip() == "ok", out
    started = time.monotonic()
    assert connect_from_host(db.ip, 8000).startswith("error")
    # Blackholed: fails at once, never leaves the host.
    assert time.monotonic() - started < 1.5


def test_main_process_has_exactly_the_given_environment(pod_factory):
    p = pod_factory("env", env={"DB_HOST": "db", "DB_PASSWORD": "s3cret"})
    environ = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
    assert sorted(e for e in environ if e) == [b"DB_HOST=db", b"DB_PASSWORD=s3cret"]
    assert p.env == {"DB_HOST": "db", "DB_PASSWORD": "s3cret"}


def test_hosts_and_resolv_conf_are_the_pods(pod_factory):
    p = pod_factory("backend", hosts={"db.staging.svc": "198.19.0.2"})
    hosts = (p.root / "etc/hosts").read_text()
    assert "198.19.0.2\tdb.staging.svc" in hosts
    assert f"{p.ip}\t{p.name}" in hosts
    assert "localhost" in hosts
    assert hosts == Path(f"/etc/netns/{p.name}/hosts").read_text()
    resolv = (p.root / "etc/resolv.conf").read_text()
    assert "options timeout:1 attempts:1" in resolv
    assert Path("/etc/hosts").read_text() != hosts  # the host keeps its own
    out = p.exec(["getent", "hosts", "db.staging.svc"])
    assert out.stdout.split() == ["198.19.0.2", "db.staging.svc"]
    assert p.exec(["hostname"]).stdout.strip() == p.name
    # DNS fails fast instead of hanging.
    started = time.monotonic()
    out = p.exec(
        [
            sys.executable,
            "-c",
            "import socket; socket.getaddrinfo('nothing.invalid.', 80)",
        ]
    )
    assert out.returncode != 0
    assert time.monotonic() - started < 3


def test_files_exist_only_inside_the_pod(pod_factory):
    existing = "/etc/hostname" if Path("/etc/hostname").exists() else "/etc/hosts"
    host_before = Path(existing).read_bytes()
    files = {
        existing: "from-the-pod\n",
        "/etc/tether-test/app/config.yaml": "db: db.staging.svc\n",
        "/etc/tether-test/other.conf": b"\x00binary",
        "/tether-test-top/secret/token": "t0ken",
    }
    p = pod_factory("files", files=files)
    for path, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        assert (p.root / path.lstrip("/")).read_bytes() == data
    assert (
        p.exec(["cat", "/etc/tether-test/app/config.yaml"]).stdout
        == "db: db.staging.svc\n"
    )
    # The rest of an overlaid directory is still there.
    assert (p.root / "etc/passwd").exists()
    assert Path(existing).read_bytes() == host_before
    assert not Path("/etc/tether-test").exists()
    assert not Path("/tether-test-top/secret").exists()


def test_teardown_removes_processes_netns_links_and_files():
    with PodFactory() as factory:
        p = factory("gone", files={"/etc/tether-test-gone/x": "x"})
        child = p.popen(["sleep", "600"])
        pids = [p.pid, child.pid]
        name, netns_path = p.name, p.netns_path
        host_if = p.host_if
        assert host_if and Path(f"/sys/class/net/{host_if}").exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert not Path(netns_path).exists()
    assert not Path(f"/etc/netns/{name}").exists()
    assert not (STATE_DIR / name).exists()
    assert not Path(f"/sys/class/net/{host_if}").exists()
    assert (
        name
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        ).stdout
    )


def test_teardown_runs_when_the_body_fails():
    with pytest.raises(ZeroDivisionError), make_pod("boom") as p:
        name = p.name
        1 / 0  # noqa: B018
    assert not (NETNS_DIR / name).exists()


def test_safety_net_removes_pods_of_dead_runs_only(pod):
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from harness.pods import PodFactory;"
        "p = PodFactory()('crashed'); print(p.name, flush=True); time.sleep(600)"
    )
    tests_dir = str(Path(__file__).parent)
    crashed = subprocess.Popen(
        [sys.executable, "-c", script, tests_dir], stdout=subprocess.PIPE, text=True
    )
    name = crashed.stdout.readline().strip()
    assert (NETNS_DIR / name).exists()
    crashed.send_signal(signal.SIGKILL)
    crashed.wait()
    assert (NETNS_DIR / name).exists()  # nobody cleaned up: that is the crash
    removed = cleanup_stale()  # (a concurrent run's safety net may have been first)
    assert pod.name not in removed  # a live run's pod is left alone
    assert not (NETNS_DIR / name).exists()
    assert not Path(f"/etc/netns/{name}").exists()
    assert (NETNS_DIR / pod.name).exists()


def test_pod_creation_is_fast(pod_factory):
    pod_factory("warm")
    times = []
    for _ in range(5):
        started = time.perf_counter()
        pod_factory("fast", files={"/etc/tether-test-fast/x": "x"})
        times.append(time.perf_counter() - started)
    assert sorted(times)[2] < 0.5, times


def test_popen_runs_in_the_pods_namespaces(pod):
    proc = pod.popen(["sleep", "600"])
    deadline = time.monotonic() + 2
    while (
        Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep"
    ):  # nsenter exec'd
        assert time.monotonic() < deadline
        time.sleep(0.005)
    for ns in ("net", "mnt", "uts"):
        assert os.readlink(f"/proc/{proc.pid}/ns/{ns}") == os.readlink(
            f"/proc/{pod.pid}/ns/{ns}"
        )
    assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_failed_creation_raises_and_leaves_nothing(pod_factory):
    names = []
    with pytest.raises(PodError, match="No such file") as bad_cmd:
        pod_factory("badcmd", cmd=["/nonexistent/tether-test-binary"])
    names.append(str(bad_cmd.value).split()[1].rstrip(":"))
    with pytest.raises(PodError, match="is a directory") as bad_dir:
        pod_factory("baddir", files={"/etc": "x"})
    names.append(str(bad_dir.value).split()[1].rstrip(":"))
    for name in names:
        assert name.startswith("tt-bad")
        assert not (NETNS_DIR / name).exists()
        assert not (STATE_DIR / name).exists()
        assert not Path(f"/etc/netns/{name}").exists()
    assert pod_factory.pods == []
