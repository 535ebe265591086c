"""Programs the layer cannot reach (static binaries, Go): seccomp user notification.

``tether exec`` installs, just before it execs such a program, a seccomp filter that sends
``connect``, ``bind``, ``listen`` and the path calls (``open``, ``openat``, the
``stat`` family) of the program and of every process it starts to this supervisor (a
thread plus tasks in the orchestrator).  The decisions are the layer's own, made by the
same C functions (``tl_outgoing_decide``, ``tl_incoming_decide_with``, and
``tl_fs_decide_with`` through ``features.files.decide``, from the layer loaded with
``ffi.dlopen``), so a Go program and a C program under one session behave alike.  What
the supervisor does (the bypass4netns pattern, see DESIGN.md):

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
- open a remote path: the files feature opens it in the target (the agent's descriptor,
  or a memfd copy on links that cannot carry descriptors); it is installed in the program
  (``ADDFD``) and its number is the call's result.  ``stat`` of a remote path: the
  target's stat is written into the program's buffer.  /etc/resolv.conf, /etc/hosts and
  /etc/nsswitch.conf come from the target while DNS does, so Go's own resolver uses the
  pod's nameserver, search list and hosts.  Path calls of build tools, debuggers and
  programs the layer reaches (which decide themselves) continue in the receiving C loop;
  those of the program are decided in the receiving thread, and only remote paths wait
  for the agent;
- UDP connect (DNS included) on links that cannot carry descriptors: a loopback UDP
  socket of the outgoing feature's datagram relay replaces the program's;
- everything else continues untouched.

Every read of the program's memory is followed by ``NOTIF_ID_VALID``: a pid can be reused.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import platform
import socket
import stat as stat_mod
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from . import protocol
from .elfinfo import inspect as inspect_elf
from .features.files import ENOENT, LOCAL, decide, program_config
from .link import LinkClosed, RemoteError

log = logging.getLogger("tether.seccomp")

PATH_CALLS = ("openat", "open", "newfstatat", "stat", "lstat", "statx", "readlinkat",
              "readlink", "faccessat", "faccessat2", "access")
_OPENS = ("openat", "open")
_STATS = ("newfstatat", "stat", "lstat", "statx")
_READLINKS = ("readlinkat", "readlink")
AT_EACCESS = 0x200
SIOCGSKNS = 0x894C
O_CLOEXEC_FDINFO = 0o2000000
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
_STAT_LAYOUT_KNOWN = platform.machine() == "x86_64"

protocol.register("agent_nameservers", {"id": (int, True)})
# tether-launch -> orchestrator: supervise this listener (one descriptor attached).
protocol.register("seccomp_attach", {"id": (int, True)})
protocol.register("seccomp_attach_reply", {"id": (int, True)})
protocol.register("agent_nameservers_reply", {"id": (int, True), "servers": (list, True)})


def install_filter() -> int:
    """In the process about to exec the program: install the filter (layer/seccomp_filter.h),
    return the listener fd."""
    from . import _native

    fd = _native.lib.tether_seccomp_listener()
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
        self._requested: dict[int, int] = {}  # socket inode -> port the program asked for
        # Path calls: the program's, decided here; others' continue in the C loop.
        self._files = _feature(orch, "files")
        self._dns = bool(orch.config.feature.network.dns.enabled)
        self._hostname = _config_value(orch.layer_config(), "hn")
        self._paths_on = self._files is not None and (
            orch.config.feature.fs.mode != "local" or self._dns) or bool(self._hostname)
        skip = _config_value(orch.layer_config(), "skip") if self._paths_on else "*"
        self._skip_names = self.ffi.new("char[]", skip.encode())
        self._skip_exe_list: list[str] = []
        self._skip_exes = self.ffi.new("char[]", b"")
        self._keep: list[Any] = []  # buffers the C loop may still read
        self._program_configs: dict[str, str] = {}

    def start(self) -> None:
        sync = self.lib.tether_notif_sync_wakeup(self.listener)
        log.debug("seccomp supervisor started%s", "" if sync == 0 else
                  f" (no synchronous wake-up: {os.strerror(-sync)})")
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
            r = self.lib.tether_notif_recv_program(self.listener, notif, self._skip_names,
                                                   self._skip_exes)
            if r == -errno.ENOENT or r == -errno.EINTR:
                continue  # the caller died before we read it, or a signal
            if r < 0:
                return  # listener closed: session over
            args = tuple(int(notif.args[i]) for i in range(6))
            nid, tid, nr = int(notif.id), int(notif.pid), int(notif.nr)
            if _SYSCALL_NAMES.get(nr) == "uname":
                self._uname(nid, tid, args[0], os.fsdecode(self.ffi.string(notif.exe)))
                continue
            if _SYSCALL_NAMES.get(nr) in PATH_CALLS:
                exe = os.fsdecode(self.ffi.string(notif.exe))
                raw = self.ffi.string(notif.path)
                try:
                    call = self._path_call(nid, tid, nr, args, exe, raw)
                except (ProcessLookupError, FileNotFoundError):
                    self._continue(nid)  # the caller is most likely gone: harmless then
                    continue
                except Exception:
                    log.exception("seccomp: deciding a path call of pid %d failed; it runs "
                                  "locally", tid)
                    self._continue(nid)
                    continue
                if call is not None:
                    self.loop.call_soon_threadsafe(self._spawn_coro, self._remote_path(call))
                continue
            self.loop.call_soon_threadsafe(self._spawn, (nid, tid, nr, args))

    def _spawn(self, item: tuple[int, int, int, tuple[int, ...]]) -> None:
        self._spawn_coro(self._handle(*item))

    def _spawn_coro(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- path calls (receiving thread: decide; loop: ask the target) ----
    def _skip_exe(self, exe: str) -> None:
        """From now on the C loop continues this executable's path calls by itself."""
        if "," in exe or exe in self._skip_exe_list:
            return
        self._skip_exe_list.append(exe)
        self._keep.append(self._skip_exes)
        self._skip_exes = self.ffi.new("char[]", ",".join(self._skip_exe_list).encode())

    def _program_config(self, exe: str) -> str | None:
        """The layer config for this executable's paths, or None if they are not ours to
        decide (a program the layer reaches decides its paths itself)."""
        config = self._program_configs.get(exe)
        if config is None:
            info = inspect_elf(exe)
            if info is not None and not info.needs_seccomp:
                self._skip_exe(exe)
                return None
            config = self._program_configs[exe] = program_config(self._config.decode(), exe)
        return config

    def _uname(self, nid: int, tid: int, buf: int, exe: str) -> None:
        """uname(2) of the program: this machine's, with the target's hostname
        (feature.hostname; the layer answers for the programs it reaches)."""
        try:
            if not self._hostname or not exe or self._program_config(exe) is None:
                self._continue(nid)
                return
            data = _utsname_bytes(os.uname(), self._hostname, _domainname())
            if self._valid(nid):
                _write_memory(tid, buf, data)
                self._answer(nid, 0)
        except OSError as exc:
            self._answer(nid, err=exc.errno or errno.EFAULT)

    def _path_call(self, nid: int, tid: int, nr: int, args: tuple[int, ...], exe: str,
                   raw: bytes) -> PathCall | None:
        """Answer a path call that stays local (or fails) at once; return the remote ones."""
        name = _SYSCALL_NAMES[nr]
        config = self._program_config(exe) if self._paths_on and exe else None
        if config is None:
            self._continue(nid)
            return None
        if name in _STATS and not _STAT_LAYOUT_KNOWN:
            self._continue(nid)  # struct stat is x86-64's below; elsewhere stat stays local
            return None
        dirfd, flags, mode, buf, size, follow = AT_FDCWD, 0, 0, 0, 0, True
        if name == "openat":
            dirfd, flags, mode = _int32(args[0]), args[2] & 0xFFFFFFFF, args[3]
        elif name == "open":
            flags, mode = args[1] & 0xFFFFFFFF, args[2]
        elif name == "newfstatat":
            dirfd, buf, flags = _int32(args[0]), args[2], args[3]
        elif name == "statx":
            dirfd, buf, flags = _int32(args[0]), args[4], args[2]
        elif name in ("stat", "lstat"):
            buf, follow = args[1], name == "stat"
        elif name == "readlinkat":
            dirfd, buf, size = _int32(args[0]), args[2], args[3] & 0x7FFFFFFF
        elif name == "readlink":
            buf, size = args[1], args[2] & 0x7FFFFFFF
        elif name == "access":
            mode = args[1] & 7
        else:  # faccessat, faccessat2
            dirfd, mode = _int32(args[0]), args[2] & 7
            flags = args[3] if name == "faccessat2" else 0
        if name not in _OPENS:
            if flags & AT_EMPTY_PATH:
                self._continue(nid)  # fstat of a descriptor: native
                return None
            follow = follow and not flags & AT_SYMLINK_NOFOLLOW
        if not self._valid(nid):  # the path was read from a process that still waits
            return None
        if not raw:
            self._continue(nid)
            return None
        try:
            path = raw.decode()
        except UnicodeDecodeError:
            self._continue(nid)  # the protocol carries paths as UTF-8 text, as the layer's
            return None
        if not path.startswith("/"):
            if dirfd != AT_FDCWD:
                self._continue(nid)  # relative to a descriptor: resolves natively
                return None
            path = os.path.join(os.readlink(f"/proc/{tid}/cwd"), path)
        path = _normalize(path)
        if name in _OPENS:
            write = bool(flags & _WRITE_FLAGS) or flags & _O_TMPFILE == _O_TMPFILE
        else:  # access(W_OK) asks about a write: answered where the write would go
            write = name not in _STATS + _READLINKS and bool(mode & os.W_OK)
        decision = decide(config, path, write, resolver_files=self._dns)
        if decision == LOCAL:
            self._continue(nid)
            return None
        if decision == ENOENT:
            self._answer(nid, err=errno.ENOENT)
            return None
        return PathCall(nid, tid, name, path, flags, mode, buf, follow, size)

    async def _remote_path(self, call: PathCall) -> None:
        try:
            if call.name in _OPENS:
                await self._remote_open(call)
            elif call.name in _STATS:
                await self._remote_stat(call)
            elif call.name in _READLINKS:
                await self._remote_readlink(call)
            else:
                await self._remote_access(call)
        except RemoteError as exc:
            log.debug("seccomp: pid %d %s %s: %s", call.tid, call.name, call.path, exc)
            self._answer(call.nid, err=exc.errno or errno.EIO)
        except (LinkClosed, TimeoutError, ProcessLookupError, FileNotFoundError):
            self._answer(call.nid, err=errno.EIO)  # never leave a caller waiting
        except Exception:
            log.exception("seccomp: %s of %s for pid %d failed", call.name, call.path, call.tid)
            self._answer(call.nid, err=errno.EIO)

    async def _remote_open(self, call: PathCall) -> None:
        reply = await self._files._open(None, {  # noqa: SLF001
            "t": "fs_open", "path": call.path, "flags": call.flags & ~os.O_CLOEXEC,
            "mode": call.mode & 0o7777})
        fds = reply.get("_fds", [])
        try:
            if not self._valid(call.nid):
                return
            cloexec = os.O_CLOEXEC if call.flags & os.O_CLOEXEC else 0
            installed = self.lib.tether_notif_addfd(self.listener, call.nid, fds[0], -1, cloexec)
        finally:
            for fd in fds:
                os.close(fd)
        if installed < 0:
            self._answer(call.nid, err=-installed)
            return
        log.debug("seccomp: pid %d opened %s in the target (fd %d)", call.tid, call.path,
                  installed)
        self._answer(call.nid, installed)

    async def _remote_stat(self, call: PathCall) -> None:
        reply = await self._files._forward(None, {  # noqa: SLF001
            "t": "fs_stat", "path": call.path, "follow": call.follow})
        st = [int(v) for v in reply["st"]]
        data = _statx_bytes(st) if call.name == "statx" else _stat_bytes(st)
        if not self._valid(call.nid):
            return
        _write_memory(call.tid, call.buf, data)
        self._answer(call.nid, 0)

    async def _remote_readlink(self, call: PathCall) -> None:
        reply = await self._files._forward(None, {  # noqa: SLF001
            "t": "fs_readlink", "path": call.path})
        data = os.fsencode(reply["target"])[:call.size]  # no NUL, cut to the buffer
        if call.size <= 0:
            self._answer(call.nid, err=errno.EINVAL)
            return
        if not self._valid(call.nid):
            return
        _write_memory(call.tid, call.buf, data)
        self._answer(call.nid, len(data))

    async def _remote_access(self, call: PathCall) -> None:
        reply = await self._files._forward(None, {  # noqa: SLF001
            "t": "fs_stat", "path": call.path, "follow": call.follow})
        ok = _access_allowed([int(v) for v in reply["st"]], call.mode,
                             _credentials(call.tid, bool(call.flags & AT_EACCESS)))
        self._answer(call.nid, err=0 if ok else errno.EACCES)

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
            # The open file's own flag (the duplicate shares it): a socket object made
            # from a descriptor always says it blocks.  A blocking replacement would
            # leave Go's read of an unanswered DNS query in the kernel for ever, deaf
            # to its deadlines.
            nonblocking = bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)
            if agent is None:
                self._continue(nid)
                return
            if dns:
                servers = [str(a) for a in
                           (await agent.call({"t": "agent_nameservers"}, 10))["servers"]]
                if not servers:
                    self._continue(nid)
                    return
                # Go reads the target's resolv.conf (served from the target), so it asks
                # one of the target's nameservers; otherwise, the first of them.
                if ip not in servers:
                    ip = servers[0]
                    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            if not agent.can_pass_fds or _feature(self.orch, "outgoing").relay_mode:
                await self._connect_relayed(nid, tid, fd, sock, family, ip, port, proto,
                                            nonblocking)
                return
            req: dict[str, Any] = {"t": "agent_connect", "proto": proto, "family": family,
                                   "addr": socket.inet_pton(family, ip), "port": port,
                                   "connect": dns}
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
                log.debug("seccomp: pid %d DNS to the target's nameserver %s", tid, ip)
                self._answer(nid, 0)
            else:
                log.debug("seccomp: pid %d connect %s:%d through the target", tid, ip, port)
                self._continue(nid)

    async def _connect_relayed(self, nid: int, tid: int, fd: int, sock: socket.socket,
                               family: int, ip: str, port: int, proto: str,
                               nonblocking: bool) -> None:
        """Links that cannot carry descriptors (Kubernetes): the outgoing feature's relay.

        The agent connects inside the target and relays over the link (TCP: a stream,
        UDP and DNS: one message per datagram); here the program's end of the relay's private
        loopback pair (already connected, features/outgoing.private_pair) replaces the
        program's socket, and the call returns 0 (a connect may complete at once, also for
        non-blocking sockets)."""
        outgoing = _feature(self.orch, "outgoing")
        reply = await outgoing._out_connect(None, {  # noqa: SLF001
            "proto": proto, "family": family, "addr": socket.inet_pton(family, ip),
            "port": port, "connect": True})
        fds = reply.pop("_fds", [])
        if reply.get("result", 0) != 0 or not fds:
            self._answer(nid, err=int(reply.get("result") or errno.ECONNREFUSED))
            return
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
        log.debug("seccomp: pid %d %s connect %s:%d relayed through the agent", tid, proto,
                  ip, port)
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


@dataclass
class PathCall:
    """A path call of the program whose path is the target's."""

    nid: int
    tid: int
    name: str
    path: str
    flags: int
    mode: int
    buf: int  # stat or readlink buffer in the program
    follow: bool
    size: int = 0  # readlink buffer size


def _utsname_bytes(un: os.uname_result, hostname: str, domainname: str) -> bytes:
    """struct utsname: six NUL-padded 65-byte fields, the nodename replaced."""
    fields = (un.sysname, hostname, un.release, un.version, un.machine, domainname)
    return b"".join(os.fsencode(f)[:64].ljust(65, b"\0") for f in fields)


def _domainname() -> str:
    try:
        with open("/proc/sys/kernel/domainname") as f:
            return f.read().strip()
    except OSError:
        return "(none)"


def _write_memory(tid: int, addr: int, data: bytes) -> None:
    with open(f"/proc/{tid}/mem", "r+b", buffering=0) as mem:
        os.pwrite(mem.fileno(), data, addr)


def _credentials(tid: int, effective: bool) -> tuple[int, int]:
    """(uid, gid) of the caller: real ones, or effective ones for AT_EACCESS."""
    uid = gid = 0
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            if line.startswith(("Uid:", "Gid:")):
                value = int(line.split()[2 if effective else 1])
                if line.startswith("Uid:"):
                    uid = value
                else:
                    gid = value
    return uid, gid


def _access_allowed(st: list[int], amode: int, cred: tuple[int, int]) -> bool:
    """access(2) from a target stat, as the layer's access_from_stat (root may do all but
    execute a file nobody may execute)."""
    mode, uid, gid = st[2], st[4], st[5]
    if amode == os.F_OK:
        return True
    if cred[0] == 0:
        return not (amode & os.X_OK and not stat_mod.S_ISDIR(mode) and not mode & 0o111)
    shift = 6 if uid == cred[0] else 3 if gid == cred[1] else 0
    return (amode & (mode >> shift) & 7) == amode


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _normalize(path: str) -> str:
    """Lexical normal form, as the layer's (".", "..", "//"), with one leading slash."""
    norm = os.path.normpath(path)
    return "/" + norm.lstrip("/")


def _stat_bytes(st: list[int]) -> bytes:
    """struct stat (x86-64 layout) from the wire form (messages_files.STAT_FIELDS)."""
    dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks = st[:10]
    return struct.pack("=QQQIIIiQqqq6q3q", dev, ino, nlink, mode, uid, gid, 0, rdev, size,
                       blksize, blocks, *st[10:16], 0, 0, 0)


def _statx_bytes(st: list[int]) -> bytes:
    """struct statx (256 bytes) with the basic fields (STATX_BASIC_STATS)."""
    dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks = st[:10]
    ts = struct.pack("=qIi", st[10], st[11], 0)  # atime
    btime = struct.pack("=qIi", 0, 0, 0)
    head = struct.pack("=IIQIIIHHQQQQ", 0x7FF, blksize, 0, nlink, uid, gid, mode & 0xFFFF, 0,
                       ino, size, blocks, 0)
    tail = struct.pack("=IIII", os.major(rdev), os.minor(rdev), os.major(dev), os.minor(dev))
    times = ts + btime + struct.pack("=qIi", st[14], st[15], 0) + \
        struct.pack("=qIi", st[12], st[13], 0)
    data = head + times + tail
    return data + b"\0" * (256 - len(data))


def _config_value(config: str, key: str) -> str:
    for entry in config.split(";"):
        k, _, v = entry.partition("=")
        if k == key:
            return v
    return ""


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

    names = ("connect", "bind", "listen", "uname", *PATH_CALLS)
    numbers = {_native.lib.tether_sysno(n.encode()): n for n in names}
    numbers.pop(-1, None)  # open, stat, lstat: x86-64 only
    return numbers


_SYSCALL_NAMES = _syscall_names()
