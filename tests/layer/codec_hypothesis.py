"""Hypothesis strategies and a driver that feed the layer's C decoders (csrc/*.c on the
codec of csrc/codec.c) every kind of reply body: arbitrary bytes, well-formed msgpack of
the wrong shapes, and corrupted protocol.json vectors.  Inputs and outputs live in exact-size
malloc'd buffers, so under AddressSanitizer a read or write past either end aborts.

Used in process by test_codec_fuzz.py, and as a program under ASan:
    LD_PRELOAD=libasan.so python codec_hypothesis.py LIBRARY EXAMPLES"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
VECTORS = [bytes.fromhex(v["hex"])
           for v in json.loads((ROOT / "layer" / "protocol.json").read_text())["vectors"]]
REPLY_TYPES = ["env_reply", "hello_ok", "out_connect_reply", "dns_lookup_reply", "error",
               "fs_open_reply", "fs_stat_reply", "fs_readlink_reply", "fs_realpath_reply",
               "in_peer_reply", "in_listen_reply"]
FIELDS = ["t", "id", "env", "session", "mode", "result", "relay", "local", "errno", "canon",
          "addrs", "eai", "st", "target", "path", "addr", "port", "code", "message", "fds"]

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
           | st.text(max_size=40) | st.binary(max_size=40) | st.sampled_from(REPLY_TYPES)
           | st.sampled_from(["fd", "relay"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(FIELDS), inner,
                                        max_size=6), max_leaves=20)
messages = st.builds(
    lambda t, fields: {"t": t, **fields},
    st.sampled_from(REPLY_TYPES) | st.text(max_size=12),
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=8))


def _pack(msg: Any) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


bodies = (st.binary(max_size=300)
          | messages.map(_pack)
          | st.tuples(st.sampled_from(VECTORS), st.integers(0, 400), st.integers(0, 255)).map(
              lambda v: v[0][:v[1] % (len(v[0]) + 1)] + bytes([v[2]]) + v[0][v[1] % (
                  len(v[0]) + 1) + 1:])
          | st.tuples(st.sampled_from(VECTORS), st.integers(0, 400)).map(
              lambda v: v[0][:v[1] % (len(v[0]) + 1)]))


class Decoders:
    """Every decoder of the layer's API, called on exact-size heap copies."""

    def __init__(self, ffi: Any, lib: Any) -> None:
        self.ffi, self.lib = ffi, lib
        self.libc = ffi.dlopen(None)

    def _heap(self, size: int, data: bytes = b"") -> Any:
        ptr = self.ffi.cast("unsigned char *", self.libc.malloc(max(size, 1)))
        if data:
            self.ffi.memmove(ptr, data, len(data))
        return ptr

    def run(self, body: bytes) -> None:
        ffi, lib = self.ffi, self.lib
        n = len(body)
        buf = self._heap(n, body)
        outs = []

        def out(size: int, kind: str = "char *") -> Any:
            ptr = self._heap(size)
            outs.append(ptr)
            return ffi.cast(kind, ptr)

        try:
            lib.tl_decode_env_reply(buf, n, ffi.new("unsigned long *"), out(64), 64)
            lib.tl_decode_hello_ok(buf, n, ffi.new("long *"))
            lib.tl_decode_out_connect_reply(buf, n, ffi.new("int *"), ffi.new("int *"),
                                            out(16, "unsigned char *"), ffi.new("int *"),
                                            ffi.new("int *"))
            lib.tl_decode_out_connect_local(buf, n, out(16, "unsigned char *"),
                                            ffi.new("int *"), ffi.new("int *"))
            lib.tl_decode_dns_lookup_reply(buf, n, out(4 * 4, "int *"),
                                           out(4 * 16, "unsigned char *"), 4, out(32), 32,
                                           ffi.new("int *"))
            lib.tl_decode_fs_errno(buf, n)
            lib.tl_decode_fs_stat(buf, n, out(8 * 16, "long long *"))
            lib.tl_decode_fs_string(buf, n, b"path", out(16), 16)
            lib.tl_decode_in_peer_reply(buf, n, ffi.new("unsigned long *"), out(16), 16,
                                        ffi.new("long *"))
        finally:
            for ptr in outs:
                self.libc.free(ptr)
            self.libc.free(buf)


def fuzz(ffi: Any, lib: Any, examples: int) -> None:
    decoders = Decoders(ffi, lib)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bodies)
    def decode_anything(body: bytes) -> None:
        decoders.run(body)

    decode_anything()


def cdef() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tether_layer_build", ROOT / "layer/build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(mod.api_cdef()) + "\nvoid *malloc(size_t); void free(void *);\n"


if __name__ == "__main__":
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(cdef())
    fuzz(ffi, ffi.dlopen(sys.argv[1]), int(sys.argv[2]))
    print("ok")
