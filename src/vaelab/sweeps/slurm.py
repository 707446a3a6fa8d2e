"""`hydra/launcher=slurm`: each sweep job is one SLURM job, and every task of it one rank of that
job's run.

The submission is hydra-submitit-launcher's (sbatch's settings, submitit's pickles and logs);
vaelab's launcher (hydra_plugins/vaelab_slurm_launcher) adds what a job of several tasks needs:

- **On the nodes**, srun starts every task at once and each runs the job's task function with the
  same config. Task r > 0 is rank r of the same run (`vaelab.rundir.cluster_rank`), so it takes no
  lock, writes no `.hydra/` and logs into `train_ddp_process_<r>.log` beside rank 0's `train.log`
  (`rank_settings`). A task whose run failed ends with its error (`vaelab.sweeps.jobs`), and srun,
  given `--kill-on-bad-exit=1` (`srun_args` in conf/hydra/launcher/slurm.yaml), then stops the
  job's other tasks, which would otherwise wait for it until DDP's timeout.
- **In the sweep's process**, a job is waited for until every task has left its result, or the job
  has left SLURM's queue: a task that srun stopped leaves none, and submitit alone would wait for
  it for ever on a cluster without accounting (its `sacct` fails at every poll there). Job states
  come from `squeue`, which every cluster has. A job that failed gets a metrics.json naming each
  failed rank and its error (`conclude`), so the sweep summary lists it as failed, with the cause.
"""

import logging
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab.rundir import rank_hydra_settings, read_record, write_record

log = logging.getLogger("vaelab")

# squeue's states of a job that will not run again (anything else may still leave results).
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "TIMEOUT"}
RESULT_GRACE_S = 5.0  # a result written just before the job ended can reach a shared file system late
MAX_POLL_S = 10.0


def rank_settings(sweep_config: DictConfig) -> None:
    """What this task of the job writes: everything for rank 0; for rank r > 0 neither `.hydra/`
    nor `train.log`, but its own `train_ddp_process_<r>.log` (vaelab.rundir.rank_hydra_settings)."""
    with open_dict(sweep_config):
        for key, value in rank_hydra_settings().items():
            OmegaConf.update(sweep_config, key, value)


def end_with_failure(job_return: JobReturn) -> JobReturn:
    """A task whose run failed raises its error (`return_value` does): it exits non-zero, srun stops
    the job's other tasks, and the sweep reads the error from its result; other returns pass unchanged."""
    if job_return.status == JobStatus.FAILED:
        return job_return.return_value  # raises the task's error
    return job_return


# -- the sweep's side ----------------------------------------------------------------------------

def _queue_states(job_ids: Sequence[str]) -> tuple[Optional[dict[str, str]], Optional[str]]:
    """squeue's state of each listed job (a job it does not list has left the queue), or None and
    why squeue could not be asked."""
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i %T", f"--jobs={','.join(job_ids)}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:  # every job has left the queue
            return {}, None
        return None, result.stderr.strip() or f"exit {result.returncode}"
    states = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition(" ")
        states[job_id] = state.strip()
    return states, None


def _results_written(job: Any) -> bool:
    return all(job.task(rank).paths.result_pickle.exists() for rank in range(job.num_tasks))


def wait(jobs: Sequence[Any]) -> None:
    """Until each job has every task's result or has left the queue without it (see above). The
    result files are looked at every second; squeue is asked less and less often (up to every
    MAX_POLL_S), and every second once a job has ended without its results."""
    waiting = list(jobs)
    ended_at: dict[str, float] = {}
    delay, said, ask_at = 1.0, None, 0.0
    while True:
        waiting = [job for job in waiting if not _results_written(job)]
        now = time.monotonic()
        waiting = [job for job in waiting if now - ended_at.get(job.job_id, now) < RESULT_GRACE_S]
        if not waiting:
            return
        if now < ask_at:
            time.sleep(1.0)
            continue
        states, problem = _queue_states([job.job_id for job in waiting])
        if problem is not None and problem != said:  # each new problem once, not at every poll
            log.warning("squeue failed (%s); asking again", problem)
        said = problem
        # A requeued job never looks ended here. Through `scontrol requeue` squeue lists it (Slurm 22.05) as
        # RUNNING, COMPLETING (Restarts already 1), PENDING (Reason BeginTime, then None once eligible;
        # `requeuehold` also shows PENDING), RUNNING again: listed all along, never in ENDED_STATES. A job
        # that shows an ended state after a requeue (FAILED, Restarts=1, when SLURM could not launch it
        # again) has ended for good, so Restarts, Reason and BeginTime need no special case.
        for job in waiting if states is not None else ():
            if states.get(job.job_id, "COMPLETED").split("+")[0] in ENDED_STATES:
                ended_at.setdefault(job.job_id, now)
            else:  # running, or pending again (requeued after a preemption)
                ended_at.pop(job.job_id, None)
        ask_at = now + (1.0 if ended_at.keys() & {job.job_id for job in waiting} else delay)
        delay = min(delay * 1.5, MAX_POLL_S)
        time.sleep(1.0)


def _error_line(traceback_text: str) -> str:
    """The exception's own line from a task's traceback, without a vaelab error's class name."""
    lines = [line for line in str(traceback_text).strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "an error without a message"
    kind, sep, message = last.partition(": ")
    return message if sep and kind.startswith("vaelab.") else last


def task_outcomes(job: Any) -> list[tuple[int, str, Any]]:
    """(rank, outcome, payload) per task: ("success", its JobReturn), ("error", its error line), or
    ("missing", None) for a task that ended without a result (stopped by srun or by SLURM)."""
    from submitit.core.utils import pickle_load

    outcomes = []
    for rank in range(job.num_tasks):
        path = job.task(rank).paths.result_pickle
        if not path.exists():
            outcomes.append((rank, "missing", None))
            continue
        outcome, payload = pickle_load(path)
        outcomes.append((rank, outcome, _error_line(payload) if outcome == "error" else payload))
    return outcomes


def _job_dir(sweep_dir: Path, job_num: int) -> Optional[Path]:
    found = [p for p in Path(sweep_dir).glob(f"{job_num}_*") if (p / ".hydra").is_dir()]
    return found[0] if len(found) == 1 else None


def failure(job: Any, outcomes: list[tuple[int, str, Any]]) -> Optional[str]:
    """What went wrong in the job, rank by rank in the order they failed (the first is the cause;
    the others often only waited for it), or None if every task returned."""
    def failed_at(rank: int) -> float:
        return job.task(rank).paths.result_pickle.stat().st_mtime

    failed = sorted((rank for rank, outcome, _ in outcomes if outcome == "error"), key=failed_at)
    errors = {rank: payload for rank, _, payload in outcomes}
    lines = [f"rank {rank} failed: {errors[rank]}" for rank in failed]
    missing = [rank for rank, outcome, _ in outcomes if outcome == "missing"]
    if not lines and not missing:
        return None
    if missing:
        ranks = ", ".join(map(str, missing))
        lines.append(f"rank{'s' if len(missing) > 1 else ''} {ranks} ended without a result (stopped by srun "
                     f"or SLURM, or never started: see {job.paths.folder})")
    return "; ".join(lines)


def conclude(job: Any, job_num: int, overrides: Sequence[str], sweep_dir: Path, planned_dir: Callable[[], Path]
             ) -> JobReturn:
    """The job's return for the sweeper: rank 0's when every task returned; otherwise its failure
    goes into the job's metrics.json (unless rank 0 recorded a finished or interrupted run) and the
    job returns nothing, as a failed job of any vaelab sweep does (vaelab.sweeps.jobs).

    A job that failed before Hydra made its directory (its Python did not start on the node, say)
    gets one here (`planned_dir()`, where Hydra would have made it), with `.hydra/overrides.yaml`,
    so that the summary lists it as failed."""
    outcomes = task_outcomes(job)
    error = failure(job, outcomes)
    if error is None:
        return outcomes[0][2]
    log.error("job #%d (SLURM job %s) failed: %s", job_num, job.job_id, error)
    job_dir = _job_dir(sweep_dir, job_num)
    if job_dir is None:
        job_dir = planned_dir()
        (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(list(overrides)), job_dir / ".hydra" / "overrides.yaml")
    record = read_record(job_dir) or {}
    if record.get("status") not in ("completed", "interrupted"):
        if record.get("error") and record["error"] not in error:
            error += f" (rank 0 recorded: {record['error']})"
        write_record(job_dir, {**record, "status": "failed", "error": error, "run_dir": str(job_dir)})
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)
