"""Copy bytes both ways between two connected stream sockets, at the event loop's speed.

One ``asyncio.Protocol`` per socket writes what it reads straight into the other's
transport: no coroutine per chunk and no fd registration per read (``sock_recv`` adds
and removes its reader on every call that would block). Flow control: when a transport's
write buffer is full (``pause_writing``) the other side stops being read until it drains.
A half-close travels as a half-close (``write_eof``); the copy ends when both directions
ended or either connection broke. Works on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

__all__ = ["pipe"]


class _End(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.peer: _End | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # read before the peer's transport existed
        self.pending_eof = False
        self.ended = False  # our reading direction is over (EOF or broken)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop: alike, not a subclass

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
        else:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending_eof = True
        else:
            _write_eof(peer.transport)
        self._check()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if exc is not None and not self.done.done():
            self.done.set_result(None)  # broken: end both
        self._check()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def flush_to_peer(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        for data in self.pending:
            self.peer.transport.write(data)
        self.pending.clear()
        if self.pending_eof:
            _write_eof(self.peer.transport)

    def _check(self) -> None:
        if self.ended and self.peer is not None and self.peer.ended and not self.done.done():
            self.done.set_result(None)


def _write_eof(t: asyncio.Transport) -> None:
    if not t.is_closing():
        try:
            t.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            t.close()


async def pipe(a: socket.socket, b: socket.socket, first: bytes = b"") -> None:
    """Copy ``a`` <-> ``b`` (``first`` is sent to ``b`` before anything else) until both
    directions ended; the sockets belong to the copy from now on and are closed at its
    end (or when the caller is cancelled)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    end_a, end_b = _End(done), _End(done)
    end_a.peer, end_b.peer = end_b, end_a
    ta = tb = None
    try:
        tb, _ = await loop.connect_accepted_socket(lambda: end_b, b)
        if first:
            tb.write(first)
        ta, _ = await loop.connect_accepted_socket(lambda: end_a, a)
        end_b.flush_to_peer()
        end_a.flush_to_peer()
        end_a._check()
        await done
    finally:
        for t in (ta, tb):
            if t is not None:
                t.close()
        for s in (a, b):
            s.close()  # no-op once a transport closed it
