"""The layer's incoming messages against msgpack, and its port rules (csrc/incoming.c)."""

from __future__ import annotations

import os
import subprocess
import sys

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from tether import (
    messages_incoming,  # noqa: F401
    protocol,
)


def test_in_listen_and_in_peer_encode_like_python(layer_lib):
    ffi, lib = layer_lib
    buf = ffi.new("unsigned char[256]")
    n = lib.tl_encode_in_listen(buf, 256, 7, 8080, 41234, b"0.0.0.0", 4, 0)
    msg = {"t": "in_listen", "id": 7, "port": 8080, "local_port": 41234, "addr": "0.0.0.0",
           "family": 4}
    assert bytes(ffi.buffer(buf, n)) == msgpack.packb(msg, use_bin_type=True)
    protocol.validate(msgpack.unpackb(bytes(ffi.buffer(buf, n))))
    n = lib.tl_encode_in_listen(buf, 256, 8, 0, 8080, b"::", 6, 1)
    msg = {"t": "in_listen", "id": 8, "port": 0, "local_port": 8080, "addr": "::",
           "family": 6, "adopt": True}
    assert bytes(ffi.buffer(buf, n)) == msgpack.packb(msg, use_bin_type=True)
    protocol.validate(msgpack.unpackb(bytes(ffi.buffer(buf, n))))
    n = lib.tl_encode_in_bind(buf, 256, 9, 8080, 8080, 41234)
    msg = {"t": "in_bind", "id": 9, "port": 8080, "want": 8080, "local_port": 41234}
    assert bytes(ffi.buffer(buf, n)) == msgpack.packb(msg, use_bin_type=True)
    protocol.validate(msgpack.unpackb(bytes(ffi.buffer(buf, n))))
    n = lib.tl_encode_in_peer(buf, 256, 300, 50000, 8080)
    assert msgpack.unpackb(bytes(ffi.buffer(buf, n))) == {
        "t": "in_peer", "id": 300, "port": 50000, "listen_port": 8080}
    assert lib.tl_encode_in_listen(buf, 8, 7, 8080, 1, b"x", 4, 0) == -1


def test_in_listen_reply_decodes_what_an_adopted_listener_serves(layer_lib):
    ffi, lib = layer_lib
    port, want = ffi.new("long *"), ffi.new("long *")
    body = msgpack.packb({"t": "in_listen_reply", "id": 1, "ok": True, "port": 8080,
                          "want": 8080})
    assert lib.tl_decode_in_listen_reply(body, len(body), port, want) == 1
    assert (port[0], want[0]) == (8080, 8080)
    body = msgpack.packb({"t": "in_listen_reply", "id": 1, "ok": False})
    assert lib.tl_decode_in_listen_reply(body, len(body), port, want) == 0
    assert (port[0], want[0]) == (0, 0)
    body = msgpack.packb({"t": "error", "id": 1, "code": "x", "message": "y"})
    assert lib.tl_decode_in_listen_reply(body, len(body), port, want) == -1


def test_in_peer_reply_decodes(layer_lib):
    ffi, lib = layer_lib
    idp, port = ffi.new("unsigned long *"), ffi.new("long *")
    addr = ffi.new("char[64]")
    body = msgpack.packb({"t": "in_peer_reply", "id": 9, "addr": "198.18.0.1", "port": 5555})
    assert lib.tl_decode_in_peer_reply(body, len(body), idp, addr, 64, port) == 1
    assert (idp[0], ffi.string(addr), port[0]) == (9, b"198.18.0.1", 5555)
    body = msgpack.packb({"t": "in_peer_reply", "id": 9, "addr": None, "port": 0})
    assert lib.tl_decode_in_peer_reply(body, len(body), idp, addr, 64, port) == 0
    body = msgpack.packb({"t": "error", "id": 9, "code": "x", "message": "y"})
    assert lib.tl_decode_in_peer_reply(body, len(body), idp, addr, 64, port) == -1
    body = msgpack.packb({"t": "in_peer_reply", "id": 9, "addr": "x" * 100, "port": 1})
    assert lib.tl_decode_in_peer_reply(body, len(body), idp, addr, 64, port) == -1


DECIDE = """
import sys
from cffi import FFI
sys.path.insert(0, {tests!r})
from layer.conftest import api_cdef, layer_path
ffi = FFI(); ffi.cdef(api_cdef()); lib = ffi.dlopen(str(layer_path()))
lp = ffi.new("long *")
for port, lo in [(8080, 0), (8080, 1), (9000, 0), (22, 0), (3000, 0), (0, 0)]:
    r = lib.tl_incoming_decide(port, lo, lp)
    print(port, lo, r, lp[0] if r else "-")
"""


def run_decide(config: str) -> list[str]:
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TETHER_LAYER_SOCK": "/nonexistent", "TETHER_LAYER_CONFIG": config}
    out = subprocess.run([sys.executable, "-c", DECIDE.format(tests=tests)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_port_rules():
    assert run_decide("in_mode=steal;in_ignore_lo=1;in_ignore=22;in_map=3000:8080;"
                      "in_listen=9000:19000") == [
        "8080 0 8080 8080", "8080 1 0 -", "9000 0 9000 19000", "22 0 0 -",
        "3000 0 8080 3000", "0 0 0 -"]
    assert run_decide("in_mode=mirror;in_ports=9000") == [
        "8080 0 0 -", "8080 1 0 -", "9000 0 9000 9000", "22 0 0 -", "3000 0 0 -", "0 0 0 -"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=64),
    st.dictionaries(st.sampled_from(["t", "id", "ok", "port", "want", "x"]),
                    st.one_of(st.integers(min_value=-2**63, max_value=2**64 - 1),
                              st.booleans(), st.none(), st.text(max_size=20),
                              st.binary(max_size=8)),
                    max_size=6).map(lambda d: msgpack.packb({"t": "in_listen_reply", **d}))))
def test_in_listen_reply_decoder_survives_any_input(layer_lib, body):
    ffi, lib = layer_lib
    port, want = ffi.new("long *"), ffi.new("long *")
    buf = ffi.new("unsigned char[]", body or b"\0")  # an exact-size heap copy
    r = lib.tl_decode_in_listen_reply(buf, len(body), port, want)
    assert r in (-1, 0, 1)
    if r >= 0:
        assert 0 <= port[0] <= 65535 and 0 <= want[0] <= 65535
