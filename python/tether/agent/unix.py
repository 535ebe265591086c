"""Agent side of ``unix_streams``: connect a Unix stream socket as the target would.

A path is resolved inside the target's file system (``openat2`` with ``RESOLVE_IN_ROOT``
on the target's root, as for files), and the socket is reached through the resulting
``O_PATH`` descriptor (``/proc/self/fd/N``), so the target's mount namespace decides which
socket it is and the agent never sees its own ``/run``.  An abstract name (``@name``) is
looked up in the agent's network namespace, which is the target's.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from .. import messages_unix, relay  # noqa: F401  (registers the messages)
from ..link import Link
from ..protocol import Message
from ..relay import RelayStream
from .files import openat2_in_root, root_fd


def connect_in_target(link: Link, path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if path.startswith("@"):
            sock.connect("\0" + path[1:].replace("@", "\0"))
            return sock
        if not path.startswith("/"):
            raise OSError(errno.ENOENT, "a relative socket path has no meaning in the target",
                          path)
        fd = openat2_in_root(root_fd(link), path, os.O_PATH)
        try:
            sock.connect(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return sock
    except BaseException:
        sock.close()
        raise


async def _agent_unix_connect(link: Link, msg: Message) -> Message:
    sock = connect_in_target(link, msg["path"])
    if not msg.get("relay"):
        return {"t": "agent_unix_connect_reply", "_fds": [sock.detach()]}
    sock.setblocking(False)
    table = relay.table(link)
    conn = relay.next_conn()
    table.add(RelayStream(conn, sock, link.send, table.done, started=False))
    return {"t": "agent_unix_connect_reply", "conn": conn}


HANDLERS: dict[str, Any] = {"agent_unix_connect": _agent_unix_connect}
