"""Outgoing connections made inside the target's network namespace.

``agent_connect`` creates a TCP or UDP socket here (the agent lives in the target's netns),
starts a non-blocking connect and either hands the socket itself back (``relay`` false: the
reply carries it, SCM_RIGHTS; the kernel finishes the connect in the program, so
EINPROGRESS, SO_ERROR, refused and unreachable are the pod's own) or keeps it and relays
its bytes over the link (``relay`` true: links that cannot carry descriptors).
"""

from __future__ import annotations

import asyncio
import errno as E
import logging
import socket
from typing import Any

from .. import (
    messages_outgoing,  # noqa: F401  (registers the message types)
    relay,
)
from ..link import Link, RemoteError
from ..protocol import Message
from ..relay import DatagramRelay, RelayStream

log = logging.getLogger("tether.agent.outgoing")

CONNECT_TIMEOUT = 75.0  # about what Linux gives a SYN with default tcp_syn_retries


def sockaddr(family: int, addr: bytes, port: int) -> tuple[Any, ...]:
    host = socket.inet_ntop(family, addr)
    return (host, port) if family == socket.AF_INET else (host, port, 0, 0)


def make_socket(msg: Message) -> tuple[socket.socket, int]:
    """A non-blocking socket with the connect started: (socket, 0 | EINPROGRESS | errno)."""
    family = int(msg["family"])
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise RemoteError("bad_request", f"address family {family} is not IPv4/IPv6",
                          errno=E.EAFNOSUPPORT)
    kind = socket.SOCK_STREAM if msg["proto"] == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)
    if not msg.get("connect", True):
        return sock, 0
    try:
        result = sock.connect_ex(sockaddr(family, msg["addr"], int(msg["port"])))
    except OSError as exc:
        result = exc.errno or E.EINVAL
    return sock, result


def _local(sock: socket.socket) -> list[Any]:
    try:
        name = sock.getsockname()
    except OSError:
        return []
    return [socket.inet_pton(sock.family, name[0]), name[1]]


async def _agent_connect(link: Link, msg: Message) -> Message:
    sock, result = make_socket(msg)
    if not msg.get("relay"):
        if result not in (0, E.EINPROGRESS):
            sock.close()
            return {"t": "agent_connect_reply", "result": result}
        local = _local(sock)
        return {"t": "agent_connect_reply", "result": result, "local": local,
                "_fds": [sock.detach()]}
    # Relay: finish the connect here, then stream.
    loop = asyncio.get_running_loop()
    if result == E.EINPROGRESS:
        done = loop.create_future()
        loop.add_writer(sock.fileno(), lambda: done.done() or done.set_result(None))
        try:
            await asyncio.wait_for(done, CONNECT_TIMEOUT)
            result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except TimeoutError:
            result = E.ETIMEDOUT
        finally:
            loop.remove_writer(sock.fileno())
    if result != 0:
        sock.close()
        return {"t": "agent_connect_reply", "result": result}
    table = relay.table(link)
    conn = relay.next_conn()
    local = _local(sock)
    # Reading starts at once: the reply naming the stream leaves before any relay_data of
    # it (one link, in order), and the orchestrator registers its end as the reply arrives,
    # so the first byte does not wait for an extra round trip.
    if sock.type == socket.SOCK_DGRAM:  # connected to the destination: one datagram a message
        table.add(DatagramRelay(conn, sock, link.send, table.done))
    else:
        table.add(RelayStream(conn, sock, link.send, table.done, link=link))
    return {"t": "agent_connect_reply", "result": 0, "local": local, "conn": conn}


HANDLERS: dict[str, Any] = {"agent_connect": _agent_connect}
