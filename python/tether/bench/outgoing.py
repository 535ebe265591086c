"""Outgoing traffic: bulk download and connection set-up through the target.

Scene: a server in a namespace only the pod can reach (``behind=``).  The same C client
runs (a) inside the pod's network namespace directly (nsenter: the physical limit) and
(b) on this machine under ``tether exec``, in the descriptor-passing mode (process targets:
the agent makes the socket in the pod and hands it over, no byte crosses Python) and in
the relay mode Kubernetes targets need (forced with TETHER_OUTGOING_RELAY=1: bytes go
agent -> link -> orchestrator -> loopback).

- bulk: 256 MiB (relay: 64 MiB) read to EOF, MB/s.  Goal for fd mode: ratio >= 0.80.
- set-up: connect + first byte, 200 connections in a row, microseconds per connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from . import BenchContext, figure

NETBENCH_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec / 1e9; }
static char buf[1 << 20];
static int dial(const char *host, const char *port) {
    struct addrinfo h = {0}, *r;
    h.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &h, &r)) { fprintf(stderr, "resolve\n"); exit(1); }
    int fd = socket(r->ai_family, SOCK_STREAM, 0);
    if (connect(fd, r->ai_addr, r->ai_addrlen)) { perror("connect"); exit(1); }
    freeaddrinfo(r);
    return fd;
}
int main(int argc, char **argv) {
    if (!strcmp(argv[1], "serve")) {        /* serve PORT BYTES: bulk on PORT, 1 byte on PORT+1 */
        long long bytes = atoll(argv[3]);
        int port = atoi(argv[2]);
        int ls[2];
        for (int i = 0; i < 2; i++) {
            ls[i] = socket(AF_INET, SOCK_STREAM, 0);
            int one = 1;
            setsockopt(ls[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            struct sockaddr_in a = {AF_INET, htons(port + i), {0}, {0}};
            if (bind(ls[i], (struct sockaddr *)&a, sizeof a) || listen(ls[i], 512)) return 1;
        }
        if (fork() == 0) {
            for (;;) { int c = accept(ls[1], 0, 0); if (write(c, "x", 1)) {} close(c); }
        }
        for (;;) {
            int c = accept(ls[0], 0, 0);
            if (fork() == 0) {
                long long left = bytes;
                while (left > 0) {
                    ssize_t w = write(c, buf, left < (long long)sizeof buf ? left : sizeof buf);
                    if (w <= 0) break;
                    left -= w;
                }
                _exit(0);
            }
            close(c);
        }
    }
    if (!strcmp(argv[1], "bulk")) {         /* bulk HOST PORT -> MB/s */
        double t0 = now();
        int fd = dial(argv[2], argv[3]);
        long long total = 0; ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0) total += r;
        printf("%f %lld\n", total / (now() - t0) / 1e6, total);
        return 0;
    }
    if (!strcmp(argv[1], "lat")) {          /* lat HOST PORT N -> us per connect+first byte */
        int n = atoi(argv[4]);
        char c;
        double t0 = now();
        for (int i = 0; i < n; i++) {
            int fd = dial(argv[2], argv[3]);
            if (read(fd, &c, 1) != 1) { fprintf(stderr, "no byte\n"); return 1; }
            close(fd);
        }
        printf("%f %d\n", (now() - t0) / n * 1e6, n);
        return 0;
    }
    return 2;
}
"""

PORT = 7100
BULK = 256 << 20
RELAY_BULK = 64 << 20
ITER = 200


def _value(argv: list[str], env: dict[str, str] | None = None) -> float:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[:4]}...: {out.stderr.strip()[-400:]}")
    return float(out.stdout.split()[0])


def run(ctx: BenchContext) -> list[dict[str, Any]]:
    exe = str(ctx.compile_c("netbench", NETBENCH_C))
    figures: list[dict[str, Any]] = []
    with ctx.make_pod("outfront") as front, ctx.make_pod(
            "outdb", behind=front, cmd=[exe, "serve", str(PORT), str(BULK)]) as behind:
        behind.wait_port(PORT)
        behind.wait_port(PORT + 1)
        host = behind.ip

        def direct(*args: str) -> float:
            return _value(["nsenter", "-t", str(front.pid), "-n", "--", exe, *args])

        def tethered(*args: str, relay: bool = False) -> float:
            env = {**os.environ, "TETHER_OUTGOING_RELAY": "1" if relay else "0"}
            return _value(ctx.tether_exec(front, [exe, *args]), env=env)

        def best(fn: Any, *args: Any, **kw: Any) -> float:
            return max(fn(*args, **kw) for _ in range(3))

        def least(fn: Any, *args: Any, **kw: Any) -> float:
            return min(fn(*args, **kw) for _ in range(3))

        d_bulk = best(direct, "bulk", host, str(PORT))
        t_bulk = best(tethered, "bulk", host, str(PORT))
        figures.append(figure("bulk download 256 MiB, fd passing", "MB/s", t_bulk, d_bulk,
                              better="higher", goal=">= 0.80"))
        # The relay moves fewer bytes (Python-bound); the server sends 256 MiB, the client
        # reads all of it either way, so the figure is a rate.
        r_bulk = best(tethered, "bulk", host, str(PORT), relay=True)
        figures.append(figure("bulk download 256 MiB, relay (Kubernetes path)", "MB/s",
                              r_bulk, d_bulk, better="higher", goal=">= 0.50",
                              note="bytes cross the orchestrator and the agent"))

        d_lat = least(direct, "lat", host, str(PORT + 1), str(ITER))
        t_lat = least(tethered, "lat", host, str(PORT + 1), str(ITER))
        figures.append(figure(f"connect + first byte x{ITER}, fd passing", "us", t_lat, d_lat,
                              note="one round trip layer -> orchestrator -> agent per connect"))
        r_lat = least(tethered, "lat", host, str(PORT + 1), str(ITER), relay=True)
        figures.append(figure(f"connect + first byte x{ITER}, relay", "us", r_lat, d_lat,
                              note=f"adds {r_lat - d_lat:.0f} us (goal: <= 300 us)"))
    return figures


if __name__ == "__main__":
    from . import workdir

    with workdir() as wd:
        for fig in run(BenchContext(wd)):
            print(fig, file=sys.stderr)
