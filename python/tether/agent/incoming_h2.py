"""Per-stream routing of a stolen HTTP/2 cleartext connection (h2c, prior knowledge).

The HTTP/1 router (``incoming_http.Router``) hands a connection over here when it opens
with the HTTP/2 preface. The agent terminates the client's HTTP/2 connection (the ``h2``
package, server side) and judges every stream by its request head: the filter sees
``:path`` (path and query, as sent) as the path, ``:method`` as the method, and the
regular header fields as ``name: value`` lines (``:authority`` also as ``host:`` when
the client sent no ``host``). Matching streams go on one HTTP/2 connection to the
developer (a socketpair handed to the orchestrator, exactly as the HTTP/1 router gets
its developer side), the others on one HTTP/2 connection to the application (the
original destination, with the bypass mark); the answers come back on the client's
stream ids.

    client --h2 server conn--> stream head: decide --> h2 client conn (app | dev)
    client <------------------ headers, data, trailers, resets, mapped back ---------

* One task owns every ``H2Connection`` (the inbox loop); one reader and one writer task
  per socket. A reader hands over one chunk at a time and waits until it was processed,
  so a slow side slows its sockets down instead of growing queues.
* Flow control: data received from one side is acknowledged (WINDOW_UPDATE) only once
  it was handed to the other side within that side's window, so what waits here is
  bounded by the windows the agent advertises (``STREAM_WINDOW`` per stream,
  ``CONN_WINDOW`` per connection, each direction). The connection window is larger
  than a stream's so one stalled stream does not stall its neighbours.
* RST_STREAM travels with its error code to the other side of the stream. A GOAWAY
  from an upstream refuses (REFUSED_STREAM, safe to retry) the streams it did not
  process and sends later streams of that side on a new connection; the client's
  GOAWAY ends the routing once its streams are done. An upstream that closes resets
  the streams it had not finished (INTERNAL_ERROR); the others keep going. An
  upstream that allows fewer concurrent streams than the client opens gets a second
  connection.
* The developer no longer listening: the stream goes to the application (as in the
  HTTP/1 router). The application unreachable: the stream is refused.
* Server push from the upstreams is disabled (the client's push setting is moot: the
  agent never pushes).
* ``Upgrade: h2c`` from HTTP/1.1 is not handled here: the HTTP/1 router sends that
  request where the filter says and the upgraded connection stays with that side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from ..http import RequestHead, RequestMatcher

log = logging.getLogger("tether.agent.incoming")

READ_SIZE = 262144
DEFAULT_WINDOW = 65535
STREAM_WINDOW = 256 * 1024
CONN_WINDOW = 4 * 1024 * 1024
CLOSE_FLUSH_TIMEOUT = 1.0

Opener = Callable[[], Awaitable[socket.socket | None]]
Headers = list[tuple[bytes, bytes]]


def _b(v: bytes | str) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8")


def request_head(headers: Iterable[tuple[bytes | str, bytes | str]]) -> RequestHead:
    """What the filter sees of an HTTP/2 request (``raw`` is empty, ``version`` b"2")."""
    method = target = b""
    authority: bytes | None = None
    fields: Headers = []
    for name, value in headers:
        n, v = _b(name).lower(), _b(value)
        if n == b":method":
            method = v
        elif n == b":path":
            target = v
        elif n == b":authority":
            authority = v
        elif not n.startswith(b":"):
            fields.append((n, v.strip()))
    if not target and method == b"CONNECT" and authority is not None:
        target = authority
    if authority is not None and not any(n == b"host" for n, _ in fields):
        fields.insert(0, (b"host", authority))
    return RequestHead(method, target, b"2", fields, b"")


class _Flow:
    """One direction of one routed stream: what waits for the receiver's window."""

    __slots__ = ("chunks", "closed", "end", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.end = False
        self.trailers: Headers | None = None
        self.closed = False  # the end (or the trailers) was forwarded, or abandoned

    @property
    def complete(self) -> bool:
        return self.closed or self.end or self.trailers is not None


class _Stream:
    __slots__ = ("cs", "req", "resp", "up", "us")

    def __init__(self, cs: int, up: _Peer, us: int) -> None:
        self.cs = cs  # the client's stream id
        self.up = up
        self.us = us  # the upstream's stream id
        self.req = _Flow()  # client -> upstream
        self.resp = _Flow()  # upstream -> client


class _Peer:
    """One HTTP/2 connection on one socket: the client's, or one to an upstream."""

    def __init__(self, kind: str, sock: socket.socket, conn: h2.connection.H2Connection,
                 inbox: asyncio.Queue[tuple[_Peer, bytes]]) -> None:
        self.kind = kind  # "client" | "app" | "dev"
        self.sock = sock
        self.conn = conn
        self.inbox = inbox
        self.streams: dict[int, _Stream] = {}  # upstreams: by upstream stream id
        self.gone = False  # closed, broken or dropped: nothing more is read or routed
        self.draining = False  # GOAWAY received: no new streams
        self.closing = False
        self.dirty = asyncio.Event()
        self.processed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.reader = loop.create_task(self._read())
        self.writer = loop.create_task(self._write())

    def has_room(self) -> bool:
        conn = self.conn
        return (not self.gone and not self.draining
                and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self.sock, READ_SIZE)
            except OSError:
                data = b""
            self.processed.clear()
            await self.inbox.put((self, data))
            if not data:
                return
            await self.processed.wait()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.closing:
                    await self.dirty.wait()
                self.dirty.clear()
                data = self.conn.data_to_send()
                if data:
                    await loop.sock_sendall(self.sock, data)
                elif self.closing:
                    break
        except OSError:
            self.inbox.put_nowait((self, b""))
            return
        self.reader.cancel()  # closing and all sent
        with contextlib.suppress(OSError):
            self.sock.close()

    async def close(self) -> None:
        """Send what is pending (bounded wait), then close the socket."""
        self.gone = True
        self.closing = True
        self.dirty.set()
        with contextlib.suppress(asyncio.TimeoutError, OSError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.writer), CLOSE_FLUSH_TIMEOUT)
        self.abort()

    def abort(self) -> None:
        self.gone = True
        self.reader.cancel()
        self.writer.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()


class H2Router:
    """Route the streams of one stolen h2c connection (see the module doc)."""

    def __init__(self, client: socket.socket, matcher: RequestMatcher,
                 open_app: Opener, open_dev: Opener, name: str = "") -> None:
        self.client_sock = client
        self.matcher = matcher
        self.open_app = open_app
        self.open_dev = open_dev
        self.name = name
        self.inbox: asyncio.Queue[tuple[_Peer, bytes]] = asyncio.Queue()
        self.streams: dict[int, _Stream] = {}  # by client stream id
        self.ups: list[_Peer] = []
        self.retired: list[_Peer] = []  # closing: they get their last bytes out
        self.routed = {"app": 0, "dev": 0, "refused": 0}
        self.client_goaway = False
        self.client: _Peer | None = None

    async def run(self, first: bytes) -> None:
        """``first``: the bytes received so far, starting with the client preface."""
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        conn.increment_flow_control_window(CONN_WINDOW - DEFAULT_WINDOW)
        client = self.client = _Peer("client", self.client_sock, conn, self.inbox)
        try:
            await self._feed(client, first)
            while not self._finished():
                peer, data = await self.inbox.get()
                if peer.gone:
                    peer.processed.set()
                    continue
                if data:
                    await self._feed(peer, data)
                elif peer is client:
                    client.gone = True
                else:
                    self._upstream_lost(peer, "closed the connection")
                    self._pump()
                    self._wake()
                peer.processed.set()
        finally:
            log.debug("%s: h2 streams routed: %s", self.name, self.routed)
            ups, self.ups = self.ups + self.retired, []
            await asyncio.gather(client.close(), *(up.close() for up in ups))

    def _finished(self) -> bool:
        assert self.client is not None
        return self.client.gone or (self.client_goaway and not self.streams)

    def _wake(self) -> None:
        assert self.client is not None
        for peer in (self.client, *self.ups):
            peer.dirty.set()

    # ---- input ----
    async def _feed(self, peer: _Peer, data: bytes) -> None:
        try:
            events = peer.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY for that peer.
            log.info("%s: HTTP/2 protocol error from the %s: %s", self.name, peer.kind, exc)
            if peer is self.client:
                peer.gone = True
            else:
                self._upstream_lost(peer, f"protocol error: {exc}")
            self._wake()
            return
        for event in events:
            if peer is self.client:
                await self._client_event(event)
            elif not peer.gone:
                self._upstream_event(peer, event)
        self._pump()
        self._wake()

    async def _client_event(self, ev: Any) -> None:
        client = self.client
        assert client is not None
        if isinstance(ev, h2.events.RequestReceived):
            await self._open_stream(ev.stream_id, ev.headers, ev.stream_ended is not None)
            return
        s = self.streams.get(getattr(ev, "stream_id", 0) or 0)
        if isinstance(ev, h2.events.DataReceived):
            self._received(client, ev, s.req if s else None)
        elif isinstance(ev, h2.events.TrailersReceived):
            if s is not None:
                s.req.trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            if s is not None:
                s.req.end = True
        elif isinstance(ev, h2.events.StreamReset):
            if s is not None:
                self._reset(s.up, s.us, ev.error_code)
                self._drop(s)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            log.debug("%s: the client sent GOAWAY (%s)", self.name, ev.error_code)
            self.client_goaway = True

    def _upstream_event(self, up: _Peer, ev: Any) -> None:
        client = self.client
        assert client is not None
        s = up.streams.get(getattr(ev, "stream_id", 0) or 0)
        if isinstance(ev, (h2.events.ResponseReceived,
                           h2.events.InformationalResponseReceived)):
            if s is None:
                return
            ended = getattr(ev, "stream_ended", None) is not None
            try:
                client.conn.send_headers(s.cs, ev.headers, end_stream=ended)
            except h2.exceptions.H2Error as exc:
                log.debug("%s: stream %d: response head not forwarded: %s",
                          self.name, s.cs, exc)
                self._drop(s)
                self._reset(up, s.us, ErrorCodes.CANCEL)
                return
            if ended:
                s.resp.closed = True
        elif isinstance(ev, h2.events.DataReceived):
            self._received(up, ev, s.resp if s else None)
        elif isinstance(ev, h2.events.TrailersReceived):
            if s is not None:
                s.resp.trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            if s is not None:
                s.resp.end = True
        elif isinstance(ev, h2.events.StreamReset):
            if s is not None:
                self._reset(client, s.cs, ev.error_code)
                self._drop(s)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            last = ev.last_stream_id if ev.last_stream_id is not None else 0
            log.debug("%s: the %s sent GOAWAY (%s, last stream %s)", self.name, up.kind,
                      ev.error_code, last)
            up.draining = True
            for us, st in list(up.streams.items()):
                if us > last:  # not processed: the client may retry it
                    self._drop(st)
                    self._reset(client, st.cs, ErrorCodes.REFUSED_STREAM)
            if not up.streams:
                self._retire(up)

    def _received(self, src: _Peer, ev: h2.events.DataReceived, flow: _Flow | None) -> None:
        size = ev.flow_controlled_length or 0
        data = ev.data or b""
        if flow is None or flow.closed:
            self._ack(src, ev.stream_id, size)  # nobody wants it: give the window back
            return
        if size > len(data):  # padding: nothing to forward
            self._ack(src, ev.stream_id, size - len(data))
        if data:
            flow.chunks.append(data)

    # ---- routing ----
    async def _open_stream(self, cs: int, headers: Any, ended: bool) -> None:
        client = self.client
        assert client is not None
        head = request_head(headers)
        kind = "dev" if self.matcher.matches(head) else "app"
        up = await self._upstream(kind)
        if up is None:
            log.warning("%s: stream %d refused: cannot reach the application", self.name, cs)
            self.routed["refused"] += 1
            self._reset(client, cs, ErrorCodes.REFUSED_STREAM)
            return
        try:
            us = up.conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:  # 2^30 streams: a new connection
            up.draining = True
            if not up.streams:
                self._retire(up)
            await self._open_stream(cs, headers, ended)
            return
        try:
            up.conn.send_headers(us, headers, end_stream=ended)
        except h2.exceptions.H2Error as exc:
            log.info("%s: stream %d not forwarded: %s", self.name, cs, exc)
            self._reset(client, cs, ErrorCodes.INTERNAL_ERROR)
            return
        s = _Stream(cs, up, us)
        s.req.closed = ended
        self.streams[cs] = s
        up.streams[us] = s
        self.routed[up.kind] += 1
        log.debug("%s: h2 stream %d %s %s -> %s", self.name, cs,
                  head.method.decode("latin-1"), head.target.decode("latin-1"), up.kind)

    async def _upstream(self, kind: str) -> _Peer | None:
        for up in self.ups:
            if up.kind == kind and up.has_room():
                return up
        sock = await (self.open_dev() if kind == "dev" else self.open_app())
        if sock is None:
            return await self._upstream("app") if kind == "dev" else None
        sock.setblocking(False)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.update_settings({SettingCodes.ENABLE_PUSH: 0,
                              SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        conn.increment_flow_control_window(CONN_WINDOW - DEFAULT_WINDOW)
        up = _Peer(kind, sock, conn, self.inbox)
        up.dirty.set()
        self.ups.append(up)
        return up

    def _pump(self) -> None:
        """Move what waits into the receivers' windows; forget finished streams."""
        client = self.client
        assert client is not None
        for s in list(self.streams.values()):
            self._move(s.req, client, s.cs, s.up, s.us)
            self._move(s.resp, s.up, s.us, client, s.cs)
            if s.req.closed and s.resp.closed:
                self._drop(s)
        for up in list(self.ups):
            if up.draining and not up.streams:
                self._retire(up)

    def _move(self, flow: _Flow, src: _Peer, sid: int, dst: _Peer, did: int) -> None:
        if flow.closed:
            return
        try:
            while flow.chunks:
                room = min(dst.conn.local_flow_control_window(did),
                           dst.conn.max_outbound_frame_size)
                if room <= 0:
                    return
                chunk = flow.chunks[0]
                if len(chunk) <= room:
                    flow.chunks.popleft()
                    piece = chunk
                else:
                    piece, flow.chunks[0] = chunk[:room], chunk[room:]
                dst.conn.send_data(did, piece)
                self._ack(src, sid, len(piece))
            if flow.trailers is not None:
                dst.conn.send_headers(did, flow.trailers, end_stream=True)
                flow.closed = True
            elif flow.end:
                dst.conn.end_stream(did)
                flow.closed = True
        except h2.exceptions.H2Error as exc:  # the receiving stream is gone
            log.debug("%s: %s stream %d: abandoned: %s", self.name, dst.kind, did, exc)
            self._abandon(flow, src, sid)

    # ---- ending streams and connections ----
    def _ack(self, peer: _Peer, sid: int, size: int) -> None:
        if size > 0 and not peer.gone:
            with contextlib.suppress(h2.exceptions.H2Error, ValueError):
                peer.conn.acknowledge_received_data(size, sid)

    def _abandon(self, flow: _Flow, src: _Peer, sid: int) -> None:
        """Drop what waits in ``flow``, giving its window back to the sender."""
        self._ack(src, sid, sum(map(len, flow.chunks)))
        flow.chunks.clear()
        flow.closed = True

    def _drop(self, s: _Stream) -> None:
        assert self.client is not None
        self.streams.pop(s.cs, None)
        s.up.streams.pop(s.us, None)
        self._abandon(s.req, self.client, s.cs)
        self._abandon(s.resp, s.up, s.us)

    def _reset(self, peer: _Peer, sid: int, code: int) -> None:
        if not peer.gone:
            with contextlib.suppress(h2.exceptions.H2Error):
                peer.conn.reset_stream(sid, code)

    def _retire(self, up: _Peer) -> None:
        """An upstream with no streams left that takes no new ones: close it."""
        if up in self.ups:
            self.ups.remove(up)
        up.gone = True
        up.closing = True
        up.conn.close_connection()
        up.dirty.set()  # the writer sends the GOAWAY and closes
        self._keep_closing(up)

    def _upstream_lost(self, up: _Peer, why: str) -> None:
        client = self.client
        assert client is not None
        log.debug("%s: the %s upstream %s", self.name, up.kind, why)
        for st in list(up.streams.values()):
            if st.resp.complete:  # answered in full: the rest still reaches the client
                st.req.closed = True
                continue
            self._drop(st)
            self._reset(client, st.cs, ErrorCodes.INTERNAL_ERROR)
        up.streams.clear()
        if up in self.ups:
            self.ups.remove(up)
        up.gone = True
        up.closing = True
        up.dirty.set()  # flush a GOAWAY h2 may have queued, then the writer closes
        self._keep_closing(up)

    def _keep_closing(self, up: _Peer) -> None:
        self.retired = [p for p in self.retired if not p.writer.done()]
        self.retired.append(up)
