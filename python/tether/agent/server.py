"""The agent's server: authenticate the orchestrator, then answer its requests.

The agent runs inside the target's network namespace and sees the target's files
through ``/proc/<pid>/root``.  It serves exactly one orchestrator: the first frame must
be ``auth`` with the session secret, otherwise the connection is dropped.  Until then a
client is a stranger: one frame of at most a few KiB, decoded within small limits, read
within a short deadline (``authenticate``).  Feature modules add handlers to ``HANDLERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import struct
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


# Before authentication a client gets one small frame, read within AUTH_TIMEOUT; at most
# MAX_UNAUTHENTICATED such clients wait at once (beyond that, the oldest is dropped).
AUTH_TIMEOUT = 3.0
MAX_UNAUTHENTICATED = 64
INHERITED_AUTH_TIMEOUT = 120.0


class AuthFailed(Exception):
    """A client did not authenticate; the message says why (logged, not sent)."""


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise AuthFailed("closed before authenticating")
        data += chunk
    return bytes(data)


async def read_auth(sock: socket.socket) -> Message:
    """The client's first frame, read exactly (no byte of what follows) and decoded within
    protocol.PREAUTH_LIMITS: a few KiB, whatever the client sends."""
    limits = protocol.PREAUTH_LIMITS
    header = await _recv_exactly(sock, 4)
    (length,) = struct.unpack(">I", header)
    if length > limits.frame:
        raise AuthFailed(f"first frame of {length} bytes (at most {limits.frame} before auth)")
    try:
        return protocol.unpack(await _recv_exactly(sock, length), limits)
    except protocol.ProtocolError as exc:
        raise AuthFailed(str(exc)) from None


def _refuse(sock: socket.socket, msg: Message | None, code: str, text: str) -> None:
    if msg is not None and isinstance(msg.get("id"), int):
        with contextlib.suppress(OSError, protocol.ProtocolError):
            sock.setblocking(True)
            sock.settimeout(0.5)
            sock.sendall(protocol.encode({"t": "error", "id": msg["id"], "code": code,
                                          "message": text}))
    sock.close()


async def authenticate(ctx: AgentContext, sock: socket.socket,
                       timeout: float = AUTH_TIMEOUT) -> int | None:
    """Read and check the client's ``auth`` frame; the request id to answer, or None (the
    client was told why, if it asked properly, and its socket closed)."""
    msg: Message | None = None
    try:
        msg = await asyncio.wait_for(read_auth(sock), timeout)
    except TimeoutError:
        log.warning("dropped a client that did not authenticate within %.0f s", timeout)
        sock.close()
        return None
    except (AuthFailed, OSError) as exc:
        log.warning("dropped a client before authentication: %s", exc)
        sock.close()
        return None
    if msg["t"] != "auth":
        _refuse(sock, msg, "auth", "authenticate first (auth with the session secret)")
        return None
    if msg.get("v") != protocol.VERSION:
        _refuse(sock, msg, "version",
                f"agent speaks protocol {protocol.VERSION}, got {msg.get('v')}")
        return None
    given = str(msg.get("secret", "")).encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, ctx.secret.encode("utf-8", "surrogateescape")):
        log.warning("rejected a client with a wrong session secret")
        _refuse(sock, msg, "auth", "bad session secret")
        return None
    return int(msg.get("id", 0))


def auth_ok(ctx: AgentContext, request_id: int) -> Message:
    return {"t": "auth_ok", "id": request_id, "agent": f"tether-agent/{os.getpid()}",
            "target_pid": ctx.target_pid}


def run_cleanups(link: Link) -> None:
    for cleanup in list(link.state.get("cleanups", [])):
        try:
            cleanup()
        except Exception:
            log.exception("cleanup failed")


async def serve_connection(ctx: AgentContext, sock: socket.socket) -> str:
    """Serve one orchestrator (an inherited socket) until it goes away; why it closed."""
    # Import every feature module before the orchestrator's first frame can arrive: on a
    # process target the orchestrator is busy starting up meanwhile, so this costs no time.
    handlers = all_handlers()
    # The socket is private to our parent, which may still be starting up on a busy
    # machine: the frame is bounded as for anyone, the deadline is the orchestrator's own.
    request_id = await authenticate(ctx, sock, INHERITED_AUTH_TIMEOUT)
    if request_id is None:
        return "the orchestrator did not authenticate"
    link = Link(sock, handlers, name="agent", limits=protocol.AGENT_LIMITS)
    link.state["ctx"] = ctx
    log.info("orchestrator authenticated")
    link.send(auth_ok(ctx, request_id))
    await link.serve()
    run_cleanups(link)
    return link.close_reason


class AgentServer:
    """The agent on a TCP port (Kubernetes): accepts any number of clients, authenticates
    each within AUTH_TIMEOUT, and serves one orchestrator.

    The orchestrator's link is resumable: when its connection drops (the API server cut the
    port-forward), the session's state (subscriptions, redirects) stays for ``grace``
    seconds, connections the target receives meanwhile are served by the target, and the
    orchestrator's re-authenticated connection carries on with the same link.  A link
    closed with ``link_close``, or not resumed in time, ends the session (cleanups run)."""

    def __init__(self, ctx: AgentContext, grace: float) -> None:
        self.ctx = ctx
        self.grace = grace
        self.handlers = all_handlers()
        self.link: Link | None = None
        self.ended = asyncio.Event()
        self.authenticated = asyncio.Event()
        self._pending: dict[asyncio.Task[None], None] = {}  # in arrival order
        self._tasks: set[asyncio.Task[Any]] = set()

    def admit(self, sock: socket.socket) -> None:
        if len(self._pending) >= MAX_UNAUTHENTICATED:
            # The one that has waited longest goes: a real orchestrator sends its auth
            # frame at once, so a flood of silent connections cannot keep it out.
            oldest = next(iter(self._pending))
            self._pending.pop(oldest)
            oldest.cancel()
            log.warning("%d clients waiting to authenticate; dropped the oldest",
                        MAX_UNAUTHENTICATED)
        task = asyncio.get_running_loop().create_task(self._admit(sock))
        self._pending[task] = None
        task.add_done_callback(lambda t: self._pending.pop(t, None))

    async def _admit(self, sock: socket.socket) -> None:
        try:
            request_id = await authenticate(self.ctx, sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        if request_id is None:
            return
        if self.ended.is_set():
            _refuse(sock, {"id": request_id}, "ended", "this agent's session has ended")
            return
        link = self.link
        if link is None:
            link = self.link = Link(sock, self.handlers, name="agent",
                                    limits=protocol.AGENT_LIMITS, resumable=True)
            link.state["ctx"] = self.ctx
            log.info("orchestrator authenticated")
            self._spawn(self._serve(link))
        else:
            log.info("orchestrator re-authenticated; resuming its session")
            link.resume(sock)
        self.authenticated.set()
        link.send(auth_ok(self.ctx, request_id))

    async def _serve(self, link: Link) -> None:
        watch = self._spawn(self._expire_interrupted(link))
        await link.serve()
        watch.cancel()
        log.info("orchestrator gone (%s)", link.close_reason)
        run_cleanups(link)
        self.ended.set()

    async def _expire_interrupted(self, link: Link) -> None:
        while not link.closed.is_set():
            await link.interrupted.wait()
            log.info("lost the orchestrator (%s); waiting %.0f s for it to come back",
                     link.interrupt_reason, self.grace)
            try:
                await asyncio.wait_for(link.live.wait(), self.grace)
            except TimeoutError:
                link.close(f"the orchestrator did not come back within {self.grace:.0f} s "
                           f"({link.interrupt_reason})")
                return

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
