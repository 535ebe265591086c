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

Listeners change hands: every bind of a served port is reported (``in_bind``), and a
process that listens on or accepts from a socket it did not bind (a reloader's worker, a
pre-forked or spawned worker, a socket passed over a Unix socket or by socket
activation) *adopts* it (``in_listen`` with ``adopt``): its local port names the target
port (from the bind, or another process's listen). A port stays subscribed while any
process that listened on it, or bound it, is alive, so a worker replaced by a reload
finds its port still stolen (connections wait in the listener's backlog meanwhile).

Lifecycle: a port is unsubscribed when the last process that listened on it (or holds
it bound) ends, or at the first connection the program refuses (it stopped listening);
the target serves it at once. A
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
    limits,
    messages_incoming,  # noqa: F401  (registers the message types)
    relay,
)
from ..config import HttpFilter, IncomingConfig, dump_tls_port
from ..http.mirror import Replay
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
class Bound:
    """A socket a process bound at ``local_port`` to serve target ``port``."""

    port: int
    want: int
    local_port: int
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


def _read_pem(path: str, key: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        raise RemoteError("tls", f"{key}: cannot read {path}: {exc.strerror}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise RemoteError("tls", f"{key}: {path} holds no PEM certificate")
    return text


class Feature:
    def __init__(self, orch: Any) -> None:
        self.orch = orch
        self.cfg: IncomingConfig = orch.config.feature.network.incoming
        self.subs: dict[int, PortSub] = {}
        self.peers: dict[int, tuple[str, int]] = {}
        self.binds: list[Bound] = []
        self.relays: set[asyncio.Task[None]] = set()
        # in_unsubscribe calls in flight: the session ends only after the agent has served
        # what the redirect already sent it (the agent drains before it answers).
        self._unsubscribing: set[asyncio.Future[Message]] = set()
        self.stats = {"conns": 0, "refused": 0}
        self._fatal: asyncio.Future[str] | None = None
        self._lock = asyncio.Lock()
        if self.cfg.mode != "off":  # a descriptor or two per relayed connection
            limits.raise_nofile_limit()
        # Shadow testing (mirror only): compare the target's answers with the program's.
        self.shadow = None
        if self.cfg.mode == "mirror" and self.cfg.shadow and self.cfg.http_filter is not None:
            log.warning("shadow: answers are not compared when an http_filter chooses what "
                        "is mirrored (the target answers every request); mirroring only")
        elif self.cfg.mode == "mirror" and self.cfg.shadow:
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
        return {"in_listen": self._in_listen, "in_peer": self._in_peer,
                "in_bind": self._in_bind}

    async def watch(self) -> str:
        self._fatal = asyncio.get_running_loop().create_future()
        return await self._fatal

    async def stop(self) -> None:
        agent = self.orch.agent
        for port in list(self.subs):
            self.subs.pop(port, None)
            if agent is not None and not agent.closed.is_set():
                with contextlib.suppress(LinkClosed, RemoteError, asyncio.TimeoutError):
                    await agent.call({"t": "in_unsubscribe", "port": port}, timeout=2)
        if self._unsubscribing:
            await asyncio.wait(set(self._unsubscribing), timeout=2)
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
        if c.mode == "off" or c.http_filter is None:
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
        if self.cfg.mode == "steal":
            msg["on_concurrent_steal"] = self.cfg.on_concurrent_steal
        spec = self._spec(port)
        if spec is not None:
            msg["filter"] = spec
        tls = self._tls(port, spec is not None)
        if tls is not None:
            msg["tls"] = tls
        await agent.call(msg, timeout=10)

    def _tls(self, port: int, filtered: bool) -> dict[str, Any] | None:
        """The ``tls`` entry of ``in_subscribe`` for a ``tls_steal`` port the agent must
        decrypt (filtered steal, or mirror); the delivery's trust is read here, on the
        developer's machine. Raises RemoteError naming the key of an unreadable file."""
        c = self.cfg
        found = c.tls_port(port)
        if found is None or not (c.mode == "mirror" or filtered):
            return None
        i, entry = found
        key = f"feature.network.incoming.tls_steal.ports[{i}]"
        out: dict[str, Any] = {"key": key, **dump_tls_port(entry)}
        del out["port"]  # the subscription names the port
        d = c.tls_delivery
        dkey = "feature.network.incoming.tls_delivery"
        delivery: dict[str, Any] = {"protocol": d.protocol}
        if d.protocol == "tls":
            delivery["trust_roots"] = [_read_pem(p, f"{dkey}.trust_roots[{j}]")
                                       for j, p in enumerate(d.trust_roots)]
            if d.server_cert:
                delivery["server_cert"] = _read_pem(d.server_cert, f"{dkey}.server_cert")
            if d.server_name:
                delivery["server_name"] = d.server_name
        out["delivery"] = delivery
        return out

    async def _in_bind(self, link: Link, msg: Message) -> Message:
        bound = Bound(int(msg["port"]), int(msg["want"]), int(msg["local_port"]), link)
        known = [b for b in self.binds if b.link is link]
        # a process that binds again and again (closing the old socket) keeps one entry
        # per local port; its link's watcher already runs
        self.binds = [b for b in self.binds
                      if not (b.link is link and b.local_port == bound.local_port)]
        self.binds.append(bound)
        if not known:
            asyncio.get_running_loop().create_task(self._watch_bind(link))
        return {"t": "in_bind_reply"}

    async def _watch_bind(self, link: Link) -> None:
        await link.closed.wait()
        # a listener it held ends with its link too (_watch_session)
        self.binds = [b for b in self.binds if b.link is not link]

    def _holder(self, port: int, local_port: int | None) -> Bound | None:
        """A live process holding a socket bound for target ``port`` (at ``local_port``)."""
        for b in self.binds:
            if b.port == port and (local_port is None or b.local_port == local_port) and \
                    not b.link.closed.is_set():
                return b
        return None

    def _adopted_port(self, msg: Message) -> tuple[int, int]:
        """(target port, port getsockname reports) of a listener a process did not bind."""
        local = int(msg["local_port"])
        for b in reversed(self.binds):
            if b.local_port == local:
                return b.port, b.want
        for sub in self.subs.values():
            if any(lst.port == local for lst in sub.listeners):
                return sub.port, sub.port
        guess = int(msg["port"])
        return guess, guess

    async def _in_listen(self, link: Link, msg: Message) -> Message:
        port = int(msg["port"])
        if self.cfg.mode == "off":
            return {"t": "in_listen_reply", "ok": False}
        want = port
        if msg.get("adopt"):
            port, want = self._adopted_port(msg)
            if port <= 0:
                return {"t": "in_listen_reply", "ok": False}
            log.debug("a process adopts the listener on local port %s (port %d)",
                      msg["local_port"], port)
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
                log.info("%s port %d of the target -> local %s:%d%s%s",
                         "stealing" if self.cfg.mode == "steal" else "mirroring", port,
                         listener.addr, listener.port,
                         " (relayed over the agent link)" if self._relayed() else "",
                         ", only requests the http_filter matches"
                         if self._spec(port) is not None else "")
            sub.listeners.append(listener)
        asyncio.get_running_loop().create_task(self._watch_session(link, port, listener))
        return {"t": "in_listen_reply", "ok": True, "port": port, "want": want}

    async def _watch_session(self, link: Link, port: int, listener: Listener) -> None:
        await link.closed.wait()
        sub = self.subs.get(port)
        if sub is None or listener not in sub.listeners:
            return
        sub.listeners.remove(listener)
        if sub.listeners:
            return
        holder = self._holder(port, listener.port)
        if holder is not None:
            # The socket lives on in the process that bound it (a reloader between two
            # workers): connections queue in its backlog until the next worker accepts.
            log.info("port %d: the worker that listened has ended; the listener stays "
                     "(held by the process that bound it)", port)
            kept = Listener(listener.addr, listener.port, listener.family, holder.link)
            sub.listeners.append(kept)
            asyncio.get_running_loop().create_task(
                self._watch_session(holder.link, port, kept))
            return
        await self._drop(port, "the process that listened has ended")

    async def _drop(self, port: int, why: str) -> None:
        if self.subs.pop(port, None) is None:
            return
        log.info("port %d: %s; the target serves it again", port, why)
        agent = self.orch.agent
        if agent is not None and not agent.closed.is_set():
            call = asyncio.ensure_future(
                agent.call({"t": "in_unsubscribe", "port": port}, timeout=2))
            self._unsubscribing.add(call)
            call.add_done_callback(self._unsubscribing.discard)
            with contextlib.suppress(LinkClosed, RemoteError, asyncio.TimeoutError):
                await call

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
        peer = (str(msg["peer_addr"]), int(msg["peer_port"]))
        if mirror:
            shadow_key = (port, *peer) if self.shadow is not None else None
            coro = self._mirror_relay(remote, *local, port, peer, shadow_key)
        else:
            coro = self._relay(remote, *local)
        task = asyncio.get_running_loop().create_task(coro)
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
        if msg["mode"] == "mirror":
            # The copy goes through the same replaying relay as in fd mode: the relay
            # stream writes into one end of a socketpair, the mirror relay reads the other.
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            stream = relay.RelayStream(conn, theirs, link.send, table.done, started=False,
                                       discard=True)
            table.add(stream)
            task = asyncio.get_running_loop().create_task(self._mirror_relay(
                ours, sock, lport, port, (str(msg["peer_addr"]), int(msg["peer_port"])),
                None))
            self.relays.add(task)
            task.add_done_callback(self.relays.discard)
            return {"t": "in_conn_reply", "ok": True}
        stream = relay.RelayStream(conn, sock, link.send, table.done, started=False,
                                   discard=False)
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

    async def _relay(self, remote: socket.socket, local: socket.socket, lport: int) -> None:
        """A stolen connection: bytes both ways between the client and the program, at
        the event loop's speed (Protocols, no ``sock_recv`` per chunk)."""
        try:
            await pipe(remote, local)
        finally:
            self.peers.pop(lport, None)

    async def _mirror_relay(self, remote: socket.socket, local: socket.socket, lport: int,
                            port: int, peer: tuple[str, int],
                            shadow_key: tuple[int, str, int] | None) -> None:
        """Copy a mirrored stream to the program and drop its answers. When the program
        closes its copy connection (Werkzeug does after every answer), unanswered requests
        go again on a new connection at once, later ones open the next connection when
        they come (:class:`tether.http.mirror.Replay`)."""
        await MirrorCopy(self, remote, local, lport, port, peer, shadow_key).run()

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


class MirrorCopy:
    """One mirrored client connection delivered to the local program, over as many copy
    connections as the program needs (it may close each one after an answer)."""

    def __init__(self, feature: Feature, remote: socket.socket, local: socket.socket,
                 lport: int, port: int, peer: tuple[str, int],
                 shadow_key: tuple[int, str, int] | None) -> None:
        self.f = feature
        self.remote = remote
        self.local: socket.socket | None = local
        self.lports = [lport]
        self.port = port
        self.peer = peer
        self.shadow_key = shadow_key
        self.replay = Replay()
        self.ex: Any = None
        if shadow_key is not None and feature.shadow is not None:
            from ..http import shadow as shadow_mod

            self.ex = shadow_mod.Exchanges()
        self.lock = asyncio.Lock()  # one writer at a time on the copy connection
        self.eof = False  # the client's side of the copy ended
        self.opened = asyncio.Event()  # a new copy connection for the answers reader
        self.loop = asyncio.get_running_loop()

    async def run(self) -> None:
        reader = self.loop.create_task(self._copy_in())
        try:
            await self._answers()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            for p in self.lports:
                self.f.peers.pop(p, None)
            self.remote.close()
            if self.local is not None:
                self.local.close()
            self._finish()

    def _finish(self) -> None:
        if self.replay.lost:
            log.warning("mirror of %s:%d: %d request(s) not delivered (the local program "
                        "closed without answering)", *self.peer, self.replay.lost)
        shadow, key, ex = self.f.shadow, self.shadow_key, self.ex
        if ex is not None and shadow is not None and key is not None:
            if ex.broken is not None:
                shadow.skip(key, ex.broken)
            shadow.ended(key, "local")

    async def _send(self, data: bytes) -> None:
        """Write to the current copy connection (caller holds the lock). A failed write
        is the answers reader's business: it sees the close and replays."""
        if self.local is None:
            if self.replay.plain is not None or not await self._open():
                return
            data = self.replay.backlog()  # includes `data`
        with contextlib.suppress(OSError):
            await self.loop.sock_sendall(self.local, data)

    async def _open(self) -> bool:
        sub = self.f.subs.get(self.port)
        new = await self.f._connect_local(sub, self.peer) if sub is not None else None
        if new is None:
            log.debug("mirror of %s:%d: the local program takes no new copy connection",
                      *self.peer)
            return False
        self.local, lport = new
        self.lports.append(lport)
        self.opened.set()
        log.debug("mirror of %s:%d: the local program closed its copy; a new connection "
                  "carries the rest", *self.peer)
        return True

    async def _copy_in(self) -> None:
        try:
            while True:
                data = await self.loop.sock_recv(self.remote, READ_SIZE)
                if not data:
                    break
                async with self.lock:
                    self.replay.client(data)
                    if self.ex is not None:
                        self.ex.client(data)
                    await self._send(data)
        except OSError:
            pass
        async with self.lock:
            self.eof = True
            if self.local is not None:
                with contextlib.suppress(OSError):
                    self.local.shutdown(socket.SHUT_WR)
            self.opened.set()  # wakes the answers reader if it waits for a connection

    async def _answers(self) -> None:
        shadow = self.f.shadow
        while True:
            sock = self.local
            if sock is None:
                return
            try:
                while True:
                    data = await self.loop.sock_recv(sock, READ_SIZE)
                    if not data:
                        break
                    self.replay.answer(data)
                    ex = self.ex
                    if ex is not None and ex.broken is None and shadow is not None:
                        shadow.add(self.shadow_key, "local", ex.server(data))
            except OSError:
                pass
            async with self.lock:
                sock.close()
                self.local = None
                self.opened.clear()
                if self.replay.closed():  # requests wait for an answer: a new one now
                    if not await self._open():
                        return
                    await self._send(self.replay.backlog())
                    if self.eof:
                        with contextlib.suppress(OSError):
                            self.local.shutdown(socket.SHUT_WR)
                    continue
                if self.eof or self.replay.plain is not None:
                    return
            await self.opened.wait()  # the client's next request opens the next one
