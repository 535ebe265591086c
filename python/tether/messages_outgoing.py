"""Messages of the outgoing-traffic and DNS feature, and the relay stream both sides use.

Layer -> orchestrator:
  ``dns_lookup``   {name, family (0/2/10), addrconfig}        -> ``dns_lookup_reply``
                   {canon, addrs: [[family, packed-address-bytes], ...]} or an error whose
                   ``code`` is ``"eai"`` and ``errno`` the negated EAI_* value.
  ``out_connect``  {proto "tcp"|"udp", family, addr (packed bytes), port, connect (bool)}
                   -> ``out_connect_reply`` {mode "fd"|"relay", result (0 or errno),
                   local [addr, port], relay [addr, port] (relay mode)}; in fd mode the reply
                   carries the socket made inside the target (SCM_RIGHTS).
Orchestrator -> agent: ``agent_dns`` / ``agent_connect`` with the same fields, plus
  ``relay`` (bool) on agent_connect: the agent keeps the socket and streams its bytes.
Relay stream (both directions, no reply): ``out_data`` {conn, data}, ``out_ack`` {conn, n},
  ``out_close`` {conn, errno}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from . import protocol

log = logging.getLogger("tether.outgoing")

_I, _S, _B, _L, _BOOL = int, str, bytes, list, bool

protocol.register("dns_lookup", {"id": (_I, True), "name": (_S, True), "family": (_I, True),
                                 "addrconfig": (_BOOL, False)})
protocol.register("dns_lookup_reply", {"id": (_I, True), "canon": (_S, True),
                                       "addrs": (_L, True)})
protocol.register("agent_dns", {"id": (_I, True), "name": (_S, True), "family": (_I, True),
                                "addrconfig": (_BOOL, False)})
protocol.register("agent_dns_reply", {"id": (_I, True), "canon": (_S, True),
                                      "addrs": (_L, True)})
_CONNECT = {"id": (_I, True), "proto": (_S, True), "family": (_I, True), "addr": (_B, True),
            "port": (_I, True), "connect": (_BOOL, False)}
protocol.register("out_connect", _CONNECT)
protocol.register("out_connect_reply", {"id": (_I, True), "mode": (_S, True),
                                        "result": (_I, True), "local": (_L, False),
                                        "relay": (_L, False)})
protocol.register("agent_connect", {**_CONNECT, "relay": (_BOOL, False)})
protocol.register("agent_connect_reply", {"id": (_I, True), "result": (_I, True),
                                          "local": (_L, False), "conn": (_I, False)})
protocol.register("out_data", {"conn": (_I, True), "data": (_B, True)})
protocol.register("out_ack", {"conn": (_I, True), "n": (_I, True)})
protocol.register("out_close", {"conn": (_I, True), "errno": (_I, False)})

# Bytes in flight per relayed connection before the reader waits for acks: enough to keep
# a link busy, small enough that a slow reader cannot make the other side buffer a download.
WINDOW = 4 * 1024 * 1024
CHUNK = 256 * 1024


class RelayStream:
    """One end of a relayed connection: a local socket <-> ``out_data`` frames on a link.

    Bytes read from the socket go out as ``out_data`` (at most WINDOW unacknowledged);
    ``out_data`` received is written to the socket in arrival order and acknowledged once
    written.  EOF becomes ``out_close``; ``out_close`` received shuts the socket down
    (errno != 0: reset, so the program sees ECONNRESET rather than a clean EOF).
    """

    def __init__(self, conn: int, sock: socket.socket, send: Callable[[dict[str, Any]], None],
                 on_done: Callable[[int], None], started: bool = True) -> None:
        self.conn = conn
        self.sock = sock
        sock.setblocking(False)
        self._send = send
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._unacked = 0
        self._acked = asyncio.Event()
        # The agent's end waits for the orchestrator's first ack (n=0) before it reads, so
        # no out_data can overtake the reply that tells the orchestrator the conn number.
        self._started = asyncio.Event()
        if started:
            self._started.set()
        self._outq: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._read_done = False
        self._write_done = False
        self._closed = False
        self._tasks = [self._loop.create_task(self._reader()), self._loop.create_task(self._writer())]

    # -- from the link --
    def on_data(self, data: bytes) -> None:
        self._outq.put_nowait(data)

    def on_ack(self, n: int) -> None:
        self._started.set()
        self._unacked -= n
        self._acked.set()

    def on_close(self, err: int) -> None:
        if err:
            self.abort()
        else:
            self._outq.put_nowait(None)

    # -- pumps --
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
                self._unacked += len(data)
                self._send({"t": "out_data", "conn": self.conn, "data": data})
        except asyncio.CancelledError:
            return
        except OSError as exc:
            err = exc.errno or 104
        except Exception:  # the link went away
            return
        with contextlib.suppress(Exception):
            self._send({"t": "out_close", "conn": self.conn, "errno": err})
        self._read_done = True
        self._maybe_done()

    async def _writer(self) -> None:
        try:
            while True:
                data = await self._outq.get()
                if data is None:
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_WR)
                    break
                await self._loop.sock_sendall(self.sock, data)
                with contextlib.suppress(Exception):
                    self._send({"t": "out_ack", "conn": self.conn, "n": len(data)})
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
        """Reset the connection (the other side failed): the program sees ECONNRESET."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._on_done(self.conn)


class RelayTable:
    """The relayed connections of one link, by connection number."""

    def __init__(self) -> None:
        self.streams: dict[int, RelayStream] = {}

    def add(self, stream: RelayStream) -> None:
        self.streams[stream.conn] = stream

    def done(self, conn: int) -> None:
        self.streams.pop(conn, None)

    def on_message(self, msg: dict[str, Any]) -> None:
        stream = self.streams.get(msg["conn"])
        if stream is None:
            return
        if msg["t"] == "out_data":
            stream.on_data(msg["data"])
        elif msg["t"] == "out_ack":
            stream.on_ack(msg["n"])
        else:
            stream.on_close(int(msg.get("errno", 0) or 0))

    def abort_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.abort()
