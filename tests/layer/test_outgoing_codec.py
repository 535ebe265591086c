"""The layer's outgoing/DNS codec against Python's msgpack, and its decision table."""

from __future__ import annotations

import socket

import msgpack
import pytest
from tether import (
    messages_outgoing,  # noqa: F401  (registers the schemas)
    protocol,
)


def _enc(layer, fn, *args):
    ffi, lib = layer
    buf = ffi.new("unsigned char[]", 1024)
    n = getattr(lib, fn)(buf, 1024, *args)
    assert n > 0
    return bytes(ffi.buffer(buf, n))


def test_out_connect_request_is_what_python_expects(layer_lib):
    addr = socket.inet_pton(socket.AF_INET6, "fd00::1")
    body = _enc(layer_lib, "tl_encode_out_connect", 300, b"tcp", 10, addr, 16, 5432, 1)
    msg = {"t": "out_connect", "id": 300, "proto": "tcp", "family": 10, "addr": addr,
           "port": 5432, "connect": True}
    assert body == msgpack.packb(msg, use_bin_type=True)
    assert protocol.unpack(body) == msg


def test_dns_lookup_request_is_what_python_expects(layer_lib):
    body = _enc(layer_lib, "tl_encode_dns_lookup", 7, b"db.internal", 0, 1)
    msg = {"t": "dns_lookup", "id": 7, "name": "db.internal", "family": 0, "addrconfig": True}
    assert body == msgpack.packb(msg, use_bin_type=True)
    assert protocol.unpack(body) == msg


def test_dns_reply_decodes(layer_lib):
    ffi, lib = layer_lib
    a4, a6 = socket.inet_aton("198.19.0.2"), socket.inet_pton(socket.AF_INET6, "fd00::2")
    body = protocol.pack({"t": "dns_lookup_reply", "id": 1, "canon": "db.example",
                          "addrs": [[2, a4], [10, a6]]})
    fams, addrs = ffi.new("int[4]"), ffi.new("unsigned char[64]")
    canon, eai = ffi.new("char[64]"), ffi.new("int *")
    assert lib.tl_decode_dns_lookup_reply(body, len(body), fams, addrs, 4, canon, 64, eai) == 2
    assert list(fams[0:2]) == [2, 10]
    assert bytes(ffi.buffer(addrs, 32)) == a4 + bytes(12) + a6
    assert ffi.string(canon) == b"db.example"
    err = protocol.pack({"t": "error", "id": 1, "code": "eai", "message": "x", "errno": 2})
    assert lib.tl_decode_dns_lookup_reply(err, len(err), fams, addrs, 4, canon, 64, eai) == -2
    assert eai[0] == -2  # EAI_NONAME
    for cut in (1, 3, 9):
        assert lib.tl_decode_dns_lookup_reply(body[:-cut], len(body) - cut, fams, addrs, 4,
                                              canon, 64, eai) == -1


def test_connect_reply_decodes_both_modes_and_errors(layer_lib):
    ffi, lib = layer_lib
    mode, result = ffi.new("int *"), ffi.new("int *")
    raddr, rlen, rport = ffi.new("unsigned char[16]"), ffi.new("int *"), ffi.new("int *")
    body = protocol.pack({"t": "out_connect_reply", "id": 1, "mode": "fd", "result": 115,
                          "local": []})
    assert lib.tl_decode_out_connect_reply(body, len(body), mode, result, raddr, rlen, rport) == 0
    assert (mode[0], result[0], rlen[0]) == (1, 115, 0)
    body = protocol.pack({"t": "out_connect_reply", "id": 1, "mode": "relay", "result": 0,
                          "relay": [socket.inet_aton("127.0.0.1"), 40000]})
    assert lib.tl_decode_out_connect_reply(body, len(body), mode, result, raddr, rlen, rport) == 0
    assert (mode[0], rlen[0], rport[0]) == (2, 4, 40000)
    body = protocol.pack({"t": "error", "id": 1, "code": "os_error", "message": "x",
                          "errno": 111})
    assert lib.tl_decode_out_connect_reply(body, len(body), mode, result, raddr, rlen,
                                           rport) == -2
    assert result[0] == 111


BASE = "dns=1;out.tcp=1;out.udp=1;out.ignore_lo=0"
TABLE = [
    # (config, proto, ip, port, remote?)
    (BASE, "tcp", "198.19.0.2", 5432, 1),
    (BASE, "udp", "10.96.0.10", 53, 1),
    (BASE, "tcp", "fd00::5", 80, 1),
    (BASE, "tcp", "127.0.0.1", 5432, 0),            # loopback stays local by default
    (BASE, "tcp", "::1", 5432, 0),
    (BASE, "tcp", "::ffff:127.0.0.1", 5432, 0),     # v4-mapped loopback too
    (BASE, "tcp", "0.0.0.0", 80, 0),                # 'this host'
    (BASE.replace("out.tcp=1", "out.tcp=0"), "tcp", "198.19.0.2", 80, 0),
    (BASE.replace("out.udp=1", "out.udp=0"), "udp", "198.19.0.2", 53, 0),
    (BASE + ";out.filter=remote;out.rules=any|198.19.0.0/16|0", "tcp", "198.19.3.4", 1, 1),
    (BASE + ";out.filter=remote;out.rules=any|198.19.0.0/16|0", "tcp", "10.0.0.1", 1, 0),
    (BASE + ";out.filter=remote;out.rules=tcp||5432", "tcp", "10.0.0.1", 5432, 1),
    (BASE + ";out.filter=remote;out.rules=tcp||5432", "udp", "10.0.0.1", 5432, 0),
    (BASE + ";out.filter=remote;out.rules=tcp||5432", "tcp", "127.0.0.1", 5432, 0),
    (BASE + ";out.filter=remote;out.rules=any|127.0.0.1/32|0", "tcp", "127.0.0.1", 80, 1),
    (BASE.replace("ignore_lo=0", "ignore_lo=1") + ";out.filter=remote;out.rules=any|127.0.0.1/32|0",
     "tcp", "127.0.0.1", 80, 0),
    (BASE + ";out.filter=local;out.rules=udp|10.0.0.0/8|53", "udp", "10.1.2.3", 53, 0),
    (BASE + ";out.filter=local;out.rules=udp|10.0.0.0/8|53", "tcp", "10.1.2.3", 53, 1),
    (BASE + ";out.filter=local;out.rules=any|fd00::/8|0", "tcp", "fd00::9", 1, 0),
    (BASE + ";out.filter=local;out.rules=any|fd00::/8|0", "tcp", "fe00::9", 1, 1),
]


@pytest.mark.parametrize("config, proto, ip, port, remote", TABLE)
def test_decision_table(layer_lib, config, proto, ip, port, remote):
    _, lib = layer_lib
    assert lib.tl_outgoing_decide(config.encode(), proto.encode(), ip.encode(), port) == remote


@pytest.mark.parametrize("config, name, remote", [
    (BASE, "db.internal", 1),
    (BASE, "localhost", 0),
    (BASE, "api.localhost.", 0),
    ("dns=0", "db.internal", 0),
    (BASE + ";dns.filter=local;dns.names=db.internal", "DB.internal.", 0),
    (BASE + ";dns.filter=local;dns.names=db.internal", "other", 1),
    (BASE + ";dns.filter=remote;dns.names=a,db.internal", "db.internal", 1),
    (BASE + ";dns.filter=remote;dns.names=a,db.internal", "example.com", 0),
])
def test_dns_decision(layer_lib, config, name, remote):
    _, lib = layer_lib
    assert lib.tl_dns_decide(config.encode(), name.encode()) == remote


def test_connect_reply_local_is_the_target_side_address(layer_lib):
    ffi, lib = layer_lib
    addr, alen, port = ffi.new("unsigned char[16]"), ffi.new("int *"), ffi.new("int *")
    body = protocol.pack({"t": "out_connect_reply", "id": 1, "mode": "relay", "result": 0,
                          "local": [socket.inet_aton("10.1.2.3"), 51000],
                          "relay": [socket.inet_aton("127.0.0.1"), 40000]})
    assert lib.tl_decode_out_connect_local(body, len(body), addr, alen, port) == 0
    assert (bytes(addr[0:4]), alen[0], port[0]) == (socket.inet_aton("10.1.2.3"), 4, 51000)
    body = protocol.pack({"t": "out_connect_reply", "id": 1, "mode": "fd", "result": 0,
                          "local": []})
    assert lib.tl_decode_out_connect_local(body, len(body), addr, alen, port) == -1
