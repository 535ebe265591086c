"""A stolen request's client address is the real remote client, whichever way the program
asks: accept()'s address (C, Python) or getpeername() after an accept without one (Node's
libuv)."""

from __future__ import annotations

from incoming_support import PORT, curl

NODE_SERVER = (
    "require('http').createServer((req, res) => {"
    " res.end('peer=' + req.socket.remoteAddress.replace('::ffff:', '') + '\\n');"
    f"}}).listen({PORT}, () => console.log('listening'));"
)


def test_node_sees_the_remote_client_not_the_relay(target, session):
    s = session(target, "steal", argv=["node", "-e", NODE_SERVER])
    answer = curl(target, "/")
    # curl runs on this machine: the target sees it coming from its gateway address
    assert answer == f"peer={target.gateway}\n", s.output
    assert "127.0.0.1" not in answer


def test_python_sees_the_remote_client(target, session):
    code = ("import http.server as h\n"
            "class H(h.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        b = ('peer=' + self.client_address[0] + '\\n').encode()\n"
            "        self.send_response(200)\n"
            "        self.send_header('Content-Length', str(len(b)))\n"
            "        self.end_headers()\n"
            "        self.wfile.write(b)\n"
            f"h.HTTPServer(('0.0.0.0', {PORT}), H).serve_forever()\n")
    s = session(target, "steal", argv=["python3", "-c", code])
    assert curl(target, "/") == f"peer={target.gateway}\n", s.output
