"""The asyncio driver of the filtered-steal router: one stolen client connection, two
upstreams (the application and the developer's program).

All decisions are the sans-I/O core's (:class:`tether.http.router.RouterCore`: framing,
filter verdicts, answer order, upgrades, errors, backpressure); this module only moves
bytes between transports and the core and carries out its commands.

    client transport --client_data--> RouterCore --Send(app|dev)--> upstream transports
    client transport <--Send(client)-- RouterCore <--upstream_data-- upstream transports

* Protocol-level I/O (``asyncio.Protocol``, on uvloop when installed): every chunk a
  transport reads goes to the core as is, and what the core sends is the same object
  whenever a chunk holds whole messages, so a request or an answer is not copied.
* Flow control: a transport's ``pause_writing`` / ``resume_writing`` reach the core
  (``writable``), which answers with ``Reading`` commands for the sides that feed it.
* The first bytes are read from the raw socket before any transport exists: the HTTP/2
  prior-knowledge preface hands the socket to :class:`.incoming_h2.H2Router`, and
  silence for ``FIRST_BYTE_TIMEOUT`` seconds (a server-first protocol) makes the
  connection the application's, untouched.
* The entry point takes a connected client socket and two openers returning connected
  upstream sockets (or None): whoever wraps the client (e.g. TLS) hands over plain
  sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ..http import RequestMatcher
from ..http.router import (
    APP,
    CLIENT,
    DEV,
    Close,
    Done,
    Handoff,
    Open,
    Reading,
    Refused,
    Routed,
    RouterCore,
    Send,
    Shutdown,
)
from ..pipe import pipe
from .incoming_h2 import H2Router

log = logging.getLogger("tether.agent.incoming")

READ_SIZE = 262144
FIRST_BYTE_TIMEOUT = 3.0

Opener = Callable[[], Awaitable[socket.socket | None]]


async def splice(a: socket.socket, b: socket.socket, first: bytes = b"") -> None:
    """Copy a->b and b->a until both directions ended (half-closes are forwarded)."""
    await pipe(a, b, first)


class _Side(asyncio.Protocol):
    """One transport (the client's or an upstream's) feeding the core."""

    def __init__(self, router: Router, side: str) -> None:
        self.router = router
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.active = True  # False once the core dropped this connection
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        t = cast(asyncio.Transport, transport)
        self.transport = t
        if self.active:
            self.router.transports[self.side] = t

    def data_received(self, data: bytes) -> None:
        if self.active:
            r = self.router
            if self.side == CLIENT:
                r.do(r.core.client_data(data))
            else:
                r.do(r.core.upstream_data(self.side, data))

    def eof_received(self) -> bool:
        self._eof()
        return True  # keep the write side open: answers may still be owed

    def connection_lost(self, exc: Exception | None) -> None:
        if self.side == CLIENT and self.active and exc is not None:
            log.debug("%s: client connection lost: %s", self.router.name, exc)
            self.router.do([Done()])
            return
        self._eof()

    def _eof(self) -> None:
        if self.active and not self.ended:
            self.ended = True
            r = self.router
            r.do(r.core.client_eof() if self.side == CLIENT else r.core.upstream_eof(self.side))

    def pause_writing(self) -> None:
        if self.active:
            self.router.do(self.router.core.writable(self.side, False))

    def resume_writing(self) -> None:
        if self.active:
            self.router.do(self.router.core.writable(self.side, True))


class Router:
    """Route one stolen client connection request by request (see the module doc)."""

    def __init__(self, client: socket.socket, matcher: RequestMatcher,
                 open_app: Opener, open_dev: Opener, name: str = "") -> None:
        self.client = client
        self.matcher = matcher
        self.open_app = open_app
        self.open_dev = open_dev
        self.name = name
        self.core = RouterCore(matcher)
        self.transports: dict[str, asyncio.Transport] = {}
        self.sides: dict[str, _Side] = {}
        self._done: asyncio.Future[None] | None = None
        self._opening: set[asyncio.Task[None]] = set()
        self._debug = log.isEnabledFor(logging.DEBUG)  # a verdict per request is logged

    @property
    def routed(self) -> dict[str, int]:
        return self.core.routed

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        try:
            commands = await self._first_bytes()
            if commands is None:
                return
            handoff = next((c for c in commands if type(c) is Handoff), None)
            if handoff is not None:
                await H2Router(self.client, self.matcher, self.open_app, self.open_dev,
                               self.name).run(handoff.data)
                return
            side = self.sides[CLIENT] = _Side(self, CLIENT)
            await loop.connect_accepted_socket(lambda: side, self.client)
            self.do(commands)
            await self._done
        finally:
            self._close_all()
            with contextlib.suppress(OSError):
                self.client.close()
            log.debug("%s: requests routed: %s", self.name, self.core.routed)

    async def _first_bytes(self) -> list[Any] | None:
        """Feed the core from the raw socket until it knows what the stream is."""
        loop = asyncio.get_running_loop()
        commands: list[Any] = []
        timeout: float | None = FIRST_BYTE_TIMEOUT
        while self.core.detecting:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.client, READ_SIZE), timeout)
            except TimeoutError:
                commands += self.core.first_byte_timeout()
                break
            except OSError:
                return None
            if not data:
                if not self.core.started:
                    return None
                commands += self.core.client_eof()
                break
            commands += self.core.client_data(data)
            timeout = None  # bytes came: no longer a server-first protocol
        return commands

    def do(self, commands: list[Any]) -> None:
        """Carry out the core's commands, in order."""
        transports = self.transports
        for c in commands:
            kind = type(c)
            if kind is Send:
                t = transports.get(c.side)
                if t is not None:
                    t.write(c.data)
            elif kind is Routed:
                if self._debug:
                    log.debug("%s: %s %s -> %s", self.name, c.method.decode("latin-1"),
                              c.target[:200].decode("latin-1"), c.side)
            elif kind is Reading:
                t = transports.get(c.side)
                if t is not None:
                    if c.on:
                        t.resume_reading()
                    else:
                        t.pause_reading()
            elif kind is Open:
                task = asyncio.get_running_loop().create_task(self._open(c.side))
                self._opening.add(task)
                task.add_done_callback(self._opening.discard)
            elif kind is Shutdown:
                t = transports.get(c.side)
                if t is not None and not t.is_closing():
                    with contextlib.suppress(OSError, RuntimeError):
                        t.write_eof()
            elif kind is Close:
                self._drop(c.side)
            elif kind is Refused:
                log.info("%s: malformed request (%s): answering 400", self.name, c.reason)
            elif kind is Done:
                if self._done is not None and not self._done.done():
                    self._done.set_result(None)

    async def _open(self, side: str) -> None:
        loop = asyncio.get_running_loop()
        opener = self.open_dev if side == DEV else self.open_app
        try:
            sock = await opener()
        except Exception as exc:  # noqa: BLE001 - an opener failing is an upstream down
            log.warning("%s: cannot open the %s side: %s", self.name, side, exc)
            sock = None
        if self.core.done:
            if sock is not None:
                sock.close()
            return
        if sock is None:
            self.do(self.core.opened(side, False))
            return
        proto = self.sides[side] = _Side(self, side)
        try:
            await loop.connect_accepted_socket(lambda: proto, sock)
        except OSError as exc:
            log.warning("%s: the %s side failed: %s", self.name, side, exc)
            proto.active = False
            sock.close()
            self.do(self.core.opened(side, False))
            return
        self.do(self.core.opened(side, True))

    def _drop(self, side: str) -> None:
        proto = self.sides.pop(side, None)
        if proto is not None:
            proto.active = False
        t = self.transports.pop(side, None)
        if t is not None:
            t.close()

    def _close_all(self) -> None:
        for task in self._opening:
            task.cancel()
        for side in (APP, DEV):
            self._drop(side)
        proto = self.sides.pop(CLIENT, None)
        if proto is not None:
            proto.active = False
        t = self.transports.pop(CLIENT, None)
        if t is not None:
            t.close()
