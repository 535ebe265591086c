"""Programs the Kubernetes tests run: a TCP echo service in a pod, and a client that
resolves a name through tether and talks to it."""

ECHO = r'''
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(8)
while True:
    c, a = s.accept(); d = c.recv(1024)
    c.sendall(b"pong " + d + b" from " + a[0].encode()); c.close()
'''
CLIENT = r'''
import socket, sys
print("resolved:", socket.gethostbyname(sys.argv[1]), flush=True)
c = socket.create_connection((sys.argv[1], 7000), timeout=5)
c.sendall(b"ping"); print("reply:", c.recv(1024).decode(), flush=True)
'''
# The same, then it waits for stdin's EOF so a test can look at the cluster meanwhile.
CLIENT_THEN_WAIT = CLIENT + r'''
sys.stdin.read()
print("bye", flush=True)
'''
