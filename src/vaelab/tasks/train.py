"""The training task that `python train.py` runs: fit, test the best checkpoint, write metrics.json.

Data flows one way: checked config (vaelab.config, before this runs) → DataModule,
LightningModule, loggers, callbacks, Trainer (each built from its group's `_target_`) →
Trainer.fit → test on the best checkpoint → metrics.json → the optimised metric is returned.
"""

import logging
import math
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab.checkpoints import AtomicCheckpointIO, check_resumable, read_checkpoint
from vaelab.errors import RunInterrupted, VaelabError
from vaelab.rundir import (cluster_tasks, interrupted_checkpoint, is_rank_zero_process, is_requeued_job, lock_run_dir,
                           refuse_earlier_run, release_run_dir, write_record)
from vaelab.sweeps.jobs import trainer_processes
from vaelab.sweeps.workers import current_worker
from vaelab.tasks.build import build, build_each
from vaelab.training.callbacks import BestEpochMetrics, Preemption
from vaelab.training.loggers import continue_wandb_run, finish_loggers, log_hyperparameters

log = logging.getLogger(__name__)


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _stopped_by_signal(err: BaseException, callbacks: list[pl.Callback]) -> Optional[Preemption]:
    preemption = next((c for c in callbacks if isinstance(c, Preemption)), None)
    if preemption is not None and preemption.signal is not None and isinstance(err, (SystemExit, KeyboardInterrupt)):
        return preemption
    return None


def _write_record_keeping_the_error(run_dir: Path, record: dict[str, Any], failing: bool) -> None:
    """metrics.json; when the run is already failing (a full disk, say), a second error in writing
    the record is logged, so that the first one is what the user reads."""
    try:
        write_record(run_dir, record)
    except OSError as err:
        if not failing:
            raise
        log.error("metrics.json could not be written either: %s", err)


def _resume_in_place(run_dir: Path) -> Optional[str]:
    """The interrupted checkpoint of this run directory when SLURM started this job again after
    preempting it (same command, same directory), else None."""
    checkpoint = interrupted_checkpoint(run_dir) if is_requeued_job() else None
    if checkpoint is None:
        return None
    restart = os.environ["SLURM_RESTART_COUNT"]
    log.info("requeued by SLURM (restart %s): resuming in place from %s", restart, checkpoint)
    if is_rank_zero_process():
        for csv_file in run_dir.glob("csv/metrics.csv"):  # Lightning's CSVLogger would delete it
            csv_file.rename(csv_file.with_name(f"metrics.until_restart{restart}.csv"))
    return str(checkpoint)


def trainer_settings(trainer_cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """The Trainer's own settings, and vaelab's choice of strategy: with several processes and
    no strategy chosen, DDP whose processes wait `trainer.ddp_timeout_s` for each other (when
    they meet at the start, and at every step), so a rank that fails before the others reach it
    ends the run after that time instead of leaving them waiting."""
    timeout = trainer_cfg.get("ddp_timeout_s")
    settings = trainer_cfg.copy()
    with open_dict(settings):
        settings.pop("ddp_timeout_s", None)
    several = (trainer_processes(trainer_cfg) or 1) > 1 or cluster_tasks() > 1
    if not several or timeout is None or settings.get("strategy", "auto") not in ("auto", "ddp"):
        return settings, {}
    from pytorch_lightning.strategies import DDPStrategy

    return settings, {"strategy": DDPStrategy(timeout=timedelta(seconds=timeout))}


def run(cfg: DictConfig) -> Optional[float]:
    """Train and test one model as `cfg` says; returns the value of `cfg.optimized_metric`."""
    # Every process logs this into its own log file (a relaunched DDP rank: train_ddp_process_<r>.log),
    # so one can see that all ranks train the same model.
    log.info("hyperparameters: model=%s latent_dim=%s hidden_dims=%s beta=%s lr=%s seed=%s", cfg.model.name,
             cfg.model.latent_dim, cfg.model.hidden_dims, cfg.model.get("beta"), cfg.model.lr, cfg.seed)
    run_dir = Path(cfg.paths.output_dir)
    refuse_earlier_run(run_dir)
    lock_run_dir(run_dir)  # this process is its one writer until the run ends, however it ends
    try:
        return _train_and_test(cfg, run_dir)
    finally:
        release_run_dir(run_dir)


def _train_and_test(cfg: DictConfig, run_dir: Path) -> Optional[float]:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # Resolve (and download) the data before the Trainer exists: DDP relaunches this script
    # for the other ranks once the Trainer starts, and they must find the same data.
    started = time.perf_counter()
    datamodule = build("data", cfg.data)
    data_info = datamodule.load()
    stage_seconds = {"time/data_s": time.perf_counter() - started}
    log.info("data: done in %.1f s", stage_seconds["time/data_s"])
    # Clipping is the step's (Lightning refuses it under manual optimisation): the module gets it.
    clipping = {key: cfg.trainer.get(key) for key in ("gradient_clip_val", "gradient_clip_algorithm")}
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True) if "optimizer" in cfg else None
    ckpt_path = cfg.get("ckpt_path") or _resume_in_place(run_dir)
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
    if checkpoint is not None:  # before any training: a file that is unreadable, unsafe or of another model is one line
        model_keys = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
        check_resumable(checkpoint, ckpt_path, model_keys, optimizer, clipping, list(datamodule.image_shape))
    module = build("model", cfg.model, image_shape=list(datamodule.image_shape), pixel_range=list(cfg.data.pixel_range),
                   optimizer=optimizer, **clipping)
    loggers = build_each("logger", cfg.get("logger"))
    if checkpoint is not None:  # a resume logs into the checkpoint's W&B run (vaelab.training.loggers)
        continue_wandb_run(loggers, checkpoint, ckpt_path)
    del checkpoint  # Lightning reads the file again to restore the trainer: do not hold it twice
    callbacks = build_each("callbacks", cfg.get("callbacks"))
    # Checkpoints are written atomically in their own directory and read with weights_only=True.
    trainer_cfg, strategy = trainer_settings(cfg.trainer)
    trainer: pl.Trainer = build("trainer", trainer_cfg, logger=loggers, callbacks=callbacks,
                                plugins=[AtomicCheckpointIO()], **strategy, **{key: None for key in clipping})
    log_hyperparameters(loggers, {**OmegaConf.to_container(cfg, resolve=True), "data_used": data_info})

    record: dict[str, Any] = {"status": "running", "run_name": cfg.run_name, "run_dir": str(run_dir)}
    failed = True
    try:
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        stage_seconds["time/fit_s"] = time.perf_counter() - started
        log.info("fit: done in %.1f s (%d epochs, %d steps)", stage_seconds["time/fit_s"], trainer.current_epoch,
                 trainer.global_step)
        record.update(_floats({k: v for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "time/"))}))
        record.update(module.last_step_values)
        best = next((c for c in callbacks if isinstance(c, BestEpochMetrics)), None)
        best_val = best.metrics if best is not None else {}
        record.update(best_val or _floats({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}))
        checkpoint = trainer.checkpoint_callback
        best_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        if cfg.test:
            if best_path is None:
                log.warning("no best checkpoint was saved (fast_dev_run or no checkpoint callback): testing the last weights")
            started = time.perf_counter()
            trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
            stage_seconds["time/test_s"] = time.perf_counter() - started
            log.info("test: done in %.1f s", stage_seconds["time/test_s"])
            record.update(_floats({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
        record.update(
            status="completed",
            best_checkpoint=best_path,
            best_epoch=best.epoch if best is not None else None,
            last_checkpoint=str(run_dir / "checkpoints" / "last.ckpt") if best_path else None,
            epochs=trainer.current_epoch,
            global_step=trainer.global_step,
        )
        failed = False
    except BaseException as err:
        preemption = _stopped_by_signal(err, callbacks)
        if preemption is None:
            record.update(status="failed", error=str(err) if isinstance(err, VaelabError) else f"{type(err).__name__}: {err}")
            raise
        name = preemption.signal.name
        resume = (f"requeued as SLURM job {preemption.requeued}, which resumes from {preemption.saved}" if preemption.requeued
                  else f"resume with python train.py ckpt_path={preemption.saved}" if preemption.saved
                  else "the fit had finished; its checkpoints are in place")
        record.update(status="interrupted", signal=name, resume_checkpoint=str(preemption.saved) if preemption.saved else None,
                      epochs=trainer.current_epoch, global_step=trainer.global_step)
        raise RunInterrupted(f"{name} stopped the run at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                             f"{resume}", int(preemption.signal)) from None
    finally:
        if trainer.is_global_zero:
            record.update({**data_info, **stage_seconds}, seed=cfg.seed, devices=trainer.world_size,
                          accelerator=type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
                          model=cfg.model.name, terms=list(module.terms), beta=cfg.model.get("beta"),
                          latent_dim=cfg.model.latent_dim, recon_loss=cfg.model.recon_loss)
            if current_worker() is not None:  # a joblib worker's GPU and threads (vaelab.sweeps.workers)
                record["worker"] = current_worker().as_record()
            _write_record_keeping_the_error(run_dir, record, failing=failed)
            finish_loggers(loggers, failed=failed)

    if trainer.is_global_zero:
        log.info("metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.items())
                                          if "/" in k and isinstance(v, float) and not k.startswith("data/")))
    metric = cfg.get("optimized_metric")
    value = record.get(metric) if metric else None
    return value if value is None or math.isfinite(value) else None
