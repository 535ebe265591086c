"""Listeners that change hands: the reloaders and worker models people really use.

A reloader binds and its worker listens (uvicorn --reload), a primary listens and its
pre-forked workers accept (gunicorn, Node's cluster), a parent listens and a re-exec'd
child accepts on the inherited descriptor (Flask's reloader, WERKZEUG_SERVER_FD), a
socket is bound in one process image and listened on in a freshly spawned one (uvicorn
--workers, hypercorn), passed over a Unix socket, or handed over by socket activation
(LISTEN_FDS). In every one the target's traffic is stolen (or mirrored), it goes on after
a reload, and the program sees the real client, not the relay's 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from incoming_support import LOCAL_ANSWER, PORT, curl

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
NODE_MODULES = HERE.parents[1] / "node_modules"

APP = '''\
import os

VERSION = "{version}"


def _body(peer):
    return f"local {{VERSION}} pid={{os.getpid()}} peer={{peer}}\\n".encode()


async def app(scope, receive, send):  # ASGI: uvicorn, hypercorn
    if scope["type"] != "http":
        return
    body = _body(scope["client"][0] if scope.get("client") else None)
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})


def wsgi(environ, start_response):  # WSGI: gunicorn, Flask
    body = _body(environ.get("REMOTE_ADDR"))
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


try:
    from flask import Flask, request
except ImportError:
    pass
else:
    flask_app = Flask(__name__)

    @flask_app.route("/")
    def index():
        return _body(request.remote_addr)
'''


def write_app(tmp: Path, version: str) -> None:
    (tmp / "app.py").write_text(APP.format(version=version))


def answer_of(target, path: str = "/") -> tuple[str, str, str]:
    """(version, pid, peer) of a local answer; fails on the target's own answer."""
    text = curl(target, path)
    assert text.startswith("local "), text
    words = dict(w.split("=", 1) for w in text.split()[2:])
    return text.split()[1], words["pid"], words["peer"]


def wait_version(target, version: str, timeout: float = 20, s=None, save=None
                 ) -> tuple[str, str, str]:
    """Poll until the local program answers `version`; `save` (the developer saving the
    file) is called at once and again every 3 s, in case a watcher started late."""
    deadline = time.monotonic() + timeout
    last = ""
    saved = 0.0
    while time.monotonic() < deadline:
        if save is not None and time.monotonic() - saved > 3:
            save()
            saved = time.monotonic()
        try:
            got = answer_of(target)
            if got[0] == version:
                return got
            last = repr(got)
        except AssertionError as exc:  # between two workers: the answer may be missing
            last = str(exc)
        time.sleep(0.1)
    raise AssertionError(f"never answered {version}: last {last}\n{s.output if s else ''}")


def test_uvicorn_reload_worker_is_stolen_and_stays_stolen_after_a_reload(
        target, session, tmp_path):
    write_app(tmp_path, "v1")
    s = session(target, "steal", argv=[
        str(BIN / "uvicorn"), "app:app", "--reload", "--reload-dir", str(tmp_path),
        "--host", "0.0.0.0", "--port", str(PORT)])
    version, pid1, peer = wait_version(target, "v1")
    assert peer == target.gateway, s.output
    version, pid2, peer = wait_version(target, "v2", s=s,
                                       save=lambda: write_app(tmp_path, "v2"))
    assert pid2 != pid1 and peer == target.gateway, s.output
    assert s.proc.poll() is None


def test_uvicorn_reload_worker_gets_the_mirror_copy(target, session, tmp_path):
    write_app(tmp_path, "v1")
    s = session(target, "mirror", argv=[
        str(BIN / "uvicorn"), "app:app", "--reload", "--reload-dir", str(tmp_path),
        "--host", "0.0.0.0", "--port", str(PORT)])
    assert curl(target, "/copied-to-the-worker") == "This is a silly demo\n"
    s.wait_for("GET /copied-to-the-worker", timeout=10)  # uvicorn's access log


def test_gunicorn_prefork_workers_all_serve_stolen_requests(target, session, tmp_path):
    write_app(tmp_path, "v1")
    s = session(target, "steal", argv=[
        str(BIN / "gunicorn"), "-w", "2", "-b", f"0.0.0.0:{PORT}", "--chdir", str(tmp_path),
        "app:wsgi"])
    wait_version(target, "v1")
    for _ in range(6):
        version, _pid, peer = answer_of(target)
        assert (version, peer) == ("v1", target.gateway), s.output


def test_flask_reloader_child_sees_the_real_client_through_the_relay(
        target, session, tmp_path):
    """Relayed (the path Kubernetes targets take): the adopted listener is the same."""
    write_app(tmp_path, "v1")
    s = session(target, "steal", argv=[
        str(BIN / "flask"), "--app", "app:flask_app", "run", "--reload",
        "--host", "0.0.0.0", "--port", str(PORT)], env={"TETHER_INCOMING_RELAY": "1"})
    s.wait_for("(relayed over the agent link)", timeout=2)
    version, pid1, peer = wait_version(target, "v1")
    # WERKZEUG_SERVER_FD: the parent bound and listened, the re-exec'd child accepts
    assert peer == target.gateway, s.output
    version, pid2, peer = wait_version(target, "v2", s=s,
                                       save=lambda: write_app(tmp_path, "v2"))
    assert pid2 != pid1 and peer == target.gateway, s.output


def test_uvicorn_spawned_workers_are_stolen(target, session, tmp_path):
    write_app(tmp_path, "v1")
    s = session(target, "steal", argv=[
        str(BIN / "uvicorn"), "app:app", "--workers", "2", "--app-dir", str(tmp_path),
        "--host", "0.0.0.0", "--port", str(PORT)])
    # bound in the supervisor, listened on in freshly spawned interpreters
    version, _pid, peer = wait_version(target, "v1")
    assert peer == target.gateway, s.output


def test_hypercorn_spawned_workers_are_stolen(target, session, tmp_path):
    write_app(tmp_path, "v1")
    s = session(target, "steal", argv=[
        str(BIN / "hypercorn"), "-w", "2", "-b", f"0.0.0.0:{PORT}", "--root-path", "",
        "app:app"])
    version, _pid, peer = wait_version(target, "v1")
    assert peer == target.gateway, s.output


NODE_CLUSTER = f"""
const cluster = require('cluster');
if (cluster.isPrimary) {{
  for (let i = 0; i < 2; i++) cluster.fork();
}} else {{
  require('http').createServer((req, res) => {{
    res.end('local v1 pid=' + process.pid + ' peer=' +
            req.socket.remoteAddress.replace('::ffff:', '') + '\\n');
  }}).listen({PORT});
}}
"""


def test_node_cluster_workers_see_the_real_client(target, session, tmp_path):
    script = tmp_path / "cluster.js"
    script.write_text(NODE_CLUSTER)
    s = session(target, "steal", argv=["node", str(script)])
    wait_version(target, "v1")
    for _ in range(4):
        version, _pid, peer = answer_of(target)
        assert peer == target.gateway, s.output


PASS_OVER_UNIX = f"""
import os, socket, subprocess, sys
# bind here, hand the socket to a fresh interpreter over a Unix socket; it listens
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {PORT}))
a, b = socket.socketpair()
child = subprocess.Popen([sys.executable, "-c", '''
import os, socket
b = socket.socket(fileno=int(os.environ["FD"]))
msg, fds, _, _ = socket.recv_fds(b, 16, 1)
srv = socket.socket(fileno=fds[0]); srv.listen(16)
while True:
    c, peer = srv.accept()
    c.recv(65536)
    body = ("local v1 pid=%d peer=%s\\\\n" % (os.getpid(), peer[0])).encode()
    c.sendall(b"HTTP/1.1 200 OK\\\\r\\\\nContent-Length: %d\\\\r\\\\nConnection: close\\\\r\\\\n\\\\r\\\\n"
              % len(body) + body)
    c.close()
'''], env={{**os.environ, "FD": str(b.fileno())}}, pass_fds=[b.fileno()])
socket.send_fds(a, [b"x"], [srv.fileno()])
srv.close()
child.wait()
"""


def test_listener_passed_over_a_unix_socket_is_stolen(target, session, tmp_path):
    s = session(target, "steal", argv=[sys.executable, "-c", PASS_OVER_UNIX])
    version, _pid, peer = wait_version(target, "v1")
    assert peer == target.gateway, s.output


ACTIVATED = """
import os, socket
# socket activation: the listener is descriptor 3, bound and listening before we start
assert os.environ["LISTEN_FDS"] == "1" and int(os.environ["LISTEN_PID"]) == os.getpid()
srv = socket.socket(fileno=3)
while True:
    c, peer = srv.accept()
    c.recv(65536)
    body = ("local v1 pid=%d peer=%s\\n" % (os.getpid(), peer[0])).encode()
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n"
              % len(body) + body)
    c.close()
"""


def test_socket_activation_listen_fds_is_stolen(target, session, tmp_path):
    # The activator (outside tether, like systemd) may not get 8080 on this machine:
    # port_mapping says which local port serves the target's 8080.
    srv = __import__("socket").socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    local = srv.getsockname()[1]
    activator = (
        "import os, sys\n"
        f"os.dup2({srv.fileno()}, 3)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "os.execvp(sys.argv[1], sys.argv[1:])\n")
    from e2e_support import tether_cmd

    cfg = tmp_path / "activated.json"
    cfg.write_text(json.dumps({"feature": {"network": {"incoming": {
        "mode": "steal", "port_mapping": [[local, PORT]]}}}}))
    proc = subprocess.Popen(
        [sys.executable, "-c", activator, *tether_cmd(), "exec", "-t",
         f"process/{target.pid}", "-f", str(cfg), "--", sys.executable, "-c", ACTIVATED],
        pass_fds=[srv.fileno()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, text=True)
    srv.close()
    try:
        got = wait_version(target, "v1")
    except AssertionError as exc:
        os.killpg(proc.pid, 15)
        raise AssertionError(proc.communicate(timeout=10)[0]) from exc
    os.killpg(proc.pid, 15)
    out = proc.communicate(timeout=10)[0]
    assert (int(got[1]), got[2]) == (proc.pid, target.gateway), out
    assert "stealing port 8080" in out, out


def _reload_scene(target, session, tmp_path, argv: list[str]) -> None:
    watched = tmp_path / "server.py"
    silly = HERE / "silly_server.py"

    def save(version: str) -> None:
        watched.write_text(f"import runpy, sys\nsys.argv = [{str(silly)!r}, '{PORT}', "
                           f"'local {version} pid=0 peer=-']\n"
                           f"runpy.run_path({str(silly)!r}, run_name='__main__')\n")

    save("v1")
    s = session(target, "steal", argv=argv)
    wait_version(target, "v1")
    wait_version(target, "v2", s=s, save=lambda: save("v2"))
    assert s.proc.poll() is None, s.output


def test_watchfiles_reload_keeps_stealing(target, session, tmp_path):
    _reload_scene(target, session, tmp_path, [
        str(BIN / "watchfiles"), f"{sys.executable} {tmp_path / 'server.py'}",
        str(tmp_path)])


def test_nodemon_reload_keeps_stealing(target, session, tmp_path):
    nodemon = NODE_MODULES / ".bin" / "nodemon"
    assert nodemon.exists(), "nodemon is installed by `make install` (tests/package.json)"
    _reload_scene(target, session, tmp_path, [
        str(nodemon), "--watch", str(tmp_path), "--ext", "py", "--exec",
        f"{sys.executable} {tmp_path / 'server.py'}"])


def test_a_plain_server_still_gets_its_port_subscribed_once(target, session, tmp_path):
    """The bookkeeping for listeners that change hands costs nothing to the simple case."""
    s = session(target, "steal")
    assert curl(target, "/") == LOCAL_ANSWER
    assert sum("stealing port 8080" in line for line in s.lines) == 1, s.output


TAKEN_BEFORE_LISTEN = r"""
import os, socket, subprocess, sys, time
SERVE = r'''
import os, socket, sys
srv = socket.socket(fileno=int(sys.argv[1]))
srv.listen(16)  # meanwhile another program took the local port: listen says EADDRINUSE
while True:
    c, peer = srv.accept()
    c.recv(65536)
    body = ("local v1 pid=%d peer=%s\n" % (os.getpid(), peer[0])).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
              % len(body) + body)
    c.close()
'''
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080))
print("bound", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
if sys.argv[2] == "child":  # listened on in a freshly exec'd process, like a worker
    subprocess.run([sys.executable, "-c", SERVE, str(srv.fileno())], pass_fds=[srv.fileno()])
else:
    sys.argv[1:] = [str(srv.fileno())]
    exec(SERVE, {})  # its own namespace: our `srv` keeps the descriptor open
"""


@pytest.mark.parametrize("where", ["same", "child"])
def test_a_local_port_taken_between_bind_and_listen_still_serves_the_target(
        target, session, tmp_path, where):
    # Like a reloader's worker that listens long after the bind, while another local
    # server grabbed the port (SO_REUSEADDR lets both bind, only one listen).
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    local = probe.getsockname()[1]
    probe.close()
    go = tmp_path / "go"
    s = session(target, {"mode": "steal", "listen_ports": [[PORT, local]]},
                argv=[sys.executable, "-c", TAKEN_BEFORE_LISTEN, str(go), where], ready=False)
    s.wait_for("bound")
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind(("0.0.0.0", local))
    other.listen(4)
    try:
        go.write_text("")
        s.wait_ready()
        version, _pid, peer = wait_version(target, "v1", s=s)
        assert peer == target.gateway
    finally:
        other.close()
