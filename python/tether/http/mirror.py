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


@dataclass
class _Request:
    start: int  # stream offset of its first byte
    method: bytes


class Replay:
    """One mirrored client connection: which of its bytes a new copy connection needs."""

    def __init__(self) -> None:
        self._requests = RequestFramer()
        self._answers = ResponseFramer()
        self._pending: list[_Request] = []  # sent, not answered, oldest first
        self._held = bytearray()  # stream bytes from offset _base on
        self._base = 0
        self._fed = 0  # stream bytes fed
        self._framed = 0  # stream bytes the request framer has turned into events
        self._answered_here = 0  # answers on the current copy connection
        self.plain: str | None = None  # why the copy is a plain byte stream, if it is
        self.lost = 0  # requests given up (their connection closed unanswered)
        self.requests = 0  # requests seen

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    def client(self, data: bytes) -> None:
        """Client bytes, in order, as they are also written to the copy connection."""
        if self.plain is not None or not data:
            return
        self._fed += len(data)
        self._held += data
        for ev in self._requests.feed(data):
            if isinstance(ev, RequestHead):
                self._pending.append(_Request(self._framed, ev.method))
                self._answers.expect(ev.method)
                self.requests += 1
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
        elif len(self._held) > MAX_HELD:
            self._go_plain("too many unanswered bytes to hold for a replay")

    def answer(self, data: bytes) -> None:
        """The local program's answer bytes on the current copy connection."""
        if self.plain is not None or not data:
            return
        for ev in self._answers.feed(data):
            if isinstance(ev, ResponseEnd):
                if self._pending:
                    self._pending.pop(0)
                self._answered_here += 1
            elif isinstance(ev, (Invalid, Upgraded, Tunnel)):
                self._go_plain("the local program's answers are not plain HTTP/1")
                return
        self._trim()

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
