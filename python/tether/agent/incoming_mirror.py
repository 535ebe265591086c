"""Mirror: copy the target's incoming TCP streams by sniffing, never by sitting in the path.

Why a sniffer (AF_PACKET) and not redirect-and-copy: the mirror promise is that the
target's answers and latency do not change and that nothing changes for it if the agent
dies. A redirect puts the agent between every client and the target: each byte costs two
extra socket hops through Python, and the agent's death (or a SIGKILL) breaks every
connection that goes through it at that moment. A packet socket only receives copies of
packets the kernel delivers anyway; the target's sockets never know. What it costs: the
copy is best effort (a packet the socket buffer drops under load is a hole in the
stream: the flow is then abandoned, loudly), it sees only cleartext (an mTLS mesh
sidecar hides the HTTP), and only connections that start after the subscription are
mirrored (we need the SYN to know where the stream begins).

One packet socket per mirrored port, with a classic BPF program so the kernel hands us
only IPv4 TCP segments *to* that port that carry data or SYN/FIN/RST (pure ACKs, half of
a request/answer exchange, never wake us). The socket is bound to ETH_P_IP, so it only
sees received packets (outgoing ones reach ETH_P_ALL taps only); the filter still drops
``PACKET_OUTGOING`` copies, which matters for the shadow socket below. Each flow
(client address, port) is reassembled in sequence order (out-of-order segments held,
retransmissions dropped) and written to a stream the orchestrator delivers to the local
program.

Cheap for the target: the sniffer does not wake per packet. A readable socket is read
``BATCH_DELAY`` later, all at once (the kernel queues meanwhile, 8 MiB), and each flow's
bytes go out in one write per batch; so the agent, the orchestrator and the local program
each wake about once per batch instead of once per request. The copy arrives up to
``BATCH_DELAY`` late, which nobody notices. (SCHED_IDLE for the agent was measured too:
no gain visible once batching is in, and the agent also carries the developer's outgoing
traffic, which must not starve on a busy node; so the agent keeps its priority.)

Filter (``http_filter`` in mirror mode): each flow frames the client's bytes per request
(:class:`tether.http.RequestFramer`) and judges every request head with the compiled
filter; only matching requests (head and body) are copied, and the copy stream is opened
at the first match, so a connection nothing matches costs the developer nothing. A
matching upgrade request (WebSocket) copies the rest of the connection as it comes;
HTTP/2 or bytes that do not frame end the copy of that connection (nothing to judge).

Shadow (``shadow=True``): the socket is ETH_P_ALL (every IPv4 packet of the pod meets the
filter) and the filter also passes the target's answers (source port = the port: on
``lo``, which shows each packet twice, the incoming copy; elsewhere the outgoing one),
reassembled from the
SYN-ACK on, and each flow runs :class:`tether.http.shadow.Exchanges` over both
directions; every finished answer becomes a small summary handed to ``on_answers``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
from collections.abc import Callable

from ..http import (
    Body,
    H2Preface,
    Invalid,
    RequestEnd,
    RequestFramer,
    RequestHead,
    RequestMatcher,
    Tunnel,
    Upgraded,
)
from ..http.shadow import Exchanges, Summary

log = logging.getLogger("tether.agent.incoming")

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
SKF_AD_PROTOCOL = 0xFFFFF000 + 0
SKF_AD_PKTTYPE = 0xFFFFF000 + 4
SKF_AD_IFINDEX = 0xFFFFF000 + 8
LO_IFINDEX = 1
MAX_PENDING = 4 * 1024 * 1024  # bytes a slow developer may lag behind before we drop a flow
MAX_OOO = 256  # out-of-order segments held per flow
MAX_FLOWS = 4096
BATCH_DELAY = 0.002  # seconds between a readable packet socket and reading it
BATCH_MAX = 2048  # packets per read batch

# tcp flags
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

Key = tuple[str, int, str, int]

# classic BPF opcodes
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS, _LD_H_IND, _LD_B_IND = 0x20, 0x28, 0x30, 0x48, 0x50
_LDX_MSH, _LDX_MEM, _LDX_IMM, _ST = 0xB1, 0x61, 0x01, 0x02
_AND_K, _RSH_K, _ADD_X, _ADD_K = 0x54, 0x74, 0x0C, 0x04
_JEQ_K, _JSET_K, _JGT_X, _RET_K = 0x15, 0x45, 0x2D, 0x06


def _assemble(prog: list[tuple[str | None, int, str | int, str | int, int]]
              ) -> list[tuple[int, int, int, int]]:
    """(label, op, jt, jf, k) with jt/jf as labels (or 0: next) -> classic BPF."""
    where = {label: i for i, (label, *_rest) in enumerate(prog) if label}
    out = []
    for i, (_label, op, jt, jf, k) in enumerate(prog):
        rel = [where[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        assert all(0 <= r < 256 for r in rel), rel
        out.append((op, rel[0], rel[1], k))
    return out


def _tcp_to_port(port: int, shadow: bool, v6: bool, at: str
                 ) -> list[tuple[str | None, int, str | int, str | int, int]]:
    """One address family's part: TCP to ``port`` (with ``shadow`` also from it) carrying
    data or SYN/FIN/RST. Labels are prefixed with ``at``; ends jump to accept/drop."""
    if v6:  # fixed 40-byte header; extension headers are not followed (not mirrored)
        head = [(f"{at}start", _LD_B_ABS, 0, 0, 6), (None, _JEQ_K, 0, "drop", 6),
                (None, _LDX_IMM, 0, 0, 40)]
        total = [(None, _LD_H_ABS, 0, 0, 4), (None, _ADD_K, 0, 0, 40)]  # 40 + payload
    else:
        head = [(f"{at}start", _LD_B_ABS, 0, 0, 9),  # ip protocol
                (None, _JEQ_K, 0, "drop", 6),
                (None, _LD_H_ABS, 0, 0, 6),  # fragment offset
                (None, _JSET_K, "drop", 0, 0x1FFF),
                (None, _LDX_MSH, 0, 0, 0)]  # X = ip header length
        total = [(None, _LD_H_ABS, 0, 0, 2)]  # ip total length
    p = head + [
        (None, _LD_H_IND, 0, 0, 2),  # tcp dport
        (None, _JEQ_K, f"{at}in", f"{at}sport" if shadow else "drop", port),
    ]
    if shadow:
        p += [
            (f"{at}sport", _LD_H_IND, 0, 0, 0),  # tcp sport: the target's answer
            (None, _JEQ_K, 0, "drop", port),
            (None, _LD_W_ABS, 0, 0, SKF_AD_IFINDEX),
            (None, _JEQ_K, f"{at}in", 0, LO_IFINDEX),
            (None, _LD_W_ABS, 0, 0, SKF_AD_PKTTYPE),
            (None, _JEQ_K, f"{at}data", "drop", PACKET_OUTGOING),
        ]
    p += [
        (f"{at}in", _LD_W_ABS, 0, 0, SKF_AD_PKTTYPE),
        (None, _JEQ_K, "drop", 0, PACKET_OUTGOING),
        (f"{at}data", _LD_B_IND, 0, 0, 13),  # tcp flags
        (None, _JSET_K, "accept", 0, FIN | SYN | RST),
        (None, _LD_B_IND, 0, 0, 12),  # tcp data offset << 4
        (None, _AND_K, 0, 0, 0xF0),
        (None, _RSH_K, 0, 0, 2),
        (None, _ADD_X, 0, 0, 0),  # ip + tcp header length
        (None, _ST, 0, 0, 0),
        *total,
        (None, _LDX_MEM, 0, 0, 0),
        (None, _JGT_X, "accept", "drop", 0),  # any payload?
    ]
    return p


def bpf_program(port: int, shadow: bool = False, v6: bool = False
                ) -> list[tuple[int, int, int, int]]:
    """TCP, unfragmented, to ``port`` (and with ``shadow`` from it), carrying data or
    SYN/FIN/RST; one copy of each packet (``lo`` shows every packet twice: keep the
    incoming one; elsewhere answers are only seen outgoing). Without ``shadow`` the
    program is for one family's socket (``v6``: ETH_P_IPV6, else ETH_P_IP); with it, for
    an ETH_P_ALL socket, both families."""
    p: list[tuple[str | None, int, str | int, str | int, int]] = []
    if shadow:
        p += [(None, _LD_W_ABS, 0, 0, SKF_AD_PROTOCOL),
              (None, _JEQ_K, "4start", 0, ETH_P_IP),
              (None, _JEQ_K, "6start", "drop", ETH_P_IPV6)]
        p += _tcp_to_port(port, True, False, "4") + _tcp_to_port(port, True, True, "6")
    else:
        p += _tcp_to_port(port, False, v6, "6" if v6 else "4")
    p += [("accept", _RET_K, 0, 0, 0x40000), ("drop", _RET_K, 0, 0, 0)]
    return _assemble(p)


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    insns = b"".join(struct.pack("HBBI", *i) for i in program)
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _seq_lt(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


class Half:
    """One direction of a flow: in-order reassembly from the SYN's sequence number."""

    __slots__ = ("next", "ooo", "fin_seq")

    def __init__(self, isn: int) -> None:
        self.next = (isn + 1) & 0xFFFFFFFF
        self.ooo: dict[int, bytes] = {}
        self.fin_seq: int | None = None

    def segment(self, seq: int, flags: int, payload: bytes) -> list[bytes] | None:
        """The in-order data this segment completes; None: too much is missing."""
        out: list[bytes] = []
        if payload:
            if _seq_lt(seq, self.next):  # retransmission or overlap: keep the new part
                skip = (self.next - seq) & 0xFFFFFFFF
                if skip >= len(payload):
                    payload = b""
                else:
                    payload, seq = payload[skip:], self.next
            if payload:
                if seq == self.next:
                    out.append(payload)
                    self.next = (self.next + len(payload)) & 0xFFFFFFFF
                    while self.next in self.ooo:
                        data = self.ooo.pop(self.next)
                        out.append(data)
                        self.next = (self.next + len(data)) & 0xFFFFFFFF
                elif len(self.ooo) < MAX_OOO:
                    self.ooo[seq] = payload
                else:
                    return None
        if flags & FIN:
            self.fin_seq = (seq + len(payload)) & 0xFFFFFFFF
        return out

    @property
    def ended(self) -> bool:
        return self.fin_seq is not None and self.fin_seq == self.next


class Flow:
    """One mirrored connection: in-order client payload to ``sock`` (a socketpair end);
    with shadow, the target's answers summarised too."""

    def __init__(self, key: Key, isn: int, sock: socket.socket | None,
                 on_done: Callable[[Flow], None], shadow: bool = False,
                 dirty: set[Flow] | None = None,
                 matcher: RequestMatcher | None = None,
                 opener: Callable[[], socket.socket | None] | None = None) -> None:
        self.key = key
        self.client = Half(isn)
        self.server: Half | None = None
        self.exchanges: Exchanges | None = Exchanges() if shadow else None
        self.answers: list[Summary] = []
        self.sock = sock  # None: opened by `opener` at the first copied byte
        self.opener = opener
        self.matcher = matcher
        self.framer = RequestFramer() if matcher is not None else None
        self.copying = False  # filter: the current request matched
        self.raw_key: bytes | None = None  # the sniffer's fast lookup key (IPv4)
        self.pending = bytearray()
        self.done = False
        self._writer = False
        self._on_done = on_done
        self._dirty = dirty  # batch mode: flushed by the sniffer after each batch
        self.loop = asyncio.get_running_loop()

    @property
    def next(self) -> int:
        return self.client.next

    def segment(self, seq: int, flags: int, payload: bytes) -> None:
        """A client -> target segment."""
        if self.done:
            return
        if flags & RST:
            self.close("reset by the client")
            return
        data = self.client.segment(seq, flags, payload)
        if data is None:
            self.close("too many segments missing (packets lost under load)")
            return
        for chunk in data:
            if self.framer is not None:
                if not self._judge(chunk):
                    return
            else:
                self.pending += chunk
            if self.exchanges is not None:
                self.exchanges.client(chunk)
        if self.pending:
            if self._dirty is not None:
                self._dirty.add(self)
            else:
                self._flush()
        elif self.client.ended:
            self.close(None)

    def _judge(self, chunk: bytes) -> bool:
        """Filter mode: copy only the requests the filter matches. False: flow closed."""
        assert self.framer is not None and self.matcher is not None
        for ev in self.framer.feed(chunk):
            if isinstance(ev, RequestHead):
                self.copying = self.matcher.matches(ev)
                if self.copying:
                    self.pending += ev.raw
            elif isinstance(ev, (Body, RequestEnd, Upgraded, Tunnel)):
                if self.copying:
                    self.pending += ev.raw
            elif isinstance(ev, (H2Preface, Invalid)):
                log.debug("mirror of %s:%d: not HTTP/1, nothing for the filter to judge",
                          self.key[0], self.key[1])
                self.close(None)
                return False
        if self.framer.paused:  # an upgrade request: its answer is the target's business
            if not self.copying:
                self.close(None)
                return False
            for ev in self.framer.upgrade_accepted():  # copy the rest as it comes
                self.pending += ev.raw
        return True

    def answer(self, seq: int, flags: int, payload: bytes) -> None:
        """A target -> client segment (shadow only)."""
        if self.done or self.exchanges is None:
            return
        if flags & SYN:
            if self.server is None:
                self.server = Half(seq)
            return
        if self.server is None or self.exchanges.broken is not None:
            return
        data = self.server.segment(seq, flags, payload)
        if data is None:
            self.exchanges.broken = "too many answer segments missing"
            return
        for chunk in data:
            self.answers += self.exchanges.server(chunk)

    def _flush(self) -> None:
        if self.sock is None:
            if not self.pending:
                if self.client.ended:
                    self.close(None)
                return
            self.sock = self.opener() if self.opener is not None else None
            if self.sock is None:
                self.close(None)
                return
        while self.pending:
            try:
                n = self.sock.send(self.pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close("the local program stopped reading")
                return
            del self.pending[:n]
        if self.pending and not self._writer:
            if len(self.pending) > MAX_PENDING:
                self.close("the local program is too slow to keep up with the mirror")
                return
            self.loop.add_writer(self.sock.fileno(), self._flush)
            self._writer = True
        elif not self.pending and self._writer:
            self.loop.remove_writer(self.sock.fileno())
            self._writer = False
        if not self.pending and self.client.ended:
            self.close(None)

    def close(self, reason: str | None) -> None:
        if self.done:
            return
        self.done = True
        if reason:
            log.warning("mirror of %s:%d stopped: %s", self.key[0], self.key[1], reason)
        if self.sock is not None:
            if self._writer:
                self.loop.remove_writer(self.sock.fileno())
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.sock.close()
        self._on_done(self)


class Sniffer:
    """Watch one port; call ``new_flow(key) -> socket | None`` for every new connection.

    With ``shadow``, ``on_answers(key, summaries)`` receives the target's answers of a
    flow (at most once per batch per flow, in order)."""

    def __init__(self, port: int, new_flow: Callable[[Key], socket.socket | None],
                 shadow: bool = False,
                 on_answers: Callable[[Key, list[Summary]], None] | None = None,
                 batch_delay: float = BATCH_DELAY,
                 matcher: RequestMatcher | None = None) -> None:
        self.port = port
        self.matcher = matcher if matcher is not None and matcher.applies_to_port(port) \
            else None
        self.new_flow = new_flow
        self.shadow = shadow and on_answers is not None
        self.on_answers = on_answers
        self.batch_delay = batch_delay
        self.flows: dict[Key, Flow] = {}
        self._raw_flows: dict[bytes, Flow] = {}  # IPv4 flows by raw src, dst, sport
        self._port_raw = port.to_bytes(2, "big")
        self.dirty: set[Flow] = set()
        self.loop = asyncio.get_running_loop()
        # Only ETH_P_ALL sockets see outgoing packets (the target's answers); ETH_P_IP
        # and ETH_P_IPV6 ones are cheaper (no tap on everything the pod sends), so those
        # are the default: one per family.
        kinds = [(ETH_P_ALL, False)] if self.shadow else [(ETH_P_IP, False), (ETH_P_IPV6, True)]
        self.socks: list[socket.socket] = []
        try:
            for proto, v6 in kinds:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
                self.socks.append(sock)
                attach_filter(sock, bpf_program(port, self.shadow, v6))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
                sock.setblocking(False)
        except BaseException:
            for sock in self.socks:
                sock.close()
            raise
        self.sock = self.socks[0]
        self.packets = 0
        self.closed = False
        self._later: dict[int, asyncio.Handle] = {}
        for sock in self.socks:
            self.loop.add_reader(sock.fileno(), self._readable, sock)

    def _readable(self, sock: socket.socket) -> None:
        if self.batch_delay <= 0:
            self._drain(sock)
            return
        self.loop.remove_reader(sock.fileno())
        self._later[sock.fileno()] = self.loop.call_later(self.batch_delay, self._drain, sock)

    def _drain(self, sock: socket.socket) -> None:
        self._later.pop(sock.fileno(), None)
        if self.closed:
            return
        full = True
        recv = sock.recv
        for _ in range(BATCH_MAX):
            try:
                data = recv(262144)
            except (BlockingIOError, InterruptedError):
                full = False
                break
            except OSError as exc:
                log.error("mirror of port %d: packet socket failed: %s", self.port, exc)
                full = False
                break
            self.packets += 1
            try:
                self._packet(data)
            except Exception:
                log.exception("mirror of port %d: bad packet", self.port)
        self._end_batch()
        if self.batch_delay > 0:
            if full:
                self._later[sock.fileno()] = self.loop.call_soon(self._drain, sock)
            else:
                self.loop.add_reader(sock.fileno(), self._readable, sock)

    def _end_batch(self) -> None:
        dirty = list(self.dirty)  # flows hold this very set: empty it in place
        self.dirty.clear()
        for flow in dirty:
            if not flow.done:
                flow._flush()
        if self.shadow:
            for flow in list(self.flows.values()):
                self._report(flow)

    def _report(self, flow: Flow) -> None:
        if flow.answers and self.on_answers is not None:
            answers, flow.answers = flow.answers, []
            self.on_answers(flow.key, answers)

    def _packet(self, data: bytes) -> None:
        # The common case first: IPv4 without options, a segment of a known flow to our
        # port. Its flow is found by the raw (source, destination, source port) bytes,
        # without decoding addresses (the full path below costs about twice as much).
        if data[0] == 0x45 and len(data) >= 40 and data[22:24] == self._port_raw:
            flow = self._raw_flows.get(data[12:22])
            if flow is not None and not data[33] & SYN:
                total = (data[2] << 8) | data[3]
                flow.segment(int.from_bytes(data[24:28], "big"), data[33],
                             data[20 + (data[32] >> 4) * 4:total])
                return
        if len(data) < 20:
            return
        version = data[0] >> 4
        if version == 4:
            if data[9] != 6:
                return
            ihl = (data[0] & 0xF) * 4
            total = struct.unpack_from("!H", data, 2)[0]
            src, dst = data[12:16], data[16:20]
            ntop = socket.AF_INET
        elif version == 6:
            if len(data) < 40 or data[6] != 6:  # extension headers are not followed
                return
            ihl = 40
            total = 40 + struct.unpack_from("!H", data, 4)[0]
            src, dst = data[8:24], data[24:40]
            ntop = socket.AF_INET6
        else:
            return
        if total < len(data):
            data = data[:total]
        if len(data) < ihl + 20:
            return
        sport, dport, seq = struct.unpack_from("!HHI", data, ihl)
        off = (data[ihl + 12] >> 4) * 4
        flags = data[ihl + 13]
        payload = data[ihl + off:]
        if dport != self.port:
            if sport == self.port and self.shadow:
                key = (socket.inet_ntop(ntop, dst), dport, socket.inet_ntop(ntop, src), sport)
                flow = self.flows.get(key)
                if flow is not None:
                    flow.answer(seq, flags, payload)
            return
        key = (socket.inet_ntop(ntop, src), sport, socket.inet_ntop(ntop, dst), dport)
        flow = self.flows.get(key)
        if flags & SYN and not flags & ACK:
            if flow is not None and flow.next == (seq + 1) & 0xFFFFFFFF:
                return  # a retransmitted SYN: same connection
            if flow is not None:
                flow.close("reused before it ended")
            if len(self.flows) >= MAX_FLOWS:
                log.warning("mirror of port %d: too many open flows, not mirroring %s:%d",
                            self.port, key[0], sport)
                return
            dirty = self.dirty if self.batch_delay > 0 else None
            if self.matcher is not None:  # the copy opens at the first matching request
                flow = Flow(key, seq, None, self._flow_done, self.shadow, dirty,
                            self.matcher, lambda: self.new_flow(key))
            else:
                sock = self.new_flow(key)
                if sock is None:
                    return
                flow = Flow(key, seq, sock, self._flow_done, self.shadow, dirty)
            self.flows[key] = flow
            if version == 4 and ihl == 20:
                flow.raw_key = data[12:22]
                self._raw_flows[flow.raw_key] = flow
            return
        if flow is not None:
            flow.segment(seq, flags, payload)

    def _flow_done(self, flow: Flow) -> None:
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        if flow.raw_key is not None and self._raw_flows.get(flow.raw_key) is flow:
            del self._raw_flows[flow.raw_key]
        self.dirty.discard(flow)
        if self.shadow:
            self._report(flow)
            if self.on_answers is not None:
                self.on_answers(flow.key, [])  # [] = the flow ended

    def close(self) -> None:
        self.closed = True
        for handle in self._later.values():
            handle.cancel()
        for sock in self.socks:
            try:
                self.loop.remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
            sock.close()
        for flow in list(self.flows.values()):
            flow.close(None)
