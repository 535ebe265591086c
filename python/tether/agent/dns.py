"""Name resolution as the target does it: its /etc/hosts, then its resolv.conf's
nameservers (search domains, ndots, timeout, attempts), queried from inside its network
namespace.

A small DNS client rather than the host's getaddrinfo: the agent runs the *host's* libc,
whose resolver reads the *host's* /etc files; joining the target's mount namespace would
need a fork per lookup (setns(CLONE_NEWNS) is refused to a threaded process) and would load
the target's NSS modules into a process built against another libc.  Reading the two files
through /proc/<pid>/root and speaking DNS ourselves is deterministic, costs no process,
and works the same in a Kubernetes pod, where the agent reads its own /etc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import struct
from dataclasses import dataclass, field

from ..link import Link, RemoteError
from ..protocol import Message

log = logging.getLogger("tether.agent.dns")

# getaddrinfo's error codes (glibc values), negated on the wire as errno.
EAI_NONAME = -2
EAI_AGAIN = -3
EAI_FAIL = -4
EAI_NODATA = -5

QTYPE = {socket.AF_INET: 1, socket.AF_INET6: 28}
CNAME = 5


class LookupError_(Exception):
    def __init__(self, eai: int, message: str) -> None:
        super().__init__(message)
        self.eai = eai


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2


def parse_resolv_conf(text: str) -> ResolvConf:
    conf = ResolvConf()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and args and len(conf.nameservers) < 3:
            conf.nameservers.append(args[0].split("%", 1)[0])
        elif key == "search":
            conf.search = [a.rstrip(".") for a in args][:6]
        elif key == "domain" and args:
            conf.search = [args[0].rstrip(".")]
        elif key == "options":
            for opt in args:
                name, _, value = opt.partition(":")
                with contextlib.suppress(ValueError):
                    if name == "ndots":
                        conf.ndots = min(int(value), 15)
                    elif name == "timeout":
                        conf.timeout = float(max(1, min(int(value), 30)))
                    elif name == "attempts":
                        conf.attempts = max(1, min(int(value), 5))
    if not conf.nameservers:
        conf.nameservers = ["127.0.0.1"]  # what glibc assumes
    return conf


def parse_hosts(text: str) -> dict[str, list[tuple[str, str]]]:
    """name (lower case) -> [(canonical name, address), ...] in file order."""
    table: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            addr = str(ipaddress.ip_address(words[0].split("%", 1)[0]))
        except ValueError:
            continue
        canon = words[1]
        for name in words[1:]:
            table.setdefault(name.lower().rstrip("."), []).append((canon, addr))
    return table


def _families(family: int) -> list[int]:
    return [socket.AF_INET, socket.AF_INET6] if family == socket.AF_UNSPEC else [family]


def _family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


# ---- DNS wire format ----
def build_query(qid: int, name: str, qtype: int) -> bytes:
    out = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not raw or len(raw) > 63:
            raise LookupError_(EAI_NONAME, f"invalid name {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0" + struct.pack(">HH", qtype, 1)


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    jumped, end, hops = False, pos, 0
    while True:
        if pos >= len(msg) or hops > 64:
            raise ValueError("truncated name")
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise ValueError("truncated pointer")
            if not jumped:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            jumped, hops = True, hops + 1
            continue
        if n == 0:
            if not jumped:
                end = pos + 1
            return ".".join(labels), end
        labels.append(msg[pos + 1: pos + 1 + n].decode(errors="replace"))
        pos += 1 + n


def parse_response(msg: bytes, qid: int) -> tuple[int, bool, list[tuple[int, str, bytes]]]:
    """(rcode, truncated, [(type, owner, rdata)]) of the answer section."""
    if len(msg) < 12:
        raise ValueError("short response")
    rid, flags, qd, an, _ns, _ar = struct.unpack_from(">HHHHHH", msg)
    if rid != qid or not flags & 0x8000:
        raise ValueError("not our response")
    pos = 12
    for _ in range(qd):
        _, pos = _read_name(msg, pos)
        pos += 4
    records = []
    for _ in range(an):
        owner, pos = _read_name(msg, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack_from(">HHIH", msg, pos)
        pos += 10
        rdata = msg[pos: pos + rdlen]
        if rtype == CNAME:
            rdata = _read_name(msg, pos)[0].encode()
        pos += rdlen
        records.append((rtype, owner, rdata))
    return flags & 0xF, bool(flags & 0x0200), records


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.error: OSError | None = None

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable and friends
        self.error = exc if isinstance(exc, OSError) else OSError(str(exc))
        self.queue.put_nowait(b"")


async def _query_tcp(server: str, query: bytes, timeout: float) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(server, 53), timeout)
    try:
        writer.write(struct.pack(">H", len(query)) + query)
        (n,) = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), timeout))
        return await asyncio.wait_for(reader.readexactly(n), timeout)
    finally:
        writer.close()


async def query(
    conf: ResolvConf, name: str, qtype: int
) -> tuple[int, list[tuple[int, str, bytes]]]:
    """Ask the nameservers in order, `attempts` rounds; (rcode, records) of the first answer."""
    loop = asyncio.get_running_loop()
    last = "no nameserver answered"
    for _ in range(conf.attempts):
        for server in conf.nameservers:
            qid = random.randrange(65536)
            q = build_query(qid, name, qtype)
            try:
                transport, proto = await loop.create_datagram_endpoint(
                    _Datagram, remote_addr=(server, 53))
            except OSError as exc:
                last = f"{server}: {exc.strerror}"
                continue
            try:
                transport.sendto(q)
                deadline = loop.time() + conf.timeout
                while True:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise TimeoutError
                    data = await asyncio.wait_for(proto.queue.get(), left)
                    if proto.error is not None:
                        raise proto.error
                    try:
                        rcode, truncated, records = parse_response(data, qid)
                    except (ValueError, struct.error):
                        continue  # stray or garbled datagram: keep waiting
                    if truncated:
                        data = await _query_tcp(server, q, conf.timeout)
                        rcode, _, records = parse_response(data, qid)
                    return rcode, records
            except TimeoutError:
                last = f"{server}: timed out"
            except OSError as exc:
                last = f"{server}: {exc.strerror or exc}"
            finally:
                transport.close()
    raise LookupError_(EAI_AGAIN, last)


def candidates(name: str, conf: ResolvConf) -> list[str]:
    if name.endswith("."):
        return [name.rstrip(".")]
    searched = [f"{name}.{d}" for d in conf.search if d]
    if name.count(".") >= conf.ndots:
        return [name] + searched
    return searched + [name]


def _configured_families() -> set[int]:
    """Families with a non-loopback address in this (the target's) network namespace."""
    fams: set[int] = set()
    with contextlib.suppress(OSError):
        for line in open("/proc/self/net/if_inet6").read().splitlines():
            cols = line.split()
            if cols and cols[-1] != "lo" and not cols[0].startswith("fe80"):
                fams.add(socket.AF_INET6)
    with contextlib.suppress(OSError):
        for line in open("/proc/self/net/route").read().splitlines()[1:]:
            if line.split() and line.split()[0] != "lo":
                fams.add(socket.AF_INET)
    return fams


async def resolve(root: str, name: str, family: int, addrconfig: bool = False
                  ) -> tuple[str, list[tuple[int, bytes]]]:
    """(canonical name, [(family, packed address)]) as the target would resolve ``name``."""
    fams = _families(family)
    if addrconfig:
        have = _configured_families()
        fams = [f for f in fams if f in have] or fams
    key = name.lower().rstrip(".")
    with contextlib.suppress(OSError):
        hosts = parse_hosts(open(os.path.join(root, "etc/hosts")).read())
        found = [(canon, a) for canon, a in hosts.get(key, []) if _family_of(a) in fams]
        if found:
            return found[0][0], [(_family_of(a), socket.inet_pton(_family_of(a), a))
                                 for _, a in found]
    try:
        conf = parse_resolv_conf(open(os.path.join(root, "etc/resolv.conf")).read())
    except OSError:
        conf = ResolvConf(nameservers=["127.0.0.1"])
    last_error = LookupError_(EAI_NONAME, f"{name}: name not known")
    saw_nxdomain = False
    for cand in candidates(name, conf):
        addrs: list[tuple[int, bytes]] = []
        canon = cand
        nxdomain = False
        for fam in fams:
            try:
                rcode, records = await query(conf, cand, QTYPE[fam])
            except LookupError_ as exc:
                last_error = exc
                continue
            if rcode == 3:
                nxdomain = True
                break
            if rcode != 0:
                last_error = LookupError_(EAI_AGAIN if rcode == 2 else EAI_FAIL,
                                          f"{cand}: server answered rcode {rcode}")
                continue
            for rtype, _owner, rdata in records:
                if rtype == CNAME:
                    canon = rdata.decode()
                elif rtype == QTYPE[fam] and len(rdata) in (4, 16):
                    addrs.append((fam, bytes(rdata)))
        if addrs:
            return canon, addrs
        if nxdomain:
            saw_nxdomain = True
            last_error = LookupError_(EAI_NONAME, f"{name}: name not known")
    if saw_nxdomain and last_error.eai == EAI_FAIL:
        # Like glibc: a refusal for one search candidate does not hide "no such name".
        raise LookupError_(EAI_NONAME, f"{name}: name not known")
    raise last_error


async def _agent_dns(link: Link, msg: Message) -> Message:
    ctx = link.state["ctx"]
    root = f"/proc/{ctx.target_pid}/root"
    try:
        canon, addrs = await resolve(root, msg["name"], int(msg["family"]),
                                     bool(msg.get("addrconfig")))
    except LookupError_ as exc:
        raise RemoteError("eai", str(exc), errno=-exc.eai) from None
    log.debug("dns %s -> %s", msg["name"], addrs)
    return {"t": "agent_dns_reply", "canon": canon, "addrs": [[f, a] for f, a in addrs]}


HANDLERS = {"agent_dns": _agent_dns}
