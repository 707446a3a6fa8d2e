"""Run directories: the record a run leaves (metrics.json), which process owns it, and never
writing over an earlier run."""

import json
import os
from pathlib import Path
from typing import Any, Optional

from vaelab.errors import ConfigError
from vaelab.files import write_json

METRICS_FILE = "metrics.json"  # what train.py leaves in a run directory
EVAL_FILE = "eval.json"  # what eval.py leaves in an evaluation directory


def is_relaunched_rank() -> bool:
    """True in the processes that Lightning's DDP launcher starts for ranks other than 0."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def is_rank_zero_process() -> bool:
    """Not a rank that Lightning relaunched, nor a SLURM task other than the first."""
    return not is_relaunched_rank() and os.environ.get("SLURM_PROCID", "0") == "0"


def read_record(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's metrics.json, or None when it is missing or unreadable (the run did not finish)."""
    try:
        return json.loads((Path(run_dir) / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def logged_terms(records: list[dict[str, Any]]) -> list[str]:
    """The loss terms that any of the records logged (metrics.json's "terms"), in the order of the
    model type with the most (a VAE's recon, kl, loss, nelbo), so AE and VAE runs line up."""
    by_size = sorted(records, key=lambda record: -len(record.get("terms", ())))
    return list(dict.fromkeys(term for record in by_size for term in record.get("terms", ())))


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    return write_json(Path(run_dir) / METRICS_FILE, record)


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
