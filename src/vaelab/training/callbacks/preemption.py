"""Preemption: SIGTERM (what SLURM and cloud schedulers send), SIGINT (Ctrl-C) and SLURM's
advance warning (SIGUSR2, which submitit asks SLURM to send `signal_delay_s` before a time
limit or a preemption) stop a run at the end of the current training batch, with a resumable
checkpoint.

Lightning turns SIGTERM into an exception at the end of the batch in flight; SIGINT and SIGUSR2
are made to do the same here (Python would raise KeyboardInterrupt wherever the process is,
half-way through an optimiser step too; a second Ctrl-C still stops at once). On any of them,
this callback writes `<dirpath>/interrupted.ckpt` (atomically, through
vaelab.checkpoints.AtomicCheckpointIO) with the weights, the optimiser, the loops' progress, the
loader's position in the epoch and the random generators. The train task then records
`"status": "interrupted"` and exits with 128 + the signal's number. `python train.py
ckpt_path=<that file>` continues mid-epoch, from the next batch.

On several devices every rank stops before the same batch, whichever of them got the signal:
they agree on it at the start of every batch (one small all-reduce).

Under SLURM, SIGUSR2 also requeues the job (`scontrol requeue`, once the run's record is written:
`requeue_job`); SIGTERM does not, since
`scancel` sends it too (a cluster with PreemptMode=REQUEUE requeues by itself). A requeued job
runs the same command in the same run directory and resumes there (vaelab.tasks.train).
"""

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


# The advance warning of a time limit or preemption; submitit's setting names it too.
WARNING_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


# The Preemption callbacks set up in this process (a stack's members have one each), and the
# handlers that `_dispatch` replaced while there are any: one handler tells them all, and the
# process's own handlers come back when the last one is torn down, whatever the order.
_listening: list["Preemption"] = []
_replaced: dict = {}


def _dispatch(signum, frame) -> None:
    if not _listening:
        # Lightning puts back the handlers it found when the fit started, ours among them, after an
        # interrupted fit has left: the signal goes where it went before any fit.
        signal.signal(signum, _replaced.get(signum, signal.SIG_DFL))
        signal.raise_signal(signum)
        return
    first = all(p.received is None for p in _listening)
    if not first:  # a second signal: stop now, maybe half-way through a step
        for p in _listening:
            p._forced = True
        raise KeyboardInterrupt
    for p in _listening:
        p.received = signal.Signals(signum)
    log.warning("%s: stopping after this batch with a resumable checkpoint%s", signal.Signals(signum).name,
                " (Ctrl-C again stops at once)" if signum == signal.SIGINT else "")


def slurm_job_id() -> Optional[str]:
    """The id that `scontrol requeue` takes: <array job>_<task> for an array task, else the job's."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class Preemption(pl.Callback):
    def __init__(self, dirpath: str, filename: str = "interrupted", requeue: bool = True):
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.requeue = requeue  # under SLURM, on the warning signal
        self.requeued: Optional[str] = None  # the SLURM job id requeued
        self.signal: Optional[signal.Signals] = None  # what stopped the run (this process's, or another rank's)
        self.received: Optional[signal.Signals] = None  # what this process got
        self.saved: Optional[Path] = None  # the checkpoint written for it
        self._forced = False  # stopped at once: the weights may be half-updated, so nothing is saved

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread() and self not in _listening:
            if not _listening:
                for number in (signal.SIGINT, WARNING_SIGNAL):
                    previous = signal.signal(number, _dispatch)
                    if previous is not _dispatch:  # not ours left behind by an interrupted fit
                        _replaced[number] = previous
            _listening.append(self)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop_listening()

    def _stop_listening(self) -> None:
        """Leave `_dispatch`; the last to leave puts the process's handlers back, except where Lightning
        put its own in the meantime (it ignores SIGINT while it shuts down after one)."""
        if self not in _listening:
            return
        _listening.remove(self)
        if not _listening:
            for number, handler in _replaced.items():
                if signal.getsignal(number) is _dispatch:
                    signal.signal(number, handler)

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        # Before the next step, not at the end of this one: Lightning counts a batch as completed
        # after on_train_batch_end, and the checkpoint must count the batch the weights have seen.
        received = self.received  # one reading: the signal may arrive at any moment, also during the agreement
        if trainer.world_size > 1:
            received = self._agree_on_the_signal(trainer, received)
        if received is not None:
            self.signal = received
            raise KeyboardInterrupt  # Lightning's graceful path: on_exception, teardown

    def _agree_on_the_signal(self, trainer: pl.Trainer, received: Optional[signal.Signals]) -> Optional[signal.Signals]:
        """The signal any rank had received when it reached this batch, the same on every rank: all
        stop before the same batch (SLURM signals each task on its own, a little apart), since a rank
        that stopped alone would leave the others waiting in the step's all-reduce. One small
        all-reduce per step, on several devices only."""
        mine = torch.tensor(float(received or 0), device=trainer.strategy.root_device)
        signum = int(trainer.strategy.reduce(mine, reduce_op="max").item())
        if signum and received is None:
            log.warning("%s reached another rank: stopping after this batch with a resumable checkpoint",
                        signal.Signals(signum).name)
        return signal.Signals(signum) if signum else None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop_listening()  # Lightning calls no teardown hook after an exception
        if isinstance(exception, SIGTERMException):
            self.signal = self.signal or signal.SIGTERM
        elif isinstance(exception, KeyboardInterrupt):  # ours (a stack's other member raised it), or Ctrl-C's
            self.signal = self.signal or self.received or signal.SIGINT
        else:
            return
        if trainer.state.fn != TrainerFn.FITTING or self._forced:  # a finished fit has its checkpoints already
            return
        trainer.save_checkpoint(self.path)
        self.saved = self.path
        log.warning("%s: saved %s at epoch %d, step %d", self.signal.name, self.path, trainer.current_epoch,
                    trainer.global_step)

    def requeue_job(self) -> Optional[str]:
        """Under SLURM, after the warning signal stopped the run and its checkpoint is saved: `scontrol
        requeue` the job (the id, or None). The train task calls it once the run's record is written:
        SLURM ends the job's processes as it requeues, which had raced the record's writing (a 2-task
        job on the test cluster lost it)."""
        job = slurm_job_id()
        if not (self.requeue and self.signal == WARNING_SIGNAL and job and self.saved):
            return None
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            problem = result.stderr.strip() or f"exit {result.returncode}" if result.returncode else None
        except OSError as err:  # no scontrol on this machine
            problem = str(err)
        if problem is None:
            self.requeued = job
            log.warning("requeued SLURM job %s: it resumes in this run directory", job)
        else:
            log.warning("scontrol requeue %s failed (%s): resume by hand with ckpt_path=%s", job, problem, self.path)
        return self.requeued
