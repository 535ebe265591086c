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
import itertools
import logging
import socket
from dataclasses import dataclass
from typing import Any

from .. import (
    messages_incoming,  # noqa: F401  (registers the message types)
    relay,
)
from ..http import RequestMatcher, compile_filter
from ..link import Link, LinkClosed, RemoteError
from ..protocol import Message
from .incoming_http import Router, splice
from .incoming_mirror import Sniffer
from .redirect import RedirectError, Redirector, bypass, original_dst

log = logging.getLogger("tether.agent.incoming")

CONNECT_TIMEOUT = 5.0


@dataclass
class Subscription:
    port: int
    mode: str
    matcher: RequestMatcher | None = None
    sniffer: Sniffer | None = None


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
        link.state.setdefault("cleanups", []).append(self.close)

    # ---- subscriptions ----
    async def subscribe(self, port: int, mode: str, spec: Any, use_relay: bool = False,
                        shadow: bool = False) -> None:
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
        if mode == "mirror":
            sub = Subscription(port, mode, matcher)
            sub.sniffer = Sniffer(port, lambda key: self._mirror_flow(port, key), shadow,
                                  lambda key, answers: self._shadow(port, key, answers),
                                  matcher=matcher)
            self.subs[port] = sub
            log.info("mirroring port %d%s%s", port,
                     " (shadow: comparing answers)" if shadow else "",
                     f" with filter {matcher}" if matcher else "")
            return
        self._ensure_listener()
        assert self.redirector is not None
        self.subs[port] = Subscription(port, mode, matcher)
        try:
            self.redirector.add(port, self.listen_port)
        except RedirectError as exc:
            del self.subs[port]
            raise RemoteError("redirect", f"cannot steal port {port}: {exc}") from None
        log.info("stealing port %d%s", port, f" with filter {matcher}" if matcher else "")

    async def unsubscribe(self, port: int) -> None:
        sub = self.subs.pop(port, None)
        if sub is None:
            return
        if sub.sniffer is not None:
            sub.sniffer.close()
        elif self.redirector is not None:
            with contextlib.suppress(RedirectError):
                self.redirector.remove(port)
        log.info("port %d is the target's own again", port)

    def _ensure_listener(self) -> None:
        if self.redirector is None:
            try:
                self.redirector = Redirector()
            except RedirectError as exc:
                raise RemoteError("redirect", f"cannot install the steal redirect: {exc}") from None
        if self.listener is not None:
            return
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
        sock.listen(1024)
        sock.setblocking(False)
        self.listener = sock
        self.listen_port = sock.getsockname()[1]
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    # ---- steal ----
    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.listener is not None
        while True:
            try:
                conn, peer = await loop.sock_accept(self.listener)
            except OSError as exc:
                log.error("steal listener failed: %s", exc)
                for port in list(self.subs):
                    self._lost(port, f"the agent's listener failed: {exc}")
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve(conn, peer))

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
        try:
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

            await Router(conn, matcher, open_app, open_dev, name).run()
        except Exception as exc:
            log.warning("%s: %s", name, exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

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
        for task in list(self._tasks):
            task.cancel()


def _plain(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


def _state(link: Link) -> IncomingAgent:
    agent = link.state.get("incoming")
    if agent is None:
        agent = link.state["incoming"] = IncomingAgent(link)
    return agent


async def _subscribe(link: Link, msg: Message) -> Message:
    await _state(link).subscribe(int(msg["port"]), str(msg["mode"]), msg.get("filter"),
                                 bool(msg.get("relay")), bool(msg.get("shadow")))
    return {"t": "in_subscribe_reply", "port": int(msg["port"])}


async def _unsubscribe(link: Link, msg: Message) -> Message:
    await _state(link).unsubscribe(int(msg["port"]))
    return {"t": "in_unsubscribe_reply"}


HANDLERS = {"in_subscribe": _subscribe, "in_unsubscribe": _unsubscribe}
