"""Fixtures for the C layer: the built library bound through cffi, and small C programs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tether
from cffi import FFI

LAYER_DIR = Path(__file__).resolve().parents[2] / "layer"


def layer_path() -> Path:
    return Path(tether.__file__).resolve().parent / "libtether_layer.so"


def api_cdef() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tether_layer_build", LAYER_DIR / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.api_cdef()


@pytest.fixture(scope="session")
def layer_lib():
    ffi = FFI()
    ffi.cdef(api_cdef())
    return ffi, ffi.dlopen(str(layer_path()))


@pytest.fixture(scope="session")
def cbuild(tmp_path_factory):
    """Compile a C snippet once per session: cbuild(name, source) -> path."""
    out_dir = tmp_path_factory.mktemp("cprogs")
    built: dict[str, Path] = {}

    def build(name: str, source: str) -> Path:
        if name not in built:
            src = out_dir / f"{name}.c"
            src.write_text(source)
            exe = out_dir / name
            subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(src)], check=True)
            built[name] = exe
        return built[name]

    return build
