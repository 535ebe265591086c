"""The orchestrator: one per ``tether exec``, between the layer sessions and the agent.

``tether exec`` forks: the parent becomes the user's program (exec, so its pid, terminal,
signals and exit status are the program's own), the child runs this orchestrator in its
own session.  The orchestrator

1. starts the agent in the target and authenticates it with a fresh secret,
2. computes the program's environment (local env merged with the target's),
3. listens on a private Unix socket for layer sessions (one per process of the program's
   tree, children after fork and exec included),
4. reports ``session_ready`` with that environment to the parent, which then execs,
5. serves while any process of the program's tree is alive (``tether.lifetime``: the
   liveness pipe), until the target disappears or the agent is lost; then it stops the
   agent and removes its socket.  If the target or the agent goes away first it tells the
   user and ends the program, so a session never silently stops working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import lifetime, messages_session, protocol, seccomp  # noqa: F401  (their messages)
from .config import Config
from .environment import compute_env
from .features import feature_classes
from .link import Handler, Link, LinkClosed, RemoteError, serve_unix
from .protocol import Message
from .reconnect import keep_connected
from .targets import Target, TargetError

log = logging.getLogger("tether")


# Programs that only build or debug: the layer loads in pass-through mode so that their
# children (the program being built and run, the debuggee) still get it.
BUILD_TOOLS = (
    "go,cc,cc1,cc1plus,gcc,g++,clang,clang++,ld,ld.bfd,ld.gold,ld.lld,as,collect2,make,cmake,"
    "ninja,cargo,rustc,javac,mvn,gradle,git,pkg-config,gdb,lldb,dlv,strace,ltrace"
)


def agent_log_level() -> str:
    return os.environ.get("TETHER_LOG", "info")


@dataclass
class LayerSession:
    number: int
    pid: int
    exe: str


@dataclass
class Orchestrator:
    config: Config
    target: Target
    local_env: dict[str, str]
    cwd: str
    layer_so: str
    # Set when the agent was started before the event loop (``prestart_agent``).
    agent_secret: str = ""
    layer_handlers: dict[str, Handler] = field(default_factory=dict)
    sessions: dict[int, LayerSession] = field(default_factory=dict)
    child_env: dict[str, str] = field(default_factory=dict)
    agent: Link | None = None
    _sock_dir: str | None = None
    _server: asyncio.Task[None] | None = None
    _session_numbers: int = 0
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    features: list[Any] = field(default_factory=list)
    supervisors: list[Any] = field(default_factory=list)
    # Removes the session's files and stops the program if this process dies.
    watchdog: lifetime.Watchdog | None = None
    command_name: str = "the program"
    _program_pid: int = 0
    _liveness_inode: int = 0
    _finishing: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    # The command exited and daemons it started keep the session: we no longer hold the
    # terminal's pipes, and speak to the program through its processes' stderr.
    background: bool = False

    @property
    def socket_path(self) -> str:
        assert self._sock_dir is not None
        return os.path.join(self._sock_dir, "layer.sock")

    # ---- start ----
    async def start(self) -> dict[str, str]:
        """Start the agent and the layer server; return the program's environment.

        When the target gives its environment itself (a local process) and nothing in the
        layer's configuration needs an answer of the agent, the environment is returned
        before the agent has answered: the program starts while the agent finishes its
        start-up, and layer sessions wait for it (``_on_layer``).  A failure after that
        point ends the session like a lost agent does (``serve``)."""
        self.target.check()
        secret = self.agent_secret or os.urandom(16).hex()  # as secrets.token_hex
        conn = await self.target.start_agent(secret, agent_log_level())
        self.agent = Link(conn.sock, name="agent-link", resumable=conn.reconnect is not None)
        self._tasks.append(asyncio.create_task(self.agent.serve()))
        timeout = float(self.config.agent.startup_timeout)
        classes = feature_classes()  # imports: the agent starts up meanwhile
        auth = asyncio.create_task(self._authenticate(secret, timeout, conn.reconnect))
        self._tasks.append(auth)
        self.features = [cls(self) for cls in classes]
        for feature in self.features:
            self.layer_handlers.update(getattr(feature, "layer_handlers", dict)())
        environ = getattr(self.target, "environ", None)
        early = environ is not None and self._layer_config_without_agent()
        if not early:
            await auth

        remote_env: dict[str, str] = {}
        if self.config.feature.env.enabled:
            if early:
                assert environ is not None
                remote_env = environ()
            else:
                reply = await self._agent_call({"t": "agent_env"}, timeout)
                remote_env = dict(reply["env"])
        self.child_env = compute_env(self.local_env, remote_env, self.config.feature.env,
                                     cwd=self.cwd)
        log.debug("environment: %d variables from the target", len(remote_env))

        self._sock_dir = tempfile.mkdtemp(prefix="tether-")
        os.chmod(self._sock_dir, 0o700)
        if self.watchdog is not None:
            self.watchdog.remove_on_death(self._sock_dir)
        # Every other file of the session (the files feature's shadow copies) goes inside
        # this directory, so that one removal, ours or the watchdog's, leaves nothing.
        tempfile.tempdir = self._sock_dir
        self._server = await serve_unix(self.socket_path, self._on_layer)
        os.chmod(self.socket_path, 0o600)

        self._finishing = asyncio.create_task(self._finish(auth))
        self._tasks.append(self._finishing)
        if not early:
            await self._finishing
        env = dict(self.child_env)
        env.update(self.layer_variables())
        return env

    async def _authenticate(self, secret: str, timeout: float, reconnect: Any = None) -> None:
        try:
            hello = await self._agent_call(
                {"t": "auth", "v": protocol.VERSION, "secret": secret}, timeout
            )
        except (TimeoutError, LinkClosed) as exc:
            reason = await self._agent_failure_reason(exc)
            raise TargetError(
                f"the agent did not start in {self.target.describe()}: {reason}") from None
        log.info("agent ready in %s (%s)", self.target.describe(), hello["agent"])
        if reconnect is not None:  # a dropped port-forward is re-established
            assert self.agent is not None
            self._tasks.append(asyncio.create_task(keep_connected(
                self.agent, reconnect, secret, self.target.describe())))

    async def _finish(self, auth: asyncio.Task[None]) -> None:
        """The rest of the start-up: the agent's answer, then the features' start."""
        await auth
        for feature in self.features:
            start = getattr(feature, "start", None)
            if start is not None:
                await start()
        self._ready.set()

    async def ready(self) -> None:
        """Until the session is fully started; raises what made its start-up fail."""
        assert self._finishing is not None
        await asyncio.shield(self._finishing)

    def _layer_config_without_agent(self) -> bool:
        """Can the layer's table be complete before the agent has answered?  A feature whose
        ``start`` may shape its ``layer_config`` says so in ``prepare_layer_config`` (and
        does there what it can without the agent); one that does not say is waited for."""
        for feature in self.features:
            if getattr(feature, "start", None) is None:
                continue
            prepare = getattr(feature, "prepare_layer_config", None)
            if prepare is None or not prepare():
                return False
        return True

    async def _agent_failure_reason(self, exc: BaseException) -> str:
        failure = getattr(self.target, "agent_failure", None)
        if failure is not None:
            try:
                return str(await asyncio.wait_for(failure(), 3))
            except TimeoutError:
                pass
        return str(exc) or type(exc).__name__

    async def _agent_call(self, msg: dict[str, Any], timeout: float | None = None) -> Message:
        assert self.agent is not None
        return await self.agent.call(msg, timeout)

    def layer_config(self) -> str:
        skip = list(self.config.skip_processes)
        if self.config.skip_build_tools:
            skip += BUILD_TOOLS.split(",") + list(self.config.skip_extra_build_tools)
        entries = {"skip": ",".join(dict.fromkeys(s for s in skip if s and "," not in s))}
        for feature in self.features:
            entries.update(getattr(feature, "layer_config", dict)())
        for key, value in entries.items():
            if any(c in key + value for c in ";="):
                raise ValueError(f"layer config entry {key!r} contains ';' or '='")
        return ";".join(f"{k}={v}" for k, v in entries.items())

    def layer_variables(self) -> dict[str, str]:
        preload = self.local_env.get("LD_PRELOAD", "")
        return {
            "LD_PRELOAD": f"{self.layer_so}:{preload}" if preload else self.layer_so,
            "TETHER_LAYER_SO": self.layer_so,
            "TETHER_LAYER_SOCK": self.socket_path,
            "TETHER_LAYER_CONFIG": self.layer_config(),
            "TETHER_ENV_APPLIED": "1",
        }

    def start_supervisor(self, listener: int) -> None:
        """Supervise a static/Go program's system calls (seccomp user notification)."""
        from .seccomp import Supervisor

        supervisor = Supervisor(self, listener)
        self.supervisors.append(supervisor)
        supervisor.start()

    async def _seccomp_attach(self, link: Link, msg: Message) -> Message:
        """tether-launch hands over the listener of a static/Go program a layer process
        started (csrc/launch.c)."""
        fds = msg.pop("_fds", [])
        if not fds:
            raise RemoteError("no_fd", "seccomp_attach carries no descriptor")
        self.start_supervisor(fds[0])
        for extra in fds[1:]:
            os.close(extra)
        return {"t": "seccomp_attach_reply"}

    # ---- layer sessions ----
    async def _on_layer(self, sock: socket.socket) -> None:
        await self._ready.wait()  # the program may start before the agent has answered
        link = Link(sock, {"hello": self._hello}, name="layer")
        await link.serve()
        session: LayerSession | None = link.state.get("session")
        if session is not None:
            self.sessions.pop(session.number, None)
            log.debug("layer session %d (pid %d) closed: %s", session.number, session.pid,
                      link.close_reason)

    async def _hello(self, link: Link, msg: Message) -> Message:
        if msg["v"] != protocol.VERSION:
            link.close(f"layer speaks protocol {msg['v']}, orchestrator {protocol.VERSION}")
            return {"t": "error", "code": "version", "message": "protocol version mismatch"}
        self._session_numbers += 1
        session = LayerSession(self._session_numbers, msg["pid"], msg["exe"])
        self.sessions[session.number] = session
        link.state["session"] = session
        link.state["orchestrator"] = self
        link.handlers = {"env": self._env, "seccomp_attach": self._seccomp_attach,
                         **self.layer_handlers}
        log.debug("layer session %d: pid %d %s", session.number, session.pid, session.exe)
        return {"t": "hello_ok", "session": session.number}

    async def _env(self, link: Link, msg: Message) -> Message:
        return {"t": "env_reply", "env": self.child_env}

    # ---- run ----
    def program_started(self) -> None:
        if self.watchdog is not None:
            self.watchdog.program_started()

    async def serve(self, program_pid: int, liveness: int = -1) -> str:
        """Serve while the program's tree lives or until the session breaks; return why it
        ended ("" when the program's last process exited)."""
        self._program_pid = program_pid
        waits: dict[asyncio.Task[Any], Callable[[Any], str]] = {}
        program = asyncio.create_task(_wait_pid(program_pid))
        waits[program] = lambda _: ""
        tree: asyncio.Task[Any] | None = None
        if liveness >= 0:
            self._liveness_inode = lifetime.pipe_inode(liveness)
            tree = asyncio.create_task(_wait_readable(liveness))
            waits[tree] = lambda _: ""
        waits[asyncio.create_task(self.target.wait_gone())] = lambda r: str(r)
        assert self.agent is not None
        waits[asyncio.create_task(self.agent.closed.wait())] = (
            lambda _: f"lost the agent ({self.agent.close_reason if self.agent else '?'})"
        )
        for feature in self.features:
            watch = getattr(feature, "watch", None)
            if watch is not None:
                waits[asyncio.create_task(watch())] = lambda r: str(r)
        finishing = asyncio.ensure_future(self.ready()) if self._finishing else None
        if finishing is not None:
            waits[finishing] = lambda _: ""
        try:
            while True:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if finishing in done:
                    del waits[finishing]
                    exc = finishing.exception()
                    if exc is not None:
                        return str(exc) or type(exc).__name__
                    if len(done) == 1:
                        continue
                    done.discard(finishing)
                if tree is not None and program in done and tree not in done:
                    # The command exited; the processes it started may keep the session.
                    del waits[program]
                    if lifetime.hung_up(liveness):
                        return ""
                    await self._announce_background(liveness)
                    continue
                first = next(iter(done))
                return waits[first](first.result())
        finally:
            for task in waits:
                task.cancel()

    async def _announce_background(self, liveness: int) -> None:
        # A daemon's intermediate process may exit while we look (the scan sees the pids
        # that existed when it began): look again until we see a holder or none is left.
        for _ in range(50):
            procs = lifetime.holders(self._liveness_inode, exclude=(os.getpid(),))
            if procs or lifetime.hung_up(liveness):
                break
            await asyncio.sleep(0.01)
        if procs:
            log.info("%s exited; %s of its processes keep the session open in the "
                     "background, with the target's context, until the last of them exits: "
                     "%s", self.command_name, len(procs), lifetime.describe(procs))
        lifetime.detach_stdio()
        self.background = True

    def end_program(self, reason: str) -> None:
        """The session broke while the program runs: say so, then stop the program's tree."""
        procs = []
        if self._liveness_inode:
            procs = [pid for pid, _ in lifetime.holders(self._liveness_inode,
                                                         exclude=(os.getpid(),))]
        if self._program_pid and self._program_pid not in procs and os.path.exists(
                f"/proc/{self._program_pid}"):
            procs.insert(0, self._program_pid)
        text = f"{reason}; stopping the program (its remote context is gone)"
        if self.background:
            lifetime.tell(procs, "tether: " + text)
        else:
            log.error("%s", text)
        lifetime.signal_all(procs, signal.SIGTERM)

    async def stop(self) -> None:
        for supervisor in self.supervisors:
            supervisor.stop()
        for feature in reversed(self.features):
            stop = getattr(feature, "stop", None)
            if stop is not None:
                try:
                    await stop()
                except Exception:
                    log.exception("stopping %s failed", type(feature).__module__)
        if self._server is not None:
            self._server.cancel()
        if self.agent is not None:
            self.agent.close("session ended")
        await self.target.stop_agent()
        for task in self._tasks:
            task.cancel()
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)


async def _wait_readable(fd: int) -> None:
    """Until ``fd`` is readable: for the liveness pipe, EOF (nobody ever writes to it)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _wait_pid(pid: int) -> None:
    """Wait for a process that is not our child (the program we forked from)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
    try:
        await gone
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


__all__ = ["Orchestrator", "RemoteError"]
