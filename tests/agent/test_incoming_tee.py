"""The mirror tee's HTTP/2 watch, without sockets: a real h2 client's frames go in, and
only the streams matching the filter come out to the copy, bodies and ends included,
whatever the application's settings allowed the client to send."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
from h2.settings import SettingCodes
from tether.agent.incoming_tee import _H2Watch
from tether.http import compile_filter


class Recorder:
    """Stands in for the developer's copy: records what the watch asks it to replay."""

    name = "test"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.bodies: dict[int, int] = {}

    def request(self, cs: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.calls.append(("request", cs, dict(headers)[b":path"], ended))

    def data(self, cs: int, data: bytes) -> None:
        self.bodies[cs] = self.bodies.get(cs, 0) + len(data)

    def end(self, cs: int) -> None:
        self.calls.append(("end", cs))

    def reset(self, cs: int) -> None:
        self.calls.append(("reset", cs))


def client_and_app() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """A client and the application it talks to (big windows, as nginx advertises)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    app = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    app.initiate_connection()
    # A second SETTINGS frame: the client acks twice, the watch has one batch to apply.
    app.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                         SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    app.increment_flow_control_window(1 << 24)
    return client, app


def exchange(client: Any, app: Any, watch: _H2Watch) -> None:
    """Deliver the client's bytes to the app and the watch; the app's back to the client."""
    for _ in range(4):
        out = client.data_to_send()
        if out:
            assert watch.feed(out)
            app.receive_data(out)
        back = app.data_to_send()
        if back:
            client.receive_data(back)
        if not out and not back:
            return


def test_only_matching_streams_are_copied_with_their_bodies() -> None:
    client, app = client_and_app()
    rec = Recorder()
    watch = _H2Watch(compile_filter({"header_filter": "^x-mirror: yes$"}), rec)  # type: ignore[arg-type]
    exchange(client, app, watch)  # settings both ways, acks
    big = b"x" * 300_000  # more than the default windows: only the app's settings allow it
    for i, mine in enumerate([True, False, True, False]):
        sid = client.get_next_available_stream_id()
        headers = [(":method", "POST"), (":path", f"/s{i}"), (":scheme", "https"),
                   (":authority", "app.test")] + ([("x-mirror", "yes")] if mine else [])
        client.send_headers(sid, headers)
        client.send_data(sid, big, end_stream=True)
        exchange(client, app, watch)
    assert rec.calls == [("request", 1, b"/s0", False), ("end", 1),
                         ("request", 5, b"/s2", False), ("end", 5)]
    assert rec.bodies == {1: len(big), 5: len(big)}


def test_a_long_connection_does_not_keep_every_stream() -> None:
    client, app = client_and_app()
    watch = _H2Watch(compile_filter({"path_filter": "^/never$"}), Recorder())  # type: ignore[arg-type]
    exchange(client, app, watch)
    for i in range(300):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(":method", "GET"), (":path", f"/{i}"), (":scheme", "https"),
                                  (":authority", "a")], end_stream=True)
        exchange(client, app, watch)
        app.send_headers(sid, [(":status", "200")], end_stream=True)  # the app answers
        exchange(client, app, watch)
    assert watch.conn.open_inbound_streams == 0


def test_a_stream_the_client_resets_is_reset_in_the_copy() -> None:
    client, app = client_and_app()
    rec = Recorder()
    watch = _H2Watch(compile_filter({"method_filter": "PUT"}), rec)  # type: ignore[arg-type]
    exchange(client, app, watch)
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(":method", "PUT"), (":path", "/up"), (":scheme", "https"),
                              (":authority", "a")])
    client.send_data(sid, b"partial")
    client.reset_stream(sid)
    exchange(client, app, watch)
    assert rec.calls == [("request", 1, b"/up", False), ("reset", 1)]
    assert rec.bodies == {1: 7}
