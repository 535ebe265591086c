"""Scene: programs that outlive the command (daemons, background children, static ones) keep
the target's context, the session ends with the last of them, and if tether itself dies
the program is told and stopped; nothing is left behind either way."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import eventually_no_agents, tether_cmd

pytestmark = pytest.mark.e2e

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"
POD_ONLY_NAME = "only-in-pod.internal"
POD_ONLY_ADDR = "198.18.77.7"


@pytest.fixture
def target(pod_factory):
    return pod_factory("lifetime", env={"ONLY_REMOTE": "from-pod"},
                       hosts={POD_ONLY_NAME: POD_ONLY_ADDR})


@pytest.fixture
def session_tmp(tmp_path):
    """TMPDIR of the session: the socket directory and every other file tether makes goes
    there, so 'nothing left' is checked without other test runs' files in /tmp."""
    path = tmp_path / "session-tmp"
    path.mkdir()
    return path


def run_tether(target, argv, session_tmp, extra_env=None, **kw):
    env = {**os.environ, "TMPDIR": str(session_tmp), **(extra_env or {})}
    return subprocess.run(tether_cmd() + ["exec", "-t", f"process/{target.pid}", "--", *argv],
                          capture_output=True, text=True, timeout=30, env=env, **kw)


def processes_with(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def eventually_nothing_left(target, session_tmp, marker, timeout=5.0):
    deadline = time.monotonic() + timeout
    while (processes_with(marker) or list(session_tmp.iterdir())) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []
    assert list(session_tmp.iterdir()) == []
    eventually_no_agents(target.pid)


def release(fifo: Path) -> None:
    """Open and close the writing end: the process blocked on the FIFO goes on."""
    fd = os.open(fifo, os.O_WRONLY)
    os.close(fd)


def read_fifo(fifo: Path, timeout: float = 15) -> str:
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            left = deadline - time.monotonic()
            assert left > 0, f"nothing from {fifo} after {timeout}s"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data += os.read(fd, 4096)
        return data.decode().strip()
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def c_daemon(tmp_path_factory):
    exe = tmp_path_factory.mktemp("daemon") / "daemon-c"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(PROGRAMS / "daemon.c")],
                   check=True)
    return str(exe)


@pytest.mark.parametrize("how", ["python", "python with env -i", "C closing every fd"])
def test_daemon_keeps_the_targets_dns_after_the_command_exits(target, session_tmp, tmp_path,
                                                               c_daemon, how):
    go, result = tmp_path / "go", tmp_path / "result"
    os.mkfifo(go)
    os.mkfifo(result)
    program = {"python": [sys.executable, str(PROGRAMS / "daemon.py")],
               "python with env -i": ["env", "-i", sys.executable, str(PROGRAMS / "daemon.py")],
               "C closing every fd": [c_daemon]}[how]
    started = time.monotonic()
    res = run_tether(target, [*program, str(go), str(result), POD_ONLY_NAME], session_tmp)
    # The command returned at once (tether holds no pipe of its caller) and said who keeps
    # the session.
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started < 15
    assert "keep the session open in the background" in res.stderr, res.stderr
    assert processes_with(str(go)), "the session ended with the command"
    release(go)
    assert read_fifo(result) == f"ok {POD_ONLY_ADDR}"
    eventually_nothing_left(target, session_tmp, str(go))


def test_without_tether_the_daemon_cannot_resolve_the_pods_name(tmp_path):
    go, result = tmp_path / "go", tmp_path / "result"
    os.mkfifo(go)
    os.mkfifo(result)
    subprocess.run([sys.executable, str(PROGRAMS / "daemon.py"), str(go), str(result),
                    POD_ONLY_NAME], check=True, timeout=30)
    release(go)
    assert read_fifo(result).startswith("error")


def test_static_background_child_keeps_the_session_until_it_exits(target, session_tmp,
                                                                  tmp_path):
    waiter = tmp_path / "lt-waiter"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(waiter), str(PROGRAMS / "waiter.c")],
                   check=True)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    res = run_tether(target, ["sh", "-c", f'"{waiter}" "{fifo}" >/dev/null 2>&1 & echo up'],
                     session_tmp)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "up"
    named = re.search(r"1 of its processes keep the session open.*: (\d+) \(", res.stderr)
    assert named, res.stderr
    # (named while tether-launch was putting it under the seccomp supervisor, or after)
    deadline = time.monotonic() + 5
    while os.readlink(f"/proc/{named.group(1)}/exe") != str(waiter):
        assert time.monotonic() < deadline, "the named process is not the static child"
        time.sleep(0.02)
    assert list(session_tmp.iterdir()), "the session's socket is gone while a process lives"
    release(fifo)
    eventually_nothing_left(target, session_tmp, str(fifo))


def test_session_ends_with_the_command_when_nothing_outlives_it(target, session_tmp):
    res = run_tether(target, ["sh", "-c", "echo $ONLY_REMOTE"], session_tmp)
    assert res.stdout.strip() == "from-pod"
    assert "background" not in res.stderr
    eventually_nothing_left(target, session_tmp, "echo $ONLY_REMOTE")


def start_program(target, session_tmp, marker, extra_env=None):
    env = {**os.environ, "TMPDIR": str(session_tmp), **(extra_env or {})}
    proc = subprocess.Popen(
        tether_cmd() + ["exec", "-t", f"process/{target.pid}", "--", "sh", "-c",
                        f"echo ready; sleep 30; echo {marker}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def orchestrator_of(proc: subprocess.Popen[str]) -> int:
    """The orchestrator is the child of the program that still runs tether's command line."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "tether"], capture_output=True,
                         text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_killed_orchestrator_stops_the_program_with_a_message(target, session_tmp):
    proc = start_program(target, session_tmp, "killed-orchestrator-scene")
    orchestrator = orchestrator_of(proc)
    os.kill(orchestrator, signal.SIGKILL)
    started = time.monotonic()
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - started < 5
    assert proc.returncode != 0
    assert f"the session's process (pid {orchestrator}) died; stopping the program" in err
    assert "killed-orchestrator-scene" not in out
    eventually_nothing_left(target, session_tmp, "killed-orchestrator-scene")


def test_killed_orchestrator_with_keep_going_tells_once_and_lets_the_program_run(
        target, session_tmp):
    proc = start_program(target, session_tmp, "keep-going-scene",
                         {"TETHER_KEEP_GOING": "1"})
    os.kill(orchestrator_of(proc), signal.SIGKILL)
    assert proc.stderr is not None
    deadline = time.monotonic() + 5
    line = ""
    while "died" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()
    assert "keeps running without the target's context" in line
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=10)
    eventually_nothing_left(target, session_tmp, "keep-going-scene")


def test_target_gone_while_only_background_processes_remain_tells_them_and_stops_them(
        pod_factory, session_tmp, tmp_path):
    target = pod_factory("lifetime-gone")
    log = tmp_path / "worker.log"
    res = run_tether(target, ["sh", "-c", f"sleep 30 >/dev/null 2>>'{log}' & echo started"],
                     session_tmp)
    assert "keep the session open in the background" in res.stderr, res.stderr
    # named sh when tether reports before the background shell has exec'd sleep (same pid)
    worker = int(re.search(r": (\d+) \((?:sleep|sh)\)", res.stderr).group(1))
    os.kill(target.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{worker}"), "the background process still runs"
    assert f"target process {target.pid} has exited; stopping the program" in log.read_text()
    eventually_nothing_left(target, session_tmp, f"2>>'{log}'")
