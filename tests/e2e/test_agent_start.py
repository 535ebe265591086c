"""Scene: on a process target the agent is a fork of the orchestrator (no second
interpreter); it still looks like `tether-agent`, lives in the target's network namespace,
holds none of the program's descriptors, and never outlives its session."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from e2e_support import agents_running, eventually_no_agents, tether_cmd


@pytest.fixture
def target(pod_factory):
    return pod_factory("agentstart", env={"ONLY_REMOTE": "yes"})


def _start(target, *argv, env=None):
    proc = subprocess.Popen(tether_cmd() + ["exec", "-t", f"process/{target.pid}", "--", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=None if env is None else {**os.environ, **env})
    assert proc.stdout is not None
    return proc


def _agent_pid(target, timeout=10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = agents_running(target.pid)
        if found:
            assert len(found) == 1, found
            return int(found[0].split()[0])
        time.sleep(0.05)
    raise AssertionError("no tether-agent process for the target")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("PPid:")).split()[1])


def test_forked_agent_is_a_tether_agent_in_the_target_and_holds_no_program_descriptor(target):
    proc = _start(target, "sh", "-c", "echo ready; exec sleep 30")
    try:
        assert proc.stdout.readline().strip() == "ready"
        agent = _agent_pid(target)
        with open(f"/proc/{agent}/comm") as f:
            assert f.read().strip() == "tether-agent"
        assert os.readlink(f"/proc/{agent}/ns/net") == os.readlink(f"/proc/{target.pid}/ns/net")
        assert os.getsid(agent) == agent  # its own session, like the exec'd agent had
        orchestrator = _ppid(agent)
        assert orchestrator != proc.pid
        # The program's stdout/stderr pipes: an agent holding one would keep a reader of
        # the program's output waiting after the program exits.
        ours = {os.readlink(f"/proc/{proc.pid}/fd/{n}") for n in (1, 2)}
        held = {os.readlink(f"/proc/{agent}/fd/{n}") for n in os.listdir(f"/proc/{agent}/fd")}
        assert not ours & held, (ours, held)
        assert os.readlink(f"/proc/{agent}/fd/1") == "/dev/null"
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    eventually_no_agents(target.pid)


def test_the_forked_agent_dies_with_its_orchestrator(target):
    proc = _start(target, "sh", "-c", "echo ready; exec sleep 30")
    try:
        assert proc.stdout.readline().strip() == "ready"
        agent = _agent_pid(target)
        os.kill(_ppid(agent), signal.SIGKILL)
        eventually_no_agents(target.pid)
    finally:
        proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_agent_is_gone_when_the_program_ends_in_either_start_mode(target, mode):
    env = {"TETHER_AGENT_EXEC": "1"} if mode == "exec" else {}
    proc = _start(target, "sh", "-c", "echo $ONLY_REMOTE", env=env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "yes"
    eventually_no_agents(target.pid)
