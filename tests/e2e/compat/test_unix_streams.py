"""feature.network.outgoing.unix_streams: a program's connect() to a Unix socket whose
path matches reaches the socket inside the target; other paths stay on this machine.  The
incumbent documents the key as regexes of Unix socket paths that are connected remotely,
everything else locally (`mirrord/config/src/feature/network/outgoing.rs`)."""

from __future__ import annotations

import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

SERVER = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen()
open(sys.argv[2], "w").close()
while True:
    c, _ = s.accept()
    c.sendall(b"pod says " + c.recv(100)); c.close()
"""

CLIENT = r"""
import socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.sendall(b"hi")
        print(s.recv(100).decode())
    except OSError as e:
        print(type(e).__name__)
"""


@pytest.fixture
def socket_pod(pod_factory):
    """A pod serving /etc/tether-ux-*/app.sock in a tmpfs of its own mount namespace (this
    machine has the directory, empty), and a local server on /etc/tether-ux-*/local.sock."""
    tag = secrets.token_hex(3)
    where = Path(f"/etc/tether-ux-{tag}")
    where.mkdir()
    local = socket.socket(socket.AF_UNIX)
    try:
        local.bind(str(where / "local.sock"))
        local.listen()

        def serve() -> None:
            while True:
                try:
                    c, _ = local.accept()
                except OSError:
                    return
                c.sendall(b"laptop says " + c.recv(100))
                c.close()

        threading.Thread(target=serve, daemon=True).start()
        ready = f"/run/tether-ux-ready-{tag}"
        pod = pod_factory("ux", cmd=["sh", "-c", f"mount -t tmpfs none {where} && exec "
                                     f"{sys.executable} -c '{SERVER}' {where}/app.sock {ready}"])
        deadline = time.monotonic() + 5
        while not (pod.root / ready.lstrip("/")).exists():
            assert time.monotonic() < deadline, "the pod's socket server did not start"
            time.sleep(0.02)
        yield pod, where
    finally:
        local.close()
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("relay", [False, True], ids=["socket-handed-over", "relayed"])
def test_matching_unix_socket_is_the_targets_others_stay_local(tether, socket_pod, relay):
    pod, where = socket_pod
    assert not (where / "app.sock").exists()  # only the pod has it
    config = {"feature": {"network": {"outgoing": {"unix_streams": r"app\.sock$"}}}}
    res = tether(pod, [sys.executable, "-c", CLIENT, str(where / "app.sock"),
                       str(where / "local.sock")], config=config,
                 env={"TETHER_UNIX_RELAY": "1"} if relay else None)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["pod says hi", "laptop says hi"]


def test_without_unix_streams_every_unix_socket_is_local(tether, socket_pod):
    pod, where = socket_pod
    res = tether(pod, [sys.executable, "-c", CLIENT, str(where / "app.sock")])
    assert res.stdout.strip() == "FileNotFoundError", res.stderr


def test_missing_socket_in_the_target_is_the_targets_enoent(tether, socket_pod):
    pod, where = socket_pod
    config = {"feature": {"network": {"outgoing": {"unix_streams": "local"}}}}
    res = tether(pod, [sys.executable, "-c", CLIENT, str(where / "local.sock")], config=config)
    assert res.stdout.strip() == "FileNotFoundError", res.stderr
