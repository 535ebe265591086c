"""The agent's resolver: the target's hosts file, resolv.conf (search, ndots) and a real
nameserver (dnsmasq) inside a pod."""

from __future__ import annotations

import asyncio
import shutil
import socket

import pytest
from tether.agent import dns


def test_resolv_conf_and_search_candidates():
    conf = dns.parse_resolv_conf(
        "# k8s\nnameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local\n"
        "options ndots:5 timeout:2 attempts:3\n")
    assert conf.nameservers == ["10.96.0.10"]
    assert (conf.ndots, conf.timeout, conf.attempts) == (5, 2.0, 3)
    assert dns.candidates("db", conf) == ["db.ns.svc.cluster.local", "db.svc.cluster.local", "db"]
    assert dns.candidates("example.com.", conf) == ["example.com"]
    conf.ndots = 1
    assert dns.candidates("example.com", conf)[0] == "example.com"


def test_hosts_file_aliases_and_case():
    table = dns.parse_hosts("10.0.0.1 Db db.local # c\nfd00::1 db\nbogus line\n")
    assert table["db"] == [("Db", "10.0.0.1"), ("db", "fd00::1")]
    assert table["db.local"] == [("Db", "10.0.0.1")]


def test_query_wire_format_round_trip():
    q = dns.build_query(0x1234, "a.example", 1)
    # A response: the query echoed with QR set, one CNAME answer and one A answer.
    resp = bytearray(q)
    resp[2:4] = b"\x81\x80"
    resp[6:8] = b"\x00\x02"
    resp += b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x04\x01b\xc0\x0e"  # CNAME b.example
    resp += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x07"
    rcode, tc, records = dns.parse_response(bytes(resp), 0x1234)
    assert (rcode, tc) == (0, False)
    assert records[0] == (5, "a.example", b"b.example")
    assert records[1][2] == socket.inet_aton("10.0.0.7")
    with pytest.raises(ValueError):
        dns.parse_response(bytes(resp), 0x9999)


def test_resolves_through_the_pods_nameserver_with_search_domains(pod_factory, tmp_path):
    assert shutil.which("dnsmasq"), "dnsmasq is missing: make install (scripts/bootstrap.sh)"
    ns = pod_factory("dns", cmd=["dnsmasq", "-k", "--no-resolv", "--no-hosts",
                                 "--port=53", "--listen-address=0.0.0.0", "--bind-interfaces",
                                 "--host-record=db.ns.svc.cluster.local,198.19.7.7",
                                 "--local=/ns.svc.cluster.local/", "--local=//",
                                 "--cname=alias.ns.svc.cluster.local,db.ns.svc.cluster.local"])
    # The target's files, as the agent reads them under /proc/<pid>/root.
    root = tmp_path
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/resolv.conf").write_text(
        f"nameserver {ns.ip}\nsearch ns.svc.cluster.local\noptions ndots:5 timeout:1 attempts:2\n")
    for _ in range(50):
        if any(line.split()[1].endswith(":0035") for line in
               open(f"/proc/{ns.pid}/net/udp").read().splitlines()[1:]):
            break
        import time
        time.sleep(0.05)
    canon, addrs = asyncio.run(dns.resolve(str(root), "db", socket.AF_INET))
    assert addrs == [(socket.AF_INET, socket.inet_aton("198.19.7.7"))]
    assert canon == "db.ns.svc.cluster.local"
    canon, addrs = asyncio.run(dns.resolve(str(root), "alias", socket.AF_INET))
    assert addrs == [(socket.AF_INET, socket.inet_aton("198.19.7.7"))]
    with pytest.raises(dns.LookupError_) as info:
        asyncio.run(dns.resolve(str(root), "nosuch", socket.AF_INET))
    assert info.value.eai == dns.EAI_NONAME
