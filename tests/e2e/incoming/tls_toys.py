"""Servers and clients for the HTTPS scenes (tests/e2e/incoming/test_tls_steal.py).

``python tls_toys.py http PORT NAME [CERT KEY [ALPN,...]]``: answers every HTTP/1.1 or HTTP/2 request
(ALPN, or the h2 preface on a plain socket) with ``NAME PATH via PROTO`` (PROTO: http/1.1
or h2, plus ``+tls`` over TLS). With CERT and KEY (paths, read the way any program reads
them: a local program under tether reads the target's files) it serves TLS.
``/sni...`` paths are answered with ``NAME sni=<the SNI the server got>``.
``x-copies: PATH`` request header: also append ``NAME METHOD PATH`` to PATH (the mirror
scenes count what the local program saw).

``python tls_toys.py grpc PORT NAME [CERT KEY]``: a gRPC server (grpcio) whose method
``/tether.Echo/Say`` answers ``NAME: <request>``.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import h2.config
import h2.connection
import h2.events

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _note(headers: dict[str, str], name: str, method: str, path: str, size: int = 0) -> None:
    target = headers.get("x-copies")
    if target:
        with open(target, "a") as f:
            f.write(f"{name} {method} {path}{f' {size}' if size else ''}\n")


def _answer(writer: asyncio.StreamWriter, name: str, path: str, via: str) -> bytes:
    if path.startswith("/sni"):
        obj = writer.get_extra_info("ssl_object")
        return f"{name} sni={getattr(obj, 'sni', None)}\n".encode()
    return f"{name} {path} via {via}\n".encode()


async def serve_h2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str,
                   via: str, first: bytes) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    heads: dict[int, dict[str, str]] = {}
    sizes: dict[int, int] = {}
    data = first
    while True:
        for ev in conn.receive_data(data) if data else []:
            if isinstance(ev, h2.events.RequestReceived):
                heads[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                sizes[ev.stream_id] = sizes.get(ev.stream_id, 0) + len(ev.data)
            elif isinstance(ev, h2.events.StreamEnded):
                h = heads.pop(ev.stream_id)
                _note(h, name, h[":method"], h[":path"], sizes.pop(ev.stream_id, 0))
                body = _answer(writer, name, h[":path"], via)
                conn.send_headers(ev.stream_id, [(":status", "200"),
                                                 ("content-length", str(len(body)))])
                conn.send_data(ev.stream_id, body, end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()
        data = await reader.read(65536)
        if not data:
            break
    writer.close()


async def serve_http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str,
                      via: str, first: bytes) -> None:
    line = first
    while line:
        method, path, _ = line.decode().split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b""):
                break
            k, _, v = h.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        if n:
            await reader.readexactly(n)
        _note(headers, name, method, path, n)
        body = _answer(writer, name, path, via)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        line = await reader.readline()
    writer.close()


async def serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     name: str) -> None:
    obj = writer.get_extra_info("ssl_object")
    tls = "+tls" if obj is not None else ""
    try:
        if obj is not None and obj.selected_alpn_protocol() == "h2":
            await serve_h2(reader, writer, name, "h2" + tls, b"")
            return
        first = await reader.readline()
        if first.startswith(b"PRI * HTTP/2.0"):
            await serve_h2(reader, writer, name, "h2" + tls, first + await reader.readexactly(
                len(PREFACE) - len(first)))
        else:
            await serve_http1(reader, writer, name, "http/1.1" + tls, first)
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        writer.close()


async def main_http(port: int, name: str, cert: str | None, key: str | None,
                    alpn: str = "h2,http/1.1") -> None:
    ctx = None
    if cert and key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(alpn.split(","))

        def remember(obj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            obj.sni = server_name  # type: ignore[attr-defined]
        ctx.sni_callback = remember
    server = await asyncio.start_server(lambda r, w: serve_conn(r, w, name), "0.0.0.0", port,
                                        ssl=ctx)
    print(f"{name} listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main_grpc(port: int, name: str, cert: str | None, key: str | None) -> None:
    from concurrent import futures

    import grpc

    def say(request: bytes, context: object) -> bytes:
        return f"{name}: ".encode() + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "tether.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server.add_generic_rpc_handlers((handler,))
    if cert and key:
        with open(cert, "rb") as c, open(key, "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(f"0.0.0.0:{port}", creds)
    else:
        server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print(f"grpc {name} listening on {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    kind, port_text, who = sys.argv[1:4]
    cert_path = sys.argv[4] if len(sys.argv) > 4 else None
    key_path = sys.argv[5] if len(sys.argv) > 5 else None
    if kind == "grpc":
        main_grpc(int(port_text), who, cert_path, key_path)
    else:
        asyncio.run(main_http(int(port_text), who, cert_path, key_path, *sys.argv[6:7]))
