"""Lightning's model summary, its FLOPs counted without touching the run's random draws."""

import importlib.util

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelSummary as PlainModelSummary
from pytorch_lightning.callbacks import RichModelSummary

# Lightning's default choice: the rich table where rich is installed.
_BASE = RichModelSummary if importlib.util.find_spec("rich") else PlainModelSummary


class ModelSummary(_BASE):
    """Lightning's model summary table. Its FLOPs (and in/out sizes) come from one forward pass on
    the module's `example_input_array`, through the data module's batch hooks, where dynamic
    binarisation and the VAE's ε draw random numbers. The pass runs on forked generators: a run
    with the summary makes the same random draws as one without it."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            super().on_fit_start(trainer, pl_module)
