"""silly-demo: the backend of the seed's scene, small enough to read in a minute.

GET /            -> the message ("This is a silly demo", or --message TEXT: the
                    developer's local change)
POST /video?id=..&title=..  -> stores a video in PostgreSQL (DB_HOST, DB_PORT, DB_USER,
                               DB_PASSWORD, DB_NAME from the environment), through psql
GET /videos      -> the stored videos as JSON
Every request is logged as ``Handling request URI=<path>`` on stderr.

It runs in the demo's staging pod and, changed, on the developer's machine under tether.
Only the standard library and the psql client are used, so it runs anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def psql(sql: str, *params: str) -> str:
    env = dict(os.environ)
    env["PGPASSWORD"] = os.environ.get("DB_PASSWORD", "")
    args = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
            "-h", os.environ.get("DB_HOST", "localhost"), "-p", os.environ.get("DB_PORT", "5432"),
            "-U", os.environ.get("DB_USER", "postgres"), "-d", os.environ.get("DB_NAME", "main")]
    for i, value in enumerate(params):
        args += ["-v", f"p{i}={value}"]
    res = subprocess.run(args, input=sql, capture_output=True, text=True, env=env, timeout=20)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip() or f"psql exited {res.returncode}")
    return res.stdout


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        print(f"Handling request URI={self.path}", file=sys.stderr, flush=True)
        path = urlsplit(self.path).path
        if path == "/videos":
            try:
                rows = psql("SELECT json_agg(json_build_object('id', id, 'title', title) "
                            "ORDER BY id) FROM videos;").strip()
            except RuntimeError as exc:
                self._send(500, f"database error: {exc}\n")
                return
            self._send(200, (rows or "[]") + "\n", "application/json")
            return
        self._send(200, MESSAGE + "\n")

    def do_POST(self) -> None:  # noqa: N802
        print(f"Handling request URI={self.path}", file=sys.stderr, flush=True)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        query = parse_qs(urlsplit(self.path).query)
        vid, title = query.get("id", [""])[0], query.get("title", [""])[0]
        if not vid:
            self._send(400, "id is required\n")
            return
        try:
            psql("INSERT INTO videos (id, title) VALUES (:'p0', :'p1') "
                 "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title;", vid, title)
        except RuntimeError as exc:
            self._send(500, f"database error: {exc}\n")
            return
        self._send(200, f"stored {vid}\n")


MESSAGE = "This is a silly demo"


def main() -> None:
    global MESSAGE
    if len(sys.argv) > 2 and sys.argv[1] == "--message":
        MESSAGE = sys.argv[2]
    port = int(os.environ.get("PORT", "8080"))
    print(f"DEBUG DB Endpoint: {os.environ.get('DB_HOST', '<unset>')}", file=sys.stderr,
          flush=True)
    print("Starting server...", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
