"""Reading what a run wrote to TensorBoard, for the tests: the summaries of tfevents files."""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path


def summary_values(files: Iterable[Path]) -> Iterator[tuple[str, str, float]]:
    """(tag, kind, simple value) of every summary value in the tfevents ``files`` (kind: 'simple_value',
    'image', ...; the value is 0.0 unless the kind is 'simple_value')."""
    from tensorboardX.proto import event_pb2  # tensorboardX ships the protobufs

    for f in files:
        raw, pos = Path(f).read_bytes(), 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos:pos + 8])  # record: length, its crc, data, data crc
            event = event_pb2.Event()
            event.ParseFromString(raw[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                kind = v.WhichOneof("value")
                yield v.tag, kind, v.simple_value if kind == "simple_value" else 0.0
