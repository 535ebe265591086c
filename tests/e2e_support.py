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


def agents_running() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "tether-agent"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def eventually_no_agents(timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while agents_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agents_running() == []
