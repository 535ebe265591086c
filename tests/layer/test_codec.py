"""The C codec of the layer against the same vectors as the Python side."""

import json
from pathlib import Path

import pytest

SPEC = json.loads((Path(__file__).parents[2] / "layer" / "protocol.json").read_text())
VECTORS = {v["name"]: v for v in SPEC["vectors"]}


def encode_with(layer, fn, *args):
    ffi, lib = layer
    buf = ffi.new("unsigned char[]", 4096)
    n = getattr(lib, fn)(buf, 4096, *args)
    assert n > 0
    return bytes(ffi.buffer(buf, n))


@pytest.mark.parametrize("name", ["hello", "hello_large_pid"])
def test_c_encodes_hello_like_python(layer_lib, name):
    m = VECTORS[name]["message"]
    out = encode_with(layer_lib, "tl_encode_hello", m["pid"], m["ppid"], m["exe"].encode())
    assert out.hex() == VECTORS[name]["hex"]


@pytest.mark.parametrize("name", ["env", "env_large_id"])
def test_c_encodes_env_request_like_python(layer_lib, name):
    m = VECTORS[name]["message"]
    assert encode_with(layer_lib, "tl_encode_env", m["id"]).hex() == VECTORS[name]["hex"]


def test_c_encoder_reports_a_too_small_buffer(layer_lib):
    ffi, lib = layer_lib
    buf = ffi.new("unsigned char[]", 8)
    assert lib.tl_encode_hello(buf, 8, 1, 1, b"/usr/bin/python3") == -1


def test_c_decodes_env_reply_vector(layer_lib):
    ffi, lib = layer_lib
    v = VECTORS["env_reply"]
    body = bytes.fromhex(v["hex"])
    out = ffi.new("char[]", 4096)
    ident = ffi.new("unsigned long *")
    n = lib.tl_decode_env_reply(body, len(body), ident, out, 4096)
    assert n == len(v["message"]["env"])
    assert ident[0] == v["message"]["id"]
    entries = ffi.buffer(out, 4096)[:].split(b"\0")[:n]
    assert [e.decode() for e in entries] == [f"{k}={val}" for k, val in v["message"]["env"].items()]


def test_c_decodes_hello_ok_vector(layer_lib):
    ffi, lib = layer_lib
    body = bytes.fromhex(VECTORS["hello_ok"]["hex"])
    session = ffi.new("long *")
    assert lib.tl_decode_hello_ok(body, len(body), session) == 0
    assert session[0] == VECTORS["hello_ok"]["message"]["session"]


@pytest.mark.parametrize("cut", [1, 5, 10, 20])
def test_c_decoder_rejects_truncated_messages(layer_lib, cut):
    ffi, lib = layer_lib
    body = bytes.fromhex(VECTORS["env_reply"]["hex"])[:-cut]
    out = ffi.new("char[]", 4096)
    ident = ffi.new("unsigned long *")
    assert lib.tl_decode_env_reply(body, len(body), ident, out, 4096) == -1


def test_c_decoder_rejects_another_message_type(layer_lib):
    ffi, lib = layer_lib
    body = bytes.fromhex(VECTORS["hello_ok"]["hex"])
    out = ffi.new("char[]", 64)
    ident = ffi.new("unsigned long *")
    assert lib.tl_decode_env_reply(body, len(body), ident, out, 64) == -1
