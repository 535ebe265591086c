"""The agent's TLS layer on loopback: loading the target's certificate (and saying which key
is wrong), checking the application serves TLS, mTLS both ways, and the byte pumps."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from tether.agent import incoming_tls
from tether.agent.incoming_tls import TlsConfigError

KEY = "feature.network.incoming.tls_steal.ports[0]"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def root(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[int, Path, trustme.LeafCert]]:
    """A target's root directory holding its certificate, key and client CA."""
    leaf = ca.issue_cert("app.test")
    tls = tmp_path / "etc" / "tls"
    tls.mkdir(parents=True)
    (tls / "tls.crt").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (tls / "tls.key").write_bytes(leaf.private_key_pem.bytes())
    (tls / "ca.crt").write_bytes(ca.cert_pem.bytes())
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield fd, tmp_path, leaf
    os.close(fd)


def spec(**kw: Any) -> dict[str, Any]:
    return {"key": KEY, "port": 8443, "cert_pem": "/etc/tls/tls.crt",
            "key_pem": "/etc/tls/tls.key", "delivery": {"protocol": "tcp"}, **kw}


def test_loads_the_targets_certificate_and_key(root: Any) -> None:
    port = incoming_tls.load_port(root[0], spec())
    assert port.port == 8443 and port.delivery.protocol == "tcp"


def test_paths_resolve_inside_the_target_root_even_through_absolute_links(root: Any) -> None:
    fd, base, _ = root
    # A Secret-style absolute link must land in the target's tree, not the agent's /etc.
    os.symlink("/etc/tls/tls.crt", base / "etc" / "link.crt")
    incoming_tls.load_port(fd, spec(cert_pem="/etc/link.crt"))


def _encrypted(leaf: trustme.LeafCert) -> bytes:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"secret"))


@pytest.mark.parametrize("setup, change, message", [
    (None, {"cert_pem": "/etc/tls/none.crt"},
     f"{KEY}.cert_pem: /etc/tls/none.crt does not exist in the target (certificate)"),
    (None, {"key_pem": "/etc/tls"},
     f"{KEY}.key_pem: cannot read /etc/tls in the target (private key): Is a directory"),
    ("other", {"key_pem": "/etc/tls/other.key"},
     f"{KEY}.key_pem: the private key does not match the certificate in {KEY}.cert_pem"),
    ("encrypted", {"key_pem": "/etc/tls/enc.key"},
     f"{KEY}.key_pem: the private key is encrypted; tether needs the unencrypted key"),
    (None, {"cert_pem": "/etc/tls/tls.key"},
     f"{KEY}.cert_pem: not a PEM certificate"),
    (None, {"key_pem": "/etc/tls/tls.crt"}, f"{KEY}.key_pem: not a PEM private key"),
    (None, {"client_verification": {"trust_roots": ["/etc/tls/nothing.pem"]}},
     f"{KEY}.client_verification.trust_roots[0]: /etc/tls/nothing.pem does not exist"),
    (None, {"app_client_cert": {"cert_pem": "/etc/tls/tls.crt", "key_pem": "/etc/tls/ca.crt"}},
     f"{KEY}.app_client_cert.key_pem: not a PEM private key"),
])
def test_unusable_certificates_name_the_key(root: Any, ca: trustme.CA, setup: str | None,
                                            change: dict[str, Any], message: str) -> None:
    fd, base, leaf = root
    if setup == "other":
        (base / "etc/tls/other.key").write_bytes(ca.issue_cert("x").private_key_pem.bytes())
    elif setup == "encrypted":
        (base / "etc/tls/enc.key").write_bytes(_encrypted(leaf))
    with pytest.raises(TlsConfigError) as err:
        incoming_tls.load_port(fd, spec(**change))
    assert str(err.value).startswith(message), str(err.value)


# ---- servers on loopback ----

class Server:
    """A loopback server in a thread: plain text, or TLS with ``ctx``; echoes upper-cased."""

    def __init__(self, ctx: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.peer_certs: list[Any] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
                self.peer_certs.append(conn.getpeercert())
            while data := conn.recv(65536):
                conn.sendall(data.upper())
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def connector(port: int) -> Any:
    async def connect() -> socket.socket | None:
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
        except OSError:
            s.close()
            return None
        return s
    return connect


def server_ctx(leaf: trustme.LeafCert, client_ca: trustme.CA | None = None,
               alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if client_ca is not None:
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_probe_accepts_the_application_serving_that_certificate(root: Any) -> None:
    srv = Server(server_ctx(root[2]))
    port = incoming_tls.load_port(root[0], spec())
    asyncio.run(incoming_tls.probe(port, connector(srv.port)))
    srv.close()


@pytest.mark.parametrize("app_alpn, offered", [
    (["h2", "http/1.1"], ["h2", "http/1.1"]),
    (["http/1.1"], ["http/1.1"]),
    (None, ["http/1.1"]),  # no ALPN at all: an HTTP/1 server
])
def test_clients_are_offered_only_what_the_application_accepts(
        root: Any, ca: trustme.CA, app_alpn: list[str] | None, offered: list[str]) -> None:
    srv = Server(server_ctx(root[2], alpn=app_alpn))
    port = incoming_tls.load_port(root[0], spec())
    asyncio.run(incoming_tls.probe(port, connector(srv.port)))
    assert port.alpn == offered
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.set_alpn_protocols(["h2", "http/1.1"])
    a, b = socket.socketpair()

    async def hello() -> str | None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(incoming_tls.accept(port, a))
        _, writer = await asyncio.open_connection(sock=b, ssl=client, server_hostname="app.test")
        got = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        (await task).plain.close()
        return got

    assert asyncio.run(hello()) == offered[0]
    srv.close()


def test_probe_refuses_a_plain_text_port(root: Any) -> None:
    srv = Server()
    port = incoming_tls.load_port(root[0], spec())
    with pytest.raises(TlsConfigError) as err:
        asyncio.run(incoming_tls.probe(port, connector(srv.port)))
    assert str(err.value).startswith(f"{KEY}.port: port 8443 of the target does not answer "
                                      "with TLS")
    srv.close()


def test_probe_refuses_an_application_serving_another_certificate(root: Any) -> None:
    srv = Server(server_ctx(trustme.CA().issue_cert("app.test")))
    port = incoming_tls.load_port(root[0], spec())
    with pytest.raises(TlsConfigError) as err:
        asyncio.run(incoming_tls.probe(port, connector(srv.port)))
    assert str(err.value).startswith(f"{KEY}.cert_pem: the application on port 8443 presents "
                                      "another certificate")
    srv.close()


def test_probe_lets_a_port_nobody_listens_on_yet_through(root: Any) -> None:
    free = socket.create_server(("127.0.0.1", 0))
    number = free.getsockname()[1]
    free.close()
    asyncio.run(incoming_tls.probe(incoming_tls.load_port(root[0], spec()), connector(number)))


# ---- the client's side: handshake, mTLS, the pump ----

async def _handshake(port: Any, client_ctx: ssl.SSLContext, payload: bytes) -> bytes:
    """A client connects over TLS; the agent side accepts and echoes the decrypted bytes
    upper-cased through the plain socket; returns what the client read back."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def agent() -> None:
        hs = await incoming_tls.accept(port, a)
        try:
            while data := await loop.sock_recv(hs.plain, 65536):
                await loop.sock_sendall(hs.plain, data.upper())
            hs.plain.shutdown(socket.SHUT_WR)
        finally:
            hs.plain.close()

    task = loop.create_task(agent())
    try:
        reader, writer = await asyncio.open_connection(sock=b, ssl=client_ctx,
                                                       server_hostname="app.test")
        writer.write(payload)
        await writer.drain()
        got = await reader.readexactly(len(payload))
        writer.close()
    finally:
        await asyncio.gather(task, return_exceptions=True)
    return got


def test_clients_see_the_targets_certificate_and_bulk_data_crosses_intact(
        root: Any, ca: trustme.CA) -> None:
    port = incoming_tls.load_port(root[0], spec())
    client = ssl.create_default_context()
    ca.configure_trust(client)
    payload = os.urandom(6 << 20)
    assert asyncio.run(_handshake(port, client, payload)) == payload.upper()


def test_mtls_client_without_a_certificate_is_refused(root: Any, ca: trustme.CA) -> None:
    port = incoming_tls.load_port(root[0], spec(client_verification={
        "trust_roots": ["/etc/tls/ca.crt"]}))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        asyncio.run(_handshake(port, client, b"hello"))


def test_mtls_client_with_a_certificate_of_the_trusted_ca_gets_through(
        root: Any, ca: trustme.CA) -> None:
    port = incoming_tls.load_port(root[0], spec(client_verification={
        "trust_roots": ["/etc/tls/ca.crt"]}))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    ca.issue_cert("client@example").configure_cert(client)
    assert asyncio.run(_handshake(port, client, b"hello")) == b"HELLO"


def test_mtls_allow_anonymous_lets_clients_without_a_certificate_in(
        root: Any, ca: trustme.CA) -> None:
    port = incoming_tls.load_port(root[0], spec(client_verification={
        "trust_roots": ["/etc/tls/ca.crt"], "allow_anonymous": True}))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    assert asyncio.run(_handshake(port, client, b"hi")) == b"HI"


def test_an_mtls_application_gets_the_configured_client_certificate(
        root: Any, ca: trustme.CA) -> None:
    fd, base, leaf = root
    client_leaf = ca.issue_cert("agent@app.test")
    (base / "etc/tls/client.crt").write_bytes(client_leaf.cert_chain_pems[0].bytes())
    (base / "etc/tls/client.key").write_bytes(client_leaf.private_key_pem.bytes())
    srv = Server(server_ctx(leaf, client_ca=ca))
    with_cert = incoming_tls.load_port(fd, spec(app_client_cert={
        "cert_pem": "/etc/tls/client.crt", "key_pem": "/etc/tls/client.key"}))
    without = incoming_tls.load_port(fd, spec())
    hs = incoming_tls.Handshake(socket.socket(), "app.test", None)

    async def exchange(port: Any) -> bytes:
        loop = asyncio.get_running_loop()
        plain = await incoming_tls.app_opener(port, hs, connector(srv.port), "t")()
        assert plain is not None
        await loop.sock_sendall(plain, b"ping")
        try:
            got = await asyncio.wait_for(loop.sock_recv(plain, 100), 5)
        except ConnectionResetError:
            got = b""
        plain.close()
        return got

    assert asyncio.run(exchange(with_cert)) == b"PING"
    assert srv.peer_certs[-1]["subject"]  # the app saw the agent's certificate
    assert asyncio.run(exchange(without)) == b""  # TLS 1.3: refused after the handshake
    hs.plain.close()
    srv.close()
