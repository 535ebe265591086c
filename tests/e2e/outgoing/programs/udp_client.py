"""UDP both ways: an unconnected socket (sendto/recvfrom) and a connected one (send/recv)."""
import socket
import sys

host, port = socket.gethostbyname(sys.argv[1]), int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"one", (host, port))
data, peer = u.recvfrom(2048)
print("unconnected:", data.decode(), "from", peer[0])
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect((host, port))
c.send(b"two")
print("connected:", c.recv(2048).decode(), "peer", c.getpeername()[0])
print("local:", c.getsockname()[0])
