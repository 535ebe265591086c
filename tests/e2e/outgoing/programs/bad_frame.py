"""Open a second connection to this process's own session socket, send an oversized frame;
the orchestrator must drop that connection only.  Then resolve a remote name normally."""
import os
import socket
import sys

s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["TETHER_LAYER_SOCK"])
s.sendall(sys.argv[2].encode() and bytes.fromhex(sys.argv[2]))
s.settimeout(5)
try:
    print("bad session:", "closed" if s.recv(100) == b"" else "answered")
except (TimeoutError, ConnectionResetError) as e:
    print("bad session:", "closed" if isinstance(e, ConnectionResetError) else "hang")
print("resolved:", socket.gethostbyname(sys.argv[1]))
