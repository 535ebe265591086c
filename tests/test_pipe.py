"""tether.pipe: the copy both ways between a stolen connection and its destination."""

from __future__ import annotations

import asyncio
import socket

from tether.pipe import pipe


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def recv_all(loop: asyncio.AbstractEventLoop, s: socket.socket) -> bytes:
    out = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(s, 1 << 20), 5):
        out += chunk
    return out


def test_bytes_and_half_closes_cross_in_both_directions():
    async def scene() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        client, stolen = pair()
        program, ours = pair()
        copy = loop.create_task(pipe(stolen, ours, first=b"hello "))
        await loop.sock_sendall(client, b"request")
        client.shutdown(socket.SHUT_WR)  # the client is done sending, still reading
        got = await recv_all(loop, program)
        await loop.sock_sendall(program, b"answer")
        program.shutdown(socket.SHUT_WR)
        back = await recv_all(loop, client)
        await asyncio.wait_for(copy, 5)  # both directions ended: the copy is over
        return got, back

    got, back = asyncio.run(scene())
    assert got == b"hello request"
    assert back == b"answer"


def test_a_slow_reader_holds_back_the_writer_instead_of_filling_memory():
    async def scene() -> int:
        loop = asyncio.get_running_loop()
        client, stolen = pair()
        program, ours = pair()
        copy = loop.create_task(pipe(stolen, ours))
        sent = 0
        block = b"x" * 65536
        # The program reads nothing: the client's writes must stall (buffers fill up)
        # rather than the copy taking everything in.
        while sent < 64 << 20:
            try:
                await asyncio.wait_for(loop.sock_sendall(client, block), 0.5)
            except TimeoutError:
                break
            sent += len(block)
        copy.cancel()
        return sent

    assert asyncio.run(scene()) < 32 << 20
