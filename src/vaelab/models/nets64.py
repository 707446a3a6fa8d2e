"""The published encoder/decoder pairs of the disentanglement papers, for 64×64 images (dSprites).

Followed: google-research/disentanglement_lib, disentanglement_lib/methods/shared/architectures.py
(commits 76f41e3 and 86a644d, the same there), the nets of Locatello et al. 2019 ("Challenging
common assumptions in the unsupervised learning of disentangled representations", Table 1 of the
appendix), which its docstrings trace to Higgins et al. 2017 (β-VAE, Table 1 rows 1 and 3).

model.net=conv64: `conv_encoder` / `deconv_decoder`. Encoder: four stride-2 convolutions with
ReLU, 32, 32, 64, 64 channels, kernels 4, 4, 2, 2 (the last two are 2×2 there, not 4×4),
64 → 32 → 16 → 8 → 4; flatten; dense 256, ReLU; then the model's heads (a VAE's fc_mu and
fc_var, an AE's fc_z). Decoder: dense 256, ReLU, dense 4·4·64, ReLU, reshape to (64, 4, 4),
transposed convolutions 64, 32, 32 (ReLU) and C channels (the logits), each kernel 4, stride 2,
4 → 8 → 16 → 32 → 64. TensorFlow's padding="same" is padding 1 for kernel 4 and 0 for kernel 2
here: the same sizes and the same cropping. TensorFlow flattens (H, W, C) and PyTorch (C, H, W),
which permutes the dense layers' weights and changes nothing else. Any C (the library
builds its last layer with the data's channels); 64×64 only: the dense layers' sizes are
those of a 4×4 map (ConfigError otherwise: model.net=conv takes any size).
Not Burgess et al. 2018 ("Understanding disentangling in β-VAE", appendix A.1), whose encoder
has four 4×4 convolutions of 32 channels and two dense layers of 256.

model.net=mlp1200: `fc_encoder` / `fc_decoder`, which is also Chen et al. 2018's β-TCVAE MLP
(rtqichen/beta-tcvae, vae_quant.py: MLPEncoder, MLPDecoder). Encoder: dense 1200, ReLU, dense
1200, ReLU, then the heads (β-TCVAE has one layer of 2·latent_dim outputs for the means and log
σ, the same weights as fc_mu and fc_var). Decoder: three dense layers of 1200, each followed by
tanh, then dense C·H·W (the logits). Not the plain mlp with model.hidden_dims=[1200,1200], whose
decoder has two ReLU layers. It is models/mlp.py's MLPEncoder and MLPDecoder with these widths
and the decoder's tanh; like them it flattens an image of any (C, H, W), which is 64·64 = 4096
values on dSprites.

Both are fixed: model.hidden_dims must be null (the references' own widths, which
DEFAULT_HIDDEN_DIMS in models/autoencoders.py lists and the nets receive), any other value is
refused when the model is built.
"""

from collections.abc import Sequence

import torch
from torch import nn

from vaelab.errors import ConfigError
from vaelab.models.mlp import MLPDecoder, MLPEncoder

CONV64_CHANNELS = (32, 32, 64, 64)  # the encoder's convolutions; the decoder's are 64, 32, 32, C
CONV64_KERNELS = (4, 4, 2, 2)
CONV64_DENSE = 256
MLP1200_ENCODER = (1200, 1200)
MLP1200_DECODER = (1200, 1200, 1200)


def check_fixed(net: str, hidden_dims: Sequence[int], reference: Sequence[int]) -> None:
    """Refuse model.hidden_dims for a net whose widths are the reference's (null gives `reference`)."""
    if tuple(hidden_dims) != tuple(reference):
        raise ConfigError(f"model.net={net} is a published architecture of fixed widths (models/nets64.py): "
                          f"model.hidden_dims must be null, not {list(hidden_dims)}; "
                          f"for other widths use model.net=mlp or model.net=conv")


def check_64(net: str, image_shape: Sequence[int]) -> None:
    channels, height, width = image_shape
    if (height, width) != (64, 64):
        raise ConfigError(f"model.net={net} takes 64×64 images (data=dsprites), not {height}×{width}; "
                          f"for other sizes use model.net=conv")


class Conv64Encoder(nn.Module):
    """(B, C, 64, 64) → (B, 256) features: disentanglement_lib's conv_encoder without its heads."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int] = CONV64_CHANNELS):
        super().__init__()
        check_fixed("conv64", hidden_dims, CONV64_CHANNELS)
        check_64("conv64", image_shape)
        layers: list[nn.Module] = []
        for n_in, n_out, kernel in zip([image_shape[0], *CONV64_CHANNELS[:-1]], CONV64_CHANNELS, CONV64_KERNELS):
            # Each halves the side: kernel 4 with padding 1, kernel 2 with none ("same" in TensorFlow).
            layers += [nn.Conv2d(n_in, n_out, kernel, stride=2, padding=1 if kernel == 4 else 0), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Flatten(),  # (B, 64, 4, 4) → (B, 1024)
                                 nn.Linear(CONV64_CHANNELS[-1] * 4 * 4, CONV64_DENSE), nn.ReLU())
        self.out_features = CONV64_DENSE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv64Decoder(nn.Module):
    """(B, latent_dim) → (B, C, 64, 64) logits: disentanglement_lib's deconv_decoder."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int] = CONV64_CHANNELS,
                 latent_dim: int = 10):
        super().__init__()
        check_fixed("conv64", hidden_dims, CONV64_CHANNELS)
        check_64("conv64", image_shape)
        self.start_shape = (CONV64_CHANNELS[-1], 4, 4)
        self.fc = nn.Sequential(nn.Linear(latent_dim, CONV64_DENSE), nn.ReLU(),
                                nn.Linear(CONV64_DENSE, CONV64_CHANNELS[-1] * 4 * 4), nn.ReLU())
        channels = [64, 64, 32, 32, image_shape[0]]  # 4 → 8 → 16 → 32 → 64
        layers: list[nn.Module] = []
        for n_in, n_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])  # no ReLU after the last: it gives the logits

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, *self.start_shape))


class MLP1200Encoder(MLPEncoder):
    """(B, C, H, W) → (B, 1200) features: disentanglement_lib's fc_encoder (β-TCVAE's MLPEncoder) without its heads."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int] = MLP1200_ENCODER):
        check_fixed("mlp1200", hidden_dims, MLP1200_ENCODER)
        super().__init__(image_shape, MLP1200_ENCODER)


class MLP1200Decoder(MLPDecoder):
    """(B, latent_dim) → (B, C, H, W) logits: disentanglement_lib's fc_decoder (β-TCVAE's MLPDecoder)."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int] = MLP1200_ENCODER,
                 latent_dim: int = 10):
        check_fixed("mlp1200", hidden_dims, MLP1200_ENCODER)
        super().__init__(image_shape, MLP1200_DECODER, latent_dim, activation=nn.Tanh)
