"""Messages between ``tether exec`` and the orchestrator it forked (tether.cli <-> orchestrator).

Their own module so that the ``tether exec`` side can speak them without importing the
orchestrator (asyncio and the features), which it never runs itself."""

from __future__ import annotations

from . import protocol

protocol.register("session_ready", {"env": (dict, True), "socket": (str, True)})
protocol.register("session_failed", {"message": (str, True)})
# tether exec -> orchestrator: the program is about to be exec'd; with "fds": 1 it carries
# the seccomp listener of a static/Go program (the orchestrator answers once it supervises).
protocol.register("session_exec", {})
