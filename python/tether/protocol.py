"""tether's wire protocol: message schemas, framing and validation (sans-I/O).

Every link in tether (layer <-> orchestrator, orchestrator <-> agent) carries the same
frames: a 4-byte big-endian length, then one msgpack map.  Every map has a ``t`` key naming
the message type; requests carry an ``id`` that their reply echoes.  The constants and the
test vectors live in ``layer/protocol.json`` (copied into the package at build time), the
one file the C codec is checked against too.

This module owns no socket.  ``FrameDecoder`` turns bytes into validated messages,
``encode`` turns a message into a frame.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

_SPEC_NAME = "protocol.json"


def _load_spec() -> dict[str, Any]:
    # A plain file next to this module (importlib.resources costs ~15 ms of start-up).
    data = (Path(__file__).resolve().parent / _SPEC_NAME).read_text()
    spec: dict[str, Any] = json.loads(data)
    return spec


SPEC = _load_spec()
VERSION: int = SPEC["version"]
MAX_FRAME: int = SPEC["max_frame"]
_HEADER = struct.Struct(">I")

Message = dict[str, Any]


class ProtocolError(Exception):
    """A peer sent something that is not a valid tether message; the link must close."""


# Field schemas: name -> (type or tuple of types, required).  Unknown fields are
# ignored so that a newer peer may add optional fields without a version bump.
_STR = str
_INT = int
_MAP = dict
_LIST = list
_BYTES = bytes
_BOOL = bool
_ANY = object

SCHEMAS: dict[str, dict[str, tuple[Any, bool]]] = {
    # layer -> orchestrator: first frame of every process's session.
    "hello": {"v": (_INT, True), "pid": (_INT, True), "ppid": (_INT, True), "exe": (_STR, True)},
    "hello_ok": {"session": (_INT, True)},
    # the child environment as the orchestrator computed it (getenv fallback).
    "env": {"id": (_INT, True)},
    "env_reply": {"id": (_INT, True), "env": (_MAP, True)},
    # orchestrator -> agent
    "auth": {"v": (_INT, True), "secret": (_STR, True)},
    "auth_ok": {"agent": (_STR, True), "target_pid": (_INT, True)},
    "agent_env": {"id": (_INT, True)},
    "agent_env_reply": {"id": (_INT, True), "env": (_MAP, True)},
    "ping": {"id": (_INT, True)},
    "pong": {"id": (_INT, True)},
    # any direction: the request with this id failed.
    "error": {"id": (_INT, False), "code": (_STR, True), "message": (_STR, True)},
    # either side of a resumable link (tether.link): an ordinary end, not a dropped
    # connection that the other side should wait for.
    "link_close": {},
    # agent -> orchestrator, unsolicited: something the user must hear about.
    "event": {"kind": (_STR, True), "message": (_STR, True)},
}


def register(name: str, fields: Mapping[str, tuple[Any, bool]]) -> None:
    """Add a message type (features register theirs at import time)."""
    if name in SCHEMAS:
        raise ValueError(f"message type {name!r} registered twice")
    SCHEMAS[name] = dict(fields)
    _CHECKS.pop(name, None)


# Each schema flattened once into (field, type, required, int-but-not-bool) rows: validation
# runs on every frame of every link, so it walks a tuple instead of re-reading the schema.
_CHECKS: dict[str, tuple[tuple[str, Any, bool, bool], ...]] = {}


def _checks(kind: str) -> tuple[tuple[str, Any, bool, bool], ...] | None:
    schema = SCHEMAS.get(kind)
    if schema is None:
        return None
    rows = tuple((name, typ, required, typ is _INT) for name, (typ, required) in schema.items()
                 if required or typ is not _ANY)
    _CHECKS[kind] = rows
    return rows


def validate(msg: object) -> Message:
    """Return ``msg`` if it is a well-formed message, else raise ProtocolError."""
    if type(msg) is not dict:
        if not isinstance(msg, dict):
            raise ProtocolError(f"message is a {type(msg).__name__}, not a map")
    kind = msg.get("t")
    if type(kind) is not str:
        if not isinstance(kind, str):
            raise ProtocolError("message has no string 't' (type) field")
    rows = _CHECKS.get(kind)
    if rows is None:
        rows = _checks(kind)
        if rows is None:
            raise ProtocolError(f"unknown message type {kind!r}")
    for field, typ, required, is_int in rows:
        if field not in msg:
            if required:
                raise ProtocolError(f"{kind}: missing field {field!r}")
            continue
        if typ is _ANY:
            continue
        value = msg[field]
        if not isinstance(value, typ) or (is_int and isinstance(value, bool)):
            if is_int and isinstance(value, bool):
                raise ProtocolError(f"{kind}.{field}: expected int, got bool")
            raise ProtocolError(
                f"{kind}.{field}: expected {typ.__name__}, got {type(value).__name__}"
            )
    return msg


_packb = msgpack.Packer(use_bin_type=True).pack  # one Packer: no per-message set-up


def pack(msg: Mapping[str, Any]) -> bytes:
    """The msgpack body of a message (no length prefix)."""
    body: bytes = _packb(msg if type(msg) is dict else dict(msg))
    return body


def encode(msg: Mapping[str, Any]) -> bytes:
    """One frame: length prefix plus msgpack body."""
    if type(msg) is not dict:
        msg = dict(msg)
    validate(msg)
    body = _packb(msg)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_FRAME} byte limit")
    return _HEADER.pack(len(body)) + body


class Limits(NamedTuple):
    """What one frame from a peer may make us allocate.

    msgpack builds one Python object per encoded object, so a frame of one-byte empty
    arrays costs ~64 bytes of memory per byte received, and an announced array length is
    allocated before its elements arrive.  A peer that is not trusted gets a small frame
    and small containers: memory is then bounded by ``frame`` times that factor."""

    frame: int
    str_len: int
    bin_len: int
    array_len: int
    map_len: int

    def unpack_kwargs(self) -> dict[str, int]:
        return {"max_str_len": self.str_len, "max_bin_len": self.bin_len,
                "max_array_len": self.array_len, "max_map_len": self.map_len,
                "max_ext_len": 0}


# Before authentication: the one ``auth`` frame (a version, an id, a secret of a few dozen
# bytes) fits with room to spare; worst case ~300 KiB of objects per connection.
PREAUTH_LIMITS = Limits(frame=4096, str_len=1024, bin_len=0, array_len=16, map_len=16)
# An authenticated orchestrator talking to its agent: the largest frames it sends are relayed
# chunks (relay.CHUNK, 256 KiB); a frame of nothing but empty arrays costs ~36 MiB at most
# (measured in tests/agent/test_agent_auth.py), well under the agent's memory limit.
AGENT_LIMITS = Limits(frame=512 * 1024 + 4096, str_len=512 * 1024, bin_len=512 * 1024,
                      array_len=65536, map_len=65536)


def pack_int(value: int) -> bytes:
    """An integer in msgpack (for bodies assembled from parts, see relay.py)."""
    packed: bytes = _packb(value)
    return packed


def bin_header(size: int) -> bytes:
    """The msgpack header of a bin object of ``size`` bytes."""
    if size < 256:
        return b"\xc4" + bytes([size])
    if size < 65536:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def frame_header(size: int) -> bytes:
    """The length prefix of a frame whose msgpack body has ``size`` bytes."""
    return _HEADER.pack(size)


def unpack(body: bytes | memoryview, limits: Limits | None = None) -> Message:
    try:
        if limits is None:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
        else:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=True,
                                  **limits.unpack_kwargs())
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable msgpack: {exc}") from None
    return validate(msg)


class FrameDecoder:
    """Feed bytes, iterate complete validated messages.  Raises ProtocolError on garbage.

    With ``limits`` (an untrusted peer), a frame longer than ``limits.frame`` is refused as
    soon as its length prefix arrives, and decoding is bounded by the container limits."""

    def __init__(self, max_frame: int = MAX_FRAME, limits: Limits | None = None) -> None:
        self._buf = bytearray()
        self._max = min(max_frame, limits.frame) if limits is not None else max_frame
        self._kwargs = limits.unpack_kwargs() if limits is not None else None

    def feed(self, data: bytes | memoryview) -> Iterator[Message]:
        """Complete frames are parsed where they lie (``data`` may be a view of a reused
        read buffer: nothing of it is kept but the copy of an incomplete tail)."""
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < _HEADER.size:
                return
            (length,) = _HEADER.unpack_from(buf)
            if length > self._max:
                raise ProtocolError(f"frame of {length} bytes exceeds the {self._max} byte limit")
            if len(buf) < _HEADER.size + length:
                return  # a large frame still arriving: no copy until it is complete
            data = buf  # parsed in place; the next tail goes to a fresh buffer
            self._buf = bytearray()
        view = memoryview(data)
        size = len(data)
        pos = 0
        try:
            while size - pos >= 4:
                (length,) = _HEADER.unpack_from(data, pos)
                if length > self._max:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the {self._max} byte limit")
                end = pos + 4 + length
                if end > size:
                    break
                if self._kwargs is None:
                    msg = unpack(view[pos + 4 : end])
                else:
                    msg = _unpack_bounded(view[pos + 4 : end], self._kwargs)
                pos = end
                yield msg
        finally:
            if pos < size:
                self._buf += view[pos:]
            view.release()

    @property
    def pending(self) -> int:
        return len(self._buf)


def _unpack_bounded(body: memoryview, kwargs: dict[str, int]) -> Message:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, **kwargs)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable msgpack: {exc}") from None
    return validate(msg)
