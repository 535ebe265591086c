"""A line server for the behind-namespace: answers 'pong <line> from <own address>'."""
import socket
import sys
import threading

srv = socket.create_server(("", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)


def serve(c):
    with c:
        f = c.makefile("rwb")
        for line in f:
            f.write(b"pong " + line.strip() + b" from " + c.getsockname()[0].encode() + b"\n")
            f.flush()


while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
