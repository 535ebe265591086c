"""Shadow testing: mirror mode reports where the local program's answer differs from the
target's (tether extension ``feature.network.incoming.shadow``)."""

from __future__ import annotations

import http.client
import sys

from incoming_support import LOCAL_ANSWER, PORT, SILLY, TARGET_ANSWER, curl

SHADOW = {"mode": "mirror", "shadow": True}


def test_shadow_reports_a_differing_body_per_request(target, session):
    s = session(target, SHADOW)
    assert curl(target, "/?x=1") == TARGET_ANSWER
    s.wait_for(f"shadow: GET /?x=1: target 200 ({len(TARGET_ANSWER)} bytes) vs local 200 "
               f"({len(LOCAL_ANSWER)} bytes): body differs", timeout=5)
    conn = http.client.HTTPConnection(target.ip, PORT, timeout=5)  # keep-alive: in order
    for i in range(3):
        conn.request("GET", f"/ka?n={i}")
        assert conn.getresponse().read().decode() == TARGET_ANSWER
    conn.close()
    for i in range(3):
        s.wait_for(f"shadow: GET /ka?n={i}: target 200", timeout=5)
    s.stop()
    assert "shadow: 4 answers compared, 4 differed" in s.output


def test_shadow_is_quiet_when_the_answers_agree(target, session):
    s = session(target, SHADOW, argv=[sys.executable, SILLY, str(PORT), TARGET_ANSWER.strip()])
    for i in range(2):
        assert curl(target, f"/same?{i}") == TARGET_ANSWER
    s.wait_for("Handling request URI=/same?1", timeout=5)
    s.stop()
    assert "shadow: 2 answers compared, 0 differed" in s.output
    assert "body differs" not in s.output


def test_shadow_skips_what_is_not_http(target, session):
    import socket

    s = session(target, SHADOW)
    with socket.create_connection((target.ip, PORT), timeout=5) as c:
        c.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        while c.recv(4096):  # read the target's whole answer: closing with unread data
            pass             # would reset the connection, and a reset one is not mirrored
    assert curl(target, "/after") == TARGET_ANSWER
    s.wait_for("shadow: GET /after: target 200", timeout=5)
    s.stop()
    assert "1 connections not comparable" in s.output
