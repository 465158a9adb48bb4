"""A stored response compressed on several threads is one zlib stream of the same text."""

from __future__ import annotations

import json
import random
import zlib

import pytest

from models.store import compression
from models.store.response_stream import Inflating, read_parts


def _response_text(rows: int) -> bytes:
    """JSON shaped like a batched response: two sub-responses of float lists."""
    rng = random.Random(7)
    sub = [{"values": [rng.uniform(-3, 3) for _ in range(rows)], "token": "x"} for _ in range(2)]
    return json.dumps({"inferenceSubResponses": sub}, separators=(",", ":")).encode()


@pytest.mark.parametrize("pieces", [1, 2, 3, 4, 7])
def test_every_cut_inflates_to_the_text(pieces):
    text = _response_text(40_000)
    stored = compression.compress(text, pieces)
    assert zlib.decompress(stored) == text
    assert stored[:2] == zlib.compress(b"", compression.LEVEL)[:2]  # one zlib header
    inflating = zlib.decompressobj()  # in small reads, as the streaming readers take it
    out = b"".join(inflating.decompress(stored[i : i + 999]) for i in range(0, len(stored), 999))
    assert out + inflating.flush() == text and inflating.eof and not inflating.unused_data


def test_pieces_cost_little_size():
    text = _response_text(40_000)
    one, four = compression.compress(text, 1), compression.compress(text, 4)
    assert one == zlib.compress(text, compression.LEVEL)
    assert len(four) < len(one) * 1.01


def test_a_small_text_is_one_plain_zlib_call():
    text = _response_text(50)
    assert len(text) < compression.PIECE_BYTES
    assert compression.compress(text) == zlib.compress(text, compression.LEVEL)


def test_the_stream_readers_read_it():
    text = _response_text(40_000)
    stored = compression.compress(text, 3)
    stream = Inflating(stored)
    assert b"".join(iter(lambda: stream.read(5000), b"")) == text
    parts, _decoded = read_parts(stored, {1}, batched=True)
    assert parts[1] == json.loads(text)["inferenceSubResponses"][1]


@pytest.mark.parametrize(
    "first, second",
    [
        (b"", b"x"),
        (b"x", b""),
        (bytes(range(256)) * 300, b"\xff" * 65521),
        (b"\xff" * 200_000, b"\xff" * 131_043),
        (random.Random(3).randbytes(70_001), random.Random(4).randbytes(100_003)),
    ],
)
def test_adler32_combine_is_zlibs(first, second):
    combined = compression.adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
    assert combined == zlib.adler32(first + second)
