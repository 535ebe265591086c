"""The agent serves only the orchestrator that knows the session secret; a client that
sends garbage, stays silent or sends a hostile frame loses its own connection, not the
agent, and costs it a bounded amount of memory.  A dropped orchestrator may come back."""

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


def start_agent(*extra: str):
    port = free_port()
    env = dict(os.environ, TETHER_AGENT_SECRET=SECRET)
    proc = subprocess.Popen([sys.executable, "-m", "tether.agent", "--target-pid",
                             str(os.getpid()), "--listen", f"127.0.0.1:{port}", *extra],
                            env=env, stderr=subprocess.PIPE, text=True)
    wait_listening(port)
    return port, proc


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)


@pytest.fixture
def listening_agent():
    port, proc = start_agent()
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
        assert reply is not None and reply["t"] == "error" and reply["code"] == "auth"
        assert s.recv(1) == b""  # closed


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


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def authenticate(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    reply = request(s, {"t": "auth", "v": protocol.VERSION, "secret": SECRET, "id": 1})
    assert reply is not None and reply["t"] == "auth_ok", reply
    return s


def test_hostile_frames_before_auth_cost_the_agent_a_few_kib(listening_agent):
    port, proc = listening_agent
    before = peak_rss_kib(proc.pid)
    hostile = [
        b"\x91" * 4000,  # nested arrays as deep as a small frame allows
        b"\xdd\xff\xff\xff\xff",  # an array announcing 4 billion elements
        b"\xdc\x0f\xff" + b"\x90" * 4000,  # a wide array of empty arrays
        msgpack.packb({"t": "auth", "v": protocol.VERSION, "secret": "\u00e9" * 3}),
    ]
    for body in hostile:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(struct.pack(">I", len(body)) + body)
            s.settimeout(5)
            while s.recv(65536):  # at most an error answer, then closed
                pass
    # The incumbent's killer: a 16 MiB frame of nested empty arrays.  Refused on its header.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(struct.pack(">I", 16 * 1024 * 1024) + b"\x90" * 65536)
        s.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                s.sendall(b"\x90" * 65536)
    assert proc.poll() is None
    assert peak_rss_kib(proc.pid) - before < 8 * 1024
    with authenticate(port) as s:
        assert request(s, {"t": "ping", "id": 2})["t"] == "pong"


def test_a_silent_client_neither_blocks_the_orchestrator_nor_stays(listening_agent):
    port, proc = listening_agent
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    started = time.monotonic()
    with authenticate(port) as s:  # served beside the silent ones, not after them
        assert request(s, {"t": "ping", "id": 2})["t"] == "pong"
        if time.monotonic() - started < 2.5:  # (else the machine is too busy to tell)
            for q in silent:
                with pytest.raises(BlockingIOError):  # still open: not waited for
                    q.recv(1, socket.MSG_DONTWAIT)
        for q in silent:  # dropped after the authentication deadline
            q.settimeout(10)
            assert q.recv(1) == b""
        assert time.monotonic() - started < 10
        # Strangers are still refused while the orchestrator is served, and it keeps going.
        with socket.create_connection(("127.0.0.1", port)) as q:
            reply = request(q, {"t": "auth", "v": protocol.VERSION, "secret": "x", "id": 1})
            assert reply["code"] == "auth"
        assert request(s, {"t": "ping", "id": 3})["t"] == "pong"
    for q in silent:
        q.close()


def test_an_authenticated_orchestrator_cannot_make_the_agent_balloon(listening_agent):
    port, proc = listening_agent
    before = peak_rss_kib(proc.pid)
    # The worst frame the limits let through: as many empty arrays as fit (~36 MiB of them).
    limit = protocol.AGENT_LIMITS.frame
    inner = b"\xdc\xff\xff" + b"\x90" * 65535
    count = limit // len(inner)
    worst = b"\xdc" + struct.pack(">H", count) + inner * count
    assert len(worst) <= limit
    with authenticate(port) as s:
        s.sendall(struct.pack(">I", len(worst)) + worst)
        s.settimeout(10)
        assert s.recv(1) == b""  # not a message: that connection is dropped
    assert proc.poll() is None
    assert peak_rss_kib(proc.pid) - before < 48 * 1024
    before = peak_rss_kib(proc.pid)
    with authenticate(port) as s:
        body = b"\xdd" + struct.pack(">I", 2**24) + b"\x90" * (2**24)  # 16 MiB of []
        s.sendall(struct.pack(">I", len(body)) + body[:65536])
        s.settimeout(5)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while True:
                s.sendall(body[:65536])
    assert proc.poll() is None
    assert peak_rss_kib(proc.pid) - before < 16 * 1024


def test_a_dropped_orchestrator_resumes_its_session_with_the_secret():
    port, proc = start_agent("--resume-grace", "20")
    try:
        s = authenticate(port)
        s.close()  # dropped, no goodbye: the agent waits for it
        with authenticate(port) as s:
            env = request(s, {"t": "agent_env", "id": 2})
            assert env["env"].get("PATH") == os.environ.get("PATH")
            s.sendall(protocol.encode({"t": "link_close"}))  # an ordinary end
            assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_an_orchestrator_that_never_comes_back_ends_the_session():
    port, proc = start_agent("--resume-grace", "0.5")
    try:
        authenticate(port).close()
        assert proc.wait(10) == 0
        assert "did not come back" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_a_flood_of_silent_connections_cannot_keep_the_orchestrator_out(listening_agent):
    port, proc = listening_agent
    flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        with authenticate(port) as s:  # beyond 64 waiting, the oldest go, not the newest
            assert request(s, {"t": "ping", "id": 2})["t"] == "pong"
        flood[0].settimeout(5)
        assert flood[0].recv(1) == b""  # among the oldest: dropped
    finally:
        for q in flood:
            q.close()
    assert proc.poll() is None
