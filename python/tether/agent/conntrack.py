"""Forget the connection-tracking entries a steal leaves behind (ctnetlink, no dependency).

A stolen connection is a conntrack entry whose original direction goes to the target's
port and whose reply comes from the agent's listener (the NAT redirect). The entry
outlives the session that made it: a load balancer that reuses its client ports sends its
next SYN from the same address and port, conntrack matches the old entry, and depending on
its state the SYN is NATed again to a listener that no longer exists (refused) instead of
meeting the current redirect. So the agent forgets such entries

* when it subscribes a port: entries of that port NATed to a port nobody listens on any
  more (an earlier agent, even one killed by SIGKILL);
* when it gives a port up: entries NATed to its own listener whose connection is closing
  or closed;
* when the session ends: every entry NATed to its own listener.

Entries of connections that are still served (the target's own, or another live agent's
in a team chain) are never touched: deleting one would re-pick its next packet up as a
new, un-NATed connection and break it.

Why not the ``conntrack`` program or pyroute2: the agent already runs in the target's
network namespace with CAP_NET_ADMIN, and the two requests it needs (dump, delete one entry
by its tuple and id) are a few dozen lines of netlink; a Debian package or a Python
dependency would have to be in every agent image and every target for that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger("tether.agent.incoming")

NETLINK_NETFILTER = 12
_NFNL_SUBSYS_CTNETLINK = 1
_MSG_GET, _MSG_DELETE = 1, 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF
# enum ctattr_type / ctattr_tuple / ctattr_ip / ctattr_l4proto / ctattr_protoinfo(_tcp)
_CTA_TUPLE_ORIG, _CTA_TUPLE_REPLY, _CTA_PROTOINFO, _CTA_ID = 1, 2, 4, 12
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST, _CTA_IP_V6_SRC, _CTA_IP_V6_DST = 1, 2, 3, 4
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_CTA_PROTOINFO_TCP, _CTA_PROTOINFO_TCP_STATE = 1, 1

#: TCP conntrack states (enum tcp_conntrack) from which on a connection is closing.
TCP_FIN_WAIT = 4

_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")


@dataclass(frozen=True)
class Entry:
    family: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    reply_sport: int  # the port the reply comes from: the agent's listener when NATed
    state: int
    id: int | None


def _attrs(data: bytes | memoryview, offset: int = 0) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(data)
    while offset + 4 <= len(view):
        length, kind = struct.unpack_from("=HH", view, offset)
        if length < 4:
            return
        yield kind & _NLA_TYPE_MASK, view[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _tuple(data: memoryview) -> tuple[bytes, bytes, int, int, int]:
    src = dst = b""
    proto = sport = dport = 0
    for kind, value in _attrs(data):
        if kind == _CTA_TUPLE_IP:
            for k, v in _attrs(value):
                if k in (_CTA_IP_V4_SRC, _CTA_IP_V6_SRC):
                    src = bytes(v)
                elif k in (_CTA_IP_V4_DST, _CTA_IP_V6_DST):
                    dst = bytes(v)
        elif kind == _CTA_TUPLE_PROTO:
            for k, v in _attrs(value):
                if k == _CTA_PROTO_NUM:
                    proto = v[0]
                elif k == _CTA_PROTO_SRC_PORT:
                    sport = struct.unpack("!H", v[:2])[0]
                elif k == _CTA_PROTO_DST_PORT:
                    dport = struct.unpack("!H", v[:2])[0]
    return src, dst, proto, sport, dport


def _parse(family: int, payload: memoryview) -> Entry | None:
    orig = reply = None
    state, ident = 0, None
    for kind, value in _attrs(payload):
        if kind == _CTA_TUPLE_ORIG:
            orig = _tuple(value)
        elif kind == _CTA_TUPLE_REPLY:
            reply = _tuple(value)
        elif kind == _CTA_ID:
            ident = struct.unpack("!I", value[:4])[0]
        elif kind == _CTA_PROTOINFO:
            for k, v in _attrs(value):
                if k == _CTA_PROTOINFO_TCP:
                    for k2, v2 in _attrs(v):
                        if k2 == _CTA_PROTOINFO_TCP_STATE:
                            state = v2[0]
    if orig is None or reply is None or orig[2] != socket.IPPROTO_TCP:
        return None
    return Entry(family, orig[0], orig[1], orig[3], orig[4], reply[3], state, ident)


class Conntrack:
    """One ctnetlink socket (in the namespace of the process that opens it)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_NETFILTER)
        self.sock.settimeout(2)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, msg_type: int, flags: int, family: int, attrs: bytes) -> int:
        self._seq += 1
        body = _NFGEN.pack(family, 0, 0) + attrs
        header = _NLMSG.pack(_NLMSG.size + len(body), (_NFNL_SUBSYS_CTNETLINK << 8) | msg_type,
                             _NLM_F_REQUEST | flags, self._seq, 0)
        self.sock.send(header + body)
        return self._seq

    def _replies(self, seq: int) -> Iterator[tuple[int, int, memoryview]]:
        """(type, nfgen family, attributes) of each answer to ``seq`` until DONE/ERROR."""
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _flags, mseq, _pid = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    return
                body = memoryview(data)[offset + _NLMSG.size : offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                yield kind, body[0], body[_NFGEN.size :]

    def entries(self) -> list[Entry]:
        """Every TCP entry of the namespace (IPv4 and IPv6)."""
        seq = self._request(_MSG_GET, _NLM_F_DUMP, socket.AF_UNSPEC, b"")
        out = []
        for _kind, family, attrs in self._replies(seq):
            entry = _parse(family, attrs)
            if entry is not None:
                out.append(entry)
        return out

    def delete(self, e: Entry) -> bool:
        """Delete one entry (by its original tuple and id); False if it is already gone."""
        v4 = e.family == socket.AF_INET
        ip = _attr(_CTA_IP_V4_SRC if v4 else _CTA_IP_V6_SRC, e.src) + _attr(
            _CTA_IP_V4_DST if v4 else _CTA_IP_V6_DST, e.dst)
        proto = (_attr(_CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP]))
                 + _attr(_CTA_PROTO_SRC_PORT, struct.pack("!H", e.sport))
                 + _attr(_CTA_PROTO_DST_PORT, struct.pack("!H", e.dport)))
        tup = _attr(_CTA_TUPLE_IP | _NLA_F_NESTED, ip) + _attr(
            _CTA_TUPLE_PROTO | _NLA_F_NESTED, proto)
        attrs = _attr(_CTA_TUPLE_ORIG | _NLA_F_NESTED, tup)
        if e.id is not None:
            attrs += _attr(_CTA_ID, struct.pack("!I", e.id))
        seq = self._request(_MSG_DELETE, _NLM_F_ACK, e.family, attrs)
        try:
            for _ in self._replies(seq):
                pass
        except FileNotFoundError:
            return False
        return True


def listening_ports() -> set[int]:
    """TCP ports something listens on in this network namespace."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/self/net/{table}") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) > 3 and cols[3] == "0A":  # TCP_LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def forget(port: int, redirected_to: Callable[[Entry], bool]) -> int:
    """Delete the entries of connections to ``port`` that were NATed (the reply comes from
    another port) and for which ``redirected_to(entry)`` holds; return how many. Never
    raises: conntrack trouble must not stop a steal from starting or ending."""
    try:
        with Conntrack() as ct:
            gone = 0
            for e in ct.entries():
                if e.dport == port and e.reply_sport != port and redirected_to(e):
                    with contextlib.suppress(OSError):
                        gone += ct.delete(e)
    except OSError as exc:
        log.debug("conntrack of port %d: %s", port, exc)
        return 0
    if gone:
        log.debug("port %d: forgot %d connection-tracking entries", port, gone)
    return gone
