"""The training step: manual optimisation equals a plain PyTorch step, step values are logged at
Lightning's interval, the CUDA-graph step equals the eager one where a GPU exists
(bench/check_graph.py checks whole runs there), and the Lightning internals it needs exist."""

import copy
import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from conftest import needs_cuda
from vaelab.data import MNISTDataModule
from vaelab.models import reconstruction_loss
from vaelab.training import LitAutoencoder, make_optimizer
from vaelab.lightning_compat import PRIVATE_HOOKS, CountedStep, missing_hooks
from vaelab.training.module import eager_reason


def _trainer(**kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    return pl.Trainer(**{**options, **kwargs})


def _datamodule(data_dir, batch_size=64) -> MNISTDataModule:
    return MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=batch_size, val_size=128)


def test_one_lightning_step_equals_a_plain_pytorch_step(data_dir):
    torch.manual_seed(0)
    module = LitAutoencoder(name="ae", latent_dim=4, hidden_dims=[32], recon_loss="bce")
    reference = copy.deepcopy(module.model)
    dm = _datamodule(data_dir)
    dm.load()

    torch.manual_seed(1)  # the loader's shuffle seed
    _trainer(max_steps=1).fit(module, datamodule=dm)

    torch.manual_seed(1)
    images, _ = next(iter(dm.train_dataloader()))
    x = images.float() / 255
    optimizer = make_optimizer(reference.parameters(), 1e-3, torch.device("cpu"))
    optimizer.zero_grad()
    reconstruction_loss(reference(x).logits, x, "bce").backward()
    optimizer.step()
    for trained, expected in zip(module.model.parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected)


def test_epoch_means_weigh_every_image_once(data_dir):
    """The logged epoch mean is Σ(batch mean × batch size) / N, also with a ragged last batch."""
    torch.manual_seed(0)
    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[32])
    dm = _datamodule(data_dir, batch_size=50)  # 157 test images = 3·50 + 7
    result = _trainer(max_epochs=1).test(module, datamodule=dm, verbose=False)[0]
    images, _ = dm.splits["test"]
    x = images.float() / 255
    with torch.no_grad():
        codes = module.model.posterior(x)
    from vaelab.models import gaussian_kl

    assert result["test/kl"] == pytest.approx(gaussian_kl(codes.mu, codes.logvar).item(), rel=1e-5)


def test_step_values_are_logged_every_log_every_n_steps_optimiser_steps(data_dir, tmp_path):
    torch.manual_seed(0)
    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[32])
    logger = CSVLogger(tmp_path, name="csv", version=0)
    # 512 training images in batches of 50: 11 optimiser steps per epoch, 22 in all.
    trainer = _trainer(max_epochs=2, logger=logger, log_every_n_steps=3)
    trainer.fit(module, datamodule=_datamodule(data_dir, batch_size=50))
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    step_rows = [r for r in rows if r["train/loss_step"]]
    # After optimiser steps 3, 6, ..., 21; Lightning writes a row at step (count − 1).
    assert [int(r["step"]) for r in step_rows] == [s - 1 for s in range(3, 23, 3)]
    for row in step_rows:  # every term of the model type, and loss = recon + β·kl (β = 1)
        values = {t: float(row[f"train/{t}_step"]) for t in ("recon", "kl", "loss", "nelbo")}
        assert values["loss"] == pytest.approx(values["recon"] + values["kl"], rel=1e-5)
    assert trainer.global_step == 22 and len([r for r in rows if r["train/loss"]]) == 2  # two epoch means


def test_fast_dev_run_logs_and_checks_its_step_values(data_dir):
    module = LitAutoencoder(name="ae", latent_dim=4, hidden_dims=[32])
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=True, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=_datamodule(data_dir))
    assert trainer.global_step == 1
    assert set(module.last_step_values[0]) == {"train/recon_step", "train/loss_step", "train/lr"}


@pytest.mark.parametrize(("settings", "reason"), [
    ((False, "cuda", 1, "32-true"), "model.cuda_graph=false"),
    ((True, "cpu", 1, "32-true"), "it needs a CUDA device, not cpu"),
    ((True, "cuda", 2, "32-true"), "not with several devices"),
    ((True, "cuda", 1, "bf16-mixed"), "not with trainer.precision=bf16-mixed"),
    ((True, "cuda", 1, "32-true"), None),
])
def test_when_the_training_step_is_one_cuda_graph(settings, reason):
    cuda_graph, device, world_size, precision = settings
    found = eager_reason(cuda_graph, torch.device(device), world_size, precision)
    assert found == reason if reason is None else reason in found


def test_the_cpu_trains_eagerly_without_a_graph(data_dir):
    module = LitAutoencoder(name="ae", latent_dim=4, hidden_dims=[32])
    trainer = _trainer(max_steps=2)
    trainer.fit(module, datamodule=_datamodule(data_dir))
    assert module._graph is None and trainer.global_step == 2


def test_lightning_still_has_the_private_hooks_the_cuda_graph_step_needs(data_dir):
    """Fails, naming the hooks, when a pytorch-lightning upgrade drops them (lightning_compat.py)."""

    class StepsAroundLightning(LitAutoencoder):
        """Takes each optimiser step on the raw optimizer, as a replayed graph does, inside CountedStep."""

        def training_step(self, batch, batch_idx):
            x, _ = batch
            optimizer = self.optimizers()
            assert not missing_hooks(optimizer), (
                f"pytorch-lightning {pl.__version__} lacks LightningOptimizer.{', '.join(missing_hooks(optimizer))}; "
                f"update vaelab/lightning_compat.py (needs {', '.join(PRIVATE_HOOKS)})")
            optimizer.zero_grad()
            self.manual_backward(self.model.losses(x)["loss"])
            with CountedStep(optimizer):
                optimizer.optimizer.step()  # Lightning does not see this step...

    module = StepsAroundLightning(name="ae", latent_dim=4, hidden_dims=[32])
    trainer = _trainer(max_steps=3)
    trainer.fit(module, datamodule=_datamodule(data_dir))
    assert trainer.global_step == 3  # ...but counts it, and max_steps stops the fit


@needs_cuda
def test_cuda_graph_step_equals_eager_step():
    from vaelab.training.graph_step import CudaGraphStep

    torch.manual_seed(0)
    graphed = LitAutoencoder(name="ae", latent_dim=4, hidden_dims=[32]).cuda()
    eager = copy.deepcopy(graphed)
    batches = [torch.rand(64, 1, 28, 28, device="cuda") for _ in range(5)]
    opt_g = make_optimizer(graphed.parameters(), 1e-3, torch.device("cuda"), capturable=True)
    opt_e = make_optimizer(eager.parameters(), 1e-3, torch.device("cuda"))
    step = CudaGraphStep(graphed.model.losses, list(graphed.parameters()), opt_g, batches[0])
    for x in batches:
        graph_loss = step(x)["loss"].clone()
        opt_e.zero_grad()
        eager_loss = eager.model.losses(x)["loss"]
        eager_loss.backward()
        opt_e.step()
        torch.testing.assert_close(graph_loss, eager_loss.detach())
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b)


@needs_cuda
def test_a_fit_on_the_gpu_replays_the_graph_and_counts_every_step(data_dir):
    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[32])
    trainer = _trainer(accelerator="gpu", max_epochs=2)
    trainer.fit(module, datamodule=_datamodule(data_dir, batch_size=50))  # a ragged last batch runs eagerly
    assert module._graph is not None and trainer.global_step == 22
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


def test_bf16_mixed_precision_trains(data_dir):
    torch.manual_seed(0)
    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[32], recon_loss="bce")
    trainer = _trainer(max_epochs=2, precision="bf16-mixed")
    trainer.fit(module, datamodule=_datamodule(data_dir))
    losses = trainer.callback_metrics
    # Below 784·ln 2 ≈ 543 nats, the loss of predicting every pixel as a coin flip.
    assert torch.isfinite(losses["train/loss"]) and losses["train/loss"] < 784 * math.log(2)
