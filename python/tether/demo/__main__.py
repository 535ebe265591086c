"""``python -m tether.demo``: the seed's walkthrough on a throw-away local staging."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

from .. import testbed
from .staging import APP, Staging, silly_demo

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


def scene_environment(stage: Staging) -> None:
    say("Scene: the local app runs with the pod's environment")
    show(f"$ tether exec --target {stage.target} -- python3 app.py   (locally, port 18080)")
    env = dict(os.environ, MESSAGE=LOCAL_MESSAGE, PORT="18080")
    env.pop("DB_HOST", None)
    proc = subprocess.Popen(tether_cmd() + ["exec", "-t", stage.target, "--",
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
    with testbed.PodFactory() as factory, silly_demo(factory) as stage:
        show(f"pod silly-demo: {stage.url}, app process {stage.app_pid} (target: {stage.target})")
        show(f"database silly-demo-db: {stage.db.pod.ip if stage.db else '-'} "
             "(reachable only from the pod)")
        show(f"$ curl {stage.url}/")
        show(http_get(f"{stage.url}/"))
        scene_environment(stage)
    say("Done: the staging is gone, and so is every trace of tether")
    return 0


if __name__ == "__main__":
    sys.exit(main())
