"""Programs the layer cannot reach (static binaries, Go): seccomp user notification.

``tether exec`` installs, just before it execs such a program, a seccomp filter that sends
``connect``, ``bind`` and ``listen`` of the program and of every process it starts to this
supervisor (a thread plus tasks in the orchestrator).  The decisions are the layer's own,
made by the same C functions (``tl_outgoing_decide``, ``tl_incoming_decide_with`` from the
layer loaded with ``ffi.dlopen``), so a Go program and a C program under one session
behave alike.  What the supervisor does (the bypass4netns pattern, see DESIGN.md):

- connect to a remote address: the agent makes a socket of the same kind inside the
  target; it is installed over the program's descriptor number
  (``SECCOMP_IOCTL_NOTIF_ADDFD`` + ``SETFD``) and the kernel then runs the program's own
  connect on it (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``): blocking or not, the semantics and
  the data path are the kernel's;
- connect to port 53 (DNS: Go's resolver talks to the nameserver itself): the socket is
  connected by the agent to the target's nameserver and installed; the call returns 0;
- listen on a port tether serves: the supervisor puts the very socket into the listening
  state itself, subscribes the port through the incoming feature, then answers 0, so no
  connection can arrive before the program listens;
- everything else continues untouched.

Every read of the program's memory is followed by ``NOTIF_ID_VALID``: a pid can be reused.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from . import protocol

log = logging.getLogger("tether.seccomp")

TRAPPED = ("connect", "bind", "listen")
SIOCGSKNS = 0x894C
O_CLOEXEC_FDINFO = 0o2000000

protocol.register("agent_nameservers", {"id": (int, True)})
# tether-launch -> orchestrator: supervise this listener (one descriptor attached).
protocol.register("seccomp_attach", {"id": (int, True)})
protocol.register("seccomp_attach_reply", {"id": (int, True)})
protocol.register("agent_nameservers_reply", {"id": (int, True), "servers": (list, True)})


def install_filter() -> int:
    """In the process about to exec the program: trap TRAPPED, return the listener fd."""
    from . import _native

    nrs = [_native.lib.tether_sysno(name.encode()) for name in TRAPPED]
    arr = _native.ffi.new("int[]", nrs)
    fd = _native.lib.tether_seccomp_listener(arr, len(nrs))
    if fd < 0:
        raise OSError(-fd, f"cannot install the seccomp filter: {os.strerror(-fd)}")
    return int(fd)


def _tgid(tid: int) -> int:
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)


def _parse_sockaddr(raw: bytes) -> tuple[int, str, int] | None:
    if len(raw) < 2:
        return None
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack_from("!H", raw, 2)[0]
        return family, socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = struct.unpack_from("!H", raw, 2)[0]
        return family, socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None


@dataclass
class ProcessSession:
    """Stands for a layer session for a trapped process (the incoming feature watches
    ``closed`` to drop the process's subscriptions when it exits)."""

    pid: int
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    state: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    def __init__(self, orch: Any, listener: int) -> None:
        from . import _native

        self.orch = orch
        self.listener = listener
        self.lib = _native.lib
        self.ffi = _native.ffi
        self.loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._receive, name="seccomp", daemon=True)
        self._stopping = False
        self._sessions: dict[int, ProcessSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._layer = _load_layer_decisions()
        self._config = orch.layer_config().encode()
        self._target_netns = _target_netns_inode(orch)
        self._warned_relay = False
        self._requested: dict[int, int] = {}  # socket inode -> port the program asked for

    def start(self) -> None:
        log.debug("seccomp supervisor started (trapping %s)", ", ".join(TRAPPED))
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        # Closing the listener fails every pending and future trapped call with ENOSYS and
        # wakes the receiving thread.
        try:
            os.close(self.listener)
        except OSError:
            pass
        for task in list(self._tasks):
            task.cancel()

    # ---- receiving (thread) ----
    def _receive(self) -> None:
        notif = self.ffi.new("struct tether_notif *")
        while not self._stopping:
            r = self.lib.tether_notif_recv(self.listener, notif)
            if r == -errno.ENOENT or r == -errno.EINTR:
                continue  # the caller died before we read it, or a signal
            if r < 0:
                return  # listener closed: session over
            args = tuple(int(notif.args[i]) for i in range(6))
            item = (int(notif.id), int(notif.pid), int(notif.nr), args)
            self.loop.call_soon_threadsafe(self._spawn, item)

    def _spawn(self, item: tuple[int, int, int, tuple[int, ...]]) -> None:
        task = self.loop.create_task(self._handle(*item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- answering ----
    def _continue(self, nid: int) -> None:
        self.lib.tether_notif_respond(self.listener, nid, 0, 0,
                                      self.lib.SECCOMP_USER_NOTIF_FLAG_CONTINUE)

    def _answer(self, nid: int, value: int = 0, err: int = 0) -> None:
        self.lib.tether_notif_respond(self.listener, nid, value, -err if err else 0, 0)

    def _valid(self, nid: int) -> bool:
        return self.lib.tether_notif_id_valid(self.listener, nid) == 0

    async def _handle(self, nid: int, tid: int, nr: int, args: tuple[int, ...]) -> None:
        name = _SYSCALL_NAMES.get(nr)
        try:
            if name == "connect":
                await self._connect(nid, tid, args)
            elif name == "listen":
                await self._listen(nid, tid, args)
            elif name == "bind":
                await self._bind(nid, tid, args)
            else:
                self._continue(nid)
        except (ProcessLookupError, FileNotFoundError):
            pass  # the caller is gone; nothing to answer
        except Exception:
            log.exception("seccomp: handling %s of pid %d failed; letting it run locally",
                          name, tid)
            self._continue(nid)

    def _dup(self, tid: int, fd: int) -> socket.socket | None:
        """The program's socket, duplicated into this process (pidfd_getfd)."""
        pidfd = os.pidfd_open(_tgid(tid))
        try:
            dup = self.lib.tether_pidfd_getfd(pidfd, fd, 0)
        finally:
            os.close(pidfd)
        if dup < 0:
            return None
        try:
            return socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            return None

    def _in_target_netns(self, sock: socket.socket) -> bool:
        if self._target_netns is None:
            return False
        try:
            nsfd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
        except OSError:
            return False
        try:
            return os.fstat(nsfd).st_ino == self._target_netns
        finally:
            os.close(nsfd)

    def _sockaddr(self, nid: int, tid: int, args: tuple[int, ...]
                  ) -> tuple[int, tuple[int, str, int] | None] | None:
        """(fd, parsed address) of a connect/bind; None if the call is no longer valid."""
        fd, addr_ptr, addr_len = args[0] & 0xFFFFFFFF, args[1], args[2] & 0xFFFFFFFF
        with open(f"/proc/{tid}/mem", "rb", buffering=0) as mem:
            raw = os.pread(mem.fileno(), min(addr_len, 128), addr_ptr)
        if not self._valid(nid):  # the pid may have been reused meanwhile
            return None
        return fd, _parse_sockaddr(raw)

    async def _connect(self, nid: int, tid: int, args: tuple[int, ...]) -> None:
        call = self._sockaddr(nid, tid, args)
        if call is None:
            return
        fd, parsed = call
        if parsed is None:
            self._continue(nid)
            return
        family, ip, port = parsed
        sock = self._dup(tid, fd)
        if sock is None:
            self._continue(nid)
            return
        with sock:
            if sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM) or \
                    self._in_target_netns(sock):
                self._continue(nid)  # not ours to move, or already inside the target
                return
            proto = "tcp" if sock.type == socket.SOCK_STREAM else "udp"
            dns = port == 53 and proto == "udp" and self.orch.config.feature.network.dns.enabled
            if not dns and self._layer.tl_outgoing_decide(self._config, proto.encode(),
                                                          ip.encode(), port) != 1:
                self._continue(nid)
                return
            agent = self.orch.agent
            nonblocking = not sock.getblocking()
            if agent is None:
                self._continue(nid)
                return
            if not agent.can_pass_fds or _feature(self.orch, "outgoing").relay_mode:
                await self._connect_relayed(nid, tid, fd, sock, family, ip, port, proto, dns,
                                            nonblocking)
                return
            req: dict[str, Any] = {"t": "agent_connect", "proto": proto, "family": family,
                                   "addr": socket.inet_pton(family, ip), "port": port,
                                   "connect": False}
            if dns:
                servers = (await agent.call({"t": "agent_nameservers"}, 10))["servers"]
                if not servers:
                    self._continue(nid)
                    return
                server = str(servers[0])
                family = socket.AF_INET6 if ":" in server else socket.AF_INET
                req.update(family=family, addr=socket.inet_pton(family, server), connect=True)
            reply = await agent.call(req, 10)
            fds = reply.pop("_fds", [])
            if not fds or reply.get("result", 0) not in (0, errno.EINPROGRESS):
                for extra in fds:
                    os.close(extra)
                self._answer(nid, err=int(reply.get("result") or errno.ECONNREFUSED))
                return
            replacement = fds[0]
            try:
                for extra in fds[1:]:
                    os.close(extra)
                _copy_options(sock, replacement)
                flags = fcntl.fcntl(replacement, fcntl.F_GETFL)
                flags = flags | os.O_NONBLOCK if nonblocking else flags & ~os.O_NONBLOCK
                fcntl.fcntl(replacement, fcntl.F_SETFL, flags)
                if not self._valid(nid):
                    return
                installed = self.lib.tether_notif_addfd(self.listener, nid, replacement, fd,
                                                        _fd_cloexec(tid, fd))
            finally:
                os.close(replacement)
            if installed < 0:
                self._answer(nid, err=-installed)
                return
            if dns:
                log.debug("seccomp: pid %d DNS to the target's nameserver %s", tid, servers[0])
                self._answer(nid, 0)
            else:
                log.debug("seccomp: pid %d connect %s:%d through the target", tid, ip, port)
                self._continue(nid)

    async def _connect_relayed(self, nid: int, tid: int, fd: int, sock: socket.socket,
                               family: int, ip: str, port: int, proto: str, dns: bool,
                               nonblocking: bool) -> None:
        """Links that cannot carry descriptors (Kubernetes): the outgoing feature's relay.

        The agent connects inside the target and relays over the link; here the program's
        end of the relay's private loopback pair replaces the program's socket; the call returns
        0 (a connect may complete at once, also for non-blocking sockets)."""
        if proto != "tcp" or dns:
            if not self._warned_relay:
                log.warning("seccomp: UDP and DNS of static/Go programs need a target that "
                            "can hand sockets over; they stay local")
                self._warned_relay = True
            self._continue(nid)
            return
        outgoing = _feature(self.orch, "outgoing")
        reply = await outgoing._out_connect(None, {  # noqa: SLF001
            "proto": "tcp", "family": family, "addr": socket.inet_pton(family, ip),
            "port": port, "connect": True})
        fds = reply.pop("_fds", [])
        if reply.get("result", 0) != 0 or not fds:
            self._answer(nid, err=int(reply.get("result") or errno.ECONNREFUSED))
            return
        # One end of the relay's private pair, already connected (features/outgoing.py).
        local = socket.socket(fileno=fds[0])
        try:
            _copy_options(sock, local.fileno())
            local.setblocking(not nonblocking)
            if not self._valid(nid):
                return
            installed = self.lib.tether_notif_addfd(self.listener, nid, local.fileno(), fd,
                                                    _fd_cloexec(tid, fd))
        finally:
            local.close()
        if installed < 0:
            self._answer(nid, err=-installed)
            return
        log.debug("seccomp: pid %d connect %s:%d relayed through the agent", tid, ip, port)
        self._answer(nid, 0)

    def _decide_incoming(self, port: int, loopback: bool) -> int:
        out = self.ffi.new("long *")
        return int(self._layer.tl_incoming_decide_with(self._config, port, int(loopback), out))

    async def _bind(self, nid: int, tid: int, args: tuple[int, ...]) -> None:
        """A port tether serves is bound for real; taken here, another one serves it."""
        call = self._sockaddr(nid, tid, args)
        if call is None:
            return
        fd, parsed = call
        sock = self._dup(tid, fd) if parsed else None
        if parsed is None or sock is None:
            self._continue(nid)
            return
        with sock:
            family, ip, port = parsed
            loopback = ip.startswith("127.") or ip == "::1"
            if sock.type != socket.SOCK_STREAM or self._decide_incoming(port, loopback) <= 0:
                self._continue(nid)
                return
            self._requested[os.fstat(sock.fileno()).st_ino] = port
            try:
                sock.bind((ip, port) if family == socket.AF_INET else (ip, port, 0, 0))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    self._answer(nid, err=exc.errno or errno.EINVAL)
                    return
                sock.bind((ip, 0) if family == socket.AF_INET else (ip, 0, 0, 0))
                log.info("local port %d is taken; port %d of the target is served from "
                         "local port %d", port, port, sock.getsockname()[1])
            self._answer(nid, 0)

    async def _listen(self, nid: int, tid: int, args: tuple[int, ...]) -> None:
        fd, backlog = args[0] & 0xFFFFFFFF, int(args[1] & 0x7FFFFFFF)
        incoming = _incoming_feature(self.orch)
        sock = self._dup(tid, fd)
        if incoming is None or sock is None:
            self._continue(nid)
            return
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or \
                    sock.type != socket.SOCK_STREAM:
                self._continue(nid)
                return
            addr, local_port = sock.getsockname()[:2]
            loopback = addr.startswith("127.") or addr in ("::1", "::ffff:127.0.0.1")
            asked = self._requested.pop(os.fstat(sock.fileno()).st_ino, local_port)
            remote = self._decide_incoming(asked, loopback)
            if remote <= 0:
                self._continue(nid)
                return
            if not self._valid(nid):
                return
            sock.listen(backlog)  # the program's own socket: it listens before traffic comes
            tgid = _tgid(tid)
            session = self._session(tgid)
            msg = {"t": "in_listen", "port": int(remote), "local_port": local_port,
                   "addr": addr, "family": 6 if sock.family == socket.AF_INET6 else 4}
            reply = await incoming._in_listen(session, msg)  # noqa: SLF001
            log.debug("seccomp: pid %d listens on %d: %s", tgid, local_port, reply)
            self._answer(nid, 0)

    def _session(self, tgid: int) -> ProcessSession:
        session = self._sessions.get(tgid)
        if session is None:
            session = self._sessions[tgid] = ProcessSession(tgid)
            task = self.loop.create_task(self._watch_exit(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return session

    async def _watch_exit(self, session: ProcessSession) -> None:
        try:
            pidfd = os.pidfd_open(session.pid)
        except ProcessLookupError:
            session.closed.set()
            return
        gone: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
        try:
            await gone
        finally:
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
            session.closed.set()
            self._sessions.pop(session.pid, None)


def _copy_options(src: socket.socket, dst_fd: int) -> None:
    """Options a program commonly sets before connect, carried to the replacement."""
    dst = socket.socket(fileno=os.dup(dst_fd))
    with dst:
        for level, opt in ((socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                           (socket.SOL_SOCKET, socket.SO_REUSEADDR),
                           (socket.SOL_SOCKET, socket.SO_BROADCAST)):
            try:
                dst.setsockopt(level, opt, src.getsockopt(level, opt))
            except OSError:
                pass
        if src.type == socket.SOCK_STREAM:
            try:
                dst.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,
                               src.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            except OSError:
                pass


def _fd_cloexec(tid: int, fd: int) -> int:
    try:
        with open(f"/proc/{_tgid(tid)}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return os.O_CLOEXEC if int(line.split()[1], 8) & O_CLOEXEC_FDINFO else 0
    except OSError:
        pass
    return 0


def _target_netns_inode(orch: Any) -> int | None:
    pid = getattr(orch.target, "pid", None)
    if pid is None:
        return None
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _feature(orch: Any, name: str) -> Any:
    for feature in orch.features:
        if type(feature).__module__.endswith(f".{name}"):
            return feature
    return None


def _incoming_feature(orch: Any) -> Any:
    return _feature(orch, "incoming")


def _load_layer_decisions() -> Any:
    """The layer's decision functions (the same C code the layer runs in the program)."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef("""
        int tl_outgoing_decide(const char *config, const char *proto, const char *ip, int port);
        long tl_incoming_decide_with(const char *config, long port, int loopback,
                                     long *local_port);
    """)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libtether_layer.so")
    return ffi.dlopen(path)


def _syscall_names() -> dict[int, str]:
    from . import _native

    return {_native.lib.tether_sysno(n.encode()): n for n in TRAPPED}


_SYSCALL_NAMES = _syscall_names()
