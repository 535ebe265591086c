"""``tether-agent``: the process that acts inside the target.

Started by the orchestrator (for a process target: on this machine, entering the
target's network namespace; for Kubernetes: in the target pod).  It talks to exactly one
orchestrator, over an inherited socket (``--fd``) or a TCP port (``--listen``), and exits
when that orchestrator goes away, so nothing of a session outlives it.

The session secret arrives in a file (``--secret-file``, a Kubernetes Secret mounted
into the agent's pod), in the TETHER_AGENT_SECRET variable, or in memory from a forking
orchestrator; never on the command line, which every user of the machine can read.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

from .server import AgentContext, AgentServer, serve_connection

log = logging.getLogger("tether.agent")


# How long a session outlives a dropped connection to its orchestrator (a port-forward cut
# by the API server); the orchestrator gives up reconnecting before that.
RESUME_GRACE = 30.0


class AgentStartError(Exception):
    pass


def enter_netns(pid: int) -> None:
    from .. import _native

    path = f"/proc/{pid}/ns/net"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AgentStartError(f"process {pid} does not exist") from None
    except PermissionError:
        raise AgentStartError(
            f"cannot open {path}: permission denied (tether needs root or CAP_SYS_ADMIN "
            "and CAP_SYS_PTRACE to act inside another process's namespaces)"
        ) from None
    try:
        if _native.lib.setns(fd, _native.lib.CLONE_NEWNET) != 0:
            err = _native.ffi.errno
            raise AgentStartError(
                f"cannot enter the network namespace of process {pid}: {os.strerror(err)}"
                + (" (tether needs root or CAP_SYS_ADMIN)" if err == 1 else "")
            )
    finally:
        os.close(fd)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tether-agent", description=__doc__)
    p.add_argument("--target-pid", type=int,
                   help="process whose environment, files and network the agent acts in")
    p.add_argument("--container-id",
                   help="instead of --target-pid: the container (runtime://id, as in a pod's "
                        "containerStatuses) whose first process is the target (needs hostPID)")
    p.add_argument("--enter-netns", action="store_true",
                   help="join the target's network namespace first (process targets)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--fd", type=int, help="inherited connected socket to the orchestrator")
    src.add_argument("--listen", help="HOST:PORT to accept the orchestrator on")
    p.add_argument("--idle-exit", type=float,
                   help="with --listen: exit after SECONDS without an orchestrator (the first "
                        "one gets at least 60 s), so an agent in a pod never outlives its session")
    p.add_argument("--resume-grace", type=float, default=RESUME_GRACE,
                   help="with --listen: how long the session waits for its orchestrator to "
                        "reconnect after the connection dropped (default %(default)s s)")
    p.add_argument("--secret-file",
                   help="read the session secret from this file (a mounted Secret) instead "
                        "of TETHER_AGENT_SECRET")
    p.add_argument("--log-level", default=os.environ.get("TETHER_LOG", "info"))
    p.add_argument("--targetless", action="store_true",
                   help="no target: act in the agent's own namespaces (its own pod)")
    args = p.parse_args(argv)
    if args.targetless and args.target_pid is None and args.container_id is None:
        args.target_pid = os.getpid()
    if (args.target_pid is None) == (args.container_id is None):
        p.error("give exactly one of --target-pid and --container-id")
    return args


def container_pid(container_id: str) -> int:
    """The oldest process whose cgroup names the container (how runtimes lay them out)."""
    cid = container_id.partition("://")[2] or container_id
    found: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                if cid not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as f:
                start = int(f.read().rsplit(")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            continue
        found.append((start, int(entry)))
    if not found:
        raise AgentStartError(f"no process of container {container_id} on this node (is the "
                              "agent running with hostPID on the target's node?)")
    return min(found)[1]


async def run(args: argparse.Namespace, secret: str) -> int:
    ctx = AgentContext(target_pid=args.target_pid, secret=secret)
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
        reason = await serve_connection(ctx, sock)
        log.info("orchestrator gone (%s); agent exiting", reason)
        return 0
    host, _, port = args.listen.rpartition(":")
    loop = asyncio.get_running_loop()
    server = socket.create_server((host or "0.0.0.0", int(port)), reuse_port=False,
                                  backlog=64)
    server.setblocking(False)
    agent = AgentServer(ctx, grace=args.resume_grace)
    log.info("listening on %s", args.listen)

    async def accept_loop() -> None:
        # Every client is admitted at once (authentication runs beside this loop), so a
        # silent or hostile connection holds up no one.
        while True:
            try:
                conn, _peer = await loop.sock_accept(server)
            except OSError as exc:  # EMFILE and friends: back off, keep the port
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            agent.admit(conn)

    acceptor = loop.create_task(accept_loop())
    try:
        if args.idle_exit is not None:  # the first orchestrator gets at least 60 s
            wait = max(args.idle_exit, 60.0)
            try:
                await asyncio.wait_for(agent.authenticated.wait(), wait)
            except TimeoutError:
                log.info("no orchestrator for %.0f s; agent exiting", wait)
                return 0
        await agent.ended.wait()
        log.info("session ended; agent exiting")
        return 0
    finally:
        acceptor.cancel()
        server.close()


def main(argv: list[str] | None = None, secret: str | None = None) -> int:
    """The agent program; ``secret`` is given by an orchestrator that forked us (process
    targets, tether.targets.process), else read from TETHER_AGENT_SECRET."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="tether-agent[%(process)d] %(levelname)s %(message)s",
    )
    if secret is None and args.secret_file:
        try:
            with open(args.secret_file) as f:
                secret = f.read().strip()
        except OSError as exc:
            print(f"tether-agent: cannot read the session secret from {args.secret_file}: "
                  f"{exc.strerror}", file=sys.stderr)
            return 2
    if secret is None:
        secret = os.environ.pop("TETHER_AGENT_SECRET", "")
    if not secret:
        print("tether-agent: no session secret (TETHER_AGENT_SECRET or --secret-file)",
              file=sys.stderr)
        return 2
    try:
        from .. import _native

        _native.lib.tether_set_name(b"tether-agent")
        if args.fd is not None:  # our orchestrator is our parent: die with it
            _native.lib.tether_set_pdeathsig(signal.SIGKILL)
        if args.container_id is not None:
            args.target_pid = container_pid(args.container_id)
        if args.enter_netns:
            enter_netns(args.target_pid)
    except AgentStartError as exc:
        # The orchestrator reads this line and shows it to the user.
        print(f"tether-agent: {exc}", file=sys.stderr)
        return 3
    return run_loop(run(args, secret))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the agent's event loop on uvloop (libuv: the router's per-request cost is
    mostly the loop's), or on asyncio's own loop where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main())
