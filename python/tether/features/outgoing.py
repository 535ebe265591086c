"""Outgoing traffic and DNS through the target (orchestrator side).

The layer decides local vs remote in C from the table this feature writes into
TETHER_LAYER_CONFIG (``layer_config``).  Remote calls come here:

- ``dns_lookup``: forwarded to the agent, which resolves as the target would.
- ``out_connect``: the agent makes the socket inside the target.  When the agent link can
  carry descriptors (process targets) the socket itself is passed on to the layer, which
  installs it over the program's descriptor: no byte of the connection crosses Python.
  Otherwise (TCP links to Kubernetes agents, or TETHER_OUTGOING_RELAY=1 to test and
  measure it) the agent connects and relays the bytes over the link, and this side hands
  the layer one end of a private loopback pair (``private_pair``: TCP or UDP, connected to
  nothing but our end), installed over the program's descriptor as in fd mode; each UDP
  datagram is relayed as one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from typing import Any

from .. import (
    messages_outgoing,  # noqa: F401  (registers the message types)
    relay,
)
from ..config import AddressFilter, TrafficFilter
from ..link import Link, RemoteError
from ..protocol import Message
from ..relay import DatagramRelay, RelayStream, RelayTable

log = logging.getLogger("tether.outgoing")

_LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_v6_loopback: bool | None = None


def private_pair(family: int, kind: int) -> tuple[socket.socket, socket.socket]:
    """Two loopback sockets connected to each other and to nobody else: (ours, the program's).

    TCP: a listener that lives only while our own connect is accepted; any other connection
    that reaches it meanwhile (a local process watching /proc/net/tcp) is closed, never
    served.  UDP: two bound sockets connected to each other, so the kernel drops datagrams
    from any other sender.  The program's end keeps the program's address family where
    loopback allows (no ::1 here: IPv4)."""
    global _v6_loopback
    if family == socket.AF_INET6 and _v6_loopback is None:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.bind(("::1", 0))
            _v6_loopback = True
        except OSError:
            _v6_loopback = False
    if family != socket.AF_INET6 or not _v6_loopback:
        family = socket.AF_INET
    host = _LOOPBACK[family]
    if kind == socket.SOCK_DGRAM:
        ours, theirs = socket.socket(family, kind), socket.socket(family, kind)
        try:
            ours.bind((host, 0))
            # connect() binds the program's end and fixes its peer in one step: it is never
            # open to other senders.  Ours was, between bind and connect: what arrived then
            # is thrown away, and the relay also drops anything not from the program's end.
            theirs.connect(ours.getsockname())
            ours.connect(theirs.getsockname())
            ours.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    ours.recv(1)
        except OSError:
            ours.close()
            theirs.close()
            raise
        return ours, theirs
    listener = socket.socket(family, kind)
    theirs = socket.socket(family, kind)
    try:
        listener.settimeout(1.0)
        listener.bind((host, 0))
        listener.listen(8)
        theirs.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            theirs.connect(listener.getsockname())
        me = theirs.getsockname()
        for _ in range(64):
            ours, peer = listener.accept()
            if peer[:2] == me[:2]:
                break
            ours.close()  # someone else raced to the port: never served
        else:
            raise OSError(errno.EADDRINUSE, "the relay's loopback port was flooded")
    except OSError:
        theirs.close()
        raise
    finally:
        listener.close()
    theirs.setblocking(True)
    ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, theirs


def relay_forced() -> bool:
    return os.environ.get("TETHER_OUTGOING_RELAY", "") not in ("", "0", "false", "no")


class Feature:
    def __init__(self, orch: Any) -> None:
        self.orch = orch
        net = orch.config.feature.network
        self.out = net.outgoing
        self.dns = net.dns
        self.relays: RelayTable | None = None
        self._resolved: dict[str, list[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def agent(self) -> Link:
        assert self.orch.agent is not None
        link: Link = self.orch.agent
        return link

    @property
    def relay_mode(self) -> bool:
        return relay_forced() or not self.agent.can_pass_fds

    # ---- plug-in points ----
    async def start(self) -> None:
        self.relays = relay.table(self.agent)  # shared with incoming; reset when the link ends
        await self._resolve_filter_names()

    def prepare_layer_config(self) -> bool:
        """The table is complete before ``start`` unless the filter names hosts (the agent
        resolves them there)."""
        return self.out.filter is None or not any(e.host for e in self.out.filter.entries)

    async def stop(self) -> None:
        if self.relays is not None:
            self.relays.abort_all()
        for task in self._tasks:
            task.cancel()

    def layer_handlers(self) -> dict[str, Any]:
        return {"dns_lookup": self._dns_lookup, "out_connect": self._out_connect}

    def layer_config(self) -> dict[str, str]:
        entries = {
            "dns": "1" if self.dns.enabled else "0",
            "out.tcp": "1" if self.out.tcp else "0",
            "out.udp": "1" if self.out.udp else "0",
            "out.ignore_lo": "1" if self.out.ignore_localhost else "0",
        }
        if self.dns.filter is not None:
            entries["dns.filter"] = self.dns.filter.kind
            entries["dns.names"] = ",".join(
                e.host for e in self.dns.filter.entries if e.host)
        if self.out.filter is not None:
            entries["out.filter"] = self.out.filter.kind
            entries["out.rules"] = ",".join(self._rules(self.out.filter))
        return entries

    # ---- the decision table for the layer ----
    def _rules(self, flt: TrafficFilter) -> list[str]:
        """``proto|network|port`` per entry; a name becomes one rule per address it has."""
        rules: list[str] = []
        for entry in flt.entries:
            proto = entry.protocol or "any"
            port = str(entry.port or 0)
            if entry.host is not None:
                for addr in self._resolved.get(entry.host, []):
                    bits = 128 if ":" in addr else 32
                    rules.append(f"{proto}|{addr}/{bits}|{port}")
            elif entry.network is not None:
                rules.append(f"{proto}|{entry.network.with_prefixlen}|{port}")
            else:
                rules.append(f"{proto}||{port}")
        return rules

    async def _resolve_filter_names(self) -> None:
        """Names in the outgoing filter match the addresses they have on either side."""
        if self.out.filter is None:
            return
        hosts = {e.host for e in self.out.filter.entries if e.host is not None}
        loop = asyncio.get_running_loop()
        for host in sorted(hosts):
            addrs: set[str] = set()
            with contextlib.suppress(RemoteError, OSError, asyncio.TimeoutError):
                reply = await self.agent.call({"t": "agent_dns", "name": host, "family": 0}, 10)
                addrs |= {socket.inet_ntop(f, a) for f, a in reply["addrs"]}
            with contextlib.suppress(OSError):
                for info in await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM):
                    addrs.add(str(info[4][0]))
            if not addrs:
                log.warning("outgoing filter: %s resolves nowhere; its entry matches nothing",
                            host)
            self._resolved[host] = sorted(addrs)

    # ---- requests from the layer ----
    async def _dns_lookup(self, link: Link, msg: Message) -> Message:
        reply = await self.agent.call({"t": "agent_dns", "name": msg["name"],
                                       "family": msg["family"],
                                       "addrconfig": bool(msg.get("addrconfig"))})
        return {"t": "dns_lookup_reply", "canon": reply["canon"], "addrs": reply["addrs"]}

    async def _out_connect(self, link: Link, msg: Message) -> Message:
        req = {"t": "agent_connect", "proto": msg["proto"], "family": msg["family"],
               "addr": msg["addr"], "port": msg["port"],
               "connect": bool(msg.get("connect", True))}
        if not self.relay_mode:
            reply = await self.agent.call(req)
            out: Message = {"t": "out_connect_reply", "mode": "fd", "result": reply["result"],
                            "local": reply.get("local", [])}
            fds = reply.pop("_fds", [])
            if fds:
                out["_fds"] = fds
            return out
        req["relay"] = True
        udp = msg["proto"] != "tcp"
        if udp:
            req["connect"] = True  # one destination per relayed UDP socket
        reply = await self.agent.call(req)
        if reply["result"] != 0:
            return {"t": "out_connect_reply", "mode": "relay", "result": reply["result"]}
        conn = int(reply["conn"])
        try:
            ours, theirs = private_pair(int(msg["family"]),
                                        socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        except OSError as exc:
            with contextlib.suppress(Exception):
                self.agent.send({"t": "relay_close", "conn": conn, "errno": exc.errno or 24})
            raise
        relays = relay.table(self.agent)
        if udp:
            relays.add(DatagramRelay(conn, ours, self._send_agent, relays.done,
                                     only_from=theirs.getsockname()))
        else:
            relays.add(RelayStream(conn, ours, self._send_agent, relays.done, link=self.agent))
        self._send_agent({"t": "relay_ack", "conn": conn, "n": 0})  # the agent may start reading
        # The program gets the other end, already connected: there is no listener for another
        # process to reach first (the layer installs it over the program's socket).
        return {"t": "out_connect_reply", "mode": "relay", "result": 0,
                "local": reply.get("local", []), "_fds": [theirs.detach()]}

    def _send_agent(self, msg: dict[str, Any]) -> None:
        self.agent.send(msg)


__all__ = ["Feature", "AddressFilter"]
