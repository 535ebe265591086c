"""The seccomp supervisor's pure parts: what it writes into a program's stat buffers (the
kernel's own layouts), and how it decides a program's paths (the layer's decision, plus the
resolver's files)."""

from __future__ import annotations

import ctypes
import os
import platform
import struct

import pytest
from tether.agent.files import stat_list
from tether.features.files import (
    ENOENT,
    LOCAL,
    REMOTE,
    REMOTE_READ_ONLY,
    SYSTEM_LOCAL,
    decide,
    encode_list,
    program_config,
)
from tether.seccomp import _access_allowed, _normalize, _stat_bytes, _statx_bytes

x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 struct stat")
libc = ctypes.CDLL(None, use_errno=True)


@x86_64
def test_stat_buffer_is_what_the_kernel_writes(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1234)
    kernel = ctypes.create_string_buffer(144)
    assert libc.syscall(4, os.fsencode(path), kernel) == 0  # SYS_stat: the raw layout
    assert _stat_bytes(stat_list(os.stat(path))) == kernel.raw


def test_statx_buffer_has_the_kernels_basic_fields(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 4321)
    kernel = ctypes.create_string_buffer(256)
    assert libc.statx(-100, os.fsencode(path), 0, 0x7FF, kernel) == 0
    ours = _statx_bytes(stat_list(os.stat(path)))
    assert len(ours) == 256

    def fields(buf: bytes) -> tuple[int, ...]:
        # nlink uid gid mode | ino size blocks | mtime s, ns | ctime s, ns | dev major minor
        return (*struct.unpack_from("=IIIH", buf, 16), *struct.unpack_from("=QQQ", buf, 32),
                *struct.unpack_from("=qI", buf, 112), *struct.unpack_from("=qI", buf, 96),
                *struct.unpack_from("=II", buf, 136))

    assert fields(ours) == fields(kernel.raw)


@pytest.mark.parametrize("raw,norm", [
    ("/etc/hosts", "/etc/hosts"),
    ("//etc/./hosts", "/etc/hosts"),
    ("/etc/../etc//resolv.conf/", "/etc/resolv.conf"),
    ("/../..", "/"),
])
def test_paths_are_normalized_like_the_layer_does(raw, norm):
    assert _normalize(raw) == norm


READ = ";".join(f"{k}={v}" for k, v in {
    "fs": "read", "fs_lp": encode_list(SYSTEM_LOCAL), "fs_rr": encode_list(REMOTE_READ_ONLY),
    "fs_nf": encode_list(["^/etc/secret"])}.items())


@pytest.mark.parametrize("config,path,write,resolver,expected", [
    (READ, "/etc/app.conf", False, True, REMOTE),
    (READ, "/etc/app.conf", True, True, LOCAL),  # a write in read mode: this machine's
    ("fs=write", "/etc/app.conf", True, True, REMOTE),
    (READ, "/etc/secret/key", False, True, ENOENT),
    (READ, "/tmp/build/out.o", True, True, LOCAL),
    (READ, "/usr/lib/go/src/fmt/print.go", False, True, LOCAL),
    # Go's resolver reads these itself: the target's while DNS goes to the target
    (READ, "/etc/nsswitch.conf", False, True, REMOTE),
    (READ, "/etc/nsswitch.conf", False, False, LOCAL),
    (READ, "/etc/hosts", True, True, LOCAL),
    ("fs=local", "/etc/resolv.conf", False, True, REMOTE),
    ("fs=local", "/etc/resolv.conf", False, False, LOCAL),
    ("fs=local", "/etc/app.conf", False, True, LOCAL),
])
def test_program_paths_are_decided_by_the_layers_rules(config, path, write, resolver,
                                                       expected):
    assert decide(config, path, write, resolver_files=resolver) == expected


def test_the_programs_own_directory_stays_local():
    config = program_config(READ, "/srv/app/bin/server")
    assert decide(config, "/srv/app/templates/index.html", False) == LOCAL
    assert decide(config, "/srv/other/data", False) == REMOTE
    assert decide(READ, "/srv/app/templates/index.html", False) == REMOTE
    # an existing list of local trees is extended, not replaced
    config = program_config(READ + ";fs_lt=/work", "/opt2/tool/run")
    assert decide(config, "/work/x", False) == LOCAL
    assert decide(config, "/opt2/tool/x", False) == LOCAL


@pytest.mark.parametrize("mode,owner,amode,cred,allowed", [
    (0o100644, (1000, 1000), os.F_OK, (2000, 2000), True),
    (0o100644, (1000, 1000), os.R_OK, (2000, 2000), True),
    (0o100640, (1000, 1000), os.R_OK, (2000, 2000), False),
    (0o100640, (1000, 1000), os.R_OK, (2000, 1000), True),   # group
    (0o100600, (1000, 1000), os.R_OK | os.W_OK, (1000, 5), True),  # owner
    (0o100644, (1000, 1000), os.X_OK, (0, 0), False),  # root: no one may execute it
    (0o100744, (1000, 1000), os.X_OK, (0, 0), True),
    (0o040700, (1000, 1000), os.X_OK | os.W_OK, (0, 0), True),  # root: any directory
])
def test_access_is_answered_from_the_targets_stat(mode, owner, amode, cred, allowed):
    st = [0, 0, mode, 1, *owner] + [0] * 10
    assert _access_allowed(st, amode, cred) is allowed


@pytest.mark.parametrize("command,goflags,through_launcher", [
    (["go", "run", "."], "", True),
    (["/usr/bin/go", "test", "./..."], "-mod=mod", True),
    (["go", "-C", "app", "run", "."], "", True),
    (["go", "build", "-o", "app", "."], "", False),  # nothing to run: the top filter stays
    (["go", "generate"], "", False),  # generators are programs too: the top filter stays
    (["go", "run", "-exec=strace", "."], "", False),  # the user's -exec wins
    (["go", "run", "."], "-exec=xprog", False),
    (["air"], "", False),  # air starts the program itself
])
def test_go_run_and_go_test_supervise_the_program_not_the_build(
        tmp_path, command, goflags, through_launcher):
    from tether.starter import _go_run_through_launcher

    launcher = tmp_path / "tether-launch"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    env = {"TETHER_LAYER_SO": str(tmp_path / "libtether_layer.so"), "GOFLAGS": goflags}
    assert _go_run_through_launcher(command, env) is through_launcher
    if through_launcher:
        assert env["GOFLAGS"] == f"{goflags} -exec={launcher}".strip()
        assert env["TETHER_GO_EXEC"] == "1"
    else:
        assert env["GOFLAGS"] == goflags and "TETHER_GO_EXEC" not in env


def test_uname_buffer_is_this_machines_with_the_targets_hostname():
    from tether.seccomp import _utsname_bytes

    kernel = ctypes.create_string_buffer(390)
    assert libc.uname(kernel) == 0
    ours = _utsname_bytes(os.uname(), "silly-demo-7d4f", "(none)")
    assert len(ours) == 390
    fields = [ours[i * 65:(i + 1) * 65].rstrip(b"\0") for i in range(6)]
    assert fields[1] == b"silly-demo-7d4f"
    for i in (0, 2, 3, 4):  # sysname, release, version, machine: this machine's
        assert fields[i] == kernel.raw[i * 65:(i + 1) * 65].rstrip(b"\0")
