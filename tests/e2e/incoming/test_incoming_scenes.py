"""Scenes 1, 3 and 4: the local program gets the target's incoming traffic, mirrored,
stolen, or filtered per request, driven by curl and by a real HTTP client library."""

from __future__ import annotations

import concurrent.futures
import http.client
import random
import socket
import subprocess
import time

import requests
from incoming_support import (
    LOCAL_ANSWER,
    PORT,
    TARGET_ANSWER,
    curl,
    nft_rules,
    target_answers_within,
)

USER_FILTER = {"mode": "steal", "http_filter": {"path_filter": r".*user=me\b.*"}}
HEADER_FILTER = {"mode": "steal", "http_filter": {"header_filter": r"^x-user: me$"}}


def test_mirror_target_answers_and_local_program_logs_a_copy(target, session):
    s = session(target, {"mode": "mirror"})
    assert curl(target, "/?mirrored=1") == TARGET_ANSWER
    assert requests.get(f"http://{target.ip}:{PORT}/lib?x=2", timeout=5).text == TARGET_ANSWER
    s.wait_for("Handling request URI=/?mirrored=1", timeout=5)
    s.wait_for("Handling request URI=/lib?x=2", timeout=5)
    assert "tether" not in nft_rules(target)  # mirroring never touches the target's path


def test_steal_local_answers_then_target_again_after_the_program_exits(target, session):
    s = session(target, {"mode": "steal"})
    assert curl(target, "/?stolen=1") == LOCAL_ANSWER
    with requests.Session() as client:  # keep-alive, a real client library
        for i in range(3):
            assert client.get(f"http://{target.ip}:{PORT}/k{i}", timeout=5).text == LOCAL_ANSWER
    s.wait_for("Handling request URI=/?stolen=1")
    # accept() reported the real remote client, not the relay on loopback.
    line = next(x for x in s.lines if "URI=/?stolen=1" in x)
    assert "peer=127." not in line and "peer=198.18." in line, line
    s.stop()
    target_answers_within(target, 2)
    assert "tether" not in nft_rules(target)


def test_path_filter_routes_each_request(target, session):
    s = session(target, USER_FILTER)
    assert curl(target, "/?user=me") == LOCAL_ANSWER
    assert curl(target, "/?user=someone") == TARGET_ANSWER
    assert curl(target, "/") == TARGET_ANSWER
    # One keep-alive connection, requests alternating between the two upstreams.
    base = f"http://{target.ip}:{PORT}"
    out = subprocess.run(["curl", "-sS", "-m", "5", f"{base}/?user=me", f"{base}/?user=you",
                          f"{base}/?user=me&a=1"], capture_output=True, text=True).stdout
    assert out == LOCAL_ANSWER + TARGET_ANSWER + LOCAL_ANSWER
    s.wait_for("URI=/?user=me&a=1")
    assert "URI=/?user=someone" not in s.output


def test_header_filter(target, session):
    session(target, HEADER_FILTER)
    assert curl(target, "/", "-H", "X-User: me") == LOCAL_ANSWER
    assert curl(target, "/", "-H", "X-User: someone") == TARGET_ANSWER
    r = requests.get(f"http://{target.ip}:{PORT}/h", headers={"X-User": "me"}, timeout=5)
    assert r.text == LOCAL_ANSWER


def test_concurrent_keepalive_clients_are_never_misrouted(target, session):
    session(target, USER_FILTER)
    errors: list[str] = []

    def client(n: int) -> int:
        rng = random.Random(n)
        conn = http.client.HTTPConnection(target.ip, PORT, timeout=10)
        done = 0
        for i in range(25):
            mine = rng.random() < 0.5
            path = f"/?user={'me' if mine else 'other'}&c={n}&i={i}"
            conn.request("GET", path)
            body = conn.getresponse().read().decode()
            want = LOCAL_ANSWER if mine else TARGET_ANSWER
            if body != want:
                errors.append(f"{path}: {body!r}")
            done += 1
        conn.close()
        return done

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        total = sum(pool.map(client, range(12)))
    assert total == 300
    assert errors == []


def test_pipelined_requests_come_back_in_order(target, session):
    session(target, USER_FILTER)
    paths = ["/?user=me&n=1", "/?user=x&n=2", "/?user=me&n=3", "/?user=x&n=4"]
    raw = b"".join(f"GET {p} HTTP/1.1\r\nHost: pod\r\n\r\n".encode() for p in paths)
    with socket.create_connection((target.ip, PORT), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"silly demo") < 4 and time.monotonic() < deadline:
            data += sock.recv(65536)
    bodies = [part.split(b"\r\n\r\n", 1)[1].split(b"\n")[0].decode() + "\n"
              for part in data.split(b"HTTP/1.")[1:]]
    assert bodies == [LOCAL_ANSWER, TARGET_ANSWER, LOCAL_ANSWER, TARGET_ANSWER]


def test_large_and_chunked_bodies_are_streamed_to_the_right_side(target, session):
    session(target, USER_FILTER)
    big = random.Random(1).randbytes(3 * 1024 * 1024)
    r = requests.post(f"http://{target.ip}:{PORT}/echo?user=me", data=big, timeout=20)
    assert r.content == big
    r = requests.post(f"http://{target.ip}:{PORT}/echo?user=other", data=big, timeout=20)
    assert r.content == big
    # Chunked upload with Expect: 100-continue (curl sends it for big bodies).
    out = curl(target, "/?user=me", "-H", "Transfer-Encoding: chunked", "-H",
               "Expect: 100-continue", "--data-binary", "x" * 5000)
    assert out == LOCAL_ANSWER


def test_malformed_request_is_answered_400_never_misrouted(target, session):
    s = session(target, USER_FILTER)
    with socket.create_connection((target.ip, PORT), timeout=5) as sock:
        sock.sendall(b"GET /?user=me HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"POST /?user=me HTTP/1.1\r\nContent-Length: 3\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.") == 2
    assert LOCAL_ANSWER.encode() in data and b"400 Bad Request" in data
    s.wait_for("Handling request")  # the program's log line may trail its answer
    assert sum("Handling request" in line for line in s.lines) == 1
    # Not HTTP at all: passed to the target untouched (it answers with its own error).
    with socket.create_connection((target.ip, PORT), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        assert b"400" in sock.recv(65536)
    assert curl(target, "/?user=me") == LOCAL_ANSWER  # and the session goes on


def test_websocket_style_upgrade_goes_whole_to_whoever_accepted(target, session):
    # The target app does not speak WebSocket: it answers the upgrade request with a
    # plain 200, and the connection stays HTTP, still routed per request.
    session(target, USER_FILTER)
    with socket.create_connection((target.ip, PORT), timeout=5) as sock:
        sock.sendall(b"GET /ws?user=other HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\nGET /?user=me HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"silly demo") < 2 and time.monotonic() < deadline:
            data += sock.recv(65536)
    assert data.index(TARGET_ANSWER.encode()) < data.index(LOCAL_ANSWER.encode())
