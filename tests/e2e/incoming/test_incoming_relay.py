"""The incoming scenes with the relay forced on a process target (TETHER_INCOMING_RELAY=1):
what a Kubernetes target gets, where the agent link is TCP and cannot carry descriptors.
Every stream the agent hands over travels as relay_data frames over the agent link."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import random
import signal
import socket
import subprocess
import sys

import requests
from incoming_support import (
    LOCAL_ANSWER,
    PORT,
    TARGET_ANSWER,
    curl,
    nft_rules,
    target_answers_within,
)

RELAY = {"TETHER_INCOMING_RELAY": "1"}
USER_FILTER = {"mode": "steal", "http_filter": {"path_filter": r".*user=me\b.*"}}


def relayed(session, target, incoming):
    s = session(target, incoming, env=RELAY)
    s.wait_for("(relayed over the agent link)", timeout=2)
    return s


def test_mirror_through_the_relay(target, session):
    s = relayed(session, target, {"mode": "mirror"})
    assert curl(target, "/?mirrored=1") == TARGET_ANSWER
    s.wait_for("Handling request URI=/?mirrored=1", timeout=5)


def test_steal_through_the_relay_then_target_again(target, session):
    s = relayed(session, target, {"mode": "steal"})
    assert curl(target, "/?stolen=1") == LOCAL_ANSWER
    with requests.Session() as client:  # keep-alive
        for i in range(3):
            assert client.get(f"http://{target.ip}:{PORT}/k{i}", timeout=5).text == LOCAL_ANSWER
    s.wait_for("Handling request URI=/?stolen=1")
    line = next(ln for ln in s.lines if "URI=/?stolen=1" in ln)
    assert "peer=198.18." in line, line  # accept() still reports the real client
    s.stop()
    target_answers_within(target, 2)
    assert "tether" not in nft_rules(target)


def test_filter_through_the_relay(target, session):
    s = relayed(session, target, USER_FILTER)
    base = f"http://{target.ip}:{PORT}"
    out = curl(target, "/?user=me") + curl(target, "/?user=someone")
    assert out == LOCAL_ANSWER + TARGET_ANSWER
    out = subprocess.run(["curl", "-sS", "-m", "5", f"{base}/?user=me", f"{base}/?user=you",
                          f"{base}/?user=me&a=1"], capture_output=True, text=True).stdout
    assert out == LOCAL_ANSWER + TARGET_ANSWER + LOCAL_ANSWER
    s.wait_for("URI=/?user=me&a=1")
    assert "URI=/?user=someone" not in s.output


def test_large_bodies_both_ways_through_the_relay(target, session):
    """12 MiB up and back: three times the 4 MiB window, so flow control is exercised."""
    relayed(session, target, {"mode": "steal"})
    big = random.Random(2).randbytes(12 * 1024 * 1024)
    r = requests.post(f"http://{target.ip}:{PORT}/echo", data=big, timeout=30)
    assert r.content == big


def test_half_close_reaches_the_program_and_the_answer_comes_back(target, session):
    """The client shuts its sending side after the request: relay_close errno 0 becomes a
    SHUT_WR on the program's socket, and the answer still flows the other way."""
    relayed(session, target, {"mode": "steal"})
    with socket.create_connection((target.ip, PORT), timeout=5) as sock:
        sock.sendall(b"GET /half HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.endswith(LOCAL_ANSWER.encode()), data


def test_concurrent_keepalive_clients_through_the_relay(target, session):
    relayed(session, target, USER_FILTER)
    errors: list[str] = []

    def client(n: int) -> int:
        rng = random.Random(n)
        conn = http.client.HTTPConnection(target.ip, PORT, timeout=10)
        for i in range(20):
            mine = rng.random() < 0.5
            path = f"/?user={'me' if mine else 'other'}&c={n}&i={i}"
            conn.request("GET", path)
            body = conn.getresponse().read().decode()
            if body != (LOCAL_ANSWER if mine else TARGET_ANSWER):
                errors.append(f"{path}: {body!r}")
        conn.close()
        return 20

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        assert sum(pool.map(client, range(10))) == 200
    assert errors == []


def test_agent_sigkill_target_serves_again_within_2s(target, session):
    s = relayed(session, target, {"mode": "steal"})
    # A stolen keep-alive connection open through the relay when the agent dies.
    conn = http.client.HTTPConnection(target.ip, PORT, timeout=5)
    conn.request("GET", "/before")
    assert conn.getresponse().read().decode() == LOCAL_ANSWER
    os.kill(s.agent_pid(), signal.SIGKILL)
    target_answers_within(target, 2)
    assert "tether" not in nft_rules(target)
    # The stolen connection ends (error or EOF), it does not hang.
    try:
        conn.request("GET", "/after")
        got = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        got = None
    assert got != LOCAL_ANSWER
    conn.close()


RESETTER = r'''
import socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(8)
while True:
    c, a = s.accept()
    c.recv(65536)
    print("resetting", a[0], flush=True)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
'''


def test_a_reset_by_the_program_reaches_the_client_as_a_reset(target, session):
    """relay_close with an errno: the program's RST becomes the client's ECONNRESET, not
    a clean EOF and not a hang."""
    s = session(target, {"mode": "steal"}, argv=[sys.executable, "-c", RESETTER], env=RELAY)
    s.wait_for("(relayed over the agent link)", timeout=2)
    with socket.create_connection((target.ip, PORT), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n")
        try:
            got = sock.recv(65536)
        except ConnectionResetError:
            got = None
    assert got is None, got
    s.wait_for("resetting")
