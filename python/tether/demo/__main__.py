"""``tether demo``: the seed's walkthrough, scene by scene, on a throw-away local staging.

Each scene states what the user should see and checks that they do; the demo exits
non-zero at the first scene that does not hold, so `make demo` is also a smoke test.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import testbed
from .staging import APP, Staging, silly_demo

LOCAL_MESSAGE = "This is a silly demo with tether"


class SceneFailed(Exception):
    pass


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"   {line}", flush=True)


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise SceneFailed(what)
    show(f"-> {what}")


def tether_cmd() -> list[str]:
    exe = shutil.which("tether", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "tether.cli"]


def http(url: str, method: str = "GET") -> str:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.read().decode().strip())


def curl(url: str, method: str = "GET") -> str:
    show(f"$ curl {'-X' + method + ' ' if method != 'GET' else ''}\"{url}\"")
    answer = http(url, method)
    show(answer)
    return answer


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


class LocalApp:
    """The developer's changed app, run under `tether exec` with a config file."""

    def __init__(self, stage: Staging, workdir: Path, name: str, incoming: Any) -> None:
        self.port = free_port(8080)
        config: dict[str, Any] = {"target": {"path": stage.target},
                                  "feature": {"network": {"incoming": incoming}}}
        if self.port != 8080:  # 8080 is taken here: serve the pod's 8080 from another port
            inc = config["feature"]["network"]["incoming"]
            inc = {"mode": inc} if isinstance(inc, str) else dict(inc)
            inc["port_mapping"] = [[self.port, 8080]]
            config["feature"]["network"]["incoming"] = inc
            config["feature"]["env"] = {"override": {"PORT": str(self.port)}}
        self.config_file = workdir / ".tether" / f"{name}.json"
        self.config_file.parent.mkdir(exist_ok=True)
        self.config_file.write_text(json.dumps(config, indent=2))
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        show(f"$ cat .tether/{self.config_file.name}")
        show(self.config_file.read_text())
        show(f"$ tether exec --config-file .tether/{self.config_file.name} -- "
             f"python3 app.py --message '{LOCAL_MESSAGE}'")
        env = dict(os.environ)
        for name in ("DB_HOST", "DB_USER", "DB_PASSWORD", "PORT"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            tether_cmd() + ["exec", "--config-file", str(self.config_file), "--",
                            sys.executable, str(APP), "--message", LOCAL_MESSAGE],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
            cwd=self.config_file.parent.parent)
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_for("Starting server", 20)
        # The subscription is made when the app listens; give it a moment to settle.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip())

    def wait_for(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            show(f"[local] {line}")
            if text in line:
                return line
        raise SceneFailed(f"the local app never logged {text!r}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        while not self.lines.empty():
            show(f"[local] {self.lines.get()}")


@contextmanager
def local_app(stage: Staging, workdir: Path, name: str, incoming: Any) -> Iterator[LocalApp]:
    app = LocalApp(stage, workdir, name, incoming)
    try:
        app.start()
        yield app
    finally:
        app.stop()


def scene_remote_context(stage: Staging, workdir: Path) -> None:
    say("Scenes 1+2: mirror, and the remote context (environment, DNS, outgoing network)")
    with local_app(stage, workdir, "mirror", "mirror") as app:
        answer = curl(f"{stage.url}/?something=else")
        expect(answer == "This is a silly demo", "the pod still answers its clients itself")
        app.wait_for("Handling request URI=/?something=else")
        show("-> ...and the local app got a copy of the request (mirror)")
        curl(f"{stage.url}/video?id=WAm3ypS0_wg&title=IDP%20History", "POST")
        local = f"http://127.0.0.1:{app.port}"
        answer = curl(f"{local}/video?id=NLa0K5mybzo&title=Mirrord%20Magic", "POST")
        expect(answer == "stored NLa0K5mybzo",
               "the local app wrote into the database only the pod can reach, "
               "found by a name only the pod resolves, with the pod's credentials")
        rows = curl(f"{stage.url}/videos")
        expect("WAm3ypS0_wg" in rows and "NLa0K5mybzo" in rows,
               "the pod's /videos lists the rows written by both")


def scene_steal(stage: Staging, workdir: Path) -> None:
    say("Scene 3: steal: the pod's requests are answered by the local app")
    with local_app(stage, workdir, "steal", "steal") as app:
        answer = curl(f"{stage.url}/?something=else")
        expect(answer == LOCAL_MESSAGE, "the pod's client got the local app's answer")
        app.wait_for("Handling request URI=/?something=else")
    time.sleep(0.2)
    answer = curl(f"{stage.url}/?something=else")
    expect(answer == "This is a silly demo", "the local app is gone: the pod answers again")


def scene_filter(stage: Staging, workdir: Path) -> None:
    say("Scene 4: filtered steal: only my requests come to my laptop")
    incoming = {"mode": "steal", "http_filter": {"path_filter": ".+user=vfarcic.*"}}
    with local_app(stage, workdir, "filter", incoming):
        answer = curl(f"{stage.url}/?something=else")
        expect(answer == "This is a silly demo", "everyone else keeps the pod's answers")
        answer = curl(f"{stage.url}/?user=vfarcic")
        expect(answer == LOCAL_MESSAGE, "my request was answered by my local app")


def main() -> int:
    if os.geteuid() != 0:
        print("tether demo builds network namespaces: run it as root", file=sys.stderr)
        return 1
    say("Building a throw-away staging (network namespaces, no cluster needed)")
    testbed.ensure_host_setup()
    workdir = Path(tempfile.mkdtemp(prefix="tether-demo-work-"))
    try:
        with testbed.PodFactory() as factory, silly_demo(factory) as stage:
            show(f"pod silly-demo: {stage.url}, app process {stage.app_pid} "
                 f"(target: {stage.target})")
            show(f"database silly-demo-db: {stage.db.pod.ip if stage.db else '-'} "
                 "(reachable only from the pod, named only in the pod's /etc/hosts)")
            curl(f"{stage.url}/")
            scene_remote_context(stage, workdir)
            scene_steal(stage, workdir)
            scene_filter(stage, workdir)
    except SceneFailed as exc:
        print(f"\ndemo: scene failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say("Done: the staging is gone, and so is every trace of tether")
    return 0


if __name__ == "__main__":
    sys.exit(main())
