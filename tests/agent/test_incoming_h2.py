"""h2c prior knowledge through the filtered-steal router (incoming_http.Router hands the
connection to incoming_h2.H2Router): real h2 conversations on local socketpairs, two toy
h2c upstreams ("app", "dev") that answer with their name. No namespaces."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import h2.connection
import h2.events
from h2.errors import ErrorCodes
from tether.agent.incoming_h2 import request_head
from tether.agent.incoming_http import Router
from tether.http import compile_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "incoming"))
from h2c_toys import h2_exchange, serve_conn  # noqa: E402

ME = [("x-user", "me")]
MATCH = compile_filter({"header_filter": "^x-user: me$"})


def routed(requests: list[dict[str, Any]], *, dev_listens: bool = True,
           app_reachable: bool = True, matcher: Any = MATCH, raw: bytes | None = None,
           read_slowly: bool = False) -> tuple[Any, dict[str, int]]:
    """Run `requests` as concurrent streams of one h2c connection through the router;
    returns the client's results (or the raw bytes answered to `raw`) and how many
    upstream connections each side got."""
    opened = {"app": 0, "dev": 0}

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        client, server_side = socket.socketpair()
        server_side.setblocking(False)
        tasks = []

        def opener(name: str, ok: bool):
            async def open_() -> socket.socket | None:
                if not ok:
                    return None
                opened[name] += 1
                a, b = socket.socketpair()
                a.setblocking(False)
                r, w = await asyncio.open_connection(sock=b)
                tasks.append(loop.create_task(serve_conn(r, w, name)))
                return a
            return open_

        router = loop.create_task(Router(server_side, matcher, opener("app", app_reachable),
                                         opener("dev", dev_listens)).run())
        if raw is not None:
            def talk() -> bytes:
                client.settimeout(5)
                client.sendall(raw)
                out = b""
                while chunk := client.recv(65536):
                    out += chunk
                return out
        else:
            def talk() -> Any:
                return h2_exchange(client, requests, read_slowly=read_slowly)
        try:
            out = await asyncio.to_thread(talk)
        finally:
            client.close()
        await asyncio.wait_for(router, 5)
        for t in tasks:
            t.cancel()
        return out

    return asyncio.run(go()), opened


def test_concurrent_streams_on_one_connection_each_go_to_their_side():
    reqs = [{"path": f"/r{i}", "headers": ME if i % 2 else []} for i in range(8)]
    reqs.append({"path": "/slow-mine", "headers": ME})
    reqs.append({"path": "/slow-theirs"})
    out, opened = routed(reqs)
    got = [(r["status"], r["body"].decode(), r["trailers"].get("x-served-by")) for r in out]
    want = [("200", f"{'dev' if i % 2 else 'app'} /r{i} 0\n", "dev" if i % 2 else "app")
            for i in range(8)]
    want += [("200", "dev /slow-mine 0\n", "dev"), ("200", "app /slow-theirs 0\n", "app")]
    assert got == want
    assert opened == {"app": 1, "dev": 1}  # one multiplexed connection per side


def test_bodies_larger_than_every_window_cross_in_both_directions():
    big = b"b" * (3 * 1024 * 1024)
    out, _ = routed([{"path": "/up-mine", "headers": ME, "body": big},
                     {"path": "/up-theirs", "body": big},
                     {"path": "/big?n=5000000", "headers": ME},
                     {"path": "/big?n=5000000"}], read_slowly=True)
    assert [r["body"] for r in out[:2]] == [b"dev /up-mine %d\n" % len(big),
                                            b"app /up-theirs %d\n" % len(big)]
    assert [len(r["body"]) for r in out[2:]] == [5000000, 5000000]
    assert all(r["reset"] is None for r in out)


def test_a_reset_reaches_the_client_stream_and_spares_the_others():
    out, _ = routed([{"path": "/reset", "headers": ME}, {"path": "/fine", "headers": ME},
                     {"path": "/reset"}, {"path": "/fine"}])
    assert [r["reset"] for r in out] == [ErrorCodes.ENHANCE_YOUR_CALM, None,
                                         ErrorCodes.ENHANCE_YOUR_CALM, None]
    assert [r["body"] for r in out[1::2]] == [b"dev /fine 0\n", b"app /fine 0\n"]


def test_developer_gone_means_the_application_answers():
    out, opened = routed([{"path": "/a", "headers": ME}, {"path": "/b"}], dev_listens=False)
    assert [r["body"] for r in out] == [b"app /a 0\n", b"app /b 0\n"]
    assert opened["dev"] == 0


def test_application_unreachable_refuses_its_streams_only():
    out, _ = routed([{"path": "/a", "headers": ME}, {"path": "/b"}], app_reachable=False)
    assert out[0]["body"] == b"dev /a 0\n"
    assert out[1]["reset"] == ErrorCodes.REFUSED_STREAM


def test_path_and_method_filters_see_the_pseudo_headers():
    m = compile_filter({"all_of": [{"path": r"^/api\?user=me$"}, {"method": "post"}]})
    out, _ = routed([{"path": "/api?user=me", "body": b"x"}, {"path": "/api?user=me"}],
                    matcher=m)
    assert [r["body"] for r in out] == [b"dev /api?user=me 1\n", b"app /api?user=me 0\n"]


def test_request_head_mapping_is_what_the_filters_see():
    head = request_head([(b":method", b"GET"), (b":scheme", b"http"),
                         (b":authority", b"pod:8080"), (b":path", b"/p?q=1"),
                         (b"X-User", b" me "), (b"te", b"trailers")])
    assert (head.method, head.target, head.version) == (b"GET", b"/p?q=1", b"2")
    assert head.headers == [(b"host", b"pod:8080"), (b"x-user", b"me"), (b"te", b"trailers")]
    assert compile_filter({"header_filter": "^host: pod"}).matches(head)
    assert not compile_filter({"header_filter": "^:path"}).matches(head)


def test_garbage_after_the_preface_gets_a_goaway_and_reaches_nobody():
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    out, opened = routed([], raw=preface + b"\x00\x00\x04\x09garbage-frames")
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    events = conn.receive_data(out)
    assert any(isinstance(e, h2.events.ConnectionTerminated)
               and e.error_code == ErrorCodes.PROTOCOL_ERROR for e in events)
    assert opened == {"app": 0, "dev": 0}


def test_a_client_that_does_not_read_holds_back_the_upstream_and_its_reset_travels(
        monkeypatch):
    """What waits in the agent stays within the window it advertised; RST_STREAM from the
    client reaches the upstream's stream."""
    import tether.agent.incoming_http as incoming_http
    from tether.agent import incoming_h2

    routers: list[incoming_h2.H2Router] = []

    class Recorded(incoming_h2.H2Router):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            routers.append(self)

    monkeypatch.setattr(incoming_http, "H2Router", Recorded)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        client, server_side = socket.socketpair()
        client.setblocking(False)
        server_side.setblocking(False)
        served = []

        async def open_dev() -> socket.socket:
            a, b = socket.socketpair()
            a.setblocking(False)
            r, w = await asyncio.open_connection(sock=b)
            served.append(loop.create_task(serve_conn(r, w, "dev")))
            return a

        async def no_app() -> None:
            return None

        router = loop.create_task(Router(server_side, MATCH, no_app, open_dev).run())
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", "/big?n=50000000"),
                              (":scheme", "http"), (":authority", "pod"), *ME],
                          end_stream=True)
        await loop.sock_sendall(client, conn.data_to_send())
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        (r,) = routers
        (s,) = r.streams.values()
        waiting = sum(map(len, s.resp.chunks))
        assert waiting <= incoming_h2.STREAM_WINDOW
        up = s.up
        conn.reset_stream(1, ErrorCodes.CANCEL)
        await loop.sock_sendall(client, conn.data_to_send())
        await asyncio.sleep(0.2)
        assert not r.streams and not up.streams
        assert 1 not in up.conn.streams or up.conn.streams[1].closed
        assert not served[0].done()  # the upstream connection itself lives on
        client.close()
        await asyncio.wait_for(router, 5)
        for t in served:
            t.cancel()

    asyncio.run(go())
