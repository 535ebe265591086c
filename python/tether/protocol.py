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
from typing import Any

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
    # agent -> orchestrator, unsolicited: something the user must hear about.
    "event": {"kind": (_STR, True), "message": (_STR, True)},
}


def register(name: str, fields: Mapping[str, tuple[Any, bool]]) -> None:
    """Add a message type (features register theirs at import time)."""
    if name in SCHEMAS:
        raise ValueError(f"message type {name!r} registered twice")
    SCHEMAS[name] = dict(fields)


def validate(msg: object) -> Message:
    """Return ``msg`` if it is a well-formed message, else raise ProtocolError."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"message is a {type(msg).__name__}, not a map")
    kind = msg.get("t")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 't' (type) field")
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    for field, (typ, required) in schema.items():
        if field not in msg:
            if required:
                raise ProtocolError(f"{kind}: missing field {field!r}")
            continue
        value = msg[field]
        if typ is _ANY:
            continue
        if typ is _INT and isinstance(value, bool):
            raise ProtocolError(f"{kind}.{field}: expected int, got bool")
        if not isinstance(value, typ):
            raise ProtocolError(
                f"{kind}.{field}: expected {typ.__name__}, got {type(value).__name__}"
            )
    return msg


def pack(msg: Mapping[str, Any]) -> bytes:
    """The msgpack body of a message (no length prefix)."""
    body: bytes = msgpack.packb(dict(msg), use_bin_type=True)
    return body


def encode(msg: Mapping[str, Any]) -> bytes:
    """One frame: length prefix plus msgpack body."""
    validate(dict(msg))
    body = pack(msg)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_FRAME} byte limit")
    return _HEADER.pack(len(body)) + body


def unpack(body: bytes) -> Message:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable msgpack: {exc}") from None
    return validate(msg)


class FrameDecoder:
    """Feed bytes, iterate complete validated messages.  Raises ProtocolError on garbage."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buf += data
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self._max:
                raise ProtocolError(f"frame of {length} bytes exceeds the {self._max} byte limit")
            end = _HEADER.size + length
            if len(self._buf) < end:
                return
            body = bytes(self._buf[_HEADER.size : end])
            del self._buf[:end]
            yield unpack(body)

    @property
    def pending(self) -> int:
        return len(self._buf)
