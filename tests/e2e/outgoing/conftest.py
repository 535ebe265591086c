"""Scene fixtures for outgoing traffic: a pod (the target) and, behind it, a namespace only
the pod can reach, running servers; names that only the pod's /etc/hosts knows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROGS = HERE / "programs"
ECHO_PORT = 7000
CLOSED_PORT = 7001


def add_hosts(pod, entries):
    """Append /etc/hosts entries of a pod (the behind address is known only after it exists).
    The pod's /etc/hosts is a bind mount of /etc/netns/<name>/hosts: write in place."""
    with open(f"/etc/netns/{pod.name}/hosts", "a") as f:
        f.writelines(f"{ip}\t{name}\n" for name, ip in entries.items())


@pytest.fixture
def scene(pod_factory):
    """(front pod, behind pod): 'db.internal' resolves to the behind pod, only in front."""
    front = pod_factory("front", env={"POD": "front"})
    behind = pod_factory("db", behind=front,
                         cmd=[sys.executable, str(PROGS / "echo_server.py"), str(ECHO_PORT)])
    add_hosts(front, {"db.internal": behind.ip})
    behind.wait_port(ECHO_PORT)
    return front, behind


@pytest.fixture(scope="session")
def out_programs(tmp_path_factory):
    out = tmp_path_factory.mktemp("outprogs")
    exe = out / "client"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(PROGS / "client.c")], check=True)
    udp = out / "udp_client"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(udp), str(PROGS / "udp_client.c")],
                   check=True)
    return {
        "c": [str(exe)],
        "c-nb": [str(exe)],
        "py": [sys.executable, str(PROGS / "client.py")],
        "py-async": [sys.executable, str(PROGS / "client.py")],
        "node": ["node", str(PROGS / "client.js")],
        "udp-c": [str(udp)],
        "udp-py": [sys.executable, str(PROGS / "udp_client.py")],
    }


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def pg_scene(tmp_path_factory):
    """(front pod, behind pod) with PostgreSQL 15 in the behind pod, reachable from the
    front pod as 'pg.internal' only; trust auth, started once per session."""
    import os
    import pwd
    import shutil
    import tempfile

    from harness.pods import PodFactory

    # bootstrap installs it: a missing server is a broken set-up, not a reason to skip
    assert (PG_BIN / "postgres").exists(), "PostgreSQL 15 is missing: make install"
    pg = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    os.chmod(base, 0o755)
    os.chown(base, pg.pw_uid, pg.pw_gid)
    data = base / "data"
    data.mkdir()
    os.chown(data, pg.pw_uid, pg.pw_gid)
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
                    "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True)
    with open(data / "pg_hba.conf", "a") as f:
        f.write("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")
    with PodFactory() as factory:
        front = factory("pgfront")
        behind = factory("pg", behind=front, cmd=[
            "/usr/sbin/runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"),
            "-D", str(data), "-k", str(base), "-h", "*", "-p", "5432",
            "-c", "fsync=off", "-c", "listen_addresses=*"])
        add_hosts(front, {"pg.internal": behind.ip})
        behind.wait_port(5432, timeout=30)
        yield front, behind
    shutil.rmtree(base, ignore_errors=True)
