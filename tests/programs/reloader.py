"""A hot-reload wrapper in the way of air, nodemon or `uvicorn --reload`: runs
`python silly_server.py PORT "MESSAGE vN"` and, each time WATCHED changes, kills it and
starts the next version (a new process that binds and listens again).

usage: reloader.py WATCHED SILLY_SERVER PORT MESSAGE"""

import os
import subprocess
import sys
import time

watched, server, port, message = sys.argv[1:5]
version = 1


def start(v: int) -> subprocess.Popen[bytes]:
    print(f"reloader: starting version {v}", flush=True)
    return subprocess.Popen([sys.executable, server, port, f"{message} v{v}"])


child = start(version)
seen = os.stat(watched).st_mtime_ns
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.1)
    now = os.stat(watched).st_mtime_ns
    if now != seen:
        seen = now
        child.terminate()
        child.wait()
        version += 1
        child = start(version)
child.terminate()
