"""Byte streams multiplexed over a Link, for links that cannot carry descriptors.

Both outgoing connections (the agent's socket to a host only the pod reaches) and incoming
streams (a stolen client socket, or the socketpair end the agent feeds with filtered
requests or mirrored copies) use this when ``link.can_pass_fds`` is False (TCP links to
Kubernetes agents) or a relay is forced (TETHER_OUTGOING_RELAY / TETHER_INCOMING_RELAY).

Messages (both directions, no reply), keyed by ``conn``, a number the agent assigns
(one counter for every feature, so one table per link serves them all):

  ``relay_data``  {conn, data}   bytes read from one end, written to the other in order
  ``relay_ack``   {conn, n}      n bytes were written; ``n`` = 0 is "start": the side
                                 that registered a stream before the other knew its
                                 number reads nothing until this first ack arrives
  ``relay_close`` {conn, errno}  EOF (errno 0: half-close, SHUT_WR on the other end) or a
                                 failure (errno != 0: the other end is reset, SO_LINGER 0)

UDP (outgoing only) uses the same messages with :class:`DatagramRelay`: one ``relay_data``
per datagram (boundaries kept), ``relay_ack`` counts datagrams, and datagrams beyond
DGRAM_WINDOW in flight are dropped rather than buffered.

Flow control: at most WINDOW bytes unacknowledged per stream and direction, so a slow
reader on either side stops the reading on the other instead of growing buffers. A stream
ends when both directions are done, or at the first failure. When the link closes, every
stream of its table is reset: an error, not a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as E
import itertools
import logging
import socket
from collections.abc import Callable
from typing import Any

from . import protocol

log = logging.getLogger("tether.relay")

protocol.register("relay_data", {"conn": (int, True), "data": (bytes, True)})
protocol.register("relay_ack", {"conn": (int, True), "n": (int, True)})
protocol.register("relay_close", {"conn": (int, True), "errno": (int, False)})

KINDS = ("relay_data", "relay_ack", "relay_close")
# The start of a relay_data body, {"t": "relay_data", "conn": N, "data": <bin>}: a fixmap of
# three, then "t"; RelayStream appends the conn number and the bin header to it.
_DATA_HEAD = b"\x83\xa1t\xaarelay_data\xa4conn"

# Bytes in flight per relayed stream before the reader waits for acks: enough to keep
# a link busy, small enough that a slow reader cannot make the other side buffer a download.
WINDOW = 4 * 1024 * 1024
CHUNK = 256 * 1024

_conn_ids = itertools.count(1)


def next_conn() -> int:
    """A stream number (the agent assigns them; one counter for every feature)."""
    return next(_conn_ids)


class RelayStream:
    """One end of a relayed stream: a local socket <-> ``relay_data`` frames on a link.

    Bytes read from the socket go out as ``relay_data`` (at most WINDOW unacknowledged);
    ``relay_data`` received is written to the socket in arrival order and acknowledged once
    written.  EOF becomes ``relay_close``; ``relay_close`` received shuts the socket down
    (errno != 0: reset, so the program sees ECONNRESET rather than a clean EOF).  A local
    failure (the socket errors, or the stream is closed before both directions finished)
    tells the other end with a non-zero errno, so neither side is left waiting.

    ``started=False``: read nothing until the other end's first ``relay_ack``.
    ``discard=True``: bytes read from the socket are dropped, not sent (a mirrored copy:
    the program's answers go nowhere); EOF is still reported.
    """

    def __init__(self, conn: int, sock: socket.socket, send: Callable[[dict[str, Any]], None],
                 on_done: Callable[[int], None], started: bool = True,
                 discard: bool = False, link: Any = None) -> None:
        self.conn = conn
        self.sock = sock
        sock.setblocking(False)
        self._send = send
        # With the link itself, data goes out as a pre-encoded header plus the bytes read
        # (no copy of a 256 KiB chunk into a frame).
        self._send_frame = getattr(link, "send_frame", None)
        self._data_head = _DATA_HEAD + protocol.pack_int(conn) + b"\xa4data"
        self._writing = False
        self._on_done = on_done
        self._discard = discard
        self._loop = asyncio.get_running_loop()
        self._unacked = 0
        self._acked = asyncio.Event()
        self._started = asyncio.Event()
        if started:
            self._started.set()
        self._outq: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._read_done = False
        self._write_done = False
        self._close_sent = False
        self._closed = False
        self._tasks = [self._loop.create_task(self._reader()),
                       self._loop.create_task(self._writer())]

    # -- from the link --
    def on_data(self, data: bytes) -> None:
        if not self._writing and self._outq.empty() and not self._closed:
            # Nothing queued: write at once (no task wake-up per chunk); what the socket
            # does not take now goes to the writer, in order.
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self.abort()
                return
            if n:
                self._tell({"t": "relay_ack", "conn": self.conn, "n": n})
            if n == len(data):
                return
            data = data[n:]
        self._outq.put_nowait(data)

    def on_ack(self, n: int) -> None:
        self._started.set()
        self._unacked -= n
        self._acked.set()

    def on_close(self, err: int) -> None:
        if err:
            self._close_sent = True  # the other end is gone: nothing to tell it
            self.abort()
        else:
            self._outq.put_nowait(None)

    # -- pumps --
    def _tell(self, msg: dict[str, Any]) -> bool:
        try:
            self._send(msg)
        except Exception:  # the link went away: the table resets everything
            return False
        return True

    async def _reader(self) -> None:
        err = 0
        try:
            await self._started.wait()
            while True:
                while self._unacked >= WINDOW:
                    self._acked.clear()
                    await self._acked.wait()
                data = await self._loop.sock_recv(self.sock, CHUNK)
                if not data:
                    break
                if self._discard:
                    continue
                self._unacked += len(data)
                if not self._send_data(data):
                    return
        except asyncio.CancelledError:
            return
        except OSError as exc:
            err = exc.errno or E.ECONNRESET
        self._close_sent = True
        self._tell({"t": "relay_close", "conn": self.conn, "errno": err})
        if err:
            self.abort()
            return
        self._read_done = True
        self._maybe_done()

    def _send_data(self, data: bytes) -> bool:
        if self._send_frame is None:
            return self._tell({"t": "relay_data", "conn": self.conn, "data": data})
        head = self._data_head + protocol.bin_header(len(data))
        try:
            self._send_frame((head, data), len(head) + len(data))
        except Exception:  # the link went away: the table resets everything
            return False
        return True

    async def _writer(self) -> None:
        try:
            while True:
                data = await self._outq.get()
                if data is None:
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_WR)
                    break
                self._writing = True
                await self._loop.sock_sendall(self.sock, data)
                self._writing = False
                self._tell({"t": "relay_ack", "conn": self.conn, "n": len(data)})
        except asyncio.CancelledError:
            return
        except OSError:
            self.abort()
            return
        self._write_done = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._read_done and self._write_done:
            self.close()

    def abort(self) -> None:
        """Reset the connection (a side failed): the program sees ECONNRESET."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.close(E.ECONNRESET)

    def close(self, err: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._close_sent:
            # Closed before our reading side reported its end: the other end must not wait.
            self._close_sent = True
            self._tell({"t": "relay_close", "conn": self.conn, "errno": err or E.ECONNRESET})
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._on_done(self.conn)


# Datagrams (UDP over the relay): one ``relay_data`` per datagram, boundaries kept.
DGRAM_WINDOW = 64  # datagrams in flight per relay and direction; beyond it they are dropped
DGRAM_MAX = 65535


class DatagramRelay:
    """One end of a relayed UDP flow: a connected UDP socket <-> ``relay_data`` frames.

    Each datagram read becomes one ``relay_data``; each ``relay_data`` received is sent as
    one datagram and acknowledged with ``relay_ack n=1`` (acks count datagrams here). At
    most DGRAM_WINDOW datagrams are unacknowledged: more are dropped, as UDP may, so a
    flood buffers nothing. A datagram that cannot be sent at once (EAGAIN, ICMP errors) is
    dropped too. ``learn_peer``: the socket is an unconnected loopback socket that the
    program's socket sends to; it connects to the first sender it hears from (loopback
    only) and ignores everyone else.  ``only_from``: datagrams from any other address
    are dropped (the relay's private pair, features/outgoing.py).  ``relay_close`` or
    the link closing ends the flow.
    """

    def __init__(self, conn: int, sock: socket.socket, send: Callable[[dict[str, Any]], None],
                 on_done: Callable[[int], None], started: bool = True,
                 learn_peer: bool = False, only_from: Any = None) -> None:
        self.conn = conn
        self._only_from = tuple(only_from[:2]) if only_from is not None else None
        self.sock = sock
        sock.setblocking(False)
        self._send = send
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._unacked = 0
        self._peer: Any = None if learn_peer else True
        self._reading = False
        self._closed = False
        self.dropped = 0
        if started:
            self._start()

    def _start(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self._loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(DGRAM_WINDOW):
            try:
                data, addr = self.sock.recvfrom(DGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error on a connected socket: UDP just goes on
                continue
            if self._only_from is not None and tuple(addr[:2]) != self._only_from:
                continue  # queued before the socket was connected: not the program's
            if self._peer is None:
                if addr[0] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
                    continue
                try:
                    self.sock.connect(addr)
                except OSError:
                    continue
                self._peer = addr
            if self._unacked >= DGRAM_WINDOW:
                self.dropped += 1
                continue
            self._unacked += 1
            try:
                self._send({"t": "relay_data", "conn": self.conn, "data": data})
            except Exception:  # the link went away: the table resets everything
                return

    # -- from the link --
    def on_data(self, data: bytes) -> None:
        if self._peer is not None and not self._closed:
            try:
                self.sock.send(data)
            except OSError:
                self.dropped += 1
        with contextlib.suppress(Exception):
            self._send({"t": "relay_ack", "conn": self.conn, "n": 1})

    def on_ack(self, n: int) -> None:
        self._unacked = max(0, self._unacked - n)
        self._start()

    def on_close(self, err: int) -> None:
        self.close(notify=False)

    def abort(self) -> None:
        self.close()

    def close(self, err: int = 0, notify: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
        if notify:
            with contextlib.suppress(Exception):
                self._send({"t": "relay_close", "conn": self.conn, "errno": err})
        with contextlib.suppress(OSError):
            self.sock.close()
        self._on_done(self.conn)


class RelayTable:
    """The relayed streams of one link, by stream number."""

    def __init__(self) -> None:
        self.streams: dict[int, RelayStream | DatagramRelay] = {}
        self._done_hooks: dict[int, Callable[[], None]] = {}

    def add(self, stream: RelayStream | DatagramRelay,
            on_done: Callable[[], None] | None = None) -> None:
        self.streams[stream.conn] = stream
        if on_done is not None:
            self._done_hooks[stream.conn] = on_done

    def done(self, conn: int) -> None:
        self.streams.pop(conn, None)
        hook = self._done_hooks.pop(conn, None)
        if hook is not None:
            hook()

    def on_message(self, msg: dict[str, Any]) -> None:
        stream = self.streams.get(msg["conn"])
        if stream is None:
            return
        if msg["t"] == "relay_data":
            stream.on_data(msg["data"])
        elif msg["t"] == "relay_ack":
            stream.on_ack(msg["n"])
        else:
            stream.on_close(int(msg.get("errno", 0) or 0))

    def abort_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.abort()


def table(link: Any) -> RelayTable:
    """The relay table of ``link`` (either side), made and wired on first use: the link's
    ``relay_*`` messages go to it, and its streams are reset when the link closes."""
    tab: RelayTable | None = link.state.get("relays")
    if tab is not None:
        return tab
    tab = link.state["relays"] = RelayTable()

    async def on_message(_link: Any, msg: dict[str, Any]) -> None:
        # No await before dispatch: frames of one stream are handled in arrival order.
        tab.on_message(msg)
        return None

    for kind in KINDS:
        link.handlers[kind] = on_message

    async def reset_when_closed() -> None:
        await link.closed.wait()
        tab.abort_all()

    task = asyncio.get_running_loop().create_task(reset_when_closed())
    link.state["relays_watch"] = task  # keep a reference
    # A resumable link whose connection dropped: the streams' bytes in flight are lost, so
    # they are reset too (a resumed link carries new streams only).
    on_interrupt = getattr(link, "on_interrupt", None)
    if on_interrupt is not None:
        on_interrupt.append(lambda _reason: tab.abort_all())
    return tab
