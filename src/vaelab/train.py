"""The training task that `python train.py` runs: fit, test the best checkpoint, write metrics.json.

Data flows one way: composed config → DataModule, LightningModule, loggers, callbacks →
Trainer.fit → test on the best checkpoint → metrics.json → the optimised metric is returned.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.errors import InstantiationException
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from vaelab.callbacks import BestEpochMetrics
from vaelab.config import check_config
from vaelab.data import MNISTDataModule
from vaelab.errors import ConfigError, VaelabError
from vaelab.loggers import build_loggers, finish_wandb, log_hyperparameters
from vaelab.module import LitAutoencoder
from vaelab.rundir import METRICS_FILE, refuse_earlier_run
from vaelab.sweep import override_tags, sweep_group

log = logging.getLogger(__name__)

def build_datamodule(cfg: DictConfig) -> MNISTDataModule:
    data = cfg.data
    return MNISTDataModule(
        name=data.name,
        data_dir=data.data_dir,
        source=data.source,
        batch_size=data.batch_size,
        val_size=data.val_size,
        binarize=data.binarize,
        pixel_range=list(data.pixel_range),
        split_seed=data.split_seed,
        mirrors=list(data.mirrors) if data.get("mirrors") else None,
        system_dir=data.get("system_dir"),
        batches_per_step=data.get("batches_per_step", 1),
    )


def build_module(cfg: DictConfig, image_shape) -> LitAutoencoder:
    model = cfg.model
    return LitAutoencoder(
        model=model.name,
        image_shape=list(image_shape),
        latent_dim=model.latent_dim,
        hidden_dims=list(model.hidden_dims),
        net=model.net,
        beta=float(model.beta),
        recon_loss=model.recon_loss,
        lr=float(model.lr),
        pixel_range=list(cfg.data.pixel_range),
        cuda_graph=bool(model.get("cuda_graph", True)),
    )


def _instantiate(key: str, node: DictConfig, **kwargs) -> Any:
    """hydra.utils.instantiate, with the object's own complaint as one ConfigError naming `key`."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:  # Hydra wraps the object's own error in two lines
        cause = err.__cause__ or err
        if isinstance(cause, VaelabError):
            raise cause from None
        raise ConfigError(f"{key} could not be built: {cause} (check the {key}.* settings)") from None


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = [_instantiate(f"callbacks.{name}", c) for name, c in (cfg.get("callbacks") or {}).items() if c is not None]
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    monitor, mode = (checkpoint.monitor, checkpoint.mode) if checkpoint else ("val/loss", "min")
    return [*callbacks, BestEpochMetrics(monitor=monitor, mode=mode)]


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def write_metrics(run_dir: Path, record: dict[str, Any]) -> Path:
    path = run_dir / METRICS_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    partial.replace(path)
    return path


def run(cfg: DictConfig) -> Optional[float]:
    """Train and test one model as `cfg` says; returns the value of `cfg.optimized_metric`."""
    check_config(cfg)
    # Every process logs this into its own log file (a relaunched DDP rank: train_ddp_process_<r>.log),
    # so one can see that all ranks train the same model.
    log.info("hyperparameters: model=%s latent_dim=%s hidden_dims=%s beta=%s lr=%s seed=%s", cfg.model.name,
             cfg.model.latent_dim, list(cfg.model.hidden_dims), cfg.model.beta, cfg.model.lr, cfg.seed)
    run_dir = Path(cfg.paths.output_dir)
    refuse_earlier_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # Resolve (and download) the data before the Trainer exists: DDP relaunches this script
    # for the other ranks once the Trainer starts, and they must find the same data.
    datamodule = build_datamodule(cfg)
    data_info = datamodule.load()
    module = build_module(cfg, datamodule.image_shape)
    loggers = build_loggers(cfg.get("logger"), run_dir, cfg.run_name, group=sweep_group(), tags=override_tags())
    callbacks = build_callbacks(cfg)
    trainer: pl.Trainer = _instantiate("trainer", cfg.trainer, logger=loggers, callbacks=callbacks)
    log_hyperparameters(loggers, {**OmegaConf.to_container(cfg, resolve=True), "data_used": data_info})

    record: dict[str, Any] = {"status": "running", "run_name": cfg.run_name, "run_dir": str(run_dir)}
    failed = True
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        record.update(_floats({k: v for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "time/"))}))
        # The last train/*_step values; the module hands them to the loggers, not to callback_metrics.
        record.update(_floats({k: v for k, v in trainer.logged_metrics.items() if k.endswith("_step")}))
        best = next(c for c in callbacks if isinstance(c, BestEpochMetrics))
        record.update(best.metrics or _floats({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}))
        checkpoint = trainer.checkpoint_callback
        best_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        if cfg.get("test", True):
            if best_path is None:
                log.warning("no best checkpoint was saved (fast_dev_run or no checkpoint callback): testing the last weights")
            trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
            record.update(_floats({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
        record.update(
            status="completed",
            best_checkpoint=best_path,
            best_epoch=best.epoch,
            last_checkpoint=str(run_dir / "checkpoints" / "last.ckpt") if best_path else None,
            epochs=trainer.current_epoch,
            global_step=trainer.global_step,
        )
        failed = False
    except Exception as err:
        record.update(status="failed", error=str(err) if isinstance(err, VaelabError) else f"{type(err).__name__}: {err}")
        raise
    finally:
        if trainer.is_global_zero:
            record.update(data_info, seed=cfg.seed, devices=trainer.world_size,
                          accelerator=type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
                          model=cfg.model.name, beta=float(cfg.model.beta), latent_dim=cfg.model.latent_dim,
                          recon_loss=cfg.model.recon_loss)
            write_metrics(run_dir, record)
            finish_wandb(loggers, failed=failed)

    if trainer.is_global_zero:
        log.info("metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.items())
                                          if "/" in k and isinstance(v, float) and not k.startswith("data/")))
    metric = cfg.get("optimized_metric")
    value = record.get(metric) if metric else None
    return value if value is None or math.isfinite(value) else None
