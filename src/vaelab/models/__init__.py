"""Plain nn.Modules and loss functions: the model types, their networks and likelihoods; no Lightning."""

import inspect
from collections.abc import Sequence

from vaelab.models.autoencoders import (AE, DEFAULT_HIDDEN_DIMS, NETWORKS, OBJECTIVES, VAE, Autoencoder,
                                        AutoencoderOutput, CodeDistribution, Codes, fitted_gaussian)
from vaelab.models.losses import (RECON_LOSSES, Likelihood, gaussian_kl, gaussian_kl_per_dim, reconstruction_error,
                                  reconstruction_loss)
from vaelab.models.schedules import KL_SCHEDULES, PERIOD_UNITS, KLSchedule

# model=<name> in the config; a new model type is listed here (see models/autoencoders.py).
MODEL_TYPES: dict[str, type[Autoencoder]] = {cls.name: cls for cls in (AE, VAE)}


def model_settings(name: str) -> set[str]:
    """The settings (constructor arguments) that model type `name` takes."""
    return set(inspect.signature(MODEL_TYPES[name]).parameters)


def build_model(name: str, image_shape: Sequence[int], pixel_range: Sequence[float] = (0.0, 1.0),
                **settings) -> Autoencoder:
    """Model type `name`; settings that are None (e.g. an AE's beta: null) are left out."""
    given = {key: value for key, value in settings.items() if value is not None}
    return MODEL_TYPES[name](image_shape=tuple(image_shape), pixel_range=tuple(pixel_range), **given)


__all__ = [
    "AE",
    "DEFAULT_HIDDEN_DIMS",
    "KL_SCHEDULES",
    "KLSchedule",
    "OBJECTIVES",
    "PERIOD_UNITS",
    "MODEL_TYPES",
    "NETWORKS",
    "RECON_LOSSES",
    "VAE",
    "Autoencoder",
    "AutoencoderOutput",
    "CodeDistribution",
    "Codes",
    "Likelihood",
    "build_model",
    "fitted_gaussian",
    "gaussian_kl",
    "gaussian_kl_per_dim",
    "model_settings",
    "reconstruction_error",
    "reconstruction_loss",
]
