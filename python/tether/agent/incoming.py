"""Agent side of incoming traffic: mirror (sniff) and steal (NAT redirect + router).

Handlers: ``in_subscribe {port, mode, filter?}`` and ``in_unsubscribe {port}``.

Steal: the agent's owner table (:mod:`.redirect`) redirects new TCP connections to the
port to one agent listener (dual stack, ephemeral port). For each accepted connection,
``original_dst`` names the port, and

* without a filter (or on a port the filter does not cover) the client socket itself is
  handed to the orchestrator (``in_conn`` with the descriptor): the agent leaves the data
  path entirely;
* with a filter, :class:`.incoming_http.Router` routes each request: to the developer
  through a socketpair whose other end the orchestrator delivers to the local program,
  or to the application, connected at the original destination with the bypass mark so
  the redirect leaves that connection alone.

If the orchestrator answers ``in_conn`` with ok=False (the program no longer listens),
that connection is served by the application instead. Connections the redirect already
sent here when the port is unsubscribed are still served (routed to the application).

Mirror: :mod:`.incoming_mirror` (packet sockets; never in the data path).

Relay (``in_subscribe`` with ``relay``, or a link that cannot carry descriptors: TCP links
to Kubernetes agents): every hand-over above sends ``in_conn`` with ``relay`` and a stream
number instead of the descriptor, and the agent keeps (a duplicate of) the socket and
relays its bytes over the link (:mod:`tether.relay`); the orchestrator's side is the same.

Everything belongs to the link: when the orchestrator goes away the redirect table (owner
flag: even on SIGKILL), the listener and the sniffers go with the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import (
    limits,
    messages_incoming,  # noqa: F401  (registers the message types)
    relay,
)
from ..http import RequestMatcher, compile_filter
from ..link import Link, LinkClosed, RemoteError
from ..protocol import Message
from . import conntrack
from .incoming_http import Router, splice
from .incoming_mirror import Sniffer
from .incoming_tls import TlsConfigError, TlsPort
from .redirect import OtherSteal, RedirectError, Redirector, bypass, original_dst

log = logging.getLogger("tether.agent.incoming")

CONNECT_TIMEOUT = 5.0

#: accept(2) failed for lack of memory or descriptors: the listener is fine, the process is
#: full. Back off, shed the newest connection, go on.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept(2) reports errors of the connection being accepted (man 2 accept, "Error
#: handling"): the listener is fine, that one connection is gone.
TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR,
                       errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                       errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH,
                       errno.ETIMEDOUT, errno.ECONNRESET})
BACKOFF_MIN, BACKOFF_MAX = 0.005, 0.2
#: At unsubscribe: how long the connections the redirect already sent here (accept queue,
#: handshakes in flight, requests being served) get to finish. The orchestrator waits for
#: the reply, so this must stay below its unsubscribe timeout.
DRAIN_TIMEOUT = 0.8
#: A handshake conntrack already sent here completes within a round trip; wait that long
#: after the redirect is gone before trusting an empty accept queue.
DRAIN_SETTLE = 0.05
#: Abstract Unix socket (scoped to the network namespace) on which an agent hears
#: "release <port>" from a newer session that overrides its steal (on_concurrent_steal).
RELEASE_PREFIX = "tether-agent-release/"
CONCURRENT_STEAL = ("abort", "continue", "override")


@dataclass
class Subscription:
    port: int
    mode: str
    matcher: RequestMatcher | None = None
    sniffer: Sniffer | None = None
    tls: TlsPort | None = None  # a tls_steal port: decrypted in the agent (incoming_tls)


class IncomingAgent:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.subs: dict[int, Subscription] = {}
        self.redirector: Redirector | None = None
        self.listener: socket.socket | None = None
        self.listen_port = 0
        self._accept_task: asyncio.Task[None] | None = None
        self._conn_ids = itertools.count(1)
        # Hand streams over as relay streams instead of descriptors.
        self.relay = not link.can_pass_fds
        self._tasks: set[asyncio.Task[Any]] = set()
        # Stolen connections being served, by original port: unsubscribe waits for them.
        self._serving: dict[int, set[asyncio.Task[Any]]] = {}
        # One descriptor kept in reserve: at EMFILE it is closed to accept (and shed) the
        # newest connection, so clients are answered with a close instead of hanging in a
        # full accept queue.
        self._reserve: int | None = None
        self._shed = 0
        # Every port stolen and every listener port of this agent: conntrack entries that
        # NAT the one to the other are forgotten when the session ends.
        self._stolen: set[int] = set()
        self._listen_ports: set[int] = set()
        # Ports a newer session took over (on_concurrent_steal "override"): never re-stolen.
        self._overridden: dict[int, str] = {}
        self._release_sock: socket.socket | None = None
        link.state.setdefault("cleanups", []).append(self.close)

    # ---- subscriptions ----
    async def subscribe(self, port: int, mode: str, spec: Any, use_relay: bool = False,
                        shadow: bool = False, on_concurrent_steal: str = "continue",
                        tls: Any = None) -> None:
        self.relay = use_relay or not self.link.can_pass_fds
        if port in self.subs:
            await self.unsubscribe(port)
        if mode not in ("mirror", "steal"):
            raise RemoteError("bad_mode", f"unknown incoming mode {mode!r}")
        matcher = None
        if spec:
            try:
                matcher = compile_filter(spec)
            except ValueError as exc:
                raise RemoteError("bad_filter", f"http_filter: {exc}") from None
        # A tls_steal port is decrypted in the agent: mirrored through the redirect too.
        tls_port = await self._tls_port(port, tls) if tls else None
        if mode == "mirror" and tls_port is None:
            sub = Subscription(port, mode, matcher)
            sub.sniffer = Sniffer(port, lambda key: self._mirror_flow(port, key), shadow,
                                  lambda key, answers: self._shadow(port, key, answers),
                                  matcher=matcher)
            self.subs[port] = sub
            log.info("mirroring port %d%s%s", port,
                     " (shadow: comparing answers)" if shadow else "",
                     f" with filter {matcher}" if matcher else "")
            return
        if port in self._overridden:
            raise RemoteError("overridden", self._overridden[port])
        if on_concurrent_steal not in CONCURRENT_STEAL:
            raise RemoteError("bad_config", "on_concurrent_steal must be one of "
                              f"{', '.join(CONCURRENT_STEAL)}, not {on_concurrent_steal!r}")
        # The listener accepts before the redirect exists: no connection can be sent to a
        # port nobody accepts on.
        self._ensure_listener()
        assert self.redirector is not None
        # A filter limited to other ports (http_filter.ports) steals this one whole; a TLS
        # mirror takes nothing away from the application.
        whole = mode == "steal" and (matcher is None or not matcher.applies_to_port(port))
        await self._concurrent_steal(port, whole, on_concurrent_steal)
        # Connections an earlier agent stole leave entries NATed to its listener; a client
        # that reuses its port would meet that dead listener instead of this redirect.
        live = conntrack.listening_ports()
        conntrack.forget(port, lambda e: e.reply_sport not in live)
        self.subs[port] = Subscription(port, mode, matcher, tls=tls_port)
        self._stolen.add(port)
        try:
            self.redirector.add(port, self.listen_port, whole=whole)
        except RedirectError as exc:
            del self.subs[port]
            raise RemoteError("redirect", f"cannot steal port {port}: {exc}") from None
        log.info("%s port %d%s%s", "stealing" if mode == "steal" else "mirroring", port,
                 " (TLS terminated with the target's certificate)" if tls_port else "",
                 f" with filter {matcher}" if matcher else "")

    async def _tls_port(self, port: int, spec: Any) -> TlsPort:
        from . import files, incoming_tls

        try:
            tls_port = incoming_tls.load_port(files.root_fd(self.link), {**spec, "port": port})
            await incoming_tls.probe(tls_port, lambda: self._connect_app(("127.0.0.1", port)))
        except TlsConfigError as exc:
            raise RemoteError("tls", str(exc)) from None
        return tls_port

    async def _concurrent_steal(self, port: int, whole: bool, policy: str) -> None:
        """Another session steals this port too. Filtered steals chain (each developer gets
        their matches); a steal without a filter takes every connection that reaches it,
        so with one on either side the sessions conflict, and ``policy`` decides (the
        incumbent's on_concurrent_steal): ``abort`` refuses to start, ``continue`` chains
        anyway (the newer session sees connections first), ``override`` makes the other
        session give the port up (that session ends, saying why)."""
        assert self.redirector is not None
        try:
            others = self.redirector.others(port)
        except RedirectError as exc:
            log.debug("cannot list the other sessions' steals: %s", exc)
            return
        conflicts = [o for o in others if o.whole or whole]
        if not conflicts:
            return
        who = "; ".join(_describe(o) for o in conflicts)
        if policy == "abort":
            raise RemoteError(
                "concurrent_steal",
                f"port {port} is already stolen by another tether session ({who}); set "
                "feature.network.incoming.on_concurrent_steal to \"continue\" to steal "
                "alongside it or \"override\" to take the port over")
        if policy == "continue":
            log.warning("port %d is also stolen by another tether session (%s); continuing "
                        "(on_concurrent_steal: continue): this session sees new connections "
                        "first", port, who)
            return
        for other in conflicts:
            await self._take_over(other, port)
        log.warning("port %d: took it over from another tether session (%s) "
                    "(on_concurrent_steal: override)", port, who)

    async def _take_over(self, other: OtherSteal, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                loop.sock_connect(sock, f"\0{RELEASE_PREFIX}{other.table}"), 2)
            await loop.sock_sendall(sock, f"release {port}\n".encode())
            answer = await asyncio.wait_for(loop.sock_recv(sock, 64), 3)
        except (OSError, TimeoutError) as exc:
            raise RemoteError("concurrent_steal", f"cannot take port {port} over from "
                              f"another tether session ({_describe(other)}): {exc}") from None
        finally:
            sock.close()
        if answer != b"released\n":
            raise RemoteError("concurrent_steal", f"another tether session "
                              f"({_describe(other)}) did not give port {port} up")

    def _serve_releases(self, table: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"\0{RELEASE_PREFIX}{table}")
            sock.listen(8)
        except OSError as exc:
            sock.close()
            log.debug("no release socket: %s", exc)
            return
        sock.setblocking(False)
        self._release_sock = sock
        self._spawn(self._release_loop(sock))

    async def _release_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in EXHAUSTED or exc.errno in TRANSIENT:
                    await asyncio.sleep(0.1)
                    continue
                return
            self._spawn(self._release(conn))

    async def _release(self, conn: socket.socket) -> None:
        """A newer session overrides our steal of a port: only a peer with our own user id
        (the agents run as root) may ask."""
        loop = asyncio.get_running_loop()
        with conn:
            conn.setblocking(False)
            _pid, uid, _gid = struct.unpack(
                "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != os.geteuid():
                return
            try:
                line = await asyncio.wait_for(loop.sock_recv(conn, 64), 2)
            except (OSError, TimeoutError):
                return
            cmd, _, arg = line.decode(errors="replace").strip().partition(" ")
            if cmd != "release" or not arg.isdigit():
                return
            port = int(arg)
            reason = (f"port {port} was taken over by another tether session (its "
                      "on_concurrent_steal is \"override\")")
            self._overridden[port] = reason
            sub = self.subs.get(port)
            if sub is not None and sub.mode == "steal":
                await self.unsubscribe(port)  # the redirect goes first, then the drain
                log.warning("%s", reason)
                with contextlib.suppress(LinkClosed):
                    self.link.send({"t": "in_lost", "port": port, "reason": reason})
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, b"released\n")

    async def unsubscribe(self, port: int) -> None:
        sub = self.subs.pop(port, None)
        if sub is None:
            return
        if sub.sniffer is not None:
            sub.sniffer.close()
        else:
            if self.redirector is not None:
                with contextlib.suppress(RedirectError):
                    self.redirector.remove(port)
            await self._drain(port)
            ours = self._listen_ports
            conntrack.forget(port, lambda e: e.reply_sport in ours
                             and e.state >= conntrack.TCP_FIN_WAIT)
        log.info("port %d is the target's own again", port)

    async def _drain(self, port: int) -> None:
        """The redirect of ``port`` is gone: serve what it already sent here.

        Connections in the accept queue or still in their handshake (conntrack keeps their
        NAT to our listener) are accepted as usual and, with the subscription gone, go to
        the application; requests being served get to finish. Bounded by DRAIN_TIMEOUT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        await asyncio.sleep(DRAIN_SETTLE)
        while self.listener is not None and _accept_queue(self.listener) and (
                loop.time() < deadline):
            await asyncio.sleep(0.005)
        await asyncio.sleep(0)  # the accept loop's tasks register themselves
        serving = self._serving.get(port)
        if serving:
            await asyncio.wait(set(serving), timeout=max(0.0, deadline - loop.time()))

    def _ensure_listener(self) -> None:
        if self.redirector is None:
            limits.raise_nofile_limit()
            try:
                self.redirector = Redirector()
            except RedirectError as exc:
                raise RemoteError("redirect", f"cannot install the steal redirect: {exc}") from None
            self._serve_releases(self.redirector.table)
        if self.listener is not None and self._accept_task is not None and (
                not self._accept_task.done()):
            return
        if self.listener is not None:  # its accept loop ended: never reuse a dead listener
            self.listener.close()
            self.listener = None
        if self._reserve is None:
            with contextlib.suppress(OSError):
                self._reserve = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", 0))
            except OSError as exc:
                if exc.errno in EXHAUSTED:
                    raise
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("0.0.0.0", 0))
            sock.listen(4096)
            sock.setblocking(False)
        except OSError as exc:
            raise RemoteError("listener", f"cannot open the agent's listener: {exc}") from None
        self.listener = sock
        self.listen_port = sock.getsockname()[1]
        self._listen_ports.add(self.listen_port)
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop(sock))
        # Ports already stolen (a listener that is replaced) follow it.
        for port, sub in self.subs.items():
            if sub.sniffer is None:  # redirected (steal, or mirror of a TLS port)
                with contextlib.suppress(RedirectError, ValueError):
                    self.redirector.add(port, self.listen_port)

    # ---- steal ----
    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in EXHAUSTED:
                    backoff = min(max(backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
                    self._exhausted(listener, exc)
                    await asyncio.sleep(backoff)
                    continue
                if exc.errno in TRANSIENT:
                    continue
                self._listener_failed(listener, exc)
                return
            if backoff:
                log.warning("descriptors available again; %d connection(s) were shed meanwhile",
                            self._shed)
                backoff, self._shed = 0.0, 0
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                conn.close()
                continue
            self._spawn(self._serve(conn, peer))

    def _exhausted(self, listener: socket.socket, exc: OSError) -> None:
        """Out of descriptors or memory: shed the newest connection (a clean close now
        instead of a client hanging in the queue), keep the ones being served."""
        if not self._shed:
            log.warning("steal listener: %s; shedding new connections until some close "
                        "(raise the agent's descriptor limit: ulimit -n)", exc.strerror)
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        try:
            conn, _ = listener.accept()
        except OSError:
            pass
        else:
            conn.close()
            self._shed += 1
        with contextlib.suppress(OSError):
            self._reserve = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)

    def _listener_failed(self, listener: socket.socket, exc: OSError) -> None:
        """The listener cannot go on: the redirect goes first (the target serves its ports
        again at once), then the orchestrator is told and may subscribe again, which opens
        a new listener."""
        log.error("steal listener failed: %s", exc)
        ports = [port for port, sub in self.subs.items() if sub.sniffer is None]
        if self.redirector is not None:
            for port in ports:
                with contextlib.suppress(RedirectError):
                    self.redirector.remove(port)
        if self.listener is listener:
            self.listener = None
        listener.close()
        for port in ports:
            self._lost(port, f"the agent's listener failed: {exc}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, peer: tuple[Any, ...]) -> None:
        try:
            dst = original_dst(conn)
        except OSError as exc:
            log.warning("stolen connection from %s without an original destination: %s",
                        peer[0], exc)
            conn.close()
            return
        peer_addr, peer_port = _plain(peer[0]), int(peer[1])
        sub = self.subs.get(dst[1])
        name = f"{peer_addr}:{peer_port}->{dst[1]}"
        serving = self._serving.setdefault(dst[1], set())
        task = asyncio.current_task()
        assert task is not None
        serving.add(task)
        try:
            if sub is not None and sub.tls is not None and await self._serve_tls(
                    conn, dst, sub, peer_addr, peer_port, name):
                return
            if sub is None or sub.mode != "steal":
                await self._to_app(conn, dst)
                return
            matcher = sub.matcher
            if matcher is None or not matcher.applies_to_port(dst[1]):
                if await self._to_dev(conn, dst[1], peer_addr, peer_port, "steal"):
                    conn.close()  # the orchestrator holds it now
                    return
                await self._to_app(conn, dst)
                return

            open_app, open_dev = self._openers(dst, peer_addr, peer_port)
            await Router(conn, matcher, open_app, open_dev, name).run()
        except Exception as exc:
            log.warning("%s: %s", name, exc)
        finally:
            serving.discard(task)
            with contextlib.suppress(OSError):
                conn.close()

    async def _serve_tls(self, conn: socket.socket, dst: tuple[str, int], sub: Subscription,
                         peer_addr: str, peer_port: int, name: str) -> bool:
        """A tls_steal port: decrypt, then route (filtered steal) or copy (mirror); False
        when the connection is not for this hook (a steal the filter does not cover)."""
        from . import incoming_tls

        assert sub.tls is not None
        judged = sub.matcher is not None and sub.matcher.applies_to_port(dst[1])
        if sub.mode != "mirror" and not judged:
            return False

        # "steal" also for the copies of a TLS mirror: their answers come back here
        # (HTTP/2 copies need the program's window updates) and are dropped here.
        open_app, open_dev = self._openers(dst, peer_addr, peer_port)

        async def route(plain: socket.socket, matcher: RequestMatcher, app: Any,
                        dev: Any) -> None:
            await Router(plain, matcher, app, dev, name).run()

        await incoming_tls.serve(sub.tls, conn, sub.mode, sub.matcher if judged else None,
                                 open_app, open_dev, name, route,
                                 lambda: self._to_app(conn, dst))
        return True

    def _openers(self, dst: tuple[str, int], peer_addr: str, peer_port: int
                 ) -> tuple[Callable[[], Awaitable[socket.socket | None]],
                            Callable[[], Awaitable[socket.socket | None]]]:
        """The router's two upstreams for one client connection: a new connection to the
        application, and a socketpair whose other end the orchestrator hands the program
        (None when the program no longer listens)."""

        async def open_app() -> socket.socket | None:
            return await self._connect_app(dst)

        async def open_dev() -> socket.socket | None:
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            try:
                ok = await self._to_dev(theirs, dst[1], peer_addr, peer_port, "steal")
            finally:
                theirs.close()
            if not ok:
                ours.close()
                return None
            return ours

        return open_app, open_dev

    async def _to_dev(self, sock: socket.socket, port: int, peer_addr: str, peer_port: int,
                      mode: str) -> bool:
        """Hand a stream to the orchestrator; False if the program no longer listens.

        The caller keeps ``sock`` and closes it as usual: fd mode passes a copy, relay mode
        keeps a duplicate in the relay stream."""
        if self.relay:
            return await self._to_dev_relay(sock, port, peer_addr, peer_port, mode)
        try:
            reply = await self.link.call(
                {"t": "in_conn", "conn": next(self._conn_ids), "port": port,
                 "peer_addr": peer_addr, "peer_port": peer_port, "mode": mode},
                timeout=CONNECT_TIMEOUT, fds=[sock.fileno()])
        except (TimeoutError, LinkClosed, RemoteError, OSError) as exc:
            log.warning("cannot hand a connection on port %d to the developer: %s", port, exc)
            return False
        return bool(reply.get("ok"))

    async def _to_dev_relay(self, sock: socket.socket, port: int, peer_addr: str,
                            peer_port: int, mode: str) -> bool:
        conn = relay.next_conn()
        try:
            reply = await self.link.call(
                {"t": "in_conn", "conn": conn, "port": port, "peer_addr": peer_addr,
                 "peer_port": peer_port, "mode": mode, "relay": True},
                timeout=CONNECT_TIMEOUT)
        except (TimeoutError, LinkClosed, RemoteError, OSError) as exc:
            log.warning("cannot hand a connection on port %d to the developer: %s", port, exc)
            with contextlib.suppress(LinkClosed):  # in case the answer was only late
                self.link.send({"t": "relay_close", "conn": conn, "errno": 110})
            return False
        if not reply.get("ok"):
            return False
        table = relay.table(self.link)
        table.add(relay.RelayStream(conn, sock.dup(), self.link.send, table.done))
        try:
            self.link.send({"t": "relay_ack", "conn": conn, "n": 0})  # the other end starts
        except LinkClosed:
            table.streams[conn].abort()
        return True

    async def _connect_app(self, dst: tuple[str, int]) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            bypass(sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, dst),
                                   CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.warning("cannot reach the application at %s:%d: %s", dst[0], dst[1], exc)
            sock.close()
            return None
        return sock

    async def _to_app(self, conn: socket.socket, dst: tuple[str, int]) -> None:
        app = await self._connect_app(dst)
        if app is None:
            return
        try:
            await splice(conn, app)
        finally:
            app.close()

    # ---- mirror ----
    def _shadow(self, port: int, key: tuple[str, int, str, int], answers: list[Any]) -> None:
        with contextlib.suppress(LinkClosed):
            self.link.send({"t": "in_shadow", "port": port, "peer_addr": key[0],
                            "peer_port": key[1], "answers": answers, "end": not answers})

    def _mirror_flow(self, port: int, key: tuple[str, int, str, int]) -> socket.socket | None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)

        async def hand_over() -> None:
            try:
                ok = await self._to_dev(theirs, port, key[0], key[1], "mirror")
            finally:
                theirs.close()
            if not ok:
                with contextlib.suppress(OSError):
                    ours.shutdown(socket.SHUT_RDWR)

        self._spawn(hand_over())
        return ours

    # ---- loss and teardown ----
    def _lost(self, port: int, reason: str) -> None:
        self.subs.pop(port, None)
        with contextlib.suppress(LinkClosed):
            self.link.send({"t": "in_lost", "port": port, "reason": reason})

    def close(self) -> None:
        for sub in self.subs.values():
            if sub.sniffer is not None:
                sub.sniffer.close()
        self.subs.clear()
        if self.redirector is not None:
            self.redirector.close()
            self.redirector = None
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        if self._release_sock is not None:
            self._release_sock.close()
            self._release_sock = None
        for task in list(self._tasks):
            task.cancel()
        ours = self._listen_ports
        for port in self._stolen:
            conntrack.forget(port, lambda e: e.reply_sport in ours)


def _accept_queue(listener: socket.socket) -> int:
    """Connections waiting in a listener's accept queue (``tcpi_unacked`` of a listening
    socket is its backlog; struct tcp_info: 8 bytes of u8 fields, then rto, ato, snd_mss,
    rcv_mss, unacked)."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except OSError:
        return 0
    return int(struct.unpack_from("I", info, 24)[0])


def _describe(other: OtherSteal) -> str:
    pid = other.agent_pid
    return (f"agent pid {pid}" if pid is not None else other.table) + (
        ", without a filter" if other.whole else ", with a filter")


def _plain(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


def _state(link: Link) -> IncomingAgent:
    agent = link.state.get("incoming")
    if agent is None:
        agent = link.state["incoming"] = IncomingAgent(link)
    return agent


async def _subscribe(link: Link, msg: Message) -> Message:
    await _state(link).subscribe(int(msg["port"]), str(msg["mode"]), msg.get("filter"),
                                 bool(msg.get("relay")), bool(msg.get("shadow")),
                                 str(msg.get("on_concurrent_steal") or "continue"),
                                 msg.get("tls"))
    return {"t": "in_subscribe_reply", "port": int(msg["port"])}


async def _unsubscribe(link: Link, msg: Message) -> Message:
    await _state(link).unsubscribe(int(msg["port"]))
    return {"t": "in_unsubscribe_reply"}


HANDLERS = {"in_subscribe": _subscribe, "in_unsubscribe": _unsubscribe}
