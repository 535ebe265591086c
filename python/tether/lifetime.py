"""How long a session lives, and what happens when tether itself dies.

A session lives while any process of the program's tree is alive, not only while the
command tether started runs: daemons (fork, setsid, fork) and background children keep
the target's context.  The tree is recognised by a *liveness descriptor*: the write end of
a pipe that ``tether exec`` hands to the program (not close-on-exec, on a high number the
layer protects like its channel).  Every descendant inherits it, whatever it execs (static
and Go programs too), and the kernel closes it when the last holder exits: the
orchestrator, which holds the read end, then sees EOF.  No process list is polled and no
pid can be reused by mistake.

The watchdog is a small fork of the orchestrator in a session of its own.  It holds the
read end of a second pipe whose only writer is the orchestrator: EOF without a goodbye
means the orchestrator died (SIGKILL, OOM).  It then tells the program on its stderr,
stops it (the program's connections fail without its remote context, silently), and
removes the session's files.
"""

from __future__ import annotations

import os
import signal
import stat
import sys

LIVENESS_VAR = "TETHER_LIVENESS_FD"
# Where the liveness descriptor goes in the program: high, like the layer's channel, so
# shells and daemons that dup2 onto or close low numbers leave it alone.
LIVENESS_MIN_FD = 900


def pipe_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def holders(inode: int, exclude: tuple[int, ...] = ()) -> list[tuple[int, str]]:
    """(pid, name) of the processes that hold the write end of pipe ``inode``."""
    link = f"pipe:[{inode}]"
    found: list[tuple[int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in exclude:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != link:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    flags = next(int(line.split()[1], 8) for line in f
                                 if line.startswith("flags:"))
            except (OSError, ValueError, IndexError, StopIteration):
                continue
            if flags & os.O_ACCMODE == os.O_WRONLY:
                found.append((pid, _comm(pid)))
                break
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def describe(procs: list[tuple[int, str]], limit: int = 5) -> str:
    shown = ", ".join(f"{pid} ({name})" for pid, name in procs[:limit])
    more = len(procs) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def hung_up(fd: int) -> bool:
    """True when no process holds the write end any more (the read end polls POLLHUP)."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


def tell(pids: list[int], text: str) -> None:
    """Write ``text`` once to each distinct stderr of ``pids`` (the program's terminal, log
    file or pipe), opened through /proc: tether itself may no longer hold it."""
    seen: set[tuple[int, int]] = set()
    data = text.rstrip("\n").encode() + b"\n"
    for pid in pids:
        try:
            st = os.stat(f"/proc/{pid}/fd/2")
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen or st.st_rdev == os.stat(os.devnull).st_rdev and stat.S_ISCHR(
                st.st_mode):
            continue
        seen.add(key)
        try:  # O_APPEND: a log file is appended to, never written over from its start
            fd = os.open(f"/proc/{pid}/fd/2", os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK
                         | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            continue  # a socket (ENXIO) or gone
        try:
            os.write(fd, data)
        except OSError:
            pass
        finally:
            os.close(fd)


def signal_all(pids: list[int], sig: int = signal.SIGTERM) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def detach_stdio() -> None:
    """Stop holding the terminal's pipes: once the command exited, whoever reads its output
    (``$(...)``, a pipeline, a test) must see EOF even though the session goes on."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (1, 2):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            os.dup2(null, fd)
    os.close(null)


# ---- the watchdog ----
class Watchdog:
    """The orchestrator's side: tell the watchdog what to clean and when all is well."""

    def __init__(self, pid: int, write_fd: int) -> None:
        self.pid = pid
        self._fd = write_fd

    def _send(self, line: str) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, line.encode() + b"\n")
        except OSError:
            pass

    def remove_on_death(self, path: str) -> None:
        self._send("rm " + path)

    def program_started(self) -> None:
        """From now on the watchdog speaks to the program (before, tether exec does)."""
        self._send("started")

    def dismiss(self) -> None:
        """The orchestrator ends normally: the watchdog exits without a word."""
        self._send("done")
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def start_watchdog(program_pid: int, liveness_inode: int, keep_going: bool) -> Watchdog:
    """Fork the watchdog (call before any thread exists).

    It is forked twice, so that it is not the orchestrator's child: the orchestrator's
    children are its agent (tools and tests look for it there), and nobody has to reap
    the watchdog but init."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    orchestrator = os.getpid()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        try:
            if os.fork() == 0:
                _watchdog_main(read_end, orchestrator, program_pid, liveness_inode,
                               keep_going)
        finally:
            os._exit(0)
    os.close(read_end)
    os.waitpid(pid, 0)
    return Watchdog(pid, write_end)


def _watchdog_main(fd: int, orchestrator: int, program_pid: int, inode: int,
                   keep_going: bool) -> None:
    os.setsid()  # a signal to the orchestrator's process group does not reach us
    from .targets.process import _set_title

    _set_title(f"tether-watchdog of session {orchestrator}")
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.closerange(3, fd)
    os.closerange(fd + 1, 1 << 16)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    paths: list[str] = []
    started = False
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            if text == "done":
                return
            if text == "started":
                started = True
            elif text.startswith("rm "):
                paths.append(text[3:])
    # The orchestrator died without saying goodbye.
    import shutil

    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    if not started:
        return  # tether exec is still there and reports it itself
    procs = [pid for pid, _ in holders(inode)]
    if program_pid not in procs and os.path.exists(f"/proc/{program_pid}"):
        procs.insert(0, program_pid)
    if not procs:
        return
    if keep_going:
        tell(procs, f"tether: the session's process (pid {orchestrator}) died; the program "
                    "keeps running without the target's context (TETHER_KEEP_GOING)")
        return
    tell(procs, f"tether: the session's process (pid {orchestrator}) died; stopping the "
                "program (its remote context is gone)")
    signal_all(procs)
