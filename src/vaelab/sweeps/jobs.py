"""Hydra multirun jobs: failure tolerance, W&B grouping, and jobs on several devices.

Multirun + multi-device. Lightning's DDP launcher starts ranks 1..N-1 by rerunning the script
with the original command line plus `hydra.run.dir=<rank 0's dir>`. Under `--multirun` that
command line is the whole sweep, so a relaunched rank starts a second sweep in another
directory (and with Optuna samples other hyperparameters). Inside one long-lived sweep process
the launcher also leaves LOCAL_RANK/MASTER_PORT in the environment and a process group behind,
so the next job would wait for ranks that never come, and its child-process watchdog kills the
whole sweep when one rank of one job fails.

So a job that asks for more than one device runs in a process of its own: the job's process
starts `python train.py <the job's overrides> hydra.run.dir=<the job's dir> hydra.mode=RUN` and
waits for it. That is an ordinary single run, the path tested for single runs: Lightning
relaunches its ranks with exactly that command line, so every rank composes the very config of
the job (including the values Optuna sampled) and works in the job's directory. Whatever goes
wrong in it (an exception, a NaN, a rank killed) ends that process only; the sweep reads the
job's metrics.json and goes on. It costs one Python start per multi-device job. Considered and
not taken: `ddp_spawn`, which pickles the trainer into fresh workers and brings back only the
weights, the best checkpoint path and callback_metrics (the state of BestEpochMetrics and the
epoch count stay in the workers, the W&B run must be attached to from each worker, and fit and
test each spawn again), and
patching Lightning's private relaunch command (the leftover environment, process group and
watchdog above remain). Under SLURM (`hydra/launcher=slurm`) each task is one rank already and
no process is started.
"""

import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig

from vaelab.errors import RunInterrupted, VaelabError
from vaelab.settings import LOCATION_KEYS
from vaelab.rundir import METRICS_FILE, cluster_tasks, is_rank_zero_process, read_record, write_record
from vaelab.sweeps.workers import sweep_environment, take_worker_slot

log = logging.getLogger("vaelab")

# Set for the process that runs one multi-device sweep job: its W&B group, and that it is a job.
SWEEP_GROUP_ENV = "VAELAB_SWEEP_GROUP"
_MAX_TAG_LENGTH = 64  # W&B rejects longer tags


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_sweep_job() -> bool:
    """A job of a multirun, in the sweep's process or in a process of its own."""
    return in_multirun() or SWEEP_GROUP_ENV in os.environ


def sweep_group() -> Optional[str]:
    """The W&B group of this sweep job: '<experiment or task name>-<date>_<time of the sweep>'."""
    if SWEEP_GROUP_ENV in os.environ:
        return os.environ[SWEEP_GROUP_ENV]
    if not in_multirun():
        return None
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    name = choices.get("experiment") or choices.get("hparams_search") or hydra_cfg.job.name
    sweep_dir = Path(hydra_cfg.sweep.dir)  # ends in <date>/<time> unless the user chose another
    return f"{name}-{sweep_dir.parent.name}_{sweep_dir.name}"


def override_tags() -> list[str]:
    """One W&B tag per override of this run (`model=ae`, `model.beta=4`), locations left out."""
    if not HydraConfig.initialized():
        return []
    tags = []
    for override in HydraConfig.get().overrides.task:
        override = str(override).lstrip("+~")
        if not override.startswith(LOCATION_KEYS):
            tags.append(override[:_MAX_TAG_LENGTH])
    return tags


def trainer_processes(trainer_cfg: Optional[DictConfig]) -> Optional[int]:
    """How many processes the trainer config asks for (devices × nodes), None when Lightning
    decides (devices=-1 or auto)."""
    if trainer_cfg is None:  # a task without a Trainer (eval.py)
        return 1
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1) or 1
    if isinstance(devices, (list, tuple, ListConfig)):
        count = len(devices)
    elif isinstance(devices, str):
        count = len(devices.split(",")) if "," in devices else (int(devices) if devices.isdigit() else None)
    else:
        count = devices
    return count * nodes if isinstance(count, int) and count >= 1 else None


def _one_process(trainer_cfg: Optional[DictConfig]) -> bool:
    return trainer_processes(trainer_cfg) == 1


def in_joblib_worker() -> bool:
    """A multirun job that Hydra's joblib launcher handed to one of its worker processes."""
    return in_multirun() and "joblib" in str(HydraConfig.get().launcher.get("_target_", "")).lower()


def needs_own_process(cfg: DictConfig) -> bool:
    """True for a multirun job on several devices that Lightning would start itself (see above)."""
    return in_multirun() and cluster_tasks() == 1 and not _one_process(cfg.get("trainer"))


class JobFailed(VaelabError):
    """A sweep job's own process failed; its metrics.json (if any) already says why."""


def run_in_own_process(cfg: DictConfig, entry_point: str) -> Optional[float]:
    """Run this sweep job as a single run of `entry_point` in the job's directory; see above."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    command = [
        sys.executable, entry_point, *hydra_cfg.overrides.task,
        f'hydra.run.dir="{run_dir}"',
        "hydra.output_subdir=null",  # the sweep wrote .hydra/ for this job already
        "hydra.mode=RUN",  # an experiment or hparams_search may set MULTIRUN
    ]
    log.info("job %s on several devices: running it as its own process", run_dir.name)
    env = {**sweep_environment(), SWEEP_GROUP_ENV: sweep_group() or ""}  # the sweep's GPUs, not a joblib worker's one
    returncode = subprocess.run(command, env=env).returncode
    record = read_record(run_dir)
    if record is None:
        raise JobFailed(f"the job's process exited with code {returncode} and wrote no {METRICS_FILE}; "
                        f"see {run_dir / 'train.log'}")
    if record.get("status") != "completed":
        raise JobFailed(record.get("error") or f"the job's process exited with code {returncode}")
    value = record.get(cfg.get("optimized_metric") or "")
    return value if isinstance(value, float) and math.isfinite(value) else None


def record_failure(cfg: DictConfig, error: str) -> None:
    """Write a failed metrics.json for a job that stopped before `run` wrote its own."""
    if not is_rank_zero_process() or not HydraConfig.initialized():
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if read_record(run_dir) is not None:  # `run` recorded it (or an earlier run is there: keep it)
        return
    write_record(run_dir, {"status": "failed", "error": error, "run_name": cfg.get("run_name"), "run_dir": str(run_dir)})


def _finish_stray_wandb_run() -> None:
    """A run left open by a failed job would swallow the next job's logs (wandb.init reuses it)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)


def describe_error(err: BaseException) -> str:
    return str(err) if isinstance(err, VaelabError) else f"{type(err).__name__}: {err}"


def run_sweep_job(check: Callable[[DictConfig], None], task: Callable[[DictConfig], Any], cfg: DictConfig,
                  entry_point: str) -> Optional[float]:
    """Check and run one multirun job; a failure is logged and recorded, and the sweep goes on.

    Returns the optimised metric, or None for a failed job (the Optuna sweeper records such a
    trial as failed). `vaelab.reports.summary.SweepSummary` makes the sweep's exit code non-zero.
    """
    try:
        check(cfg)  # a bad value fails here with its message, before any data or process
        if in_joblib_worker():  # one GPU and a share of the cores per worker (vaelab.sweeps.workers)
            hydra_cfg = HydraConfig.get()
            take_worker_slot(Path(hydra_cfg.sweep.dir), hydra_cfg.launcher.get("n_jobs"), needs_own_process(cfg))
        if needs_own_process(cfg):
            return run_in_own_process(cfg, entry_point)
        return task(cfg)
    except RunInterrupted as err:
        # A preempted sweep starts no further job: the job's metrics.json says "interrupted",
        # and the sweep's process ends with the signal's exit code for the scheduler to see.
        log.error("job interrupted: %s; the sweep stops here", err)
        _finish_stray_wandb_run()
        sys.exit(err.exit_code)
    except Exception as err:
        if isinstance(err, VaelabError):
            log.error("job failed: %s", err)
        else:
            log.exception("job failed: %s", describe_error(err))
        if is_rank_zero_process():
            record_failure(cfg, describe_error(err))
            _finish_stray_wandb_run()
        if cluster_tasks() > 1:
            # One of several ranks that the cluster started (srun): the task must end with an error,
            # so that srun stops the job's other ranks (--kill-on-bad-exit) instead of leaving them
            # waiting for this one; the SLURM launcher then reads each rank's error.
            raise
        return None
