"""``feature.hostname`` (on by default, as in the incumbent): ``gethostname()``,
``uname()`` and so ``hostname``, Python's ``socket.gethostname()`` and Node's
``os.hostname()`` answer the target's hostname.

The name goes into the layer's table (``hn``); the layer's hooks (``csrc/hostname.c``)
answer from it without a round trip.  A target that is a process on this machine is asked
here, as its environment is (the program may start before the agent answers); any other
target's agent is asked at start, before the layer's table is written.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .. import messages_host  # noqa: F401  (registers the messages)

log = logging.getLogger("tether")

# What a UTS nodename can hold and the layer's table can carry (no ';' or '=').
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Feature:
    def __init__(self, orch: Any) -> None:
        self.orch = orch
        self.enabled = bool(orch.config.feature.hostname)
        self.hostname: str | None = None
        pid = getattr(orch.target, "pid", None)
        self.local = (self.enabled and isinstance(pid, int)
                      and getattr(orch.target, "environ", None) is not None)
        if self.local:
            from ..agent.hostname import target_hostname
            from ..link import RemoteError

            try:
                self._take(target_hostname(pid))
            except RemoteError as exc:
                log.warning("%s; the program sees this machine's hostname", exc.message)

    async def start(self) -> None:
        if not self.enabled or self.local:
            return
        reply = await self.orch.agent.call({"t": "agent_hostname"})
        self._take(str(reply["hostname"]))

    def _take(self, name: str) -> None:
        if _NAME.match(name):
            self.hostname = name
            log.debug("hostname: %s", name)
        else:
            log.warning("the target's hostname %r cannot be given to the program; it sees "
                        "this machine's", name)

    def layer_config(self) -> dict[str, str]:
        return {"hn": self.hostname} if self.hostname else {}
