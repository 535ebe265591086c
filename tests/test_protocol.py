"""The Python side of the wire protocol against the shared vectors in layer/protocol.json."""

import json
import struct
from pathlib import Path

import msgpack
import pytest
from tether import protocol
from tether.protocol import FrameDecoder, ProtocolError

SPEC = json.loads((Path(__file__).parents[1] / "layer" / "protocol.json").read_text())


@pytest.mark.parametrize("vector", SPEC["vectors"], ids=lambda v: v["name"])
def test_python_encodes_each_vector_to_its_bytes(vector):
    frame = protocol.encode(vector["message"])
    assert frame[4:].hex() == vector["hex"]
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4


@pytest.mark.parametrize("vector", SPEC["vectors"], ids=lambda v: v["name"])
def test_python_decodes_each_vector(vector):
    body = bytes.fromhex(vector["hex"])
    frame = struct.pack(">I", len(body)) + body
    assert list(FrameDecoder().feed(frame)) == [vector["message"]]


def test_frames_split_anywhere_decode_the_same():
    frames = b"".join(protocol.encode(v["message"]) for v in SPEC["vectors"])
    dec = FrameDecoder()
    out = []
    for i in range(len(frames)):
        out.extend(dec.feed(frames[i : i + 1]))
    assert out == [v["message"] for v in SPEC["vectors"]]
    assert dec.pending == 0


@pytest.mark.parametrize(
    "body, complaint",
    [
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"id": 1}), "no string 't'"),
        (msgpack.packb({"t": "launch_missiles"}), "unknown message type"),
        (msgpack.packb({"t": "env"}), "missing field 'id'"),
        (msgpack.packb({"t": "env", "id": "7"}), "expected int"),
        (msgpack.packb({"t": "env", "id": True}), "expected int, got bool"),
        (b"\xc1\xc1\xc1", "undecodable"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(body, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        list(FrameDecoder().feed(struct.pack(">I", len(body)) + body))


def test_oversized_frame_is_rejected_before_it_is_buffered():
    dec = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        list(dec.feed(struct.pack(">I", protocol.MAX_FRAME + 1)))


def test_encode_refuses_invalid_messages():
    with pytest.raises(ProtocolError):
        protocol.encode({"t": "hello", "v": 1})
