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
import threading
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

from . import protocol
from .protocol import Message, ProtocolError

log = logging.getLogger(__name__)

Handler = Callable[["Link", Message], Awaitable[Message | None]]

_REPLY_TYPES_SUFFIX = "_reply"
# Replies that do not follow the *_reply naming.
_REPLY_TYPES = {"pong", "error", "hello_ok", "auth_ok"}
_MAX_FDS_PER_READ = 16
_READ_SIZE = 262144
_STREAMING = 65536  # a read at least this large: more is probably queued, read again
_ANC_SIZE = socket.CMSG_SPACE(_MAX_FDS_PER_READ * 4)
_local = threading.local()


def _read_buffer() -> memoryview:
    """A read buffer shared by the links of this thread (each read is copied out at once).

    ``recvmsg(262144)`` allocates and frees a 256 KiB object per read: measured 23 us per
    read against 4 us for ``recvmsg_into`` a kept buffer."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(_READ_SIZE))
    return view


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


class _Continue:
    """Await a handler coroutine that was already run up to its first wait (``first``,
    what it yielded there): ``yield from`` for a coroutine started outside a task."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Any, first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, out = self._coro, self._first
        self._first = None
        while True:
            try:
                sent = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and friends reach the handler
                try:
                    out = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    out = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class Link:
    def __init__(
        self,
        sock: socket.socket,
        handlers: Mapping[str, Handler] | None = None,
        name: str = "link",
        limits: protocol.Limits | None = None,
        resumable: bool = False,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.can_pass_fds = sock.family == socket.AF_UNIX
        self.handlers = dict(handlers or {})
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._limits = limits
        self._decoder = protocol.FrameDecoder(limits=limits)
        # A resumable link survives the loss of its connection: it is *interrupted* (calls
        # in flight fail, sends raise LinkClosed, ``on_interrupt`` hooks run) until
        # ``resume`` gives it a new connection; only ``close`` ends it.
        self.resumable = resumable
        self.interrupted: asyncio.Event = asyncio.Event()
        self.live: asyncio.Event = asyncio.Event()  # has a connection (not interrupted)
        self.live.set()
        self.interrupt_reason = ""
        self.on_interrupt: list[Callable[[str], None]] = []
        self._serving = False
        self._fd_queue: collections.deque[int] = collections.deque()
        self._out: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self._writer_armed = False
        self._drained: asyncio.Event | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.state: dict[str, Any] = {}  # per-link data owned by the handlers
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_woke = False
        self._reader_fd = -1
        self._loop = asyncio.get_running_loop()

    def next_id(self) -> int:
        return next(self._ids)

    # ---- sending ----
    def send(self, msg: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        """Queue one message; ``fds`` are duplicated into the message (caller keeps its own)."""
        if self.closed.is_set():
            raise LinkClosed(self.close_reason or "link closed")
        if self.interrupted.is_set():
            raise LinkClosed(f"link interrupted ({self.interrupt_reason})")
        if fds and not self.can_pass_fds:
            raise LinkClosed("this link cannot carry file descriptors")
        if fds:
            msg = dict(msg)
            msg["fds"] = len(fds)
        frame = protocol.encode(msg)
        self._out.append((memoryview(frame), list(fds)))
        self._flush()

    def send_frame(self, parts: Sequence[bytes | memoryview], size: int) -> None:
        """Queue one frame already encoded in ``parts`` (``size`` bytes of msgpack body in
        all): a large payload is sent where it lies instead of being copied into a frame.
        For the relay's hot path only; the caller guarantees a valid message."""
        if self.closed.is_set():
            raise LinkClosed(self.close_reason or "link closed")
        if self.interrupted.is_set():
            raise LinkClosed(f"link interrupted ({self.interrupt_reason})")
        if size > protocol.MAX_FRAME:
            raise ProtocolError(f"message of {size} bytes exceeds the {protocol.MAX_FRAME} "
                                "byte limit")
        first = True
        for part in parts:
            view = memoryview(part)
            if first:
                view = memoryview(protocol.frame_header(size) + bytes(view))
                first = False
            self._out.append((view, []))
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
                self._lost(f"connection lost: {exc}")
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
        if not self._writer_armed and not self.closed.is_set() and not self.interrupted.is_set():
            self._loop.add_writer(self.sock.fileno(), self._flush)
            self._writer_armed = True

    async def drain(self) -> None:
        while self._out and not self.closed.is_set() and not self.interrupted.is_set():
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
        """Read until EOF or a protocol error; dispatch requests, resolve replies.

        Frames are read and dispatched in the loop's reader callback itself (no task wakes
        up per frame), and a handler runs at once in that callback: one that finishes
        without waiting (most agent handlers) answers in the same loop iteration, one that
        waits (a forward to the agent) continues in a task of its own."""
        if self.closed.is_set():
            return
        self._serving = True
        if not self.interrupted.is_set():
            self._reader_fd = self.sock.fileno()
            self._loop.add_reader(self._reader_fd, self._on_readable)
        try:
            await self.closed.wait()
        finally:
            self._close(self.close_reason or "closed")

    def _on_readable(self) -> None:
        if not self.closed.is_set() and not self.interrupted.is_set():
            self._read_some()

    def _read_some(self) -> bool:
        # A reply resolved in this callback wakes its caller with call_soon; handlers of the
        # frames that follow it, in this read or a later one of the same callback, then
        # start with call_soon too, so a caller sees its reply before the handlers of the
        # frames that followed it (the order the wire gave; e.g. an outgoing relay's first
        # relay_data right behind the reply that names its stream).
        self._batch_woke = False
        for _ in range(64):  # bounded: let other tasks run under a flood
            view = _read_buffer()
            try:
                size, anc, _flags, _addr = self.sock.recvmsg_into([view], _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                self._lost(f"connection lost: {exc}")
                return False
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % 4])
                    self._fd_queue.extend(fds)
            if not size:
                self._lost("peer closed the connection")
                return False
            data = view[:size]  # decoded in place; the decoder copies only a partial tail
            try:
                for msg in self._decoder.feed(data):
                    self._attach_fds(msg)
                    self._dispatch(msg)
                    if self.closed.is_set() or self.interrupted.is_set():
                        return False  # a handler closed the link
            except ProtocolError as exc:
                log.warning("%s: closing after a malformed message: %s", self.name, exc)
                self._lost(f"protocol error: {exc}")
                return False
            if size < _STREAMING and not anc:
                # Level-triggered: anything that arrived meanwhile makes the socket readable
                # again; skipping the read that would fail with EAGAIN saves a syscall and an
                # exception per request.  Large reads (a relayed stream) read on.
                return True
        return True

    def _attach_fds(self, msg: Message) -> None:
        count = msg.get("fds", 0)
        if not count:
            return
        if not isinstance(count, int) or count < 0 or count > len(self._fd_queue):
            raise ProtocolError(f"{msg['t']}: announces {count!r} descriptors it did not carry")
        msg["_fds"] = [self._fd_queue.popleft() for _ in range(count)]

    def _dispatch(self, msg: Message) -> None:
        if msg["t"] == "link_close":
            self._close("the peer ended the link")
            return
        if is_reply(msg) and msg.get("id") in self._pending:
            fut = self._pending.pop(msg["id"])
            if not fut.done():
                fut.set_result(msg)
                self._batch_woke = True
            else:
                close_fds(msg)
            return
        handler = self.handlers.get(msg["t"])
        if handler is None:
            close_fds(msg)
            self._reply_error(msg, "unsupported", f"no handler for {msg['t']!r}")
            return
        if self._batch_woke:
            self._loop.call_soon(self._start, handler, msg)
        else:
            self._start(handler, msg)

    def _start(self, handler: Handler, msg: Message) -> None:
        """Run a handler up to its first wait; finish it here or continue it in a task."""
        coro = handler(self, msg)
        try:
            first = coro.send(None)
        except StopIteration as stop:
            close_fds(msg)
            self._answer(msg, stop.value)
            return
        except Exception as exc:
            close_fds(msg)
            self._answer_failure(msg, exc)
            return
        except BaseException:
            close_fds(msg)
            raise
        task = self._loop.create_task(self._run(_Continue(coro, first), msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Awaitable[Message | None], msg: Message) -> None:
        try:
            reply = await handler
        except Exception as exc:
            self._answer_failure(msg, exc)
            return
        finally:
            close_fds(msg)  # descriptors a handler did not take
        self._answer(msg, reply)

    def _answer_failure(self, msg: Message, exc: Exception) -> None:
        if isinstance(exc, RemoteError):
            self._reply_error(msg, exc.code, exc.message, errno=exc.errno)
        elif isinstance(exc, OSError):
            self._reply_error(msg, "os_error", f"{exc.strerror or exc}", errno=exc.errno or 0)
        else:  # a handler bug must not take the link down
            log.error("%s: handler for %s failed", self.name, msg["t"], exc_info=exc)
            self._reply_error(msg, "internal", f"{type(exc).__name__}: {exc}")

    def _answer(self, msg: Message, reply: Message | None) -> None:
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
        elif reply is not None:
            for fd in reply.pop("_fds", []):
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

    def _lost(self, reason: str) -> None:
        """The connection failed (EOF, error, garbage): interrupt a resumable link, else close."""
        if self.resumable and not self.closed.is_set():
            self._interrupt(reason)
        else:
            self._close(reason)

    def _interrupt(self, reason: str) -> None:
        if self.interrupted.is_set():
            return
        self.interrupt_reason = reason
        self.interrupted.set()
        self.live.clear()
        self._drop_connection(reason)
        # Frames half sent on the old connection mean nothing on a new one.
        self._out.clear()
        self._decoder = protocol.FrameDecoder(limits=self._limits)
        for hook in list(self.on_interrupt):
            try:
                hook(reason)
            except Exception:
                log.exception("%s: interrupt hook failed", self.name)

    def resume(self, sock: socket.socket) -> None:
        """Carry on over ``sock`` (a new, authenticated connection to the same peer); the
        current connection, if any, is dropped first."""
        if self.closed.is_set():
            sock.close()
            raise LinkClosed(self.close_reason or "link closed")
        if not self.interrupted.is_set():
            self._interrupt("replaced by a new connection")
        sock.setblocking(False)
        self.sock = sock
        self.interrupted.clear()
        self.interrupt_reason = ""
        self.live.set()
        if self._serving:
            self._reader_fd = sock.fileno()
            self._loop.add_reader(self._reader_fd, self._on_readable)

    def _drop_connection(self, reason: str) -> None:
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
        if self._reader_fd >= 0:  # before the close: the number may be reused at once
            try:
                self._loop.remove_reader(self._reader_fd)
            except (ValueError, OSError):
                pass
            self._reader_fd = -1
        if self._drained is not None:
            self._drained.set()
        while self._fd_queue:
            os.close(self._fd_queue.popleft())
        try:
            self.sock.close()
        except OSError:
            pass

    def _close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        if not self.interrupted.is_set():
            self._drop_connection(reason)

    def close(self, reason: str = "closed by us") -> None:
        """End the link.  A resumable link first tells its peer (``link_close``), which
        otherwise would wait for it to come back."""
        if self.resumable and not self.closed.is_set() and not self.interrupted.is_set():
            try:
                self._out.append((memoryview(protocol.encode({"t": "link_close"})), []))
                self._flush()
            except (OSError, ProtocolError):
                pass
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
