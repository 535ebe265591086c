"""Helpers for the incoming scenes: a target pod serving "This is a silly demo" on 8080,
and `tether exec` sessions running a local server in the background."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e_support import BackgroundTether

HERE = Path(__file__).resolve().parent
SILLY = str(HERE / "silly_server.py")
PORT = 8080
TARGET_ANSWER = "This is a silly demo\n"
LOCAL_ANSWER = "This is a silly demo with tether\n"


class Session(BackgroundTether):
    """A background `tether exec` running the local silly server (or `argv`)."""

    def __init__(self, pod: Any, incoming: dict[str, Any], tmp: Path,
                 argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        cfg = tmp / f"tether-{time.monotonic_ns()}.json"
        cfg.write_text(json.dumps({"feature": {"network": {"incoming": incoming}}}))
        argv = argv or [sys.executable, SILLY, str(PORT), LOCAL_ANSWER.strip()]
        super().__init__(["exec", "-t", f"process/{pod.pid}", "-f", str(cfg), "--", *argv],
                         cwd=tmp, env={**os.environ, **(env or {})})

    def wait_ready(self) -> Session:
        self.wait_for("port 8080 of the target")
        return self

    def agent_pid(self) -> int:
        out = subprocess.run(["pgrep", "-P", str(self.orchestrator_pid())],
                             capture_output=True, text=True).stdout.split()
        for pid in map(int, out):
            # the agent titles itself; other children of the orchestrator (its watchdog's
            # first fork) still carry tether's own command line
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"tether-agent"):
                return pid
        raise AssertionError("no agent found")

    def orchestrator_pid(self) -> int:
        # The orchestrator is the child tether forked before exec'ing the program.
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout.split()
        for pid in map(int, out):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"tether" in cmd:
                return pid
        raise AssertionError("no orchestrator found")


def curl(pod: Any, path: str = "/", *args: str, timeout: float = 5) -> str:
    res = subprocess.run(["curl", "-sS", "-m", str(timeout), *args,
                          f"http://{pod.ip}:{PORT}{path}"],
                         capture_output=True, text=True, timeout=timeout + 5)
    assert res.returncode == 0, res.stderr
    return res.stdout


def nft_rules(pod: Any) -> str:
    return pod.exec(["nft", "list", "ruleset"]).stdout


def target_answers_within(pod: Any, seconds: float) -> float:
    """Poll until the target itself answers; return how long it took (fails after)."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < seconds + 3:
        res = subprocess.run(["curl", "-sS", "-m", "1", f"http://{pod.ip}:{PORT}/probe"],
                             capture_output=True, text=True)
        last = res.stdout + res.stderr
        if res.stdout == TARGET_ANSWER:
            took = time.monotonic() - start
            assert took < seconds, f"the target answered only after {took:.2f}s"
            return took
        time.sleep(0.05)
    raise AssertionError(f"the target never answered again (last: {last!r})")
