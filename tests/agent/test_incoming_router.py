"""The filtered-steal router (tether.agent.incoming_http.Router) on local sockets: no
namespaces, two toy upstreams ("app" and "dev") that answer with their name."""

from __future__ import annotations

import asyncio
import socket

from tether.agent.incoming_http import Router
from tether.http import compile_filter

MATCH = compile_filter({"path_filter": r"user=me"})


async def toy_upstream(name: bytes, sock: socket.socket) -> None:
    """HTTP/1.1 answering `name` + path; `/ws` upgrades (101) then echoes; PRI echoes."""
    loop = asyncio.get_running_loop()
    buf = b""
    while True:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            sock.close()
            return
        buf += data
        if buf.startswith(b"PRI * HTTP/2.0"):
            await loop.sock_sendall(sock, name + b":" + buf)
            buf = b""
            continue
        while b"\r\n\r\n" in buf:
            head, buf = buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1]
            if path.startswith(b"/ws"):
                await loop.sock_sendall(sock, b"HTTP/1.1 101 Switching Protocols\r\n"
                                              b"Upgrade: x\r\nConnection: Upgrade\r\n\r\n")
                while True:
                    if buf:
                        await loop.sock_sendall(sock, name + b" echo " + buf)
                        buf = b""
                    data = await loop.sock_recv(sock, 65536)
                    if not data:
                        sock.close()
                        return
                    buf = data
            body = name + b" " + path
            await loop.sock_sendall(sock, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                    % (len(body), body))


async def route(data: bytes, until: bytes, extra: bytes = b"") -> bytes:
    loop = asyncio.get_running_loop()
    client, server_side = socket.socketpair()
    client.setblocking(False)
    server_side.setblocking(False)
    tasks = []

    def opener(name: bytes):
        async def open_() -> socket.socket:
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            tasks.append(loop.create_task(toy_upstream(name, b)))
            return a
        return open_

    router = loop.create_task(Router(server_side, MATCH, opener(b"app"), opener(b"dev")).run())
    await loop.sock_sendall(client, data)
    out = b""
    while until not in out:
        chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
        if not chunk:
            break
        out += chunk
        if extra and b"101" in out:
            await loop.sock_sendall(client, extra)
            extra = b""
    client.close()
    await asyncio.wait_for(router, 5)
    for t in tasks:
        t.cancel()
    return out


def test_pipelined_requests_each_go_to_their_side_in_order():
    reqs = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p
                    for p in (b"/a?user=me", b"/b", b"/c?user=me", b"/d"))
    out = asyncio.run(route(reqs, b"app /d"))
    bodies = [part.split(b"\r\n\r\n")[1] for part in out.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"dev /a?user=me", b"app /b", b"dev /c?user=me", b"app /d"]


def test_upgrade_makes_a_tunnel_to_whoever_accepted():
    out = asyncio.run(route(b"GET /ws?user=me HTTP/1.1\r\nUpgrade: x\r\nConnection: Upgrade"
                            b"\r\n\r\n", b"echo hello", extra=b"hello"))
    assert out.startswith(b"HTTP/1.1 101") and out.endswith(b"dev echo hello")


def test_non_http_goes_whole_to_the_app():
    # (h2c prior knowledge is routed per stream: tests/agent/test_incoming_h2.py)
    out = asyncio.run(route(b"\x16\x03\x01 tls?\r\n\r\n", b"app"))
    assert b"app" in out and b"dev" not in out


def test_malformed_second_request_gets_400_after_the_first_answer():
    out = asyncio.run(route(b"GET /?user=me HTTP/1.1\r\n\r\nBROKEN\x01 / HTTP/1.1\r\n\r\n",
                            b"Bad Request\n"))
    assert out.index(b"dev /?user=me") < out.index(b"400 Bad Request")


def test_a_hostile_path_does_not_stall_other_clients():
    # The README's filter against 30 KB paths, pipelined: a backtracking engine spends
    # about 1.5 s on each with the event loop blocked (most of a minute for all of them).
    # The hostile answers are held back until the other client got its own, so the
    # other client must be served while the hostile requests are in flight.
    matcher = compile_filter({"path_filter": ".+user=vfarcic.*"})
    hostile_path = b"/" + b"a" * 30_000
    hostile_count = 20

    async def scene() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        other_answered = asyncio.Event()
        tasks = []

        async def app(sock: socket.socket) -> None:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await loop.sock_recv(sock, 65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1]
                if path == hostile_path:
                    await other_answered.wait()
                body = b"app " + path[:20]
                await loop.sock_sendall(
                    sock, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

        async def open_app() -> socket.socket:
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            tasks.append(loop.create_task(app(b)))
            return a

        async def open_dev() -> None:
            return None

        async def exchange(path: bytes, count: int) -> bytes:
            client, server_side = socket.socketpair()
            client.setblocking(False)
            server_side.setblocking(False)
            tasks.append(loop.create_task(Router(server_side, matcher, open_app,
                                                 open_dev).run()))
            request = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path
            tasks.append(loop.create_task(loop.sock_sendall(client, request * count)))
            out = b""
            while out.count(b"app " + path[:20]) < count:
                out += await loop.sock_recv(client, 65536)
            client.close()
            return out

        hostile = loop.create_task(exchange(hostile_path, hostile_count))
        await asyncio.sleep(0)  # the hostile client starts sending first
        other = await asyncio.wait_for(exchange(b"/?user=someone", 1), 5)
        other_answered.set()
        done = await asyncio.wait_for(hostile, 5)
        for t in tasks:
            t.cancel()
        return other, done

    other, hostile = asyncio.run(scene())
    assert other.endswith(b"app /?user=someone")
    assert hostile.count(b"app /" + b"a" * 19) == hostile_count
