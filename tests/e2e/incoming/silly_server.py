"""A tiny HTTP/1.1 keep-alive server for the incoming tests: answers MESSAGE and logs
"Handling request URI=<path> peer=<ip>" for every request (flushed at once).

usage: silly_server.py PORT MESSAGE [BIND_ADDR]"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body_in = self.rfile.read(length) if length else b""
        print(f"Handling request URI={self.path} peer={self.client_address[0]} "
              f"body={len(body_in)}", flush=True)
        if self.path.startswith("/echo"):
            body = body_in
        else:
            body = (MESSAGE + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


MESSAGE = sys.argv[2]
if __name__ == "__main__":
    bind = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"
    server = Server((bind, int(sys.argv[1])), Handler)
    print(f"listening on {bind}:{sys.argv[1]}", flush=True)
    server.serve_forever()
