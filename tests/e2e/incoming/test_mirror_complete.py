"""Mirror misses nothing: every request the target receives reaches the local program,
whatever the program does with its copy connections (Werkzeug's development server
closes one after each answer), and a filter in mirror mode copies only what it matches.
"""

from __future__ import annotations

import http.client
import re
import time

from incoming_support import PORT, TARGET_ANSWER

FLASK_APP = """
import sys
from flask import Flask, request
app = Flask(__name__)

@app.route("/<path:p>", methods=["GET", "POST"])
def any_path(p):
    print(f"Handling request URI={request.full_path.rstrip('?')} body={len(request.get_data())}",
          flush=True)
    return "local\\n"

# threaded=False: HTTP/1.0, the connection is closed after every answer
app.run(host="0.0.0.0", port=int(sys.argv[1]), threaded=sys.argv[2] == "threaded")
"""

NODE_SERVER = f"""
require('http').createServer((req, res) => {{
  let n = 0;
  req.on('data', (c) => {{ n += c.length; }});
  req.on('end', () => {{
    console.log('Handling request URI=' + req.url + ' body=' + n);
    res.end('local\\n');
  }});
}}).listen({PORT});
"""


def keep_alive_clients(target, clients: int, requests: int, body: bytes = b"") -> None:
    """`clients` keep-alive connections to the target, `requests` requests on each; every
    answer is the target's own."""
    conns = [http.client.HTTPConnection(target.ip, PORT, timeout=5) for _ in range(clients)]
    for r in range(requests):
        for c, conn in enumerate(conns):
            method = "POST" if body else "GET"
            conn.request(method, f"/c{c}/r{r}", body=body or None)
            resp = conn.getresponse()
            assert resp.read().decode() == TARGET_ANSWER
            assert resp.getheader("connection", "").lower() != "close"
    for conn in conns:
        conn.close()


def wait_copies(s, expected: set[str], timeout: float = 10) -> set[str]:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        # threaded servers may print two lines at once: find every URI= on a line
        seen = {uri for line in s.lines for uri in re.findall(r"URI=(\S+)", line)}
        if expected <= seen:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the local program saw {sorted(seen)} of {sorted(expected)}:\n"
                         f"{s.output}")


ALL_FOUR = {"/c0/r0", "/c1/r0", "/c0/r1", "/c1/r1"}


def test_flask_that_closes_after_each_answer_sees_every_mirrored_request(
        target, session, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(FLASK_APP)
    s = session(target, "mirror", argv=["python3", str(app), str(PORT), "single"])
    keep_alive_clients(target, clients=2, requests=2)
    wait_copies(s, ALL_FOUR)


def test_flask_threaded_sees_every_mirrored_request_with_bodies_through_the_relay(
        target, session, tmp_path):
    """The path a Kubernetes target takes (the copy travels over the agent link)."""
    app = tmp_path / "app.py"
    app.write_text(FLASK_APP)
    s = session(target, "mirror", argv=["python3", str(app), str(PORT), "threaded"],
                env={"TETHER_INCOMING_RELAY": "1"})
    s.wait_for("(relayed over the agent link)", timeout=2)
    keep_alive_clients(target, clients=2, requests=2, body=b"x" * 70000)
    wait_copies(s, ALL_FOUR)
    assert s.output.count("body=70000") == s.output.count("URI=/c") == 4, s.output


def test_node_sees_every_mirrored_request(target, session, tmp_path):
    s = session(target, "mirror", argv=["node", "-e", NODE_SERVER])
    keep_alive_clients(target, clients=2, requests=2)
    wait_copies(s, ALL_FOUR)


def test_mirror_filter_copies_only_the_matching_requests(target, session):
    s = session(target, {"mode": "mirror", "http_filter": {"header_filter": "^x-dev: me$"}})
    s.wait_for("only requests the http_filter matches", timeout=2)
    # Two keep-alive connections mixing both kinds; each ends with a request of mine, so
    # once those copies arrived, a copy of any earlier request would have too.
    plan = [[("/mine-1", True), ("/theirs-1", False), ("/mine-2", True),
             ("/theirs-2", False), ("/mine-3", True)],
            [("/theirs-3", False), ("/theirs-4", False), ("/mine-4", True)]]
    for requests in plan:
        conn = http.client.HTTPConnection(target.ip, PORT, timeout=5)
        for path, mine in requests:
            conn.request("POST", path, body=b"y" * 3000,
                         headers={"x-dev": "me"} if mine else {})
            assert conn.getresponse().read().decode() == TARGET_ANSWER  # target answers all
        conn.close()
    wait_copies(s, {"/mine-1", "/mine-2", "/mine-3", "/mine-4"})
    assert s.output.count("URI=") == s.output.count("body=3000") == 4, s.output
    assert "theirs" not in s.output


DUAL_STACK_TARGET = """
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"This is a silly demo\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class S(ThreadingHTTPServer):
    address_family = socket.AF_INET6  # [::]:port takes IPv4 clients too (v4-mapped)
    daemon_threads = True

S(("::", int(sys.argv[1])), H).serve_forever()
"""


def test_mirror_copies_ipv6_clients_too(pod_factory, session):
    import sys

    pod = pod_factory("dual", cmd=[sys.executable, "-c", DUAL_STACK_TARGET, str(PORT)])
    pod.wait_port(PORT)
    s = session(pod, "mirror")
    for url in (f"http://[::1]:{PORT}/from-ipv6", f"http://127.0.0.1:{PORT}/from-ipv4"):
        res = pod.exec(["curl", "-sS", "-g", "-m", "5", url])
        assert res.stdout == TARGET_ANSWER, res.stderr
    wait_copies(s, {"/from-ipv6", "/from-ipv4"})
