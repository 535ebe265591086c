"""Mirror sniffer pieces without a pod: reassembly, the BPF program, shadow summaries."""

from __future__ import annotations

import logging

from tether.agent.incoming_mirror import FIN, Half, bpf_program
from tether.http.shadow import Book, Exchanges, dechunk, difference

GET = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"


def test_half_reassembles_out_of_order_and_drops_retransmissions() -> None:
    h = Half(999)  # data starts at 1000
    assert h.segment(1005, 0, b"world") == []  # held
    assert h.segment(1000, 0, b"hello") == [b"hello", b"world"]
    assert h.segment(1000, 0, b"hello") == []  # retransmission
    assert h.segment(1008, 0, b"ldXY") == [b"XY"]  # overlap: only the new part
    assert not h.ended
    assert h.segment(1012, FIN, b"") == []
    assert h.ended


def test_half_survives_sequence_wraparound() -> None:
    h = Half(0xFFFFFFFE)
    assert h.segment(0xFFFFFFFF, 0, b"ab") == [b"ab"]
    assert h.next == 1


def test_bpf_program_shapes() -> None:
    plain, shadow = bpf_program(8080), bpf_program(8080, shadow=True)
    v6 = bpf_program(8080, v6=True)
    for prog in (plain, shadow, v6):
        assert prog[-1] == (0x06, 0, 0, 0) and prog[-2][0] == 0x06  # ends in accept, drop
        for i, (op, jt, jf, _k) in enumerate(prog):
            if op != 0x06:  # every jump lands inside the program
                assert i + 1 + jt < len(prog) and i + 1 + jf < len(prog)
    assert len(shadow) > len(plain)
    assert sum(1 for op, *_ in plain if op == 0x15 and _[-1] == 8080) == 1  # dport only
    assert sum(1 for op, *_ in v6 if op == 0x15 and _[-1] == 8080) == 1
    # the shadow socket sees both families: dport and sport of each
    assert sum(1 for op, *_ in shadow if op == 0x15 and _[-1] == 8080) == 4


def _answer(body: bytes, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def test_exchanges_summarise_keepalive_and_chunked_answers() -> None:
    ex = Exchanges()
    ex.client(GET + GET.replace(b"/a?x=1", b"/b"))
    first = ex.server(_answer(b"hi"))
    second = ex.server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"1\r\nh\r\n1\r\ni\r\n0\r\n\r\n")
    assert [(s["m"], s["u"], s["s"], s["n"]) for s in first + second] == [
        ("GET", "/a?x=1", 200, 2), ("GET", "/b", 200, 2)]
    assert first[0]["d"] == second[0]["d"]  # chunking does not make bodies differ
    assert dechunk(b"3\r\nabc\r\n0\r\n\r\n") == b"abc"


def test_exchanges_mark_what_is_not_http() -> None:
    ex = Exchanges()
    ex.client(b"\x16\x03\x01\x00 hello tls\r\n\r\n")
    assert ex.broken and ex.server(b"\x16\x03") == []
    h2 = Exchanges()
    h2.client(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert h2.broken == "HTTP/2"


def test_book_pairs_in_order_and_reports(caplog) -> None:
    def summary(body: bytes, status: int = 200) -> dict:
        ex = Exchanges()
        ex.client(GET)
        return ex.server(_answer(body, status))[0]

    book = Book()
    key = (8080, "10.0.0.1", 5555)
    with caplog.at_level(logging.DEBUG, logger="tether"):
        book.add(key, "local", [summary(b"x" * 31)])
        assert book.stats["compared"] == 0  # waits for the target
        book.add(key, "target", [summary(b"y" * 21), summary(b"same")])
        book.add(key, "local", [summary(b"same")])
        book.ended(key, "target")
        book.ended(key, "local")
    assert "shadow: GET /a?x=1: target 200 (21 bytes) vs local 200 (31 bytes): body differs" \
        in caplog.text
    assert book.stats == {"compared": 2, "differed": 1, "unpaired": 0, "skipped": 0}
    assert difference(summary(b"a"), summary(b"a", 500)) is not None
    assert "2 answers compared, 1 differed" in book.summary()
