"""The mirrored copy of a client connection survives the local program closing it
(tether.http.mirror.Replay), as recorded conversations: no sockets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tether.http.mirror import Replay

R0 = b"GET /r0 HTTP/1.1\r\nHost: t\r\n\r\n"
R1 = b"POST /r1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
R2 = b"GET /r2 HTTP/1.1\r\nHost: t\r\n\r\n"
OK_CLOSE = b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nlocal\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nlocal\n"


def test_a_program_that_closes_after_each_answer_gets_the_next_request_again():
    r = Replay()
    r.client(R0 + R1)  # both written to the first copy connection
    r.answer(OK_CLOSE)  # Werkzeug answers the first and closes
    assert r.closed() and r.backlog() == R1  # the second goes on a new connection
    r.answer(OK_CLOSE)
    assert not r.closed()  # nothing waits: the next request opens the next connection
    r.client(R2)
    assert r.backlog() == R2 and r.unanswered == 1 and r.lost == 0


def test_a_request_still_arriving_is_replayed_from_its_first_byte():
    r = Replay()
    r.client(R0 + R1[:20])
    r.answer(OK_CLOSE)
    assert not r.closed()  # its head is not even complete: its next bytes open the next
    r.client(R1[20:])
    assert r.backlog() == R1
    r.answer(OK)
    assert r.unanswered == 0 and not r.closed()


def test_a_connection_closed_without_any_answer_gives_up_only_its_oldest_request():
    r = Replay()
    r.client(R0 + R1 + R2)
    assert r.closed() and r.backlog() == R1 + R2  # R0 got no answer: dropped, not retried
    assert r.closed() and r.backlog() == R2
    assert not r.closed() and r.lost == 3


def test_head_answers_have_no_body_and_1xx_is_not_an_answer():
    r = Replay()
    r.client(b"HEAD / HTTP/1.1\r\n\r\n" + R1)
    r.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")  # HEAD: no body follows
    r.answer(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert r.unanswered == 1
    r.answer(OK)
    assert r.unanswered == 0


def test_not_http_is_a_plain_stream_without_replay():
    r = Replay()
    r.client(b"\x16\x03\x01\x02\x00 tls hello")  # not even a line yet
    assert not r.closed()  # the program closed on it: nothing to try again at once
    r = Replay()
    r.client(b"\x16\x03\x01\x02\x00 tls hello\r\n\r\n")
    assert r.plain is not None and not r.closed() and r.backlog() == b""
    r = Replay()
    r.client(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert r.plain is not None and not r.closed()


@given(st.lists(st.integers(min_value=1, max_value=len(R0 + R1 + R2) - 1), max_size=4))
def test_the_replay_is_the_same_whatever_the_segmentation(cuts):
    data = R0 + R1 + R2
    r = Replay()
    prev = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        r.client(data[prev:cut])
        prev = cut
    r.answer(OK_CLOSE)
    assert r.closed() and r.backlog() == R1 + R2


REQUESTS = {
    "get": (b"GET /g HTTP/1.1\r\nHost: t\r\n\r\n", b"GET"),
    "post": (b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody", b"POST"),
    "chunked": (b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                b"POST"),
    "head": (b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n", b"HEAD"),
}
ANSWERS = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    "continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
}


@given(st.lists(st.sampled_from(sorted(REQUESTS)), min_size=1, max_size=6),
       st.lists(st.sampled_from(sorted(ANSWERS)), max_size=6),
       st.lists(st.integers(min_value=1, max_value=400), max_size=5),
       st.integers(min_value=0, max_value=6))
def test_the_fast_framing_agrees_with_the_full_framers(kinds, answer_kinds, cuts, answered):
    client = b"".join(REQUESTS[k][0] for k in kinds)
    answers = []
    for k, a in zip(kinds, answer_kinds, strict=False):
        if k == "head":  # a HEAD answer announces a length and has no body
            answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
        else:
            answers.append(ANSWERS[a])
    answers = answers[:answered]
    fast, full = Replay(), Replay(fast=False)
    prev = 0
    for cut in sorted({c for c in cuts if c < len(client)}) + [len(client)]:
        for r in (fast, full):
            r.client(client[prev:cut])
        prev = cut
    for a in answers:
        for r in (fast, full):
            r.answer(a[:7])
            r.answer(a[7:])
    assert fast.unanswered == full.unanswered == len(kinds) - len(answers)
    assert fast.closed() == full.closed()
    assert fast.backlog() == full.backlog()
    assert fast.lost == full.lost


def test_fast_framing_costs_little_per_request():
    """Not a timing test: counts that plain GETs never reach the full framers."""
    r = Replay()
    r.client(R0 * 50)
    r.answer(OK * 50)
    assert r._requests is None and r._answers is None and r.unanswered == 0
