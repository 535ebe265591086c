"""Scene: whatever goes wrong while tether starts (a target that is no program, a hostile
config, a program exec refuses, the developer's Ctrl-C), the developer reads one line and
gets a non-zero exit status, never a traceback, and nothing of the session is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from e2e_support import eventually_no_agents, tether_cmd

pytestmark = pytest.mark.e2e


@pytest.fixture
def target(pod_factory):
    return pod_factory("starterr", env={"ONLY_REMOTE": "from-pod"})


def tether(*args, env=None, timeout=30, cwd=None):
    return subprocess.run(tether_cmd() + list(args), capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def assert_one_line(res, expected: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if expected in line]
    assert lines, res.stderr


def test_kernel_thread_as_target_is_one_line():
    res = tether("exec", "-t", "process/2", "--", "true")
    assert_one_line(res, "process/2 is a kernel thread (kthreadd)")
    assert res.returncode == 1


@pytest.mark.parametrize("command", ["verify-config", "exec"])
def test_a_config_nested_100k_deep_is_one_line(tmp_path, command):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    if command == "verify-config":
        res = tether("verify-config", str(deep))
    else:
        res = tether("exec", "-f", str(deep), "-t", "process/1", "--", "true")
    assert_one_line(res, "nested too deeply")
    assert res.returncode == 1


def test_verify_config_says_an_environment_too_large_for_exec(tmp_path):
    cfg = tmp_path / "big.json"
    cfg.write_text(json.dumps({"feature": {"env": {"override": {"BIG": "x" * 200_000}}}}))
    res = tether("verify-config", str(cfg))
    assert_one_line(res, "feature.env.override.BIG: 200005 bytes; exec accepts at most")
    assert "E2BIG" in res.stderr


def test_exec_with_an_environment_too_large_is_refused_before_the_session(target, tmp_path):
    cfg = tmp_path / "big.json"
    cfg.write_text(json.dumps({"feature": {"env": {"override": {"BIG": "x" * 200_000}}}}))
    res = tether("exec", "-f", str(cfg), "-t", f"process/{target.pid}", "--", "true")
    assert_one_line(res, "feature.env.override.BIG")
    eventually_no_agents(target.pid)


def test_environment_that_only_overflows_with_the_targets_variables(pod_factory):
    # Each side fits exec on its own; together they do not: only known at exec time.
    # (the test bed passes a pod's environment in one argument: at most 128 KiB)
    big = pod_factory("bigenv", env={"POD_BLOB": "p" * 120_000})
    local = {f"LOCAL_{i}": "l" * 100_000 for i in range(20)}
    res = tether("exec", "-t", f"process/{big.pid}", "--", "true", env=local)
    assert_one_line(res, "do not fit exec (E2BIG)")
    assert res.returncode == 126
    eventually_no_agents(big.pid)


def test_a_file_that_is_no_program_is_one_line(target, tmp_path):
    data = tmp_path / "notes.txt"
    data.write_bytes(b"\x00\x01 not a program\n")
    data.chmod(0o755)
    res = tether("exec", "-t", f"process/{target.pid}", "--", str(data))
    assert_one_line(res, "not a program this system can run")
    assert res.returncode == 126
    eventually_no_agents(target.pid)


def wait_for_tethers_code(pid: int) -> None:
    """Until tether.entry runs: it imports msgpack's extension right after taking SIGINT."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if "msgpack" in f.read():
                    return
        except OSError:
            return  # already gone
        time.sleep(0.001)


def test_ctrl_c_at_any_moment_of_start_up_exits_130_and_leaves_nothing(target, tmp_path):
    session_tmp = tmp_path / "session-tmp"
    session_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(session_tmp)}
    # From tether's first line of code (the Python interpreter's own start-up, the first
    # ~10 ms, is Python's) to the program's exec (about 0.1-0.3 s here).
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.14, 0.2, 0.3):
        proc = subprocess.Popen(
            tether_cmd() + ["exec", "-t", f"process/{target.pid}", "--", "sleep", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True)
        wait_for_tethers_code(proc.pid)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        _, err = proc.communicate(timeout=15)
        assert "Traceback" not in err, f"at {delay}s: {err}"
        # 130: tether itself; -SIGINT: the program (sleep) already ran and took it.
        assert proc.returncode in (130, -signal.SIGINT), (delay, proc.returncode, err)
    deadline = time.monotonic() + 5
    while list(session_tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(session_tmp.iterdir()) == []
    eventually_no_agents(target.pid)
