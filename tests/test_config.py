"""Every config in conf/ composes, and impossible values are refused before training."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from conftest import REPO
from vaelab.config import check_config
from vaelab.errors import ConfigError

CONF = REPO / "conf"
GROUPS = ["model", "data", "trainer", "logger", "callbacks", "paths", "experiment", "debug"]


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def _choices():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield group, path.stem


def test_every_group_has_its_default_choices():
    found = {(g, c) for g, c in _choices()}
    for expected in [("model", "vae"), ("model", "ae"), ("data", "mnist"), ("data", "fashion_mnist"),
                     ("trainer", "default"), ("trainer", "cpu"), ("trainer", "gpu"), ("trainer", "ddp"),
                     ("logger", "wandb"), ("logger", "csv"), ("logger", "tensorboard"), ("logger", "none"),
                     ("debug", "fdr")]:
        assert expected in found


@pytest.mark.parametrize(("group", "choice"), list(_choices()))
def test_every_config_composes_and_passes_the_checks(group, choice):
    cfg = _compose(f"{group}={choice}")
    assert cfg.hydra.runtime.choices[group] == choice
    with open_dict(cfg):
        del cfg["hydra"]
    check_config(cfg)
    assert cfg.run_name.startswith(cfg.model.name)


def test_defaults():
    cfg = _compose()
    assert (cfg.model.name, cfg.model.recon_loss, cfg.data.name, cfg.data.source) == ("vae", "mse", "mnist", "auto")
    assert list(cfg.logger) == ["wandb"] and cfg.callbacks.model_checkpoint.monitor == "val/loss"
    assert cfg.run_name == "vae-z20-beta1"
    assert _compose("model=ae", "model.latent_dim=16").run_name == "ae-z16"
    assert _compose("model.beta=4", "model.latent_dim=16").run_name == "vae-z16-beta4"


def _checked(*overrides):
    cfg = _compose(*overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    check_config(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.latent_dim=0", "model.latent_dim=0 must be at least 1"),
        ("model.latent_dim=abc", "model.latent_dim='abc' must be an integer"),
        ("model.beta=-1", "model.beta=-1 must be >= 0"),
        ("model.lr=0", "model.lr=0 must be > 0"),
        ("model.lr=-1e-3", "model.lr=-0.001 must be > 0"),
        ("model.recon_loss=l1", "model.recon_loss='l1' is unknown; choose one of mse, bce"),
        ("model.hidden_dims=[]", "model.hidden_dims=.* must be a non-empty list"),
        ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
        ("data.batches_per_step=0", "data.batches_per_step=0 must be at least 1"),
        ("data.source=ftp", "data.source='ftp' is unknown"),
        ("data.binarize=yes", "data.binarize='yes' is unknown"),
        ("trainer.devices=0", "trainer.devices=0 must be at least 1"),
        ("optimized_metric=val/accuracy", "optimized_metric='val/accuracy' is not logged"),
        ("ckpt_path=/no/such/file.ckpt", "ckpt_path=/no/such/file.ckpt does not exist"),
    ],
)
def test_impossible_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        _checked(override)


def test_bce_needs_unit_pixel_range():
    with pytest.raises(ConfigError, match=r"recon_loss=bce .* needs pixel values in \[0, 1\]"):
        _checked("model.recon_loss=bce", "data.pixel_range=[-1,1]")
    _checked("model.recon_loss=bce")


def test_ae_has_no_nelbo_to_optimise():
    with pytest.raises(ConfigError, match="not logged for model=ae"):
        _checked("model=ae", "optimized_metric=val/nelbo")


def test_experiment_overrides_only_what_changes():
    cfg = _compose("experiment=binarized_bce")
    assert (cfg.model.recon_loss, cfg.data.binarize) == ("bce", "dynamic")
    assert cfg.data.batch_size == _compose().data.batch_size
