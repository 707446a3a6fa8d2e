"""Writing files that other processes read: atomically, and markdown tables.

Sweep jobs run at once (joblib), a killed run leaves what it wrote, and readers (summaries,
comparisons, the next run) may look at any moment: every record is written to a temporary
file beside its target and renamed over it, so a reader sees the old file or the new one,
never half of one.
"""

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, mode, **open_kwargs) as f:
            yield f
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path, newline="") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """One JSON object, keys sorted; values JSON cannot hold (paths, ...) as strings."""
    return write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table; cells are str()-ed, with `|` and newlines escaped."""
    return ["| " + " | ".join(_cell(h) for h in header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]
