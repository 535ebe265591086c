"""The agent serves only the orchestrator that knows the session secret, and a client
that sends garbage loses its own connection, not the agent."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import msgpack
import pytest
from tether import protocol

SECRET = "s3ss10n-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def listening_agent():
    port = free_port()
    env = dict(os.environ, TETHER_AGENT_SECRET=SECRET)
    proc = subprocess.Popen([sys.executable, "-m", "tether.agent", "--target-pid",
                             str(os.getpid()), "--listen", f"127.0.0.1:{port}"],
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, proc
    proc.kill()
    proc.wait()


def request(sock: socket.socket, msg: dict) -> dict | None:
    sock.sendall(protocol.encode(msg))
    dec = protocol.FrameDecoder()
    sock.settimeout(5)
    while True:
        data = sock.recv(65536)
        if not data:
            return None
        for reply in dec.feed(data):
            return reply


def test_wrong_secret_is_refused_and_the_connection_closed(listening_agent):
    port, _ = listening_agent
    with socket.create_connection(("127.0.0.1", port)) as s:
        reply = request(s, {"t": "auth", "v": protocol.VERSION, "secret": "guess", "id": 1})
        assert reply is not None and reply["t"] == "error" and reply["code"] == "auth"
        assert s.recv(1) == b""  # closed


def test_requests_before_auth_are_not_served(listening_agent):
    port, _ = listening_agent
    with socket.create_connection(("127.0.0.1", port)) as s:
        reply = request(s, {"t": "agent_env", "id": 1})
        assert reply is not None and reply["t"] == "error" and reply["code"] == "unsupported"


def test_garbage_closes_that_connection_and_the_agent_serves_the_next(listening_agent):
    port, proc = listening_agent
    with socket.create_connection(("127.0.0.1", port)) as s:
        body = msgpack.packb(["not", "a", "map"])
        s.sendall(struct.pack(">I", len(body)) + body)
        s.settimeout(5)
        assert s.recv(1) == b""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(struct.pack(">I", protocol.MAX_FRAME + 1))  # oversized
        s.settimeout(5)
        assert s.recv(1) == b""
    assert proc.poll() is None
    with socket.create_connection(("127.0.0.1", port)) as s:
        reply = request(s, {"t": "auth", "v": protocol.VERSION, "secret": SECRET, "id": 1})
        assert reply is not None and reply["t"] == "auth_ok"
        env = request(s, {"t": "agent_env", "id": 2})
        assert env is not None and env["env"].get("PATH") == os.environ.get("PATH")
