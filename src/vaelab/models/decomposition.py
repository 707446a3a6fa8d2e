"""The KL's three parts, estimated on a batch (Chen et al. 2018, "Isolating Sources of
Disentanglement in Variational Autoencoders", eq. 2 and Appendix C.2):

    E_x KL(q(z|x) ‖ p(z)) = I_q(x; z)  +  KL(q(z) ‖ Π_j q(z_j))  +  Σ_j KL(q(z_j) ‖ p(z_j))
                            mi            tc                        dwkl

with q(z) = (1/N) Σ_n q(z|x_n) the aggregate posterior over a data set of N images (vaelab: the
training split) and q(z_j) its marginals. On a batch x_1..x_M, with ONE sample per image,
z_i = μ_i + σ_i·ε_i ~ q(z|x_i) (the reparameterised sample the decoder sees), each part is a batch
mean over i (the sample), summed over latent dimensions j where it has them:

    mi   = (1/M) Σ_i [log q(z_i|x_i) − log q̂(z_i)]
    tc   = (1/M) Σ_i [log q̂(z_i) − Σ_j log q̂(z_ij)]
    dwkl = (1/M) Σ_i [Σ_j log q̂(z_ij) − log p(z_i)]

With a prior that is not a product of its dimensions' (a VampPrior: models/priors.py) the last
part has no dimension-wise meaning: dwkl is then E[Σ_j log q(z_j) − log p(z)] with the model's own
log p(z) (`log_pz`), the rest of the KL once mi and tc are taken out.

They add up, by construction, to the sampled KL (1/M) Σ_i [log q(z_i|x_i) − log p(z_i)] (whose
expectation is the analytic KL that `kl` logs), whatever q̂ is: only the split between them
depends on the estimator.

Minibatch stratified sampling (MSS, the paper's Appendix C.2), row i the sample z_i, column m the
image x_m whose posterior density is evaluated at it:

    q̂(z_i)  = Σ_m W_im q(z_i|x_m)          q̂(z_ij) = Σ_m W_im q(z_ij|x_m)
    W_ii      = 1/N                          the sample's own image
    W_i,i+1   = (N − M + 1) / (N (M − 1))    one other image (i+1 mod M), standing in for the N − M
                                             images outside the batch
    W_im      = 1/(M − 1)                    the M − 2 other images of the batch

Each row sums to 1: 1/N + (N − M + 1)/(N(M − 1)) + (M − 2)/(M − 1) = 1. The reference code
(rtqichen/beta-tcvae, `_log_importance_weight_matrix`) means this matrix but strides by M where
the diagonal needs M + 1, so its 1/N and stratum weights land in columns 0 and 1 (the same images
for every sample; its open PR #1); tests/test_tcvae.py shows what that does to the estimates.

N below M (or N unknown: 0) counts as N = M. A batch of one image has no other images:
q̂(z) = q(z|x), so mi = 0. log q(z_i|x_i), on the diagonal, is taken from ε itself
(objectives.py says why); the other entries from (z_i − μ_m)/σ_m.
"""

import math
from typing import Optional

import torch

from vaelab.models.priors import LOG_2PI, log_standard_normal


def mss_log_weights(batch_size: int, train_size: torch.Tensor) -> torch.Tensor:
    """(M, M) log W of minibatch stratified sampling (module docstring) for a batch of M from a data
    set of `train_size` N images (a 0-dim tensor: no host sync, so a CUDA graph can capture it)."""
    m = batch_size
    n = train_size.to(torch.float64 if train_size.dtype == torch.float64 else torch.float32)
    if m == 1:
        return torch.zeros(1, 1, dtype=n.dtype, device=n.device)
    n = n.clamp(min=float(m))
    eye = torch.eye(m, dtype=torch.bool, device=n.device)
    stratum = eye.roll(1, dims=1)  # (i, i+1 mod M)
    own = -n.log()
    other = torch.full((), -math.log(m - 1), dtype=n.dtype, device=n.device)
    strat = (n - m + 1).log() - n.log() - math.log(m - 1)
    return torch.where(eye, own, torch.where(stratum, strat, other))


def log_posterior_matrix(z: torch.Tensor, eps: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(M, M, D) log q(z_ij | x_m) at [i, m, j] for z_i = μ_i + σ_i·ε_i; the diagonal m = i from ε."""
    d = z.shape[-1]
    scaled = (z.unsqueeze(1) - mu.unsqueeze(0)) * torch.exp(-0.5 * logvar).unsqueeze(0)  # (M, M, D)
    own = eps.pow(2)  # (M, D): (z_i − μ_i)/σ_i exactly
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device).unsqueeze(-1)
    squared = torch.where(eye, own.unsqueeze(1).expand(-1, z.shape[0], d), scaled.pow(2))
    return -0.5 * (squared + logvar.unsqueeze(0) + LOG_2PI)


def decompose(z: torch.Tensor, eps: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              log_weights: torch.Tensor, log_pz: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Batch means of mi, tc and dwkl (module docstring) for samples z (M, D) = μ + σ·ε of q(z|x_i),
    with importance weights `log_weights` (M, M): row i the sample, column m the image; `log_pz` (M,)
    the prior's log-density at the samples (None: N(0, I))."""
    matrix = log_posterior_matrix(z, eps, mu, logvar)  # (M, M, D)
    log_w = log_weights.to(matrix)
    own = torch.diagonal(matrix, dim1=0, dim2=1).T.sum(dim=-1)  # (M,) log q(z_i|x_i)
    log_qz = torch.logsumexp(log_w + matrix.sum(dim=-1), dim=1)  # (M,) log q̂(z_i)
    log_qz_dims = torch.logsumexp(log_w.unsqueeze(-1) + matrix, dim=1).sum(dim=-1)  # (M,) Σ_j log q̂(z_ij)
    log_pz = log_standard_normal(z) if log_pz is None else log_pz  # (M,)
    return {"mi": (own - log_qz).mean(), "tc": (log_qz - log_qz_dims).mean(), "dwkl": (log_qz_dims - log_pz).mean()}


def kl_decomposition(z: torch.Tensor, eps: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                     train_size: torch.Tensor, log_pz: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """mi, tc and dwkl of a batch by minibatch stratified sampling from a data set of `train_size` images
    (`log_pz`: see `decompose`)."""
    return decompose(z, eps, mu, logvar, mss_log_weights(z.shape[0], train_size), log_pz)
