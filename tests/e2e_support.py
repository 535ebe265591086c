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
