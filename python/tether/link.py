"""A framed msgpack link over a socket: the I/O driver around tether.protocol.

Both ends of every tether connection use it: the orchestrator's server for layer
sessions, the orchestrator's client to the agent, and the agent's server.  A link reads
frames, answers requests through a handler table, and matches replies to ``call``s by id.
A malformed frame closes that link (with the reason logged) and nothing else.

Descriptors travel with messages on Unix sockets (SCM_RIGHTS): a message sent with
``fds=[...]`` carries ``"fds": n`` and its descriptors ride on the first byte of its frame,
so the receiver, which queues every descriptor it gets in arrival order, hands the next
``n`` of them to that message as ``msg["_fds"]`` (a list the handler must close or keep).
That is how a process target gives the program a socket or a file made inside the
target: the data path never crosses Python.
"""

from __future__ import annotations

import array
import asyncio
import collections
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from . import protocol
from .protocol import Message, ProtocolError

log = logging.getLogger(__name__)

Handler = Callable[["Link", Message], Awaitable[Message | None]]

_REPLY_TYPES_SUFFIX = "_reply"
# Replies that do not follow the *_reply naming.
_REPLY_TYPES = {"pong", "error", "hello_ok", "auth_ok"}
_MAX_FDS_PER_READ = 16


def is_reply(msg: Message) -> bool:
    kind: str = msg["t"]
    return kind in _REPLY_TYPES or kind.endswith(_REPLY_TYPES_SUFFIX)


class RemoteError(Exception):
    """The peer answered a request with an ``error`` message (or a handler refuses one)."""

    def __init__(self, code: str, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.errno = errno


class LinkClosed(Exception):
    """The link closed before the reply arrived."""


def close_fds(msg: Message) -> None:
    for fd in msg.pop("_fds", []):
        try:
            os.close(fd)
        except OSError:
            pass


class Link:
    def __init__(
        self,
        sock: socket.socket,
        handlers: Mapping[str, Handler] | None = None,
        name: str = "link",
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.can_pass_fds = sock.family == socket.AF_UNIX
        self.handlers = dict(handlers or {})
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._decoder = protocol.FrameDecoder()
        self._fd_queue: collections.deque[int] = collections.deque()
        self._out: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self._writer_armed = False
        self._drained: asyncio.Event | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.state: dict[str, Any] = {}  # per-link data owned by the handlers
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    def next_id(self) -> int:
        return next(self._ids)

    # ---- sending ----
    def send(self, msg: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        """Queue one message; ``fds`` are duplicated into the message (caller keeps its own)."""
        if self.closed.is_set():
            raise LinkClosed(self.close_reason or "link closed")
        if fds and not self.can_pass_fds:
            raise LinkClosed("this link cannot carry file descriptors")
        if fds:
            msg = dict(msg)
            msg["fds"] = len(fds)
        frame = protocol.encode(msg)
        self._out.append((memoryview(frame), list(fds)))
        self._flush()

    def _flush(self) -> None:
        while self._out:
            data, fds = self._out[0]
            try:
                if fds:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    n = self.sock.sendmsg([data], anc)
                    self._out[0] = (data, [])
                else:
                    n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                self._arm_writer()
                return
            except OSError as exc:
                self._close(f"connection lost: {exc}")
                return
            if n == len(data):
                self._out.popleft()
            else:
                self._out[0] = (data[n:], [])
        if self._writer_armed:
            self._loop.remove_writer(self.sock.fileno())
            self._writer_armed = False
        if self._drained is not None:
            self._drained.set()

    def _arm_writer(self) -> None:
        if not self._writer_armed and not self.closed.is_set():
            self._loop.add_writer(self.sock.fileno(), self._flush)
            self._writer_armed = True

    async def drain(self) -> None:
        while self._out and not self.closed.is_set():
            self._drained = asyncio.Event()
            await self._drained.wait()

    async def call(self, msg: dict[str, Any], timeout: float | None = None,
                   fds: Sequence[int] = ()) -> Message:
        """Send a request (an ``id`` is assigned) and wait for its reply."""
        msg = dict(msg)
        msg["id"] = self.next_id()
        fut: asyncio.Future[Message] = self._loop.create_future()
        self._pending[msg["id"]] = fut
        try:
            self.send(msg, fds)
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg["id"], None)
        if reply["t"] == "error":
            close_fds(reply)
            raise RemoteError(reply["code"], reply["message"], int(reply.get("errno", 0) or 0))
        return reply

    # ---- receiving ----
    async def serve(self) -> None:
        """Read until EOF or a protocol error; dispatch requests, resolve replies."""
        readable = asyncio.Event()
        fd = self.sock.fileno()
        self._loop.add_reader(fd, readable.set)
        try:
            while not self.closed.is_set():
                await readable.wait()
                readable.clear()
                if not self._read_some():
                    return
        finally:
            try:
                self._loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
            self._close(self.close_reason or "closed")

    def _read_some(self) -> bool:
        for _ in range(64):  # bounded: let other tasks run under a flood
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(
                    262144, socket.CMSG_SPACE(_MAX_FDS_PER_READ * 4))
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                self._close(f"connection lost: {exc}")
                return False
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % 4])
                    self._fd_queue.extend(fds)
            if not data:
                self._close("peer closed the connection")
                return False
            try:
                for msg in self._decoder.feed(data):
                    self._attach_fds(msg)
                    self._dispatch(msg)
            except ProtocolError as exc:
                log.warning("%s: closing after a malformed message: %s", self.name, exc)
                self._close(f"protocol error: {exc}")
                return False
        return True

    def _attach_fds(self, msg: Message) -> None:
        count = msg.get("fds", 0)
        if not count:
            return
        if not isinstance(count, int) or count < 0 or count > len(self._fd_queue):
            raise ProtocolError(f"{msg['t']}: announces {count!r} descriptors it did not carry")
        msg["_fds"] = [self._fd_queue.popleft() for _ in range(count)]

    def _dispatch(self, msg: Message) -> None:
        if is_reply(msg) and msg.get("id") in self._pending:
            fut = self._pending.pop(msg["id"])
            if not fut.done():
                fut.set_result(msg)
            else:
                close_fds(msg)
            return
        handler = self.handlers.get(msg["t"])
        if handler is None:
            close_fds(msg)
            self._reply_error(msg, "unsupported", f"no handler for {msg['t']!r}")
            return
        task = self._loop.create_task(self._run(handler, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, msg: Message) -> None:
        try:
            reply = await handler(self, msg)
        except RemoteError as exc:
            self._reply_error(msg, exc.code, exc.message, errno=exc.errno)
            return
        except OSError as exc:
            self._reply_error(msg, "os_error", f"{exc.strerror or exc}", errno=exc.errno or 0)
            return
        except Exception as exc:  # a handler bug must not take the link down
            log.exception("%s: handler for %s failed", self.name, msg["t"])
            self._reply_error(msg, "internal", f"{type(exc).__name__}: {exc}")
            return
        finally:
            close_fds(msg)  # descriptors a handler did not take
        if reply is not None and not self.closed.is_set():
            if "id" in msg and "id" not in reply:
                reply["id"] = msg["id"]
            fds = reply.pop("_fds", [])
            try:
                self.send(reply, fds)
            except (LinkClosed, ConnectionError):
                pass
            finally:
                for fd in fds:
                    os.close(fd)

    def _reply_error(self, msg: Message, code: str, text: str, errno: int = 0) -> None:
        if "id" not in msg or self.closed.is_set():
            log.warning("%s: %s", self.name, text)
            return
        err: dict[str, Any] = {"t": "error", "id": msg["id"], "code": code, "message": text}
        if errno:
            err["errno"] = errno
        try:
            self.send(err)
        except (LinkClosed, ConnectionError):
            pass

    def _close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkClosed(reason))
        self._pending.clear()
        if self._writer_armed:
            try:
                self._loop.remove_writer(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self._writer_armed = False
        if self._drained is not None:
            self._drained.set()
        while self._fd_queue:
            os.close(self._fd_queue.popleft())
        try:
            self.sock.close()
        except OSError:
            pass

    def close(self, reason: str = "closed by us") -> None:
        self._close(reason)


async def serve_unix(
    path: str, on_link: Callable[[socket.socket], Awaitable[None]]
) -> asyncio.Task[None]:
    """Accept connections on a Unix socket at ``path``; run ``on_link`` for each."""
    loop = asyncio.get_running_loop()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(128)
    server.setblocking(False)
    tasks: set[asyncio.Task[None]] = set()

    async def accept_loop() -> None:
        try:
            while True:
                conn, _ = await loop.sock_accept(server)
                task = loop.create_task(on_link(conn))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            server.close()

    return loop.create_task(accept_loop())
