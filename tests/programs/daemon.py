"""A classic daemon: fork, setsid, fork, stdio on /dev/null, every other descriptor closed;
the command that started it exits at once.  Once told to go on (a writer opens the FIFO
`go`), it resolves NAME and writes what it got into the FIFO `result`, then exits.

    daemon.py GO_FIFO RESULT_FIFO NAME
"""

import os
import socket
import sys

go, result, name = sys.argv[1:4]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
os.closerange(3, 1 << 16)
with open(go) as f:  # blocks until the test opens the other end
    f.read()
try:
    answer = "ok " + socket.getaddrinfo(name, 80, socket.AF_INET)[0][4][0]
except OSError as exc:
    answer = f"error {exc}"
with open(result, "w") as f:
    f.write(answer + "\n")
