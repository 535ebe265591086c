"""Agent side of the seccomp supervisor: what Go-style programs need from the target that
the layer gets otherwise (the target's nameservers, for resolvers that talk DNS
themselves)."""

from __future__ import annotations

from typing import Any

from .. import seccomp  # noqa: F401  (registers the message types)
from ..link import Link
from ..protocol import Message
from .dns import parse_resolv_conf


async def _nameservers(link: Link, msg: Message) -> Message:
    pid = link.state["ctx"].target_pid
    try:
        with open(f"/proc/{pid}/root/etc/resolv.conf") as f:
            conf = parse_resolv_conf(f.read())
    except OSError:
        return {"t": "agent_nameservers_reply", "servers": []}
    return {"t": "agent_nameservers_reply", "servers": list(conf.nameservers)}


HANDLERS: dict[str, Any] = {"agent_nameservers": _nameservers}
