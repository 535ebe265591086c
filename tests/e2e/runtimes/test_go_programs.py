"""Scene 2 and 5 for Go (and any static program): a Go service finds its database by a
short service name through the pod's DNS search list, resolves names only the pod's
/etc/hosts has, and reads the pod's files, whichever toolchain built it and however it is
started (directly, by `go run .`, by a shell script, under gdb or Delve), on links that
hand sockets over (process targets) and on links that relay (Kubernetes)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from runtimes_support import GOPROBE, go_env

pytestmark = pytest.mark.e2e

# A relayed session: what a Kubernetes target's link (no descriptor passing) does.
RELAYED = {"TETHER_OUTGOING_RELAY": "1", "TETHER_FS_RELAY": "1"}


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


def test_go_program_under_delve_resolves_and_reads_through_the_pod(
        tether, goprobe, staging, tmp_path):
    # Debian's Delve (1.20) debugs what Debian's Go builds
    init = tmp_path / "dlv-init"
    init.write_text("break main.main\ncontinue\ncontinue\nexit\n")
    res = tether(staging.pod, ["dlv", "exec", "--init", str(init),
                               "--allow-non-terminal-interactive=true", goprobe["1.19"], "--",
                               "lookup=svc-db", "cat=/etc/tether-go-app.conf"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Breakpoint 1 set at" in res.stdout, res.stdout
    assert f"lookup svc-db [{staging.db.ip}] <nil>" in res.stdout, res.stdout + res.stderr
    assert '"dsn=svc-db:7000\\n" <nil>' in res.stdout
