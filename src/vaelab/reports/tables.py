"""Markdown tables, as the sweep summary, the comparison of runs and eval's report write them."""

from collections.abc import Sequence
from typing import Any


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table; cells are str()-ed, with `|` and newlines escaped."""
    return ["| " + " | ".join(_cell(h) for h in header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]
