"""A framed msgpack link over an asyncio stream: the I/O driver around tether.protocol.

Both ends of every tether connection use it: the orchestrator's server for layer
sessions, the orchestrator's client to the agent, and the agent's server.  A link reads
frames, answers requests through a handler table, and matches replies to ``call``s by id.
A malformed frame closes that link (with the reason logged) and nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from . import protocol
from .protocol import Message, ProtocolError

log = logging.getLogger(__name__)

Handler = Callable[["Link", Message], Awaitable[Message | None]]

_REPLY_TYPES_SUFFIX = "_reply"
# Replies that do not follow the *_reply naming.
_REPLY_TYPES = {"pong", "error", "hello_ok", "auth_ok"}


def is_reply(msg: Message) -> bool:
    kind: str = msg["t"]
    return kind in _REPLY_TYPES or kind.endswith(_REPLY_TYPES_SUFFIX)


class RemoteError(Exception):
    """The peer answered a request with an ``error`` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LinkClosed(Exception):
    """The link closed before the reply arrived."""


class Link:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handlers: Mapping[str, Handler] | None = None,
        name: str = "link",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handlers = dict(handlers or {})
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._decoder = protocol.FrameDecoder()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.state: dict[str, Any] = {}  # per-link data owned by the handlers
        self._tasks: set[asyncio.Task[None]] = set()

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, msg: Mapping[str, Any]) -> None:
        if self.closed.is_set():
            raise LinkClosed(self.close_reason or "link closed")
        self.writer.write(protocol.encode(msg))

    async def call(self, msg: dict[str, Any], timeout: float | None = None) -> Message:
        """Send a request (an ``id`` is assigned) and wait for its reply."""
        msg = dict(msg)
        msg["id"] = self.next_id()
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[msg["id"]] = fut
        try:
            self.send(msg)
            await self.writer.drain()
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg["id"], None)
        if reply["t"] == "error":
            raise RemoteError(reply["code"], reply["message"])
        return reply

    async def serve(self) -> None:
        """Read until EOF or a protocol error; dispatch requests, resolve replies."""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    self._close("peer closed the connection")
                    return
                for msg in self._decoder.feed(data):
                    self._dispatch(msg)
        except ProtocolError as exc:
            log.warning("%s: closing after a malformed message: %s", self.name, exc)
            self._close(f"protocol error: {exc}")
        except (ConnectionError, OSError) as exc:
            self._close(f"connection lost: {exc}")
        finally:
            self._close(self.close_reason or "closed")

    def _dispatch(self, msg: Message) -> None:
        if is_reply(msg) and msg.get("id") in self._pending:
            fut = self._pending.pop(msg["id"])
            if not fut.done():
                fut.set_result(msg)
            return
        handler = self.handlers.get(msg["t"])
        if handler is None:
            self._reply_error(msg, "unsupported", f"no handler for {msg['t']!r}")
            return
        task = asyncio.get_running_loop().create_task(self._run(handler, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, msg: Message) -> None:
        try:
            reply = await handler(self, msg)
        except RemoteError as exc:
            self._reply_error(msg, exc.code, exc.message)
            return
        except OSError as exc:
            self._reply_error(msg, "os_error", f"{exc.strerror or exc}", errno=exc.errno or 0)
            return
        except Exception as exc:  # a handler bug must not take the link down
            log.exception("%s: handler for %s failed", self.name, msg["t"])
            self._reply_error(msg, "internal", f"{type(exc).__name__}: {exc}")
            return
        if reply is not None and not self.closed.is_set():
            if "id" in msg and "id" not in reply:
                reply["id"] = msg["id"]
            try:
                self.send(reply)
            except (LinkClosed, ConnectionError):
                pass

    def _reply_error(self, msg: Message, code: str, text: str, **extra: Any) -> None:
        if "id" not in msg or self.closed.is_set():
            log.warning("%s: %s", self.name, text)
            return
        err: dict[str, Any] = {"t": "error", "id": msg["id"], "code": code, "message": text}
        err.update(extra)
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
        try:
            self.writer.close()
        except Exception:
            pass

    def close(self, reason: str = "closed by us") -> None:
        self._close(reason)
