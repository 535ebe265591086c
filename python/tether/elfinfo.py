"""Which programs the layer cannot reach: static binaries (no ELF interpreter, so no
LD_PRELOAD) and Go binaries (the Go runtime makes system calls itself, bypassing libc).
Those run under seccomp user notification instead (tether.seccomp)."""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass

PT_INTERP = 3


@dataclass(frozen=True)
class ElfInfo:
    path: str
    static: bool
    go: bool

    @property
    def needs_seccomp(self) -> bool:
        return self.static or self.go


def resolve_command(argv0: str, path: str | None = None) -> str | None:
    if "/" in argv0:
        return argv0 if os.path.exists(argv0) else None
    return shutil.which(argv0, path=path)


def inspect(path: str) -> ElfInfo | None:
    """ELF facts of ``path``, or None when it is not a 64-bit little-endian ELF (a script)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            (e_phoff, e_shoff) = struct.unpack_from("<QQ", head, 0x20)
            (e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from(
                "<HHHHH", head, 0x36)
            f.seek(e_phoff)
            phdrs = f.read(e_phentsize * e_phnum)
            interp = any(struct.unpack_from("<I", phdrs, i * e_phentsize)[0] == PT_INTERP
                         for i in range(e_phnum))
            names = _section_names(f, e_shoff, e_shentsize, e_shnum, e_shstrndx)
    except OSError:
        return None
    go = bool(names & {".go.buildinfo", ".gopclntab", ".note.go.buildid"})
    return ElfInfo(path=path, static=not interp, go=go)


def _section_names(f, shoff: int, shentsize: int, shnum: int, shstrndx: int) -> set[str]:  # type: ignore[no-untyped-def]
    if not shoff or not shnum or shstrndx >= shnum or shentsize < 64:
        return set()
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    str_off, str_size = struct.unpack_from("<QQ", table, shstrndx * shentsize + 0x18)
    f.seek(str_off)
    strtab = f.read(min(str_size, 1 << 20))
    names = set()
    for i in range(shnum):
        (name_off,) = struct.unpack_from("<I", table, i * shentsize)
        end = strtab.find(b"\0", name_off)
        names.add(strtab[name_off:end].decode(errors="replace"))
    return names
