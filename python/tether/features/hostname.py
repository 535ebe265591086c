"""``feature.hostname`` (on by default, as in the incumbent): ``gethostname()``,
``uname()`` and so ``hostname``, Python's ``socket.gethostname()`` and Node's
``os.hostname()`` answer the target's hostname.

The name is asked of the agent once at start and put in the layer's table (``hn``); the
layer's hooks (``csrc/hostname.c``) answer from it without a round trip.
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
        self._asked = False  # the target's answer is in (even one the layer cannot carry)

    def prepare_layer_config(self) -> bool:
        """A target on this machine names its host without the agent (``hostname()`` of a
        process target); then the layer's table is complete before ``start``."""
        local = getattr(self.orch.target, "hostname", None)
        if not self.enabled:
            return True
        if local is None:
            return False
        try:
            self._accept(local())
        except Exception:  # the agent's answer will say why
            return False
        return True

    async def start(self) -> None:
        if not self.enabled or self._asked:
            return
        reply = await self.orch.agent.call({"t": "agent_hostname"})
        self._accept(str(reply["hostname"]))

    def _accept(self, name: str) -> None:
        self._asked = True
        if _NAME.match(name):
            self.hostname = name
            log.debug("hostname: %s", name)
        else:
            log.warning("the target's hostname %r cannot be given to the program; it sees "
                        "this machine's", name)

    def layer_config(self) -> dict[str, str]:
        return {"hn": self.hostname} if self.hostname else {}
