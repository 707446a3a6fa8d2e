"""Fully connected encoder and decoder for small images of any (C, H, W): the first layer takes the C·H·W
values of an image flattened, the last gives them back in that shape."""

import math
from collections.abc import Sequence

import torch
from torch import nn


def _mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), activation()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """(B, C, H, W) images → (B, hidden_dims[-1]) features; a head on top makes the code."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int]):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), _mlp([math.prod(image_shape), *hidden_dims]))
        self.out_features = hidden_dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """(B, latent_dim) codes → (B, C, H, W) pixel logits; hidden layers mirror the encoder's, each
    followed by `activation` (ReLU; the β-VAE MLP of models/nets64.py takes tanh)."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int], latent_dim: int,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.image_shape = tuple(image_shape)
        sizes = [latent_dim, *reversed(hidden_dims)]
        self.net = nn.Sequential(_mlp(sizes, activation), nn.Linear(sizes[-1], math.prod(image_shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)
