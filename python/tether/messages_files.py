"""Messages of the remote-files feature (feature.fs), imported by both sides.

The layer asks the orchestrator with ``fs_*`` requests; the orchestrator forwards the same
messages to the agent, which acts inside the target's filesystem.  ``fs_open`` replies
carry the opened descriptor (SCM_RIGHTS, ``"fds": 1``) so the program reads, seeks,
mmaps and closes it natively.  ``fs_read`` and ``fs_list`` exist for links that cannot
carry descriptors (the orchestrator then relays content into a local memfd or a shadow
directory).

A stat is a list of 16 integers in this order (``STAT_FIELDS``), the same for the C layer.
"""

from __future__ import annotations

from . import protocol

STAT_FIELDS = ("dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize",
               "blocks", "atime_s", "atime_ns", "mtime_s", "mtime_ns", "ctime_s", "ctime_ns")
# A statfs is a list of 12 integers in this order (``struct statfs``; the layer also fills a
# ``struct statvfs`` from it).
STATFS_FIELDS = ("type", "bsize", "blocks", "bfree", "bavail", "files", "ffree", "fsid0",
                 "fsid1", "namelen", "frsize", "flags")
# What fs_change does: op -> what ``path``/``to``/``arg`` mean.
CHANGE_OPS = ("mkdir",   # path, arg = mode
              "rmdir",   # path
              "unlink",  # path
              "rename")  # path -> to, arg = renameat2 flags

_INT, _STR, _BOOL, _LIST, _BYTES = int, str, bool, list, bytes

protocol.register("fs_open", {"id": (_INT, True), "path": (_STR, True),
                              "flags": (_INT, True), "mode": (_INT, True)})
protocol.register("fs_open_reply", {"id": (_INT, True)})
protocol.register("fs_stat", {"id": (_INT, True), "path": (_STR, True),
                              "follow": (_BOOL, True)})
protocol.register("fs_stat_reply", {"id": (_INT, True), "st": (_LIST, True)})
protocol.register("fs_readlink", {"id": (_INT, True), "path": (_STR, True)})
protocol.register("fs_readlink_reply", {"id": (_INT, True), "target": (_STR, True)})
protocol.register("fs_realpath", {"id": (_INT, True), "path": (_STR, True)})
protocol.register("fs_realpath_reply", {"id": (_INT, True), "path": (_STR, True)})
protocol.register("fs_change", {"id": (_INT, True), "op": (_STR, True), "path": (_STR, True),
                                "to": (_STR, True), "arg": (_INT, True)})
protocol.register("fs_change_reply", {"id": (_INT, True)})
protocol.register("fs_statfs", {"id": (_INT, True), "path": (_STR, True)})
protocol.register("fs_statfs_reply", {"id": (_INT, True), "sf": (_LIST, True)})
# relay (links without descriptor passing): orchestrator -> agent only
protocol.register("fs_read", {"id": (_INT, True), "path": (_STR, True),
                              "offset": (_INT, True), "size": (_INT, True)})
protocol.register("fs_read_reply", {"id": (_INT, True), "data": (_BYTES, True)})
protocol.register("fs_list", {"id": (_INT, True), "path": (_STR, True)})
# entries: [[name, d_type-like kind ("f", "d", "l", "o"), symlink target or ""], ...]
protocol.register("fs_list_reply", {"id": (_INT, True), "entries": (_LIST, True)})
