"""Sans-I/O HTTP/1.x message framing for the agent's request router.

Owns *where messages start and end* on a stolen connection, nothing else: bytes in,
events out, no sockets, no threads. Every event carries the exact wire bytes it covers
(``raw``), so a driver that forwards ``raw`` sends upstream byte-for-byte what the client
sent; concatenating the ``raw`` of all events gives back the input.

``RequestFramer`` splits the client -> server stream into requests (keep-alive and
pipelining included) so each request can be routed on its own. ``ResponseFramer`` splits
a server -> client stream into responses so answers from two upstreams can be put back
in request order.

Driving a ``RequestFramer`` (the agent's steal loop)::

    for event in framer.feed(data):
        RequestHead  -> decide the upstream (filters), forward event.raw, and call
                        response_framer.expect(head.method) on that upstream's framer
        Body         -> forward event.raw to the same upstream
        RequestEnd   -> the request is complete; if framer.paused, stop reading the
                        client until the upstream's response head is known:
                        101 (or 2xx to CONNECT) -> framer.upgrade_accepted()
                        anything else          -> framer.upgrade_declined()
                        and handle the events those calls return like feed()'s
        Upgraded     -> protocol switched: forward raw_rest, then splice both sockets
        H2Preface    -> HTTP/2 with prior knowledge: hand the connection (and raw) on
        Invalid      -> answer 400 (or just close); the framer parses no further

Limits: heads (and chunked trailers) larger than ``MAX_HEAD_SIZE`` and chunk-size lines
longer than ``MAX_CHUNK_LINE`` are Invalid. Head lines may end in CRLF or a bare LF (as
RFC 9112 allows); chunk framing must use CRLF exactly, and a bare CR anywhere in a head is
Invalid, so that we never find a message boundary where the upstream would not. Bytes the
framer holds while paused are not bounded by it: the driver applies backpressure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "H2_PREFACE",
    "MAX_CHUNK_LINE",
    "MAX_HEAD_SIZE",
    "Body",
    "Event",
    "H2Preface",
    "Invalid",
    "RequestEnd",
    "RequestFramer",
    "RequestHead",
    "ResponseEnd",
    "ResponseFramer",
    "ResponseHead",
    "Tunnel",
    "Upgraded",
    "header_lines",
    "request_path",
    "wants_upgrade",
]

MAX_HEAD_SIZE = 64 * 1024
MAX_CHUNK_LINE = 4096
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RequestHead:
    """Request line and header fields. ``version`` is e.g. ``b"1.1"``; header names
    are lower-cased, values stripped of surrounding whitespace; ``raw`` is verbatim
    (including any empty lines the client sent before the request line)."""

    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    raw: bytes


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status line and header fields, shaped like ``RequestHead``."""

    status: int
    version: bytes
    headers: Headers
    raw: bytes
    reason: bytes = b""


@dataclass(frozen=True, slots=True)
class Body:
    """A piece of message body exactly as on the wire (chunk framing and trailers
    included). One feed yields at most one ``Body`` per message, holding what arrived."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class RequestEnd:
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The connection switched protocols; ``raw_rest`` are the bytes already received
    after the last HTTP/1 message. They belong to the new protocol."""

    raw_rest: bytes

    @property
    def raw(self) -> bytes:
        return self.raw_rest


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Bytes fed after ``Upgraded`` or ``H2Preface``: not HTTP/1, pass them through."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class H2Preface:
    """The client opened with the HTTP/2 prior-knowledge preface; ``raw`` is everything
    received so far (the preface and what followed it)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class Invalid:
    """Malformed input; the framer parses nothing after it."""

    reason: str
    raw: bytes = b""


Event = (
    RequestHead
    | ResponseHead
    | Body
    | RequestEnd
    | ResponseEnd
    | Upgraded
    | Tunnel
    | H2Preface
    | Invalid
)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/(1\.[0-9])")
_STATUS_LINE = re.compile(
    rb"HTTP/(1\.[0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?"
)
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
_HEAD_END = re.compile(rb"\n\r?\n")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,19}")
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")

# Parser states.
_HEAD = "head"
_FIXED = "fixed"
_CHUNK_SIZE_LINE = "chunk-size"
_CHUNK_DATA = "chunk-data"
_CHUNK_CRLF = "chunk-crlf"
_TRAILERS = "trailers"
_UNTIL_CLOSE = "until-close"
_PAUSED = "paused"
_TUNNEL = "tunnel"
_DONE = "done"  # after Invalid or end of a close-delimited response


class _FramingError(Exception):
    pass


def _split_lines(head: bytes) -> list[bytes]:
    """Lines of a complete head (terminated by an empty line), without terminators."""
    lines = head.split(b"\n")
    # The head ends with an empty line, so the split leaves two empty tails.
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines[:-2]]
    for line in lines:
        if b"\r" in line or b"\x00" in line:
            raise _FramingError("bare CR or NUL in message head")
    return lines


def _parse_fields(lines: list[bytes]) -> Headers:
    headers: Headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise _FramingError("obsolete line folding in header field")
        m = _FIELD_LINE.fullmatch(line)
        if m is None:
            raise _FramingError(f"bad header field line {line[:80]!r}")
        headers.append((m.group(1).lower(), m.group(2)))
    return headers


def _values(headers: Headers, name: bytes) -> list[bytes]:
    """All comma-separated list elements of a header, lower-cased, empty ones dropped."""
    out: list[bytes] = []
    for n, v in headers:
        if n == name:
            out.extend(p.strip().lower() for p in v.split(b",") if p.strip())
    return out


def _content_length(headers: Headers) -> int | None:
    raw = [v for n, v in headers if n == b"content-length"]
    if not raw:
        return None
    parts = [p.strip() for v in raw for p in v.split(b",")]
    if not all(_CONTENT_LENGTH.fullmatch(p) for p in parts):
        raise _FramingError(f"bad Content-Length {b', '.join(raw)!r}")
    lengths = {int(p) for p in parts}
    if len(lengths) != 1:
        raise _FramingError(f"differing Content-Length values {b', '.join(raw)!r}")
    return lengths.pop()


def wants_upgrade(head: RequestHead) -> bool:
    """True if the server may switch this connection away from HTTP/1 after ``head``
    (``Connection: upgrade`` with ``Upgrade:``, or ``CONNECT``)."""
    if head.method == b"CONNECT":
        return True
    has_upgrade = any(n == b"upgrade" for n, _ in head.headers)
    return has_upgrade and b"upgrade" in _values(head.headers, b"connection")


def request_path(head: RequestHead) -> str:
    """The request target as the path filter sees it: path and query, as sent (not
    percent-decoded). Absolute-form targets (``http://host/p?q``) lose scheme and host;
    ``*`` and CONNECT's ``host:port`` are returned unchanged."""
    target = head.target.decode("utf-8", "replace")
    if target.startswith("/"):
        return target
    m = _ABSOLUTE_FORM.match(target)
    if m is None:
        return target
    rest = target[m.end() :]
    return rest if rest.startswith("/") else "/" + rest


def header_lines(head: RequestHead) -> list[str]:
    """``"name: value"`` per header field, name lower-cased: what header filters see.
    Bytes that are not UTF-8 become U+FFFD."""
    return [
        f"{n.decode('ascii')}: {v.decode('utf-8', 'replace')}" for n, v in head.headers
    ]


class _Framer:
    """Body framing and buffering shared by both directions."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed bytes in _buf
        self._scan = 0  # where the search for the end of the head resumes
        self._lead = 0  # empty lines already seen before the start line
        self._state = _HEAD
        self._remaining = 0
        self._trailer_size = 0
        self._body: list[bytes] = []
        self._events: list[Event] = []

    # -- driver side ---------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        if self._state == _DONE:
            return []
        if self._state == _TUNNEL:
            return [Tunnel(bytes(data))] if data else []
        self._buf += data
        return self._run()

    # -- subclass hooks ------------------------------------------------------------

    def _on_head(self, raw: bytes, lines: list[bytes]) -> None:
        raise NotImplementedError

    def _on_end(self) -> None:
        raise NotImplementedError

    def _try_start(self) -> bool:
        """Called in the head state before looking for a head; False = wait."""
        return True

    # -- machinery -----------------------------------------------------------------

    def _run(self) -> list[Event]:
        try:
            while self._step():
                pass
        except _FramingError as exc:
            self._flush_body()
            self._events.append(Invalid(str(exc)))
            self._state = _DONE
        self._flush_body()
        del self._buf[: self._pos]
        self._scan = max(0, self._scan - self._pos)
        self._pos = 0
        events, self._events = self._events, []
        return events

    def _emit(self, event: Event) -> None:
        self._flush_body()
        self._events.append(event)

    def _flush_body(self) -> None:
        if self._body:
            self._events.append(Body(b"".join(self._body)))
            self._body = []

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return data

    def _avail(self) -> int:
        return len(self._buf) - self._pos

    def _step(self) -> bool:
        """Advance by one unit; False when more input (or a driver call) is needed."""
        state = self._state
        if state == _HEAD:
            return self._avail() > 0 and self._try_start() and self._step_head()
        if state == _FIXED or state == _CHUNK_DATA:
            n = min(self._remaining, self._avail())
            if n == 0 and self._remaining:
                return False
            self._body.append(self._take(n))
            self._remaining -= n
            if self._remaining == 0:
                if state == _FIXED:
                    self._end()
                else:
                    self._state = _CHUNK_CRLF
            return True
        if state == _CHUNK_CRLF:
            if self._avail() < 2:
                return False
            if self._buf[self._pos : self._pos + 2] != b"\r\n":
                raise _FramingError("chunk data not followed by CRLF")
            self._body.append(self._take(2))
            self._state = _CHUNK_SIZE_LINE
            return True
        if state == _CHUNK_SIZE_LINE:
            line = self._line(MAX_CHUNK_LINE, "chunk-size line")
            if line is None:
                return False
            size, _, _ext = line[:-2].partition(b";")
            size = size.rstrip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size) or b"\r" in line[:-2]:
                raise _FramingError(f"bad chunk size line {line[:80]!r}")
            self._body.append(line)
            self._remaining = int(size, 16)
            self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            self._trailer_size = 0
            return True
        if state == _TRAILERS:
            line = self._line(MAX_HEAD_SIZE - self._trailer_size, "trailer section")
            if line is None:
                return False
            self._trailer_size += len(line)
            self._body.append(line)
            if line == b"\r\n":
                self._end()
            elif b"\r" in line[:-2] or b"\x00" in line:
                raise _FramingError("bare CR or NUL in trailer field")
            elif _FIELD_LINE.fullmatch(line[:-2]) is None:
                raise _FramingError(f"bad trailer field line {line[:80]!r}")
            return True
        if state == _UNTIL_CLOSE:
            if self._avail() == 0:
                return False
            self._body.append(self._take(self._avail()))
            return True
        return False  # paused, tunnel, done

    def _line(self, limit: int, what: str) -> bytes | None:
        """A CRLF-terminated line at the read position, consumed; None = incomplete."""
        nl = self._buf.find(b"\n", self._pos, self._pos + max(limit, 0))
        if nl == -1:
            if self._avail() >= limit:
                raise _FramingError(f"{what} too long")
            return None
        if nl == self._pos or self._buf[nl - 1] != 0x0D:
            raise _FramingError(f"{what} not terminated by CRLF")
        return self._take(nl + 1 - self._pos)

    def _step_head(self) -> bool:
        buf, pos = self._buf, self._pos
        # Empty lines before a start line are allowed (RFC 9112 2.2); they travel
        # with the head so the raw bytes stay complete.
        start = pos + self._lead
        while buf.startswith(b"\n", start) or buf.startswith(b"\r\n", start):
            start += 1 if buf[start] == 0x0A else 2
        self._lead = start - pos  # resume here on the next feed
        if start == len(buf) or (start + 1 == len(buf) and buf[start] == 0x0D):
            if len(buf) - pos > MAX_HEAD_SIZE:
                raise _FramingError(f"message head larger than {MAX_HEAD_SIZE} bytes")
            return False
        m = _HEAD_END.search(buf, max(start, self._scan), pos + MAX_HEAD_SIZE + 1)
        if m is None or m.end() - pos > MAX_HEAD_SIZE:
            if len(buf) - pos > MAX_HEAD_SIZE:
                raise _FramingError(f"message head larger than {MAX_HEAD_SIZE} bytes")
            self._check_start_line(start)
            self._scan = max(start, len(buf) - 2)
            return False
        end = m.end()
        raw = bytes(buf[pos:end])
        lines = _split_lines(bytes(buf[start:end]))
        self._pos = end
        self._scan = end
        self._lead = 0
        self._on_head(raw, lines)
        return True

    def _check_start_line(self, start: int) -> None:
        """Reject a bad start line as soon as it is complete, not after 64 KiB."""
        nl = self._buf.find(b"\n", start)
        if nl != -1:
            line = bytes(self._buf[start:nl]).removesuffix(b"\r")
            self._parse_start_line(line)

    def _parse_start_line(self, line: bytes) -> tuple[bytes, ...]:
        raise NotImplementedError

    def _body_plan(
        self, headers: Headers, version: bytes, *, request: bool
    ) -> tuple[str, int]:
        """The body framing (RFC 9112 6.3) as (state, length); checked before the head
        is emitted so a driver never routes a head whose framing is Invalid."""
        if any(n == b"transfer-encoding" for n, _ in headers):
            codings = _values(headers, b"transfer-encoding")
            if version == b"1.0":
                raise _FramingError("Transfer-Encoding in an HTTP/1.0 message")
            if request and any(n == b"content-length" for n, _ in headers):
                raise _FramingError("both Content-Length and Transfer-Encoding")
            if codings and codings[-1] == b"chunked" and codings.count(b"chunked") == 1:
                return _CHUNK_SIZE_LINE, 0
            if request:
                raise _FramingError(
                    f"Transfer-Encoding {codings!r} does not end in chunked"
                )
            return _UNTIL_CLOSE, 0
        length = _content_length(headers)
        if length is None:
            return (_HEAD, 0) if request else (_UNTIL_CLOSE, 0)
        return (_FIXED, length) if length else (_HEAD, 0)

    def _start_body(self, plan: tuple[str, int]) -> None:
        self._state, self._remaining = plan
        if self._state == _HEAD:
            self._end()

    def _end(self) -> None:
        self._state = _HEAD
        self._on_end()


class RequestFramer(_Framer):
    """Client -> server: requests as ``RequestHead``, ``Body``*, ``RequestEnd``.

    See the module docstring for the driver loop, including the pause after a request
    that may switch protocols (``paused``, ``upgrade_accepted``, ``upgrade_declined``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._first = True
        self._upgrade_pending = False  # the request being read may switch protocols
        self._accepted_early = False

    @property
    def paused(self) -> bool:
        """True between the end of an upgrade request and the driver's verdict."""
        return self._state == _PAUSED

    def upgrade_accepted(self) -> list[Event]:
        """The upstream answered 101 (or 2xx to CONNECT): everything after the request
        belongs to the new protocol. Returns ``[Upgraded(raw_rest)]``, or ``[]`` if the
        upgrade request's body is still arriving (``Upgraded`` then follows its end)."""
        if self._state == _PAUSED:
            self._state = _TUNNEL
            rest = bytes(self._buf[self._pos :])
            self._buf.clear()
            self._pos = 0
            return [Upgraded(rest)]
        if self._upgrade_pending:
            self._accepted_early = True
            return []
        raise RuntimeError("upgrade_accepted() without a pending upgrade request")

    def upgrade_declined(self) -> list[Event]:
        """The upstream answered without switching: parse the held bytes as HTTP/1."""
        if self._state != _PAUSED:
            if self._upgrade_pending:  # answered before the body ended: just go on
                self._upgrade_pending = False
                return []
            raise RuntimeError("upgrade_declined() while not paused")
        self._state = _HEAD
        return self._run()

    def feed_eof(self) -> list[Event]:
        """The client closed its side. Returns ``[Invalid]`` if a request was cut off."""
        if self._state in (_DONE, _TUNNEL, _PAUSED):
            return []
        if self._state == _HEAD and not self._buf[self._pos :].strip(b"\r\n"):
            return []
        self._state = _DONE
        return [Invalid("client closed the connection in the middle of a request")]

    def _try_start(self) -> bool:
        if not self._first:
            return True
        data = bytes(self._buf[self._pos : self._pos + len(H2_PREFACE)])
        if H2_PREFACE.startswith(data):
            if len(data) < len(H2_PREFACE):
                return False
            self._emit(H2Preface(self._take(self._avail())))
            self._state = _TUNNEL
            return False
        self._first = False
        return True

    def _parse_start_line(self, line: bytes) -> tuple[bytes, ...]:
        m = _REQUEST_LINE.fullmatch(line)
        if m is None:
            raise _FramingError(f"bad request line {line[:200]!r}")
        return m.groups()

    def _on_head(self, raw: bytes, lines: list[bytes]) -> None:
        method, target, version = self._parse_start_line(lines[0])
        headers = _parse_fields(lines[1:])
        plan = self._body_plan(headers, version, request=True)
        head = RequestHead(method, target, version, headers, raw)
        self._emit(head)
        self._upgrade_pending = wants_upgrade(head)
        self._accepted_early = False
        self._start_body(plan)

    def _on_end(self) -> None:
        self._emit(RequestEnd())
        if self._upgrade_pending:
            self._upgrade_pending = False
            self._state = _PAUSED
            if self._accepted_early:
                self._events.extend(self.upgrade_accepted())


class ResponseFramer(_Framer):
    """Server -> client: responses as ``ResponseHead``, ``Body``*, ``ResponseEnd``.

    Call ``expect(method)`` for every request sent to this server, in order: a
    response's framing depends on its request (HEAD, CONNECT). Informational (1xx)
    heads other than 101 are followed by the final response of the same request.
    """

    def __init__(self) -> None:
        super().__init__()
        self._methods: list[bytes] = []

    def expect(self, method: bytes) -> None:
        self._methods.append(method.upper())

    @property
    def pending(self) -> int:
        """Requests whose response has not ended yet."""
        return len(self._methods) + (self._state not in (_HEAD, _TUNNEL, _DONE))

    def feed_eof(self) -> list[Event]:
        """The server closed its side: ends a close-delimited body; ``[Invalid]`` if a
        response was cut off elsewhere."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            return [ResponseEnd()]
        if self._state in (_DONE, _TUNNEL):
            return []
        if self._state == _HEAD and self._avail() == 0:
            return []
        self._state = _DONE
        return [Invalid("server closed the connection in the middle of a response")]

    def _parse_start_line(self, line: bytes) -> tuple[bytes, ...]:
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise _FramingError(f"bad status line {line[:200]!r}")
        return m.group(1), m.group(2), m.group(3) or b""

    def _on_head(self, raw: bytes, lines: list[bytes]) -> None:
        version, status_text, reason = self._parse_start_line(lines[0])
        status = int(status_text)
        headers = _parse_fields(lines[1:])
        if not self._methods:
            raise _FramingError(f"response {status} without a request")
        method = self._methods[0]
        no_body = method == b"HEAD" or status in (204, 304) or status < 200
        plan = (
            (_HEAD, 0) if no_body else self._body_plan(headers, version, request=False)
        )
        self._emit(ResponseHead(status, version, headers, raw, reason))
        if status == 101 or (method == b"CONNECT" and 200 <= status < 300):
            self._methods.pop(0)
            self._state = _TUNNEL
            self._emit(Upgraded(self._take(self._avail())))
            return
        if status < 200:
            return  # informational: the final response follows
        self._methods.pop(0)
        self._start_body(plan)

    def _on_end(self) -> None:
        self._emit(ResponseEnd())
