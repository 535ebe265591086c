"""Outgoing traffic and DNS through the target (orchestrator side).

The layer decides local vs remote in C from the table this feature writes into
TETHER_LAYER_CONFIG (``layer_config``).  Remote calls come here:

- ``dns_lookup``: forwarded to the agent, which resolves as the target would.
- ``out_connect``: the agent makes the socket inside the target.  When the agent link can
  carry descriptors (process targets) the socket itself is passed on to the layer, which
  installs it over the program's descriptor: no byte of the connection crosses Python.
  Otherwise (TCP links to Kubernetes agents, or TETHER_OUTGOING_RELAY=1 to test and
  measure it) the agent connects and relays the bytes over the link, and this side gives
  the layer a one-shot loopback listener to connect the program's socket to (UDP: a
  loopback UDP port, each datagram relayed as one message).
"""

from __future__ import annotations

import asyncio
import contextlib
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

ACCEPT_TIMEOUT = 10.0


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
        self._v6_loopback: bool | None = None

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
        if msg["proto"] != "tcp":
            return await self._out_udp_relay(req, int(msg["family"]))
        listener, relay_addr = self._listener(int(msg["family"]))
        try:
            reply = await self.agent.call(req)
        except BaseException:
            listener.close()
            raise
        if reply["result"] != 0:
            listener.close()
            return {"t": "out_connect_reply", "mode": "relay", "result": reply["result"]}
        task = asyncio.create_task(self._accept_relay(listener, int(reply["conn"])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"t": "out_connect_reply", "mode": "relay", "result": 0,
                "local": reply.get("local", []), "relay": relay_addr}

    async def _out_udp_relay(self, req: Message, family: int) -> Message:
        """UDP over the relay: the agent's socket is connected to the destination (also for
        the sendto case: one destination per relayed socket); the layer connects the
        program's socket to a loopback UDP port of ours, and each datagram crosses the link
        as one ``relay_data`` (see relay.DatagramRelay)."""
        req["connect"] = True
        sock, relay_addr = self._listener(family, socket.SOCK_DGRAM)
        try:
            reply = await self.agent.call(req)
        except BaseException:
            sock.close()
            raise
        if reply["result"] != 0:
            sock.close()
            return {"t": "out_connect_reply", "mode": "relay", "result": reply["result"]}
        conn = int(reply["conn"])
        log.debug("udp relay %d: port %d", conn, relay_addr[1])
        relays = relay.table(self.agent)
        relays.add(DatagramRelay(conn, sock, self._send_agent, relays.done, learn_peer=True))
        self._send_agent({"t": "relay_ack", "conn": conn, "n": 0})  # the agent may start reading
        return {"t": "out_connect_reply", "mode": "relay", "result": 0,
                "local": reply.get("local", []), "relay": relay_addr}

    # ---- relay ----
    def _listener(self, family: int,
                  kind: int = socket.SOCK_STREAM) -> tuple[socket.socket, list[Any]]:
        """A one-shot listener on loopback for the program's socket to connect to (or, for
        SOCK_DGRAM, a loopback UDP port for it to send to)."""
        if family == socket.AF_INET6 and self._v6_loopback is not False:
            try:
                s = socket.socket(socket.AF_INET6, kind)
                s.bind(("::1", 0))
                self._v6_loopback = True
            except OSError:
                self._v6_loopback = False
                s.close()
            else:
                if kind == socket.SOCK_STREAM:
                    s.listen(1)
                s.setblocking(False)
                return s, [socket.inet_pton(socket.AF_INET6, "::1"), s.getsockname()[1]]
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
        s.setblocking(False)
        return s, [socket.inet_pton(socket.AF_INET, "127.0.0.1"), s.getsockname()[1]]

    async def _accept_relay(self, listener: socket.socket, conn: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock, _ = await asyncio.wait_for(loop.sock_accept(listener), ACCEPT_TIMEOUT)
        except (TimeoutError, OSError):
            with contextlib.suppress(Exception):
                self.agent.send({"t": "relay_close", "conn": conn, "errno": 110})
            return
        finally:
            listener.close()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        relays = relay.table(self.agent)
        relays.add(RelayStream(conn, sock, self._send_agent, relays.done))
        self._send_agent({"t": "relay_ack", "conn": conn, "n": 0})  # the agent may start reading

    def _send_agent(self, msg: dict[str, Any]) -> None:
        self.agent.send(msg)


__all__ = ["Feature", "AddressFilter"]
