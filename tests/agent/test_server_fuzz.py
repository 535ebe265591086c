"""Property test of the agent's first read (hypothesis): whatever a stranger sends before
authenticating, ``read_auth`` returns one small message or refuses it (AuthFailed), reads
no byte beyond that first frame, and an orchestrator's ``auth`` behind garbage-free
bytes is read as such."""

from __future__ import annotations

import asyncio
import socket
import struct

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from tether import protocol
from tether.agent.server import AuthFailed, read_auth

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=20)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=20),
                      max_leaves=12)
bodies = (st.binary(max_size=300) | values.map(msgpack.packb)
          | st.builds(lambda rest: msgpack.packb({"t": "auth", **rest}),
                      st.dictionaries(st.sampled_from(["v", "secret", "id"]), values)))
headers = st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n))
inputs = (bodies.map(lambda b: struct.pack(">I", len(b)) + b)
          | st.tuples(headers, st.binary(max_size=64)).map(b"".join))
TRAILER = protocol.encode({"t": "ping", "id": 9})


async def first_frame(data: bytes) -> tuple[object, bytes]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.sendall(data + TRAILER)
        theirs.shutdown(socket.SHUT_WR)
        try:
            result: object = await asyncio.wait_for(read_auth(ours), 2)
        except AuthFailed as exc:
            result = exc
        ours.setblocking(True)
        rest = b""
        while chunk := ours.recv(65536):
            rest += chunk
        return result, rest


@settings(max_examples=120, deadline=None)
@given(inputs)
def test_the_first_read_is_small_and_either_a_message_or_a_refusal(data):
    result, rest = asyncio.run(first_frame(data))
    if isinstance(result, AuthFailed):
        return
    assert isinstance(result, dict) and protocol.validate(result) is result
    (length,) = struct.unpack(">I", data[:4])
    assert length <= protocol.PREAUTH_LIMITS.frame
    assert rest == data[4 + length:] + TRAILER  # nothing read past the first frame
