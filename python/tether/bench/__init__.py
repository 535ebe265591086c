"""Benchmarks (``make bench``): every figure is a ratio against the direct path, measured
in the same run, on this machine's test bed (network namespaces as pods).

A benchmark module in this package defines ``run(ctx: BenchContext) -> list[dict]``; each
dict is one figure: ``name``, ``unit``, ``tether`` and ``direct`` (values), ``ratio``
(tether / direct, or its inverse for throughputs: always "1.0 = as fast as direct"
reading is stated in ``better``: "lower" or "higher"), and optionally ``goal``
(e.g. "<= 1.10") and ``note``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import testbed


class BenchContext:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    @contextmanager
    def make_pod(self, name_hint: str = "bench", **kw: Any) -> Iterator[testbed.Pod]:
        with testbed.make_pod(name_hint, **kw) as pod:
            yield pod

    def tether_cmd(self) -> list[str]:
        exe = shutil.which("tether", path=os.path.dirname(sys.executable))
        return [exe] if exe else [sys.executable, "-m", "tether.cli"]

    def tether_exec(self, pod: testbed.Pod, argv: Sequence[str], **kw: Any) -> list[str]:
        return self.tether_cmd() + ["exec", "-t", f"process/{pod.pid}", *kw.get("args", ()),
                                    "--", *argv]

    def compile_c(self, name: str, source: str, *flags: str) -> Path:
        src = self.workdir / f"{name}.c"
        src.write_text(source)
        exe = self.workdir / name
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), *flags], check=True)
        return exe


def figure(name: str, unit: str, tether: float, direct: float, *, better: str = "lower",
           goal: str | None = None, note: str | None = None) -> dict[str, Any]:
    ratio = tether / direct if direct else float("inf")
    out: dict[str, Any] = {"name": name, "unit": unit, "tether": tether, "direct": direct,
                           "ratio": ratio, "better": better}
    if goal:
        out["goal"] = goal
    if note:
        out["note"] = note
    return out


def median_of(samples: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(samples))


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as d:
        yield Path(d)
