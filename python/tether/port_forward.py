"""``tether port-forward``: local ports that reach hosts as the target sees them.

The incumbent's ``mirrord port-forward -L [local_port:]remote_host:remote_port`` lets tools
that do not run under it (a database client, a browser, curl) reach cluster services: a
connection to the local port is made from the target, and a host name is resolved in the
target when a connection comes in (``mirrord/cli/src/config.rs``, ``PortForwardArgs``).

tether does the same with the pieces ``tether exec`` uses: an agent started in the target
(``Orchestrator.start``), the target's resolver (``agent_dns``) and the agent's connect
with its bytes relayed over the agent link (``agent_connect`` with ``relay``, see
``tether.relay``), so it works the same over a process target's socketpair and a
Kubernetes port-forward.  The session lasts until Ctrl-C, the target goes away or the
agent is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from dataclasses import dataclass
from typing import Any

from . import relay
from .link import RemoteError
from .relay import RelayStream

log = logging.getLogger("tether")


@dataclass(frozen=True)
class Mapping:
    local_port: int
    host: str
    remote_port: int

    def __str__(self) -> str:
        return f"127.0.0.1:{self.local_port} -> {self.host}:{self.remote_port}"


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: {text!r} is not a port (1..65535)")
    return int(text)


def parse_mapping(text: str) -> Mapping:
    """``[local_port:]remote_host:remote_port``; the local port defaults to the remote one.
    An IPv6 remote host is written in brackets (``[fd00::1]:80``)."""
    rest, host = text, None
    if "[" in text:
        head, _, tail = text.partition("[")
        host, sep, after = tail.partition("]")
        if not sep or not after.startswith(":"):
            raise ValueError(f"{text!r}: expected [LOCAL_PORT:]HOST:PORT")
        rest = head + "H" + after
    parts = rest.split(":")
    if len(parts) == 2:
        parts = [parts[1], *parts]
    if len(parts) != 3 or not parts[1]:
        raise ValueError(f"{text!r}: expected [LOCAL_PORT:]HOST:PORT, e.g. 5432:db:5432")
    return Mapping(_port(parts[0], text), host if host is not None else parts[1],
                   _port(parts[2], text))


class PortForwarder:
    """Serves the mappings of one session over an orchestrator whose agent is up."""

    def __init__(self, orch: Any, mappings: list[Mapping]) -> None:
        self.orch = orch
        self.mappings = mappings
        self.listeners: list[socket.socket] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def agent(self) -> Any:
        return self.orch.agent

    def bind(self) -> None:
        """Take the local ports first: a port in use fails before any agent starts."""
        for m in self.mappings:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", m.local_port))
            except OSError as exc:
                sock.close()
                self.close()
                raise OSError(f"-L {m.local_port}:{m.host}:{m.remote_port}: cannot listen on "
                              f"127.0.0.1:{m.local_port}: {exc.strerror}") from None
            sock.listen(128)
            sock.setblocking(False)
            self.listeners.append(sock)

    def serve(self) -> None:
        for m, sock in zip(self.mappings, self.listeners, strict=True):
            self.tasks.add(asyncio.create_task(self._accept(m, sock)))

    async def _accept(self, m: Mapping, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(self._client(m, client))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _resolve(self, host: str) -> tuple[int, bytes]:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            reply = await self.agent.call({"t": "agent_dns", "name": host, "family": 0}, 15)
            addrs = reply["addrs"]
            if not addrs:
                raise OSError(f"{host} has no address in the target") from None
            family, packed = next((a for a in addrs if a[0] == socket.AF_INET), addrs[0])
            return int(family), bytes(packed)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        return family, ip.packed

    async def _client(self, m: Mapping, client: socket.socket) -> None:
        try:
            family, addr = await self._resolve(m.host)
            reply = await self.agent.call({"t": "agent_connect", "proto": "tcp",
                                           "family": family, "addr": addr,
                                           "port": m.remote_port, "relay": True})
        except (RemoteError, OSError, TimeoutError) as exc:
            log.warning("%s: %s", m, getattr(exc, "message", None) or exc)
            log.debug("%s: %r", m, exc, exc_info=True)
            _reset(client)
            return
        if reply["result"] != 0:
            import os

            log.warning("%s: %s (in the target)", m, os.strerror(int(reply["result"])))
            _reset(client)
            return
        client.setblocking(False)
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        relays = relay.table(self.agent)
        conn = int(reply["conn"])
        relays.add(RelayStream(conn, client, self.agent.send, relays.done))
        self.agent.send({"t": "relay_ack", "conn": conn, "n": 0})  # the agent may start reading

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for sock in self.listeners:
            sock.close()


def _reset(sock: socket.socket) -> None:
    """The target refused: the client sees a reset, as it would connecting there."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()


async def run(orch: Any, mappings: list[Mapping]) -> str:
    """Start the agent, serve the mappings until the session ends; return why it ended
    ("" for Ctrl-C / SIGTERM)."""
    forwarder = PortForwarder(orch, mappings)
    forwarder.bind()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(""))
    try:
        await orch.start()
        ready = getattr(orch, "ready", None)
        if ready is not None:  # start() may return before the agent has answered
            await ready()
        forwarder.serve()
        for m in mappings:
            log.info("forwarding %s (in %s)", m, orch.target.describe())
        waits = {asyncio.ensure_future(stop): lambda r: str(r),
                 asyncio.ensure_future(orch.target.wait_gone()): lambda r: str(r),
                 asyncio.ensure_future(orch.agent.closed.wait()):
                     lambda r: f"lost the agent ({orch.agent.close_reason})"}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        first = next(iter(done))
        return waits[first](first.result())
    finally:
        forwarder.close()
        await orch.stop()
