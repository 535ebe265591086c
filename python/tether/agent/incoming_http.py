"""The per-request router of a filtered steal: one stolen client connection, two upstreams.

Each request on the client connection goes to the developer (its head matches the
filter) or to the original application; the answers go back to the client on the same
connection in request order. The framing is the sans-I/O ``tether.http`` framers; this
module only drives them with sockets.

    client --reader--> RequestFramer --head: decide--> upstream (app | dev)
                                       order queue: (upstream, request) in arrival order
    client <--writer-- the head upstream's ResponseFramer events, one response at a time

* Keep-alive and pipelining: requests are forwarded as soon as they arrive, each to its
  upstream; every upstream's responses are framed by its own ResponseFramer and queued
  (bounded: backpressure reaches the upstream's socket), the writer takes them in the
  order the requests came.
* Bodies are streamed (``Body`` events), never buffered whole; ``Expect: 100-continue``
  needs nothing special: the head is forwarded at once and the 100 comes back like any
  informational head.
* ``Upgrade`` (WebSocket) and ``CONNECT``: after the request, the reader waits for the
  verdict of the upstream that got it; on 101 (2xx to CONNECT) the connection becomes a
  tunnel between the client and that upstream.
* h2c with prior knowledge: ``incoming_h2.H2Router`` takes the connection over and
  routes it stream by stream.
* Not HTTP at all (the first bytes are no request line, or nothing arrives for
  ``FIRST_BYTE_TIMEOUT`` seconds as with server-first protocols): the connection goes
  to the application whole, untouched.
* Malformed request after a valid one (bad request line, Content-Length and
  Transfer-Encoding together, oversized head): the requests before it are answered, then
  400 and close. Nothing of it reaches an upstream it was not already going to.
* An upstream that closes with requests outstanding, or sends a broken response, ends the
  client connection after what was already answered: the client sees what a server that
  closes would look like, never another request's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from ..http import (
    Body,
    H2Preface,
    Invalid,
    RequestEnd,
    RequestFramer,
    RequestHead,
    RequestMatcher,
    ResponseEnd,
    ResponseFramer,
    ResponseHead,
    Tunnel,
    Upgraded,
)
from .incoming_h2 import H2Router

log = logging.getLogger("tether.agent.incoming")

READ_SIZE = 262144
FIRST_BYTE_TIMEOUT = 3.0
QUEUE_EVENTS = 32

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    b"Connection: close\r\n\r\nBad Request\n"
)

Opener = Callable[[], Awaitable[socket.socket | None]]


async def splice(a: socket.socket, b: socket.socket, first: bytes = b"") -> None:
    """Copy a->b and b->a until both directions ended (half-closes are forwarded)."""
    loop = asyncio.get_running_loop()

    async def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = await loop.sock_recv(src, READ_SIZE)
                if not data:
                    break
                await loop.sock_sendall(dst, data)
        except OSError:
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    if first:
        await loop.sock_sendall(b, first)
    await asyncio.gather(pump(a, b), pump(b, a))


class _Upstream:
    """One connection to the app or to the developer, and its response events."""

    def __init__(self, kind: str, sock: socket.socket, raw: bool = False) -> None:
        self.kind = kind
        self.sock = sock
        self.raw = raw  # a tunnel from the start (h2c): no HTTP/1 framing
        self.framer = ResponseFramer()
        self.events: asyncio.Queue[tuple[object, bool]] = asyncio.Queue(QUEUE_EVENTS)
        self.eof = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    data = await loop.sock_recv(self.sock, READ_SIZE)
                except OSError:
                    data = b""
                if not data:
                    self.eof = True
                    for ev in self.framer.feed_eof():
                        await self.events.put((ev, True))
                    await self.events.put((None, True))
                    return
                if self.raw:
                    await self.events.put((Tunnel(data), False))
                    continue
                for ev in self.framer.feed(data):
                    await self.events.put((ev, False))
        except asyncio.CancelledError:
            raise

    async def send(self, data: bytes) -> None:
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()


class _Entry:
    __slots__ = ("kind", "up", "upgrade", "verdict")

    def __init__(self, kind: str, up: _Upstream | None = None, upgrade: bool = False) -> None:
        self.kind = kind  # "req" | "tunnel" | "bad" | "end"
        self.up = up
        self.upgrade = upgrade
        self.verdict: asyncio.Future[bool] | None = None


class Router:
    """Route one stolen client connection request by request (see the module doc)."""

    def __init__(self, client: socket.socket, matcher: RequestMatcher,
                 open_app: Opener, open_dev: Opener, name: str = "") -> None:
        self.client = client
        self.matcher = matcher
        self.open_app = open_app
        self.open_dev = open_dev
        self.name = name
        self.rf = RequestFramer()
        self.order: asyncio.Queue[_Entry] = asyncio.Queue()
        self.ups: dict[str, _Upstream] = {}
        self.all_ups: list[_Upstream] = []
        self.cur: _Upstream | None = None
        self.routed = {"app": 0, "dev": 0}
        self.tunnel = False
        self._last = _Entry("end")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # First bytes decide whether this is HTTP at all.
        try:
            first = await asyncio.wait_for(loop.sock_recv(self.client, READ_SIZE),
                                           FIRST_BYTE_TIMEOUT)
        except TimeoutError:
            first = None
        except OSError:
            return
        if first == b"":
            return
        events = self.rf.feed(first) if first is not None else []
        if first is None or any(isinstance(e, Invalid) for e in events) and not any(
                isinstance(e, RequestHead) for e in events):
            await self._whole_to_app(first or b"")
            return
        writer = loop.create_task(self._write())
        reader = loop.create_task(self._read(events))
        try:
            done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                if self.tunnel and not reader.done():
                    await asyncio.wait({reader})
            elif reader.exception() is None:
                await asyncio.wait({writer})
            for t in (reader, writer):
                if t.done() and not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    if isinstance(exc, OSError):
                        log.debug("%s: connection ended: %s", self.name, exc)
                    else:
                        log.error("%s: router failed: %r", self.name, exc)
        finally:
            for t in (reader, writer):
                t.cancel()
            for up in self.all_ups:
                up.close()
            with contextlib.suppress(OSError):
                self.client.close()

    async def _whole_to_app(self, first: bytes) -> None:
        app = await self.open_app()
        if app is None:
            return
        try:
            await splice(self.client, app, first)
        finally:
            app.close()

    async def _upstream(self, kind: str) -> _Upstream:
        up = self.ups.get(kind)
        if up is not None and not up.eof:
            return up
        sock = await (self.open_dev() if kind == "dev" else self.open_app())
        if sock is None and kind == "dev":  # the developer stopped listening
            kind = "app"
            return await self._upstream("app")
        if sock is None:
            raise ConnectionError("cannot reach the application")
        up = _Upstream(kind, sock)
        self.ups[kind] = up
        self.all_ups.append(up)
        return up

    # ---- client -> upstreams ----
    async def _read(self, events: list[object]) -> None:
        loop = asyncio.get_running_loop()
        tunnel = False
        while True:
            for ev in events:
                if tunnel:
                    if isinstance(ev, (Tunnel, Upgraded)) and self.cur is not None:
                        await self.cur.send(ev.raw)
                    continue
                tunnel = await self._on_request_event(ev)
                if tunnel is None:  # invalid: nothing more is read
                    return
            while self.rf.paused:
                entry = self._last
                assert entry.verdict is not None
                accepted = await entry.verdict
                evs = self.rf.upgrade_accepted() if accepted else self.rf.upgrade_declined()
                for ev in evs:
                    if isinstance(ev, Upgraded):
                        tunnel = True
                        if self.cur is not None:
                            await self.cur.send(ev.raw_rest)
                    else:
                        r = await self._on_request_event(ev)
                        if r is None:
                            return
                        tunnel = tunnel or r
            try:
                data = await loop.sock_recv(self.client, READ_SIZE)
            except OSError:
                data = b""
            if not data:
                if tunnel and self.cur is not None:
                    with contextlib.suppress(OSError):
                        self.cur.sock.shutdown(socket.SHUT_WR)
                    return
                for ev in self.rf.feed_eof():
                    if isinstance(ev, Invalid) and self.cur is not None:
                        with contextlib.suppress(OSError):
                            self.cur.sock.shutdown(socket.SHUT_WR)
                self.order.put_nowait(_Entry("end"))
                return
            events = self.rf.feed(data)

    async def _on_request_event(self, ev: object) -> bool | None:
        """Handle one event; True when the connection became a tunnel, None on Invalid."""
        if isinstance(ev, RequestHead):
            kind = "dev" if self.matcher.matches(ev) else "app"
            up = await self._upstream(kind)
            self.routed[up.kind] += 1
            up.framer.expect(ev.method)
            entry = _Entry("req", up, upgrade=False)
            self._last = entry
            self.cur = up
            self.order.put_nowait(entry)
            await up.send(ev.raw)
        elif isinstance(ev, Body):
            if self.cur is not None:
                await self.cur.send(ev.raw)
        elif isinstance(ev, RequestEnd):
            if self.rf.paused:  # an upgrade request: wait for its upstream's verdict
                self._last.upgrade = True
                self._last.verdict = asyncio.get_running_loop().create_future()
        elif isinstance(ev, H2Preface):
            # HTTP/2 with prior knowledge: routed stream by stream (incoming_h2), then done.
            await H2Router(self.client, self.matcher, self.open_app, self.open_dev,
                           self.name).run(ev.raw)
            self.order.put_nowait(_Entry("end"))
            return None
        elif isinstance(ev, Tunnel):
            if self.cur is not None:
                await self.cur.send(ev.raw)
            return True
        elif isinstance(ev, Invalid):
            log.info("%s: malformed request (%s): answering 400", self.name, ev.reason)
            if self.cur is not None:
                # A request cut off mid-body: its upstream must not wait for the rest.
                with contextlib.suppress(OSError):
                    self.cur.sock.shutdown(socket.SHUT_WR)
            self.order.put_nowait(_Entry("bad"))
            return None
        return False

    # ---- upstreams -> client ----
    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        client = self.client
        while True:
            entry = await self.order.get()
            if entry.kind == "end":
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)
                return
            if entry.kind == "bad":
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(client, BAD_REQUEST)
                return
            up = entry.up
            assert up is not None
            if entry.kind == "tunnel":
                await self._tunnel_out(up)
                return
            while True:  # one response
                ev, by_eof = await up.events.get()
                if ev is None or isinstance(ev, Invalid):
                    # The upstream closed (or broke) before answering this request.
                    self._decide(entry, False)
                    return
                if isinstance(ev, ResponseHead):
                    if entry.upgrade and ev.status >= 200 and ev.status != 101 and not (
                            200 <= ev.status < 300):
                        self._decide(entry, False)
                    await loop.sock_sendall(client, ev.raw)
                    continue
                if isinstance(ev, Upgraded):
                    if ev.raw_rest:
                        await loop.sock_sendall(client, ev.raw_rest)
                    self.tunnel = True
                    self._decide(entry, True)
                    await self._tunnel_out(up)
                    return
                if isinstance(ev, Body):
                    await loop.sock_sendall(client, ev.raw)
                    continue
                if isinstance(ev, ResponseEnd):
                    if ev.raw:
                        await loop.sock_sendall(client, ev.raw)
                    self._decide(entry, False)
                    if by_eof:  # a close-delimited answer: only closing can end it
                        return
                    break

    def _decide(self, entry: _Entry, accepted: bool) -> None:
        if entry.verdict is not None and not entry.verdict.done():
            entry.verdict.set_result(accepted)

    async def _tunnel_out(self, up: _Upstream) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ev, _ = await up.events.get()
            if ev is None:
                break
            raw = getattr(ev, "raw", b"")
            if raw:
                await loop.sock_sendall(self.client, raw)
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)
