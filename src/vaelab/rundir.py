"""Run directories: the record a run leaves (metrics.json), which process owns it, never
writing over an earlier run, and the evaluations of a run (EVALS_DIR)."""

import fcntl
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Optional

from vaelab.errors import ConfigError
from vaelab.files import write_json

METRICS_FILE = "metrics.json"  # what train.py leaves in a run directory
EVAL_FILE = "eval.json"  # what eval.py leaves in an evaluation directory
LOCK_FILE = ".vaelab.lock"  # held by the one process that writes a run directory
EVALS_DIR = "evals"  # in a training run directory: one small JSON per evaluation of it (record_evaluation)

_held_locks: dict[Path, IO] = {}  # open for the life of the process: the OS releases them when it ends


def is_relaunched_rank() -> bool:
    """True in the processes that Lightning's DDP launcher starts for ranks other than 0."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def cluster_tasks() -> int:
    """How many processes a cluster started for this run, each one rank (SLURM's srun with
    several tasks, torchrun); 1 when it runs as one process (which Lightning may relaunch)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("SLURM_NTASKS", "1") or "1")


def cluster_rank() -> int:
    """This process's rank among the `cluster_tasks()` processes of its run: SLURM's task number
    (SLURM_PROCID, set by srun, also when it starts every task at once) or torchrun's RANK; 0 when
    a cluster started just this one process."""
    if cluster_tasks() <= 1:
        return 0
    variable = "RANK" if "TORCHELASTIC_RUN_ID" in os.environ else "SLURM_PROCID"
    return int(os.environ.get(variable, "0") or "0")


def rank_hydra_settings() -> dict[str, Any]:
    """What rank r > 0 of a run whose ranks a cluster started changes in Hydra's settings: what
    Lightning sets for the ranks it starts itself, so that it writes no `.hydra/` of its own (rank 0
    does) and logs to `train_ddp_process_<r>.log` beside rank 0's `train.log`. Empty for rank 0."""
    rank = cluster_rank()
    return {} if rank == 0 else {"hydra.output_subdir": None, "hydra.job.name": f"train_ddp_process_{rank}"}


def is_rank_zero_process() -> bool:
    """The one process of a run that owns its directory: takes the lock, writes metrics.json and
    the summary. Not a rank that Lightning relaunched, nor a cluster's task other than the first."""
    return not is_relaunched_rank() and cluster_rank() == 0


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


def is_requeued_job() -> bool:
    """A SLURM job that SLURM (or submitit) started again after preempting it."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


def interrupted_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint an interrupted run in `run_dir` left to be resumed from, if any."""
    record = read_record(run_dir) or {}
    path = record.get("resume_checkpoint")
    if record.get("status") == "interrupted" and path and Path(path).is_file():
        return Path(path)
    return None


def refuse_earlier_run(run_dir: Path) -> None:
    """Raise ConfigError if `run_dir` already holds the results of another run.

    The one exception: a requeued SLURM job finds its own interrupted run there, and resumes it
    in place (vaelab.tasks.train).
    """
    if not is_rank_zero_process() or (is_requeued_job() and interrupted_checkpoint(run_dir) is not None):
        return  # the other ranks of a run work in rank 0's directory
    earlier = [p.name for p in (Path(run_dir) / METRICS_FILE, Path(run_dir) / "checkpoints") if p.exists()]
    if earlier:
        raise ConfigError(
            f"{run_dir} already holds an earlier run ({', '.join(earlier)}); it is left untouched. "
            f"Choose another hydra.run.dir or leave it out"
        )


def lock_run_dir(run_dir: Path) -> None:
    """Make this process the one writer of `run_dir` until it exits; ConfigError if another holds it.

    An advisory lock (flock) on a file in the directory: the OS drops it when the holder ends,
    kill -9 too, so a stale lock never blocks a later run.
    """
    if not is_rank_zero_process():  # a run's other ranks write into rank 0's directory, without a lock
        return
    run_dir = Path(run_dir).resolve()
    if run_dir in _held_locks:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{run_dir} is being written by {holder}; two runs cannot share a run directory. "
                          f"Choose another hydra.run.dir or leave it out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"vaelab process {os.getpid()}\n")
    handle.flush()
    _held_locks[run_dir] = handle


def release_run_dir(run_dir: Path) -> None:
    """Let go of `run_dir` (the run is over) and remove the lock file, so the directory holds only results."""
    handle = _held_locks.pop(Path(run_dir).resolve(), None)
    if handle is not None:
        Path(handle.name).unlink(missing_ok=True)
        handle.close()


# -- the link between a training run and its evaluations ---------------------------------------------------
# eval.py writes its results into a directory of its own (outputs/evals/...), while the sweep summary and
# compare read training run directories. The link is kept in one place, the training run: eval.py leaves
# <run dir>/evals/<checkpoint>-<protocol digest>.json, the evaluation's scalar disentanglement numbers,
# its protocol and where its eval.json is. One file per (checkpoint, protocol): evaluations that run at
# once (eval.py -m) never write the same file, and an evaluation of the same checkpoint with the same
# protocol replaces the earlier one. Readers take a run's newest evaluation (`latest_evaluation`).

def training_run_dir(ckpt_path: Path) -> Optional[Path]:
    """The training run directory that holds the checkpoint (`<run dir>/checkpoints/<name>.ckpt`, with
    the run's .hydra/config.yaml or metrics.json beside), or None for a checkpoint kept elsewhere."""
    folder = Path(ckpt_path).resolve().parent
    run_dir = folder.parent
    if folder.name != "checkpoints":
        return None
    return run_dir if (run_dir / METRICS_FILE).is_file() or (run_dir / ".hydra" / "config.yaml").is_file() else None


def _evaluation_file(run_dir: Path, checkpoint: str, protocol: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(run_dir) / EVALS_DIR / f"{Path(checkpoint).stem}-{digest}.json"


def record_evaluation(run_dir: Path, entry: dict[str, Any]) -> Path:
    """Record an evaluation in the training run `run_dir`: `entry` holds `checkpoint`, `evaluation`
    (its directory), `protocol` (a dict), `protocol_text`, `scores` ({key: number}) and `keys` (the
    scores' order). Written atomically, with the time (UTC) it was written; the run's own files are
    left as they are."""
    entry = {**entry, "written": datetime.now(timezone.utc).isoformat()}
    return write_json(_evaluation_file(run_dir, entry["checkpoint"], entry["protocol"]), entry)


def evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluations recorded in `run_dir` (record_evaluation), newest first; each entry's `scores`
    in the order of its `keys`. Unreadable files (a foreign or damaged one) are skipped."""
    entries = []
    for path in (Path(run_dir) / EVALS_DIR).glob("*.json"):
        try:
            entry = json.loads(path.read_text())
            scores = entry["scores"]
            entry["scores"] = {key: scores[key] for key in entry.get("keys", sorted(scores)) if key in scores}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        entries.append(entry)
    return sorted(entries, key=lambda entry: str(entry.get("written", "")), reverse=True)


def latest_evaluation(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's newest evaluation with scores (`evaluations`), or None: its numbers are the run's."""
    return next((entry for entry in evaluations(run_dir) if entry["scores"]), None)
