"""Programs under the seccomp supervisor (static and Go binaries): what their path calls
cost.

- open()+close() of a local path by a static program: each call is trapped, its path read
  from the program's memory and decided (the layer's decision) in the supervisor's
  receiving thread, then continued.
- The same by a build tool (the same binary named ``cc``): continued in the receiving C
  loop, never reaching Python; this is what `go build` / `go run` pay per path call
  (about 3,500 of them for a warm `go run .` of a small program).
- Reading a 4 KiB file that exists only in the target: open in the target (agent),
  installed with ADDFD; vs the same program inside the target's mount namespace.
- `go run .` of a small program (warm build cache) under `tether exec`, supervised, vs the
  same session with the supervisor off (TETHER_SECCOMP=never): what trapping the build
  tools' path calls costs a development loop.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from typing import Any

from . import BenchContext, figure
from .files import READER_C

REMOTE = "/srv/tether-bench-seccomp/small"


def _ns(argv: list[str]) -> float:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
    return float(out.stdout.split()[0])


def run(ctx: BenchContext) -> list[dict[str, Any]]:
    reader = str(ctx.compile_c("static-reader", READER_C, "-static"))
    tools = ctx.workdir / "tools"
    tools.mkdir()
    build_tool = str(tools / "cc")
    shutil.copy(reader, build_tool)
    os.chmod(build_tool, 0o755)
    results: list[dict[str, Any]] = []
    with ctx.make_pod("benchsc", files={REMOTE: b"s" * 4096}) as pod:
        for label, exe in (("the program", reader), ("a build tool (cc)", build_tool)):
            t, d = [], []
            for _ in range(3):
                d.append(_ns([exe, "/etc/ld.so.cache", "20000", "open-only"]))
                t.append(_ns(ctx.tether_exec(pod, [exe, "/etc/ld.so.cache", "20000",
                                                   "open-only"])))
            results.append(figure(f"static binary, open+close of a local path by {label} "
                                  "(ns/call)", "ns", statistics.median(t),
                                  statistics.median(d)))
        t, d = [], []
        for _ in range(3):
            t.append(_ns(ctx.tether_exec(pod, [reader, REMOTE, "500"])))
            d.append(_ns(["nsenter", "-t", str(pod.pid), "-m", reader, REMOTE, "500"]))
        results.append(figure("static binary, read a 4 KiB remote file (us/read)", "us",
                              statistics.median(t) / 1e3, statistics.median(d) / 1e3,
                              note="direct: the same program inside the target's mount "
                              "namespace"))
        if shutil.which("go"):
            results.append(_go_run(ctx, pod))
    return results


def _go_run(ctx: BenchContext, pod: Any) -> dict[str, Any]:
    app = ctx.workdir / "goapp"
    app.mkdir()
    (app / "go.mod").write_text("module bench/goapp\n\ngo 1.19\n")
    (app / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() '
                                 '{ fmt.Println("hi") }\n')
    env = {**os.environ, "GOCACHE": str(ctx.workdir / "gocache"), "HOME": str(ctx.workdir),
           "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    argv = ctx.tether_exec(pod, ["go", "run", "."])

    def once(extra: dict[str, str]) -> float:
        started = time.monotonic()
        subprocess.run(argv, cwd=app, env={**env, **extra}, check=True, capture_output=True,
                       timeout=300)
        return time.monotonic() - started

    once({})  # fills the build cache
    t, d = [], []
    for _ in range(5):
        t.append(once({}))
        d.append(once({"TETHER_SECCOMP": "never"}))
    return figure("go run . (warm cache), supervised (s)", "s", statistics.median(t),
                  statistics.median(d), note="direct: the same tether exec with "
                  "TETHER_SECCOMP=never (no supervisor)")
