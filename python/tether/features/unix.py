"""``feature.network.outgoing.unix_streams``: Unix stream sockets whose path matches one
of the user's regexes are connected in the target (orchestrator side).

The regexes go to the layer translated to POSIX EREs (``files.to_ere``: the same dialect
and limits as the file rules), so a connect to any other path costs no round trip.  A
matching ``unix_connect`` is forwarded to the agent; its socket is handed to the layer,
or, when the agent's link cannot carry descriptors, relayed through a one-shot listener in
the orchestrator's private directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from typing import Any

from .. import messages_unix, relay  # noqa: F401  (registers the messages)
from ..link import Link, RemoteError
from ..protocol import Message
from ..relay import RelayStream
from ..targets import TargetError
from .files import UntranslatableRegex, encode_list, to_ere

log = logging.getLogger("tether.unix")
ACCEPT_TIMEOUT = 10.0


class Feature:
    def __init__(self, orch: Any) -> None:
        self.orch = orch
        self.patterns = orch.config.feature.network.outgoing.unix_streams
        self._dir: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        eres = []
        for i, pattern in enumerate(self.patterns):
            try:
                eres.append(to_ere(pattern))
            except UntranslatableRegex as exc:
                raise TargetError(
                    f"feature.network.outgoing.unix_streams[{i}]: {pattern!r} uses regex "
                    f"syntax tether cannot evaluate in the layer ({exc}); rewrite it "
                    "without it") from None
        self._eres = eres

    @property
    def agent(self) -> Link:
        assert self.orch.agent is not None
        link: Link = self.orch.agent
        return link

    def layer_config(self) -> dict[str, str]:
        return {"ux": encode_list(self._eres)} if self._eres else {}

    def layer_handlers(self) -> dict[str, Any]:
        return {"unix_connect": self._connect} if self._eres else {}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._dir:
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)

    async def _connect(self, link: Link, msg: Message) -> Message:
        path = msg["path"]
        relay_mode = not self.agent.can_pass_fds or os.environ.get("TETHER_UNIX_RELAY") == "1"
        log.debug("unix_connect %s%s", path, " (relay)" if relay_mode else "")
        if not relay_mode:
            reply = await self.agent.call({"t": "agent_unix_connect", "path": path})
            fds = reply.pop("_fds", [])
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise RemoteError("protocol", "the agent answered without a socket")
            return {"t": "unix_connect_reply", "_fds": fds}
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="tether-ux-")
            os.chmod(self._dir, 0o700)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        where = os.path.join(self._dir, f"{len(os.listdir(self._dir))}-{id(listener)}")
        listener.bind(where)
        listener.listen(1)
        listener.setblocking(False)
        try:
            reply = await self.agent.call({"t": "agent_unix_connect", "path": path,
                                           "relay": True})
        except BaseException:
            listener.close()
            os.unlink(where)
            raise
        task = asyncio.create_task(self._accept(listener, where, int(reply["conn"])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"t": "unix_connect_reply", "relay": where}

    async def _accept(self, listener: socket.socket, where: str, conn: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock, _ = await asyncio.wait_for(loop.sock_accept(listener), ACCEPT_TIMEOUT)
        except (TimeoutError, OSError):
            with contextlib.suppress(Exception):
                self.agent.send({"t": "relay_close", "conn": conn, "errno": 110})
            return
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(where)
        relays = relay.table(self.agent)
        relays.add(RelayStream(conn, sock, self.agent.send, relays.done))
        self.agent.send({"t": "relay_ack", "conn": conn, "n": 0})  # the agent may start reading
