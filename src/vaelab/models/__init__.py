"""Plain nn.Modules and loss functions; nothing here depends on Lightning."""

from vaelab.models.autoencoders import AE, MODELS, NETWORKS, VAE, AutoencoderOutput, build_model
from vaelab.models.losses import (RECON_LOSSES, gaussian_kl, gaussian_kl_per_dim, reconstruction_error,
                                  reconstruction_loss)

__all__ = [
    "AE",
    "VAE",
    "MODELS",
    "NETWORKS",
    "RECON_LOSSES",
    "AutoencoderOutput",
    "build_model",
    "gaussian_kl",
    "gaussian_kl_per_dim",
    "reconstruction_error",
    "reconstruction_loss",
]
