"""Opens COUNT TCP connections and COUNT UDP exchanges to HOST:PORT one after the other,
checking each answer; prints "ok" lines and exits 1 at the first wrong or missing answer.

usage: many_connects.py HOST PORT COUNT"""

import socket
import sys

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(b"ping %d\n" % i)
        answer = c.makefile("rb").readline()
    if not answer.startswith(b"pong ping %d " % i):
        print(f"tcp {i}: wrong answer {answer!r}", flush=True)
        sys.exit(1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.sendto(b"ping %d" % i, (socket.gethostbyname(host), port))
    try:
        data = u.recv(2048)
    except OSError as exc:
        print(f"udp {i}: {exc}", flush=True)
        sys.exit(1)
    finally:
        u.close()
    if not data.startswith(b"pong ping %d " % i):
        print(f"udp {i}: wrong answer {data!r}", flush=True)
        sys.exit(1)
print(f"ok {count}", flush=True)
