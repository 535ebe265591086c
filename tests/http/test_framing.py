"""Request and response framing: where each message starts and ends on a connection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tether.http.framing import (
    H2_PREFACE,
    MAX_HEAD_SIZE,
    Body,
    Event,
    H2Preface,
    Invalid,
    RequestEnd,
    RequestFramer,
    RequestHead,
    ResponseEnd,
    ResponseFramer,
    ResponseHead,
    Tunnel,
    Upgraded,
    header_lines,
    request_path,
    wants_upgrade,
)


def raw_of(event: Event) -> bytes:
    return getattr(event, "raw", b"")


def merged(events: list[Event]) -> list[Event]:
    """Consecutive Body events joined: how the split of the input shows up, nothing more."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].raw + e.raw)
        elif (
            isinstance(e, Tunnel)
            and out
            and isinstance(out[-1], (Tunnel, Upgraded, H2Preface))
        ):
            prev = out[-1]
            out[-1] = type(prev)(raw_of(prev) + e.raw)  # type: ignore[call-arg]
        else:
            out.append(e)
    return out


def summary(events: list[Event]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in merged(events):
        if isinstance(e, RequestHead):
            out.append(("head", e.method, e.target))
        elif isinstance(e, ResponseHead):
            out.append(("head", e.status))
        elif isinstance(e, Body):
            out.append(("body", e.raw))
        elif isinstance(e, (RequestEnd, ResponseEnd)):
            out.append(("end",))
        elif isinstance(e, Upgraded):
            out.append(("upgraded", e.raw_rest))
        elif isinstance(e, H2Preface):
            out.append(("h2", e.raw))
        elif isinstance(e, Invalid):
            out.append(("invalid",))
        else:
            out.append(("tunnel", e.raw))
    return out


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Event]:
    framer = RequestFramer()
    events: list[Event] = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += framer.feed(data[last:cut])
        last = cut
    return events


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST /video?id=1&title=x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"POST /up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"4;name=value;x\r\nWiki\r\n5 ;ext\r\npedia\r\nC\r\n in\r\n\r\nchunk\r\n"
    b"0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
)
CHUNKED_BODY = CHUNKED.split(b"\r\n\r\n", 1)[1]

VALID_REQUESTS = {
    "one GET": (GET, [("head", b"GET", b"/"), ("end",)]),
    "pipelined GET, POST, GET": (
        GET + POST + GET,
        [
            ("head", b"GET", b"/"),
            ("end",),
            ("head", b"POST", b"/video?id=1&title=x"),
            ("body", b"hello"),
            ("end",),
            ("head", b"GET", b"/"),
            ("end",),
        ],
    ),
    "chunked with extensions and trailers, then keep-alive": (
        CHUNKED + GET,
        [
            ("head", b"POST", b"/up"),
            ("body", CHUNKED_BODY),
            ("end",),
            ("head", b"GET", b"/"),
            ("end",),
        ],
    ),
    "empty chunked body": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        [("head", b"POST", b"/"), ("body", b"0\r\n\r\n"), ("end",)],
    ),
    "Content-Length 0": (
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n" + GET,
        [("head", b"POST", b"/"), ("end",), ("head", b"GET", b"/"), ("end",)],
    ),
    "repeated equal Content-Length": (
        b"PUT / HTTP/1.1\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\nabc",
        [("head", b"PUT", b"/"), ("body", b"abc"), ("end",)],
    ),
    "empty lines before the request line": (
        b"\r\n\r\n" + GET,
        [("head", b"GET", b"/"), ("end",)],
    ),
    "bare LF line endings in the head": (
        b"GET /lf HTTP/1.1\nHost: a\n\nGET / HTTP/1.0\r\n\r\n",
        [("head", b"GET", b"/lf"), ("end",), ("head", b"GET", b"/"), ("end",)],
    ),
    "Expect: 100-continue is just a header": (
        b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
        [("head", b"POST", b"/e"), ("body", b"hi"), ("end",)],
    ),
    "absolute-form target": (
        b"GET http://svc:8080/x?y=1 HTTP/1.1\r\n\r\n",
        [("head", b"GET", b"http://svc:8080/x?y=1"), ("end",)],
    ),
    "OPTIONS *": (
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        [("head", b"OPTIONS", b"*"), ("end",)],
    ),
    "a POST that starts like the h2 preface": (
        b"POST / HTTP/1.1\r\n\r\n",
        [("head", b"POST", b"/"), ("end",)],
    ),
}


@pytest.mark.parametrize(
    "data, expected", VALID_REQUESTS.values(), ids=VALID_REQUESTS.keys()
)
def test_requests_are_split_exactly(
    data: bytes, expected: list[tuple[object, ...]]
) -> None:
    events = RequestFramer().feed(data)
    assert summary(events) == expected
    assert b"".join(map(raw_of, events)) == data


@pytest.mark.parametrize(
    "data, expected", VALID_REQUESTS.values(), ids=VALID_REQUESTS.keys()
)
def test_byte_by_byte_feeding_gives_the_same_events(
    data: bytes, expected: list[tuple[object, ...]]
) -> None:
    framer = RequestFramer()
    events = [e for i in range(len(data)) for e in framer.feed(data[i : i + 1])]
    assert merged(events) == merged(RequestFramer().feed(data))
    assert b"".join(map(raw_of, events)) == data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(GET + CHUNKED + POST + GET)), max_size=12))
def test_any_split_of_a_pipelined_stream_gives_the_same_events(cuts: list[int]) -> None:
    data = GET + CHUNKED + POST + GET
    events = feed_in_pieces(data, cuts)
    assert merged(events) == merged(RequestFramer().feed(data))
    assert b"".join(map(raw_of, events)) == data


def test_head_fields_are_parsed() -> None:
    (head, _end) = RequestFramer().feed(
        b"GET /p?q=1 HTTP/1.1\r\nHost: svc\r\nX-User:  vfarcic \r\nEmpty:\r\n\r\n"
    )
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.version) == (b"GET", b"/p?q=1", b"1.1")
    assert head.headers == [(b"host", b"svc"), (b"x-user", b"vfarcic"), (b"empty", b"")]
    assert header_lines(head) == ["host: svc", "x-user: vfarcic", "empty: "]
    assert request_path(head) == "/p?q=1"


@pytest.mark.parametrize(
    "target, path",
    [
        (b"/", "/"),
        (b"/?user=vfarcic", "/?user=vfarcic"),
        (b"/a%20b?x=%2F", "/a%20b?x=%2F"),
        (b"http://svc:8080/x?y=1", "/x?y=1"),
        (b"http://svc:8080", "/"),
        (b"http://svc?y=1", "/?y=1"),
        (b"*", "*"),
        (b"svc:443", "svc:443"),
    ],
)
def test_request_path_is_path_and_query_as_sent(target: bytes, path: str) -> None:
    assert request_path(RequestHead(b"GET", target, b"1.1", [], b"")) == path


def test_large_body_is_streamed_not_buffered() -> None:
    framer = RequestFramer()
    size, piece = 10 * 1024 * 1024, b"x" * 65536
    events = framer.feed(b"POST /big HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size)
    assert summary(events) == [("head", b"POST", b"/big")]
    for _ in range(size // len(piece) - 1):
        assert framer.feed(piece) == [Body(piece)]
    assert framer.feed(piece + GET) == [
        Body(piece),
        RequestEnd(),
        *RequestFramer().feed(GET),
    ]


def test_large_chunk_is_streamed() -> None:
    framer = RequestFramer()
    framer.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert framer.feed(b"100000\r\n" + b"y" * 1000) == [
        Body(b"100000\r\n" + b"y" * 1000)
    ]
    assert framer.feed(b"y" * 1000) == [Body(b"y" * 1000)]


def long_head(size: int, end: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\nX-Big: " + b"a" * size + end


INVALID_REQUESTS = {
    "HTTP/0.9 request line": b"GET /\r\n\r\n",
    "two spaces in request line": b"GET  / HTTP/1.1\r\n\r\n",
    "HTTP/2.0 version on HTTP/1": b"GET / HTTP/2.0\r\n\r\n",
    "bad method": b"G(T / HTTP/1.1\r\n\r\n",
    "bad request line, head not yet complete": b"NOT HTTP AT ALL\r\nHost: a\r\n",
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "differing Content-Length in one field": b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
    "differing Content-Length fields": (
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
    ),
    "negative Content-Length": b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "non-numeric Content-Length": b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
    "Transfer-Encoding not ending in chunked": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
    ),
    "Transfer-Encoding in HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "oversized head, never terminated": long_head(MAX_HEAD_SIZE, b""),
    "oversized head, terminated too late": long_head(MAX_HEAD_SIZE, b"\r\n\r\n"),
    "bad chunk size": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "empty chunk size": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
    "chunk size overflow": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n"
    ),
    "chunk size line with bare LF": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\nWiki\r\n"
    ),
    "chunk data longer than its size": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWikipedia\r\n"
    ),
    "bad trailer field": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon\r\n\r\n"
    ),
    "obsolete line folding": b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "bare CR in a header": b"GET / HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n",
    "h2 preface followed by garbage": b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
}


@pytest.mark.parametrize("data", INVALID_REQUESTS.values(), ids=INVALID_REQUESTS.keys())
def test_malformed_requests_are_invalid_and_stop_parsing(data: bytes) -> None:
    framer = RequestFramer()
    events = framer.feed(data)
    assert isinstance(events[-1], Invalid), events
    assert events[-1].reason
    assert not any(isinstance(e, (RequestEnd, Invalid)) for e in events[:-1])
    # A head is only handed out (and routed) if its own framing is sound: what goes
    # wrong after it is in the body.
    body_error = data.startswith(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert body_error == any(isinstance(e, RequestHead) for e in events)
    assert framer.feed(GET) == []


@pytest.mark.parametrize("data", INVALID_REQUESTS.values(), ids=INVALID_REQUESTS.keys())
def test_malformed_requests_are_invalid_byte_by_byte(data: bytes) -> None:
    framer = RequestFramer()
    events = [e for i in range(len(data)) for e in framer.feed(data[i : i + 1])]
    assert summary(events)[-1] == ("invalid",)


def test_invalid_comes_after_the_requests_before_it() -> None:
    events = RequestFramer().feed(GET + b"BAD\r\n\r\n")
    assert summary(events) == [("head", b"GET", b"/"), ("end",), ("invalid",)]


def test_client_closing_mid_request_is_reported() -> None:
    framer = RequestFramer()
    framer.feed(POST[:-2])
    assert isinstance(framer.feed_eof()[0], Invalid)
    idle = RequestFramer()
    idle.feed(GET + b"\r\n")
    assert idle.feed_eof() == []


WEBSOCKET = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_upgrade_request_pauses_until_accepted() -> None:
    framer = RequestFramer()
    events = framer.feed(WEBSOCKET + b"\x81\x05early")
    assert summary(events) == [("head", b"GET", b"/ws"), ("end",)]
    assert wants_upgrade(events[0])  # type: ignore[arg-type]
    assert framer.paused
    assert framer.feed(b"more") == []
    assert framer.upgrade_accepted() == [Upgraded(b"\x81\x05earlymore")]
    assert not framer.paused
    assert framer.feed(b"frames") == [Tunnel(b"frames")]


def test_declined_upgrade_resumes_http() -> None:
    framer = RequestFramer()
    assert len(framer.feed(WEBSOCKET + GET[:5])) == 2
    assert framer.feed(GET[5:]) == []
    assert summary(framer.upgrade_declined()) == [("head", b"GET", b"/"), ("end",)]
    assert not framer.paused
    assert summary(framer.feed(GET)) == [("head", b"GET", b"/"), ("end",)]


def test_upgrade_accepted_before_the_request_body_ended() -> None:
    framer = RequestFramer()
    framer.feed(
        b"POST /up HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 4\r\n\r\nab"
    )
    assert framer.upgrade_accepted() == []
    assert framer.feed(b"cdREST") == [Body(b"cd"), RequestEnd(), Upgraded(b"REST")]


def test_connect_pauses_like_an_upgrade() -> None:
    framer = RequestFramer()
    events = framer.feed(b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n\x16\x03")
    assert summary(events) == [("head", b"CONNECT", b"svc:443"), ("end",)]
    assert framer.upgrade_accepted() == [Upgraded(b"\x16\x03")]


@pytest.mark.parametrize(
    "headers",
    [
        b"Upgrade: websocket\r\n",
        b"Connection: upgrade\r\n",
        b"Connection: close\r\nUpgrade: x\r\n",
    ],
)
def test_no_pause_without_both_upgrade_headers(headers: bytes) -> None:
    framer = RequestFramer()
    framer.feed(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert not framer.paused
    with pytest.raises(RuntimeError):
        framer.upgrade_accepted()


def test_h2_prior_knowledge_preface() -> None:
    settings_frame = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    framer = RequestFramer()
    assert framer.feed(H2_PREFACE + settings_frame) == [
        H2Preface(H2_PREFACE + settings_frame)
    ]
    assert framer.feed(b"x") == [Tunnel(b"x")]
    bytewise = RequestFramer()
    events = [e for b in H2_PREFACE for e in bytewise.feed(bytes([b]))]
    assert events == [H2Preface(H2_PREFACE)]


def test_h2_preface_only_at_connection_start() -> None:
    events = RequestFramer().feed(GET + H2_PREFACE)
    assert summary(events)[-1] == ("invalid",)


# -- responses -------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

RESPONSES = {
    "Content-Length": ([b"GET"], OK, [("head", 200), ("body", b"ok"), ("end",)]),
    "pipelined": (
        [b"GET", b"GET"],
        OK + OK,
        [("head", 200), ("body", b"ok"), ("end",)] * 2,
    ),
    "HEAD has no body despite Content-Length": (
        [b"HEAD", b"GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + OK,
        [("head", 200), ("end",), ("head", 200), ("body", b"ok"), ("end",)],
    ),
    "204 has no body": (
        [b"DELETE", b"GET"],
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n" + OK,
        [("head", 204), ("end",), ("head", 200), ("body", b"ok"), ("end",)],
    ),
    "304 has no body": (
        [b"GET", b"GET"],
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n" + OK,
        [("head", 304), ("end",), ("head", 200), ("body", b"ok"), ("end",)],
    ),
    "100 Continue then the final response": (
        [b"POST"],
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
        [("head", 100), ("head", 200), ("body", b"ok"), ("end",)],
    ),
    "103 Early Hints then the final response": (
        [b"GET"],
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK,
        [("head", 103), ("head", 200), ("body", b"ok"), ("end",)],
    ),
    "101 Switching Protocols": (
        [b"GET"],
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        [("head", 101), ("upgraded", b"\x81\x00")],
    ),
    "2xx to CONNECT opens a tunnel": (
        [b"CONNECT"],
        b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03",
        [("head", 200), ("upgraded", b"\x16\x03")],
    ),
    "chunked": (
        [b"GET"],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT: 1\r\n\r\n",
        [("head", 200), ("body", b"2\r\nok\r\n0\r\nT: 1\r\n\r\n"), ("end",)],
    ),
    "Transfer-Encoding wins over Content-Length": (
        [b"GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        [("head", 200), ("body", b"0\r\n\r\n"), ("end",)],
    ),
    "no reason phrase": (
        [b"GET"],
        b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n",
        [("head", 404), ("end",)],
    ),
    "response without a request": ([], OK, [("invalid",)]),
    "differing Content-Length": (
        [b"GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        [("invalid",)],
    ),
    "bad status line": ([b"GET"], b"HTTP/1.1 2000 OK\r\n\r\n", [("invalid",)]),
}


@pytest.mark.parametrize(
    "methods, data, expected", RESPONSES.values(), ids=RESPONSES.keys()
)
def test_responses_end_where_their_request_says(
    methods: list[bytes], data: bytes, expected: list[tuple[object, ...]]
) -> None:
    framer = ResponseFramer()
    for m in methods:
        framer.expect(m)
    events = framer.feed(data)
    assert summary(events) == expected
    if expected[-1] != ("invalid",):
        assert b"".join(map(raw_of, events)) == data
    bytewise = ResponseFramer()
    for m in methods:
        bytewise.expect(m)
    events = [e for i in range(len(data)) for e in bytewise.feed(data[i : i + 1])]
    assert summary(events) == expected


def test_close_delimited_response_ends_at_eof() -> None:
    framer = ResponseFramer()
    framer.expect(b"GET")
    events = framer.feed(b"HTTP/1.0 200 OK\r\n\r\nuntil")
    assert summary(events) == [("head", 200), ("body", b"until")]
    assert framer.feed(b" close") == [Body(b" close")]
    assert framer.pending == 1
    assert framer.feed_eof() == [ResponseEnd()]
    assert framer.pending == 0


def test_response_cut_short_is_invalid() -> None:
    framer = ResponseFramer()
    framer.expect(b"GET")
    framer.feed(OK[:-1])
    assert isinstance(framer.feed_eof()[0], Invalid)


def test_response_head_fields() -> None:
    framer = ResponseFramer()
    framer.expect(b"head")  # method case does not matter
    (head, end) = framer.feed(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 7\r\n\r\n")
    assert isinstance(head, ResponseHead) and isinstance(end, ResponseEnd)
    assert (head.status, head.version, head.reason) == (200, b"1.1", b"Fine Thanks")
    assert head.headers == [(b"content-length", b"7")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                GET,
                POST,
                CHUNKED,
                b"\r\n",
                b"\r",
                b"\n",
                b"0\r\n",
                b"Content-Length: 1\r\n",
            ]
        )
        | st.binary(max_size=20),
        max_size=8,
    ),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_arbitrary_input_never_raises_and_accounts_for_every_byte(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    events = feed_in_pieces(data, [c for c in cuts if c <= len(data)])
    consumed = b"".join(map(raw_of, events))
    assert data.startswith(consumed)
    if events and isinstance(events[-1], (Invalid, H2Preface)):
        return
    assert merged(events) == merged(RequestFramer().feed(data))


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200), st.lists(st.sampled_from([b"GET", b"HEAD"]), max_size=4)
)
def test_arbitrary_responses_never_raise(data: bytes, methods: list[bytes]) -> None:
    framer = ResponseFramer()
    for m in methods:
        framer.expect(m)
    events = framer.feed(data) + framer.feed_eof()
    assert data.startswith(b"".join(map(raw_of, events)))


def test_slow_clients_cost_linear_time() -> None:
    import time

    data = b"\r\n" * 10000 + long_head(40000, b"\r\n\r\n")
    framer = RequestFramer()
    t0 = time.perf_counter()
    events = [e for i in range(len(data)) for e in framer.feed(data[i : i + 1])]
    assert time.perf_counter() - t0 < 5
    assert summary(events) == [("head", b"GET", b"/"), ("end",)]


def test_bytes_after_a_101_are_tunnelled() -> None:
    framer = ResponseFramer()
    framer.expect(b"GET")
    framer.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert framer.feed(b"\x81\x00") == [Tunnel(b"\x81\x00")]
    assert framer.feed_eof() == []
