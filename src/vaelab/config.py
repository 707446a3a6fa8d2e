"""Checks of the composed config that run before anything is loaded or trained.

Each failure is a ConfigError whose message names the key, the value and what would work.
"""

from pathlib import Path

from omegaconf import DictConfig

from vaelab.data import BINARIZE, DATASETS, SOURCES
from vaelab.errors import ConfigError
from vaelab.module import check_hyperparameters, loss_terms


def _number(cfg: DictConfig, key: str, kind: type):
    value = cfg
    for part in key.split("."):
        value = value[part]
    accepted = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise ConfigError(f"{key}={value!r} must be {'a number' if kind is float else 'an integer'}")
    return value


def check_config(cfg: DictConfig) -> None:
    model, data = cfg.model, cfg.data
    latent_dim = _number(cfg, "model.latent_dim", int)
    beta = _number(cfg, "model.beta", float)
    lr = _number(cfg, "model.lr", float)
    hidden_dims = list(model.hidden_dims) if model.hidden_dims is not None else []
    if not all(isinstance(h, int) and not isinstance(h, bool) for h in hidden_dims):
        raise ConfigError(f"model.hidden_dims={hidden_dims} must be a list of integers, e.g. [512,256]")
    check_hyperparameters(model.name, latent_dim, beta, model.recon_loss, lr, hidden_dims, list(data.pixel_range))

    if data.name not in DATASETS:
        raise ConfigError(f"data.name={data.name!r} is unknown; choose data=mnist or data=fashion_mnist")
    if data.source not in SOURCES:
        raise ConfigError(f"data.source={data.source!r} is unknown; choose one of {', '.join(SOURCES)}")
    if _number(cfg, "data.batch_size", int) < 1:
        raise ConfigError(f"data.batch_size={data.batch_size} must be at least 1")
    if "batches_per_step" in data and _number(cfg, "data.batches_per_step", int) < 1:
        raise ConfigError(f"data.batches_per_step={data.batches_per_step} must be at least 1 (1: one batch per step)")
    if _number(cfg, "data.val_size", int) < 1:
        raise ConfigError(f"data.val_size={data.val_size} must be at least 1")
    if data.binarize not in BINARIZE:
        raise ConfigError(f"data.binarize={data.binarize!r} is unknown; choose one of {', '.join(BINARIZE)}")

    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices < 1 and devices != -1:
        raise ConfigError(f"trainer.devices={devices} must be at least 1 (or -1 for all)")
    if _number(cfg, "trainer.max_epochs", int) < 1 and cfg.trainer.max_epochs != -1:
        raise ConfigError(f"trainer.max_epochs={cfg.trainer.max_epochs} must be at least 1")

    metric = cfg.get("optimized_metric")
    if metric is not None:
        known = [f"{stage}/{term}" for stage in ("train", "val", "test") for term in loss_terms(model.name)]
        if metric not in known:
            raise ConfigError(f"optimized_metric={metric!r} is not logged for model={model.name}; choose one of {', '.join(known)}")

    if cfg.get("ckpt_path") is not None:
        check_ckpt_path(cfg.ckpt_path)


def check_ckpt_path(ckpt_path) -> None:
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist; give the path of a .ckpt file (e.g. <run dir>/checkpoints/last.ckpt)")
