"""Sans-I/O core of the filtered-steal router: one client connection, two upstreams.

Events in (methods, each returning the commands to carry out, in order)::

    client_data(data)  client_eof()  first_byte_timeout()
    opened(side, ok)   upstream_data(side, data)  upstream_eof(side)
    writable(side, ok)                               # transport flow control

Commands out (``Send``, ``Shutdown``, ``Close``, ``Open``, ``Reading``, ``Routed``,
``Refused``, ``Handoff``, ``Done``): see their docstrings. ``side`` is ``"client"``,
``"app"`` (the target's own application) or ``"dev"`` (the developer's program).

What it does with the bytes:

* The first bytes decide (``wire.classify``): HTTP/1 is routed request by request; the
  HTTP/2 preface is handed off (``Handoff``: the h2c router takes the connection); bytes
  that are clearly not HTTP, or silence until ``first_byte_timeout`` (server-first
  protocols), make the connection a tunnel to the application, untouched.
* Each request head is parsed strictly (``wire``) and judged by the filter: matching
  requests go to ``dev``, the others to ``app``. Bytes are forwarded as they come,
  bodies by their framing only. Pipelined requests are forwarded at once; answers are
  framed per upstream and sent to the client in request order (an answer that is not
  next waits, and its upstream stops being read once ``HOLD_LIMIT`` bytes wait).
* A head that cannot be framed unambiguously (``wire.Bad``) is answered ``400`` after
  the answers to the requests before it, and the connection is closed: nothing of it
  reaches an upstream. The same bytes get the same answer however they are segmented.
* ``Upgrade`` and ``CONNECT``: after such a request the client is not read further until
  its upstream answers; ``101`` (2xx to CONNECT) turns the connection into a tunnel to
  that upstream, anything else resumes HTTP/1.
* An upstream that closes or breaks with answers owed ends the client connection after
  the answers already complete (as a server that closes would); the developer's side
  failing to open sends the request to the application instead; the application failing
  to open answers ``502``.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple, Protocol

from tether.http import wire
from tether.http.wire import Bad, BodyReader

__all__ = [
    "APP",
    "BAD_GATEWAY",
    "BAD_REQUEST",
    "CLIENT",
    "DEV",
    "Close",
    "Done",
    "Handoff",
    "Open",
    "Reading",
    "Refused",
    "Routed",
    "RouterCore",
    "Send",
    "Shutdown",
]

CLIENT, APP, DEV = "client", "app", "dev"
HOLD_LIMIT = 256 * 1024  # bytes waiting on one side before that side is not read
MAX_PIPELINE = 64  # requests whose answer is owed before the client is not read

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    b"Connection: close\r\n\r\nBad Request\n"
)
BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    b"Connection: close\r\n\r\nBad Gateway\n"
)


class Send(NamedTuple):
    """Write ``data`` to ``side``."""

    side: str
    data: bytes


class Shutdown(NamedTuple):
    """No more bytes for ``side``: half-close its connection (SHUT_WR)."""

    side: str


class Close(NamedTuple):
    """Drop the connection to upstream ``side`` (a later request may open a new one)."""

    side: str


class Open(NamedTuple):
    """Connect upstream ``side``; answer with ``opened(side, ok)``."""

    side: str


class Reading(NamedTuple):
    """Start (``on``) or stop reading from ``side``: backpressure."""

    side: str
    on: bool


class Routed(NamedTuple):
    """The verdict on one request: it goes to ``side``."""

    side: str
    method: bytes
    target: bytes


class Refused(NamedTuple):
    """A request that cannot be framed is answered 400; ``reason`` for the log."""

    reason: str


class Handoff(NamedTuple):
    """HTTP/2 prior knowledge: another router takes the connection, with ``data``."""

    data: bytes


class Done(NamedTuple):
    """The connection is finished: close every side."""


class _Matcher(Protocol):
    def matches(self, head: wire.RequestInfo) -> bool: ...


# client-side states
_DETECT, _HEAD, _BODY, _PAUSED, _OPENING, _TUNNEL, _OVER = range(7)

# order entry kinds
_REQ, _BAD, _FAIL = range(3)


class _Entry:
    __slots__ = ("accepted", "kind", "method", "side", "tunnel")

    def __init__(self, kind: int, side: str = "", method: bytes = b"",
                 tunnel: bool = False) -> None:
        self.kind = kind
        self.side = side
        self.method = method
        self.tunnel = tunnel  # may switch protocols: the client waits for the verdict
        self.accepted = False


class _Up:
    """One upstream connection's answers."""

    __slots__ = ("body", "buf", "closing", "eof", "owed", "reading", "tunnel", "writable")

    def __init__(self) -> None:
        self.buf: bytes | bytearray = b""
        self.body: BodyReader | None = None  # inside a response body
        self.owed = 0  # requests sent whose answer has not ended
        self.eof = False
        self.closing = False  # announced it closes after the current answer
        self.tunnel = False
        self.reading = True
        self.writable = True


def _append(buf: bytes | bytearray, data: bytes) -> bytes | bytearray:
    """``buf + data``, in place once bytes accumulate (no quadratic copying); while
    nothing waits, ``data`` itself, so a whole message is forwarded without a copy."""
    if not buf:
        return data
    if type(buf) is bytes:
        buf = bytearray(buf)
    buf += data
    return buf


class RouterCore:
    """Route one client connection (see the module docstring)."""

    def __init__(self, matcher: _Matcher) -> None:
        self.matcher = matcher
        self.routed = {APP: 0, DEV: 0}
        self._out: list[tuple[object, ...]] = []
        self._buf: bytes | bytearray = b""  # client bytes not consumed yet
        self._scan = 0  # where the search for the end of a head resumes
        self._checked = 0  # how far an incomplete head was checked
        self._state = _DETECT
        self._cur = APP  # the side the current request's body goes to
        self._body: BodyReader | None = None
        self._pending: wire.RequestInfo | None = None  # waits for its upstream
        self._pending_side = APP
        self._order: deque[_Entry] = deque()
        self._ups: dict[str, _Up] = {}
        self._opening: str | None = None
        self._client_eof = False
        self._client_reading = True
        self._client_writable = True
        self._tunnel_side = APP
        self._resume = False  # an upgrade was declined: parse the held client bytes
        self._blocked = 0  # upstreams whose transport is not writable
        self._batch_side: str | None = None
        self._batch: list[bytes] = []
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    @property
    def detecting(self) -> bool:
        """Still deciding what the stream is (HTTP/1, HTTP/2, something else)."""
        return self._state == _DETECT and not self._done

    @property
    def started(self) -> bool:
        """Some client bytes arrived."""
        return self._state != _DETECT or bool(self._buf)

    # ---- events ---------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[tuple[object, ...]]:
        if self._done or not data:
            return []
        if self._state == _TUNNEL and self._opening is None:
            return [Send(self._tunnel_side, data)]
        if self._state == _HEAD and not self._buf and data[-4:] == b"\r\n\r\n":
            fast = self._one_request(data)
            if fast is not None:
                return fast
        self._buf = _append(self._buf, data)
        self._run_client()
        return self._flush()

    def _one_request(self, data: bytes) -> list[tuple[object, ...]] | None:
        """The common case in one step: ``data`` is exactly one request without a body,
        for an upstream that is open and reading. None: take the general path (nothing
        was changed)."""
        n = len(data)
        if (n > wire.MAX_HEAD_SIZE or data.find(b"\r\n\r\n") != n - 4
                or not self._client_reading or len(self._order) >= MAX_PIPELINE - 1):
            return None
        try:
            head = wire.parse_request_head(data, 0, n)
        except Bad:
            return None
        if head.length or head.tunnel:
            return None
        side = DEV if self.matcher.matches(head) else APP
        up = self._ups.get(side)
        if up is None or up.eof or up.closing or self._opening is not None:
            self._buf = data  # the general path takes it from here (matching again)
            self._run_client()
            return self._flush()
        up.owed += 1
        self.routed[side] += 1
        self._order.append(_Entry(_REQ, side, head.method))
        self._cur = side
        return [Routed(side, head.method, head.target), Send(side, data)]

    def client_eof(self) -> list[tuple[object, ...]]:
        if self._done or self._client_eof:
            return []
        self._client_eof = True
        state = self._state
        if state == _TUNNEL:
            if self._opening is None:
                self._cmd(Shutdown(self._tunnel_side))
                up = self._ups.get(self._tunnel_side)
                if up is None or up.eof:
                    self._finish()
        elif state == _DETECT:
            if self._buf:  # a few bytes, then the end: not HTTP after all
                self._start_tunnel(APP)
            else:
                self._finish()
        elif state in (_HEAD, _BODY):
            self._client_ended()
        return self._flush()

    def first_byte_timeout(self) -> list[tuple[object, ...]]:
        """Nothing arrived in time: a server-first protocol, not HTTP."""
        if self._state == _DETECT and not self._buf and not self._done:
            self._start_tunnel(APP)
        return self._flush()

    def opened(self, side: str, ok: bool) -> list[tuple[object, ...]]:
        if self._done or self._opening != side:
            return []
        self._opening = None
        if self._state == _TUNNEL:
            if not ok:  # the application is not there: nothing to do
                self._finish()
            else:
                if self._buf:
                    self._send(side, self._buf)
                    self._buf = b""
                if self._client_eof:
                    self._cmd(Shutdown(side))
            return self._flush()
        if not ok:
            self._forget(side)
            if side == DEV:  # the developer stopped listening: the application answers
                self._pending_side = APP
                if self._open_or_route(APP):
                    self._run_client()
            else:
                self._pending = None
                self._order.append(_Entry(_FAIL))
                self._state = _OVER
                self._run_responses()
            return self._flush()
        self._route(side)
        self._run_client()
        return self._flush()

    def upstream_data(self, side: str, data: bytes) -> list[tuple[object, ...]]:
        if self._done or not data:
            return []
        up = self._ups.get(side)
        if up is None:
            return []
        if up.tunnel:
            return [Send(CLIENT, data)]
        if not up.buf and up.body is None:
            fast = self._one_answer(up, side, data)
            if fast is not None:
                return fast
        up.buf = _append(up.buf, data)
        if self._order and self._order[0].side == side:
            self._run_responses()
        self._update_reading()
        return self._flush()

    def _one_answer(self, up: _Up, side: str, data: bytes) -> list[tuple[object, ...]] | None:
        """The common case in one step: ``data`` is exactly the whole answer owed next,
        and nothing else waits. None: take the general path (nothing was changed)."""
        order = self._order
        if (not order or not up.reading or not self._client_reading or self._resume
                or self._client_eof or (self._state != _HEAD and self._state != _BODY)):
            return None
        entry = order[0]
        if entry.side != side or entry.kind != _REQ or entry.tunnel or (
                len(order) > 1 and order[1].side != side):
            return None
        end = wire.find_head_end(data, 0, 0)
        if end == -1:
            return None
        try:
            status, length, close = wire.parse_response_head(data, 0, end, entry.method)
        except Bad:
            return None
        if status < 200 or end + length != len(data) or length < 0:
            return None
        order.popleft()
        up.owed -= 1
        up.closing = close
        return [Send(CLIENT, data)]

    def upstream_eof(self, side: str) -> list[tuple[object, ...]]:
        if self._done:
            return []
        up = self._ups.get(side)
        if up is None or up.eof:
            return []
        up.eof = True
        if up.tunnel:
            self._cmd(Shutdown(CLIENT))
            if self._client_eof:
                self._finish()
        elif up.owed == 0 and not up.buf and self._opening != side:
            # An idle upstream closed (keep-alive timeout): the next request reopens it.
            self._forget(side)
            self._cmd(Close(side))
            self._run_responses()
        else:
            self._run_responses()
        return self._flush()

    def writable(self, side: str, ok: bool) -> list[tuple[object, ...]]:
        if side == CLIENT:
            self._client_writable = ok
        else:
            up = self._ups.get(side)
            if up is None:
                return []
            if up.writable != ok:
                self._blocked += -1 if ok else 1
            up.writable = ok
        self._update_reading()
        return self._flush()

    # ---- client side ----------------------------------------------------------------

    def _run_client(self) -> None:
        try:
            while True:
                buf = self._buf
                state = self._state
                if state == _HEAD:
                    if not buf:
                        break
                    end = wire.find_head_end(buf, 0, self._scan)
                    if end == -1:
                        self._check_incomplete(buf)
                        break
                    if end > wire.MAX_HEAD_SIZE:
                        raise Bad(f"request head larger than {wire.MAX_HEAD_SIZE} bytes")
                    if buf[end - 2] != 0x0D or buf[end - 3] != 0x0A:
                        raise Bad("head lines not terminated by CRLF")
                    head = wire.parse_request_head(buf, 0, end)
                    self._buf = buf[end:]
                    self._scan = self._checked = 0
                    self._pending = head
                    if not self._open_or_route(DEV if self.matcher.matches(head) else APP):
                        break
                elif state == _BODY:
                    body = self._body
                    assert body is not None
                    if buf:
                        new = body.advance(buf, 0)
                        if new:
                            self._send(self._cur, buf[:new])
                            self._buf = buf[new:]
                        if body.failed:
                            raise Bad(body.failed)
                    if not body.done:
                        break
                    self._request_end()
                elif state == _DETECT:
                    verdict = wire.classify(buf)
                    if verdict == wire.WAIT:
                        if len(buf) > wire.MAX_HEAD_SIZE:
                            raise Bad("only empty lines")
                        break
                    if verdict == wire.HTTP:
                        self._state = _HEAD
                    elif verdict == wire.H2:
                        self._cmd(Handoff(bytes(buf)))
                        self._buf = b""
                        self._finish()
                        return
                    else:
                        self._start_tunnel(APP)
                        return
                else:  # paused for a verdict or an upstream, tunnel, over
                    break
        except Bad as exc:
            self._refuse(str(exc))
            return
        if self._client_eof and self._state in (_HEAD, _BODY):
            self._client_ended()
        self._update_reading()

    def _client_ended(self) -> None:
        """The client closed its side while (between or inside) requests."""
        if self._state == _BODY:  # cut off mid-body: the upstream must not wait
            self._cmd(Shutdown(self._cur))
            self._order.append(_Entry(_BAD))
        elif bytes(self._buf).strip(b"\r\n"):  # cut off inside a head
            self._cmd(Refused("the client closed the connection inside a request head"))
            self._order.append(_Entry(_BAD))
        self._state = _OVER
        self._buf = b""
        self._run_responses()

    def _check_incomplete(self, buf: bytes | bytearray) -> None:
        if len(buf) > wire.MAX_HEAD_SIZE:
            raise Bad(f"request head larger than {wire.MAX_HEAD_SIZE} bytes")
        start = 0
        while buf.startswith(b"\r\n", start):
            start += 2
        resume = max(start, self._checked)
        self._checked = wire.check_partial(buf, resume, len(buf), first=resume == start)
        self._scan = max(0, len(buf) - 3)

    def _open_or_route(self, side: str) -> bool:
        """Send the pending head to ``side``, opening a connection first if needed.
        False when the client must wait for that upstream."""
        self._pending_side = side
        up = self._ups.get(side)
        if up is not None and not (up.eof or up.closing):
            self._route(side)
            return True
        self._state = _OPENING
        if up is not None:
            if up.owed:  # it still answers: open the new connection after that
                return False
            self._forget(side)
            self._cmd(Close(side))
        self._ups[side] = _Up()
        self._opening = side
        self._cmd(Open(side))
        return False

    def _route(self, side: str) -> None:
        head = self._pending
        assert head is not None
        self._pending = None
        up = self._ups[side]
        up.owed += 1
        self.routed[side] += 1
        # A verdict does not split the writes of pipelined requests to one side.
        if self._batch_side != side:
            self._flush_batch()
        self._out.append(Routed(side, head.method, head.target))
        entry = _Entry(_REQ, side, head.method, head.tunnel)
        self._order.append(entry)
        self._cur = side
        self._send(side, head.raw)
        if head.length:
            self._body = BodyReader(head.length)
            self._state = _BODY
        else:
            self._request_end()

    def _request_end(self) -> None:
        self._body = None
        entry = self._order[-1]
        if not entry.tunnel:
            self._state = _HEAD
        elif entry.accepted:  # the answer came before the request ended
            self._enter_tunnel(entry.side)
        else:
            self._state = _PAUSED

    def _refuse(self, reason: str) -> None:
        self._cmd(Refused(reason))
        if self._state == _BODY:  # cut off mid-body: the upstream must not wait
            self._cmd(Shutdown(self._cur))
        self._state = _OVER
        self._order.append(_Entry(_BAD))
        self._buf = b""
        self._run_responses()

    def _start_tunnel(self, side: str) -> None:
        """The whole connection goes to ``side`` untouched (not HTTP)."""
        self._state = _TUNNEL
        self._tunnel_side = side
        up = self._ups[side] = _Up()
        up.tunnel = True
        self._opening = side
        self._cmd(Open(side))

    def _enter_tunnel(self, side: str) -> None:
        """An upgrade was accepted: bytes after the request belong to the new protocol."""
        self._state = _TUNNEL
        self._tunnel_side = side
        if self._buf:
            self._send(side, self._buf)
            self._buf = b""
        for other in [s for s in self._ups if s != side]:
            self._forget(other)
            self._cmd(Close(other))
        if self._client_eof:
            self._cmd(Shutdown(side))

    # ---- upstream side --------------------------------------------------------------

    def _run_responses(self) -> None:
        order = self._order
        while order:
            entry = order[0]
            if entry.kind != _REQ:
                self._send(CLIENT, BAD_REQUEST if entry.kind == _BAD else BAD_GATEWAY)
                self._finish()
                return
            up = self._ups.get(entry.side)
            if up is None:
                self._finish()
                return
            if not self._advance(up, entry) or up.tunnel:
                return
            order.popleft()
            up.owed -= 1
        if self._resume:  # an upgrade was declined: go on with the held requests
            self._resume = False
            self._run_client()
            return
        if self._state == _OPENING and self._opening is None and self._pending is not None:
            # A request waits for an upstream that said it closes to finish answering.
            up = self._ups.get(self._pending_side)
            if up is None or up.owed == 0:
                if self._open_or_route(self._pending_side):
                    self._run_client()
                return
        if self._client_eof and self._state == _OVER and not self._done:
            self._cmd(Shutdown(CLIENT))
            self._finish()

    def _advance(self, up: _Up, entry: _Entry) -> bool:
        """Forward what ``up`` has of the answer to ``entry``; True once it ended."""
        try:
            while True:
                buf = up.buf
                body = up.body
                if body is None:
                    end = wire.find_head_end(buf, 0, 0)
                    if end == -1:
                        if len(buf) > wire.MAX_HEAD_SIZE:
                            raise Bad("response head too large")
                        if up.eof:
                            raise Bad("the upstream closed before answering")
                        return False
                    status, length, close = wire.parse_response_head(
                        buf, 0, end, entry.method)
                    if entry.tunnel and (status == 101 or (
                            entry.method == b"CONNECT" and 200 <= status < 300)):
                        self._send(CLIENT, buf)
                        up.buf = b""
                        up.tunnel = True
                        entry.accepted = True
                        if self._state == _PAUSED:
                            self._enter_tunnel(entry.side)
                        if up.eof:
                            self._cmd(Shutdown(CLIENT))
                        return True
                    if status < 200:  # informational: the final answer follows
                        self._send(CLIENT, buf[:end])
                        up.buf = buf[end:]
                        continue
                    if entry.tunnel:  # declined: HTTP/1 goes on
                        entry.tunnel = False
                        if self._state == _PAUSED:
                            self._state = _HEAD
                            self._resume = True
                    up.closing = close
                    if 0 <= length <= len(buf) - end:  # the whole answer is here
                        new = end + length
                        self._send(CLIENT, buf[:new])
                        up.buf = buf[new:]
                        return True
                    body = up.body = BodyReader(length)
                    new = body.advance(buf, end)
                else:
                    new = body.advance(buf, 0) if buf else 0
                if new:
                    self._send(CLIENT, buf[:new])
                    up.buf = buf[new:]
                if body.done:
                    up.body = None
                    return True
                if up.eof:
                    if body.state != wire.UNTIL_CLOSE:
                        raise Bad("the upstream closed in the middle of an answer")
                    # A close-delimited answer: only closing the client can end it.
                    self._cmd(Shutdown(CLIENT))
                    self._finish()
                    return False
                return False
        except Bad:
            # A broken or missing answer: the client gets what was complete, then a close.
            self._finish()
            return False

    # ---- output ---------------------------------------------------------------------

    def _send(self, side: str, data: bytes | bytearray) -> None:
        """Queue ``data`` for ``side``; consecutive writes to one side become one."""
        if self._batch_side != side:
            self._flush_batch()
            self._batch_side = side
        self._batch.append(data)

    def _flush_batch(self) -> None:
        batch = self._batch
        if batch:
            side = self._batch_side
            assert side is not None
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            self._out.append(Send(side, bytes(data) if type(data) is not bytes else data))
            self._batch = []
        self._batch_side = None

    def _cmd(self, command: tuple[object, ...]) -> None:
        self._flush_batch()
        self._out.append(command)

    def _flush(self) -> list[tuple[object, ...]]:
        self._flush_batch()
        out, self._out = self._out, []
        return out

    def _update_reading(self) -> None:
        if self._done:
            return
        if self._state == _TUNNEL:
            up = self._ups.get(self._tunnel_side)
            want = up is None or up.writable
        else:
            want = (not self._blocked and len(self._buf) < HOLD_LIMIT
                    and len(self._order) < MAX_PIPELINE)
        if want != self._client_reading:
            self._client_reading = want
            self._cmd(Reading(CLIENT, want))
        for side, up in self._ups.items():
            w = self._client_writable and (up.tunnel or len(up.buf) < HOLD_LIMIT)
            if w != up.reading:
                up.reading = w
                self._cmd(Reading(side, w))

    def _forget(self, side: str) -> None:
        up = self._ups.pop(side)
        if not up.writable:
            self._blocked -= 1

    def _finish(self) -> None:
        if not self._done:
            self._cmd(Done())
            self._done = True
