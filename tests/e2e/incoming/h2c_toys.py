"""A tiny h2c server and a one-connection h2c client, both on the `h2` package.

Server (``python h2c_toys.py PORT NAME``): every stream is answered ``NAME PATH LEN``
(LEN: request body bytes) with the trailer ``x-served-by: NAME``. ``/slow...`` answers
after 0.3 s, ``/big?n=N`` answers N bytes of ``x`` (flow control), ``/reset`` resets the
stream with ENHANCE_YOUR_CALM, ``/goaway`` sends GOAWAY after answering.

Client: ``h2_exchange(sock, requests)`` opens every request as a stream on the one
connection at once and collects (status, body, trailers, reset code) per request.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes


async def serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     name: str) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    heads: dict[int, dict[str, str]] = {}
    bodies: dict[int, int] = {}
    outgoing: dict[int, tuple[bytes, list[tuple[str, str]]]] = {}

    def flush_stream(sid: int) -> None:
        if sid not in outgoing:
            return
        data, trailers = outgoing[sid]
        while data:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                outgoing[sid] = (data, trailers)
                return
            conn.send_data(sid, data[:room])
            data = data[room:]
        conn.send_headers(sid, trailers, end_stream=True)
        del outgoing[sid]

    def respond(sid: int) -> None:
        path = heads[sid][":path"]
        if path.startswith("/reset"):
            conn.reset_stream(sid, ErrorCodes.ENHANCE_YOUR_CALM)
            return
        if path.startswith("/big"):
            body = b"x" * int(path.split("n=")[1])
        else:
            body = f"{name} {path} {bodies[sid]}\n".encode()
        conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
        outgoing[sid] = (body, [("x-served-by", name)])
        flush_stream(sid)
        if path.startswith("/goaway"):
            conn.close_connection(last_stream_id=sid)

    async def later(sid: int) -> None:
        await asyncio.sleep(0.3)
        respond(sid)
        writer.write(conn.data_to_send())

    writer.write(conn.data_to_send())
    while True:
        data = await reader.read(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                heads[ev.stream_id] = dict(ev.headers)
                bodies[ev.stream_id] = 0
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] += len(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                if heads[ev.stream_id][":path"].startswith("/slow"):
                    asyncio.get_running_loop().create_task(later(ev.stream_id))
                else:
                    respond(ev.stream_id)
            elif isinstance(ev, h2.events.WindowUpdated):
                for sid in list(outgoing) if ev.stream_id == 0 else [ev.stream_id]:
                    try:
                        flush_stream(sid)
                    except h2.exceptions.StreamClosedError:  # reset later in this batch
                        outgoing.pop(sid, None)
            elif isinstance(ev, h2.events.StreamReset):
                outgoing.pop(ev.stream_id, None)
        writer.write(conn.data_to_send())
        await writer.drain()
    writer.close()


def h2_exchange(sock: socket.socket, requests: list[dict[str, Any]],
                timeout: float = 5, read_slowly: bool = False) -> list[dict[str, Any]]:
    """requests: {"path", "headers": [(n, v)], "body": bytes}; all sent at once."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    results: dict[int, dict[str, Any]] = {}
    pending: dict[int, bytes] = {}  # request bodies waiting for the window

    def send_bodies() -> None:
        for sid, data in list(pending.items()):
            while data:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                conn.send_data(sid, data[:room])
                data = data[room:]
            pending[sid] = data
            if not data:
                conn.end_stream(sid)
                del pending[sid]

    for req in requests:
        sid = conn.get_next_available_stream_id()
        body = req.get("body", b"")
        conn.send_headers(sid, [(":method", "POST" if body else "GET"),
                                (":path", req["path"]), (":scheme", "http"),
                                (":authority", "pod"), *req.get("headers", [])],
                          end_stream=not body)
        if body:
            pending[sid] = body
        results[sid] = {"status": None, "body": b"", "trailers": {}, "reset": None}
    send_bodies()
    sock.settimeout(timeout)
    sock.sendall(conn.data_to_send())
    open_ = set(results)
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        if read_slowly:
            time.sleep(0.002)
        for ev in conn.receive_data(data):
            r = results.get(getattr(ev, "stream_id", 0))
            if r is None:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                r["status"] = dict(ev.headers)[":status"]
            elif isinstance(ev, h2.events.DataReceived):
                r["body"] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                r["trailers"] = dict(ev.headers)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                if isinstance(ev, h2.events.StreamReset):
                    r["reset"] = ev.error_code
                open_.discard(ev.stream_id)
        send_bodies()
        sock.sendall(conn.data_to_send())
    return [results[sid] for sid in sorted(results)]


async def main(port: int, name: str) -> None:
    server = await asyncio.start_server(lambda r, w: serve_conn(r, w, name), "0.0.0.0", port)
    print(f"h2c {name} listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
