"""``python -m tether.demo``: the seed's walkthrough on a throw-away local staging."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import testbed

APP = Path(__file__).resolve().parent / "app.py"
LOCAL_MESSAGE = "This is a silly demo with tether"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"   {line}", flush=True)


def tether_cmd() -> list[str]:
    exe = shutil.which("tether", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "tether.cli"]


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode().strip()


@contextmanager
def staging() -> Iterator[testbed.Pod]:
    """The staging namespace: the silly-demo backend pod with its DB credentials."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PORT": "8080",
        "DB_HOST": "silly-demo-db",
        "DB_PORT": "5432",
        "DB_USER": "silly",
        "DB_PASSWORD": secrets.token_hex(8),
        "DB_NAME": "main",
    }
    log = Path(tempfile.mkdtemp(prefix="tether-demo-")) / "silly-demo.log"
    cmd = ["sh", "-c", f'exec "{sys.executable}" "{APP}" >"{log}" 2>&1']
    try:
        with testbed.make_pod("silly-demo", env=env, cmd=cmd) as pod:
            pod.wait_port(8080, timeout=15)
            yield pod
    finally:
        shutil.rmtree(log.parent, ignore_errors=True)


def scene_environment(pod: testbed.Pod) -> None:
    say("Scene: the local app runs with the pod's environment")
    show(f"$ tether exec --target process/{pod.pid} -- python3 app.py   (locally, port 18080)")
    env = dict(os.environ, MESSAGE=LOCAL_MESSAGE, PORT="18080")
    env.pop("DB_HOST", None)
    proc = subprocess.Popen(tether_cmd() + ["exec", "-t", f"process/{pod.pid}", "--",
                                            sys.executable, str(APP)],
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line.rstrip())
        if "Starting server" in line:
            break
    show("\n".join(seen))
    endpoint = next((line for line in seen if "DB Endpoint" in line), "")
    if "silly-demo-db" not in endpoint:
        proc.kill()
        raise SystemExit("demo: the local app did not get the pod's DB_HOST")
    show("-> DB_HOST, DB_USER and DB_PASSWORD came from the pod; this machine has none.")
    proc.terminate()
    proc.wait(timeout=10)


def main() -> int:
    if os.geteuid() != 0:
        print("tether demo builds network namespaces: run it as root", file=sys.stderr)
        return 1
    say("Building a throw-away staging (network namespaces, no cluster needed)")
    testbed.ensure_host_setup()
    with staging() as pod:
        show(f"pod silly-demo: {pod.ip}:8080, process {pod.pid} (target: process/{pod.pid})")
        show(f"$ curl http://{pod.ip}:8080/")
        show(http_get(f"http://{pod.ip}:8080/"))
        scene_environment(pod)
    say("Done: the staging is gone, and so is every trace of tether")
    return 0


if __name__ == "__main__":
    sys.exit(main())
