"""Scene: the local program gets the pod's environment (feature.env), whatever it is
written in, and tether gets out of the way when the program or the target ends."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from e2e_support import eventually_no_agents, tether_cmd

POD_ENV = {
    "ONLY_REMOTE": "hello-from-pod",
    "ALSO_REMOTE": "second",
    "DB_PASSWORD": "s3cr3t",
    "HOME": "/home/pod",
    "PATH": "/pod/bin:/usr/bin:/bin",
}


@pytest.fixture
def backend(pod_factory):
    return pod_factory("backend", env=POD_ENV)


@pytest.mark.parametrize("lang", ["printenv.c", "printenv.py", "printenv.js", "printenv.go",
                                  "printenv.sh"])
def test_program_in_any_language_sees_the_pods_variables(tether, programs, backend, lang):
    res = tether(backend, programs[lang] + ["ONLY_REMOTE", "DB_PASSWORD"])
    assert res.returncode == 0, res.stderr
    assert "ONLY_REMOTE=hello-from-pod" in res.stdout
    assert "DB_PASSWORD=s3cr3t" in res.stdout


def test_local_only_variables_stay_local(tether, programs, backend):
    res = tether(backend, programs["printenv.py"] + ["HOME", "PATH"])
    assert f"HOME={os.environ['HOME']}" in res.stdout
    assert "/pod/bin" not in res.stdout


def test_env_config_include_exclude_override_unset(tether, programs, backend, tmp_path):
    (tmp_path / "dev.env").write_text("FROM_FILE=yes\nexport QUOTED='a b'\n")
    config = {"feature": {"env": {"exclude": ["DB_*"], "override": {"ALSO_REMOTE": "mine"},
                                  "unset": ["only_remote"], "env_file": "dev.env"}}}
    res = tether(backend, programs["printenv.py"] + [
        "ONLY_REMOTE", "ALSO_REMOTE", "DB_PASSWORD", "FROM_FILE", "QUOTED"], config=config)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["ONLY_REMOTE=<unset>", "ALSO_REMOTE=mine",
                                       "DB_PASSWORD=<unset>", "FROM_FILE=yes", "QUOTED=a b"]


def test_env_include_brings_only_named_variables(tether, programs, backend):
    res = tether(backend, programs["printenv.py"] + ["ONLY_REMOTE", "DB_PASSWORD"],
                 config={"feature": {"env": {"include": "DB_*"}}})
    assert res.stdout.splitlines() == ["ONLY_REMOTE=<unset>", "DB_PASSWORD=s3cr3t"]


def test_env_disabled_gives_the_local_environment(tether, programs, backend):
    res = tether(backend, programs["printenv.py"] + ["ONLY_REMOTE"],
                 config={"feature": {"env": False}})
    assert res.stdout.strip() == "ONLY_REMOTE=<unset>"


def test_exit_status_is_the_programs(tether, backend):
    res = tether(backend, ["sh", "-c", "exit 42"])
    assert res.returncode == 42


def test_scrubbed_environment_still_reaches_the_pods_variables_via_getenv(
        tether, programs, backend):
    # env -i drops everything, LD_PRELOAD included: the exec hook keeps the layer, and
    # getenv falls back to the session's environment.  A shell reading environ cannot.
    res = tether(backend, ["env", "-i", *programs["printenv.c"], "ONLY_REMOTE"])
    assert res.stdout.strip() == "ONLY_REMOTE=hello-from-pod", res.stderr
    res = tether(backend, ["env", "-i", "sh", "-c", "echo ONLY_REMOTE=${ONLY_REMOTE-<unset>}"])
    assert res.stdout.strip() == "ONLY_REMOTE=<unset>"


def test_layer_survives_python_execve_with_an_empty_environment(tether, programs, backend):
    prog = programs["printenv.c"][0]
    code = f"import os; os.execve({prog!r}, [{prog!r}, 'ONLY_REMOTE'], {{}})"
    res = tether(backend, ["python3", "-c", code])
    assert res.stdout.strip() == "ONLY_REMOTE=hello-from-pod", res.stderr


def test_skipped_process_runs_without_remote_context(tether, programs, backend):
    # pass-through: the getenv supplement is off for a skipped program
    res = tether(backend, ["env", "-i", *programs["printenv.c"], "ONLY_REMOTE"],
                 config={"skip_processes": ["printenv"]})
    assert res.stdout.strip() == "ONLY_REMOTE=<unset>"


def test_forked_processes_each_get_their_own_session(tether, programs, backend):
    res = tether(backend, ["env", "-i", *programs["forker.c"]], env={"TETHER_LOG": "debug"})
    lines = sorted(res.stdout.splitlines())
    assert len(lines) == 2 and all(line.endswith("ONLY_REMOTE=hello-from-pod") for line in lines)
    pids = {line.split()[1].split("=")[1] for line in lines}
    for pid in pids:
        assert f": pid {pid} " in res.stderr, res.stderr


def test_channel_survives_a_program_that_closes_every_descriptor(tether, programs, backend):
    res = tether(backend, ["env", "-i", *programs["fdhostile.c"]])
    assert res.returncode == 0, res.stderr
    first, after = res.stdout.splitlines()
    assert first == "first=hello-from-pod sockets=1"
    assert after == "after-close sockets=1"


def test_nonexistent_target_is_a_clear_error(tether, tmp_path):
    res = subprocess.run(tether_cmd() + ["exec", "-t", "process/999999", "--", "true"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "process/999999: no such process" in res.stderr
    assert "Traceback" not in res.stderr


def test_command_not_found_exits_127_and_leaves_nothing(tether, backend):
    res = tether(backend, ["/no/such/program"])
    assert res.returncode == 127
    assert "command not found" in res.stderr
    eventually_no_agents(backend.pid)


def test_target_exiting_mid_session_stops_the_program_with_a_message(pod_factory):
    target = pod_factory("shortlived", env=POD_ENV)
    proc = subprocess.Popen(tether_cmd() + ["exec", "-t", f"process/{target.pid}", "--",
                                            "sleep", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = ""
    while "session started" not in err:  # the program runs (a busy machine: > 1 s)
        line = proc.stderr.readline()
        assert line, err
        err += line
    os.kill(target.pid, signal.SIGKILL)
    _, rest = proc.communicate(timeout=15)
    err += rest
    assert proc.returncode != 0
    assert f"target process {target.pid} has exited" in err
    eventually_no_agents(target.pid)


def test_ctrl_c_reaches_the_program_and_the_session_ends_cleanly(backend):
    code = ("import signal,sys,time\n"
            "def stop(*a):\n    print('got SIGINT', flush=True)\n    sys.exit(7)\n"
            "signal.signal(signal.SIGINT, stop)\n"
            "print('ready', flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen(tether_cmd() + ["exec", "-t", f"process/{backend.pid}", "--",
                                            "python3", "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert "got SIGINT" in out
    assert proc.returncode == 7
    eventually_no_agents(backend.pid)


def test_missing_privileges_is_a_clear_error(backend, tmp_path):
    # An unprivileged user cannot act inside root's process.
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          *tether_cmd(), "exec", "-t", f"process/{backend.pid}", "--", "true"],
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert res.returncode != 0
    assert "permission denied" in res.stderr
    assert "Traceback" not in res.stderr

