"""The remote-files part of the C layer: its path decisions (the table the orchestrator
builds, evaluated in C) and its fs_* messages against the Python codec."""

from __future__ import annotations

import errno

import pytest
from tether import protocol
from tether.features.files import (
    LOCAL_CONTAINS,
    LOCAL_SUFFIXES,
    REMOTE_READ_ONLY,
    SYSTEM_LOCAL,
    UntranslatableRegex,
    encode_list,
    to_ere,
)
from tether.messages_files import STAT_FIELDS, STATFS_FIELDS

LOCAL, REMOTE, ENOENT = 0, 1, 2


def table(mode: str = "read", **lists: list[str]) -> str:
    entries = {"fs": mode, "fs_lp": encode_list(SYSTEM_LOCAL + ("/root",)),
               "fs_lt": encode_list(["/work/app"]), "fs_ls": encode_list(LOCAL_SUFFIXES),
               "fs_lc": encode_list(LOCAL_CONTAINS), "fs_rr": encode_list(REMOTE_READ_ONLY)}
    for key, patterns in lists.items():
        entries[key] = encode_list(to_ere(p) for p in patterns)
    return ";".join(f"{k}={v}" for k, v in entries.items())


def decide(layer_lib, config: str, path: str, write: bool = False, cwd: str = "/work/app"):
    _, lib = layer_lib
    return lib.tl_fs_decide_with(config.encode(), cwd.encode(), path.encode(), int(write))


@pytest.mark.parametrize("path,write,expected", [
    ("/etc/app/config.yaml", False, REMOTE),      # the target's configuration
    ("/etc/app/config.yaml", True, LOCAL),        # read mode: a write goes to this machine
    ("/var/run/secrets/token", False, LOCAL),     # /var/run is /run: the machine's
    ("/usr/lib/python3.11/os.py", False, LOCAL),
    ("/usr", False, LOCAL),
    ("/usrx/data", False, REMOTE),                # whole components only
    ("/proc/self/maps", False, LOCAL),
    ("/etc/ld.so.cache", False, LOCAL),
    ("/etc/passwd", False, LOCAL),
    ("/etc/ssl/certs/ca.pem", False, REMOTE),     # the pod's certificates
    ("/etc/resolv.conf", False, REMOTE),
    ("/srv/app/main.py", False, LOCAL),           # interpreters' files stay local
    ("/srv/app/node_modules/x/index.json", False, LOCAL),
    ("/srv/app/package.json", False, LOCAL),
    ("/root/.bashrc", False, LOCAL),              # the user's home
    ("/work/app/data.txt", False, LOCAL),         # a local tree (cwd, venv, script dir)
    ("/work", False, LOCAL),                      # ... and its ancestors
    ("/work/other", False, REMOTE),               # but not their other children
    ("data.txt", False, LOCAL),                   # relative: against the local cwd
    ("../../etc/app.conf", False, REMOTE),        # ... normalized lexically
    ("/tmp/../etc/app.conf", False, REMOTE),
    ("/", False, LOCAL),
])
def test_default_decisions_in_read_mode(layer_lib, path, write, expected):
    assert decide(layer_lib, table(), path, write) == expected


def test_write_mode_sends_writes_to_the_target_but_keeps_local_paths_local(layer_lib):
    cfg = table("write")
    assert decide(layer_lib, cfg, "/etc/app/out.log", True) == REMOTE
    assert decide(layer_lib, cfg, "/tmp/out.log", True) == LOCAL


def test_local_mode_and_no_feature_keep_everything_local(layer_lib):
    assert decide(layer_lib, table("local"), "/etc/app/config.yaml") == LOCAL
    assert decide(layer_lib, "skip=gdb", "/etc/app/config.yaml") == LOCAL


# mirrord's own table (layer/src/file/filter.rs), paths with the same outcome here.
@pytest.mark.parametrize("mode,path,write,expected", [
    ("write", "/a/test.a", True, REMOTE),
    ("write", "/pain/read_only/test.a", True, LOCAL),
    ("write", "/pain/local/test.a", False, LOCAL),
    ("read", "/a/test.a", False, REMOTE),
    ("read", "/pain/read_write/test.a", True, REMOTE),
    ("read", "/pain/read_only/test.a", False, REMOTE),
    ("read", "/pain/read_only/test.a", True, LOCAL),
    ("read", "/a/test.a", True, LOCAL),            # Bypass::ReadOnly: the local path
    ("read", "/pain/local/test.a", False, LOCAL),
    ("read", "/opt/test.a", False, LOCAL),
    ("localwithoverrides", "/a/test.a", False, LOCAL),
    ("localwithoverrides", "/pain/read_write/test.a", True, REMOTE),
    ("localwithoverrides", "/pain/read_only/test.a", False, REMOTE),
    ("localwithoverrides", "/pain/local/test.a", False, LOCAL),
    ("localwithoverrides", "/etc/resolv.conf", False, REMOTE),
    ("read", "/pain/gone/x", False, ENOENT),
    ("read", "/PAIN/READ_WRITE/TEST.A", True, REMOTE),  # case-insensitive, as mirrord
])
def test_user_regex_lists_follow_mirrords_order(layer_lib, mode, path, write, expected):
    cfg = table(mode, fs_rw=[r"/pain/read_write.*\.a"], fs_ro=[r"/pain/read_only.*\.a"],
                fs_lo=[r"/pain/local.*\.a"], fs_nf=[r"^/pain/gone(/|$)"])
    assert decide(layer_lib, cfg, path, write) == expected


@pytest.mark.parametrize("pattern,match,nomatch", [
    (r"^/app/\d+\.log$", "/app/12.log", "/app/x.log"),
    (r"(?:secrets|config)/\w+\.ya?ml$", "/etc/config/db.yaml", "/etc/other/db.yaml"),
    (r"(?<name>conf)\.d/.*?\.conf", "/etc/nginx/conf.d/a.conf", "/etc/nginx/a.conf"),
    (r"(?i)^/DATA/[^/]+\.csv", "/data/x.csv", "/data/x/y.txt"),
    (r"a;b=c,d", "/x/a;b=c,d", "/x/a"),           # separators of the layer config
])
def test_user_regexes_translate_to_eres_with_the_same_matches(layer_lib, pattern, match,
                                                               nomatch):
    cfg = table(fs_lo=[pattern])
    assert decide(layer_lib, cfg, match) == LOCAL
    assert decide(layer_lib, cfg, nomatch) == REMOTE


@pytest.mark.parametrize("pattern", [r"(?=x)abc", r"\p{L}+", r"a(?-i)b", r"\1"])
def test_regexes_the_layer_cannot_evaluate_are_refused(pattern):
    with pytest.raises(UntranslatableRegex):
        to_ere(pattern)


@pytest.mark.parametrize("cwd,path,expected", [
    ("/a/b", "c/../d", "/a/b/d"),
    ("/", "x", "/x"),
    ("/a", "/../../x//y/./", "/x/y"),
    ("/a/b", "..", "/a"),
])
def test_paths_are_normalized_lexically(layer_lib, cwd, path, expected):
    ffi, lib = layer_lib
    out = ffi.new("char[]", 4096)
    assert lib.tl_fs_normalize(cwd.encode(), path.encode(), out, 4096) == 0
    assert ffi.string(out).decode() == expected


def c_bytes(layer_lib, fn, *args):
    ffi, lib = layer_lib
    buf = ffi.new("unsigned char[]", 8192)
    n = getattr(lib, fn)(buf, 8192, *args)
    assert n > 0
    return bytes(ffi.buffer(buf, n))


def test_fs_open_request_matches_the_python_codec(layer_lib):
    msg = {"t": "fs_open", "id": 300, "path": "/etc/app/config.yaml", "flags": 0o2101101,
           "mode": 0o644}
    out = c_bytes(layer_lib, "tl_encode_fs_open", 300, msg["path"].encode(), msg["flags"],
                  msg["mode"])
    assert out == protocol.pack(msg)
    assert protocol.unpack(out) == msg


@pytest.mark.parametrize("follow", [True, False])
def test_fs_stat_request_matches_the_python_codec(layer_lib, follow):
    msg = {"t": "fs_stat", "id": 7, "path": "/srv/data", "follow": follow}
    assert c_bytes(layer_lib, "tl_encode_fs_stat", 7, b"/srv/data", follow) == protocol.pack(msg)


@pytest.mark.parametrize("kind", ["fs_readlink", "fs_realpath"])
def test_fs_path_requests_match_the_python_codec(layer_lib, kind):
    msg = {"t": kind, "id": 70000, "path": "/etc/ssl/cert.pem"}
    out = c_bytes(layer_lib, "tl_encode_fs_path", kind.encode(), 70000, b"/etc/ssl/cert.pem")
    assert out == protocol.pack(msg)


def test_c_decodes_replies(layer_lib):
    ffi, lib = layer_lib
    st = [2049, 1 << 40, 0o100644, 1, 1000, 1000, 0, 64 << 20, 4096, 131072,
          1_700_000_000, 999_999_999, 1_700_000_001, 5, 1_700_000_002, 0]
    assert len(st) == len(STAT_FIELDS)
    body = protocol.pack({"t": "fs_stat_reply", "id": 1, "st": st})
    out = ffi.new("long long[16]")
    assert lib.tl_decode_fs_stat(body, len(body), out) == 0
    assert list(out) == st
    body = protocol.pack({"t": "error", "id": 1, "code": "os_error", "message": "x",
                          "errno": errno.ENOENT})
    assert lib.tl_decode_fs_errno(body, len(body)) == errno.ENOENT
    body = protocol.pack({"t": "error", "id": 1, "code": "internal", "message": "x"})
    assert lib.tl_decode_fs_errno(body, len(body)) == errno.EIO
    body = protocol.pack({"t": "fs_realpath_reply", "id": 1, "path": "/etc/ssl/certs/a.pem"})
    assert lib.tl_decode_fs_errno(body, len(body)) == 0
    s = ffi.new("char[]", 64)
    assert lib.tl_decode_fs_string(body, len(body), b"path", s, 64) == 20
    assert ffi.string(s) == b"/etc/ssl/certs/a.pem"
    assert lib.tl_decode_fs_string(body, len(body), b"path", s, 8) == -1


@pytest.mark.parametrize("op,path,to,arg", [
    ("mkdir", "/srv/data/new", "", 0o755),
    ("rename", "/srv/a", "/srv/b", 1),   # RENAME_NOREPLACE
    ("unlink", "/srv/data/x", "", 0),
])
def test_fs_change_request_matches_the_python_codec(layer_lib, op, path, to, arg):
    msg = {"t": "fs_change", "id": 9, "op": op, "path": path, "to": to, "arg": arg}
    out = c_bytes(layer_lib, "tl_encode_fs_change", 9, op.encode(), path.encode(), to.encode(),
                  arg)
    assert out == protocol.pack(msg)


def test_c_decodes_statfs_replies(layer_lib):
    ffi, lib = layer_lib
    sf = [0x01021994, 4096, 1 << 33, 1 << 20, 1 << 19, 1000, 900, -5, 7, 255, 4096, 0x1020]
    assert len(sf) == len(STATFS_FIELDS)
    body = protocol.pack({"t": "fs_statfs_reply", "id": 1, "sf": sf})
    out = ffi.new("long long[12]")
    assert lib.tl_decode_fs_statfs(body, len(body), out) == 0
    assert list(out) == sf
    body = protocol.pack({"t": "fs_statfs_reply", "id": 1, "sf": sf[:5]})
    assert lib.tl_decode_fs_statfs(body, len(body), out) == -1
