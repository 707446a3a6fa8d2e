"""Run directories: which process owns them, and refusing to write over an earlier run."""

import json
import os
from pathlib import Path
from typing import Any, Optional

from vaelab.errors import ConfigError

METRICS_FILE = "metrics.json"  # what train.py leaves in a run directory
EVAL_FILE = "eval.json"  # what eval.py leaves in an evaluation directory


def is_relaunched_rank() -> bool:
    """True in the processes that Lightning's DDP launcher starts for ranks other than 0."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def read_record(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's metrics.json, or None when it is missing or unreadable (the run did not finish)."""
    try:
        return json.loads((Path(run_dir) / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def refuse_earlier_run(run_dir: Path) -> None:
    """Raise ConfigError if `run_dir` already holds the results of another run."""
    if is_relaunched_rank():
        return
    earlier = [p.name for p in (Path(run_dir) / METRICS_FILE, Path(run_dir) / "checkpoints") if p.exists()]
    if earlier:
        raise ConfigError(
            f"{run_dir} already holds an earlier run ({', '.join(earlier)}); it is left untouched. "
            f"Choose another hydra.run.dir or leave it out"
        )
