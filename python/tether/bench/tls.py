"""HTTPS with a filter: what terminating TLS in the agent costs the requests it passes on.

nginx in a test pod serves TLS with a certificate only the pod has; a session steals its
port with a header filter that the measured requests do not match, so each of them is
decrypted by the agent, judged, and re-encrypted towards nginx (``tls_steal``). Against
the same requests straight to nginx over TLS, in the same run:

- bulk download throughput (curl, a 64 MiB file, best of 3 fresh connections);
- requests/s and p50 latency of small requests on one keep-alive HTTPS/1.1 connection.

Needs nginx (scripts/bootstrap.sh) and trustme (requirements-dev.txt) for the test CA.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import BenchContext, figure

PORT = 8443
NAME = "app.test"
BIG = 64 << 20
N = 1000
WARMUP = 50

NGINX_CONF = """
daemon off;
worker_processes 1;
user root;
error_log stderr error;
pid {work}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    keepalive_requests 100000;
    server {{
        listen {port} ssl http2;
        ssl_certificate /etc/tls/tls.crt;
        ssl_certificate_key /etc/tls/tls.key;
        location / {{ default_type text/plain; return 200 "nginx over TLS\\n"; }}
        location /big {{ root {work}/www; }}
    }}
}}
"""

LOCAL = r'''
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "6"); self.end_headers()
        self.wfile.write(b"local\n")
    def log_message(self, *a): pass
HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
'''


def _download(ip: str, ca: str) -> float:
    """MB/s of the best of 3 downloads of /big over TLS."""
    best = 0.0
    for _ in range(3):
        out = subprocess.run(
            ["curl", "-sS", "-m", "60", "--http1.1", "--cacert", ca, "--resolve",
             f"{NAME}:{PORT}:{ip}", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
             f"https://{NAME}:{PORT}/big"], capture_output=True, text=True, check=True).stdout
        size, took = out.split()
        assert int(size) == BIG, out
        best = max(best, int(size) / float(took) / 1e6)
    return best


def _requests(ip: str, ca: str) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(ip, PORT, timeout=10, context=ctx)
    conn.sock = ctx.wrap_socket(socket.create_connection((ip, PORT), timeout=10),
                                server_hostname=NAME)
    for _ in range(WARMUP):
        conn.request("GET", "/", headers={"Host": NAME})
        conn.getresponse().read()
    lat = []
    t0 = time.perf_counter()
    for _ in range(N):
        s = time.perf_counter()
        conn.request("GET", "/", headers={"Host": NAME})
        assert conn.getresponse().read() == b"nginx over TLS\n"
        lat.append(time.perf_counter() - s)
    total = time.perf_counter() - t0
    conn.close()
    return {"p50": statistics.median(lat) * 1e3, "rps": N / total}


def _session(ctx: BenchContext, pod: Any, local: Path) -> subprocess.Popen[str]:
    cfg = ctx.workdir / "tls.json"
    cfg.write_text(json.dumps({"feature": {"network": {"incoming": {
        "mode": "steal", "http_filter": {"header_filter": "^x-dev: me$"},
        "tls_steal": {"ports": [{"port": PORT, "cert_pem": "/etc/tls/tls.crt",
                                 "key_pem": "/etc/tls/tls.key"}]},
        "tls_delivery": {"protocol": "tcp"}}}}}))
    argv = ctx.tether_exec(pod, [sys.executable, str(local), str(PORT)],
                           args=["-f", str(cfg)])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 20
    while not any(f"port {PORT} of the target" in line for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError("tether session did not start:\n" + "".join(lines))
        time.sleep(0.02)
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def run(ctx: BenchContext) -> list[dict[str, Any]]:
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert(NAME)
    ca_path = ctx.workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    work = ctx.workdir / "nginx"
    (work / "www").mkdir(parents=True)
    (work / "www" / "big").write_bytes(os.urandom(BIG))
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=PORT))
    local = ctx.workdir / "local.py"
    local.write_text(LOCAL)
    files = {"/etc/tls/tls.crt": b"".join(b.bytes() for b in issued.cert_chain_pems),
             "/etc/tls/tls.key": issued.private_key_pem.bytes()}
    with ctx.make_pod("tlsbench", files=files,
                      cmd=["nginx", "-c", str(conf), "-e", "stderr"]) as pod:
        pod.wait_port(PORT)
        direct_bulk = _download(pod.ip, str(ca_path))
        direct_req = _requests(pod.ip, str(ca_path))
        proc = _session(ctx, pod, local)
        try:
            tether_bulk = _download(pod.ip, str(ca_path))
            tether_req = _requests(pod.ip, str(ca_path))
        finally:
            _stop(proc)
    note = "not matching the filter: decrypted, judged, re-encrypted to nginx by the agent"
    return [
        figure("TLS pass-through: 64 MiB download", "MB/s", tether_bulk, direct_bulk,
               better="higher", note=note),
        figure("TLS pass-through: keep-alive requests/s", "req/s", tether_req["rps"],
               direct_req["rps"], better="higher"),
        figure("TLS pass-through: p50 latency", "ms", tether_req["p50"], direct_req["p50"]),
    ]
