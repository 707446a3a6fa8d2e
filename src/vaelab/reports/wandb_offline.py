"""Reading an offline W&B run file (`wandb/offline-run-*/run-*.wandb`) without the network.

Offline runs have no `wandb-summary.json`; their records live only in this file, in the
LevelDB log layout that wandb writes: a 7-byte header (":W&B", 0xBEE1, version 0), then
32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type), holding protobuf
`Record` messages. A file cut short (its process killed while writing) is read up to its last
whole record.

A resumed run (vaelab.training.loggers) has one such file per attempt, each in the run directory
that attempt wrote, all with the same run id: `wandb sync` of all of them makes one W&B run.
"""

import json
import struct
import time
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
        if pos + _CHUNK_HEADER + length > len(data):  # the writer was stopped in this chunk
            return
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


def _row(record: wandb_internal_pb2.Record) -> dict[str, Any]:
    return {_key(i): json.loads(i.value_json) for i in record.history.item}


def history(path: str | Path) -> Iterator[dict[str, Any]]:
    """The run's history rows, {metric: value}, in the order they were logged (W&B's own keys
    `_step`, `_runtime`, `_timestamp` included; Lightning's step is `trainer/global_step`)."""
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            yield _row(record)


def _artifact(record: wandb_internal_pb2.ArtifactRecord) -> dict[str, Any]:
    return {"name": record.name, "type": record.type, "aliases": list(record.aliases),
            "metadata": json.loads(record.metadata) if record.metadata else {},
            "files": [{"path": f.path, "local_path": f.local_path, "size": f.size, "digest": f.digest}
                      for f in record.manifest.contents]}


def wait_until_finished(path: str | Path, timeout_s: float = 30.0) -> bool:
    """Wait until the run file holds its exit record (True), or `timeout_s` has passed (False).

    wandb's service process writes the file: it may still be doing so when `run.finish()` returns in
    the process that logged (the file is whole once that process has exited)."""
    deadline = time.monotonic() + timeout_s
    while not _has_exit_record(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _has_exit_record(path: str | Path) -> bool:
    try:
        return any(record.WhichOneof("record_type") == "exit" for record in read_records(path))
    except (OSError, ValueError, struct.error):  # not there yet, or not even its header written
        return False


def summarize(path: str | Path) -> dict[str, Any]:
    """The run's name, group, tags, config and history (a list of {metric: value} rows); its W&B
    id, the artifacts it logged (name, type, aliases, metadata, files: where each file is read
    from when `wandb sync` uploads it), and its summary values set with `run.summary` (eval.py's
    disentanglement numbers; W&B's own `_wandb`, `_runtime`, ... included)."""
    out: dict[str, Any] = {"name": None, "group": None, "tags": [], "config": {}, "history": [], "id": None,
                           "artifacts": [], "summary": {}}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(name=record.run.display_name, group=record.run.run_group, tags=list(record.run.tags),
                       id=record.run.run_id)
            out["config"].update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append(_row(record))
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "artifact":
            out["artifacts"].append(_artifact(record.artifact))
    return out
