"""Strict HTTP/1.x wire primitives for the request router: where a head ends, what it
says about framing, and where a body ends. Pure functions and tiny state machines over
``bytes``; no sockets.

Strictness is the point (RFC 9112 read the way h11 and Envoy read it): whatever a lenient
upstream could frame differently from us is ``Bad``, so a request can never reach an
upstream we did not route it to by a parsing trick. Every check depends only on the bytes,
never on how they were split into segments: a verdict on an incomplete head
(``check_partial``) is always one the complete head would get too.

Limits: a head (leading empty lines included) of at most ``MAX_HEAD_SIZE`` bytes, a
chunk-size line of at most ``MAX_CHUNK_LINE``, trailers of at most ``MAX_HEAD_SIZE``.
The regexes here are linear (no nested or overlapping repetitions).
"""

from __future__ import annotations

import re

__all__ = [
    "H2_PREFACE",
    "MAX_HEAD_SIZE",
    "Bad",
    "BodyReader",
    "RequestInfo",
    "classify",
    "parse_request_head",
    "parse_response_head",
]

MAX_HEAD_SIZE = 64 * 1024
MAX_CHUNK_LINE = 4096
MAX_METHOD = 32
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Methods whose prefix marks a stream as HTTP even when what follows is malformed
# (``GET\x00 /``): such a stream is refused, never passed through whole.
KNOWN_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PRI PROPFIND PROPPATCH MKCOL "
    b"COPY MOVE LOCK UNLOCK SEARCH REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PURGE LINK UNLINK QUERY".split()
)


class Bad(Exception):
    """The bytes cannot be framed unambiguously; the message says why."""


_T = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
_TARGET = rb"[\x21-\x7e\x80-\xff]+"
_REQUEST_HEAD = re.compile(
    rb"(" + _T + rb"+) (" + _TARGET + rb") HTTP/1\.([01])\r\n"
    rb"((?:" + _T + rb"+:" + _VALUE + rb"\r\n)*)\r\n"
)
_REQUEST_LINE = re.compile(_T + rb"+ " + _TARGET + rb" HTTP/1\.[01]")
_FIELD_LINE = re.compile(_T + rb"+:" + _VALUE)
_BAD_BYTE = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")
_BINARY = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_LOOKS_HTTP = re.compile(rb" HTTP/[0-9]")
_METHOD_START = re.compile(_T + rb"{1,%d}" % MAX_METHOD)
_ORIGIN_TARGET = re.compile(rb"/|[A-Za-z][A-Za-z0-9+.\-]*://")
_AUTHORITY = re.compile(rb"[^/?#@\s]+:[0-9]{1,5}")
_HEAD_END = re.compile(rb"\n\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?:[ \t][^\r\n]*)?\r?\n")
# Lines of a lower-cased head that matter for framing; ``(.*)\r?$`` stays linear.
_FRAMING_FIELD = re.compile(
    rb"^(content-length|transfer-encoding|host|connection|upgrade)[ \t]*:(.*?)\r?$", re.M
)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?\r\n")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_CONTENT_LENGTH = re.compile(rb"\ncontent-length[ \t]*:[ \t]*([0-9]{1,18})[ \t]*\r?\n")

# classify() verdicts
WAIT, HTTP, H2, NOT_HTTP = "wait", "http", "h2", "not-http"


def classify(buf: bytes | bytearray, start: int = 0) -> str:
    """What the first bytes of a client stream are: ``HTTP`` (HTTP/1 request, framed
    strictly from here on), ``H2`` (the HTTP/2 prior-knowledge preface), ``NOT_HTTP``
    (clearly something else: passed to the application whole) or ``WAIT``.

    HTTP means, after empty lines: a known method name followed by anything, or a first
    line with `` HTTP/<digit>`` in it. So ``GET\x00 /`` and ``G@T / HTTP/1.1`` are HTTP
    (and refused); TLS (``\x16\x03``), SSH, Redis or ``NICK me`` are not. The verdict
    depends on the bytes only, never on timing."""
    n = len(buf)
    s = start
    while buf.startswith(b"\r\n", s):
        s += 2
    if s >= n or (s + 1 == n and buf[s] == 0x0D):
        return WAIT
    head = bytes(buf[s : s + len(H2_PREFACE)])
    if H2_PREFACE.startswith(head):
        return H2 if len(head) == len(H2_PREFACE) else WAIT
    if head.startswith(H2_PREFACE):
        return H2
    m = _METHOD_START.match(buf, s)
    end = m.end() if m else s
    if end < n and bytes(buf[s:end]).upper() in KNOWN_METHODS:
        return HTTP
    nl = buf.find(b"\n", s, s + MAX_HEAD_SIZE)
    stop = n if nl == -1 else nl
    if stop > s and buf[stop - 1] == 0x0D:
        stop -= 1
    if _BINARY.search(buf, s, stop):
        return NOT_HTTP
    if nl == -1:
        return WAIT if n - s < MAX_HEAD_SIZE else NOT_HTTP
    return HTTP if _LOOKS_HTTP.search(buf, s, nl) else NOT_HTTP


class RequestInfo:
    """A parsed request head: what routing and framing need. ``fields`` is the raw
    header block (``name: value\\r\\n`` lines), parsed into ``headers`` on demand."""

    __slots__ = ("_headers", "fields", "length", "method", "raw", "target", "tunnel",
                 "version")

    def __init__(self, method: bytes, target: bytes, version: bytes, fields: bytes,
                 raw: bytes, length: int, tunnel: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.raw = raw
        self.length = length  # body: -1 chunked, else its Content-Length (0: none)
        self.tunnel = tunnel  # Upgrade or CONNECT: the answer may switch protocols
        self._headers: list[tuple[bytes, bytes]] | None = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """``(lower-cased name, value)`` per field, value stripped of SP/HTAB."""
        if self._headers is None:
            out = []
            for line in self.fields.split(b"\r\n")[:-1]:
                name, _, value = line.partition(b":")
                out.append((name.lower(), value.strip(b" \t")))
            self._headers = out
        return self._headers

    def __repr__(self) -> str:
        return f"RequestInfo({self.method!r} {self.target!r} HTTP/{self.version.decode()})"


def _list_values(values: list[bytes]) -> list[bytes]:
    return [p.strip(b" \t") for v in values for p in v.split(b",") if p.strip(b" \t")]


def parse_request_head(buf: bytes | bytearray, start: int, end: int) -> RequestInfo:
    """Parse the complete head ``buf[start:end]`` (``end`` just after the empty line).
    Raises ``Bad``."""
    raw = bytes(buf[start:end])
    s = 0
    while raw.startswith(b"\r\n", s):
        s += 2
    m = _REQUEST_HEAD.fullmatch(raw, s)
    if m is None:
        check_partial(raw, s, len(raw) - 2)  # names the first bad line
        raise Bad("malformed request head")
    method, target, minor, fields = m.groups()
    version = b"1.1" if minor == b"1" else b"1.0"
    length = 0
    tunnel = method == b"CONNECT"
    if tunnel:
        if _AUTHORITY.fullmatch(target) is None:
            raise Bad(f"CONNECT target {target[:80]!r} is not host:port")
    elif target[:1] == b"/":
        pass
    elif target == b"*":
        if method != b"OPTIONS":
            raise Bad("request target * is only for OPTIONS")
    elif _ORIGIN_TARGET.match(target) is None:
        raise Bad(f"bad request target {target[:80]!r}")
    if fields:
        low = fields.lower()
        # Cheap pre-checks: most requests carry none of the fields that need care.
        if (b"content-length" in low or b"transfer-encoding" in low or b"upgrade" in low
                or low.count(b"host") > 1):
            found: dict[bytes, list[bytes]] = {}
            for name, value in _FRAMING_FIELD.findall(b"\r\n" + low):
                found.setdefault(name, []).append(value)
            length, tunnel = _request_framing(found, version, tunnel)
    return RequestInfo(method, target, version, fields, raw, length, tunnel)


def _request_framing(found: dict[bytes, list[bytes]], version: bytes, tunnel: bool
                     ) -> tuple[int, bool]:
    if len(found.get(b"host", ())) > 1:
        raise Bad("more than one Host field")
    te = found.get(b"transfer-encoding")
    cl = found.get(b"content-length")
    length = 0
    if te is not None:
        if version == b"1.0":
            raise Bad("Transfer-Encoding in an HTTP/1.0 request")
        if cl is not None:
            raise Bad("both Content-Length and Transfer-Encoding")
        if _list_values(te) != [b"chunked"]:
            raise Bad(f"Transfer-Encoding {b', '.join(te)!r} is not just chunked")
        length = -1
    elif cl is not None:
        parts = [p.strip(b" \t") for v in cl for p in v.split(b",")]
        if not all(_DIGITS.fullmatch(p) for p in parts):
            raise Bad(f"bad Content-Length {b', '.join(cl)!r}")
        if len(set(map(int, parts))) != 1:
            raise Bad(f"conflicting Content-Length values {b', '.join(cl)!r}")
        length = int(parts[0])
    if not tunnel and b"upgrade" in found:
        tunnel = b"upgrade" in _list_values(found.get(b"connection", []))
    return length, tunnel


def check_partial(buf: bytes | bytearray, start: int, end: int, first: bool = True) -> int:
    """Check the complete lines of an incomplete head in ``buf[start:end]`` (``first``:
    the first of them is the request line) and the bytes of the incomplete last line.
    Returns where the incomplete line starts (resume there); raises ``Bad``."""
    pos = start
    while True:
        nl = buf.find(b"\r\n", pos, end)
        if nl == -1:
            break
        line = buf[pos:nl]
        regex = _REQUEST_LINE if first and pos == start else _FIELD_LINE
        if line and regex.fullmatch(line) is None:
            what = "request line" if regex is _REQUEST_LINE else "header field line"
            if line[:1] in (b" ", b"\t"):
                raise Bad("obsolete line folding (a header line starting with whitespace)")
            raise Bad(f"bad {what} {bytes(line[:80])!r}")
        pos = nl + 2
    tail_end = end - 1 if end > pos and buf[end - 1] == 0x0D else end
    bad = _BAD_BYTE.search(buf, pos, tail_end)
    if bad is not None:
        raise Bad(f"byte {bytes(buf[bad.start():bad.end()])!r} not allowed in a head")
    return pos


def find_head_end(buf: bytes | bytearray, start: int, scan: int) -> int:
    """End (exclusive) of the head starting at ``start``, searching from ``scan``; -1."""
    m = _HEAD_END.search(buf, max(start, scan))
    return -1 if m is None else m.end()


def parse_response_head(buf: bytes | bytearray, start: int, end: int, method: bytes
                        ) -> tuple[int, int, bool]:
    """Parse the complete response head ``buf[start:end]`` answering ``method``:
    ``(status, body length, close)``; the length is -1 for chunked, -2 for "until the
    server closes"; ``close``: the server closes the connection after this answer."""
    raw = buf[start:end] if start or end != len(buf) else buf
    m = _STATUS_LINE.match(raw)
    if m is None:
        raise Bad(f"bad status line {bytes(raw[:80])!r}")
    status = int(m.group(1))
    low = raw.lower()
    close = b"close" in low and b"close" in _list_values(_field(low, b"connection"))
    if raw[5:8] == b"1.0" and b"keep-alive" not in low:
        close = True
    if method == b"HEAD" or status in (204, 304) or status < 200:
        return status, 0, close
    if method == b"CONNECT" and status < 300:
        return status, 0, False
    if b"transfer-encoding" in low:
        te = _list_values(_field(low, b"transfer-encoding"))
        if te:
            chunked = te[-1] == b"chunked"
            return status, -1 if chunked else -2, close or not chunked
    count = low.count(b"content-length")
    if count == 1:  # the common case, in one search
        cl = _CONTENT_LENGTH.search(low)
        if cl is not None:
            return status, int(cl.group(1)), close
    if count:
        values = _field(low, b"content-length")
        parts = [p.strip(b" \t") for v in values for p in v.split(b",")]
        if parts:
            if not all(_DIGITS.fullmatch(p) for p in parts) or len(set(parts)) != 1:
                raise Bad(f"bad Content-Length in a response {b', '.join(values)!r}")
            return status, int(parts[0]), close
    return status, -2, True


def _field(low: bytes, name: bytes) -> list[bytes]:
    return [v for n, v in _FRAMING_FIELD.findall(low) if n == name]


# BodyReader states
FIXED, SIZE, DATA, CRLF, TRAILERS, UNTIL_CLOSE, END = range(7)


class BodyReader:
    """Where a body ends: ``advance(buf, pos)`` consumes what it can and returns the new
    position; ``done`` once the body (chunk framing and trailers included) is complete.
    Only framing is looked at: chunk data is skipped by its size, never scanned."""

    __slots__ = ("_pos_ok", "failed", "remaining", "state", "trailer")

    def __init__(self, length: int) -> None:
        self.failed = ""  # why the body is malformed, once it is (after the good bytes)
        self._pos_ok = 0
        self.remaining = 0
        self.trailer = 0
        if length == -1:
            self.state = SIZE
        elif length == -2:
            self.state = UNTIL_CLOSE
        else:
            self.state = FIXED if length else END
            self.remaining = length

    @property
    def done(self) -> bool:
        return self.state == END

    def advance(self, buf: bytes | bytearray, pos: int) -> int:
        """Consume from ``pos``; returns the new position. A framing error is reported
        after the bytes before it were consumed (``failed``), so what is forwarded does
        not depend on how the bytes were split."""
        if self.failed:
            raise Bad(self.failed)
        start = pos
        try:
            return self._advance(buf, pos)
        except Bad as exc:
            self.failed = str(exc)
            if self._pos_ok > start:
                return self._pos_ok
            raise

    def _advance(self, buf: bytes | bytearray, pos: int) -> int:
        n = len(buf)
        while pos < n:
            self._pos_ok = pos
            state = self.state
            if state == FIXED or state == DATA:
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = END if state == FIXED else CRLF
                    if state == FIXED:
                        return pos
            elif state == CRLF:
                if n - pos < 2:
                    if buf[pos] != 0x0D:
                        raise Bad("chunk data not followed by CRLF")
                    return pos
                if buf[pos] != 0x0D or buf[pos + 1] != 0x0A:
                    raise Bad("chunk data not followed by CRLF")
                pos += 2
                self.state = SIZE
            elif state == SIZE:
                m = _CHUNK_LINE.match(buf, pos, min(n, pos + MAX_CHUNK_LINE))
                if m is None:
                    nl = buf.find(b"\n", pos, pos + MAX_CHUNK_LINE)
                    if nl != -1 or n - pos >= MAX_CHUNK_LINE:
                        raise Bad(f"bad chunk-size line {bytes(buf[pos:pos + 40])!r}")
                    if _BAD_BYTE.search(buf, pos, n - 1 if buf[n - 1] == 0x0D else n):
                        raise Bad("bad byte in a chunk-size line")
                    return pos
                pos = m.end()
                self.remaining = int(m.group(1), 16)
                if self.remaining:
                    self.state = DATA
                else:
                    self.state = TRAILERS
                    self.trailer = 0
            elif state == TRAILERS:
                nl = buf.find(b"\r\n", pos, pos + MAX_HEAD_SIZE - self.trailer + 2)
                if nl == -1:
                    check_partial(buf, pos, n, first=False)
                    if n - pos + self.trailer > MAX_HEAD_SIZE:
                        raise Bad("trailer section too large")
                    return pos
                self.trailer += nl + 2 - pos
                if nl == pos:
                    self.state = END
                    return nl + 2
                if _FIELD_LINE.fullmatch(buf, pos, nl) is None:
                    raise Bad(f"bad trailer field line {bytes(buf[pos:nl][:80])!r}")
                pos = nl + 2
            elif state == UNTIL_CLOSE:
                return n
            else:
                return pos
        return pos
