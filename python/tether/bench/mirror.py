"""Mirror: what copying the target's traffic to the developer costs the target.

nginx serves the target's port in a test pod; a second nginx on this machine is the
developer's program (so the figures show tether's cost, not a slow local server). Every
figure alternates rounds without and with a mirror session (off, on, off, on, off) so a
drift in the machine's load hits both sides:

- the target's throughput at saturation (wrk, 2 threads, 4 keep-alive connections, a
  bounded duration), mirroring on vs off; goal >= 0.90;
- the target's p99 latency at a moderate paced load (1,000 requests/s on one keep-alive
  connection, bounded count), mirroring on vs off; goal <= 1.05;
- how many of those paced requests the developer's program received (its access log):
  the mirror misses nothing under moderate load;
- the CPU the whole mirror session (orchestrator, agent, local nginx) spends per request
  at saturation, against the target nginx's own CPU per request: a figure the machine's
  other load disturbs far less than throughput.

The session (orchestrator, agent, local nginx) shares the machine's 2 cores with the
client and the target at the same priority: its CPU is counted against the target, the
honest worst case. All traffic stays between the host and a test pod (198.18.0.0/15).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from . import BenchContext, figure

PORT = 8080
ROUNDS = 2  # on-rounds (off-rounds: one more)
WRK_SECONDS = 3
PACED_RATE = 1000  # requests/s
PACED_N = 2000

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx-{name}.pid;
error_log {dir}/nginx-{name}-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log {access};
  client_body_temp_path {dir}/body-{name};
  proxy_temp_path {dir}/proxy-{name};
  fastcgi_temp_path {dir}/fastcgi-{name};
  uwsgi_temp_path {dir}/uwsgi-{name};
  scgi_temp_path {dir}/scgi-{name};
  keepalive_requests 1000000;
  server {{
    listen {port};
    location / {{ return 200 "{answer}\\n"; }}
  }}
}}
"""


def _nginx_conf(wd: Path, name: str, answer: str, access: str) -> Path:
    conf = wd / f"nginx-{name}.conf"
    conf.write_text(NGINX_CONF.format(dir=wd, name=name, port=PORT, answer=answer,
                                      access=access))
    return conf


def _wrk(host: str) -> float:
    out = subprocess.run(["wrk", "-t2", "-c4", f"-d{WRK_SECONDS}s", f"http://{host}:{PORT}/"],
                         capture_output=True, text=True, timeout=WRK_SECONDS + 30).stdout
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk said: {out}")
    return float(m.group(1))


def _paced(host: str, rate: float = PACED_RATE, n: int = PACED_N) -> list[float]:
    """Latencies of `n` requests sent at `rate` per second on one keep-alive connection
    (each waits for its answer; a late answer delays the next send, never piles up)."""
    conn = http.client.HTTPConnection(host, PORT, timeout=10)
    for _ in range(50):
        conn.request("GET", "/warm")
        conn.getresponse().read()
    lat = []
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        s = time.perf_counter()
        conn.request("GET", f"/paced/{i}")
        conn.getresponse().read()
        lat.append(time.perf_counter() - s)
    conn.close()
    return lat


class _MirrorSession:
    """`tether exec` of the local nginx with mirroring on; its access log counts copies."""

    def __init__(self, ctx: BenchContext, pod: Any, round_no: int) -> None:
        wd = ctx.workdir
        self.access = wd / f"local-access-{round_no}.log"
        self.access.write_text("")
        conf = _nginx_conf(wd, f"local-{round_no}", "local", str(self.access))
        cfg = wd / f"mirror-{round_no}.json"
        cfg.write_text(json.dumps({"feature": {"network": {"incoming": {"mode": "mirror"}}}}))
        argv = ctx.tether_exec(pod, ["nginx", "-c", str(conf), "-g", "daemon off;"],
                               args=["-f", str(cfg)])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 20
        while not any("port 8080 of the target" in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("tether session did not start:\n" + "".join(self.lines))
            time.sleep(0.02)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def copies(self, prefix: str, expected: int, wait: float = 3.0) -> int:
        """Copies of requests whose path starts with `prefix` the local nginx logged."""
        deadline = time.monotonic() + wait
        while True:
            got = sum(f"GET {prefix}" in line for line in self.access.read_text().splitlines())
            if got >= expected or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def agent_pid(self, pod: Any) -> int:
        """The agent runs in the target's namespaces, not under the session's tree."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmd = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if cmd.startswith(b"tether-agent") and f"{pod.pid}".encode() in cmd:
                    return int(entry.name)
        return -1

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found = [root]
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.append(pid)
                changed = True
    return found


def _p99(lat: list[float]) -> float:
    lat = sorted(lat)
    return lat[int(len(lat) * 0.99) - 1] * 1e3


def run(ctx: BenchContext) -> list[dict[str, Any]]:
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"the mirror bench needs {', '.join(missing)} (scripts/bootstrap.sh)")
    wd = ctx.workdir
    conf = _nginx_conf(wd, "target", "This is a silly demo", "off")
    with ctx.make_pod("mirror", cmd=["nginx", "-c", str(conf), "-g", "daemon off;"]) as pod:
        pod.wait_port(PORT)
        _wrk(pod.ip)  # warm up
        rps_off: list[float] = []
        rps_on: list[float] = []
        lat_off: list[float] = []
        lat_on: list[float] = []
        delivered: list[float] = []
        cpu_ratio: list[tuple[float, float, float]] = []  # session, agent, target: s/request
        target_pids = _tree(pod.pid)
        for r in range(ROUNDS):
            rps_off.append(_wrk(pod.ip))
            lat_off += _paced(pod.ip)
            s = _MirrorSession(ctx, pod, r)
            try:
                lat_on += _paced(pod.ip)
                delivered.append(s.copies("/paced/", PACED_N) / PACED_N)
                agent = [s.agent_pid(pod)]
                session_pids = _tree(s.proc.pid) + agent
                before = _cpu(session_pids), _cpu(agent), _cpu(target_pids)
                rps = _wrk(pod.ip)
                rps_on.append(rps)
                n = rps * WRK_SECONDS
                cpu_ratio.append(((_cpu(session_pids) - before[0]) / n,
                                  (_cpu(agent) - before[1]) / n,
                                  (_cpu(target_pids) - before[2]) / n))
            finally:
                s.stop()
        rps_off.append(_wrk(pod.ip))
        lat_off += _paced(pod.ip)
    note = ("interleaved off/on rounds; the session (orchestrator, agent, local nginx) "
            "shares the 2 cores at the same priority")
    return [
        figure("target's throughput at saturation, mirror on vs off", "req/s",
               statistics.median(rps_on), statistics.median(rps_off), better="higher",
               goal=">= 0.90", note=note),
        figure(f"target's p99 at {PACED_RATE} req/s, mirror on vs off", "ms",
               _p99(lat_on), _p99(lat_off), goal="<= 1.05", note=note),
        figure(f"target's p50 at {PACED_RATE} req/s, mirror on vs off", "ms",
               statistics.median(lat_on) * 1e3, statistics.median(lat_off) * 1e3),
        figure(f"copies delivered at {PACED_RATE} req/s (of requests sent)", "share",
               min(delivered), 1.0, better="higher", goal=">= 1.0"),
        figure("mirror session's CPU per request vs the target's own", "us",
               statistics.median(c[0] for c in cpu_ratio) * 1e6,
               statistics.median(c[2] for c in cpu_ratio) * 1e6,
               note="orchestrator + agent + local nginx, at saturation"),
        figure("agent's CPU per request (beside the target) vs the target's own", "us",
               statistics.median(c[1] for c in cpu_ratio) * 1e6,
               statistics.median(c[2] for c in cpu_ratio) * 1e6,
               note="only the agent runs on the target's node in real use"),
    ]
