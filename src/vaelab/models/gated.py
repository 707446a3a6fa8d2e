"""model.net=gated_mlp: the gated dense networks of the VampPrior paper (Tomczak & Welling 2018, the
VAE of jmtomczak/vae_vampprior, models/VAE.py), which the Exemplar-VAE paper (Norouzi et al. 2020)
also uses for its MLP rows.

A gated dense layer (Dauphin et al. 2017): h = (W x + b) ⊙ σ(V x + c), no other non-linearity.

    encoder: x (C·H·W) → gated 300 → gated 300; then the model's heads, μ linear and log σ² clipped
             to [−6, 2] (the reference's Hardtanh on the log-variance head: `logvar_range`)
    decoder: z → gated 300 → gated 300 → linear C·H·W (the logits; the reference's sigmoid is the
             Bernoulli likelihood's, models/losses.py)

Every linear layer, the heads included (`init_head`), is drawn as the reference's `he_init`:
weights ~ N(0, 2 / fan_in), biases as nn.Linear leaves them. `model.hidden_dims` sets the widths
(null: the paper's [300, 300]); the decoder mirrors them.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn

GATED_MLP_WIDTHS = (300, 300)
GATED_LOGVAR_RANGE = (-6.0, 2.0)


def he_init(linear: nn.Linear) -> None:
    """The reference's he_init: weights ~ N(0, 2 / fan_in)."""
    with torch.no_grad():
        linear.weight.normal_(0.0, math.sqrt(2.0 / linear.in_features))


class GatedDense(nn.Module):
    """h = (W x + b) ⊙ σ(V x + c)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.h = nn.Linear(n_in, n_out)
        self.g = nn.Linear(n_in, n_out)
        he_init(self.h)
        he_init(self.g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def _gated(sizes: Sequence[int]) -> nn.Sequential:
    return nn.Sequential(*(GatedDense(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])))


class GatedMLPEncoder(nn.Module):
    """(B, C, H, W) images → (B, hidden_dims[-1]) features."""

    logvar_range = GATED_LOGVAR_RANGE  # VAE.encode clips the log-variance head to it

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int] = GATED_MLP_WIDTHS):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), _gated([math.prod(image_shape), *hidden_dims]))
        self.out_features = hidden_dims[-1]

    @staticmethod
    def init_head(linear: nn.Linear) -> None:
        """How the model's heads on these features are drawn (the reference's he_init)."""
        he_init(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GatedMLPDecoder(nn.Module):
    """(B, latent_dim) codes → (B, C, H, W) pixel logits."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int] = GATED_MLP_WIDTHS, latent_dim: int = 40):
        super().__init__()
        self.image_shape = tuple(image_shape)
        sizes = [latent_dim, *reversed(hidden_dims)]
        out = nn.Linear(sizes[-1], math.prod(image_shape))
        he_init(out)
        self.net = nn.Sequential(_gated(sizes), out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)
