"""The router's wire primitives (tether.http.wire): what counts as HTTP at all, request
and response heads, and where bodies end."""

from __future__ import annotations

import pytest
from tether.http.wire import (
    H2,
    HTTP,
    NOT_HTTP,
    WAIT,
    Bad,
    BodyReader,
    classify,
    parse_request_head,
    parse_response_head,
)


@pytest.mark.parametrize(("first", "verdict"), [
    (b"GET / HTTP/1.1\r\n", HTTP),
    (b"GE", WAIT),
    (b"\r\n\r\nPOST /x HTTP/1.1\r\n", HTTP),
    (b"GET\x00 / HTTP/1.1\r\n", HTTP),  # a known method: refused later, not passed on
    (b"G@T / HTTP/1.1\r\n", HTTP),  # a request line all the same
    (b"G@T / HTTP/1.1\r", WAIT),
    (b"PURGE /cache HTTP/1.1\r\n", HTTP),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", H2),
    (b"PRI * HTTP/2.0\r\n", WAIT),
    (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", HTTP),  # not the preface: HTTP/1, refused
    (b"\x16\x03\x01\x02\x00", NOT_HTTP),  # TLS
    (b"SSH-2.0-OpenSSH_9.2\r\n", NOT_HTTP),
    (b"*1\r\n$4\r\nPING\r\n", NOT_HTTP),  # Redis
    (b"NICK me\r\n", NOT_HTTP),
    (b"hello", WAIT),
])
def test_only_the_bytes_say_what_a_stream_is(first, verdict):
    assert classify(first) == verdict


def test_a_verdict_never_changes_once_given():
    stream = b"G@T /path HTTP/1.1\r\nHost: x\r\n\r\n"
    verdicts = [classify(stream[:i]) for i in range(1, len(stream) + 1)]
    first = next(i for i, v in enumerate(verdicts) if v != WAIT)
    assert set(verdicts[:first]) == {WAIT} and set(verdicts[first:]) == {HTTP}


def test_a_request_head_says_how_its_body_is_framed():
    head = b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"
    info = parse_request_head(head, 0, len(head))
    assert (info.method, info.target, info.version, info.length) == (
        b"POST", b"/a?b=c", b"1.1", 12)
    assert info.headers == [(b"host", b"x"), (b"content-length", b"12")]
    chunked = b"PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"
    assert parse_request_head(chunked, 0, len(chunked)).length == -1
    upgrade = b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert parse_request_head(upgrade, 0, len(upgrade)).tunnel


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"CONNECT /path HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
])
def test_an_ambiguous_request_head_is_refused(head):
    with pytest.raises(Bad):
        parse_request_head(head, 0, len(head))


@pytest.mark.parametrize(("head", "method", "expected"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"GET", (200, 5, False)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", (200, 0, False)),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", (204, 0, False)),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET", (200, -1, False)),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"GET", (200, -2, True)),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", b"GET", (200, 1, True)),
    (b"HTTP/1.1 200 Connection established\r\n\r\n", b"CONNECT", (200, 0, False)),
])
def test_a_response_head_says_how_its_body_ends(head, method, expected):
    assert parse_response_head(head, 0, len(head), method) == expected


def test_chunk_data_is_skipped_by_its_size_and_trailers_end_the_body():
    body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-sum: 1\r\n\r\nNEXT"
    reader = BodyReader(-1)
    assert reader.advance(body, 0) == len(body) - 4 and reader.done
    for cut in range(1, len(body) - 4):  # fed in two pieces: the same end
        reader = BodyReader(-1)
        pos = reader.advance(body[:cut], 0)
        rest = body[pos:]
        assert pos + reader.advance(rest, 0) == len(body) - 4 and reader.done
