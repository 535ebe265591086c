"""The HTTPS scenes' target: nginx serving TLS with a certificate that exists only in the
target's filesystem, the CA a client trusts, and tether sessions on port 8443."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trustme
from e2e_support import BackgroundTether
from incoming_support import Session

HERE = Path(__file__).resolve().parent
TOYS = str(HERE / "tls_toys.py")
TLS_PORT = 8443
NAME = "app.test"  # the name clients dial (SNI), in the certificate
CERT, KEY = "/etc/tls/tls.crt", "/etc/tls/tls.key"
NGINX_ANSWER = "nginx over TLS\n"

NGINX_CONF = """
daemon off;
worker_processes 1;
user root;
error_log stderr warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ default_type text/plain; return 200 "nginx over TLS\\n"; }}
        location /big {{ root {tmp}/www; }}
        location /upload/ {{ root {tmp}/www; dav_methods PUT; create_full_put_path on;
                             client_max_body_size 16m; }}
    }}
}}
"""


class Certs:
    """A CA and the target's certificate for app.test (PEM bytes)."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        issued = self.ca.issue_cert(NAME)
        self.cert = b"".join(blob.bytes() for blob in issued.cert_chain_pems)
        self.key = issued.private_key_pem.bytes()
        self.ca_pem = self.ca.cert_pem.bytes()
        self.leaf_der = ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())

    def write_ca(self, tmp: Path) -> str:
        path = tmp / "ca.pem"
        path.write_bytes(self.ca_pem)
        return str(path)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def nginx_target(pod_factory: Any, certs: Certs, tmp: Path, key: bytes | None = None,
                 big: int = 0) -> Any:
    work = tmp / f"nginx-{time.monotonic_ns()}"
    (work / "www").mkdir(parents=True)
    if big:
        (work / "www" / "big").write_bytes(b"x" * big)
    conf = NGINX_CONF.format(tmp=work, port=TLS_PORT, cert=CERT, key=KEY)
    pod = pod_factory("nginx", files={CERT: certs.cert, KEY: key or certs.key,
                                      "/etc/nginx-tether/nginx.conf": conf},
                      cmd=["nginx", "-c", "/etc/nginx-tether/nginx.conf", "-e", "stderr"])
    pod.wait_port(TLS_PORT)
    return pod


def grpc_target(pod_factory: Any, certs: Certs) -> Any:
    pod = pod_factory("grpc", files={CERT: certs.cert, KEY: certs.key},
                      cmd=[sys.executable, TOYS, "grpc", str(TLS_PORT), "target", CERT, KEY])
    pod.wait_port(TLS_PORT, timeout=15)
    return pod


def tls_config(incoming: dict[str, Any], port: int = TLS_PORT) -> dict[str, Any]:
    return {"tls_steal": {"ports": [{"port": port, "cert_pem": CERT, "key_pem": KEY}]},
            **incoming}


class TlsSession(BackgroundTether):
    """A background `tether exec` on the target with this incoming config."""

    def __init__(self, pod: Any, incoming: dict[str, Any], tmp: Path, argv: list[str]) -> None:
        cfg = tmp / f"tether-{time.monotonic_ns()}.json"
        cfg.write_text(json.dumps({"feature": {"network": {"incoming": incoming}}}))
        super().__init__(["exec", "-t", f"process/{pod.pid}", "-f", str(cfg), "--", *argv],
                         cwd=tmp, env=dict(os.environ))

    agent_pid = Session.agent_pid
    orchestrator_pid = Session.orchestrator_pid

    def wait_ready(self) -> TlsSession:
        self.wait_for(f"port {TLS_PORT} of the target", timeout=20)
        return self


def curl(pod: Any, ca: str, path: str = "/", *args: str, http2: bool = False) -> str:
    res = subprocess.run(
        ["curl", "-sS", "-m", "5", "--cacert", ca, "--resolve", f"{NAME}:{TLS_PORT}:{pod.ip}",
         "--http2" if http2 else "--http1.1", "-w", " [%{http_version}]", *args,
         f"https://{NAME}:{TLS_PORT}{path}"],
        capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    return res.stdout


def nginx_answers_within(pod: Any, ca: str, seconds: float) -> float:
    """Poll until nginx itself answers a developer's request; how long it took."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < seconds + 3:
        res = subprocess.run(
            ["curl", "-sS", "-m", "1", "--cacert", ca, "--resolve",
             f"{NAME}:{TLS_PORT}:{pod.ip}", "-H", "x-dev: me", f"https://{NAME}:{TLS_PORT}/"],
            capture_output=True, text=True)
        last = res.stdout + res.stderr
        if res.stdout == NGINX_ANSWER:
            took = time.monotonic() - start
            assert took < seconds, f"nginx answered only after {took:.2f}s"
            return took
        time.sleep(0.05)
    raise AssertionError(f"nginx never answered again (last: {last!r})")


def keepalive(pod: Any, ca: str, requests: list[tuple[str, dict[str, str]]]) -> list[str]:
    """Several requests on one HTTPS/1.1 connection; the answers' bodies."""
    import http.client

    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(pod.ip, TLS_PORT, timeout=5, context=ctx)
    conn.sock = ctx.wrap_socket(socket.create_connection((pod.ip, TLS_PORT), timeout=5),
                                server_hostname=NAME)
    out = []
    for path, headers in requests:
        conn.request("GET", path, headers={"Host": NAME, **headers})
        out.append(conn.getresponse().read().decode())
    conn.close()
    return out


def peer_certificate(pod: Any, ca: str) -> bytes:
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((pod.ip, TLS_PORT), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=NAME) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def grpc_say(pod: Any, ca_pem: bytes, text: str, metadata: tuple[tuple[str, str], ...] = ()
             ) -> str:
    import grpc

    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(f"{pod.ip}:{TLS_PORT}", creds,
                             options=[("grpc.ssl_target_name_override", NAME)]) as ch:
        say = ch.unary_unary("/tether.Echo/Say")
        return bytes(say(text.encode(), metadata=metadata, timeout=5)).decode()


def wait_lines(path: Path, n: int, timeout: float = 5) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    return path.read_text().splitlines() if path.exists() else []
