"""``process/<pid>``: a process on this machine as the target.

The agent is started here as a child of the orchestrator, enters the target's network
namespace, and reads its environment and files through /proc/<pid>.  This target is also
the harness of tether's end-to-end tests (network namespaces as pods).

The agent is a *fork* of the orchestrator, not a new interpreter: ``tether exec`` has
already paid for Python and most imports, and a fresh ``tether-agent`` costs 100-200 ms
of start-up on the critical path of every session (docs/architecture.md, "Start-up and
round trips").  The fork happens before the orchestrator's event loop exists
(``prestart_agent``), so the two processes import the rest of what they need in parallel.
``TETHER_AGENT_EXEC=1`` starts the ``tether-agent`` program instead (as before).
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import sys
from typing import TYPE_CHECKING

from . import AgentConnection, TargetError

if TYPE_CHECKING:
    import asyncio
    import logging


# asyncio and logging are imported where they are used: tether exec checks this target
# before the fork, on the path to the program's first instruction, and needs neither.
def _log() -> logging.Logger:
    import logging

    return logging.getLogger("tether")


def agent_command() -> list[str]:
    exe = shutil.which("tether-agent", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "tether.agent"]


def _set_title(title: str) -> None:
    """Make ``ps``/``pgrep -f`` show ``title`` as our command line (what setproctitle does):
    overwrite the kernel's argv area, through /proc/self/mem, truncated to its size."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat 48, 49)
        raw = title.encode()[: max(0, end - start - 1)]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(raw + b"\0" * (end - start - len(raw)))
    except (OSError, ValueError, IndexError):
        pass  # cosmetic: comm is "tether-agent" anyway


def _reset_for_agent(stderr_fd: int, keep: int) -> None:
    """In the forked agent: a fresh session, our stdio, no descriptor or handler of the
    orchestrator's, logging as a new process has it."""
    import logging

    os.setsid()
    # Objects inherited from the orchestrator are never collected here: one of them closing
    # "its" descriptor number later could close one of the agent's.
    gc.freeze()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(stderr_fd, 2)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for logger in (logging.getLogger(), logging.getLogger("tether")):
        logger.handlers[:] = []
        logger.setLevel(logging.NOTSET)
    logging.getLogger("tether").propagate = True
    logging.getLogger().setLevel(logging.WARNING)


PF_KTHREAD = 0x00200000  # linux/sched.h: the process is a kernel thread


def _is_kernel_thread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return bool(int(fields[6]) & PF_KTHREAD)  # flags, field 9 of stat
    except (OSError, ValueError, IndexError):
        return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


class ProcessTarget:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._agent: asyncio.subprocess.Process | None = None
        self._agent_pid = 0  # a forked agent (our child, reaped through its pidfd)
        self._pidfd = -1
        self._exit: asyncio.Future[int] | None = None
        self._exit_code: int | None = None
        self._stderr_fd = -1
        self._conn: socket.socket | None = None
        self._stderr_lines: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None

    def describe(self) -> str:
        return f"process/{self.pid}"

    def check(self) -> None:
        if self.pid <= 0 or not os.path.exists(f"/proc/{self.pid}"):
            raise TargetError(f"target process/{self.pid}: no such process")
        if _is_kernel_thread(self.pid):
            raise TargetError(
                f"target process/{self.pid} is a kernel thread ({_comm(self.pid)}): it has no "
                "environment, files or program of its own; pick the pid of the application "
                "(e.g. from `ps -ef`)")
        try:
            os.stat(f"/proc/{self.pid}/ns/net")
            with open(f"/proc/{self.pid}/environ", "rb"):
                pass
        except PermissionError:
            raise TargetError(
                f"target process/{self.pid}: permission denied reading its namespaces and "
                "environment; run tether as root (or with CAP_SYS_ADMIN and CAP_SYS_PTRACE)"
            ) from None
        except (FileNotFoundError, ProcessLookupError):
            raise TargetError(f"target process/{self.pid}: no such process") from None
        except OSError as exc:
            raise TargetError(
                f"target process/{self.pid}: cannot be used: {exc.strerror}") from None

    def environ(self) -> dict[str, str]:
        """The target's environment, read here: the same file the agent would read, one
        round trip (and the agent's start-up) off the program's start."""
        from ..environment import parse_environ

        try:
            with open(f"/proc/{self.pid}/environ", "rb") as f:
                return parse_environ(f.read())
        except (FileNotFoundError, ProcessLookupError):
            raise TargetError(f"target process {self.pid} has exited") from None
        except PermissionError:
            raise TargetError(f"cannot read the environment of process {self.pid}: "
                              "permission denied") from None

    def hostname(self) -> str:
        """The target's hostname, learned here as the agent would (feature.hostname)."""
        from ..agent.hostname import target_hostname

        return target_hostname(self.pid)

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
        log = _log()

        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self._stderr_lines.append(text)
            del self._stderr_lines[:-20]
            # The agent formats its own lines; pass them on at the level they carry.
            if " ERROR " in text or text.startswith("tether-agent:"):
                log.error("%s", text)
            elif " WARNING " in text:
                log.warning("%s", text)
            else:
                log.debug("%s", text)

    # ---- the forked agent ----
    def prestart_agent(self, secret: str, log_level: str) -> None:
        """Fork the agent now (no event loop yet); ``start_agent`` then picks it up."""
        log = _log()

        if self._conn is not None or os.environ.get("TETHER_AGENT_EXEC") == "1":
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        argv = ["--target-pid", str(self.pid), "--enter-netns", "--fd", str(theirs.fileno()),
                "--log-level", log_level]
        orchestrator = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                _reset_for_agent(write_end, keep=theirs.fileno())
                os.set_inheritable(theirs.fileno(), True)
                from .. import _native

                _native.lib.tether_set_pdeathsig(signal.SIGKILL)
                if os.getppid() != orchestrator:  # it died before the line above
                    os._exit(1)
                # Both names at once: whoever finds us by command line (pgrep -f) must
                # also see the comm the agent would set later.
                _native.lib.tether_set_name(b"tether-agent")
                _set_title("tether-agent " + " ".join(argv))
                from ..agent.__main__ import main as agent_main

                code = agent_main(argv, secret=secret)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        os.close(write_end)
        self._agent_pid = pid
        self._pidfd = os.pidfd_open(pid)
        self._stderr_fd = read_end
        self._conn = ours
        log.debug("started agent: pid %d (forked)", pid)

    def _on_agent_exit(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        try:
            _, status = os.waitpid(self._agent_pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = -1
        self._exit_code = code
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)

    async def _wait_forked(self) -> int:
        import asyncio

        if self._exit_code is not None:
            return self._exit_code
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def start_agent(self, secret: str, log_level: str) -> AgentConnection:
        import asyncio

        self.prestart_agent(secret, log_level)
        if self._conn is not None:
            loop = asyncio.get_running_loop()
            self._exit = loop.create_future()
            loop.add_reader(self._pidfd, self._on_agent_exit)
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                         os.fdopen(self._stderr_fd, "rb", buffering=0))
            self._stderr_task = asyncio.create_task(self._pump_stderr(reader))
            return AgentConnection(self._conn,
                                   f"tether-agent pid {self._agent_pid} in {self.describe()}")
        return await self._exec_agent(secret, log_level)

    # ---- the tether-agent program (TETHER_AGENT_EXEC=1) ----
    async def _exec_agent(self, secret: str, log_level: str) -> AgentConnection:
        import asyncio
        log = _log()

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["TETHER_AGENT_SECRET"] = secret
        cmd = agent_command() + [
            "--target-pid", str(self.pid), "--enter-netns", "--fd", str(theirs.fileno()),
            "--log-level", log_level,
        ]
        log.debug("starting agent: %s", " ".join(cmd))
        self._agent = await asyncio.create_subprocess_exec(
            *cmd, pass_fds=[theirs.fileno()], env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        theirs.close()
        assert self._agent.stderr is not None
        self._stderr_task = asyncio.create_task(self._pump_stderr(self._agent.stderr))
        return AgentConnection(ours, f"tether-agent pid {self._agent.pid} in {self.describe()}")

    async def agent_failure(self) -> str:
        """Wait for the agent to exit; return the reason it gave."""
        import asyncio

        if self._agent_pid:
            code = await self._wait_forked()
        else:
            assert self._agent is not None
            code = await self._agent.wait()
        if self._stderr_task:
            await asyncio.wait([self._stderr_task], timeout=1)
        for line in reversed(self._stderr_lines):
            if line.startswith("tether-agent: "):
                return line[len("tether-agent: "):]
        return f"agent exited with status {code}"

    async def wait_gone(self) -> str:
        import asyncio

        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return f"target process {self.pid} has exited"
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
        try:
            await gone
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return f"target process {self.pid} has exited"

    async def stop_agent(self) -> None:
        import asyncio

        if self._agent_pid:
            await self._stop_forked()
            return
        proc = self._agent
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 2)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _stop_forked(self) -> None:
        import asyncio

        if self._exit_code is None:
            try:
                os.kill(self._agent_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self._exit is None:  # never reached start_agent: no loop watches it
                os.waitpid(self._agent_pid, 0)
                self._exit_code = -1
            else:
                try:
                    await asyncio.wait_for(self._wait_forked(), 2)
                except TimeoutError:
                    os.kill(self._agent_pid, signal.SIGKILL)
                    await self._wait_forked()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
