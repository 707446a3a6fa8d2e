"""The training task for a stack of jobs (issue 14): N jobs that differ only in seed, β, free bits,
the KL schedule and the learning rate train as one Stack in one Lightning fit, and each leaves in its own run
directory what `vaelab.tasks.train.run` leaves for it: metrics.json (plus `"stacked": {"members": N,
"index": n}`), csv/metrics.csv, checkpoints/epoch_NNN.ckpt (its best) and last.ckpt (each loads alone
with eval.py), and images/.

    results = train_stack([cfg_beta1_seed0, cfg_beta4_seed0, ...])   # resolved job configs
    [r.value for r in results]                                      # each job's optimized_metric

A member's numbers equal those of its job trained alone on the CPU (tests/test_stacked_runs.py):
the same initialisation (seed, then build: models/stack.member_from_seed), the same data order
(its own permutation per epoch: StackedDataModule), the same noise (its own generator, drawing what
the single run draws from the global one: the sanity check's validation batches, every training
step, every validation batch, the test; panels draw from a generator of their own), and the same
Adam steps at the same rates: members of one model.lr share make_optimizer's fused Adam, members
of different rates a StackedAdam (models/stack.py) in which each follows its own schedule from
its own model.lr (StackedLitModule's MemberRates). A member whose loss becomes NaN or diverges
stops, with the error its single run would fail with; the others go on.

Each member logs to its own CSV record and, with logger=wandb, its own W&B run (the launcher puts
its group and override tags into its config). Not (yet) done for a stack: TensorBoard, W&B's
log_model artifact, the Preemption callback (no interrupted.ckpt: Ctrl-C stops every member),
EpochTimer's time/*_epoch_s, optimizer.scheduler=plateau, and the CUDA-graph step (the stack
steps eagerly).
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from vaelab.checkpoints import AtomicCheckpointIO
from vaelab.errors import VaelabError
from vaelab.models.stack import Stack, member_from_seed
from vaelab.rundir import lock_run_dir, refuse_earlier_run, release_run_dir, write_record
from vaelab.sweeps.stacking import stack_key, why_not_stackable
from vaelab.tasks.build import build
from vaelab.tasks.train import trainer_settings
from vaelab.training.callbacks import BestEpochMetrics, LatentPanels, ResumableModelCheckpoint
from vaelab.training.loggers import finish_loggers, log_hyperparameters
from vaelab.training.stacked_module import MemberRun, StackedDataModule, StackedLitModule

log = logging.getLogger(__name__)

# Callbacks of conf/callbacks/ that a stack reproduces per member; the others it leaves out, with a warning.
REPRODUCED_CALLBACKS = {"vaelab.training.callbacks.ResumableModelCheckpoint", "vaelab.training.callbacks.BestEpochMetrics",
                        "vaelab.training.callbacks.LatentPanels"}
CSV_LOGGER = "pytorch_lightning.loggers.CSVLogger"


@dataclass
class MemberResult:
    status: str  # "completed" or "failed"
    value: Optional[float]  # the job's cfg.optimized_metric; None when it is missing or not finite
    error: Optional[str] = None


def _unresolve(node: Any, output_dir: str) -> Any:
    """`node` with the job's run directory written as the interpolation it was resolved from."""
    if isinstance(node, dict):
        return {k: _unresolve(v, output_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_unresolve(v, output_dir) for v in node]
    if isinstance(node, str) and output_dir in node:
        return node.replace(output_dir, "${paths.output_dir}")
    return node


def _stack_key(cfg: DictConfig) -> str:
    """sweeps.stacking.stack_key of a resolved job config: the values resolved from the job's own
    run directory (trainer.default_root_dir, the callbacks' dirpath, ...) do not count."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return stack_key(OmegaConf.create(_unresolve(container, str(cfg.paths.output_dir))))


def _check_stack(cfgs: Sequence[DictConfig]) -> None:
    if len(cfgs) < 2:
        raise ValueError(f"a stack needs at least 2 jobs, not {len(cfgs)}")
    for i, cfg in enumerate(cfgs):
        reason = why_not_stackable(cfg)
        if reason is not None:
            raise ValueError(f"job {i} cannot be a member of a stack: {reason}")
    key = _stack_key(cfgs[0])
    differ = [i for i, cfg in enumerate(cfgs) if _stack_key(cfg) != key]
    if differ:
        raise ValueError(f"jobs {differ} differ from job 0 in more than the per-member settings "
                         f"(vaelab.sweeps.stacking.MEMBER_KEYS): they cannot share a stack")
    dirs = [str(Path(cfg.paths.output_dir).resolve()) for cfg in cfgs]
    if len(set(dirs)) != len(dirs):
        raise ValueError("every member needs a run directory of its own (paths.output_dir)")


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _member_loggers(cfg: DictConfig) -> list:
    """The member's own loggers: its CSV record, and its own W&B run (several runs of one process
    at once: `reinit="create_new"`); TensorBoard is left out (one writer per process), with a warning."""
    loggers, skipped = [], []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        target = str(node.get("_target_"))
        if target == CSV_LOGGER:
            loggers.append(build(f"logger.{name}", node))
        elif target.endswith("WandbLogger"):
            loggers.append(build(f"logger.{name}", node, reinit="create_new"))
        else:
            skipped.append(name)
    if skipped:
        log.warning("stacked runs log to the CSV record and W&B only (for now): logger %s left out for %s",
                    ", ".join(skipped), cfg.paths.output_dir)
    return loggers


def _member_callbacks(cfg: DictConfig):
    checkpoint = best = panels = None
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        target = node.get("_target_")
        if target not in REPRODUCED_CALLBACKS:
            log.warning("callbacks.%s (%s) is not reproduced for stacked runs (for now)", name, target)
            continue
        callback = build(f"callbacks.{name}", node)
        if isinstance(callback, ResumableModelCheckpoint):
            checkpoint = callback
        elif isinstance(callback, BestEpochMetrics):
            best = callback
        elif isinstance(callback, LatentPanels):
            panels = callback
    if best is not None:  # as BestEpochMetrics.setup: follow the checkpoint's monitor and mode
        followed = checkpoint is not None and checkpoint.monitor
        best.monitor = best.monitor or (checkpoint.monitor if followed else "val/loss")
        best.mode = best.mode or (checkpoint.mode if followed else "min")
    return checkpoint, best, panels


def train_stack(cfgs: Sequence[DictConfig], callbacks: Sequence[pl.Callback] = (),
                before_step=None) -> list[MemberResult]:
    """Train the jobs `cfgs` (resolved configs, as `vaelab.tasks.train.run` gets each) as one stack;
    one MemberResult per job, in order. `callbacks` are added to the Trainer and `before_step(module,
    global_step)` runs before each training step (hooks for tests)."""
    cfgs = list(cfgs)
    _check_stack(cfgs)
    run_dirs = [Path(cfg.paths.output_dir) for cfg in cfgs]
    for run_dir in run_dirs:
        refuse_earlier_run(run_dir)
    locked = []
    try:
        for run_dir in run_dirs:
            lock_run_dir(run_dir)
            locked.append(run_dir)
        return _train_and_test(cfgs, run_dirs, list(callbacks), before_step)
    finally:
        for run_dir in locked:
            release_run_dir(run_dir)


def _train_and_test(cfgs: list[DictConfig], run_dirs: list[Path], extra_callbacks: list, before_step) -> list[MemberResult]:
    shared = cfgs[0]
    n = len(cfgs)
    for i, cfg in enumerate(cfgs):
        log.info("stacked member %d/%d: beta=%s free_bits=%s kl_schedule=%s lr=%s seed=%s -> %s", i, n,
                 cfg.model.get("beta"), cfg.model.get("free_bits"), cfg.model.get("kl_schedule"), cfg.model.lr, cfg.seed,
                 cfg.paths.output_dir)
    pl.seed_everything(shared.seed, workers=True, verbose=False)  # numpy / Python; members draw from their own

    started = time.perf_counter()
    data_settings = {k: v for k, v in _container(shared.data).items() if k != "_target_"}
    datamodule = StackedDataModule(seeds=[cfg.seed for cfg in cfgs], **data_settings)
    data_info = datamodule.load()
    stage_seconds = {"time/data_s": time.perf_counter() - started}
    clipping = {key: shared.trainer.get(key) for key in ("gradient_clip_val", "gradient_clip_algorithm")}
    optimizer = _container(shared.optimizer) if "optimizer" in shared else None
    image_shape = list(datamodule.image_shape)

    # Each member as its single run builds it: seed, then LitAutoencoder (whose hyperparameters its checkpoints keep).
    lits, vaes, generators = [], [], []
    for cfg in cfgs:
        def make(cfg=cfg):
            lit = build("model", cfg.model, image_shape=image_shape, pixel_range=list(cfg.data.pixel_range),
                        optimizer=optimizer, **clipping)
            lits.append(lit)
            return lit.model
        vae, generator = member_from_seed(make, int(cfg.seed))
        vaes.append(vae)
        generators.append(generator)
    stack = Stack(vaes, generators=generators)
    members = []
    for i, (cfg, lit, vae) in enumerate(zip(cfgs, lits, vaes)):
        checkpoint, best, panels = _member_callbacks(cfg)
        members.append(MemberRun(i, run_dirs[i], dict(lit.hparams), vae, _member_loggers(cfg), checkpoint, best, panels))
    lrs = [float(cfg.model.lr) for cfg in cfgs]  # each member's own (a StackedAdam when they differ)
    module = StackedLitModule(stack, members, lrs, optimizer=optimizer, before_step=before_step, **clipping)
    if shared.model.get("cuda_graph", True):
        log.info("training step of the stack: eager (the CUDA-graph step does not take a stack yet)")
    trainer_cfg, strategy = trainer_settings(shared.trainer)  # one device: no strategy of vaelab's
    trainer: pl.Trainer = build("trainer", trainer_cfg, logger=False, callbacks=extra_callbacks,
                                enable_checkpointing=False, plugins=[AtomicCheckpointIO()],
                                **strategy, **{key: None for key in clipping})
    for cfg, member in zip(cfgs, members):
        log_hyperparameters(member.loggers, {**_container(cfg), "data_used": data_info})

    records: list[dict[str, Any]] = [{"status": "running", "run_name": cfg.run_name, "run_dir": str(d)}
                                     for cfg, d in zip(cfgs, run_dirs)]
    fatal: Optional[BaseException] = None
    try:
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        stage_seconds["time/fit_s"] = time.perf_counter() - started
        log.info("fit of %d stacked members: done in %.1f s (%d epochs, %d steps)", n, stage_seconds["time/fit_s"],
                 trainer.current_epoch, trainer.global_step)
        if shared.test and any(m.alive for m in members):
            if any(m.alive and m.best_state is None for m in members):
                log.warning("no best checkpoint was saved for some members: testing their last weights")
            module.load_best_weights()
            started = time.perf_counter()
            trainer.test(module, datamodule=datamodule, verbose=False)
            stage_seconds["time/test_s"] = time.perf_counter() - started
    except BaseException as err:  # the whole stack failed (not one member): every member's record says so
        fatal = err
    finally:
        for cfg, member, record in zip(cfgs, members, records):
            _finish_record(record, cfg, member, trainer, module, data_info, stage_seconds, fatal)
            write_record(member.run_dir, record)
            for logger in member.loggers:
                logger.finalize("failed" if record["status"] == "failed" else "success")
            finish_loggers(member.loggers, failed=record["status"] == "failed")
    if fatal is not None:
        raise fatal

    results = []
    for cfg, record in zip(cfgs, records):
        metric = cfg.get("optimized_metric")
        value = record.get(metric) if metric and record["status"] == "completed" else None
        value = value if value is None or math.isfinite(value) else None
        results.append(MemberResult(record["status"], value, record.get("error")))
    return results


def _finish_record(record: dict[str, Any], cfg: DictConfig, member: MemberRun, trainer: pl.Trainer,
                   module: StackedLitModule, data_info: dict, stage_seconds: dict, fatal: Optional[BaseException]) -> None:
    """metrics.json of the member, with the keys (and in the cases) that tasks/train.run writes them."""
    if fatal is not None or member.error is not None:
        error = member.error or (str(fatal) if isinstance(fatal, VaelabError) else f"{type(fatal).__name__}: {fatal}")
        record.update(status="failed", error=error)
        seconds = {"time/data_s": stage_seconds["time/data_s"]}  # a failed single run has timed its data only
    else:
        record.update(member.train_means)
        record.update(member.last_step_values)
        best = member.best
        record.update((best.metrics if best is not None else {}) or member.val_metrics)
        best_path = member.checkpoint.best_model_path if member.checkpoint is not None else ""
        best_path = best_path or None
        record.update(member.test_metrics)
        record.update(status="completed", best_checkpoint=best_path,
                      best_epoch=best.epoch if best is not None else None,
                      last_checkpoint=str(member.run_dir / "checkpoints" / "last.ckpt") if best_path else None,
                      epochs=trainer.current_epoch, global_step=trainer.global_step)
        seconds = stage_seconds
    record.update({**data_info, **seconds}, seed=cfg.seed, devices=trainer.world_size,
                  accelerator=type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
                  model=cfg.model.name, terms=list(module.terms), beta=cfg.model.get("beta"),
                  latent_dim=cfg.model.latent_dim, recon_loss=cfg.model.recon_loss,
                  stacked={"members": len(module.members), "index": member.index})
