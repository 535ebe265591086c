"""Remote files (feature.fs), orchestrator side: the layer's decision table and the
``fs_*`` requests it sends when a path is remote.

The C layer decides local / remote / ENOENT without a round trip, from the table
``layer_config()`` builds: the mode, the default local paths (``default_local()``), and
the user's ``read_write``/``read_only``/``local``/``not_found`` regexes translated to
POSIX EREs (``to_ere``), which the layer compiles once with ``regcomp``.  Only remote
paths reach this module, which applies ``mapping`` (Python regexes, mirrord's replacement
syntax) and forwards to the agent.  The agent's descriptor is handed to the layer as is;
when the agent's link cannot carry descriptors (or ``TETHER_FS_RELAY=1``) the content is
relayed into a memfd (files) or a shadow directory of empty entries (directories), read
only.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable
from typing import Any

from .. import messages_files  # noqa: F401  (registers the fs_* messages)
from ..config import compile_pattern, python_replacement
from ..link import Handler, Link, RemoteError
from ..protocol import Message
from ..targets import TargetError

log = logging.getLogger("tether.files")

# Paths the program needs from this machine, whatever the target has (see
# docs/architecture.md, "Remote files").  Whole path components: "/usr" is "/usr/...".
SYSTEM_LOCAL = (
    "/proc", "/sys", "/dev", "/run", "/var/run", "/usr", "/lib", "/lib32", "/lib64",
    "/libx32", "/bin", "/sbin", "/boot", "/tmp", "/var/tmp", "/nix", "/snap", "/opt",
    "/selinux", "/home",
    # /etc is the target's (its config, its certificates), except what configures this
    # machine's loader, libc, users and terminal.
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ld.so.preload",
    "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow",
    "/etc/localtime", "/etc/timezone", "/etc/gai.conf", "/etc/host.conf", "/etc/mtab",
    "/etc/alternatives", "/etc/ssl/openssl.cnf", "/etc/terminfo", "/etc/inputrc",
    "/etc/locale.alias", "/etc/locale.conf", "/etc/default/locale", "/etc/environment",
    "/etc/profile", "/etc/profile.d", "/etc/bash.bashrc", "/etc/shells", "/etc/pam.d",
    "/etc/security", "/etc/login.defs", "/etc/sudoers", "/etc/sudoers.d", "/etc/fonts",
    "/etc/python3", "/etc/python3.11", "/etc/python3.12",
)
# Interpreters' and build tools' own files, wherever they are (mirrord's list).
LOCAL_SUFFIXES = (
    ".so", ".py", ".pyc", ".pth", ".js", ".mjs", ".cjs", ".jar", ".class", ".pdb", ".dll",
    "venv.cfg", "/package.json", "/.yarnrc", "/.yarnrc.yml", "/.yarnrc.json",
    "/.tool-versions", "/jvm.cfg", "/node_modules", "/__pycache__",
)
LOCAL_CONTAINS = ("/node_modules/", "/__pycache__/", "/site-packages/", "/dist-packages/",
                  "/.asdf/")
# Read from the target even where a default would keep them local (DNS configuration).
REMOTE_READ_ONLY = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")
# What a resolver that reads its configuration itself (Go's, a static libc's) reads: from
# the target whenever DNS goes through the target, whatever feature.fs says.
RESOLVER_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf")
# decide()'s answers (the layer's FS_* values; a write in read mode is LOCAL, as in mirrord).
LOCAL, REMOTE, ENOENT = 0, 1, 2

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_RELAY_CHUNK = 4 << 20
_CONFIG_CAP = 8000  # the layer keeps TETHER_LAYER_CONFIG in 8 KiB


def _escape(item: str) -> str:
    return (item.replace("%", "%25").replace(",", "%2C").replace(";", "%3B")
            .replace("=", "%3D"))


def encode_list(items: Iterable[str]) -> str:
    """A layer config list: comma separated, percent-encoded items."""
    return ",".join(_escape(i) for i in dict.fromkeys(items) if i)


def default_local(env: dict[str, str], cwd: str) -> tuple[list[str], list[str]]:
    """(prefixes, trees): local path prefixes, and local trees whose ancestors are local
    too (the program's working directory and environments: a runtime stats and lists
    every directory above its code)."""
    prefixes = list(SYSTEM_LOCAL)
    home = env.get("HOME", "")
    if home.startswith("/") and home.rstrip("/"):
        prefixes.append(home.rstrip("/"))
    for tmp in (env.get("TMPDIR", ""), tempfile.gettempdir()):
        if tmp.startswith("/") and tmp.rstrip("/"):
            prefixes.append(tmp.rstrip("/"))
    # tether's own installation (the layer is loaded from there)
    trees = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    if cwd.rstrip("/"):
        trees.append(cwd.rstrip("/"))
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONHOME"):
        if env.get(var, "").startswith("/"):
            trees.append(env[var].rstrip("/"))
    for var in ("PYTHONPATH", "NODE_PATH"):
        trees += [p.rstrip("/") for p in env.get(var, "").split(":") if p.startswith("/")]
    return prefixes, [t for t in trees if t]


# ---- user regexes: mirrord (Rust regex) -> POSIX ERE, evaluated by the layer ----
_CLASSES = {"d": "[0-9]", "D": "[^0-9]", "w": "[[:alnum:]_]", "W": "[^[:alnum:]_]",
            "s": "[[:space:]]", "S": "[^[:space:]]"}
_IN_CLASS = {"d": "0-9", "w": "[:alnum:]_", "s": "[:space:]"}
_libc = ctypes.CDLL(None)


class UntranslatableRegex(ValueError):
    pass


def to_ere(pattern: str) -> str:
    """Translate a mirrord regex to a glibc ERE with the same matches for path tests.

    Handles escapes (\\d \\w \\s and their negations, \\. etc.), non-capturing and named
    groups, lazy quantifiers (laziness does not change whether a path matches) and a
    leading ``(?i)`` (matching is case-insensitive anyway).  Anything else that an ERE
    cannot express (look-around, \\p{..}, inline flags mid-pattern) is refused."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    if pattern.startswith("(?i)"):
        i = 4
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt in _CLASSES:
                if in_class:
                    if nxt not in _IN_CLASS:
                        raise UntranslatableRegex(f"\\{nxt} inside [...]")
                    out.append(_IN_CLASS[nxt])
                else:
                    out.append(_CLASSES[nxt])
            elif nxt in "pPAzZhHbBkK" or nxt.isdigit():
                if nxt in "bB" and not in_class:
                    out.append("\\" + nxt)  # glibc supports word boundaries
                else:
                    raise UntranslatableRegex(f"\\{nxt}")
            elif nxt == "n":
                out.append("\n")
            elif nxt == "t":
                out.append("\t")
            elif in_class:
                out.append("\\\\" if nxt == "\\" else nxt if nxt != "]" else "\\]")
            else:
                out.append("[" + nxt + "]" if nxt not in "^\\" else "\\" + nxt)
            i += 2
            continue
        if in_class:
            if c == "]" and out[-1] not in ("[", "[^"):
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^")
                i += 2
            else:
                out.append("[")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        if c == "(" and pattern.startswith("(?", i):
            m = re.match(r"\(\?(?::|P?<[A-Za-z_][A-Za-z0-9_]*>)", pattern[i:])
            if not m:
                raise UntranslatableRegex(pattern[i:i + 4])
            out.append("(")
            i += len(m.group(0))
            continue
        if c in "*+?}" and i + 1 < n and pattern[i + 1] == "?":
            out.append(c)  # lazy: same set of matching paths
            i += 2
            continue
        out.append(c)
        i += 1
    ere = "".join(out)
    _check_ere(ere, pattern)
    return ere


def _check_ere(ere: str, original: str) -> None:
    buf = ctypes.create_string_buffer(256)  # regex_t is 64 bytes on glibc
    rc = _libc.regcomp(buf, ere.encode(), 1 | 2 | 8)  # REG_EXTENDED|REG_ICASE|REG_NOSUB
    if rc != 0:
        raise UntranslatableRegex(f"not a valid pattern ({original!r})")
    _libc.regfree(buf)


_decide_lock = threading.Lock()


@functools.cache
def _layer_decision() -> Any:
    """The layer's own decision function (csrc/files.c), for programs the layer cannot
    reach: the seccomp supervisor decides their paths with the very same code."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef("int tl_fs_decide_with(const char *config, const char *cwd, const char *path,"
             " int write);")
    return ffi.dlopen(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "libtether_layer.so"))


def program_config(layer_config: str, exe: str) -> str:
    """``layer_config`` with the program's own directory local, as the layer adds it for
    the program it is loaded in (its executable's directory; the parent of a bin/)."""
    where = os.path.dirname(exe)
    if os.path.basename(where) == "bin":
        where = os.path.dirname(where)
    if not where.rstrip("/"):
        return layer_config
    entries = [e for e in layer_config.split(";") if e]
    for i, entry in enumerate(entries):
        if entry.startswith("fs_lt="):
            entries[i] = entry + "," + _escape(where)
            break
    else:
        entries.append("fs_lt=" + _escape(where))
    return ";".join(entries)


def decide(config: str, path: str, write: bool, resolver_files: bool = False) -> int:
    """LOCAL, REMOTE or ENOENT for an absolute ``path`` under ``config`` (a layer
    config), exactly as the layer decides; ``resolver_files``: RESOLVER_FILES are read
    from the target (DNS goes there)."""
    if resolver_files and not write and path in RESOLVER_FILES:
        return REMOTE
    with _decide_lock:  # the C side keeps its table in a static
        r = _layer_decision().tl_fs_decide_with(config.encode(), b"/", os.fsencode(path),
                                                int(write))
    return LOCAL if r < 0 else int(r)


class Feature:
    """feature.fs for one session."""

    def __init__(self, orch: Any) -> None:
        self.orch = orch
        self.fs = orch.config.feature.fs
        self.relay = (orch.local_env.get("TETHER_FS_RELAY") == "1"
                      or not getattr(orch.agent, "can_pass_fds", True))
        self.mapping = [(compile_pattern(k, ignore_case=True), python_replacement(v))
                        for k, v in self.fs.mapping.items()]
        self._shadow_root: str | None = None
        self._said_read_only = False
        self._entries = self._build_entries()

    # ---- the layer's table ----
    def _build_entries(self) -> dict[str, str]:
        if self.fs.mode == "local":
            return {"fs": "local"}
        prefixes, trees = default_local(self.orch.local_env, self.orch.cwd)
        entries = {
            "fs": self.fs.mode,
            "fs_lp": encode_list(prefixes),
            "fs_lt": encode_list(trees),
            "fs_ls": encode_list(LOCAL_SUFFIXES),
            "fs_lc": encode_list(LOCAL_CONTAINS),
            "fs_rr": encode_list(REMOTE_READ_ONLY),
        }
        for key, patterns in (("fs_rw", self.fs.read_write), ("fs_ro", self.fs.read_only),
                              ("fs_lo", self.fs.local), ("fs_nf", self.fs.not_found)):
            name = {"fs_rw": "read_write", "fs_ro": "read_only", "fs_lo": "local",
                    "fs_nf": "not_found"}[key]
            eres = []
            for i, pattern in enumerate(patterns):
                try:
                    eres.append(to_ere(pattern))
                except UntranslatableRegex as exc:
                    raise TargetError(
                        f"feature.fs.{name}[{i}]: {pattern!r} uses regex syntax tether "
                        f"cannot evaluate in the layer ({exc}); rewrite it without it"
                    ) from None
            if eres:
                entries[key] = encode_list(eres)
        size = sum(len(k) + len(v) + 2 for k, v in entries.items())
        if size > _CONFIG_CAP:
            raise TargetError(f"feature.fs: {size} bytes of path rules exceed what the layer "
                              f"keeps ({_CONFIG_CAP}); shorten the regex lists")
        return entries

    def layer_config(self) -> dict[str, str]:
        return dict(self._entries)

    def layer_handlers(self) -> dict[str, Handler]:
        if self.fs.mode == "local":
            return {}
        return {"fs_open": self._open, "fs_stat": self._forward,
                "fs_readlink": self._forward, "fs_realpath": self._forward,
                "fs_statfs": self._forward, "fs_change": self._change}

    async def stop(self) -> None:
        if self._shadow_root:
            shutil.rmtree(self._shadow_root, ignore_errors=True)

    # ---- requests ----
    def mapped(self, path: str) -> str:
        for regex, replacement in self.mapping:
            if regex.search(path):
                return regex.sub(replacement, path, count=1)
        return path

    async def _agent(self, msg: Message) -> Message:
        request = {k: v for k, v in msg.items() if k not in ("id", "_fds", "fds")}
        request["path"] = self.mapped(msg["path"])
        log.debug("%s %s", msg["t"], request["path"])
        assert self.orch.agent is not None
        return await self.orch.agent.call(request)

    async def _forward(self, link: Link, msg: Message) -> Message:
        reply = await self._agent(msg)
        reply.pop("id", None)
        return reply

    async def _change(self, link: Link, msg: Message) -> Message:
        """mkdir/rmdir/unlink/rename: both names of a rename are mapped."""
        if msg["to"]:
            msg = {**msg, "to": self.mapped(msg["to"])}
        return await self._forward(link, msg)

    async def _open(self, link: Link, msg: Message) -> Message:
        if self.relay:
            return await self._relay_open(msg)
        reply = await self._agent(msg)
        fds = reply.pop("_fds", [])
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RemoteError("protocol", "the agent answered fs_open without a descriptor")
        return {"t": "fs_open_reply", "_fds": fds}

    # ---- relay: the agent's link cannot carry descriptors ----
    async def _relay_open(self, msg: Message) -> Message:
        if msg["flags"] & _WRITE_FLAGS:
            if not self._said_read_only:  # where tether differs, say so once, when it matters
                self._said_read_only = True
                log.warning("files: %s: the target's files cannot be written over this link "
                            "(no descriptor passing); the program gets EROFS", msg["path"])
            raise RemoteError("read_only", "remote files are read-only over this link",
                              errno.EROFS)
        st = (await self._agent({"t": "fs_stat", "path": msg["path"], "follow": True}))["st"]
        if stat.S_ISDIR(st[2]):
            fd = await self._shadow_dir(msg["path"])
        else:
            fd = await self._memfd(msg["path"])
        return {"t": "fs_open_reply", "_fds": [fd]}

    async def _memfd(self, path: str) -> int:
        fd = os.memfd_create("tether:" + path.rsplit("/", 1)[-1], os.MFD_CLOEXEC)
        try:
            offset = 0
            while True:
                reply = await self._agent({"t": "fs_read", "path": path, "offset": offset,
                                           "size": _RELAY_CHUNK})
                data = reply["data"]
                if not data:
                    break
                os.pwrite(fd, data, offset)
                offset += len(data)
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def _shadow_dir(self, path: str) -> int:
        """A local directory with the target directory's entry names and kinds."""
        reply = await self._agent({"t": "fs_list", "path": path})
        if self._shadow_root is None:
            self._shadow_root = tempfile.mkdtemp(prefix="tether-fs-")
        shadow = tempfile.mkdtemp(dir=self._shadow_root)
        for name, kind, target in reply["entries"]:
            if "/" in name or name in (".", ".."):
                continue
            where = os.path.join(shadow, name)
            if kind == "d":
                os.mkdir(where)
            elif kind == "l":
                os.symlink(target, where)
            else:
                open(where, "wb").close()
        return os.open(shadow, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
