"""Steal incoming TCP connections with an nftables NAT redirect that cannot outlive the agent.

This module owns the agent's redirect rules and the lookup of a stolen connection's
original destination. It runs inside the target's network namespace.

Why it looks like this:

* The table is created with ``flags owner`` through one libnftables context that lives as
  long as the :class:`Redirector`. The kernel deletes an owner table when the netlink
  socket that created it closes, so when the agent dies - even by SIGKILL - the target is
  left exactly as it was. No cleanup code that a crash could skip. (The ``nft`` command
  cannot do this: it exits at once and its owner tables vanish with it.)
* Redirected ports live in one map ``port -> agent port``; adding or removing a port is a
  single element change, applied atomically, with no window in which the rules are half
  there.
* Two chains: ``prerouting`` for connections that arrive from outside (over the pod's
  interface), ``output`` for connections the target makes to itself (its own IP or
  loopback: a sidecar, a health check run inside the pod). Both only touch connections to
  *local* addresses (``fib daddr type local``), so the target's outgoing connections to
  other hosts on the same port number are never stolen.
* The agent itself must still reach the original application on the stolen port (to
  forward requests that a filter does not steal). Its connections are exempt from the
  ``output`` redirect in two ways, both documented in :class:`Redirector`:
  a socket mark (:func:`bypass`, the default and what the agent uses: it needs no change
  of the process' credentials) and optionally the agent's group id (``meta skgid``), for
  an agent run with a dedicated gid so that every socket it creates is exempt.

* Several sessions on one target (a team sharing a staging): each agent has its own table,
  mark and chain priority. A newer table hooks *before* the older ones and exempts the
  marks of every older agent; its agent passes what its filter does not take on with its
  own mark, which the older tables do not exempt, so the next older agent sees it and
  applies its own filter, and the oldest passes the rest to the application. Every
  developer gets exactly the requests their filter matches, and whoever leaves takes
  only their table with them. (Two agents created at the very same moment may pick the
  same place in the chain: then one of them sees all new connections first.)

The original destination of a redirected connection is kept by conntrack;
:func:`original_dst` reads it with ``getsockopt(SO_ORIGINAL_DST)``.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Self

LIBNFTABLES = "libnftables.so.1"

#: Socket mark of the first agent in a namespace (ASCII "teth"); later agents count up.
BYPASS_MARK = 0x74657468
#: The mark this process' agent uses (set by its Redirector; see :func:`bypass`).
_process_mark = BYPASS_MARK
_MARK_RE = re.compile(r"meta mark != (?:\{([^}]*)\}|(0x[0-9a-f]+))")

# linux/netfilter_ipv4.h and linux/netfilter_ipv6/ip6_tables.h
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOL_IP = 0
_SOL_IPV6 = 41
_CAP_NET_ADMIN = 12


class RedirectError(RuntimeError):
    """libnftables refused a command, or the redirect cannot work on this machine."""


def _has_cap_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return True  # unknown: let the kernel decide and report


class _Nft:
    """A libnftables context (``nft_ctx_new``) with output and errors captured in buffers."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(LIBNFTABLES)
        except OSError as e:
            raise RedirectError(
                f"cannot load {LIBNFTABLES} ({e}): install libnftables "
                "(Debian/Ubuntu package libnftables1)"
            ) from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx: int | None = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not self._ctx:
            raise RedirectError(
                "nft_ctx_new failed: cannot create a libnftables context"
            )
        # Buffered output: errors come back to us as text instead of going to stderr.
        if lib.nft_ctx_buffer_output(self._ctx) or lib.nft_ctx_buffer_error(self._ctx):
            raise RedirectError("libnftables: cannot buffer output")
        self._lock = threading.Lock()

    def run(self, commands: str) -> str:
        """Run ``commands`` as one transaction; return the output or raise with nft's error."""
        with self._lock:
            if self._ctx is None:
                raise RedirectError("the nftables context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(
                errors="replace"
            )
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(
                errors="replace"
            )
        if rc != 0:
            message = err.strip() or f"nft returned {rc}"
            if "Operation not permitted" in message and not _has_cap_net_admin():
                message = f"CAP_NET_ADMIN is missing: {message}"
            raise RedirectError(message)
        return out

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                # Freeing the context closes its netlink socket: owner tables go with it.
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


class Redirector:
    """The agent's redirect table: ``table inet <name> { flags owner; }``.

    One per agent process; it holds the libnftables context (and so the table) for its
    lifetime. Connections to a local address on a redirected TCP port go to ``to_port`` on
    the same address instead:

    * ``prerouting``: connections arriving from outside the network namespace;
    * ``output``: connections made inside the namespace (the target to itself), except
      sockets marked with ``bypass_mark`` (see :func:`bypass`; ``SO_MARK`` needs
      CAP_NET_ADMIN, which the agent has anyway) and, if ``skgid`` is given, sockets
      created while the process' file-system gid was ``skgid`` (``meta skgid``: run the
      agent with that dedicated gid to exempt all its sockets without marking each).

    Raises :class:`RedirectError` naming what is missing (libnftables, CAP_NET_ADMIN) or
    carrying libnftables' error message.
    """

    def __init__(
        self,
        table_name: str | None = None,
        skgid: int | None = None,
        bypass_mark: int | None = None,
    ) -> None:
        global _process_mark
        self.table = table_name or f"tether_{os.getpid()}"
        self.skgid = skgid
        self._ports: dict[int, int] = {}
        self._whole: set[int] = set()
        self._nft: _Nft | None = None
        if not _has_cap_net_admin():
            raise RedirectError(
                "CAP_NET_ADMIN is missing: the agent needs it in the target's network "
                "namespace to install its nftables redirect"
            )
        nft = _Nft()
        older = _older_marks(nft)
        if bypass_mark is None:
            bypass_mark = max(older, default=BYPASS_MARK - 1) + 1
        self.bypass_mark = bypass_mark
        _process_mark = bypass_mark
        # Newer tables hook earlier: one priority step per place in the chain.
        self.priority = -100 - (bypass_mark - BYPASS_MARK + 1)
        t = f"inet {self.table}"
        marks = ", ".join(f"{m:#x}" for m in sorted(older | {bypass_mark}))
        exempt = f"meta mark != {{ {marks} }} "
        if skgid is not None:
            exempt += f"meta skgid != {int(skgid)} "
        # Only connection openings (SYN without ACK): the first NAT rules in a namespace
        # switch conntrack on, and conntrack then picks up established connections it
        # never saw (nf_conntrack_tcp_loose) as "new" - without this match their next
        # packet would be redirected to the agent and the target's in-flight keep-alive
        # connections reset.
        redirect = ("fib daddr type local meta l4proto tcp tcp flags & (syn | ack) == syn "
                    "redirect to :tcp dport map @redirects")
        try:
            nft.run(
                f"add table {t} {{ flags owner; }}\n"
                f"add map {t} redirects {{ type inet_service : inet_service; }}\n"
                # The ports this agent steals whole (no filter): the other sessions on the
                # target read it to apply their on_concurrent_steal.
                f"add set {t} whole {{ type inet_service; }}\n"
                f"add chain {t} prerouting {{ type nat hook prerouting priority "
                f"{self.priority}; policy accept; }}\n"
                f"add chain {t} output {{ type nat hook output priority {self.priority}; "
                "policy accept; }\n"
                f"add rule {t} prerouting {exempt}{redirect}\n"
                f"add rule {t} output {exempt}{redirect}\n"
            )
        except BaseException:
            nft.close()
            raise
        self._nft = nft

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ports(self) -> dict[int, int]:
        """The current redirects, ``{port: to_port}``."""
        return dict(self._ports)

    def add(self, port: int, to_port: int, whole: bool | None = None) -> None:
        """Redirect new TCP connections to local ``port`` to ``to_port`` (replaces atomically).

        ``whole``: the port is stolen without a filter (published for the other sessions,
        see :meth:`others`); None keeps what was said before."""
        port, to_port = _port(port), _port(to_port)
        t = f"inet {self.table}"
        cmds = ""
        if port in self._ports:
            cmds += f"delete element {t} redirects {{ {port} }}\n"
        cmds += f"add element {t} redirects {{ {port} : {to_port} }}\n"
        if whole is not None:
            if port in self._whole and not whole:
                cmds += f"delete element {t} whole {{ {port} }}\n"
            elif whole and port not in self._whole:
                cmds += f"add element {t} whole {{ {port} }}\n"
        self._context().run(cmds)
        self._ports[port] = to_port
        if whole is not None:
            (self._whole.add if whole else self._whole.discard)(port)

    def remove(self, port: int) -> None:
        """Stop redirecting ``port`` (a no-op if it is not redirected).

        Connections already redirected stay with the agent (conntrack keeps their NAT);
        new ones reach the original application.
        """
        port = _port(port)
        if port not in self._ports:
            return
        cmds = f"delete element inet {self.table} redirects {{ {port} }}\n"
        if port in self._whole:
            cmds += f"delete element inet {self.table} whole {{ {port} }}\n"
        self._context().run(cmds)
        del self._ports[port]
        self._whole.discard(port)

    def others(self, port: int) -> list[OtherSteal]:
        """The other agents in this namespace that steal ``port`` (a team chain, or a
        session someone else started), read from their tables."""
        found = []
        for name in _tether_tables(self._context()):
            if name == self.table:
                continue
            try:
                redirects = self._context().run(f"list map inet {name} redirects\n")
            except RedirectError:
                continue  # it went away meanwhile
            if port not in _elements(redirects):
                continue
            try:
                whole = port in _elements(self._context().run(f"list set inet {name} whole\n"))
            except RedirectError:
                whole = False
            found.append(OtherSteal(name, whole))
        return found

    def ruleset(self) -> str:
        """The table as ``nft list table`` prints it (for logs and debugging)."""
        return self._context().run(f"list table inet {self.table}\n")

    def _context(self) -> _Nft:
        if self._nft is None:
            raise RedirectError(f"redirect table {self.table} is closed")
        return self._nft

    def close(self) -> None:
        """Delete the table and release the context. Idempotent."""
        nft, self._nft = self._nft, None
        if nft is None:
            return
        try:
            nft.run(f"delete table inet {self.table}\n")
        except RedirectError:
            pass  # closing the context below removes an owner table anyway
        finally:
            nft.close()
            self._ports.clear()


def _port(value: int) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError(f"port {value!r} is outside 1-65535")
    return port


def bypass(sock: socket.socket, mark: int | None = None) -> None:
    """Exempt ``sock`` from this agent's redirect and the newer agents' ones (call before
    ``connect``); older agents' tables still see it. Default: this process' mark."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, _process_mark if mark is None else mark)


@dataclass(frozen=True)
class OtherSteal:
    """Another agent's steal of a port: its table (``tether_<agent pid>``) and whether it
    takes the port whole (no filter)."""

    table: str
    whole: bool

    @property
    def agent_pid(self) -> int | None:
        tail = self.table.rpartition("_")[2]
        return int(tail) if tail.isdigit() else None


def _tether_tables(nft: _Nft) -> list[str]:
    names = []
    for line in nft.run("list tables\n").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[:2] == ["table", "inet"] and parts[2].startswith("tether_"):
            names.append(parts[2])
    return names


def _elements(listing: str) -> set[int]:
    """The ports in a set's or map's ``elements = { ... }`` (keys only for a map)."""
    found = re.search(r"elements = \{([^}]*)\}", listing)
    if not found:
        return set()
    ports = set()
    for item in found.group(1).split(","):
        key = item.split(":")[0].strip()
        if key.isdigit():
            ports.add(int(key))
    return ports


def _older_marks(nft: _Nft) -> set[int]:
    """The marks of the agents whose tables are already in this namespace."""
    marks: set[int] = set()
    for name in _tether_tables(nft):
        try:
            listing = nft.run(f"list chain inet {name} output\n")
        except RedirectError:
            continue  # it went away meanwhile
        for group, single in _MARK_RE.findall(listing):
            for item in (group or single).split(","):
                item = item.strip()
                if item:
                    marks.add(int(item, 16))
    return marks


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The address and port a redirected connection was originally sent to.

    With a NAT redirect the accepted socket's local address is the agent's own port;
    conntrack remembers the original destination and ``getsockopt(SOL_IP,
    SO_ORIGINAL_DST)`` (IPv4, ``struct sockaddr_in``) or ``getsockopt(SOL_IPV6,
    IP6T_SO_ORIGINAL_DST)`` (IPv6, ``struct sockaddr_in6``) returns it. An IPv4 connection
    accepted on a dual-stack IPv6 socket is looked up as IPv4 and returned as a plain
    IPv4 address. Raises ``OSError`` (ENOENT) for a connection conntrack does not know.
    """
    v6 = sock.family == socket.AF_INET6
    if (
        v6
        and ipaddress.IPv6Address(sock.getsockname()[0].split("%")[0]).ipv4_mapped
        is not None
    ):
        v6 = False
    if v6:
        raw = sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raw = sock.getsockopt(_SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return str(ipaddress.IPv4Address(raw[4:8])), port
