"""Scene: the developer's program resolves a name only the pod knows and talks to a server
only the pod can reach, whatever it is written in; a closed port is refused as in the pod."""

from __future__ import annotations

import os
import socket
import threading

import pytest

ECHO_PORT, CLOSED_PORT = 7000, 7001
PROGS = os.path.join(os.path.dirname(__file__), "programs")

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
    assert f"local: {behind.gateway}" in lines
    assert any(line.startswith("reply:") and "pong ping from" in line for line in lines), lines


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


@pytest.mark.parametrize("lang", ["c", "py-async", "node"])
def test_relay_path_works_the_same(tether, out_programs, scene, lang):
    """The path Kubernetes targets take (no descriptor passing), forced for a process."""
    front, behind = scene
    env = {"TETHER_OUTGOING_RELAY": "1"}
    res = tether(front, out_programs[lang] + ["db.internal", str(ECHO_PORT)] + LANGS[lang],
                 env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"peer: {behind.ip}" in res.stdout.splitlines()
    # The program's own address is its socket's in the pod, not the relay's loopback end.
    assert f"local: {behind.gateway}" in res.stdout.splitlines(), res.stdout
    assert "pong ping from" in res.stdout
    res = tether(front, out_programs[lang] + ["db.internal", str(CLOSED_PORT)] + LANGS[lang],
                 env=env)
    assert "ECONNREFUSED" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("relay", ["0", "1"], ids=["fd", "relay"])
def test_udp_sendto_and_connected_udp_go_through_the_pod(tether, out_programs, scene, relay):
    front, behind = scene
    res = tether(front, out_programs["udp-py"] + ["db.internal", str(ECHO_PORT)],
                 env={"TETHER_OUTGOING_RELAY": relay})
    assert res.returncode == 0, res.stdout + res.stderr
    # The server answers to the address it saw: the pod's, not this machine's; the program
    # sees the pod's addresses on both ends, also through the relay.
    assert res.stdout.splitlines() == [
        f"unconnected: pong one to {behind.gateway} from {behind.ip}",
        f"connected: pong two to {behind.gateway} peer {behind.ip}",
        f"local: {behind.gateway}",
    ]


@pytest.mark.parametrize("relay", ["0", "1"], ids=["fd", "relay"])
def test_udp_from_c_keeps_datagram_boundaries_and_addresses(tether, out_programs, scene,
                                                            relay):
    """sendmsg/recvmsg on an unconnected socket, two datagrams on a connected one."""
    front, behind = scene
    res = tether(front, out_programs["udp-c"] + ["db.internal", str(ECHO_PORT)],
                 env={"TETHER_OUTGOING_RELAY": relay})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [
        f"unconnected: pong one to {behind.gateway} from {behind.ip}",
        "unconnected peer: ENOTCONN",
        f"then connected: pong three to {behind.gateway}",
        f"datagram: pong a to {behind.gateway}",
        f"datagram: pong bb to {behind.gateway}",
        f"peer: {behind.ip}",
        f"local: {behind.gateway}",
    ]


def _local_line_server():
    srv = socket.create_server(("127.0.0.1", 0))

    def run():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                c.sendall(c.recv(100).replace(b"ping", b"local-ping"))

    threading.Thread(target=run, daemon=True).start()
    return srv


def test_loopback_stays_on_this_machine(tether, out_programs, scene):
    front, _ = scene
    srv = _local_line_server()
    try:
        res = tether(front, out_programs["c"] + ["127.0.0.1", str(srv.getsockname()[1])])
    finally:
        srv.close()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reply: local-ping" in res.stdout


@pytest.mark.parametrize("outgoing, reaches", [
    ({"filter": {"remote": ["198.19.0.0/16:7000"]}}, True),
    ({"filter": {"remote": ["tcp://db.internal"]}}, True),
    ({"filter": {"remote": ["udp://db.internal"]}}, False),
    ({"filter": {"local": ["db.internal:7000"]}}, False),
    ({"filter": {"local": ["10.0.0.0/8"]}}, True),
    ({"tcp": False}, False),
])
def test_outgoing_filter_decides_what_leaves_through_the_pod(
        tether, out_programs, scene, outgoing, reaches):
    front, _ = scene
    res = tether(front, out_programs["c"] + ["db.internal", str(ECHO_PORT)],
                 config={"feature": {"network": {"outgoing": outgoing}}})
    assert (res.returncode == 0) == reaches, res.stdout + res.stderr


@pytest.mark.parametrize("dns, resolves", [
    (False, False),
    ({"filter": {"local": ["db.internal"]}}, False),
    ({"filter": {"remote": ["db.internal"]}}, True),
    ({"filter": {"remote": ["other.internal"]}}, False),
])
def test_dns_config_decides_who_resolves(tether, out_programs, scene, dns, resolves):
    front, behind = scene
    res = tether(front, out_programs["py"] + ["db.internal", str(ECHO_PORT)],
                 config={"feature": {"network": {"dns": dns}}})
    assert (f"resolved: {behind.ip}" in res.stdout) == resolves, res.stdout + res.stderr


def test_short_name_resolves_with_the_pods_nameserver_and_search_domain(
        tether, out_programs, pod_factory):
    """The pod's resolv.conf names a cluster DNS (dnsmasq) and a search domain."""
    ns = pod_factory("cdns", cmd=["dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=53", "--pid-file=",
                                  "--listen-address=0.0.0.0", "--bind-interfaces",
                                  "--host-record=api.team.svc.cluster.local,127.0.0.7",
                                  "--local=/team.svc.cluster.local/", "--local=//"])
    front = pod_factory("front", dns=ns.ip)
    with open(f"/etc/netns/{front.name}/resolv.conf", "a") as f:
        f.write("search team.svc.cluster.local svc.cluster.local\noptions ndots:5\n")
    for lang in ("c", "py", "node"):
        res = tether(front, out_programs[lang] + ["api", "1"])
        assert "resolved: 127.0.0.7" in res.stdout.splitlines(), (lang, res.stdout, res.stderr)
