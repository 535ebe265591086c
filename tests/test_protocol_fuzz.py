"""Property tests of the frame reader (hypothesis): whatever bytes a peer sends, however
they are split, the reader yields valid messages or raises ProtocolError, nothing else;
with limits (an agent's peers) it never accepts a frame or a container beyond them; and
every message the schemas accept survives encode -> decode unchanged."""

from __future__ import annotations

import struct

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from tether import protocol, relay  # noqa: F401  (relay registers its messages)
from tether.protocol import AGENT_LIMITS, PREAUTH_LIMITS, FrameDecoder, ProtocolError

KINDS = sorted(protocol.SCHEMAS)
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=30) | st.binary(max_size=30))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)
maps = st.builds(lambda t, rest: {"t": t, **rest}, st.sampled_from(KINDS) | st.text(max_size=8),
                 st.dictionaries(st.sampled_from(["id", "v", "secret", "conn", "data", "n",
                                                  "errno", "env", "code", "message"]) | st.text(
                                     max_size=6), values, max_size=6))
bodies = st.binary(max_size=200) | values.map(msgpack.packb) | maps.map(msgpack.packb)


def frames(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


streams = st.lists(bodies.map(frames) | st.binary(max_size=40), max_size=6).map(b"".join)
cuts = st.lists(st.integers(0, 400), max_size=8)


def split(data: bytes, at: list[int]) -> list[bytes]:
    points = sorted({min(a, len(data)) for a in at})
    return [data[i:j] for i, j in zip([0, *points], [*points, len(data)], strict=True)]


def read_all(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[dict], bool]:
    out: list[dict] = []
    try:
        for chunk in chunks:
            out.extend(decoder.feed(chunk))
    except ProtocolError:
        return out, True
    return out, False


@settings(max_examples=120, deadline=None)
@given(streams, cuts)
def test_any_bytes_split_anywhere_give_messages_or_a_protocol_error(data, at):
    whole, whole_failed = read_all(FrameDecoder(), [data])
    pieces, pieces_failed = read_all(FrameDecoder(), split(data, at))
    assert pieces == whole and pieces_failed == whole_failed
    for msg in whole:
        assert protocol.validate(msg) is msg


@settings(max_examples=120, deadline=None)
@given(streams, cuts, st.sampled_from([PREAUTH_LIMITS, AGENT_LIMITS]))
def test_a_bounded_reader_refuses_what_exceeds_its_limits(data, at, limits):
    out, _failed = read_all(FrameDecoder(limits=limits), split(data, at))
    for msg in out:
        assert len(protocol.pack(msg)) <= limits.frame
        assert len(msg) <= limits.map_len


@settings(max_examples=50, deadline=None)
@given(st.integers(PREAUTH_LIMITS.frame + 1, 2**32 - 1))
def test_a_stranger_announcing_a_large_frame_is_refused_on_its_header(length):
    dec = FrameDecoder(limits=PREAUTH_LIMITS)
    try:
        list(dec.feed(struct.pack(">I", length)))
    except ProtocolError as exc:
        assert "exceeds" in str(exc)
    else:
        raise AssertionError("a frame longer than the pre-auth limit was accepted")
    assert dec.pending <= 4


_FIELD_VALUES = {int: st.integers(0, 2**63 - 1), str: st.text(max_size=20),
                 bytes: st.binary(max_size=64), bool: st.booleans(),
                 dict: st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
                 list: st.lists(scalars, max_size=4), object: scalars}


def _valid(kind: str) -> st.SearchStrategy[dict]:
    schema = protocol.SCHEMAS[kind]
    required = {name: _FIELD_VALUES[typ] for name, (typ, req) in schema.items() if req}
    optional = {name: _FIELD_VALUES[typ] for name, (typ, req) in schema.items() if not req}
    return st.fixed_dictionaries(required, optional=optional).map(lambda m: {"t": kind, **m})


valid_messages = st.sampled_from(KINDS).flatmap(_valid)


@settings(max_examples=120, deadline=None)
@given(valid_messages)
def test_every_message_the_schemas_accept_round_trips(msg):
    frame = protocol.encode(msg)
    assert list(FrameDecoder().feed(frame)) == [msg]
    assert list(FrameDecoder(limits=AGENT_LIMITS).feed(frame)) == [msg]
