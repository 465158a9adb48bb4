"""Reading one run's part of a stored response without building the whole response.

A job's response is stored zlib-compressed (``models.store.jobs.finish_job``); a batched job's
holds one sub-response per run. Decompressing the whole text and ``json.loads``-ing it made a
comparison of two large runs hold each response three times over (compressed, text, objects)
for the sake of one sub-response. Here the text is inflated a chunk at a time and parsed as a
stream (``ijson``, C backend): only the wanted sub-responses become Python objects, the others
are parsed and dropped one by one, reading stops after the last one wanted, and data of the
kinds a caller does not read (a comparison: scored tokens, token-pair attributions, nine tenths
of a large response) is parsed but never built. So a response is
decoded at most once, and memory follows the runs compared, not the job's size.

``RunPartsReader.decoded`` counts the inflated bytes handed to the parser (what a test checks).
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import ijson

CHUNK = 1 << 16  # compressed bytes fed to zlib at a time
BATCHED_PREFIX = "inferenceSubResponses.item"


class Inflating(io.RawIOBase):
    """A read-only file over zlib-compressed bytes, inflated as it is read."""

    def __init__(self, blob: bytes) -> None:
        self._blob = memoryview(blob)
        self._at = 0
        self._z = zlib.decompressobj()
        self._buffer = bytearray()
        self._done = False
        self.decoded = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        while len(self._buffer) < size and not self._done:
            if self._z.unconsumed_tail:
                data = self._z.unconsumed_tail
            else:
                data = self._blob[self._at : self._at + CHUNK]
                self._at += len(data)
            if not data:
                self._buffer += self._z.flush()
                self._done = True
                break
            self._buffer += self._z.decompress(data, size)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.decoded += len(out)
        return out

    def readinto(self, target) -> int:  # io.RawIOBase's protocol
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)


def read_parts(
    compressed: bytes,
    indices: set[int],
    batched: bool,
    skip_kinds: frozenset[str] = frozenset(),
) -> tuple[dict[int, Any], int]:
    """({index: sub-response, or the whole response when not batched}, bytes decoded).

    A map whose ``responseDataType`` is in ``skip_kinds`` is kept as that key alone: its other
    members are parsed and dropped, never built (the encoder writes ``responseDataType`` first;
    were it later, what came before it is built and kept). Raises ``ValueError`` for a response
    that does not inflate or parse."""
    stream = Inflating(compressed)
    events = ijson.parse(stream, use_float=True)
    try:
        if not batched:
            whole = _build(events, skip_kinds)
            return dict.fromkeys(indices, whole), stream.decoded
        found: dict[int, Any] = {}
        index = -1
        for prefix, event, _value in events:
            if prefix == BATCHED_PREFIX and event in ("start_map", "start_array", "null"):
                index += 1
                if index in indices:
                    found[index] = _build(events, skip_kinds, first=event)
                    if len(found) == len(indices):
                        break
        return found, stream.decoded
    except (zlib.error, ijson.JSONError) as error:
        raise ValueError(f"the stored response cannot be read: {error}") from error


def _build(events, skip_kinds: frozenset[str], first: str | None = None) -> Any:
    """The next value of the event stream (its first event already read when ``first`` is
    given), leaving out the rest of every map whose ``responseDataType`` is in ``skip_kinds``."""
    builder = ijson.ObjectBuilder()
    depth = 0
    skipped_at = 0  # the depth of the map being skipped; 0: none

    def stream():
        if first is not None:
            yield None, first, None
        yield from events

    for at, event, value in stream():
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
        if skipped_at:
            if depth >= skipped_at:
                continue
            skipped_at = 0  # the skipped map's own end, which the builder gets
        builder.event(event, value)
        if event == "string" and value in skip_kinds and (at or "").endswith(".responseDataType"):
            skipped_at = depth
        if depth == 0:
            break
    return builder.value
