"""The router core (tether.http.router) replayed as recorded conversations: events in,
commands out, no sockets and no sleeps (mitmproxy's Playbook is the model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tether.http import compile_filter
from tether.http.router import (
    APP,
    BAD_GATEWAY,
    BAD_REQUEST,
    CLIENT,
    DEV,
    HOLD_LIMIT,
    Close,
    Done,
    Handoff,
    Open,
    Reading,
    Refused,
    Routed,
    RouterCore,
    Send,
    Shutdown,
)

MATCHER = compile_filter({"path_filter": "user=me"})


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def get(path: bytes, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: shop\r\n%s\r\n" % (path, extra)


# Events of a conversation.
def client(data: bytes) -> Callable[[RouterCore], list[Any]]:
    return lambda core: core.client_data(data)


def client_eof() -> Callable[[RouterCore], list[Any]]:
    return lambda core: core.client_eof()


def upstream(side: str, data: bytes) -> Callable[[RouterCore], list[Any]]:
    return lambda core: core.upstream_data(side, data)


def upstream_eof(side: str) -> Callable[[RouterCore], list[Any]]:
    return lambda core: core.upstream_eof(side)


def opened(side: str, good: bool = True) -> Callable[[RouterCore], list[Any]]:
    return lambda core: core.opened(side, good)


def writable(side: str, good: bool) -> Callable[[RouterCore], list[Any]]:
    return lambda core: core.writable(side, good)


class Playbook:
    """``playbook >> event << [expected commands]``, replayed step by step."""

    def __init__(self) -> None:
        self.core = RouterCore(MATCHER)

    def play(self, *steps: tuple[Callable[[RouterCore], list[Any]], list[Any]]) -> None:
        for i, (event, expected) in enumerate(steps):
            got = event(self.core)
            assert got == expected, f"step {i}: got {got!r}"


def test_keep_alive_requests_reuse_one_application_connection():
    Playbook().play(
        (client(get(b"/a")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/a"), Send(APP, get(b"/a"))]),
        (upstream(APP, ok(b"A")), [Send(CLIENT, ok(b"A"))]),
        (client(get(b"/b")), [Routed(APP, b"GET", b"/b"), Send(APP, get(b"/b"))]),
        (upstream(APP, ok(b"B")), [Send(CLIENT, ok(b"B"))]),
        (client_eof(), [Shutdown(CLIENT), Done()]),
    )


def test_pipelined_answers_go_back_in_request_order():
    pipelined = get(b"/1?user=me") + get(b"/2") + get(b"/3?user=me")
    Playbook().play(
        (client(pipelined), [Open(DEV)]),
        (opened(DEV), [Routed(DEV, b"GET", b"/1?user=me"), Send(DEV, get(b"/1?user=me")),
                       Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/2"), Send(APP, get(b"/2")),
                       Routed(DEV, b"GET", b"/3?user=me"), Send(DEV, get(b"/3?user=me"))]),
        # The application answers first: its answer waits for the developer's.
        (upstream(APP, ok(b"two")), []),
        (upstream(DEV, ok(b"one") + ok(b"three")),
         [Send(CLIENT, ok(b"one") + ok(b"two") + ok(b"three"))]),
    )


def test_chunked_bodies_are_forwarded_by_their_framing():
    head = b"POST /up?user=me HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    p = Playbook()
    p.play(
        (client(head + b"5\r\nhel"), [Open(DEV)]),
        (opened(DEV), [Routed(DEV, b"POST", b"/up?user=me"), Send(DEV, head + b"5\r\nhel")]),
        (client(b"lo\r\n0\r\nx-sum: 1\r\n\r\n" + get(b"/next")),
         [Send(DEV, b"lo\r\n0\r\nx-sum: 1\r\n\r\n"), Open(APP)]),
        (upstream(DEV, answer + b"2\r\nok\r\n"), [Send(CLIENT, answer + b"2\r\nok\r\n")]),
        (upstream(DEV, b"0\r\n\r\n"), [Send(CLIENT, b"0\r\n\r\n")]),
    )


def test_expect_100_continue_passes_the_interim_answer():
    head = (b"PUT /f?user=me HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\n")
    Playbook().play(
        (client(head), [Open(DEV)]),
        (opened(DEV), [Routed(DEV, b"PUT", b"/f?user=me"), Send(DEV, head)]),
        (upstream(DEV, b"HTTP/1.1 100 Continue\r\n\r\n"),
         [Send(CLIENT, b"HTTP/1.1 100 Continue\r\n\r\n")]),
        (client(b"data"), [Send(DEV, b"data")]),
        (upstream(DEV, ok()), [Send(CLIENT, ok())]),
    )


def test_websocket_upgrade_becomes_a_tunnel_to_the_side_that_accepted():
    head = get(b"/ws?user=me", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    Playbook().play(
        (client(head + b"\x81\x01a"), [Open(DEV)]),
        (opened(DEV), [Routed(DEV, b"GET", b"/ws?user=me"), Send(DEV, head)]),
        # Frames wait until the developer's program accepted the upgrade.
        (client(b"\x81\x01b"), []),
        (upstream(DEV, switching + b"\x81\x01z"),
         [Send(CLIENT, switching + b"\x81\x01z"), Send(DEV, b"\x81\x01a\x81\x01b")]),
        (client(get(b"/not-http-any-more")), [Send(DEV, get(b"/not-http-any-more"))]),
        (upstream(DEV, b"more"), [Send(CLIENT, b"more")]),
        (client_eof(), [Shutdown(DEV)]),
        (upstream_eof(DEV), [Shutdown(CLIENT), Done()]),
    )


def test_declined_upgrade_goes_on_as_http():
    head = get(b"/ws", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    Playbook().play(
        (client(head + get(b"/after")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/ws"), Send(APP, head)]),
        (upstream(APP, ok(b"no")),
         [Send(CLIENT, ok(b"no")), Routed(APP, b"GET", b"/after"), Send(APP, get(b"/after"))]),
    )


def test_connect_tunnels_after_a_2xx():
    head = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"
    Playbook().play(
        (client(head), [Open(APP)]),
        (opened(APP), [Routed(APP, b"CONNECT", b"db:5432"), Send(APP, head)]),
        (upstream(APP, b"HTTP/1.1 200 Connection established\r\n\r\n"),
         [Send(CLIENT, b"HTTP/1.1 200 Connection established\r\n\r\n")]),
        (client(b"\x00\x00raw"), [Send(APP, b"\x00\x00raw")]),
    )


def test_h2c_prior_knowledge_is_handed_off_whole():
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    Playbook().play(
        (client(preface[:10]), []),
        (client(preface[10:] + b"\x00\x00\x12\x04"),
         [Handoff(preface + b"\x00\x00\x12\x04"), Done()]),
    )


def test_bytes_that_are_not_http_go_whole_to_the_application():
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    Playbook().play(
        (client(hello), [Open(APP)]),
        (opened(APP), [Send(APP, hello)]),
        (upstream(APP, b"\x16\x03\x03server"), [Send(CLIENT, b"\x16\x03\x03server")]),
        (client(b"more"), [Send(APP, b"more")]),
        (upstream_eof(APP), [Shutdown(CLIENT)]),
        (client_eof(), [Shutdown(APP), Done()]),
    )


def test_a_server_first_protocol_goes_to_the_application():
    p = Playbook()
    assert p.core.first_byte_timeout() == [Open(APP)]
    p.play(
        (opened(APP), []),
        (upstream(APP, b"220 smtp ready\r\n"), [Send(CLIENT, b"220 smtp ready\r\n")]),
    )


def test_slow_reader_client_stops_the_upstreams():
    p = Playbook()
    p.play(
        (client(get(b"/big")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/big"), Send(APP, get(b"/big"))]),
        (writable(CLIENT, False), [Reading(APP, False)]),
        (writable(CLIENT, True), [Reading(APP, True)]),
    )


def test_a_slow_upstream_stops_the_client():
    p = Playbook()
    p.play(
        (client(get(b"/x")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/x"), Send(APP, get(b"/x"))]),
        (writable(APP, False), [Reading(CLIENT, False)]),
        (writable(APP, True), [Reading(CLIENT, True)]),
    )


def test_an_answer_that_must_wait_is_bounded():
    p = Playbook()
    p.play(
        (client(get(b"/slow?user=me") + get(b"/fast")), [Open(DEV)]),
        (opened(DEV), [Routed(DEV, b"GET", b"/slow?user=me"), Send(DEV, get(b"/slow?user=me")),
                       Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/fast"), Send(APP, get(b"/fast"))]),
    )
    big = b"x" * HOLD_LIMIT
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * HOLD_LIMIT)
    # The application's answer is next but one: it stops being read once it piles up.
    p.play((upstream(APP, head + big), [Reading(APP, False)]))
    p.play((upstream(DEV, ok(b"slow")), [Send(CLIENT, ok(b"slow") + head + big),
                                          Reading(APP, True)]))


def test_an_upstream_that_closes_before_answering_ends_the_client_connection():
    Playbook().play(
        (client(get(b"/a") + get(b"/b")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/a"), Routed(APP, b"GET", b"/b"),
                       Send(APP, get(b"/a") + get(b"/b"))]),
        (upstream(APP, ok(b"A")), [Send(CLIENT, ok(b"A"))]),
        (upstream_eof(APP), [Done()]),
    )


def test_a_developer_who_stopped_listening_leaves_the_request_to_the_application():
    Playbook().play(
        (client(get(b"/?user=me")), [Open(DEV)]),
        (opened(DEV, False), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/?user=me"), Send(APP, get(b"/?user=me"))]),
    )


def test_an_unreachable_application_answers_502():
    Playbook().play(
        (client(get(b"/")), [Open(APP)]),
        (opened(APP, False), [Send(CLIENT, BAD_GATEWAY), Done()]),
    )


def test_an_idle_upstream_that_closes_is_reopened_for_the_next_request():
    Playbook().play(
        (client(get(b"/a")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/a"), Send(APP, get(b"/a"))]),
        (upstream(APP, ok()), [Send(CLIENT, ok())]),
        (upstream_eof(APP), [Close(APP)]),
        (client(get(b"/b")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/b"), Send(APP, get(b"/b"))]),
    )


def test_an_answer_with_connection_close_makes_the_next_request_open_a_new_connection():
    Playbook().play(
        (client(get(b"/a")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/a"), Send(APP, get(b"/a"))]),
        (upstream(APP, ok(b"a", b"Connection: close\r\n")),
         [Send(CLIENT, ok(b"a", b"Connection: close\r\n"))]),
        (client(get(b"/b")), [Close(APP), Open(APP)]),
    )


def test_a_close_delimited_answer_ends_the_connection():
    Playbook().play(
        (client(get(b"/old")), [Open(APP)]),
        (opened(APP), [Routed(APP, b"GET", b"/old"), Send(APP, get(b"/old"))]),
        (upstream(APP, b"HTTP/1.0 200 OK\r\n\r\nsome"), [Send(CLIENT, b"HTTP/1.0 200 OK\r\n\r\nsome")]),
        (upstream(APP, b" more"), [Send(CLIENT, b" more")]),
        (upstream_eof(APP), [Shutdown(CLIENT), Done()]),
    )


def test_a_malformed_request_after_good_ones_is_answered_after_them():
    Playbook().play(
        (client(get(b"/?user=me") + b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
         [Open(DEV)]),
        (opened(DEV), [Routed(DEV, b"GET", b"/?user=me"), Send(DEV, get(b"/?user=me")),
                       Refused("bad header field line b'Bad Header: x'")]),
        (upstream(DEV, ok()), [Send(CLIENT, ok() + BAD_REQUEST), Done()]),
    )


@pytest.mark.parametrize("data", [
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"GET / HTTP/1.1\r\nHost: x",
])
def test_a_request_cut_off_by_the_client_is_not_completed_by_anyone(data):
    core = RouterCore(MATCHER)
    core.client_data(data)
    out = core.opened(APP, True) + core.client_eof()
    assert Send(CLIENT, BAD_REQUEST) not in out or Done() in out
    if b"\r\n\r\n" in data:
        assert Shutdown(APP) in out
