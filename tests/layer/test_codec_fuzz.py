"""Property tests of the layer's C decoders (hypothesis): any reply body, well-formed or
not, is decoded or refused without touching memory outside its buffers, in process and
under AddressSanitizer (see codec_hypothesis.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tether
from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import codec_hypothesis  # noqa: E402


def test_c_decoders_take_any_reply_body(layer_lib):
    ffi = FFI()
    ffi.cdef(codec_hypothesis.cdef())
    lib = ffi.dlopen(str(Path(tether.__file__).resolve().parent / "libtether_layer.so"))
    codec_hypothesis.fuzz(ffi, lib, examples=400)


@pytest.fixture(scope="session")
def asan_layer(tmp_path_factory) -> Path:
    """The layer built with AddressSanitizer: the one `TETHER_BUILD_ASAN=1 make install`
    ships if it is newer than the sources, else built here."""
    shipped = Path(tether.__file__).resolve().parent / "libtether_layer_asan.so"
    newest = max(p.stat().st_mtime for p in (ROOT / "csrc").glob("*.[ch]"))
    if shipped.exists() and shipped.stat().st_mtime >= newest:
        return shipped
    import importlib.util

    spec = importlib.util.spec_from_file_location("tether_layer_build", ROOT / "layer/build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return Path(build.build_layer(tmp_path_factory.mktemp("asan") / "libtether_layer_asan.so",
                                  asan=True))


def test_c_decoders_take_any_reply_body_under_asan(asan_layer):
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=libasan,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1")
    res = subprocess.run([sys.executable, str(HERE / "codec_hypothesis.py"), str(asan_layer),
                          "400"], capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-4000:]
