"""Scene: the developer's program resolves a name only the pod knows and talks to a server
only the pod can reach, whatever it is written in; a closed port is refused as in the pod."""

from __future__ import annotations

import pytest
ECHO_PORT, CLOSED_PORT = 7000, 7001

pytestmark = pytest.mark.e2e

LANGS = {
    "c": [],
    "c-nb": ["nb"],
    "py": ["block"],
    "py-async": ["async"],
    "node": [],
}


@pytest.mark.parametrize("lang", list(LANGS))
def test_program_reaches_a_server_only_the_pod_can_reach_by_a_name_only_the_pod_knows(
        tether, out_programs, scene, lang):
    front, behind = scene
    res = tether(front, out_programs[lang] + ["db.internal", str(ECHO_PORT)] + LANGS[lang])
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert f"resolved: {behind.ip}" in lines
    assert f"peer: {behind.ip}" in lines
    assert any(line.startswith("reply:") and f"pong ping from" in line for line in lines), lines


def test_without_tether_the_name_and_the_server_are_out_of_reach(out_programs, scene):
    import subprocess
    res = subprocess.run(out_programs["c"] + ["db.internal", str(ECHO_PORT)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stdout


@pytest.mark.parametrize("lang", ["c", "c-nb", "py", "py-async", "node"])
def test_closed_port_is_refused_like_in_the_pod(tether, out_programs, scene, lang):
    front, behind = scene
    res = tether(front, out_programs[lang] + ["db.internal", str(CLOSED_PORT)] + LANGS[lang])
    assert res.returncode == 3, res.stdout + res.stderr
    assert "ECONNREFUSED" in res.stdout
