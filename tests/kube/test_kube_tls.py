"""HTTPS with a filter on a Kubernetes target: nginx serves TLS with a certificate from a
Secret volume (Kubernetes' layout: ``..data`` links into a timestamped directory), which
exists only in the pod. The agent reads it there, the developer's requests reach the local
program over the relayed agent link, everyone else keeps getting nginx."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from e2e_support import BackgroundTether

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "incoming"))
from tls_support import (  # noqa: E402
    NGINX_ANSWER,
    NGINX_CONF,
    TLS_PORT,
    TOYS,
    Certs,
    curl,
    fingerprint,
    peer_certificate,
)


def test_filtered_https_steal_with_a_secret_mounted_certificate(kube, kube_env, tmp_path):
    certs = Certs()
    kube.secret("app-tls", "staging", {"tls.crt": certs.cert, "tls.key": certs.key},
                kind="kubernetes.io/tls")
    work = tmp_path / "nginx"
    (work / "www").mkdir(parents=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=work, port=TLS_PORT, cert="/etc/tls/tls.crt",
                                      key="/etc/tls/tls.key"))
    [pod] = kube.deploy("secure-demo", "staging", port=TLS_PORT,
                        secret_volumes={"/etc/tls": "app-tls"},
                        cmd=["nginx", "-c", str(conf), "-e", "stderr"])
    target = kube.netns[pod["metadata"]["name"]]
    target.wait_port(TLS_PORT, timeout=10)
    assert not Path("/etc/tls/tls.crt").exists()
    ca = certs.write_ca(tmp_path)
    cfg = tmp_path / "tls.json"
    cfg.write_text(json.dumps({
        "target": {"path": "deployment/secure-demo", "namespace": "staging"},
        "feature": {"network": {"incoming": {
            "mode": "steal", "http_filter": {"header_filter": "^x-dev: me$"},
            "tls_steal": {"ports": [{"port": TLS_PORT, "cert_pem": "/etc/tls/tls.crt",
                                     "key_pem": "/etc/tls/tls.key"}]},
            "tls_delivery": {"protocol": "tcp"}}}}}))
    s = BackgroundTether(["exec", "-f", str(cfg), "--", sys.executable, TOYS, "http",
                          str(TLS_PORT), "mine"], cwd=tmp_path, env=kube_env)
    try:
        s.wait_for(f"port {TLS_PORT} of the target", timeout=30)
        assert any("(relayed over the agent link)" in line for line in s.lines), s.output
        assert curl(target, ca, "/k", "-H", "x-dev: me") == "mine /k via http/1.1\n [1.1]"
        assert curl(target, ca, "/k") == NGINX_ANSWER + " [1.1]"
        assert curl(target, ca, "/h2", "-H", "x-dev: me", http2=True) == "mine /h2 via h2\n [2]"
        assert curl(target, ca, "/h2", http2=True) == NGINX_ANSWER + " [2]"
        assert fingerprint(peer_certificate(target, ca)) == fingerprint(certs.leaf_der)
    finally:
        s.stop(10)
