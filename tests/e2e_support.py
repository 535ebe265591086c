"""Helpers shared by the end-to-end tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time


def tether_cmd() -> list[str]:
    exe = shutil.which("tether", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "tether.cli"]


def agents_running(target_pid: int | None = None) -> list[str]:
    """tether-agent processes (of one target, so concurrent test runs do not interfere)."""
    out = subprocess.run(["pgrep", "-af", "tether-agent"], capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if "pgrep" not in line]
    if target_pid is not None:
        lines = [line for line in lines if f"--target-pid {target_pid} " in line + " "]
    return lines


def eventually_no_agents(target_pid: int | None = None, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while agents_running(target_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agents_running(target_pid) == []


class BackgroundTether:
    """A `tether exec ...` running in the background (its own process group), its output
    collected line by line: the sessions of the incoming and Kubernetes scenes."""

    def __init__(self, args: list[str], cwd: str | os.PathLike[str],
                 env: dict[str, str] | None = None) -> None:
        import threading

        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            tether_cmd() + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=cwd, env=env if env is not None else dict(os.environ), start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None:
                time.sleep(0.2)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(f"tether exited ({self.proc.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout}s:\n{self.output}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5) -> None:
        import signal

        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(2)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
