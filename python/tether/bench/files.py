"""Remote files: what reading the target's files costs, and what the path decision costs
on files that stay local.

- Reading a 4 KiB and a 64 MiB file that exists only in the target (open, read to the
  end, close) under `tether exec`, vs the same program reading it inside the target's
  mount namespace directly (nsenter).  Time per read and MB/s.  The data path is native
  (the program reads a descriptor opened in the target), so the difference is the open's
  round trip: orchestrator + agent (about 0.2-0.5 ms on this machine).
- open()+close() of a local path (/etc/ld.so.cache, and a file under the working
  directory) under the layer vs without.  Goal: ratio <= 1.10.
"""

from __future__ import annotations

import statistics
import subprocess
from typing import Any

from . import BenchContext, figure

READER_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    int n = atoi(argv[2]), open_only = argc > 3;
    static char buf[1 << 20];
    long long total = 0;
    double t0 = now();
    for (int i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        ssize_t r;
        while (!open_only && (r = read(fd, buf, sizeof buf)) > 0) total += r;
        close(fd);
    }
    printf("%f %lld\n", (now() - t0) / n, total / n);
    return 0;
}
"""

SMALL, LARGE = 4096, 64 << 20
REMOTE_DIR = "/srv/tether-bench"


def _ns(argv: list[str], **kw: Any) -> tuple[float, int]:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300,
                         **kw).stdout.split()
    return float(out[0]), int(out[1])


def run(ctx: BenchContext) -> list[dict[str, Any]]:
    reader = str(ctx.compile_c("fsreader", READER_C))
    local_file = ctx.workdir / "local.txt"
    local_file.write_bytes(b"x" * SMALL)
    results: list[dict[str, Any]] = []
    files = {f"{REMOTE_DIR}/small": b"s" * SMALL, f"{REMOTE_DIR}/large": b"L" * LARGE}
    with ctx.make_pod("benchfs", files=files) as pod:
        for name, size, iters in (("small", SMALL, 2000), ("large", LARGE, 5)):
            path = f"{REMOTE_DIR}/{name}"
            t, d = [], []
            for _ in range(5):
                ns, got = _ns(ctx.tether_exec(pod, [reader, path, str(iters)]))
                assert got == size, f"read {got} bytes of {path}, expected {size}"
                t.append(ns)
                d.append(_ns(["nsenter", "-t", str(pod.pid), "-m", reader, path,
                              str(iters)])[0])
            label = "4 KiB" if size == SMALL else "64 MiB"
            tm, dm = statistics.median(t), statistics.median(d)
            results.append(figure(f"read a {label} remote file (us/read)", "us", tm / 1e3,
                                  dm / 1e3, note="direct: the same program inside the "
                                  "target's mount namespace"))
            results.append(figure(f"read a {label} remote file (MB/s)", "MB/s",
                                  size / (tm / 1e9) / 1e6, size / (dm / 1e9) / 1e6,
                                  better="higher"))
        for label, path in (("/etc/ld.so.cache", "/etc/ld.so.cache"),
                            ("a file in the working directory", str(local_file))):
            t, d = [], []
            for _ in range(5):
                d.append(_ns([reader, path, "200000", "open-only"])[0])
                t.append(_ns(ctx.tether_exec(pod, [reader, path, "200000", "open-only"]),
                             cwd=ctx.workdir)[0])
            results.append(figure(f"open+close of a local path: {label} (ns/call)", "ns",
                                  statistics.median(t), statistics.median(d), goal="<= 1.10"))
    return results
