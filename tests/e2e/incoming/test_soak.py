"""Soak: whatever dies, however (SIGKILL, SIGTERM, SIGINT to the program, to tether, to the
agent), under load, thirty times over: each time the target answers its own traffic
within 2 seconds, and nothing of the session stays behind (no redirect rule, no process,
no temporary file); the target's own descriptors and memory stay flat.

Bounded: 30 cycles, about a minute. The seed is printed; TETHER_SOAK_SEED replays a run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from e2e_support import agents_running
from incoming_support import LOCAL_ANSWER, PORT, TARGET_ANSWER, curl, nft_rules

CYCLES = 30
HEADER = ("-H", "x-user: me")
MODES = {
    "steal": {"mode": "steal"},
    "filtered steal": {"mode": "steal", "http_filter": {"header_filter": r"^x-user: me$"}},
}
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


class Load:
    """Two clients of the target (one keep-alive, one new connection per request), each
    pausing briefly between requests so tether's own start-up keeps a share of the CPUs.
    Their failures are expected while a session dies (its stolen connections go with it);
    what they are for is to have connections in flight at every kill."""

    def __init__(self, target) -> None:
        self.target = target
        self.stop = threading.Event()
        self.requests = 0
        self.threads = [threading.Thread(target=self._run, args=(keep,), daemon=True)
                        for keep in (True, False)]
        for t in self.threads:
            t.start()

    def _run(self, keepalive: bool) -> None:
        import http.client

        conn = None
        for _ in range(100_000):
            if self.stop.wait(0.003):
                break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.target.ip, PORT, timeout=3)
                conn.request("GET", "/soak", headers={"x-user": "me"} if keepalive else {})
                conn.getresponse().read()
                self.requests += 1
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
            if not keepalive and conn is not None:
                conn.close()
                conn = None

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def footprint(pid: int) -> tuple[int, int]:
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/fd")), rss


def answers_itself_within(target, seconds: float) -> float:
    """The target answers a request the session would have stolen (the developer's header)."""
    start = time.monotonic()
    while True:
        res = subprocess.run(["curl", "-sS", "-m", "1", "-H", "x-user: me",
                              f"http://{target.ip}:{PORT}/probe"], capture_output=True, text=True)
        took = time.monotonic() - start
        if res.stdout == TARGET_ANSWER:
            return took
        assert took < seconds, f"the target did not answer itself after {took:.2f}s"
        time.sleep(0.02)


def eventually(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_thirty_random_deaths_under_load_leave_the_target_whole(target, session, tmp_path):
    seed = int(os.environ.get("TETHER_SOAK_SEED") or random.randrange(1 << 32))
    print(f"TETHER_SOAK_SEED={seed}")
    rng = random.Random(seed)
    scratch = tmp_path / "tmpdir"  # the sessions' TMPDIR: what they leave is visible here
    scratch.mkdir()
    load = Load(target)
    samples = []
    try:
        for cycle in range(CYCLES):
            mode = rng.choice(sorted(MODES))
            victim = rng.choice(("program", "tether", "agent"))
            sig = rng.choice(SIGNALS)
            what = f"cycle {cycle} (seed {seed}): {mode}, {sig.name} to the {victim}"
            s = session(target, MODES[mode], env={"TMPDIR": str(scratch)})
            assert curl(target, "/", *HEADER) == LOCAL_ANSWER, what
            pid = {"program": s.proc.pid, "tether": s.orchestrator_pid(),
                   "agent": s.agent_pid()}[victim]
            config = s.proc.args[s.proc.args.index("-f") + 1]
            os.kill(pid, sig)
            try:
                answers_itself_within(target, 2)
            except AssertionError as exc:
                raise AssertionError(f"{what}: {exc}\n{s.output}") from None
            try:
                s.proc.wait(10)  # the session ends: never a program left without its context
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{what}: the session went on\n{s.output}") from None
            eventually(lambda: "tether" not in nft_rules(target), 2, f"{what}: a rule is left")
            eventually(lambda: not agents_running(target.pid), 3, f"{what}: an agent is left")
            eventually(lambda c=config: subprocess.run(["pgrep", "-f", c]).returncode == 1, 3,
                       f"{what}: a tether process is left")
            eventually(lambda: not os.listdir(scratch), 3,
                       f"{what}: files left: {os.listdir(scratch)}")
            # (the local server's own tracebacks, a KeyboardInterrupt, are not tether's)
            assert "/tether/" not in s.output, f"{what}: a traceback of tether\n{s.output}"
            samples.append(footprint(target.pid))
    finally:
        load.finish()
    assert load.requests > CYCLES
    # The target's own descriptors and memory: flat from the first cycles to the last.
    (fds0, rss0), (fds1, rss1) = samples[2], samples[-1]
    assert fds1 <= fds0 + 4, samples
    assert rss1 - rss0 < 2048, samples
