"""HTTPS with filters: the target's nginx serves TLS with a certificate that only exists in
the target's filesystem. The agent terminates TLS with that certificate, so the developer's
requests (HTTP/1.1, HTTP/2, gRPC) reach the local program and everyone else keeps getting
nginx's answer over TLS, with the same certificate as without tether."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tls_support import (
    CERT,
    KEY,
    NGINX_ANSWER,
    TLS_PORT,
    TOYS,
    Certs,
    TlsSession,
    curl,
    fingerprint,
    grpc_say,
    grpc_target,
    keepalive,
    nginx_answers_within,
    nginx_target,
    peer_certificate,
    tls_config,
    wait_lines,
)

MINE = {"mode": "steal", "http_filter": {"header_filter": "^x-dev: me$"}}


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs()


@pytest.fixture
def session(tmp_path: Path):
    started: list[TlsSession] = []

    def start(pod, incoming, argv=None, ready=True):
        s = TlsSession(pod, incoming, tmp_path,
                       argv or [sys.executable, TOYS, "http", str(TLS_PORT), "mine"])
        started.append(s)
        return s.wait_ready() if ready else s

    yield start
    for s in started:
        s.stop()


def test_developer_https_requests_reach_the_local_program_others_get_nginx(
        pod_factory, session, certs, tmp_path):
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    before = fingerprint(peer_certificate(target, ca))
    session(target, tls_config({**MINE, "tls_delivery": {"protocol": "tcp"}}))
    # HTTP/1.1 and HTTP/2 (ALPN), the developer's requests and everyone else's.
    assert curl(target, ca, "/a", "-H", "x-dev: me") == "mine /a via http/1.1\n [1.1]"
    assert curl(target, ca, "/a") == NGINX_ANSWER + " [1.1]"
    assert curl(target, ca, "/b", "-H", "x-dev: me", http2=True) == "mine /b via h2\n [2]"
    assert curl(target, ca, "/b", http2=True) == NGINX_ANSWER + " [2]"
    # One keep-alive connection alternating between the two upstreams.
    me = {"x-dev": "me"}
    assert keepalive(target, ca, [("/1", me), ("/2", {}), ("/3", me), ("/4", {})]) == [
        "mine /1 via http/1.1\n", NGINX_ANSWER, "mine /3 via http/1.1\n", NGINX_ANSWER]
    # The client sees the target's own certificate, as without tether.
    assert fingerprint(peer_certificate(target, ca)) == before == fingerprint(certs.leaf_der)


def test_tls_delivery_connects_to_the_local_program_over_tls(pod_factory, session, certs,
                                                            tmp_path):
    """Default delivery: TLS to the local program, which serves the target's certificate
    (read through tether from the target's filesystem: it is nowhere on this machine)."""
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    assert not Path(CERT).exists()
    session(target, tls_config(MINE),
            argv=[sys.executable, TOYS, "http", str(TLS_PORT), "mine", CERT, KEY])
    assert curl(target, ca, "/x", "-H", "x-dev: me") == "mine /x via http/1.1+tls\n [1.1]"
    assert curl(target, ca, "/y", "-H", "x-dev: me", http2=True) == "mine /y via h2+tls\n [2]"
    assert curl(target, ca, "/z", http2=True) == NGINX_ANSWER + " [2]"


@pytest.mark.parametrize("delivery", ["tcp", "tls"])
def test_grpc_over_tls_with_a_header_filter(pod_factory, session, certs, tmp_path, delivery):
    target = grpc_target(pod_factory, certs)
    tls_args = [CERT, KEY] if delivery == "tls" else []  # read in the target, through tether
    session(target, tls_config({**MINE, "tls_delivery": {"protocol": delivery}}),
            argv=[sys.executable, TOYS, "grpc", str(TLS_PORT), "mine", *tls_args])
    assert grpc_say(target, certs.ca_pem, "hello", (("x-dev", "me"),)) == "mine: hello"
    assert grpc_say(target, certs.ca_pem, "hello") == "target: hello"
    assert grpc_say(target, certs.ca_pem, "again", (("x-dev", "you"),)) == "target: again"


def test_mirror_filter_copies_only_matching_decrypted_requests(pod_factory, session, certs,
                                                               tmp_path):
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    seen = tmp_path / "seen.txt"
    session(target, tls_config({"mode": "mirror",
                                "http_filter": {"header_filter": "^x-mirror: yes$"},
                                "tls_delivery": {"protocol": "tcp"}}))
    hdr = ("-H", f"x-copies: {seen}")
    assert curl(target, ca, "/copied", *hdr, "-H", "x-mirror: yes") == NGINX_ANSWER + " [1.1]"
    assert curl(target, ca, "/not-copied", *hdr) == NGINX_ANSWER + " [1.1]"
    assert curl(target, ca, "/copied-too", *hdr, "-H", "x-mirror: yes") == NGINX_ANSWER + " [1.1]"
    # HTTP/2: matching streams are replayed to the local program, bodies included.
    body = tmp_path / "body"
    body.write_bytes(b"x" * 200000)  # more than the default HTTP/2 windows
    assert curl(target, ca, "/upload/h2-copied", *hdr, "-H", "x-mirror: yes", "-T", str(body),
                http2=True) == " [2]"  # nginx stored it (201, no body)
    assert curl(target, ca, "/h2-not-copied", *hdr, http2=True) == NGINX_ANSWER + " [2]"
    lines = wait_lines(seen, 3)
    assert sorted(lines) == ["mine GET /copied", "mine GET /copied-too",
                             "mine PUT /upload/h2-copied 200000"]


def test_mirror_without_a_filter_copies_every_request_http2_included(pod_factory, session,
                                                                     certs, tmp_path):
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    seen = tmp_path / "seen.txt"
    session(target, tls_config({"mode": "mirror", "tls_delivery": {"protocol": "tcp"}}))
    hdr = ("-H", f"x-copies: {seen}")
    assert curl(target, ca, "/one", *hdr) == NGINX_ANSWER + " [1.1]"
    assert curl(target, ca, "/two", *hdr, http2=True) == NGINX_ANSWER + " [2]"
    assert sorted(wait_lines(seen, 2)) == ["mine GET /one", "mine GET /two"]


@pytest.mark.parametrize("change, message", [
    ({"cert_pem": "/etc/tls/missing.crt"},
     "tls_steal.ports[0].cert_pem: /etc/tls/missing.crt does not exist in the target"),
    ({"key_pem": "/etc/tls/other.key"},
     "tls_steal.ports[0].key_pem: the private key does not match the certificate"),
    ({"port": 8443, "cert_pem": CERT, "key_pem": CERT},
     "tls_steal.ports[0].key_pem: not a PEM private key"),
])
def test_bad_certificate_settings_name_the_key(pod_factory, session, certs, tmp_path, change,
                                               message):
    target = nginx_target(pod_factory, certs, tmp_path)
    other = Certs()
    target.exec(["sh", "-c", "cat > /etc/tls/other.key"], input=other.key.decode())
    entry = {"port": TLS_PORT, "cert_pem": CERT, "key_pem": KEY, **change}
    s = session(target, {**MINE, "tls_steal": {"ports": [entry]}}, ready=False)
    assert s.proc.wait(20) != 0
    assert message in s.output, s.output
    assert "Traceback" not in s.output


def test_a_port_not_served_with_tls_is_refused_by_name(pod_factory, session, tmp_path):
    silly = str(Path(__file__).resolve().parent / "silly_server.py")
    certs = Certs()
    target = pod_factory("plain", files={CERT: certs.cert, KEY: certs.key},
                         cmd=[sys.executable, silly, str(TLS_PORT), "plain text"])
    target.wait_port(TLS_PORT)
    s = session(target, tls_config(MINE), ready=False)
    assert s.proc.wait(20) != 0
    assert ("tls_steal.ports[0].port: port 8443 of the target does not answer with TLS"
            in s.output), s.output


def test_plain_http_to_the_stolen_https_port_gets_the_applications_own_answer(
        pod_factory, session, certs, tmp_path):
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    session(target, tls_config({**MINE, "tls_delivery": {"protocol": "tcp"}}))
    res = subprocess.run(["curl", "-sS", "-m", "5", "-H", "x-dev: me",
                          f"http://{target.ip}:{TLS_PORT}/"], capture_output=True, text=True)
    assert "The plain HTTP request was sent to HTTPS port" in res.stdout, res
    assert curl(target, ca, "/after", "-H", "x-dev: me") == "mine /after via http/1.1\n [1.1]"


def test_an_application_without_http2_is_never_spoken_to_in_http2(pod_factory, session,
                                                                   certs, tmp_path):
    """The agent offers clients only the ALPN protocols the application accepts, so an
    HTTP/2 client falls back to HTTP/1.1 exactly as it would talking to the app."""
    target = pod_factory("h1only", files={CERT: certs.cert, KEY: certs.key},
                         cmd=[sys.executable, TOYS, "http", str(TLS_PORT), "target", CERT, KEY,
                              "http/1.1"])
    target.wait_port(TLS_PORT)
    ca = certs.write_ca(tmp_path)
    session(target, tls_config({**MINE, "tls_delivery": {"protocol": "tcp"}}))
    assert curl(target, ca, "/h", http2=True) == "target /h via http/1.1+tls\n [1.1]"
    assert curl(target, ca, "/h", "-H", "x-dev: me", http2=True) == "mine /h via http/1.1\n [1.1]"


def test_two_developers_share_one_https_target_each_with_their_filter(pod_factory, session,
                                                                     certs, tmp_path):
    """The newer agent passes what its filter does not take over TLS to the older one's
    redirect, which decrypts and judges again."""
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    for name in ("alice", "bob"):
        session(target, tls_config({"mode": "steal",
                                    "http_filter": {"header_filter": f"^x-dev: {name}$"},
                                    "tls_delivery": {"protocol": "tcp"}}),
                argv=[sys.executable, TOYS, "http", str(TLS_PORT), name])
    for http2, proto, version in ((False, "http/1.1", "1.1"), (True, "h2", "2")):
        for who in ("alice", "bob"):
            assert curl(target, ca, "/t", "-H", f"x-dev: {who}", http2=http2) == (
                f"{who} /t via {proto}\n [{version}]")
        assert curl(target, ca, "/t", "-H", "x-dev: carol", http2=http2) == (
            f"{NGINX_ANSWER} [{version}]")


def test_an_unreadable_delivery_trust_file_on_this_machine_names_the_key(
        pod_factory, session, certs, tmp_path):
    target = nginx_target(pod_factory, certs, tmp_path)
    s = session(target, tls_config({**MINE, "tls_delivery": {
        "trust_roots": [str(tmp_path / "no-such-ca.pem")]}}), ready=False)
    assert s.proc.wait(20) != 0
    assert (f"feature.network.incoming.tls_delivery.trust_roots[0]: cannot read "
            f"{tmp_path / 'no-such-ca.pem'}") in s.output, s.output
    assert "Traceback" not in s.output


NODE_HTTPS = """
const fs = require("fs"), https = require("https");
https.createServer({cert: fs.readFileSync(process.argv[1]), key: fs.readFileSync(process.argv[2])},
  (req, res) => res.end(`node ${req.url} secure=${req.socket.encrypted === true}\\n`))
  .listen(8443, () => console.log("node https listening"));
"""


def test_a_node_https_program_reading_the_targets_certificate_gets_the_developers_requests(
        pod_factory, session, certs, tmp_path):
    """The local program is Node's https module; it reads the certificate and key from
    the target's filesystem through tether, and the agent delivers over TLS to it."""
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    session(target, tls_config(MINE), argv=["node", "-e", NODE_HTTPS, CERT, KEY])
    assert curl(target, ca, "/n", "-H", "x-dev: me") == "node /n secure=true\n [1.1]"
    assert curl(target, ca, "/n") == NGINX_ANSWER + " [1.1]"


def test_killing_the_agent_gives_the_https_port_back_to_nginx_within_2s(pod_factory, session,
                                                                       certs, tmp_path):
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    s = session(target, tls_config({**MINE, "tls_delivery": {"protocol": "tcp"}}))
    assert curl(target, ca, "/", "-H", "x-dev: me") == "mine / via http/1.1\n [1.1]"
    os.kill(s.agent_pid(), signal.SIGKILL)
    nginx_answers_within(target, ca, 2)
    assert "tether" not in target.exec(["nft", "list", "ruleset"]).stdout


def test_the_clients_sni_reaches_the_application_and_the_local_program(pod_factory, session,
                                                                      certs, tmp_path):
    target = pod_factory("sni", files={CERT: certs.cert, KEY: certs.key},
                         cmd=[sys.executable, TOYS, "http", str(TLS_PORT), "target", CERT, KEY])
    target.wait_port(TLS_PORT)
    ca = certs.write_ca(tmp_path)
    session(target, tls_config(MINE),
            argv=[sys.executable, TOYS, "http", str(TLS_PORT), "mine", CERT, KEY])
    assert curl(target, ca, "/sni") == "target sni=app.test\n [1.1]"
    assert curl(target, ca, "/sni", "-H", "x-dev: me", http2=True) == "mine sni=app.test\n [2]"


def test_without_a_filter_the_https_port_is_stolen_whole(pod_factory, session, certs,
                                                         tmp_path):
    """Plain steal: the agent does not decrypt; the local program gets the client's TLS
    connection itself and answers with the target's certificate it reads through tether."""
    target = nginx_target(pod_factory, certs, tmp_path)
    ca = certs.write_ca(tmp_path)
    s = session(target, tls_config({"mode": "steal"}),
                argv=[sys.executable, TOYS, "http", str(TLS_PORT), "mine", CERT, KEY])
    assert "tls_steal: has no effect without http_filter" in s.output
    assert curl(target, ca, "/w") == "mine /w via http/1.1+tls\n [1.1]"
    assert curl(target, ca, "/w", http2=True) == "mine /w via h2+tls\n [2]"
