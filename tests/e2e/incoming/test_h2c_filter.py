"""gRPC-style traffic in a cluster: h2c with prior knowledge, many concurrent streams on ONE
connection. A filtered steal takes exactly the streams whose head matches; the others,
on the same connection at the same time, keep getting the target's answers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from h2c_toys import h2_exchange
from incoming_support import PORT

H2C = str(Path(__file__).resolve().parent / "h2c_toys.py")
MINE = {"mode": "steal", "http_filter": {"header_filter": "^x-user: me$"}}


def h2c_target(pod_factory):
    pod = pod_factory("h2c", cmd=[sys.executable, H2C, str(PORT), "target"])
    pod.wait_port(PORT)
    return pod


def exchange(pod, requests):
    with socket.create_connection((pod.ip, PORT), timeout=5) as sock:
        return h2_exchange(sock, requests)


def test_concurrent_streams_on_one_connection_each_get_the_right_answer(pod_factory, session):
    target = h2c_target(pod_factory)
    session(target, MINE, argv=[sys.executable, H2C, str(PORT), "local"])
    reqs = []
    for i in range(12):
        mine = i % 3 == 0
        reqs.append({"path": f"/{'slow-' if i < 2 else ''}call{i}",
                     "headers": [("x-user", "me")] if mine else [("x-user", "someone")],
                     "body": b"payload" * i})
    out = exchange(target, reqs)
    for i, (req, r) in enumerate(zip(reqs, out, strict=True)):
        who = "local" if i % 3 == 0 else "target"
        assert (r["status"], r["reset"]) == ("200", None), (i, r)
        assert r["body"].decode() == f"{who} {req['path']} {7 * i}\n"
        assert r["trailers"] == {"x-served-by": who}  # trailers cross too (gRPC status)


def test_curl_prior_knowledge_sees_the_same_split(pod_factory, session):
    target = h2c_target(pod_factory)
    session(target, MINE, argv=[sys.executable, H2C, str(PORT), "local"])

    def curl(*args):
        res = subprocess.run(["curl", "-sS", "-m", "5", "--http2-prior-knowledge", *args,
                              f"http://{target.ip}:{PORT}/hello"],
                             capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert curl("-H", "x-user: me") == "local /hello 0\n"
    assert curl() == "target /hello 0\n"


def test_two_developers_share_one_h2c_connection(pod_factory, session):
    """Each agent in the chain routes per stream: the newer one passes on what it does not
    take over its own h2c connection, which the older one splits again."""
    target = h2c_target(pod_factory)
    for name in ("alice", "bob"):
        session(target, {"mode": "steal", "http_filter": {"header_filter": f"^x-user: {name}$"}},
                argv=[sys.executable, H2C, str(PORT), name])
    users = ["alice", "bob", None, "bob", "alice", None]
    out = exchange(target, [{"path": f"/u{i}", "headers": [("x-user", u)] if u else []}
                            for i, u in enumerate(users)])
    assert [r["body"].decode() for r in out] == [f"{u or 'target'} /u{i} 0\n"
                                                 for i, u in enumerate(users)]
