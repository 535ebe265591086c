"""Hot reload (air, nodemon, uvicorn --reload): the wrapper restarts the app, the new
process listens again, and stealing goes on with the new version. It never silently
stops."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from incoming_support import PORT, SILLY, curl

RELOADER = str(Path(__file__).resolve().parents[2] / "programs" / "reloader.py")


def test_steal_follows_the_app_across_reloads(target, session, tmp_path):
    watched = tmp_path / "main.go"
    watched.write_text("v1")
    s = session(target, "steal",
                argv=[sys.executable, RELOADER, str(watched), SILLY, str(PORT), "local"])
    assert curl(target, "/") == "local v1\n"
    for version in (2, 3):
        time.sleep(0.05)
        watched.write_text(f"v{version}")  # the developer saves a file
        deadline = time.monotonic() + 10
        answer = ""
        while time.monotonic() < deadline:
            try:
                answer = curl(target, "/")
            except AssertionError as exc:
                # A connection that lands on the old version's listener as it closes is
                # reset, as it would be without tether; the next one reaches the new one.
                answer = str(exc)
            if answer == f"local v{version}\n":
                break
            time.sleep(0.1)
        assert answer == f"local v{version}\n", s.output
    assert s.proc.poll() is None
