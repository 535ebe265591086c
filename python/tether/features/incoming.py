"""Incoming traffic, orchestrator side: subscriptions and the relay to the local program.

The layer reports each listen on a port it serves (``in_listen``); this feature asks the
agent to mirror or steal that target port, and answers the layer once traffic can flow.
The agent hands over every connection for the program as a stream (``in_conn`` with a
descriptor: the stolen client socket itself, or a socketpair end the agent feeds); the
feature connects to the program's real listener and copies bytes both ways (mirror: the
program's answers are read and dropped). Before connecting it binds its own end, so the
``in_peer`` question the layer's accept hook asks ("who is local port N?") is answered
with the real remote client.

Links that cannot carry descriptors (Kubernetes: TCP through a port-forward), or
TETHER_INCOMING_RELAY=1: the subscription asks for relay streams; ``in_conn`` then names a
stream number instead of carrying a descriptor, and the bytes travel over the agent link
(:mod:`tether.relay`, shared with outgoing). The program's side is the same either way.

Lifecycle: a port is unsubscribed when the process that listened ends, or at the first
connection the program refuses (it stopped listening); the target serves it at once. A
subscription that breaks in the agent (``in_lost``) is re-established once, else the
session ends with the reason: incoming traffic never stops silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from .. import (
    messages_incoming,  # noqa: F401  (registers the message types)
    relay,
)
from ..config import HttpFilter, IncomingConfig
from ..link import Link, LinkClosed, RemoteError
from ..pipe import pipe
from ..protocol import Message

log = logging.getLogger("tether")

READ_SIZE = 262144
CONNECT_TIMEOUT = 2.0


def relay_forced() -> bool:
    return os.environ.get("TETHER_INCOMING_RELAY", "") not in ("", "0", "false", "no")


@dataclass
class Listener:
    addr: str
    port: int
    family: int
    link: Link


@dataclass
class PortSub:
    port: int
    listeners: list[Listener] = field(default_factory=list)


def filter_spec(f: HttpFilter, top: bool = True) -> dict[str, Any]:
    """tether's HttpFilter as the mirrord-shaped mapping ``compile_filter`` reads."""
    if f.kind in ("all_of", "any_of"):
        return {f.kind: [filter_spec(c, top=False) for c in f.children]}
    return {f"{f.kind}_filter": f.pattern}


class Feature:
    def __init__(self, orch: Any) -> None:
        self.orch = orch
        self.cfg: IncomingConfig = orch.config.feature.network.incoming
        self.subs: dict[int, PortSub] = {}
        self.peers: dict[int, tuple[str, int]] = {}
        self.relays: set[asyncio.Task[None]] = set()
        self.stats = {"conns": 0, "refused": 0}
        self._fatal: asyncio.Future[str] | None = None
        self._lock = asyncio.Lock()
        # Shadow testing (mirror only): compare the target's answers with the program's.
        self.shadow = None
        if self.cfg.mode == "mirror" and self.cfg.shadow:
            from ..http import shadow as shadow_mod  # only then: ~15 ms of every start-up

            self.shadow = shadow_mod.Book()
        if orch.agent is not None:
            orch.agent.handlers.update({"in_conn": self._in_conn, "in_lost": self._in_lost,
                                        "in_shadow": self._in_shadow})

    # ---- plug-in points ----
    def layer_config(self) -> dict[str, str]:
        c = self.cfg
        if c.mode == "off":
            return {"in_mode": "off"}
        out = {"in_mode": c.mode, "in_ignore_lo": "1" if c.ignore_localhost else "0"}
        if c.ports is not None:
            out["in_ports"] = ",".join(map(str, c.ports))
        if c.ignore_ports:
            out["in_ignore"] = ",".join(map(str, c.ignore_ports))
        if c.port_mapping:
            out["in_map"] = ",".join(f"{a}:{b}" for a, b in c.port_mapping)
        if c.listen_ports:
            out["in_listen"] = ",".join(f"{a}:{b}" for a, b in c.listen_ports)
        return out

    def layer_handlers(self) -> dict[str, Any]:
        return {"in_listen": self._in_listen, "in_peer": self._in_peer}

    async def watch(self) -> str:
        self._fatal = asyncio.get_running_loop().create_future()
        return await self._fatal

    async def stop(self) -> None:
        agent = self.orch.agent
        for port in list(self.subs):
            self.subs.pop(port, None)
            if agent is not None and not agent.closed.is_set():
                with contextlib.suppress(LinkClosed, RemoteError, asyncio.TimeoutError):
                    await agent.call({"t": "in_unsubscribe", "port": port}, timeout=1)
        for task in list(self.relays):
            task.cancel()
        if self.shadow is not None:
            log.info("%s", self.shadow.summary())

    def _end(self, reason: str) -> None:
        log.error("%s", reason)
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_result(reason)

    # ---- layer requests ----
    def _spec(self, port: int) -> dict[str, Any] | None:
        c = self.cfg
        if c.mode != "steal" or c.http_filter is None:
            return None
        spec = filter_spec(c.http_filter)
        if c.http_filter_ports is not None:
            spec["ports"] = list(c.http_filter_ports)
        return spec

    def _relayed(self) -> bool:
        return relay_forced() or not self.orch.agent.can_pass_fds

    async def _subscribe(self, port: int) -> None:
        agent = self.orch.agent
        msg: dict[str, Any] = {"t": "in_subscribe", "port": port, "mode": self.cfg.mode}
        if self._relayed():
            msg["relay"] = True
        if self.shadow is not None:
            msg["shadow"] = True
        spec = self._spec(port)
        if spec is not None:
            msg["filter"] = spec
        await agent.call(msg, timeout=10)

    async def _in_listen(self, link: Link, msg: Message) -> Message:
        port = int(msg["port"])
        if self.cfg.mode == "off":
            return {"t": "in_listen_reply", "ok": False}
        listener = Listener(str(msg["addr"]), int(msg["local_port"]), int(msg["family"]), link)
        async with self._lock:
            sub = self.subs.get(port)
            if sub is None:
                try:
                    await self._subscribe(port)
                except (TimeoutError, RemoteError, LinkClosed) as exc:
                    self._end(f"cannot {self.cfg.mode} port {port} of the target: {exc}")
                    return {"t": "in_listen_reply", "ok": False}
                sub = self.subs[port] = PortSub(port)
                log.info("%s port %d of the target -> local %s:%d%s",
                         "stealing" if self.cfg.mode == "steal" else "mirroring", port,
                         listener.addr, listener.port,
                         " (relayed over the agent link)" if self._relayed() else "")
            sub.listeners.append(listener)
        asyncio.get_running_loop().create_task(self._watch_session(link, port, listener))
        return {"t": "in_listen_reply", "ok": True}

    async def _watch_session(self, link: Link, port: int, listener: Listener) -> None:
        await link.closed.wait()
        sub = self.subs.get(port)
        if sub is None or listener not in sub.listeners:
            return
        sub.listeners.remove(listener)
        if not sub.listeners:
            await self._drop(port, "the process that listened has ended")

    async def _drop(self, port: int, why: str) -> None:
        if self.subs.pop(port, None) is None:
            return
        log.info("port %d: %s; the target serves it again", port, why)
        agent = self.orch.agent
        if agent is not None and not agent.closed.is_set():
            with contextlib.suppress(LinkClosed, RemoteError, asyncio.TimeoutError):
                await agent.call({"t": "in_unsubscribe", "port": port}, timeout=2)

    async def _in_peer(self, link: Link, msg: Message) -> Message:
        peer = self.peers.get(int(msg["port"]))
        if peer is None:
            return {"t": "in_peer_reply", "addr": None, "port": 0}
        return {"t": "in_peer_reply", "addr": peer[0], "port": peer[1]}

    # ---- agent requests ----
    async def _in_conn(self, link: Link, msg: Message) -> Message:
        if msg.get("relay"):
            return await self._in_conn_relay(link, msg)
        fds = msg.pop("_fds", [])
        if not fds:
            return {"t": "in_conn_reply", "ok": False}
        remote = socket.socket(fileno=fds[0])
        for fd in fds[1:]:
            with contextlib.suppress(OSError):
                socket.socket(fileno=fd).close()
        remote.setblocking(False)
        port = int(msg["port"])
        sub = self.subs.get(port)
        local = None
        if sub is not None:
            local = await self._connect_local(sub, (str(msg["peer_addr"]), int(msg["peer_port"])))
        if local is None:
            remote.close()
            self.stats["refused"] += 1
            if sub is not None:
                asyncio.get_running_loop().create_task(
                    self._drop(port, "the local program no longer accepts connections"))
            return {"t": "in_conn_reply", "ok": False}
        self.stats["conns"] += 1
        mirror = msg["mode"] == "mirror"
        shadow_key = ((port, str(msg["peer_addr"]), int(msg["peer_port"]))
                      if mirror and self.shadow is not None else None)
        task = asyncio.get_running_loop().create_task(
            self._relay(remote, *local, mirror, shadow_key))
        self.relays.add(task)
        task.add_done_callback(self.relays.discard)
        return {"t": "in_conn_reply", "ok": True}

    async def _in_conn_relay(self, link: Link, msg: Message) -> Message:
        """The agent keeps the stream and relays it: connect to the program and register our
        end (started by the agent's first ack, so nothing overtakes this reply)."""
        port, conn = int(msg["port"]), int(msg["conn"])
        sub = self.subs.get(port)
        local = None
        if sub is not None:
            local = await self._connect_local(sub, (str(msg["peer_addr"]), int(msg["peer_port"])))
        if local is None or link.closed.is_set():
            if local is not None:
                self.peers.pop(local[1], None)
                local[0].close()
            self.stats["refused"] += 1
            if sub is not None:
                asyncio.get_running_loop().create_task(
                    self._drop(port, "the local program no longer accepts connections"))
            return {"t": "in_conn_reply", "ok": False}
        self.stats["conns"] += 1
        if self.shadow is not None and msg["mode"] == "mirror":
            key = (port, str(msg["peer_addr"]), int(msg["peer_port"]))
            self.shadow.skip(key, "not compared on relayed links (yet)")
            self.shadow.ended(key, "local")
        sock, lport = local
        table = relay.table(link)
        stream = relay.RelayStream(conn, sock, link.send, table.done, started=False,
                                   discard=msg["mode"] == "mirror")
        table.add(stream, on_done=lambda: self.peers.pop(lport, None))
        return {"t": "in_conn_reply", "ok": True}

    async def _connect_local(self, sub: PortSub, peer: tuple[str, int]
                             ) -> tuple[socket.socket, int] | None:
        loop = asyncio.get_running_loop()
        for listener in list(sub.listeners):
            v6 = listener.family == 6
            addr = listener.addr
            if addr in ("0.0.0.0", ""):
                addr = "127.0.0.1"
            elif addr == "::":
                addr = "::1"
            sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
            lport = None
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                loopback = addr == "::1" or addr.startswith("127.")
                sock.bind((("::1" if v6 else "127.0.0.1") if loopback else addr, 0))
                lport = sock.getsockname()[1]
                self.peers[lport] = peer
                await asyncio.wait_for(loop.sock_connect(sock, (addr, listener.port)),
                                       CONNECT_TIMEOUT)
                return sock, lport
            except (TimeoutError, OSError) as exc:
                log.debug("local listener %s:%d: %s", addr, listener.port, exc)
                if lport is not None:
                    self.peers.pop(lport, None)
                sock.close()
        return None

    async def _relay(self, remote: socket.socket, local: socket.socket, lport: int,
                     mirror: bool, shadow_key: tuple[int, str, int] | None = None) -> None:
        if not mirror:  # stolen: a plain copy both ways, at the event loop's speed
            try:
                await pipe(remote, local)
            finally:
                self.peers.pop(lport, None)
            return
        loop = asyncio.get_running_loop()
        # Shadow: frame the copy (requests) and the program's answers, compare in the book.
        ex = None
        if shadow_key is not None:
            from ..http import shadow as shadow_mod

            ex = shadow_mod.Exchanges()

        async def pump(src: socket.socket, dst: socket.socket | None) -> None:
            try:
                while True:
                    data = await loop.sock_recv(src, READ_SIZE)
                    if not data:
                        break
                    if ex is not None and self.shadow is not None and shadow_key is not None:
                        if src is remote:
                            ex.client(data)
                        elif ex.broken is None:
                            self.shadow.add(shadow_key, "local", ex.server(data))
                    if dst is not None:
                        await loop.sock_sendall(dst, data)
            except OSError:
                pass
            if dst is not None:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        try:
            await asyncio.gather(pump(remote, local), pump(local, None if mirror else remote))
        finally:
            self.peers.pop(lport, None)
            remote.close()
            local.close()
            if ex is not None and self.shadow is not None and shadow_key is not None:
                if ex.broken is not None:
                    self.shadow.skip(shadow_key, ex.broken)
                self.shadow.ended(shadow_key, "local")

    async def _in_shadow(self, link: Link, msg: Message) -> None:
        """The target's answers on a mirrored connection (summaries), or its end."""
        if self.shadow is None:
            return None
        key = (int(msg["port"]), str(msg["peer_addr"]), int(msg["peer_port"]))
        if msg["answers"]:
            self.shadow.add(key, "target", list(msg["answers"]))
        if msg.get("end"):
            self.shadow.ended(key, "target")
        return None

    async def _in_lost(self, link: Link, msg: Message) -> None:
        port = int(msg["port"])
        log.error("the %s of port %d broke in the agent: %s; re-establishing",
                  self.cfg.mode, port, msg["reason"])
        if port not in self.subs:
            return None
        try:
            await self._subscribe(port)
            log.warning("port %d is %s again", port,
                        "stolen" if self.cfg.mode == "steal" else "mirrored")
        except (TimeoutError, RemoteError, LinkClosed) as exc:
            self._end(f"lost the {self.cfg.mode} of port {port} and could not restore it: {exc}")
        return None
