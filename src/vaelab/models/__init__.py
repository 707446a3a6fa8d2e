"""Plain nn.Modules and loss functions: the model types, their networks and likelihoods; no Lightning."""

from collections.abc import Sequence

from vaelab.catalog import MODEL_TYPES
from vaelab.models.autoencoders import (AE, DEFAULT_HIDDEN_DIMS, VAE, Autoencoder, AutoencoderOutput, CodeDistribution,
                                        Codes, fitted_gaussian)
from vaelab.models.losses import Likelihood, gaussian_kl, gaussian_kl_per_dim, reconstruction_error, reconstruction_loss
from vaelab.models.schedules import KLSchedule


def model_class(name: str) -> type[Autoencoder]:
    """The class of model type `name` (declared in vaelab.catalog.MODEL_TYPES)."""
    return MODEL_TYPES[name].load()


def build_model(name: str, image_shape: Sequence[int], pixel_range: Sequence[float] = (0.0, 1.0),
                **settings) -> Autoencoder:
    """Model type `name`; settings that are None (e.g. an AE's beta: null) are left out."""
    given = {key: value for key, value in settings.items() if value is not None}
    return model_class(name)(image_shape=tuple(image_shape), pixel_range=tuple(pixel_range), **given)


__all__ = [
    "AE",
    "DEFAULT_HIDDEN_DIMS",
    "KLSchedule",
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
    "model_class",
    "reconstruction_error",
    "reconstruction_loss",
]
