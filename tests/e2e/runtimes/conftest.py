"""Fixtures of the runtime scenes: a pod with Kubernetes-style DNS and files of its own,
and the test programs of each runtime, built once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtimes_support import GOPROBE, PROGRAMS, go_env, toolchains  # noqa: E402

ECHO = ("import socket\ns = socket.create_server(('0.0.0.0', 7000))\nwhile True:\n"
        "    c, _ = s.accept()\n    c.recv(100)\n    c.sendall(b'pong from the database\\n')\n"
        "    c.close()\n")
SEARCH = "staging.svc.cluster.local svc.cluster.local cluster.local"


@pytest.fixture(scope="session")
def goprobe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """tests/programs/goprobe built by each toolchain: {"1.19": path, "current": path}."""
    out = tmp_path_factory.mktemp("goprobe")
    built = {}
    for version, (gocmd, extra) in toolchains().items():
        exe = out / f"goprobe-{version}"
        subprocess.run([gocmd, "build", "-o", str(exe), "."], cwd=GOPROBE, check=True,
                       capture_output=True, env=go_env(extra), timeout=180)
        built[version] = str(exe)
    return built


@pytest.fixture(scope="session")
def static_resolve(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/programs/resolve.c linked statically (glibc)."""
    exe = tmp_path_factory.mktemp("static") / "resolve"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(exe), str(PROGRAMS / "resolve.c")],
                   check=True, capture_output=True, timeout=120)
    return str(exe)


@pytest.fixture(scope="session")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Command lines of the JVM and Ruby probes (the Java class compiled once)."""
    out = tmp_path_factory.mktemp("jvm")
    subprocess.run(["javac", "-d", str(out), str(PROGRAMS / "jvm" / "Probe.java")], check=True,
                   capture_output=True, timeout=120)
    return {"jvm": ["java", "-cp", str(out), "Probe"],
            "ruby": ["ruby", str(PROGRAMS / "ruby" / "probe.rb")]}


@pytest.fixture
def staging(pod_factory: Any) -> SimpleNamespace:
    """A pod with Kubernetes-style DNS: a cluster nameserver that knows only fully
    qualified service names, a search list with ndots:5, a name only the pod's /etc/hosts
    has, and a config file only the pod has; the database is reachable only from the pod."""
    pod = pod_factory("svc", env={"APP": "svc", "DB_PASSWORD": "from-the-pod"},
                      files={"/etc/tether-runtime-app.conf": "dsn=svc-db:7000\n",
                             "/srv/tether-go-data/a.txt": "a", "/srv/tether-go-data/b.txt": "b"})
    db = pod_factory("db", behind=pod, cmd=[sys.executable, "-c", ECHO])
    fqdn = "svc-db.staging.svc.cluster.local"
    ns = pod_factory("cdns", cmd=["dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=53", "--pid-file=",
                                  "--listen-address=0.0.0.0", "--bind-interfaces",
                                  f"--host-record={fqdn},{db.ip}", "--local=//"])
    etc = Path("/etc/netns") / pod.name  # the pod's /etc/hosts and resolv.conf
    with open(etc / "resolv.conf", "w") as f:
        f.write(f"search {SEARCH}\nnameserver {ns.ip}\noptions ndots:5 timeout:1 attempts:2\n")
    with open(etc / "hosts", "a") as f:
        f.write(f"{db.ip}\tlegacy-db\n")
    db.wait_port(7000)
    ns.wait_port(53)  # dnsmasq answers on TCP and UDP 53 from the same start
    return SimpleNamespace(pod=pod, db=db, fqdn=fqdn)
