"""``tether exec``'s start-up: fork the orchestrator, wait for the session, become the program.

``exec`` forks the orchestrator into its own session and then *becomes* the program
(execvpe): the program keeps tether's pid, terminal and process group, so Ctrl-C, job
control, debuggers and the exit status are the program's own, with nothing to forward.

This module imports neither click nor logging nor asyncio: what runs before the program's
first instruction is kept to what it needs (``tether.entry`` calls it without click).
Errors are :class:`ExecError` (one line for the user); the caller prints them.

Lifetime (``tether.lifetime``): the program gets the write end of a liveness pipe; the
orchestrator serves until the last process holding it exits, so daemons the program
starts keep the session.  Ctrl-C at any moment of start-up exits with 130 and leaves
nothing: the orchestrator sees the pipe's EOF and tears down what it started.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import time
from typing import Any, NoReturn

from . import messages_session, protocol  # noqa: F401  (registers the session messages)
from .lifetime import LIVENESS_MIN_FD, LIVENESS_VAR


class ExecError(Exception):
    """Start-up failed; the message is one line for the user."""


class ConfigProblem(Exception):
    """The config cannot be used; the message lists every problem by its JSON path."""


def load_checked(config_file: str | None, target: str | None, namespace: str | None,
                 flag_overrides: dict[str, Any] | None = None) -> Any:
    """load_config plus what only shows at exec (the environment must fit exec).

    ``flag_overrides``: the config the command line's flags amount to (``cli_flags``)."""
    from .config import ConfigError, load_config
    from .environment import exec_limit_problems

    overrides: dict[str, Any] = dict(flag_overrides or {})
    if target or namespace:
        tgt: dict[str, Any] = {}
        if target:
            tgt["path"] = target
        if namespace:
            tgt["namespace"] = namespace
        overrides["target"] = tgt
    try:
        loaded = load_config(config_file, overrides or None)
    except ConfigError as exc:
        lines = "\n".join(f"  {p}" for p in exc.problems)
        where = f" in {exc.source}" if getattr(exc, "source", None) else ""
        raise ConfigProblem(f"invalid configuration{where}:\n{lines}") from None
    except RecursionError:
        name = config_file or "the config file"
        raise ConfigProblem(
            f"invalid configuration in {name}:\n  {name}: nested too deeply (thousands of "
            "levels of arrays or objects); a tether config is a few levels deep") from None
    problems = exec_limit_problems(dict(os.environ), loaded.config.feature.env, os.getcwd())
    if problems:
        where = f" in {loaded.source}" if loaded.source else ""
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigProblem(f"invalid configuration{where}:\n{lines}")
    return loaded


def prepare_target(config: Any) -> tuple[Any, Any]:
    """Resolve and check the target; the config the session runs with."""
    from .targets import effective_config, resolve_target

    tgt = resolve_target(config.target.path, config.target.namespace, config)
    tgt.check()
    return effective_config(tgt, config), tgt


OPTIONS = {"-f": "config_file", "--config-file": "config_file", "-t": "target",
           "--target": "target", "-n": "namespace", "--target-namespace": "namespace"}


def fast_exec_args(argv: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """Options and command of a plain ``tether exec``; None for anything click should see."""
    if not argv or argv[0] != "exec":
        return None
    opts: dict[str, str] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        if name not in OPTIONS or (eq and not name.startswith("--")):
            return None  # -fFILE, -f=FILE, --help, options added later: click's parsing
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        opts[OPTIONS[name]] = value
        i += 1
    command = argv[i:]
    if not command:
        return None
    config_file = opts.get("config_file")
    if config_file is not None and os.path.isdir(config_file):
        return None  # click's own message for it
    return opts, command


def setup_logging() -> None:
    import logging

    level_name = os.environ.get("TETHER_LOG", "info").upper()
    level = getattr(logging, level_name, logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tether: %(message)s"))
    root = logging.getLogger("tether")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def say(text: str) -> None:
    try:
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()
    except OSError:
        pass


def layer_path() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "libtether_layer.so")
    if not os.path.exists(path):
        raise ExecError(
            f"the tether layer is missing ({path}); reinstall tether with `make install`")
    return path


def run_exec(config: Any, target: Any, command: list[str]) -> NoReturn:
    layer_so = layer_path()
    chan, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    live_r, live_w = os.pipe()
    parent_pid = os.getpid()
    started = time.monotonic()
    # Until the orchestrator is in its own session a terminal's Ctrl-C would reach it too:
    # it inherits SIGINT blocked until it has left our process group.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        chan.close()
        os.close(live_w)
        code = 1
        try:
            os.setsid()  # the terminal's Ctrl-C belongs to the program, not to us
            # Out of the terminal's process group, a SIGINT is someone's `kill -INT` aimed
            # at tether: it ends the session as SIGTERM does (the watchdog cleans up).
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            code = _orchestrator_main(config, target, theirs, live_r, parent_pid, layer_so,
                                      command)
        except BaseException:  # never return into the caller in the forked child
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    theirs.close()
    os.close(live_r)
    # While the orchestrator works: is the program static (seccomp)?  Decided with our PATH;
    # again below in the rare case the session's PATH differs (an explicit include).
    path = os.environ.get("PATH")
    static = _seccomp_wanted(command, {"PATH": path} if path is not None else {})
    reply = _wait_ready(chan, started, target.describe())
    if reply is None:
        raise ExecError("the tether orchestrator exited before the session started "
                        "(run with TETHER_LOG=debug for details)")
    if reply["t"] == "session_failed":
        raise ExecError(reply["message"])
    env = reply["env"]
    if env.get("PATH") != path:
        static = _seccomp_wanted(command, env)
    _hand_over_syscalls(chan, command, env, static)
    chan.close()
    env[LIVENESS_VAR] = str(_inheritable_high(live_w))
    if os.environ.get("TETHER_LOG", "").lower() == "debug":
        say(f"tether: session ready after {(time.monotonic() - started) * 1000:.0f} ms; "
            f"exec {command[0]}")
    become(command, env)


def _inheritable_high(fd: int) -> int:
    """Move the liveness descriptor out of the way of programs that reuse low numbers."""
    import fcntl

    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, LIVENESS_MIN_FD)  # not close-on-exec
    except OSError:  # a soft limit below 900: keep the number, still inherited
        os.set_inheritable(fd, True)
        return fd
    os.close(fd)
    return high


def become(command: list[str], env: dict[str, str]) -> NoReturn:
    """exec the program; a failure is one line and the shell's exit status for it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        say(f"tether: {command[0]}: command not found")
        os._exit(127)
    except PermissionError:
        say(f"tether: {command[0]}: permission denied (not executable, or a directory)")
        os._exit(126)
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            from .environment import exec_size_problems

            detail = exec_size_problems(env, command) or ["it is too large"]
            say(f"tether: {command[0]}: the program's environment and arguments do not fit "
                f"exec (E2BIG): {detail[0]}")
            os._exit(126)
        if exc.errno == errno.ENOEXEC:
            say(f"tether: {command[0]}: not a program this system can run (no #! line and "
                "not an executable format); run it through its interpreter, e.g. "
                f"`tether exec -- sh {command[0]}`")
            os._exit(126)
        say(f"tether: {command[0]}: cannot execute: {exc.strerror}")
        os._exit(126)
    raise AssertionError("unreachable")


DEBUGGERS = {"gdb", "lldb", "strace", "ltrace", "valgrind", "rr"}


def _seccomp_wanted(command: list[str], env: dict[str, str]) -> bool:
    """Static and Go programs never load the layer: supervise their system calls instead.

    TETHER_SECCOMP=always|never overrides the detection (auto)."""
    choice = os.environ.get("TETHER_SECCOMP", "auto").lower()
    if choice in ("never", "0", "off", "no"):
        return False
    if choice in ("always", "1", "on", "yes"):
        return True
    from .elfinfo import inspect, resolve_command

    def needs(arg: str) -> bool:
        path = resolve_command(arg, env.get("PATH"))
        info = inspect(path) if path else None
        return bool(info and info.needs_seccomp)

    if needs(command[0]):
        return True
    # A debugger starts its debuggee itself: put the whole tree under the supervisor from
    # here, as a launcher exec'd in between would stand where the debugger expects its
    # program (breakpoints are set in the wrong image).
    if os.path.basename(command[0]) in DEBUGGERS:
        return any(needs(arg) for arg in command[1:] if not arg.startswith("-"))
    return False


def _go_run_through_launcher(command: list[str], env: dict[str, str]) -> bool:
    """`go run` / `go test`: the go command and its compilers are build tools whose
    thousands of path calls (and module downloads) need no supervision, and the program
    they build is the one that does.  The go command then runs unsupervised and starts
    the program through tether-launch (its documented `-exec` flag, given in GOFLAGS,
    which the command line overrides), which puts it under the supervisor.  (A process
    can have one seccomp listener only: the filter cannot be added below a supervised
    go command.)"""
    if os.path.basename(command[0]) != "go":
        return False
    verb, args = "", iter(command[1:])
    for arg in args:
        if arg == "-C":  # go -C DIR run ...: the only flag before the verb
            next(args, None)
        elif not arg.startswith("-"):
            verb = arg
            break
    launcher = os.path.join(os.path.dirname(env.get("TETHER_LAYER_SO", "")), "tether-launch")
    if verb not in ("run", "test") or not os.access(launcher, os.X_OK) or \
            any(a == "-exec" or a.startswith("-exec=") for a in command[1:]) or \
            "-exec" in env.get("GOFLAGS", "") or " " in launcher:
        return False
    env["GOFLAGS"] = f"{env.get('GOFLAGS', '')} -exec={launcher}".strip()
    env["TETHER_GO_EXEC"] = "1"  # tether-launch: the arguments are go's -exec's
    return True


def _hand_over_syscalls(chan: socket.socket, command: list[str], env: dict[str, str],
                        static: bool) -> None:
    """Tell the orchestrator how the program is reached; for seccomp, hand it the listener."""
    if not static or _go_run_through_launcher(command, env):
        chan.sendall(protocol.encode({"t": "session_exec"}))
        return
    from .seccomp import install_filter

    try:
        listener = install_filter()
    except OSError as exc:
        raise ExecError(f"{command[0]} is a static or Go program and needs seccomp "
                        f"user notification: {exc}") from None
    socket.send_fds(chan, [protocol.encode({"t": "session_exec", "fds": 1})], [listener])
    os.close(listener)
    env["TETHER_SECCOMP_ACTIVE"] = "1"  # the filter is inherited: no second one below
    decoder = protocol.FrameDecoder()
    while True:  # wait until the supervisor runs: our first trapped call needs it
        data = chan.recv(4096)
        if not data:
            raise ExecError("the tether orchestrator exited before the program started")
        for msg in decoder.feed(data):
            if msg["t"] == "session_failed":
                raise ExecError(msg["message"])
            return


def _wait_ready(chan: socket.socket, started: float, what: str) -> dict[str, Any] | None:
    decoder = protocol.FrameDecoder()
    announced = False
    while True:
        ready, _, _ = select.select([chan], [], [], 0.25)
        if not ready:
            if not announced and time.monotonic() - started > 1.0:
                say(f"tether: starting the agent in {what}...")
                announced = True
            continue
        data = chan.recv(1 << 20)
        if not data:
            return None
        for msg in decoder.feed(data):
            return msg


# ---- the orchestrator's process ----
def _orchestrator_main(config: Any, target: Any, chan: socket.socket, live_r: int,
                       parent_pid: int, layer_so: str, command: list[str]) -> int:
    from .lifetime import pipe_inode, start_watchdog

    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # we never print; stdout is the program's alone
    os.close(null)
    watchdog = start_watchdog(parent_pid, pipe_inode(live_r),
                              keep_going=os.environ.get("TETHER_KEEP_GOING") == "1")
    try:
        # What every session needs, imported before the agent is forked: it inherits them.
        from .features import feature_classes
        from .orchestrator import Orchestrator

        feature_classes()
        setup_logging()
        # A process target forks its agent now, so that the agent's start-up runs in
        # parallel with the rest of the orchestrator's.
        secret = ""
        prestart = getattr(target, "prestart_agent", None)
        if prestart is not None:
            secret = os.urandom(16).hex()  # what secrets.token_hex does, without its imports
            prestart(secret, os.environ.get("TETHER_LOG", "info"))
        orch = Orchestrator(config=config, target=target, local_env=dict(os.environ),
                            cwd=os.getcwd(), layer_so=layer_so, agent_secret=secret,
                            watchdog=watchdog, command_name=os.path.basename(command[0]))
        return _run_orchestrator(orch, chan, parent_pid, live_r)
    finally:
        watchdog.dismiss()


def _run_orchestrator(orch: Any, chan: socket.socket, parent_pid: int, live_r: int) -> int:
    import asyncio
    import logging

    from .targets import TargetError

    log = logging.getLogger("tether")

    def send(msg: dict[str, Any]) -> bool:
        try:
            chan.sendall(protocol.encode(msg))
            return True
        except OSError:  # tether exec is gone (Ctrl-C): nobody to tell
            return False

    async def body() -> int:
        loop = asyncio.get_running_loop()
        gone = loop.create_future()  # tether exec (and no program yet) gave up
        loop.add_reader(live_r, lambda: gone.done() or gone.set_result(None))
        starting = asyncio.ensure_future(orch.start())
        try:
            await asyncio.wait([starting, gone], return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                await orch.stop()
                return 0
            try:
                env = starting.result()
            except Exception as exc:  # TargetError, OSError, a bad env_file: one line
                if not isinstance(exc, (TargetError, OSError)):
                    log.debug("start-up failed", exc_info=True)
                send({"t": "session_failed", "message": str(exc) or type(exc).__name__})
                await orch.stop()
                return 1
        finally:
            loop.remove_reader(live_r)
        if not send({"t": "session_ready", "env": env, "socket": orch.socket_path}):
            await orch.stop()
            return 0
        try:
            msg, fds, *_ = await loop.run_in_executor(None, socket.recv_fds, chan, 65536, 1)
        except OSError:
            msg, fds = b"", []
        if not msg:  # tether exec ended between our ready and its exec
            await orch.stop()
            return 0
        if fds:  # a static program: its first system call needs the whole session
            try:
                await orch.ready()
            except Exception as exc:
                send({"t": "session_failed", "message": str(exc) or type(exc).__name__})
                os.close(fds[0])
                await orch.stop()
                return 1
            orch.start_supervisor(fds[0])
            send({"t": "session_exec"})
        chan.close()
        orch.program_started()
        log.info("session started: %s", orch.target.describe())
        reason = await orch.serve(parent_pid, live_r)
        if reason:
            orch.end_program(reason)
        await orch.stop()
        log.debug("session ended")
        return 0 if not reason else 1

    return asyncio.run(body())
