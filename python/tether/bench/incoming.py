"""Incoming traffic: what stealing, filtering and mirroring cost.

- stolen requests (steal, no filter: the orchestrator relays the client socket the agent
  handed over) vs the same requests sent straight to the local program;
- stolen requests through the HTTP filter (the agent's router + the relay) vs straight to
  the local program;
- passed-through requests (filter does not match: the agent's router forwards them to the
  application) vs straight to the target without any session;
- the relay path Kubernetes targets take (TETHER_INCOMING_RELAY=1: the agent keeps the
  stolen socket and its bytes travel as relay_data frames over the agent link): stolen
  requests, without and with the filter, vs straight to the local program, and vs the
  handed-over socket;
- the target's own latency with mirroring on vs off (goal <= 1.05: the sniffer is not in
  the data path), in interleaved rounds; the session's CPU (the local program answering
  every copy included) counts against the target; a second figure runs the session at
  SCHED_IDLE, as a stand-in for the developer's own machine (see ``_mirror_rounds``).

One keep-alive connection, sequential requests (latency p50/p99 and requests/s), bounded
loops; all traffic between the host and a test pod (198.18.0.0/15).

At saturation (``_wrk_figures``): nginx as the target's application and as the local
program, loaded by ``wrk`` with 4 keep-alive connections for a few seconds per round,
direct and through tether in alternating rounds (medians):

- passed through (filtered steal, requests that do not match: every request crosses the
  agent's router) vs straight to the target's nginx: throughput (goal >= 0.50) and the
  p50 latency added (goal <= 0.1 ms);
- stolen without a filter, and stolen by the filter (matched requests), vs straight to
  the local nginx (goal >= 0.50).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from . import BenchContext, figure

SERVER = r'''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        if self.path.startswith("/big"):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG))
            self.wfile.write(BIG)
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(MSG), MSG))
    def log_message(self, *a): pass
class S(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
MSG = (sys.argv[2] + "\n").encode()
BIG = b"x" * (32 << 20)
S(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
'''

PORT = 8080
DIRECT_LOCAL_PORT = 18080
N = 2000
WARMUP = 50


def _measure(host: str, port: int, path: str, n: int = N) -> dict[str, float]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    for _ in range(WARMUP):
        conn.request("GET", path)
        conn.getresponse().read()
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        conn.request("GET", path)
        conn.getresponse().read()
        lat.append(time.perf_counter() - s)
    total = time.perf_counter() - t0
    conn.close()
    lat.sort()
    return {"p50": statistics.median(lat) * 1e3, "p99": lat[int(len(lat) * 0.99) - 1] * 1e3,
            "rps": n / total}


def _bulk(host: str, port: int, tries: int = 2) -> float:
    """MB/s of the best of ``tries`` 32 MiB downloads on a fresh connection."""
    best = 0.0
    for _ in range(tries):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        t0 = time.perf_counter()
        conn.request("GET", "/big")
        n = len(conn.getresponse().read())
        best = max(best, n / (time.perf_counter() - t0) / 1e6)
        conn.close()
    return best


class _Session:
    def __init__(self, ctx: BenchContext, pod: Any, incoming: dict[str, Any], server: str,
                 relay: bool = False, idle: bool = False, argv: list[str] | None = None):
        cfg = ctx.workdir / f"incoming-{time.monotonic_ns()}.json"
        cfg.write_text(json.dumps({"feature": {"network": {"incoming": incoming}}}))
        argv = ctx.tether_exec(pod, argv or [sys.executable, server, str(PORT), "local"],
                               args=["-f", str(cfg)])
        if idle:
            argv = ["chrt", "-i", "0", *argv]
        env = {**os.environ, "TETHER_INCOMING_RELAY": "1" if relay else "0"}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 20
        while not any("port 8080 of the target" in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("tether session did not start:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


MIRROR_ROUNDS = 3
MIRROR_NOTE = ("interleaved off/on rounds, all latencies pooled; the session (orchestrator, "
               "agent, local program answering every copy) shares the same 2 cores at the "
               "same priority: its cost is counted, not pinned away")


def _mirror_rounds(ctx: BenchContext, pod: Any, server: str, idle: bool
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """The target's latency with and without a mirror session, measured in alternating
    rounds (off, on, off, on, ..., off) so drift in the machine's load hits both sides.

    The developer side (orchestrator + local program) runs on this machine too; in real
    use it runs on the developer's. ``idle=False`` counts its CPU against the target (the
    honest worst case of a shared 2-core box); ``idle=True`` runs the whole session under
    SCHED_IDLE (``chrt -i``), a stand-in for "another machine": it only gets CPU time the
    target and the client do not want."""
    on: list[float] = []
    off: list[float] = []
    rps_on: list[float] = []
    rps_off: list[float] = []
    n = N // MIRROR_ROUNDS
    for _ in range(MIRROR_ROUNDS):
        lat, rps = _latencies(pod.ip, PORT, n)
        off += lat
        rps_off.append(rps)
        s = _Session(ctx, pod, {"mode": "mirror"}, server, idle=idle)
        try:
            lat, rps = _latencies(pod.ip, PORT, n)
            on += lat
            rps_on.append(rps)
        finally:
            s.stop()
    lat, rps = _latencies(pod.ip, PORT, n)
    off += lat
    rps_off.append(rps)

    def stats(lat: list[float], rps: list[float]) -> dict[str, float]:
        lat.sort()
        return {"p50": statistics.median(lat) * 1e3, "p99": lat[int(len(lat) * 0.99) - 1] * 1e3,
                "rps": statistics.median(rps)}

    return stats(on, rps_on), stats(off, rps_off)


def _latencies(host: str, port: int, n: int) -> tuple[list[float], float]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    for _ in range(WARMUP):
        conn.request("GET", "/")
        conn.getresponse().read()
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        conn.request("GET", "/")
        conn.getresponse().read()
        lat.append(time.perf_counter() - s)
    total = time.perf_counter() - t0
    conn.close()
    return lat, n / total


def _figures(what: str, t: dict[str, float], d: dict[str, float], goal: str | None = None,
             note: str | None = None) -> list[dict[str, Any]]:
    return [
        figure(f"{what}: p50 latency", "ms", t["p50"], d["p50"], goal=goal, note=note),
        figure(f"{what}: p99 latency", "ms", t["p99"], d["p99"]),
        figure(f"{what}: requests/s", "req/s", t["rps"], d["rps"], better="higher"),
    ]


def run(ctx: BenchContext) -> list[dict[str, Any]]:
    out = wrk_figures(ctx)
    server = ctx.workdir / "incoming_server.py"
    server.write_text(SERVER)
    direct_local = subprocess.Popen([sys.executable, str(server), str(DIRECT_LOCAL_PORT),
                                     "local"], start_new_session=True)
    try:
        with ctx.make_pod("benchin", cmd=[sys.executable, str(server), str(PORT),
                                          "target"]) as pod:
            pod.wait_port(PORT)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    _measure("127.0.0.1", DIRECT_LOCAL_PORT, "/", 1)
                    break
                except OSError:
                    time.sleep(0.05)
            local = _measure("127.0.0.1", DIRECT_LOCAL_PORT, "/")
            local_bulk = _bulk("127.0.0.1", DIRECT_LOCAL_PORT)
            target_off = _measure(pod.ip, PORT, "/")

            s = _Session(ctx, pod, {"mode": "steal"}, str(server))
            try:
                stolen = _measure(pod.ip, PORT, "/")
                stolen_bulk = _bulk(pod.ip, PORT)
            finally:
                s.stop()
            out += _figures("stolen (no filter) vs straight to the local program",
                            stolen, local)

            s = _Session(ctx, pod, {"mode": "steal",
                                    "http_filter": {"path_filter": "user=me"}}, str(server))
            try:
                matched = _measure(pod.ip, PORT, "/?user=me")
                passed = _measure(pod.ip, PORT, "/?user=other")
            finally:
                s.stop()
            out += _figures("stolen through the HTTP filter vs straight to the local program",
                            matched, local)
            out += _figures("passed through (filter does not match) vs straight to the "
                            "target", passed, target_off)

            s = _Session(ctx, pod, {"mode": "steal"}, str(server), relay=True)
            try:
                relayed = _measure(pod.ip, PORT, "/")
                relayed_bulk = _bulk(pod.ip, PORT)
            finally:
                s.stop()
            out += _figures("stolen through the relay (Kubernetes path) vs straight to the "
                            "local program", relayed, local)
            out += _figures("stolen through the relay vs stolen with the handed-over socket",
                            relayed, stolen)
            out.append(figure("32 MiB answer, stolen with the handed-over socket vs straight "
                              "to the local program", "MB/s", stolen_bulk, local_bulk,
                              better="higher"))
            out.append(figure("32 MiB answer, stolen through the relay vs straight to the "
                              "local program", "MB/s", relayed_bulk, local_bulk,
                              better="higher"))

            s = _Session(ctx, pod, {"mode": "steal",
                                    "http_filter": {"path_filter": "user=me"}}, str(server),
                         relay=True)
            try:
                relayed_matched = _measure(pod.ip, PORT, "/?user=me")
            finally:
                s.stop()
            out += _figures("stolen through the HTTP filter and the relay vs straight to the "
                            "local program", relayed_matched, local)

            mirrored, off = _mirror_rounds(ctx, pod, str(server), idle=False)
            out += _figures("target's own latency, mirroring on vs off", mirrored, off,
                            goal="<= 1.05", note=MIRROR_NOTE)
            mirrored_idle, off_idle = _mirror_rounds(ctx, pod, str(server), idle=True)
            out += _figures("target's own latency, mirroring on (developer side at "
                            "SCHED_IDLE) vs off", mirrored_idle, off_idle)[:1]
    finally:
        direct_local.terminate()
        direct_local.wait()
    return out


# ---- at saturation: nginx and wrk -----------------------------------------------------

NGINX_CONF = """
daemon off; master_process off; worker_processes 1; pid {root}/nginx-{port}.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  keepalive_requests 1000000;
  server {{ listen {bind}:{port}; location / {{ return 200 "{message}\\n"; }} }}
}}
"""
WRK_CONNECTIONS = 4
WRK_THREADS = 2
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def nginx_argv(ctx: BenchContext, port: int, message: str, bind: str = "0.0.0.0") -> list[str]:
    """nginx answering ``message`` on ``port``: one process, no logs, no files read."""
    root = ctx.workdir / f"nginx-{message}-{port}"
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, port=port, bind=bind, message=message))
    return [_tool("nginx"), "-e", "stderr", "-p", str(root), "-c", str(conf)]


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{name} is not installed: run scripts/bootstrap.sh (as root)")
    return path


def wrk(url: str, seconds: float) -> dict[str, float]:
    """Requests/s and p50 latency (ms) of ``wrk`` with 4 keep-alive connections."""
    argv = [_tool("wrk"), f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}",
            f"-d{max(1, round(seconds))}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                         check=True).stdout
    rps = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    p50 = re.search(r"^\s*50%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    wrong = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                       r"timeout (\d+)", out)
    broken = sum(map(int, errors.groups())) if errors else 0
    # A wrong answer fails the run; a few connection errors on a loaded machine do not.
    if (rps is None or p50 is None or total is None or wrong is not None
            or broken > max(10, int(total.group(1)) // 100)):
        raise RuntimeError(f"wrk against {url} failed:\n{out}")
    return {"rps": float(rps.group(1)), "p50": float(p50.group(1)) * _UNITS[p50.group(2)]}


def wrk_figures(ctx: BenchContext, seconds: float = 3, rounds: int = 3
                ) -> list[dict[str, Any]]:
    """The figures at saturation (see the module docstring); ``seconds`` per wrk run,
    ``rounds`` alternating rounds of every path (medians)."""
    note = (f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {seconds:g} s per run, medians of "
            f"{rounds} alternating rounds; nginx as the target's app and as the local "
            "program; wrk, nginx and tether share this machine's cores")
    runs: dict[str, list[dict[str, float]]] = {
        k: [] for k in ("target", "local", "passed", "matched", "stolen")}
    local = subprocess.Popen(nginx_argv(ctx, DIRECT_LOCAL_PORT, "local", "127.0.0.1"),
                             start_new_session=True)
    try:
        with ctx.make_pod("benchwrk", cmd=nginx_argv(ctx, PORT, "target")) as pod:
            pod.wait_port(PORT)
            _wait_http("127.0.0.1", DIRECT_LOCAL_PORT)
            target = f"http://{pod.ip}:{PORT}"
            local_argv = nginx_argv(ctx, PORT, "stolen")
            for _ in range(rounds):
                runs["target"].append(wrk(f"{target}/?user=other", seconds))
                runs["local"].append(wrk(f"http://127.0.0.1:{DIRECT_LOCAL_PORT}/?user=me",
                                         seconds))
                s = _Session(ctx, pod, {"mode": "steal", "http_filter": {
                    "path_filter": "user=me"}}, "", argv=local_argv)
                try:
                    runs["passed"].append(wrk(f"{target}/?user=other", seconds))
                    runs["matched"].append(wrk(f"{target}/?user=me", seconds))
                finally:
                    s.stop()
                s = _Session(ctx, pod, {"mode": "steal"}, "", argv=local_argv)
                try:
                    runs["stolen"].append(wrk(f"{target}/", seconds))
                finally:
                    s.stop()
    finally:
        local.terminate()
        local.wait()
    m = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in runs.items()}
    added = m["passed"]["p50"] - m["target"]["p50"]
    return [
        figure("at saturation, passed through (filter does not match) vs straight to the "
               "target: requests/s", "req/s", m["passed"]["rps"], m["target"]["rps"],
               better="higher", goal=">= 0.50", note=note),
        figure("at saturation, passed through: p50 latency added (ms) vs the 0.1 ms goal",
               "ms", added, 0.1, goal="<= 1.00",
               note=f"p50 {m['passed']['p50']:.3f} ms passed through, "
                    f"{m['target']['p50']:.3f} ms direct"),
        figure("at saturation, stolen by the filter vs straight to the local program: "
               "requests/s", "req/s", m["matched"]["rps"], m["local"]["rps"],
               better="higher", goal=">= 0.50"),
        figure("at saturation, stolen (no filter) vs straight to the local program: "
               "requests/s", "req/s", m["stolen"]["rps"], m["local"]["rps"],
               better="higher", goal=">= 0.50"),
    ]


def _wait_http(host: str, port: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _measure(host, port, "/", 1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
