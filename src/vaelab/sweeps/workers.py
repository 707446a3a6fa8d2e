"""Jobs that run at once in joblib's worker processes: one GPU each, and a share of the cores.

Hydra's joblib launcher (`hydra/launcher=joblib`) starts `hydra.launcher.n_jobs` worker
processes and hands each the next job; a worker runs job after job, so the imports, the loaded
data (vaelab.data.cache) and the CUDA context of its first job serve the later ones. Left alone,
every worker would train on the first GPU and start as many torch threads as the machine has
cores. So the first job of a worker claims the lowest free worker slot, a lock file in the
sweep directory that the worker holds until it exits, and

- slot s trains on GPU number s mod G of the G GPUs that the sweep sees (`CUDA_VISIBLE_DEVICES`
  of the sweep, else all of them): the worker's `CUDA_VISIBLE_DEVICES` is set to that one GPU
  before CUDA starts in it, so `trainer.devices=1` means that GPU;
- torch uses at most (CPU cores // workers) threads in it.

metrics.json records the assignment as `worker`. A job on several devices runs in a process of
its own (vaelab.sweeps.jobs) with the sweep's CUDA_VISIBLE_DEVICES (`sweep_environment`), not the
worker's one GPU.
"""

import fcntl
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Optional

log = logging.getLogger("vaelab")

SLOTS_DIR = ".vaelab-workers"


@dataclass(frozen=True)
class WorkerSlot:
    slot: int
    workers: int
    cuda_visible_devices: Optional[str]  # the one GPU of this worker; None without GPUs
    torch_threads: int
    pid: int

    def as_record(self) -> dict:
        return asdict(self)


_claimed: Optional[WorkerSlot] = None
_slot_gpu: Optional[str] = None  # the GPU of this worker's slot (applied by its first one-device job)
_sweep_visible: Optional[str] = None  # CUDA_VISIBLE_DEVICES as the sweep had it, before the worker's
_held: list[IO] = []  # the lock files of this process's slot: kept open, so kept locked


def resolved_n_jobs(n_jobs: Optional[int], cores: int) -> int:
    """joblib's meaning of n_jobs: −1 all cores, −2 all but one, …; None or 0 one."""
    if not n_jobs:
        return 1
    return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or their indices)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    import torch  # here: the entry points import this module before they need torch (`--help` stays fast)

    # Counted through NVML: CUDA itself does not start, so the variable can still be set.
    return [str(i) for i in range(torch.cuda.device_count())]


def claim_slot(folder: Path) -> int:
    """The lowest slot number whose lock file in `folder` no other process holds; held from now on."""
    folder.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        handle = open(folder / f"slot{slot}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            slot += 1
            continue
        _held.append(handle)
        return slot


def take_worker_slot(sweep_dir: Path, n_jobs: Optional[int], several_devices: bool) -> WorkerSlot:
    """This worker's slot, GPU and thread count: claimed by its first job; its GPU made the only
    visible one by its first job on one device (before CUDA starts in the worker)."""
    global _claimed, _slot_gpu, _sweep_visible
    import torch

    if _claimed is None:
        cores = os.cpu_count() or 1
        workers = resolved_n_jobs(n_jobs, cores)
        slot = claim_slot(Path(sweep_dir) / SLOTS_DIR)
        _sweep_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible_gpus()
        _slot_gpu = gpus[slot % len(gpus)] if gpus else None
        threads = max(1, min(torch.get_num_threads(), cores // workers))
        torch.set_num_threads(threads)
        _claimed = WorkerSlot(slot, workers, None, threads, os.getpid())
    if not several_devices and _claimed.cuda_visible_devices is None and _slot_gpu is not None:
        if torch.cuda.is_initialized():  # too late to choose: say so rather than share silently
            log.warning("joblib worker %d: CUDA already started, so it keeps the sweep's GPUs", _claimed.slot)
            _slot_gpu = None
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = _slot_gpu
            _claimed = replace(_claimed, cuda_visible_devices=_slot_gpu)
    worker = _claimed
    log.info("joblib worker %d of %d (pid %d): %s, %d torch thread(s)", worker.slot, worker.workers, worker.pid,
             f"CUDA_VISIBLE_DEVICES={worker.cuda_visible_devices}" if worker.cuda_visible_devices else "no GPU of its own",
             worker.torch_threads)
    return worker


def sweep_environment() -> dict[str, str]:
    """This process's environment with the sweep's own CUDA_VISIBLE_DEVICES: for a job on several
    devices, which runs as a process of its own and must see the sweep's GPUs, not the worker's one."""
    env = dict(os.environ)
    if _claimed is not None and _claimed.cuda_visible_devices is not None:
        if _sweep_visible is None:
            env.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            env["CUDA_VISIBLE_DEVICES"] = _sweep_visible
    return env


def current_worker() -> Optional[WorkerSlot]:
    """The slot of this process if it is a joblib worker that has run a job, else None."""
    return _claimed
