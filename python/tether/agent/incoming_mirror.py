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
only IPv4 TCP segments *to* that port that are not our own outgoing copies
(``PACKET_OUTGOING``: on ``lo`` every packet is seen twice). Each flow (client address,
port) is reassembled in sequence order (out-of-order segments held, retransmissions
dropped) and written to a stream the orchestrator delivers to the local program.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("tether.agent.incoming")

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
SKF_AD_PKTTYPE = 0xFFFFF000 + 4
MAX_PENDING = 4 * 1024 * 1024  # bytes a slow developer may lag behind before we drop a flow
MAX_OOO = 256  # out-of-order segments held per flow
MAX_FLOWS = 4096

# tcp flags
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def bpf_program(port: int) -> list[tuple[int, int, int, int]]:
    """IPv4, TCP, unfragmented, destination port ``port``, not an outgoing copy."""
    return [
        (0x20, 0, 0, SKF_AD_PKTTYPE),  # ld pkttype
        (0x15, 8, 0, PACKET_OUTGOING),  # jeq OUTGOING -> drop
        (0x30, 0, 0, 9),  # ldb [9] (protocol)
        (0x15, 0, 6, 6),  # jeq TCP else drop
        (0x28, 0, 0, 6),  # ldh [6] (fragment offset)
        (0x45, 4, 0, 0x1FFF),  # jset -> drop
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)
        (0x48, 0, 0, 2),  # ldh [x+2] (tcp dport)
        (0x15, 0, 1, port),  # jeq port
        (0x06, 0, 0, 0x40000),  # accept
        (0x06, 0, 0, 0),  # drop
    ]


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    insns = b"".join(struct.pack("HBBI", *i) for i in program)
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _seq_lt(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


class Flow:
    """One mirrored connection: in-order payload to ``sock`` (a socketpair end)."""

    def __init__(self, key: tuple[str, int, str, int], isn: int, sock: socket.socket,
                 on_done: Callable[[Flow], None]) -> None:
        self.key = key
        self.next = (isn + 1) & 0xFFFFFFFF
        self.sock = sock
        self.ooo: dict[int, bytes] = {}
        self.fin_seq: int | None = None
        self.pending = bytearray()
        self.done = False
        self._writer = False
        self._on_done = on_done
        self.loop = asyncio.get_running_loop()

    def segment(self, seq: int, flags: int, payload: bytes) -> None:
        if self.done:
            return
        if flags & RST:
            self.close("reset by the client")
            return
        if payload:
            if _seq_lt(seq, self.next):  # retransmission or overlap: keep the new part
                skip = (self.next - seq) & 0xFFFFFFFF
                if skip >= len(payload):
                    payload = b""
                else:
                    payload, seq = payload[skip:], self.next
            if payload:
                if seq == self.next:
                    self._deliver(payload)
                    while self.next in self.ooo:
                        self._deliver(self.ooo.pop(self.next))
                elif len(self.ooo) < MAX_OOO:
                    self.ooo[seq] = payload
                else:
                    self.close("too many segments missing (packets lost under load)")
                    return
        if flags & FIN:
            self.fin_seq = (seq + len(payload)) & 0xFFFFFFFF
        if self.fin_seq is not None and self.fin_seq == self.next and not self.pending:
            self.close(None)

    def _deliver(self, data: bytes) -> None:
        self.next = (self.next + len(data)) & 0xFFFFFFFF
        self.pending += data
        self._flush()

    def _flush(self) -> None:
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
            if self.fin_seq is not None and self.fin_seq == self.next:
                self.close(None)

    def close(self, reason: str | None) -> None:
        if self.done:
            return
        self.done = True
        if reason:
            log.warning("mirror of %s:%d stopped: %s", self.key[0], self.key[1], reason)
        if self._writer:
            self.loop.remove_writer(self.sock.fileno())
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()
        self._on_done(self)


class Sniffer:
    """Watch one port; call ``new_flow(key) -> socket | None`` for every new connection."""

    def __init__(self, port: int,
                 new_flow: Callable[[tuple[str, int, str, int]], socket.socket | None]) -> None:
        self.port = port
        self.new_flow = new_flow
        self.flows: dict[tuple[str, int, str, int], Flow] = {}
        self.loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        try:
            attach_filter(sock, bpf_program(port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.packets = 0
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(256):
            try:
                data, addr = self.sock.recvfrom(262144)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("mirror of port %d: packet socket failed: %s", self.port, exc)
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            self.packets += 1
            try:
                self._packet(data)
            except Exception:
                log.exception("mirror of port %d: bad packet", self.port)

    def _packet(self, data: bytes) -> None:
        if len(data) < 20 or data[0] >> 4 != 4 or data[9] != 6:
            return
        ihl = (data[0] & 0xF) * 4
        total = struct.unpack_from("!H", data, 2)[0]
        if total < len(data):
            data = data[:total]
        if len(data) < ihl + 20:
            return
        sport, dport, seq = struct.unpack_from("!HHI", data, ihl)
        if dport != self.port:
            return
        off = (data[ihl + 12] >> 4) * 4
        flags = data[ihl + 13]
        payload = data[ihl + off:]
        src = socket.inet_ntoa(data[12:16])
        dst = socket.inet_ntoa(data[16:20])
        key = (src, sport, dst, dport)
        flow = self.flows.get(key)
        if flags & SYN and not flags & ACK:
            if flow is not None and flow.next == (seq + 1) & 0xFFFFFFFF:
                return  # a retransmitted SYN: same connection
            if flow is not None:
                flow.close("reused before it ended")
            if len(self.flows) >= MAX_FLOWS:
                log.warning("mirror of port %d: too many open flows, not mirroring %s:%d",
                            self.port, src, sport)
                return
            sock = self.new_flow(key)
            if sock is not None:
                self.flows[key] = Flow(key, seq, sock, self._flow_done)
            return
        if flow is not None:
            flow.segment(seq, flags, bytes(payload))

    def _flow_done(self, flow: Flow) -> None:
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()
        for flow in list(self.flows.values()):
            flow.close(None)
