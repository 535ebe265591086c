"""Hold a remote and a local connection; after the agent is killed (the test does it once we
print 'ready'), report what each socket does.  SIGTERM (tether ending the program when
the agent is lost) is ignored so the sockets can be observed."""
import signal
import socket
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
remote_host, remote_port, local_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = socket.create_connection((remote_host, remote_port), timeout=10)
loc = socket.create_connection(("127.0.0.1", local_port), timeout=10)
for s in (r, loc):
    s.sendall(b"ping\n")
    s.recv(100)
print("ready", flush=True)
sys.stdin.readline()  # the test killed the agent
time.sleep(0.5)
start = time.monotonic()
try:
    r.sendall(b"again\n")
    got = r.recv(100)
    print("remote:", "eof" if not got else "data")
except OSError as e:
    print("remote: error", e.errno)
print("remote-after: %.1f s" % (time.monotonic() - start))
loc.sendall(b"local\n")
print("local:", "data" if loc.recv(100) else "eof", flush=True)
