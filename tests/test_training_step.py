"""The training step: manual optimisation equals a plain PyTorch step; the CUDA-graph step
equals the eager one where a GPU exists (bench/check_graph.py checks whole runs there)."""

import copy
import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from vaelab.data import MNISTDataModule
from vaelab.models import gaussian_kl, reconstruction_loss
from vaelab.module import LitAutoencoder, make_optimizer


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


def test_one_lightning_step_equals_a_plain_pytorch_step(data_dir):
    torch.manual_seed(0)
    module = LitAutoencoder(model="ae", latent_dim=4, hidden_dims=[32], recon_loss="bce")
    reference = copy.deepcopy(module.model)
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=64, val_size=128)
    dm.load()

    torch.manual_seed(1)  # the loader's shuffle seed
    _trainer(max_steps=1).fit(module, datamodule=dm)

    torch.manual_seed(1)
    images, _ = next(iter(dm.train_dataloader()))
    x = images.unsqueeze(1).float() / 255
    optimizer = make_optimizer(reference.parameters(), 1e-3, torch.device("cpu"))
    optimizer.zero_grad()
    reconstruction_loss(reference(x).logits, x, "bce").backward()
    optimizer.step()
    for trained, expected in zip(module.model.parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected)


def test_epoch_means_weigh_every_image_once(data_dir):
    """The logged epoch mean is Σ(batch mean × batch size) / N, also with a ragged last batch."""
    torch.manual_seed(0)
    module = LitAutoencoder(model="vae", latent_dim=4, hidden_dims=[32])
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=50, val_size=128)  # 157 = 3·50 + 7
    result = _trainer(max_epochs=1).test(module, datamodule=dm, verbose=False)[0]
    images, _ = dm.splits["test"]
    x = images.unsqueeze(1).float() / 255
    with torch.no_grad():
        mu, logvar = module.model.encode(x)
    assert result["test/kl"] == pytest.approx(gaussian_kl(mu, logvar).item(), rel=1e-5)


@pytest.mark.parametrize("accelerator", [
    "cpu",
    pytest.param("gpu", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
])
def test_several_batches_per_step_train_and_log_exactly_like_one(data_dir, tmp_path, accelerator):
    """data.batches_per_step=3: the same optimiser steps on the same batches, fewer Lightning
    steps, and the same logged rows: train/*_step every log_every_n_steps optimiser steps.
    On a GPU both replay the CUDA graph (the ragged last batch runs eagerly)."""
    results = {}
    for k in (1, 3):
        torch.manual_seed(0)
        module = LitAutoencoder(model="vae", latent_dim=4, hidden_dims=[32], recon_loss="bce")
        dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=50, val_size=128, batches_per_step=k)
        logger = CSVLogger(tmp_path, name=f"k{k}", version=0)
        # 512 images: 10 batches of 50 and one of 12; with k=3: 4 Lightning steps per epoch.
        trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=logger, log_every_n_steps=3, max_epochs=2,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(module, datamodule=dm)
        with open(Path(logger.log_dir) / "metrics.csv") as f:
            results[k] = (module, trainer, list(csv.DictReader(f)))
    (one, one_trainer, one_rows), (three, three_trainer, three_rows) = results[1], results[3]
    assert one_trainer.num_training_batches == 11 and three_trainer.num_training_batches == 4
    assert one_trainer.global_step == three_trainer.global_step == 22  # optimiser steps
    for a, b in zip(one.model.parameters(), three.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (one._graph is not None) == (three._graph is not None) == (accelerator == "gpu")
    step_rows = [r["step"] for r in one_rows if r["train/loss_step"]]
    assert step_rows == [str(s - 1) for s in range(3, 23, 3)]  # after optimiser steps 3, 6, ..., 21
    assert three_rows == one_rows  # the same steps, epochs and values, step and epoch metrics alike


def test_fast_dev_run_logs_and_checks_its_step_values(data_dir):
    module = LitAutoencoder(model="ae", latent_dim=4, hidden_dims=[32])
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=64, val_size=128, batches_per_step=3)
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=True, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1  # fast_dev_run is max_steps=1, also inside a group
    assert {"train/recon_step", "train/loss_step"} <= set(trainer.logged_metrics)


def test_max_steps_stops_inside_a_group_of_batches(data_dir):
    module = LitAutoencoder(model="ae", latent_dim=4, hidden_dims=[32])
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=50, val_size=128, batches_per_step=3)
    trainer = _trainer(max_steps=4)  # groups of 3 batches: without the check, 6 steps
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 4


def test_cuda_graph_is_not_used_on_the_cpu(data_dir):
    module = LitAutoencoder(model="ae", latent_dim=4, hidden_dims=[32])
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=64, val_size=128)
    trainer = _trainer(max_steps=2)
    trainer.fit(module, datamodule=dm)
    assert module._graph is None and trainer.global_step == 2
    assert "CUDA device" in module.graph_unavailable_reason()
    assert LitAutoencoder(cuda_graph=False).hparams.cuda_graph is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_equals_eager_step():
    from vaelab.graph_step import CudaGraphStep

    torch.manual_seed(0)
    graphed = LitAutoencoder(model="ae", latent_dim=4, hidden_dims=[32]).cuda()
    eager = copy.deepcopy(graphed)
    batches = [torch.rand(64, 1, 28, 28, device="cuda") for _ in range(5)]
    opt_g = make_optimizer(graphed.parameters(), 1e-3, torch.device("cuda"), capturable=True)
    opt_e = make_optimizer(eager.parameters(), 1e-3, torch.device("cuda"))
    step = CudaGraphStep(graphed.compute_losses, list(graphed.parameters()), opt_g, batches[0])
    for x in batches:
        graph_loss = step(x)["loss"].clone()
        opt_e.zero_grad()
        eager_loss = eager.compute_losses(x)["loss"]
        eager_loss.backward()
        opt_e.step()
        torch.testing.assert_close(graph_loss, eager_loss.detach())
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b)


def test_bf16_mixed_precision_trains(data_dir):
    torch.manual_seed(0)
    module = LitAutoencoder(model="vae", latent_dim=4, hidden_dims=[32], recon_loss="bce")
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=64, val_size=128)
    trainer = _trainer(max_epochs=2, precision="bf16-mixed")
    trainer.fit(module, datamodule=dm)
    assert "bf16-mixed" in module.graph_unavailable_reason() or "CUDA" in module.graph_unavailable_reason()
    losses = trainer.callback_metrics
    # Below 784·ln 2 ≈ 543 nats, the loss of predicting every pixel as a coin flip.
    assert torch.isfinite(losses["train/loss"]) and losses["train/loss"] < 784 * math.log(2)
