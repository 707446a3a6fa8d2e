"""The AE and the VAE: an encoder network with a head that makes the code, and a decoder."""

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
from torch import nn

from vaelab.models.conv import ConvDecoder, ConvEncoder
from vaelab.models.mlp import MLPDecoder, MLPEncoder

# Adding a network: write its encoder/decoder pair in models/<name>.py and name it here.
NETWORKS = {
    "mlp": (MLPEncoder, MLPDecoder),
    "conv": (ConvEncoder, ConvDecoder),
}

# exp(-20) keeps σ representable in float32 and bfloat16; exp(10) keeps σ² and the KL finite.
LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0


class AutoencoderOutput(NamedTuple):
    logits: torch.Tensor  # (B, C, H, W) decoder output before the sigmoid
    z: torch.Tensor  # (B, latent_dim) the code that was decoded
    mu: Optional[torch.Tensor] = None  # (B, latent_dim) VAE only
    logvar: Optional[torch.Tensor] = None  # (B, latent_dim) VAE only


def _networks(net: str, image_shape: Sequence[int], hidden_dims: Sequence[int], latent_dim: int):
    if net not in NETWORKS:
        raise ValueError(f"unknown network {net!r}; choose one of {', '.join(NETWORKS)}")
    encoder_cls, decoder_cls = NETWORKS[net]
    return encoder_cls(image_shape, hidden_dims), decoder_cls(image_shape, hidden_dims, latent_dim)


class _EncoderDecoder(nn.Module):
    """What AE and VAE share: the encoder network (features) and the decoder (codes → logits)."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int], net: str = "mlp"):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder, self.decoder = _networks(net, image_shape, hidden_dims, latent_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class AE(_EncoderDecoder):
    """Deterministic autoencoder: z = f(x), x' = g(z), trained on the reconstruction alone."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int], net: str = "mlp"):
        super().__init__(image_shape, latent_dim, hidden_dims, net)
        self.fc_z = nn.Linear(self.encoder.out_features, latent_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_z(self.encoder(x))

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        z = self.encode(x)
        return AutoencoderOutput(logits=self.decode(z), z=z)


class VAE(_EncoderDecoder):
    """Variational autoencoder with a diagonal Gaussian q(z|x) and the prior N(0, I)."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int], net: str = "mlp"):
        super().__init__(image_shape, latent_dim, hidden_dims, net)
        self.fc_mu = nn.Linear(self.encoder.out_features, latent_dim)
        self.fc_var = nn.Linear(self.encoder.out_features, latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (B, latent_dim)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_var(h).clamp(LOGVAR_MIN, LOGVAR_MAX)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return AutoencoderOutput(logits=self.decode(z), z=z, mu=mu, logvar=logvar)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images (pixel probabilities in [0, 1]) decoded from codes drawn from the prior."""
        device = self.fc_mu.weight.device
        z = torch.randn(n, self.latent_dim, device=device)
        return torch.sigmoid(self.decode(z))


MODELS = {"ae": AE, "vae": VAE}


def build_model(name: str, image_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int], net: str = "mlp") -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](image_shape, latent_dim, list(hidden_dims), net)
