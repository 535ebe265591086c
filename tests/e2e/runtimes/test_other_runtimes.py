"""The seed's scenes for the other runtimes people run: a JVM program (OpenJDK: a plain
socket client and a com.sun.net.httpserver server) and a Ruby program get the pod's
environment, DNS (a short service name through the pod's search list, a name only the
pod's /etc/hosts has), outgoing network and files, and the pod's stolen traffic."""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest
from e2e_support import BackgroundTether

pytestmark = pytest.mark.e2e

TARGET_APP = (
    "import http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        b = b'This is a silly demo\\n'\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(b)\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n")
NAMES = {"jvm": "the JVM", "ruby": "Ruby"}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode().strip()


@pytest.mark.parametrize("runtime", ["jvm", "ruby"])
def test_program_gets_the_pods_env_dns_outgoing_and_files(tether, probes, staging, runtime):
    res = tether(staging.pod, [*probes[runtime], "env=DB_PASSWORD", "lookup=svc-db",
                               "dial=svc-db:7000", "lookup=legacy-db",
                               "cat=/etc/tether-runtime-app.conf"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    out, db = res.stdout, staging.db.ip
    assert "env DB_PASSWORD=from-the-pod" in out, out + res.stderr
    assert f"lookup svc-db [{'' if runtime == 'jvm' else chr(34)}{db}" in out, out + res.stderr
    assert "dial svc-db:7000: pong from the database" in out, out + res.stderr
    assert f"lookup legacy-db [{'' if runtime == 'jvm' else chr(34)}{db}" in out, out
    assert "cat /etc/tether-runtime-app.conf: dsn=svc-db:7000" in out, out


@pytest.mark.parametrize("runtime", ["jvm", "ruby"])
def test_server_steals_the_pods_port_and_gives_it_back(probes, pod_factory, tmp_path, runtime):
    pod = pod_factory("backend", cmd=[sys.executable, "-c", TARGET_APP])
    pod.wait_port(8080)
    cfg = tmp_path / "steal.json"
    cfg.write_text(json.dumps({"target": f"process/{pod.pid}",
                               "feature": {"network": {"incoming": "steal"}}}))
    session = BackgroundTether(["exec", "-f", str(cfg), "--", *probes[runtime], "serve=8080"],
                               cwd=tmp_path)
    try:
        session.wait_for("stealing port 8080", timeout=60)
        assert _get(f"http://{pod.ip}:8080/?user=me") == \
            f"This is a silly demo from {NAMES[runtime]}"
        session.wait_for("Handling request URI=/?user=me")
    finally:
        session.stop()
    assert _get(f"http://{pod.ip}:8080/") == "This is a silly demo"  # the pod's own again
