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


def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("", int(sys.argv[1])))
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(b"pong " + data.strip() + f" to {peer[0]}".encode(), peer)


threading.Thread(target=udp, daemon=True).start()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
