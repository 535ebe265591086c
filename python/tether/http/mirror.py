"""The mirrored copy of one client connection, as the local program must receive it.

Sans-I/O. The orchestrator writes the client's bytes (the copy the agent sniffed) to a
connection to the local program and reads the program's answers only to drop them. A
program may close that connection whenever it likes (Werkzeug's development server
closes after every answer); the client's later requests on its own connection, still
open with the target, must reach the program anyway. So :class:`Replay` frames the copy
per request and the answers per response: what was not answered yet when the program
closed is sent again, from the first byte of the oldest unanswered request, on a new
connection. A connection that closes without answering anything gives up its oldest
request (so a program that refuses one request cannot loop forever).

Anything that is not plain HTTP/1 (HTTP/2, an upgrade, bytes that do not frame) turns
the copy into a plain byte stream: no replay, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from .framing import (
    Body,
    H2Preface,
    Invalid,
    RequestEnd,
    RequestFramer,
    RequestHead,
    ResponseEnd,
    ResponseFramer,
    Tunnel,
    Upgraded,
)

MAX_HELD = 8 * 1024 * 1024  # unanswered bytes kept for a replay; beyond: plain stream
MAX_FAST_HEAD = 64 * 1024  # a head longer than this is the full framer's business

_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM"
                         b"NOPQRSTUVWXYZ")


@dataclass
class _Request:
    start: int  # stream offset of its first byte
    method: bytes


def _simple_length(lower_head: bytes) -> int | None:
    """The body length of a message head (lower-cased) with at most one Content-Length
    and no Transfer-Encoding or Upgrade; None when the full framer must judge it."""
    if b"\ntransfer-encoding:" in lower_head or b"\nupgrade:" in lower_head:
        return None
    i = lower_head.find(b"\ncontent-length:")
    if i < 0:
        return 0
    if lower_head.find(b"\ncontent-length:", i + 1) >= 0:
        return None
    j = lower_head.find(b"\r", i + 16)
    value = lower_head[i + 16:j if j >= 0 else len(lower_head)].strip()
    return int(value) if value.isdigit() and len(value) < 19 else None


class Replay:
    """One mirrored client connection: which of its bytes a new copy connection needs.

    Two speeds: plain GETs and Content-Length bodies (nearly all traffic) are framed by a
    few ``bytes.find`` calls per message; anything else (chunked, upgrades, 1xx, HEAD,
    odd heads) hands the rest of that side of the connection to the full framers of
    :mod:`tether.http.framing`, starting at the message boundary reached so far. Both give
    the same boundaries (a property test checks it); the fast one costs a few us."""

    def __init__(self, fast: bool = True) -> None:
        self._requests: RequestFramer | None = None if fast else RequestFramer()
        self._answers: ResponseFramer | None = None if fast else ResponseFramer()
        self._pending: list[_Request] = []  # sent, not answered, oldest first
        self._held = bytearray()  # stream bytes from offset _base on
        self._base = 0
        self._fed = 0  # stream bytes fed
        self._framed = 0  # stream bytes turned into whole request heads and bodies
        self._body_left = 0  # fast requests: body bytes of the last request still to come
        self._resp = bytearray()  # fast answers: bytes not yet framed
        self._resp_left = 0  # fast answers: body bytes of the current answer still to come
        self._resp_open = False  # fast answers: inside an answer's body
        self._answered_here = 0  # answers on the current copy connection
        self.plain: str | None = None  # why the copy is a plain byte stream, if it is
        self.lost = 0  # requests given up (their connection closed unanswered)
        self.requests = 0  # requests seen

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    # ---- requests ----
    def client(self, data: bytes) -> None:
        """Client bytes, in order, as they are also written to the copy connection."""
        if self.plain is not None or not data:
            return
        self._fed += len(data)
        self._held += data
        if self._requests is None:
            self._client_fast()
        else:
            self._client_full(data)
        if self.plain is None and len(self._held) > MAX_HELD:
            self._go_plain("too many unanswered bytes to hold for a replay")

    def _request(self, method: bytes) -> None:
        self._pending.append(_Request(self._framed, method))
        if self._answers is not None:
            self._answers.expect(method)
        self.requests += 1

    def _client_fast(self) -> None:
        held = self._held
        while True:
            if self._body_left:
                take = min(self._fed - self._framed, self._body_left)
                self._framed += take
                self._body_left -= take
                if self._body_left:
                    return
            rel = self._framed - self._base
            end = held.find(b"\r\n\r\n", rel)
            if end < 0:
                if len(held) - rel > MAX_FAST_HEAD:
                    self._client_to_full()
                return
            head = bytes(held[rel:end + 2])
            sp = head.find(b" ")
            method = head[:sp]
            length = _simple_length(head.lower()) if sp > 0 else None
            if length is None or not _TOKEN_CHARS.issuperset(method) or method in (
                    b"PRI", b"CONNECT"):
                self._client_to_full()
                return
            self._request(method)
            self._framed += end + 4 - rel
            self._body_left = length

    def _client_to_full(self) -> None:
        """Hand the requests from the current boundary on to the full framer."""
        self._requests = RequestFramer()
        self._client_full(bytes(self._held[self._framed - self._base:]))

    def _client_full(self, data: bytes) -> None:
        assert self._requests is not None
        for ev in self._requests.feed(data):
            if isinstance(ev, RequestHead):
                self._request(ev.method)
                self._framed += len(ev.raw)
            elif isinstance(ev, (Body, RequestEnd)):
                self._framed += len(ev.raw)
            elif isinstance(ev, (Invalid, H2Preface, Upgraded, Tunnel)):
                self._go_plain("not plain HTTP/1 requests")
                return
        if self._requests.paused:
            self._go_plain("the client asked to switch protocols")
        elif self._framed > self._fed:
            self._go_plain("request framing lost track of the stream")

    # ---- answers ----
    def answer(self, data: bytes) -> None:
        """The local program's answer bytes on the current copy connection."""
        if self.plain is not None or not data:
            return
        if self._answers is None:
            self._resp += data
            self._answer_fast()
        else:
            self._answer_full(data)
        self._trim()

    def _answered(self) -> None:
        if self._pending:
            self._pending.pop(0)
        self._answered_here += 1

    def _answer_fast(self) -> None:
        resp = self._resp
        pos = 0
        while True:
            if self._resp_open:
                take = min(len(resp) - pos, self._resp_left)
                pos += take
                self._resp_left -= take
                if self._resp_left:
                    break
                self._resp_open = False
                self._answered()
            end = resp.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(resp) - pos > MAX_FAST_HEAD:
                    self._answers_to_full(pos)
                    return
                break
            head = bytes(resp[pos:end + 2])
            status = head[9:12]
            length = _simple_length(head.lower())
            method = self._pending[0].method if self._pending else b""
            if (not head.startswith(b"HTTP/1.") or not status.isdigit() or status[0] < 50
                    or length is None or method in (b"HEAD", b"CONNECT", b"")
                    or status in (b"204", b"304")
                    or (length == 0 and b"\ncontent-length:" not in head.lower())):
                self._answers_to_full(pos)  # 1xx, no length (until close), HEAD, ...
                return
            pos = end + 4
            self._resp_left = length
            self._resp_open = True
        del resp[:pos]

    def _answers_to_full(self, pos: int) -> None:
        """Hand the answers from the current boundary on to the full framer."""
        self._answers = ResponseFramer()
        for req in self._pending:
            self._answers.expect(req.method)
        rest = bytes(self._resp[pos:])
        self._resp = bytearray()
        self._answer_full(rest)

    def _answer_full(self, data: bytes) -> None:
        assert self._answers is not None
        for ev in self._answers.feed(data):
            if isinstance(ev, ResponseEnd):
                self._answered()
            elif isinstance(ev, (Invalid, Upgraded, Tunnel)):
                self._go_plain("the local program's answers are not plain HTTP/1")
                return

    # ---- the copy connection ends ----
    def closed(self) -> bool:
        """The copy connection ended. True when a new one is needed at once (requests
        wait for an answer); otherwise the next client bytes open it."""
        if self.plain is not None:
            return False
        if self._answered_here == 0 and self._pending:
            self._pending.pop(0)  # closed without a single answer: give that one up
            self.lost += 1
            self._trim()
        self._answered_here = 0
        self._resp = bytearray()
        self._resp_open = False
        self._resp_left = 0
        if self._answers is not None:
            self._answers = ResponseFramer()
            for req in self._pending:
                self._answers.expect(req.method)
        return bool(self._pending)

    def backlog(self) -> bytes:
        """What a new copy connection starts with: everything from the oldest unanswered
        request on (or the start of a request still arriving)."""
        if self.plain is not None:
            return b""
        start = self._pending[0].start if self._pending else self._framed
        return bytes(self._held[start - self._base:])

    def _trim(self) -> None:
        keep = self._pending[0].start if self._pending else self._framed
        if keep > self._base:
            del self._held[:keep - self._base]
            self._base = keep

    def _go_plain(self, why: str) -> None:
        self.plain = why
        self._held = bytearray()
        self._pending = []
        self._resp = bytearray()
