"""TLS around the filtered-steal router: the agent terminates a stolen HTTPS connection.

On a port listed in ``tls_steal`` the agent is the server its client expects: it
completes the client's TLS handshake with the target's own certificate and key (read from
the target's filesystem, ``/proc/<pid>/root``, so clients see the same chain as without
tether), and the router gets the decrypted stream on a plain socket. Its two upstreams
are wrapped the same way:

    client ==TLS== agent(server) --plain socketpair--> Router --open_app--> plain ==TLS==> app
                                                              --open_dev--> plain [==TLS==] dev

* The application: a new TLS connection from the agent (the bypass mark keeps it out of
  the redirect), offering the ALPN protocol the client chose and the client's SNI. The
  agent verifies it like a client that pins the target's own certificate: the chain the
  app presents must lead to a certificate in ``cert_pem`` (partial chains allowed, so a
  leaf without its CA is its own anchor). No host-name check: the pin is exact, and a
  client that dialled an IP without SNI still works.
* The developer: the decrypted stream as it is (``tls_delivery.protocol: tcp``) or a TLS
  connection from the agent (``tls``), trusting ``trust_roots`` / ``server_cert`` (read on
  the developer's machine and sent along) or, when neither is given, the target's own
  certificate (the local program, reading the target's files through tether, serves the
  same one); the name checked and sent is ``server_name`` or the client's SNI.
* mTLS targets: ``client_verification`` makes the agent ask its clients for a certificate
  and verify it against ``trust_roots`` (paths in the target; ``allow_anonymous`` lets a
  client without one through). The application then sees the agent as its client: with
  ``app_client_cert`` the agent presents that certificate (e.g. the pod's own client
  certificate) to the application. The original client's certificate cannot be forwarded
  (the agent does not have its key).

Mirror mode on a TLS port cannot sniff (the packets are encrypted): the redirect path is
used, every byte goes to the application, and a copy of each request (matching the
filter, if any) goes to the developer (:mod:`.incoming_tee`).

Every byte pump is a pair of asyncio transports (``ssl`` memory BIOs inside asyncio's SSL
protocol) joined with flow control: a slow side pauses reading on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..http import RequestMatcher
from . import incoming_tee
from .files import openat2_in_root

log = logging.getLogger("tether.agent.incoming")

HANDSHAKE_TIMEOUT = 10.0
FIRST_BYTE_TIMEOUT = 3.0
PUMP_BUFFER = 256 * 1024
PROBE_TIMEOUT = 3.0
MAX_PEM = 1 << 20
DEFAULT_ALPN = ("h2", "http/1.1")

Opener = Callable[[], Awaitable[socket.socket | None]]


class TlsConfigError(Exception):
    """A TLS setting that cannot work; the message starts with the config key."""


@dataclass
class Delivery:
    protocol: str = "tls"  # "tcp" | "tls"
    cadata: str | None = None  # PEM the agent trusts for the local program (None: cert_pem)
    pinned: bool = True  # cadata is an exact certificate, not a CA: no host-name check
    server_name: str | None = None


@dataclass
class TlsPort:
    """One ``tls_steal`` port, loaded: contexts for both sides of the agent."""

    port: int
    key: str  # JSON path of the entry, for messages
    server_ctx: ssl.SSLContext
    alpn: list[str]  # what the agent offers its clients
    cert_pem: str
    app_client_cert: tuple[bytes, bytes] | None
    delivery: Delivery
    _app_ctxs: dict[tuple[str, ...], ssl.SSLContext]
    _dev_ctxs: dict[tuple[str, ...], ssl.SSLContext]

    def app_context(self, alpn: str | None) -> ssl.SSLContext:
        protos = (alpn,) if alpn else ()
        ctx = self._app_ctxs.get(protos)
        if ctx is None:
            ctx = _client_context(self.cert_pem, pinned=True, alpn=protos,
                                  client_cert=self.app_client_cert,
                                  client_key=f"{self.key}.app_client_cert")
            self._app_ctxs[protos] = ctx
        return ctx

    def dev_context(self, alpn: str | None) -> ssl.SSLContext:
        protos = (alpn,) if alpn else ()
        ctx = self._dev_ctxs.get(protos)
        if ctx is None:
            d = self.delivery
            ctx = _client_context(d.cadata or self.cert_pem, pinned=d.pinned, alpn=protos)
            self._dev_ctxs[protos] = ctx
        return ctx


# ---- loading (subscribe time) ----

def _read_in_target(root: int, path: str, key: str, what: str) -> bytes:
    try:
        fd = openat2_in_root(root, path, os.O_RDONLY)
    except FileNotFoundError:
        raise TlsConfigError(f"{key}: {path} does not exist in the target ({what})") from None
    except OSError as exc:
        raise TlsConfigError(
            f"{key}: cannot read {path} in the target ({what}): {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_PEM + 1)
    except OSError as exc:
        raise TlsConfigError(
            f"{key}: cannot read {path} in the target ({what}): {exc.strerror}") from None
    if len(data) > MAX_PEM:
        raise TlsConfigError(f"{key}: {path} in the target is larger than 1 MiB; "
                             f"expected a PEM {what}")
    return data


def _memfile(data: bytes, name: str) -> int:
    """A memory file holding ``data``: ssl loads keys only from paths, and the target's
    key must not be written to any disk."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def _load_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes, cert_key: str,
                key_key: str) -> None:
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise TlsConfigError(f"{cert_key}: not a PEM certificate "
                             "(expected a -----BEGIN CERTIFICATE----- block)")
    if b"PRIVATE KEY-----" not in key:
        raise TlsConfigError(f"{key_key}: not a PEM private key "
                             "(expected a -----BEGIN ... PRIVATE KEY----- block)")
    cfd, kfd = _memfile(cert, "tether-cert"), _memfile(key, "tether-key")

    def no_password() -> bytes:
        raise TlsConfigError(f"{key_key}: the private key is encrypted; tether needs the "
                             "unencrypted key the application itself loads")

    try:
        ctx.load_cert_chain(f"/proc/self/fd/{cfd}", f"/proc/self/fd/{kfd}",
                            password=no_password)
    except ssl.SSLError as exc:
        text = str(exc)
        if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
            raise TlsConfigError(f"{key_key}: the private key does not match the "
                                 f"certificate in {cert_key}") from None
        if "PEM" in text and "cert" not in text.lower():
            raise TlsConfigError(f"{key_key}: cannot load the private key ({exc.reason})"
                                 ) from None
        raise TlsConfigError(f"{cert_key}: cannot load the certificate and key "
                             f"({exc.reason or text})") from None
    finally:
        os.close(cfd)
        os.close(kfd)


def _client_context(cadata: str, *, pinned: bool, alpn: tuple[str, ...],
                    client_cert: tuple[bytes, bytes] | None = None,
                    client_key: str = "app_client_cert") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = not pinned
    ctx.verify_mode = ssl.CERT_REQUIRED
    # A pinned leaf is its own trust anchor, and a chain file may hold an intermediate.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=cadata)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if client_cert is not None:
        _load_chain(ctx, client_cert[0], client_cert[1], f"{client_key}.cert_pem",
                    f"{client_key}.key_pem")
    return ctx


def load_port(root: int, spec: dict[str, Any]) -> TlsPort:
    """Build a port's TLS settings from the ``tls`` entry of ``in_subscribe``.

    Raises TlsConfigError with the config key of whatever cannot work."""
    key = str(spec.get("key") or "tls_steal")
    cert_path, key_path = str(spec["cert_pem"]), str(spec["key_pem"])
    ck, kk = f"{key}.cert_pem", f"{key}.key_pem"
    cert = _read_in_target(root, cert_path, ck, "certificate")
    pkey = _read_in_target(root, key_path, kk, "private key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, cert, pkey, ck, kk)
    alpn = list(spec.get("alpn_protocols") or DEFAULT_ALPN)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    cv = spec.get("client_verification")
    if cv:
        roots = b"".join(
            _read_in_target(root, str(p), f"{key}.client_verification.trust_roots[{i}]",
                            "CA certificates") for i, p in enumerate(cv.get("trust_roots", ())))
        try:
            ctx.load_verify_locations(cadata=roots.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise TlsConfigError(f"{key}.client_verification.trust_roots: not PEM "
                                 f"certificates ({exc.reason})") from None
        ctx.verify_mode = ssl.CERT_OPTIONAL if cv.get("allow_anonymous") else ssl.CERT_REQUIRED

    def remember_sni(obj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        obj.tether_sni = name
    ctx.sni_callback = remember_sni
    acc = spec.get("app_client_cert")
    app_client = None
    if acc:
        ak = f"{key}.app_client_cert"
        app_client = (_read_in_target(root, str(acc["cert_pem"]), f"{ak}.cert_pem",
                                      "client certificate"),
                      _read_in_target(root, str(acc["key_pem"]), f"{ak}.key_pem",
                                      "client private key"))
    d = spec.get("delivery") or {}
    roots_pem = "".join(d.get("trust_roots") or ())
    server_cert = d.get("server_cert")
    delivery = Delivery(protocol=str(d.get("protocol") or "tls"),
                        cadata=roots_pem or server_cert or None,
                        pinned=not roots_pem,
                        server_name=d.get("server_name"))
    port = TlsPort(int(spec["port"]), key, ctx, alpn, cert.decode("ascii", "replace"),
                   app_client, delivery, {}, {})
    try:  # fail now on unusable settings, not at the first request
        port.app_context(None)
        if delivery.protocol == "tls":
            port.dev_context(None)
    except ssl.SSLError as exc:
        where = (f"{key}.cert_pem" if not delivery.cadata
                 else f"{key.partition('.tls_steal')[0]}.tls_delivery")
        raise TlsConfigError(f"{where}: not usable as trusted certificates ({exc.reason})"
                             ) from None
    return port


async def probe(port: TlsPort, connect: Opener) -> None:
    """Check at subscribe time that the application serves TLS with that certificate, and
    offer clients only the ALPN protocols it accepts (an application without HTTP/2 must
    not see the agent negotiate h2 on its behalf).

    Nothing listening is fine (the app may start later); plain text or another
    certificate is a configuration error."""
    accepted: list[str] = []
    for proto in port.alpn or [None]:
        sock = await connect()
        if sock is None:
            if proto == (port.alpn or [None])[0]:
                log.info("port %d: nothing answers yet; TLS is checked at the first "
                         "connection", port.port)
                return
            break
        selected = await _probe_one(port, sock, proto)
        if proto is None:
            return
        if selected == proto:
            accepted.append(proto)
        elif selected is None:  # no ALPN at all: the application speaks HTTP/1
            accepted += [p for p in port.alpn if p.startswith("http/") and p not in accepted]
            break
    if accepted != port.alpn:
        log.info("port %d: the application accepts %s of %s; offering clients that",
                 port.port, accepted or "no ALPN protocol", port.alpn)
        port.alpn = accepted
        port.server_ctx.set_alpn_protocols(accepted)


async def _probe_one(port: TlsPort, sock: socket.socket, proto: str | None) -> str | None:
    """The protocol the application selects when offered ``proto`` (None: no ALPN in its
    answer, "": refused with the no_application_protocol alert)."""
    loop = asyncio.get_running_loop()
    try:
        tr, _ = await asyncio.wait_for(loop.create_connection(
            asyncio.Protocol, sock=sock, ssl=port.app_context(proto), server_hostname="",
            ssl_handshake_timeout=PROBE_TIMEOUT), PROBE_TIMEOUT + 1)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise TlsConfigError(
            f"{port.key}.cert_pem: the application on port {port.port} presents another "
            f"certificate ({exc.verify_message}); give the certificate it serves") from None
    except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
        sock.close()
        why = getattr(exc, "reason", None) or exc.__class__.__name__
        if "NO_APPLICATION_PROTOCOL" in str(why):
            return ""  # TLS, but not this protocol
        raise TlsConfigError(
            f"{port.key}.port: port {port.port} of the target does not answer with TLS "
            f"({why}); list only ports the application serves with TLS") from None
    selected = tr.get_extra_info("ssl_object").selected_alpn_protocol()
    tr.close()
    return selected


# ---- byte pumps ----

class _Half(asyncio.Protocol):
    """One transport of a pump; what it receives goes to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []
        self.pending_eof = False
        self.tls = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def attach(self, peer: _Half) -> None:
        self.peer = peer
        for data in self.pending:
            peer.write(data)
        self.pending.clear()
        if self.pending_eof:
            peer.end()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def end(self) -> None:
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if tr.can_write_eof():
            tr.write_eof()
        else:  # TLS: close_notify (after what is buffered) is its only way to say "done"
            tr.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self.pending_eof = True
        else:
            self.peer.end()
        # Plain sockets half-close (the other direction stays open); TLS cannot.
        return not self.tls

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()  # flushes first
        if not self.closed.done():
            self.closed.set_result(None)


async def _wrap(raw: socket.socket, ctx: ssl.SSLContext, *, server: bool,
                server_hostname: str | None = None) -> tuple[socket.socket, Any]:
    """Run TLS over ``raw`` (taken over); returns a plain socket carrying the clear text
    and the SSL object (ALPN, SNI). Raises on a failed handshake."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    tls_half, plain_half = _Half(), _Half()
    tls_half.tls = True
    try:
        if server:
            tls_tr, _ = await loop.connect_accepted_socket(
                lambda: tls_half, sock=raw, ssl=ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        else:
            tls_tr, _ = await loop.create_connection(  # "": no SNI (asyncio needs a str)
                lambda: tls_half, sock=raw, ssl=ctx, server_hostname=server_hostname or "",
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        await loop.connect_accepted_socket(lambda: plain_half, sock=ours)
    except BaseException:
        raw.close()
        ours.close()
        theirs.close()
        raise
    # Room for one router read (256 KiB) before the other side is paused: with asyncio's
    # 64 KiB default a bulk transfer pauses and resumes the pump several times per read.
    for half in (tls_half, plain_half):
        assert half.transport is not None
        half.transport.set_write_buffer_limits(high=PUMP_BUFFER)
    tls_half.attach(plain_half)
    plain_half.attach(tls_half)
    theirs.setblocking(False)
    return theirs, tls_tr.get_extra_info("ssl_object")


@dataclass
class Handshake:
    plain: socket.socket
    sni: str | None
    alpn: str | None


async def accept(port: TlsPort, conn: socket.socket) -> Handshake:
    """The client's handshake with the target's certificate (``conn`` is taken over)."""
    plain, obj = await _wrap(conn, port.server_ctx, server=True)
    return Handshake(plain, getattr(obj, "tether_sni", None), obj.selected_alpn_protocol())


def app_opener(port: TlsPort, hs: Handshake, open_app: Opener, name: str) -> Opener:
    async def open_tls_app() -> socket.socket | None:
        sock = await open_app()
        if sock is None:
            return None
        try:
            plain, obj = await _wrap(sock, port.app_context(hs.alpn), server=False,
                                     server_hostname=hs.sni)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            log.warning("%s: TLS to the application failed: %s", name, exc)
            return None
        if hs.alpn == "h2" and obj.selected_alpn_protocol() != "h2":
            log.warning("%s: the application did not accept h2", name)
        return plain
    return open_tls_app


def dev_opener(port: TlsPort, hs: Handshake, open_dev: Opener, name: str) -> Opener:
    if port.delivery.protocol == "tcp":
        return open_dev

    async def open_tls_dev() -> socket.socket | None:
        sock = await open_dev()
        if sock is None:
            return None
        d = port.delivery
        try:
            plain, obj = await _wrap(sock, port.dev_context(hs.alpn), server=False,
                                     server_hostname=d.server_name or hs.sni)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            # The request goes to the application instead (as when the program is gone).
            log.warning("%s: TLS to the local program failed: %s", name, exc)
            return None
        if hs.alpn == "h2" and obj.selected_alpn_protocol() != "h2":
            # An HTTP/1 server would now get HTTP/2 frames: say why the stream fails.
            log.warning("%s: the local program did not accept h2 over TLS (serve HTTP/2, or "
                        "set tls_delivery.protocol to tcp)", name)
        return plain
    return open_tls_dev


async def _first_byte(conn: socket.socket, timeout: float) -> bytes | None:
    """The client's first byte, left in the socket (None: nothing within ``timeout``)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(conn.fileno())
    try:
        return conn.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except OSError:
        return b""


async def serve(port: TlsPort, conn: socket.socket, mode: str, matcher: RequestMatcher | None,
                open_app: Opener, open_dev: Opener, name: str,
                route: Callable[[socket.socket, RequestMatcher, Opener, Opener],
                                Awaitable[None]],
                whole: Callable[[], Awaitable[None]]) -> None:
    """Terminate one stolen connection's TLS and route (steal) or copy (mirror) it.
    A connection that does not open with a TLS handshake record (plain HTTP to the
    HTTPS port, or a silent client) goes to the application whole (``whole``), which
    answers it as it would without tether. ``conn`` stays the caller's (a duplicate is
    taken over)."""
    first = await _first_byte(conn, FIRST_BYTE_TIMEOUT)
    if first == b"":
        return
    if first != b"\x16":
        log.debug("%s: not a TLS handshake; the application gets it whole", name)
        await whole()
        return
    try:
        hs = await accept(port, conn.dup())
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        log.info("%s: TLS handshake with the client failed: %s", name, exc)
        return
    log.debug("%s: TLS with the client (SNI %s, ALPN %s)", name, hs.sni, hs.alpn)
    try:
        app = app_opener(port, hs, open_app, name)
        dev = dev_opener(port, hs, open_dev, name)
        if mode == "mirror":
            await incoming_tee.mirror(hs.plain, matcher, app, dev, name)
        else:
            assert matcher is not None
            await route(hs.plain, matcher, app, dev)
    finally:
        with contextlib.suppress(OSError):
            hs.plain.close()
