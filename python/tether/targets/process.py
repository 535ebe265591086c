"""``process/<pid>``: a process on this machine as the target.

The agent is started here as a child of the orchestrator, enters the target's network
namespace, and reads its environment and files through /proc/<pid>.  This target is also
the harness of tether's end-to-end tests (network namespaces as pods).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys

from . import AgentConnection, TargetError

log = logging.getLogger("tether")


def agent_command() -> list[str]:
    exe = shutil.which("tether-agent", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "tether.agent"]


class ProcessTarget:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._agent: asyncio.subprocess.Process | None = None
        self._stderr_lines: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None

    def describe(self) -> str:
        return f"process/{self.pid}"

    def check(self) -> None:
        if self.pid <= 0 or not os.path.exists(f"/proc/{self.pid}"):
            raise TargetError(f"target process/{self.pid}: no such process")
        try:
            os.stat(f"/proc/{self.pid}/ns/net")
            with open(f"/proc/{self.pid}/environ", "rb"):
                pass
        except PermissionError:
            raise TargetError(
                f"target process/{self.pid}: permission denied reading its namespaces and "
                "environment; run tether as root (or with CAP_SYS_ADMIN and CAP_SYS_PTRACE)"
            ) from None
        except FileNotFoundError:
            raise TargetError(f"target process/{self.pid}: no such process") from None

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
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

    async def start_agent(self, secret: str, log_level: str) -> AgentConnection:
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
        assert self._agent is not None
        code = await self._agent.wait()
        if self._stderr_task:
            await asyncio.wait([self._stderr_task], timeout=1)
        for line in reversed(self._stderr_lines):
            if line.startswith("tether-agent: "):
                return line[len("tether-agent: "):]
        return f"agent exited with status {code}"

    async def wait_gone(self) -> str:
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
        proc = self._agent
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 2)
        except TimeoutError:
            proc.kill()
            await proc.wait()
