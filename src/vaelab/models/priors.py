"""The VAE's prior p(z): model.prior=standard, N(0, I), or model.prior=vamp, the VampPrior
(Tomczak & Welling 2018, "VAE with a VampPrior"):

    p(z) = (1/K) Σ_k q(z | u_k)        K learned pseudo-inputs u_k (images), q the model's own encoder

Densities below are summed over the latent dimension (the last) and broadcast over the others.

    log N(z; 0, I)          = −½ Σ_j (z_j² + log 2π)
    log q(z|x), z = μ + σ·ε  = −½ Σ_j (ε_j² + log σ_j² + log 2π)       from ε itself (objectives.py says why)
    log p_vamp(z)           = logsumexp_k [Σ_j log N(z_j; μ_kj, σ_kj²)] − log K,  (μ_k, log σ_k²) = encoder(u_k)

The KL to a VampPrior has no closed form: the VAE estimates it from its sample, as the paper
does, KL ≈ log q(z|x) − log p(z) (one sample per image in training; k per image in eval.py).

Pseudo-inputs as the reference code keeps them (jmtomczak/vae_vampprior, models/Model.py and
utils/load_data.py, binary data, use_training_data_init off): a weight w ~ N(0.05, 0.01²) per
pixel of each of the K pseudo-images, and u = hardtanh(w) = clip(w, 0, 1), in the [0, 1] range of
the decoder's pixel means (mapped to the data's pixel range here). A pixel clipped at 0 or 1 gets
no gradient, as there.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)
PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD = 0.05, 0.01
# (sample, component) pairs evaluated at once in a mixture density: eval.py asks for up to 50,000 codes
# at a time, × 500 components = 25 M log-densities; chunks of 8 M keep each float64 (samples × K)
# matrix at 64 MB (a training batch of 100 × 500 is one chunk).
MIXTURE_CHUNK_ELEMENTS = 1 << 23


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=-1)


def log_posterior_from_noise(eps: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag exp(logvar)) at z = μ + exp(logvar/2)·eps, summed over the last dimension."""
    return -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(dim=-1)


def log_gaussian_mixture(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k N(z; means_k, diag exp(logvars_k)) for z (..., d), components (K, d); returns z's (...).

    Each component's quadratic form Σ_j (z_j − μ_kj)²/σ_kj² is expanded into two matrix products,
    (z²)·(1/σ²)ᵀ − 2·z·(μ/σ²)ᵀ + Σ_j μ_kj²/σ_kj², in float64 (float32 on MPS, which has no float64):
    a (samples × K × d) difference tensor would move d times more memory, which makes eval.py's
    k = 5000 estimate slower than its decoder; float64 keeps the expansion's cancellation (terms
    up to ~1e10 with σ² at exp(−20)) far below 1e-3 nats.
    """
    wide = torch.float32 if z.device.type == "mps" else torch.float64
    flat = z.reshape(-1, z.shape[-1]).to(wide)
    precision = torch.exp(-logvars.to(wide))  # (K, d) 1/σ²
    weighted_means = means.to(wide) * precision
    offset = (means.to(wide) * weighted_means).sum(dim=-1)  # (K,) Σ_j μ²/σ²
    norm = -0.5 * (logvars.to(wide) + LOG_2PI).sum(dim=-1)  # (K,)
    rows = max(1, MIXTURE_CHUNK_ELEMENTS // max(1, len(means)))
    parts = []
    for start in range(0, len(flat), rows):
        part = flat[start:start + rows]
        quadratic = (part.pow(2) @ precision.T - 2 * part @ weighted_means.T + offset).clamp_min(0)  # (rows, K)
        parts.append(torch.logsumexp(norm - 0.5 * quadratic, dim=-1))
    return (torch.cat(parts) - math.log(len(means))).to(z.dtype).reshape(z.shape[:-1])


def mixture_moments(means: torch.Tensor, logvars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and covariance (d, d) of the equal-weight mixture of N(means_k, diag exp(logvars_k))."""
    mean = means.mean(dim=0)
    centred = means - mean
    cov = centred.T @ centred / len(means) + torch.diag(logvars.exp().mean(dim=0))
    return mean, cov


class PseudoInputs(nn.Module):
    """The VampPrior's K pseudo-images u_k (module docstring), in the data's pixel range."""

    def __init__(self, k: int, image_shape: Sequence[int], pixel_range: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, *image_shape).normal_(PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD))
        self.low, self.scale = float(pixel_range[0]), float(pixel_range[1]) - float(pixel_range[0])

    def forward(self) -> torch.Tensor:
        """(K, C, H, W) u_k = low + scale·clip(w_k, 0, 1)."""
        return self.low + self.scale * torch.nn.functional.hardtanh(self.weight, 0.0, 1.0)
