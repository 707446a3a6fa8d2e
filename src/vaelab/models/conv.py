"""Convolutional encoder and decoder: each hidden dim is one stride-2 conv layer's channels.

They take images of any (C, H, W): grey or colour, odd, non-square, as small as 1×1 (a size-1
side stays 1). Each layer maps a side of n to ⌈n/2⌉, and the decoder's transposed convs restore
the encoder's exact sizes (output_padding 0 or 1), so the decoder's output has the input's shape.
"""

from collections.abc import Sequence

import torch
from torch import nn


def _downsampled(size: int, n_layers: int) -> int:
    for _ in range(n_layers):
        size = (size + 1) // 2  # kernel 3, stride 2, padding 1
    return size


class ConvEncoder(nn.Module):
    """(B, C, H, W) → (B, hidden_dims[-1]·h·w) features, halving H and W per layer."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int]):
        super().__init__()
        channels, height, width = image_shape
        layers: list[nn.Module] = []
        for n_in, n_out in zip([channels, *hidden_dims[:-1]], hidden_dims):
            layers += [nn.Conv2d(n_in, n_out, kernel_size=3, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Flatten())
        h, w = _downsampled(height, len(hidden_dims)), _downsampled(width, len(hidden_dims))
        self.out_features = hidden_dims[-1] * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, latent_dim) → (B, C, H, W) logits: the encoder's layers mirrored with transposed convs."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int], latent_dim: int):
        super().__init__()
        channels, height, width = image_shape
        n = len(hidden_dims)
        # Sizes the encoder passes through, so each transposed conv can restore its exact size.
        heights = [_downsampled(height, i) for i in range(n + 1)]
        widths = [_downsampled(width, i) for i in range(n + 1)]
        self.start_shape = (hidden_dims[-1], heights[-1], widths[-1])
        self.fc = nn.Linear(latent_dim, hidden_dims[-1] * heights[-1] * widths[-1])
        layers: list[nn.Module] = []
        out_channels = [*reversed(hidden_dims[:-1]), channels]
        for i, (n_in, n_out) in enumerate(zip(reversed(hidden_dims), out_channels)):
            target_h, target_w = heights[n - 1 - i], widths[n - 1 - i]
            pad_h, pad_w = target_h - (2 * heights[n - i] - 1), target_w - (2 * widths[n - i] - 1)
            layers.append(nn.ReLU())
            layers.append(
                nn.ConvTranspose2d(n_in, n_out, 3, stride=2, padding=1, output_padding=(pad_h, pad_w))
            )
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, *self.start_shape))
