"""Mirror on the redirect path: the client talks to the application through the agent,
and a copy of its requests goes to the developer (used for TLS ports, whose packets the
sniffer cannot read; :mod:`.incoming_tls` decrypts and calls :func:`mirror`).

    client --plain--> agent --every byte--> app          (the client's path: a splice)
                        |  tee: requests matching the filter (all without one)
                        +--> copy --> developer          (answers read and dropped)

* HTTP/1: the tee frames the client's bytes (``RequestFramer``) and copies each matching
  request verbatim (head and body). An upgrade (WebSocket) ends the copy at the upgrade
  request: the application's verdict is not parsed on this path.
* HTTP/2: without a filter the whole client stream is copied (the developer speaks to
  the client's HTTP/2 connection as if it were the only server). With a filter, a
  passive server-side ``h2`` connection watches the client's frames (its own output is
  thrown away, its limits are the protocol maxima so whatever the application allows
  passes) and every matching stream is replayed on one HTTP/2 connection to the
  developer: headers, body, end, resets. The developer's answers are read (for their
  flow-control window updates) and dropped.
* Never in the client's path: the copy waits in a bounded backlog; a developer that
  falls ``MIRROR_BACKLOG`` bytes behind, or a copy that breaks, stops the copy of that
  connection only, and the client does not notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from ..http import (
    Body,
    H2Preface,
    Invalid,
    RequestEnd,
    RequestFramer,
    RequestHead,
    RequestMatcher,
    Tunnel,
)
from .incoming_h2 import request_head

log = logging.getLogger("tether.agent.incoming")

READ_SIZE = 262144
MIRROR_BACKLOG = 4 << 20  # bytes a slow developer may lag behind before its copy stops
MAX_WINDOW = 2**31 - 1
LINGER = 10.0  # seconds a copy may take to finish after its client connection ended

Opener = Callable[[], Awaitable[socket.socket | None]]

_background: set[asyncio.Task[None]] = set()


class _Copy:
    """Bytes for the developer, written by a task of their own."""

    def __init__(self, open_dev: Opener, name: str) -> None:
        self.open_dev = open_dev
        self.name = name
        self.backlog: deque[bytes] = deque()
        self.size = 0
        self.dead = False
        self.eof = False
        self.wake = asyncio.Event()
        self.sock: socket.socket | None = None
        self.task: asyncio.Task[None] | None = None

    def send(self, data: bytes) -> None:
        if self.dead or not data:
            return
        self.size += len(data)
        if self.size > MIRROR_BACKLOG:
            self.stop("the local program is too slow for the mirror")
            return
        self.backlog.append(data)
        self.start()
        self.wake.set()

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
            _background.add(self.task)
            self.task.add_done_callback(_background.discard)

    def stop(self, why: str) -> None:
        if not self.dead:
            log.warning("%s: %s; this connection's copy stops", self.name, why)
        self.dead = True
        self.backlog.clear()
        self.wake.set()

    def close(self) -> None:
        self.eof = True
        self.wake.set()

    def answers(self, data: bytes) -> None:
        """What the developer sent back (dropped; subclasses read it)."""

    def drained(self) -> bool:
        """Everything the client sent has reached the developer's socket."""
        return not self.backlog

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sock = await self.open_dev()
        if sock is None:
            self.dead = True
            return
        self.sock = sock
        reader = loop.create_task(self._read_answers(sock))
        deadline: float | None = None
        try:
            while True:
                if self.eof and deadline is None:
                    deadline = loop.time() + LINGER
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except TimeoutError:
                    log.info("%s: the local program did not take the rest of the copy "
                             "within %.0f s", self.name, LINGER)
                    break
                self.wake.clear()
                while self.backlog and not self.dead:
                    data = self.backlog.popleft()
                    await loop.sock_sendall(sock, data)
                    self.size -= len(data)
                if self.dead or (self.eof and self.drained()):
                    break
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(reader, 10)
        except (OSError, TimeoutError):
            pass
        finally:
            reader.cancel()
            sock.close()

    async def _read_answers(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while data := await loop.sock_recv(sock, READ_SIZE):
                self.answers(data)


class _H2Copy(_Copy):
    """Matching HTTP/2 streams of the client, replayed on one connection to the developer."""

    def __init__(self, open_dev: Opener, name: str) -> None:
        super().__init__(open_dev, name)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False))
        self.conn.local_settings[SettingCodes.ENABLE_PUSH] = 0
        self.conn.initiate_connection()
        self.ids: dict[int, int] = {}  # client stream id -> developer stream id
        self.pending: dict[int, deque[bytes]] = {}  # developer stream id -> body waiting
        self.ending: set[int] = set()  # developer streams to end once their body is out
        self.buffered = 0

    def request(self, cs: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.dead:
            return
        try:
            ds = self.conn.get_next_available_stream_id()
            self.conn.send_headers(ds, headers, end_stream=ended)
        except h2.exceptions.H2Error as exc:
            self.stop(f"HTTP/2 copy failed ({exc})")
            return
        self.ids[cs] = ds
        self.pending[ds] = deque()
        self._flush()

    def data(self, cs: int, data: bytes) -> None:
        ds = self.ids.get(cs)
        if ds is None or self.dead:
            return
        self.buffered += len(data)
        if self.buffered > MIRROR_BACKLOG:
            self.stop("the local program is too slow for the mirror")
            return
        self.pending[ds].append(data)
        self._flush()

    def end(self, cs: int) -> None:
        ds = self.ids.pop(cs, None)
        if ds is not None:
            self.ending.add(ds)
            self._flush()

    def reset(self, cs: int) -> None:
        ds = self.ids.pop(cs, None)
        if ds is not None and not self.dead:
            self.pending.pop(ds, None)
            self.ending.discard(ds)
            with contextlib.suppress(h2.exceptions.H2Error):
                self.conn.reset_stream(ds, ErrorCodes.CANCEL)
            self._flush()

    def drained(self) -> bool:
        # Bodies may still wait for the program's window updates after the client left.
        return not self.backlog and not any(self.pending.values()) and not self.ending

    def _flush(self) -> None:
        """Move waiting body bytes within the developer's windows, then hand the frames on."""
        if self.dead:
            return
        try:
            for ds, chunks in list(self.pending.items()):
                while chunks:
                    room = min(self.conn.local_flow_control_window(ds),
                               self.conn.max_outbound_frame_size)
                    if room <= 0:
                        break
                    chunk = chunks.popleft()
                    if len(chunk) > room:
                        chunks.appendleft(chunk[room:])
                        chunk = chunk[:room]
                    self.conn.send_data(ds, chunk)
                    self.buffered -= len(chunk)
                if not chunks and ds in self.ending:
                    self.conn.end_stream(ds)
                    self.ending.discard(ds)
                    del self.pending[ds]
        except (h2.exceptions.H2Error, KeyError) as exc:
            self.stop(f"HTTP/2 copy failed ({exc!r})")
            return
        out = self.conn.data_to_send()
        if out:
            super().send(out)

    def answers(self, data: bytes) -> None:
        try:
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    self.pending.pop(ev.stream_id, None)
                    self.ending.discard(ev.stream_id)
        except h2.exceptions.H2Error as exc:
            self.stop(f"the local program's HTTP/2 broke the copy ({exc})")
            return
        self._flush()


class _H2Watch:
    """A passive server side of the client's HTTP/2 connection: events, never output."""

    def __init__(self, matcher: RequestMatcher, copy: _H2Copy) -> None:
        self.matcher = matcher
        self.copy = copy
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False, validate_outbound_headers=False))
        # Limits at the protocol's maxima: the client obeys the application's settings,
        # which can only be smaller; the settings apply when the client acks the app's.
        for code, value in ((SettingCodes.MAX_CONCURRENT_STREAMS, MAX_WINDOW),
                            (SettingCodes.INITIAL_WINDOW_SIZE, MAX_WINDOW),
                            (SettingCodes.MAX_FRAME_SIZE, 2**24 - 1),
                            (SettingCodes.HEADER_TABLE_SIZE, 1 << 16)):
            conn.local_settings[code] = value
        conn.initiate_connection()
        conn.increment_flow_control_window(MAX_WINDOW - 65535)
        conn.clear_outbound_data_buffer()
        self.conn = conn
        self.copied: set[int] = set()

    def feed(self, data: bytes) -> bool:
        """False once the watch cannot follow the connection any more."""
        try:
            events = self.conn.receive_data(data)
            for ev in events:
                self._event(ev)
        except (h2.exceptions.H2Error, ValueError) as exc:
            log.info("%s: HTTP/2 mirror copy stops: %r", self.copy.name, exc)
            return False
        finally:
            self.conn.clear_outbound_data_buffer()
        return True

    def _event(self, ev: Any) -> None:
        conn = self.conn
        if isinstance(ev, h2.events.RequestReceived):
            headers = [(bytes(n), bytes(v)) for n, v in ev.headers]
            ended = ev.stream_ended is not None
            if self.matcher.matches(request_head(headers)):
                self.copied.add(ev.stream_id)
                self.copy.request(ev.stream_id, headers, ended)
            if ended:
                self._forget(ev.stream_id)
        elif isinstance(ev, h2.events.DataReceived):
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if ev.stream_id in self.copied:
                self.copy.data(ev.stream_id, ev.data)
            if ev.stream_ended is not None:
                self._forget(ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self._forget(ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            if ev.stream_id in self.copied:  # rare in requests: the copy ends without them
                self.copy.end(ev.stream_id)
                self.copied.discard(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id in self.copied:
                self.copy.reset(ev.stream_id)
                self.copied.discard(ev.stream_id)
        elif isinstance(ev, h2.events.WindowUpdated) and ev.stream_id == 0:
            # The client opens windows for the application's data, never ours: keep the
            # watch's own send window from overflowing on long downloads.
            conn.outbound_flow_control_window = 0

    def _forget(self, sid: int) -> None:
        """The request is complete: end its copy and close the stream in the watch, so
        a long-lived connection does not keep every stream it ever carried."""
        if sid in self.copied:
            self.copy.end(sid)
            self.copied.discard(sid)
        with contextlib.suppress(h2.exceptions.H2Error):
            self.conn.reset_stream(sid, ErrorCodes.NO_ERROR)


async def mirror(client: socket.socket, matcher: RequestMatcher | None, open_app: Opener,
                 open_dev: Opener, name: str) -> None:
    """Serve ``client`` from the application and copy its requests (see the module doc).
    ``open_dev`` must hand the developer's answers back (they are read and dropped here)."""
    loop = asyncio.get_running_loop()
    app = await open_app()
    if app is None:
        return
    copy: _Copy = _Copy(open_dev, name)
    rf = RequestFramer()
    watch: _H2Watch | None = None
    state = {"copying": False, "teeing": True, "whole": False}

    def tee(data: bytes) -> None:
        nonlocal copy, watch
        if state["whole"]:
            copy.send(data)
            return
        if watch is not None:
            if not watch.feed(data):
                watch = None
                state["teeing"] = False
            return
        if not state["teeing"]:
            return
        for ev in rf.feed(data):
            if isinstance(ev, RequestHead):
                state["copying"] = matcher is None or matcher.matches(ev)
                if state["copying"]:
                    copy.send(ev.raw)
            elif isinstance(ev, (Body, RequestEnd)):
                if state["copying"]:
                    copy.send(ev.raw)
            elif isinstance(ev, H2Preface):
                if matcher is None:
                    state["whole"] = True
                    copy.send(ev.raw)
                else:
                    copy = _H2Copy(open_dev, name)
                    watch = _H2Watch(matcher, copy)
                    tee_h2 = watch.feed(ev.raw)
                    if not tee_h2:
                        watch = None
                        state["teeing"] = False
                return
            elif isinstance(ev, (Tunnel, Invalid)):
                state["teeing"] = False
        if rf.paused:  # an upgrade: the application's verdict is not parsed here
            state["teeing"] = False

    async def up() -> None:
        try:
            while data := await loop.sock_recv(client, READ_SIZE):
                await loop.sock_sendall(app, data)
                tee(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            app.shutdown(socket.SHUT_WR)

    async def down() -> None:
        try:
            while data := await loop.sock_recv(app, READ_SIZE):
                await loop.sock_sendall(client, data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    try:
        await asyncio.gather(up(), down())
    finally:
        copy.close()  # the copy finishes on its own; the client does not wait for it
        app.close()
