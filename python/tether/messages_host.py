"""Messages about the target as a host (``feature.hostname``), imported by both sides."""

from __future__ import annotations

from . import protocol

# orchestrator -> agent: the target's hostname (its UTS namespace's nodename)
protocol.register("agent_hostname", {"id": (int, True)})
protocol.register("agent_hostname_reply", {"id": (int, True), "hostname": (str, True)})
