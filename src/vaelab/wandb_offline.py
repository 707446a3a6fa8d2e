"""Reading an offline W&B run file (`wandb/offline-run-*/run-*.wandb`) without the network.

Offline runs have no `wandb-summary.json`; their records live only in this file, in the
LevelDB log layout that wandb writes: a 7-byte header (":W&B", 0xBEE1, version 0), then
32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type), holding protobuf
`Record` messages.
"""

import json
import struct
from pathlib import Path
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = 7, b""
    while pos + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER:  # the block's tail is zero padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def summarize(path: str | Path) -> dict[str, Any]:
    """The run's name, group, tags, config and history (a list of {metric: value} rows)."""
    out: dict[str, Any] = {"name": None, "group": None, "tags": [], "config": {}, "history": []}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(name=record.run.display_name, group=record.run.run_group, tags=list(record.run.tags))
            out["config"].update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
    return out
