"""The agent's server: authenticate the orchestrator, then answer its requests.

The agent runs inside the target's network namespace and sees the target's files
through ``/proc/<pid>/root``.  It serves exactly one orchestrator: the first frame must
be ``auth`` with the session secret, otherwise the connection is dropped.  Feature
modules add handlers to ``HANDLERS``.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from ..link import Handler, Link, RemoteError
from ..protocol import Message

log = logging.getLogger("tether.agent")


@dataclass
class AgentContext:
    target_pid: int
    secret: str
    extras: dict[str, Any] = field(default_factory=dict)


def read_environ(pid: int) -> dict[str, str]:
    """The target's environment, from /proc/<pid>/environ."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if not item or b"=" not in item:
            continue
        key, _, value = item.partition(b"=")
        env[key.decode(errors="surrogateescape")] = value.decode(errors="surrogateescape")
    return env


async def _agent_env(link: Link, msg: Message) -> Message:
    ctx: AgentContext = link.state["ctx"]
    try:
        env = read_environ(ctx.target_pid)
    except FileNotFoundError:
        raise RemoteError("target_gone", f"target process {ctx.target_pid} has exited") from None
    except PermissionError:
        raise RemoteError(
            "permission",
            f"cannot read the environment of process {ctx.target_pid}: permission denied",
        ) from None
    return {"t": "agent_env_reply", "env": env}


async def _ping(link: Link, msg: Message) -> Message:
    return {"t": "pong"}


HANDLERS: dict[str, Handler] = {"agent_env": _agent_env, "ping": _ping}


def all_handlers() -> dict[str, Handler]:
    """This module's handlers plus those of every agent feature module.

    A feature module in this package exposes ``HANDLERS`` (message type -> handler);
    per-link clean-up goes in ``link.state["cleanups"]`` (callables run when the
    orchestrator goes away).
    """
    import importlib
    import pkgutil

    from .. import agent as package

    handlers = dict(HANDLERS)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in {"server", "__main__"}:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        handlers.update(getattr(module, "HANDLERS", {}))
    return handlers


async def _authenticate(link: Link, msg: Message) -> Message | None:
    ctx: AgentContext = link.state["ctx"]
    if msg.get("v") != protocol.VERSION:
        raise RemoteError(
            "version", f"agent speaks protocol {protocol.VERSION}, got {msg.get('v')}")
    if not hmac.compare_digest(str(msg.get("secret", "")), ctx.secret):
        log.warning("rejected a client with a wrong session secret")
        link.send({"t": "error", "id": msg["id"], "code": "auth",
                   "message": "bad session secret"})
        link.close("bad secret")
        return None
    link.handlers = link.state.get("handlers") or all_handlers()
    log.info("orchestrator authenticated")
    return {"t": "auth_ok", "agent": f"tether-agent/{os.getpid()}", "target_pid": ctx.target_pid}


async def serve_connection(ctx: AgentContext, sock: socket.socket) -> str:
    """Serve one orchestrator until it goes away; return why the link closed."""
    # Import every feature module before the orchestrator's first frame can arrive: on a
    # process target the orchestrator is busy starting up meanwhile, so this costs no time.
    handlers = all_handlers()
    link = Link(sock, {"auth": _authenticate}, name="agent")
    link.state["ctx"] = ctx
    link.state["handlers"] = handlers
    await link.serve()
    for cleanup in list(link.state.get("cleanups", [])):
        try:
            cleanup()
        except Exception:
            log.exception("cleanup failed")
    return link.close_reason
