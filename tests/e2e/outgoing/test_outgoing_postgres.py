"""Scene: psql on the developer's machine, run under tether, talks to the database only the
pod can reach, by the name only the pod resolves."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("relay", ["0", "1"], ids=["fd", "relay"])
def test_psql_queries_the_database_behind_the_pod(tether, pg_scene, relay):
    front, behind = pg_scene
    res = tether(front, ["psql", "-h", "pg.internal", "-U", "postgres", "-d", "postgres",
                         "-tAc", "select inet_server_addr(), inet_client_addr(), 40 + 2"],
                 env={"TETHER_OUTGOING_RELAY": relay, "PGCONNECT_TIMEOUT": "10"})
    assert res.returncode == 0, res.stderr
    # The server saw the connection come from the pod's side of its link.
    assert res.stdout.strip() == f"{behind.ip}|{behind.gateway}|42"


def test_psql_without_tether_cannot_even_resolve_the_name(pg_scene):
    res = subprocess.run(["psql", "-h", "pg.internal", "-U", "postgres", "-tAc", "select 1"],
                         capture_output=True, text=True, timeout=30,
                         env={"PGCONNECT_TIMEOUT": "3", "PATH": "/usr/bin:/bin"})
    assert res.returncode != 0
