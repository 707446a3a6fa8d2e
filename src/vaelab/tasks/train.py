"""The training task that `python train.py` runs: fit, test the best checkpoint, write metrics.json;
for one job, or for a stack of jobs trained as one model (`train_stack`, hydra/launcher=stacked).

Data flows one way: checked config (vaelab.config, before this runs) → DataModule,
LightningModule, loggers, callbacks, Trainer (each built from its group's `_target_`) →
Trainer.fit → test on the best checkpoint → metrics.json → the optimised metric is returned.

A stack of N jobs (that differ only in per-member settings: vaelab.sweeps.stacking) runs the same
code: each member is built as its single run builds it (seed, then the LightningModule), the
members train as one (LitAutoencoder.stack), and each leaves in its own run directory what its
single run leaves (metrics.json with `"stacked": {"members": N, "index": n}`, its CSV record and
W&B run, its checkpoints written by its own ModelCheckpoint, its panels), through the views of
training/members.py. A member that fails (a NaN loss) fails alone.
"""

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab.checkpoints import AtomicCheckpointIO, check_resumable, read_checkpoint
from vaelab.errors import RunInterrupted, VaelabError
from vaelab.rundir import (cluster_tasks, interrupted_checkpoint, is_rank_zero_process, is_requeued_job, lock_run_dir,
                           refuse_earlier_run, release_run_dir, write_record)
from vaelab.sweeps.jobs import override_tags, sweep_group, trainer_processes
from vaelab.sweeps.stacking import check_stack
from vaelab.sweeps.workers import current_worker
from vaelab.tasks.build import build, build_each
from vaelab.training import LitAutoencoder
from vaelab.training.callbacks import BestEpochMetrics, ModelSummary, Preemption, early_stopping_record
from vaelab.training.loggers import continue_wandb_run, finish_loggers, log_hyperparameters
from vaelab.training.members import Member, member_metrics, member_views

log = logging.getLogger(__name__)


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


@dataclass
class MemberResult:
    status: str  # "completed", "failed" or "interrupted"
    value: Optional[float]  # the job's cfg.optimized_metric; None when it is missing or not finite
    error: Optional[str] = None


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


def log_interval(trainer_cfg: DictConfig, train_size: int, batch_size: int) -> DictConfig:
    """`trainer.log_every_n_steps`, at most the batches of one epoch: on small data (the 5,000-digit
    fallback has 28 batches of 128) a longer interval would log step values less often than once
    per epoch, and Lightning warns at every fit."""
    batches = math.ceil(train_size / batch_size)  # the fewest a rank takes per epoch (a global batch)
    every = trainer_cfg.get("log_every_n_steps") or 0
    if every <= batches:
        return trainer_cfg
    log.info("step values: logged every %d steps, once per epoch of %d batches (trainer.log_every_n_steps=%d)",
             batches, batches, every)
    settings = trainer_cfg.copy()
    settings.log_every_n_steps = batches
    return settings


def run(cfg: DictConfig) -> Optional[float]:
    """Train and test one model as `cfg` says; returns the value of `cfg.optimized_metric`."""
    # Every process logs this into its own log file (a relaunched DDP rank: train_ddp_process_<r>.log),
    # so one can see that all ranks train the same model.
    log.info("hyperparameters: model=%s latent_dim=%s hidden_dims=%s beta=%s lr=%s seed=%s", cfg.model.name,
             cfg.model.latent_dim, cfg.model.hidden_dims, cfg.model.get("beta"), cfg.model.lr, cfg.seed)
    return _locked([cfg])[0].value


def train_stack(cfgs: Sequence[DictConfig], callbacks: Sequence[pl.Callback] = ()) -> list[MemberResult]:
    """Train the jobs `cfgs` (resolved configs, as `run` gets each) as one stack; one MemberResult per
    job, in order. `callbacks` are added to the Trainer (a hook for tests)."""
    cfgs = list(cfgs)
    check_stack(cfgs)
    for i, cfg in enumerate(cfgs):
        log.info("stacked member %d/%d: beta=%s free_bits=%s kl_schedule=%s lr=%s seed=%s -> %s", i, len(cfgs),
                 cfg.model.get("beta"), cfg.model.get("free_bits"), cfg.model.get("kl_schedule"), cfg.model.lr,
                 cfg.seed, cfg.paths.output_dir)
    return _locked(cfgs, list(callbacks))


def _locked(cfgs: list[DictConfig], extra_callbacks: Sequence[pl.Callback] = ()) -> list[MemberResult]:
    """`_train_and_test` with each run directory refused if used and locked (this process is its one
    writer until the run ends, however it ends)."""
    run_dirs = [Path(cfg.paths.output_dir) for cfg in cfgs]
    for run_dir in run_dirs:
        refuse_earlier_run(run_dir)
    locked = []
    try:
        for run_dir in run_dirs:
            lock_run_dir(run_dir)
            locked.append(run_dir)
        return _train_and_test(cfgs, run_dirs, extra_callbacks)
    finally:
        for run_dir in locked:
            release_run_dir(run_dir)


def _build_module(cfgs: list[DictConfig], image_shape: list[int], optimizer: Optional[dict],
                  clipping: dict[str, Any], device: Any = "cpu") -> tuple[LitAutoencoder, Optional[list]]:
    """The LightningModule, as each job's single run builds its model (seed, then build); a stack's
    members also get the generator their single run draws its noise from, on the training `device`."""
    def build_one(cfg: DictConfig) -> LitAutoencoder:
        return build("model", cfg.model, image_shape=image_shape, pixel_range=list(cfg.data.pixel_range),
                     optimizer=optimizer, **clipping)

    if len(cfgs) == 1:
        return build_one(cfgs[0]), None
    from vaelab.models.stack import member_from_seed

    built = [member_from_seed(lambda cfg=cfg: build_one(cfg), int(cfg.seed), device) for cfg in cfgs]
    generators = [generator for _, generator in built]
    return LitAutoencoder.stack([module for module, _ in built], generators), generators


def _build_loggers(cfg: DictConfig, stacked: bool) -> list:
    """The job's loggers. Its W&B run gets the sweep's group and the job's override tags (a stack's
    members have theirs in their configs already: the stacked launcher puts them there) and, in a
    stack, is one of several W&B runs that this process holds at once."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        wandb: dict[str, Any] = {}
        if str(node.get("_target_")).endswith("WandbLogger"):
            wandb = {"reinit": "create_new"} if stacked else {
                "group": node.get("group") or sweep_group(), "tags": [*(node.get("tags") or []), *override_tags()]}
        loggers.append(build(f"logger.{name}", node, **wandb))
    return loggers


def _train_and_test(cfgs: list[DictConfig], run_dirs: list[Path],
                    extra_callbacks: Sequence[pl.Callback] = ()) -> list[MemberResult]:
    shared, stacked = cfgs[0], len(cfgs) > 1
    pl.seed_everything(shared.seed, workers=True, verbose=False)

    # Resolve (and download) the data before the Trainer exists: DDP relaunches this script
    # for the other ranks once the Trainer starts, and they must find the same data.
    started = time.perf_counter()
    datamodule = build("data", shared.data)
    data_info = datamodule.load()
    stage_seconds = {"time/data_s": time.perf_counter() - started}
    log.info("data: done in %.1f s", stage_seconds["time/data_s"])
    # Clipping is the step's (Lightning refuses it under manual optimisation): the module gets it.
    clipping = {key: shared.trainer.get(key) for key in ("gradient_clip_val", "gradient_clip_algorithm")}
    optimizer = OmegaConf.to_container(shared.optimizer, resolve=True) if "optimizer" in shared else None
    ckpt_path = None if stacked else shared.get("ckpt_path") or _resume_in_place(run_dirs[0])
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
    if checkpoint is not None:  # before any training: a file that is unreadable, unsafe or of another model is one line
        model_keys = {k: v for k, v in OmegaConf.to_container(shared.model, resolve=True).items() if k != "_target_"}
        check_resumable(checkpoint, ckpt_path, model_keys, optimizer, clipping, list(datamodule.image_shape))
    if not stacked:
        module, _ = _build_module(cfgs, list(datamodule.image_shape), optimizer, clipping)
    members = [Member(i, run_dir, _build_loggers(cfg, stacked), build_each("callbacks", cfg.get("callbacks")))
               for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs))]
    if checkpoint is not None:  # a resume logs into the checkpoint's W&B run (vaelab.training.loggers)
        continue_wandb_run(members[0].loggers, checkpoint, ckpt_path)
    del checkpoint  # Lightning reads the file again to restore the trainer: do not hold it twice
    if stacked:  # each member's loggers and callbacks see that member alone
        loggers, callbacks = member_views(members)
        views = {"enable_checkpointing": False}  # the members' ModelCheckpoints are views, not Lightning's own
    else:
        loggers, callbacks, views = members[0].loggers, list(members[0].callbacks), {}
    # Checkpoints are written atomically in their own directory and read with weights_only=True.
    trainer_cfg, strategy = trainer_settings(log_interval(shared.trainer, data_info["data/train_size"],
                                                          shared.data.batch_size))
    summary = [ModelSummary()] if trainer_cfg.get("enable_model_summary", True) else []
    trainer: pl.Trainer = build("trainer", trainer_cfg, logger=loggers, callbacks=[*callbacks, *extra_callbacks, *summary],
                                plugins=[AtomicCheckpointIO()], **strategy, **views, **{key: None for key in clipping})
    if stacked:  # its members' noise generators live on the device it trains on
        module, generators = _build_module(cfgs, list(datamodule.image_shape), optimizer, clipping,
                                           trainer.strategy.root_device)
        datamodule.for_members([cfg.seed for cfg in cfgs], generators)
    for cfg, member in zip(cfgs, members):
        log_hyperparameters(member.loggers, {**OmegaConf.to_container(cfg, resolve=True), "data_used": data_info})

    records: list[dict[str, Any]] = [{"status": "running", "run_name": cfg.run_name, "run_dir": str(run_dir)}
                                     for cfg, run_dir in zip(cfgs, run_dirs)]
    failed = True
    finished = False

    def finish() -> None:
        """Each member's metrics.json and loggers, once, however the run ends."""
        nonlocal finished
        if finished or not trainer.is_global_zero:
            return
        finished = True
        for n, (cfg, member, record) in enumerate(zip(cfgs, members, records)):
            seconds = stage_seconds if record["status"] != "failed" or not stacked else {"time/data_s": stage_seconds["time/data_s"]}
            record.update({**data_info, **seconds}, seed=cfg.seed, devices=trainer.world_size,
                          accelerator=type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
                          model=cfg.model.name, terms=list(module.terms), beta=cfg.model.get("beta"),
                          latent_dim=cfg.model.latent_dim, recon_loss=cfg.model.recon_loss)
            if stacked:
                record["stacked"] = {"members": len(cfgs), "index": n}
            if current_worker() is not None:  # a joblib worker's GPU and threads (vaelab.sweeps.workers)
                record["worker"] = current_worker().as_record()
            _write_record_keeping_the_error(member.run_dir, record, failing=failed or record["status"] == "failed")
            finish_loggers(member.loggers, failed=failed or record["status"] == "failed")

    try:
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        stage_seconds["time/fit_s"] = time.perf_counter() - started
        log.info("fit: done in %.1f s (%d epochs, %d steps%s)", stage_seconds["time/fit_s"], trainer.current_epoch,
                 trainer.global_step, f", {len(cfgs)} stacked members" if stacked else "")
        best_paths = [_record_fit(record, member, module, trainer) for record, member in zip(records, members)]
        if shared.test and len(module.failures) < len(cfgs):
            if any(path is None for n, path in enumerate(best_paths) if not module.member_failed(n)):
                log.warning("no best checkpoint was saved (fast_dev_run or no checkpoint callback): testing the last weights")
            started = time.perf_counter()
            if stacked:  # each member's best weights, as its single run tests them
                for n, path in enumerate(best_paths):
                    if path is not None and not module.member_failed(n):
                        module.load_member_weights(n, read_checkpoint(path)["state_dict"])
            trainer.test(module, datamodule=datamodule, ckpt_path=None if stacked else best_paths[0], verbose=False)
            stage_seconds["time/test_s"] = time.perf_counter() - started
            log.info("test: done in %.1f s", stage_seconds["time/test_s"])
            for n, record in enumerate(records):
                record.update(_floats({k: v for k, v in _metrics(trainer, n, stacked).items() if k.startswith("test/")}))
        for n, (record, path) in enumerate(zip(records, best_paths)):
            if module.member_failed(n):
                record.update(status="failed", error=module.failures[n])
            else:
                best = _best_epoch_metrics(members[n])
                record.update(status="completed", best_checkpoint=path, best_epoch=best.epoch if best is not None else None,
                              last_checkpoint=str(run_dirs[n] / "checkpoints" / "last.ckpt") if path else None,
                              epochs=trainer.current_epoch, global_step=trainer.global_step)
                record.update(early_stopping_record(members[n].callbacks))  # a stack's member: its own epochs
        failed = False
    except BaseException as err:
        # A signal stops every member still training (each saved its interrupted.ckpt); anything
        # else fails them. A member that had failed before keeps its own error.
        stopped = {n: _stopped_by_signal(err, member.callbacks) for n, member in enumerate(members)
                   if not module.member_failed(n)}
        for n, record in enumerate(records):
            if n not in stopped or stopped[n] is None:
                error = module.failures.get(n) or (str(err) if isinstance(err, VaelabError) else f"{type(err).__name__}: {err}")
                record.update(status="failed", error=error)
        if not stopped or None in stopped.values():
            raise
        for n, preemption in stopped.items():
            records[n].update(status="interrupted", signal=preemption.signal.name, epochs=trainer.current_epoch,
                              global_step=trainer.global_step,
                              resume_checkpoint=str(preemption.saved) if preemption.saved else None)
        finish()  # the records first: SLURM ends this job's processes as it requeues it
        preemption = next(iter(stopped.values()))
        requeued = preemption.requeue_job() if not stacked and trainer.is_global_zero else None
        name = preemption.signal.name
        resume = (f"requeued as SLURM job {requeued}, which resumes from {preemption.saved}" if requeued
                  else f"resume with python train.py ckpt_path={preemption.saved}" if preemption.saved
                  else "the fit had finished; its checkpoints are in place")
        if stacked and preemption.saved:
            resume = "resume each member alone with python train.py <its overrides> ckpt_path=<its run dir>/checkpoints/interrupted.ckpt"
        raise RunInterrupted(f"{name} stopped the run at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                             f"{resume}", int(preemption.signal)) from None
    finally:
        finish()

    results = []
    for cfg, record in zip(cfgs, records):
        if trainer.is_global_zero and record["status"] == "completed":
            log.info("metrics%s: %s", f" of {Path(record['run_dir']).name}" if stacked else "",
                     ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.items())
                               if "/" in k and isinstance(v, float) and not k.startswith("data/")))
        metric = cfg.get("optimized_metric")
        value = record.get(metric) if metric and record["status"] == "completed" else None
        results.append(MemberResult(record["status"], value if value is None or math.isfinite(value) else None,
                                    record.get("error")))
    return results


def _best_epoch_metrics(member: Member) -> Optional[BestEpochMetrics]:
    return next((c for c in member.callbacks if isinstance(c, BestEpochMetrics)), None)


def _metrics(trainer: pl.Trainer, n: int, stacked: bool) -> dict[str, Any]:
    """What the trainer's callback_metrics say of member n (all of them for a single run)."""
    return member_metrics(trainer.callback_metrics, n) if stacked else trainer.callback_metrics


def _record_fit(record: dict[str, Any], member: Member, module: LitAutoencoder, trainer: pl.Trainer) -> Optional[str]:
    """A finished fit's numbers of `member` into its record; its best checkpoint's path."""
    n, stacked = member.index, module.n > 1
    if module.member_failed(n):
        return None
    metrics = _metrics(trainer, n, stacked)
    record.update(_floats({k: v for k, v in metrics.items() if k.startswith(("train/", "time/"))}))
    record.update(module.last_step_values[n])
    best = _best_epoch_metrics(member)
    record.update((best.metrics if best is not None else {}) or _floats({k: v for k, v in metrics.items()
                                                                          if k.startswith("val/")}))
    checkpoint = next((c for c in member.callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)), None)
    return checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
