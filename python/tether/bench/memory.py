"""Memory: what the agent costs a shared target with many clients connected.

A filtered steal puts the agent in the path of every client of the target. This bench
opens ``CONNS`` keep-alive client connections to the target's port, each having sent one
request the filter does not take (so the agent holds the client socket, an upstream socket
to the application and the router's state for each), and reads the agent's resident set
size while all of them are open. The figure is the agent's RSS against the 64 MiB budget
(goal: at most the budget), and against the same agent idle (a session with no client).

The agent's pid comes from tether's own start-up line ``(tether-agent/<pid>)``.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from . import BenchContext, figure

CONNS = 1000
PORT = 8080
BUDGET_MIB = 64.0

SERVER = r'''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    def log_message(self, *a): pass
class S(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048
S(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
'''


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _open_clients(host: str, n: int, deadline: float) -> list[socket.socket]:
    """n keep-alive connections, each with one answered request the filter passes on."""
    socks: list[socket.socket] = []
    try:
        for i in range(n):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {i} of {n} connections answered in time")
            s = socket.create_connection((host, PORT), timeout=10)
            s.sendall(b"GET /?user=other HTTP/1.1\r\nHost: t\r\n\r\n")
            got = b""
            while not got.endswith(b"ok\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"connection {i} closed without an answer")
                got += chunk
            socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def run(ctx: BenchContext) -> list[dict[str, Any]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * CONNS)), hard))
    server = ctx.workdir / "memory_server.py"
    server.write_text(SERVER)
    cfg = ctx.workdir / "memory.json"
    cfg.write_text(json.dumps({"feature": {"network": {"incoming": {
        "mode": "steal", "http_filter": {"header_filter": "^x-dev: me$"}}}}}))
    out: list[dict[str, Any]] = []
    with ctx.make_pod("benchmem", cmd=[sys.executable, str(server), str(PORT)]) as pod:
        pod.wait_port(PORT)
        # The direct path: the same connections straight to the target, no session.
        clients = _open_clients(pod.ip, CONNS, time.monotonic() + 60)
        for s in clients:
            s.close()
        argv = ctx.tether_exec(pod, [sys.executable, "-m", "http.server", str(PORT)],
                               args=["-f", str(cfg)])
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True).start()
        try:
            deadline = time.monotonic() + 20
            agent = None
            while agent is None or not any("port 8080 of the target" in ln for ln in lines):
                m = next((re.search(r"tether-agent/(\d+)", ln) for ln in lines
                          if "tether-agent/" in ln), None)
                agent = int(m.group(1)) if m else None
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("tether session did not start:\n" + "".join(lines))
                time.sleep(0.05)
            idle = _rss_mib(agent)
            clients = _open_clients(pod.ip, CONNS, time.monotonic() + 120)
            try:
                busy = _rss_mib(agent)
            finally:
                for s in clients:
                    s.close()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
    note = f"{CONNS} keep-alive clients through a filtered steal, each with a passed request"
    out.append(figure(f"agent RSS, {CONNS} connections vs the {BUDGET_MIB:.0f} MiB budget",
                      "MiB", busy, BUDGET_MIB, goal="<= 1.0", note=note))
    out.append(figure(f"agent RSS, {CONNS} connections vs the same agent idle", "MiB",
                      busy, idle, note=note))
    return out
