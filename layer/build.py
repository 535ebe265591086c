"""Build the C layer (libtether_layer.so) with cffi's compiler toolchain.

The layer is a plain shared object, not a Python extension: it is LD_PRELOADed into
programs that have no CPython in them, so every undefined symbol must be libc's.  cffi
(through setuptools' compiler abstraction, the one cffi itself drives) compiles it, and
the tests bind it with ``ffi.dlopen`` using the declarations in tether_layer_api.h.

Usable as a script: ``python layer/build.py OUT.so [--asan]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CSRC = ROOT / "csrc"
API_HEADER = HERE / "tether_layer_api.h"
PROTOCOL = HERE / "protocol.json"

CFLAGS = ["-O2", "-g", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror",
          "-std=gnu11", "-fno-strict-aliasing", "-D_GNU_SOURCE"]
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]


def generate_protocol_header(out_dir: Path) -> Path:
    """protocol_gen.h: the constants of layer/protocol.json, for the C codec."""
    spec = json.loads(PROTOCOL.read_text())
    out = out_dir / "protocol_gen.h"
    out.write_text(
        "/* Generated from layer/protocol.json by layer/build.py; do not edit. */\n"
        f"#define TETHER_PROTOCOL_VERSION {int(spec['version'])}\n"
        f"#define TETHER_MAX_FRAME {int(spec['max_frame'])}u\n"
    )
    return out


def api_cdef() -> str:
    """The layer's test entry points (every layer/*_api.h) as cffi cdef source."""
    lines = []
    text = "\n".join(p.read_text() for p in sorted(HERE.glob("*_api.h")))
    for line in text.splitlines():
        line = line.split("/*")[0] if "/*" in line and "*/" in line else line
        stripped = line.strip()
        if stripped.startswith(("/*", "*", "//")) or not stripped:
            continue
        lines.append(line)
    return "\n".join(lines)


def build_layer(out_path: str | os.PathLike[str], *, asan: bool = False) -> Path:
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    out = Path(out_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tether-layer-") as tmp:
        gen = Path(tmp)
        generate_protocol_header(gen)
        cc = new_compiler()
        customize_compiler(cc)
        # Python's configured CFLAGS may carry -DNDEBUG and friends; the layer wants its own.
        for attr in ("compiler", "compiler_so", "linker_so"):
            cmd = getattr(cc, attr, None)
            if cmd:
                setattr(cc, attr, [cmd[0]])
        cc.linker_so = [cc.compiler_so[0], "-shared"]
        extra = CFLAGS + (ASAN_FLAGS if asan else [])
        sources = sorted(str(p) for p in CSRC.glob("*.c"))
        objects = cc.compile(sources, output_dir=tmp, include_dirs=[str(CSRC), str(HERE), tmp],
                             extra_preargs=extra)
        cc.link_shared_object(
            objects, out.name, output_dir=str(out.parent),
            libraries=["dl", "pthread"],
            extra_preargs=["-Wl,-z,defs", "-Wl,-z,now"] + (ASAN_FLAGS if asan else []),
        )
    return out


def build_launcher(out_path: str | os.PathLike[str]) -> Path:
    """tether-launch: puts static/Go programs under the seccomp supervisor (see csrc/launch.c)."""
    import subprocess

    out = Path(out_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tether-launch-") as tmp:
        generate_protocol_header(Path(tmp))
        cmd = ["cc", *[f for f in CFLAGS if f not in ("-fPIC", "-fvisibility=hidden")],
               "-I", str(CSRC), "-I", str(HERE), "-I", tmp, "-o", str(out),
               str(CSRC / "launcher" / "main.c"), str(CSRC / "codec.c")]
        subprocess.run(cmd, check=True)
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    target = args[0] if args else str(ROOT / "build" / "libtether_layer.so")
    print(build_layer(target, asan="--asan" in sys.argv))
