"""The layer's cost on calls it sees but leaves local, and the start-up latency of a session.

- open("/dev/null")+close, getenv of a local name, socket(AF_UNIX)+close: ns per call in a
  program run under `tether exec` (layer loaded, session live) vs the same program run
  directly.  Goal: ratio <= 1.10.
- Time from starting `tether exec` to the program's first instruction (a constructor that
  reads the clock), on a process target, vs starting the program directly; and the wall
  time of `tether exec -- /bin/true` (start-up and tear-down) vs `/bin/true`.
- One request/reply over tether.link (two Links on a socketpair in one process, the hop
  every remote decision makes twice: layer -> orchestrator -> agent) vs a synchronous
  ping-pong on a socketpair.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

from . import BenchContext, figure

CALLS_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec * 1e9 + t.tv_nsec; }
int main(void) {
    const int N_OPEN = 200000, N_ENV = 2000000, N_SOCK = 200000;
    volatile long sink = 0;
    double t0 = now();
    for (int i = 0; i < N_OPEN; i++) { int fd = open("/dev/null", O_RDONLY); close(fd); }
    double t1 = now();
    for (int i = 0; i < N_ENV; i++) { sink += (long)getenv("HOME"); }
    double t2 = now();
    for (int i = 0; i < N_SOCK; i++) { int fd = socket(AF_UNIX, SOCK_STREAM, 0); close(fd); }
    double t3 = now();
    printf("open_devnull %f\ngetenv_local %f\nsocket_unix %f\n",
           (t1 - t0) / N_OPEN, (t2 - t1) / N_ENV, (t3 - t2) / N_SOCK);
    return (int)(sink & 0);
}
"""

FIRST_C = r"""
#include <stdio.h>
#include <time.h>
__attribute__((constructor)) static void first(void) {
    struct timespec t; clock_gettime(CLOCK_REALTIME, &t);
    printf("%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
}
int main(void) { return 0; }
"""


def _calls(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120,
                         env=env).stdout
    return {k: float(v) for k, v in (line.split() for line in out.splitlines())}


def _first_instruction_ms(argv: list[str]) -> float:
    start = time.time_ns()
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return (int(out.split()[0]) - start) / 1e6


def _wall_ms(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True, timeout=60)
    return (time.perf_counter() - start) * 1e3


def _link_round_trip_us(n: int = 3000) -> float:
    import asyncio
    import socket

    from ..link import Link

    async def main() -> float:
        a, b = socket.socketpair()

        async def pong(link: Link, msg: dict[str, Any]) -> dict[str, Any]:
            return {"t": "pong"}

        la, lb = Link(a, name="a"), Link(b, {"ping": pong}, name="b")
        tasks = [asyncio.create_task(la.serve()), asyncio.create_task(lb.serve())]
        for _ in range(200):
            await la.call({"t": "ping"})
        start = time.perf_counter()
        for _ in range(n):
            await la.call({"t": "ping"})
        took = time.perf_counter() - start
        la.close()
        lb.close()
        for task in tasks:  # (before the read-callback Link, serve() did not return on close)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return took / n * 1e6

    return asyncio.run(main())


def _socketpair_round_trip_us(n: int = 20000) -> float:
    import socket

    a, b = socket.socketpair()
    with a, b:
        start = time.perf_counter()
        for _ in range(n):
            a.send(b"ping")
            b.recv(64)
            b.send(b"pong")
            a.recv(64)
        return (time.perf_counter() - start) / n * 1e6


def run(ctx: BenchContext) -> list[dict[str, Any]]:
    calls = ctx.compile_c("calls", CALLS_C)
    first = ctx.compile_c("first", FIRST_C)
    results: list[dict[str, Any]] = []
    with ctx.make_pod("bench", env={"REMOTE_ONLY": "1"}) as pod:
        # The direct run gets the very environment the session gives (minus the layer), so
        # getenv scans the same list on both sides.
        raw = subprocess.run(ctx.tether_exec(pod, ["env", "-0"]), capture_output=True,
                             check=True, timeout=60).stdout.decode()
        same_env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
        for name in list(same_env):
            if name == "LD_PRELOAD" or name.startswith("TETHER_"):
                del same_env[name]
        direct: dict[str, list[float]] = {}
        tether: dict[str, list[float]] = {}
        for _ in range(5):  # alternate, so drift hits both sides alike
            for k, v in _calls([str(calls)], same_env).items():
                direct.setdefault(k, []).append(v)
            for k, v in _calls(ctx.tether_exec(pod, [str(calls)])).items():
                tether.setdefault(k, []).append(v)
        for op in direct:
            results.append(figure(f"{op} (ns/call)", "ns", statistics.median(tether[op]),
                                  statistics.median(direct[op]), goal="<= 1.10"))
        t_ms = [_first_instruction_ms(ctx.tether_exec(pod, [str(first)])) for _ in range(10)]
        d_ms = [_first_instruction_ms([str(first)]) for _ in range(10)]
        results.append(figure("tether exec -> first instruction (process target)", "ms",
                              statistics.median(t_ms), statistics.median(d_ms),
                              note="absolute start-up latency is the figure that matters: "
                                   "goal <= 60 ms"))
        t_wall = [_wall_ms(ctx.tether_exec(pod, ["/bin/true"])) for _ in range(10)]
        d_wall = [_wall_ms(["/bin/true"]) for _ in range(10)]
        results.append(figure("tether exec -- /bin/true, wall time", "ms",
                              statistics.median(t_wall), statistics.median(d_wall)))
    link = [_link_round_trip_us() for _ in range(5)]
    pair = [_socketpair_round_trip_us() for _ in range(5)]
    results.append(figure("one request/reply over tether.link (in process)", "us",
                          statistics.median(link), statistics.median(pair),
                          note="direct: a synchronous ping-pong on a socketpair"))
    return results
