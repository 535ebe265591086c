"""Agent side of remote files: open, stat, readlink, realpath, statfs, mkdir, rmdir, unlink
and rename inside the target's root.

Every path is resolved *inside* the target's filesystem: ``openat2(2)`` with
``RESOLVE_IN_ROOT`` on a descriptor of ``/proc/<pid>/root``, so ``..`` and absolute
symlinks in the target (``/etc/ssl/cert.pem -> /etc/ssl/certs/...``, Kubernetes secret
mounts ``..data`` links) stay in the target's tree and never escape to the agent's own
root, and magic links (``/proc/self/...``) are refused.  The opened descriptor travels
to the orchestrator, which hands it to the layer: the program's I/O on it is native.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stat_mod
from typing import Any

from .. import messages_files  # noqa: F401  (registers the fs_* messages)
from ..link import Handler, Link
from ..protocol import Message

_SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_MAX_READ = 4 << 20
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """Open ``path`` as the target sees it (resolved inside ``root_fd``); returns an fd."""
    # open(2) ignores the file-type bits of a mode (libuv's copyfile passes the source's
    # st_mode); openat2(2) refuses them with EINVAL, so keep only the permission bits.
    mode = mode & 0o7777 if flags & (os.O_CREAT | os.O_TMPFILE) else 0
    how = _OpenHow(flags | os.O_CLOEXEC, mode,
                   RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    raw = os.fsencode(path)
    while True:
        fd = _libc.syscall(_SYS_OPENAT2, root_fd, raw, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err), path)


def root_fd(link: Link) -> int:
    """A descriptor of the target's root, opened once per orchestrator link."""
    fd = link.state.get("fs_root_fd")
    if fd is None:
        pid = link.state["ctx"].target_pid
        fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        link.state["fs_root_fd"] = fd
        link.state.setdefault("cleanups", []).append(lambda: os.close(fd))
    return int(fd)


def stat_list(st: os.stat_result) -> list[int]:
    """The wire form of a stat (messages_files.STAT_FIELDS)."""
    return [st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
            st.st_size, st.st_blksize, st.st_blocks,
            st.st_atime_ns // 10**9, st.st_atime_ns % 10**9,
            st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9,
            st.st_ctime_ns // 10**9, st.st_ctime_ns % 10**9]


def _split(path: str) -> tuple[str, str]:
    head, _, base = path.rstrip("/").rpartition("/")
    return head or "/", base or "."


def realpath_in_root(root: int, path: str) -> str:
    """Canonical path of ``path`` inside the target root (symlinks resolved in the root)."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/" + "/".join(done + [part])
        fd = openat2_in_root(root, candidate, os.O_PATH | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if stat_mod.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            head, base = _split(candidate)
            dfd = openat2_in_root(root, head, os.O_PATH | os.O_DIRECTORY)
            try:
                target = os.readlink(base, dir_fd=dfd)
            finally:
                os.close(dfd)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if parts and not stat_mod.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        done.append(part)
    return "/" + "/".join(done)


async def _fs_open(link: Link, msg: Message) -> Message:
    fd = openat2_in_root(root_fd(link), msg["path"], msg["flags"] & ~os.O_CLOEXEC, msg["mode"])
    return {"t": "fs_open_reply", "_fds": [fd]}


async def _fs_stat(link: Link, msg: Message) -> Message:
    flags = os.O_PATH | (0 if msg["follow"] else os.O_NOFOLLOW)
    fd = openat2_in_root(root_fd(link), msg["path"], flags)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return {"t": "fs_stat_reply", "st": stat_list(st)}


async def _fs_readlink(link: Link, msg: Message) -> Message:
    head, base = _split(msg["path"])
    dfd = openat2_in_root(root_fd(link), head, os.O_PATH | os.O_DIRECTORY)
    try:
        target = os.readlink(base, dir_fd=dfd)
    finally:
        os.close(dfd)
    return {"t": "fs_readlink_reply", "target": target}


async def _fs_realpath(link: Link, msg: Message) -> Message:
    return {"t": "fs_realpath_reply", "path": realpath_in_root(root_fd(link), msg["path"])}


class _Statfs(ctypes.Structure):  # struct statfs (x86_64, aarch64: the same layout)
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long),
                ("f_blocks", ctypes.c_uint64), ("f_bfree", ctypes.c_uint64),
                ("f_bavail", ctypes.c_uint64), ("f_files", ctypes.c_uint64),
                ("f_ffree", ctypes.c_uint64), ("f_fsid", ctypes.c_int * 2),
                ("f_namelen", ctypes.c_long), ("f_frsize", ctypes.c_long),
                ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


_RENAMEAT2 = _libc.renameat2
_RENAMEAT2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]


def _parent(root: int, path: str) -> tuple[int, str]:
    """The directory holding ``path`` (an O_PATH descriptor, resolved in the target's
    root) and the last component, which is acted on without following it."""
    head, base = _split(path)
    return openat2_in_root(root, head, os.O_PATH | os.O_DIRECTORY), base


async def _fs_change(link: Link, msg: Message) -> Message:
    """mkdir / rmdir / unlink / rename in the target; the kernel's errno is the answer."""
    root, op = root_fd(link), msg["op"]
    dfd, base = _parent(root, msg["path"])
    try:
        if op == "mkdir":
            os.mkdir(base, msg["arg"] & 0o7777, dir_fd=dfd)
        elif op == "rmdir":
            os.rmdir(base, dir_fd=dfd)
        elif op == "unlink":
            os.unlink(base, dir_fd=dfd)
        elif op == "rename":
            tfd, tbase = _parent(root, msg["to"])
            try:
                if _RENAMEAT2(dfd, os.fsencode(base), tfd, os.fsencode(tbase),
                              msg["arg"] & 0xFFFFFFFF) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), msg["to"])
            finally:
                os.close(tfd)
        else:
            raise OSError(errno.EINVAL, f"unknown fs_change op {op!r}")
    finally:
        os.close(dfd)
    return {"t": "fs_change_reply"}


async def _fs_statfs(link: Link, msg: Message) -> Message:
    fd = openat2_in_root(root_fd(link), msg["path"], os.O_PATH)
    buf = _Statfs()
    try:
        if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), msg["path"])
    finally:
        os.close(fd)
    return {"t": "fs_statfs_reply",
            "sf": [buf.f_type, buf.f_bsize, buf.f_blocks, buf.f_bfree, buf.f_bavail,
                   buf.f_files, buf.f_ffree, buf.f_fsid[0], buf.f_fsid[1], buf.f_namelen,
                   buf.f_frsize, buf.f_flags]}


async def _fs_read(link: Link, msg: Message) -> Message:
    fd = openat2_in_root(root_fd(link), msg["path"], os.O_RDONLY)
    try:
        data = os.pread(fd, max(0, min(int(msg["size"]), _MAX_READ)), int(msg["offset"]))
    finally:
        os.close(fd)
    return {"t": "fs_read_reply", "data": data}


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "l"
    if entry.is_dir(follow_symlinks=False):
        return "d"
    if entry.is_file(follow_symlinks=False):
        return "f"
    return "o"


async def _fs_list(link: Link, msg: Message) -> Message:
    fd = openat2_in_root(root_fd(link), msg["path"], os.O_RDONLY | os.O_DIRECTORY)
    entries: list[list[Any]] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                kind = _kind(entry)
                target = os.readlink(entry.name, dir_fd=fd) if kind == "l" else ""
                entries.append([entry.name, kind, target])
    finally:
        os.close(fd)
    return {"t": "fs_list_reply", "entries": entries}


HANDLERS: dict[str, Handler] = {
    "fs_open": _fs_open,
    "fs_stat": _fs_stat,
    "fs_readlink": _fs_readlink,
    "fs_realpath": _fs_realpath,
    "fs_read": _fs_read,
    "fs_list": _fs_list,
    "fs_change": _fs_change,
    "fs_statfs": _fs_statfs,
}
