"""A model type added as docs/extending.md says (declared in vaelab.catalog.MODEL_TYPES, a class, a config on top of another)
trains, logs, is checked and is evaluated with no change anywhere else."""

from collections.abc import Sequence
from typing import Optional

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import REPO
from vaelab.config import check_train_config
from vaelab.data import MNISTDataModule
from vaelab.errors import ConfigError
from vaelab.catalog import ARCHITECTURE, MODEL_TYPES, ModelType
from vaelab.models import AE
from vaelab.tasks.eval import likelihood_metrics
from vaelab.training import LitAutoencoder


SPARSE_AE = ModelType("sparse_ae", f"{__name__}:SparseAE", (*ARCHITECTURE, "l1_weight"), terms=("recon", "l1", "loss"))


class SparseAE(AE, declared=SPARSE_AE):
    """docs/extending.md's example: AE with loss = recon + l1_weight · ‖z‖₁ (summed over latent dims, batch mean)."""

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 20,
                 hidden_dims: Sequence[int] = (400,), net: str = "mlp", recon_loss: str = "mse",
                 pixel_range: Sequence[float] = (0.0, 1.0), sigma: Optional[str] = None, l1_weight: float = 1e-3):
        super().__init__(image_shape, latent_dim, hidden_dims, net, recon_loss, pixel_range, sigma)
        self.l1_weight = float(l1_weight)

    def losses(self, x: torch.Tensor, eps=None) -> dict[str, torch.Tensor]:
        out = self(x)
        return self.combine({"recon": self.likelihood.error(out.logits, x).mean(), "l1": out.z.abs().sum(dim=1).mean()})

    def combine(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        recon, l1 = parts["recon"], parts["l1"]
        return {"recon": recon, "l1": l1, "loss": recon + self.l1_weight * l1}


@pytest.fixture
def sparse_ae(monkeypatch):
    monkeypatch.setitem(MODEL_TYPES, "sparse_ae", SPARSE_AE)


def _config(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):  # what conf/model/sparse_ae.yaml (defaults: [ae]) would say
        cfg.model.name = "sparse_ae"
        cfg.model.l1_weight = 0.1
    return cfg


def test_it_trains_and_logs_its_own_terms(sparse_ae, data_dir):
    torch.manual_seed(0)
    module = LitAutoencoder(name="sparse_ae", latent_dim=4, hidden_dims=[16], l1_weight=0.1)
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=64, val_size=128)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert {"train/l1", "val/l1"} <= set(trainer.callback_metrics)
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert set(result) == {"test/recon", "test/l1", "test/loss"}
    assert result["test/loss"] == pytest.approx(result["test/recon"] + 0.1 * result["test/l1"], rel=1e-5)


def test_its_config_is_checked_like_any_other(sparse_ae):
    cfg = _config("model=ae", "optimized_metric=val/l1")
    check_train_config(cfg)
    assert cfg.run_name == "sparse_ae-z20"
    with pytest.raises(ConfigError, match="model.l1_weight=0.1 must be null for model=vae, which has no l1_weight "
                                          r"\(a setting of model=sparse_ae\)"):
        cfg = _config()
        with open_dict(cfg):
            cfg.model.name = "vae"
        check_train_config(cfg)


def test_eval_measures_its_terms(sparse_ae):
    torch.manual_seed(0)
    model = SparseAE(latent_dim=3, hidden_dims=[16], l1_weight=0.5).eval()
    x = torch.rand(30, 1, 28, 28)
    metrics, _ = likelihood_metrics(model, x, OmegaConf.create({"eval": {"batch_size": 7, "k": 5, "max_codes": 100}}))
    with torch.no_grad():
        whole = model.losses(x)  # one batch: the per-image means by another path
    assert set(metrics) == {"test/recon", "test/l1", "test/loss"}
    for term, value in whole.items():
        assert metrics[f"test/{term}"] == pytest.approx(float(value), rel=1e-5)
