"""Importance-sampled negative log-likelihood −log p(x) of a VAE (Burda et al. 2015, eq. 8).

    log p(x) ≈ log (1/k) Σ_{j=1..k} w_j,   w_j = p(x|z_j) p(z_j) / q(z_j|x),   z_j ~ q(z|x)

computed as logsumexp(log w) − log k, so no weight ever leaves float range. The estimate is
a lower bound on log p(x) for every k (in expectation) that tightens as k grows, and it is
never below the ELBO estimate (1/k) Σ_j log w_j of the same samples (Jensen's inequality).

The decoder likelihood log p(x|z) is the model's own (`vaelab.models.Likelihood`): −recon, the
training term per image, up to a constant (0 for bce, ½·D·log π for mse). vaelab reports `nll`
without that constant, on the same scale as `nelbo` (which omits it too), so the two compare
directly; eval.json also stores the constant.
"""

import math
from collections.abc import Callable

import torch


LOG_2PI = math.log(2 * math.pi)

# log p(x|z) up to the constant: takes codes (K, B, latent_dim) and images (B, ...), returns (K, B).
LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=-1)


def diagonal_normal_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(dim=-1)


@torch.no_grad()
def importance_sampled_nll(
    x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, log_likelihood: LogLikelihood,
    k: int, max_codes: int = 50_000,
) -> dict[str, torch.Tensor]:
    """Per-image estimates, each (B,), for images `x` with posterior N(mu, exp(logvar)) (B, latent_dim).

    nll:   −[logsumexp_j log w_j − log k]
    nelbo: −(1/k) Σ_j log w_j   (the Monte Carlo ELBO of the same samples: nll ≤ nelbo always)
    recon: (1/k) Σ_j −log p(x|z_j)

    The samples are drawn in chunks of at most `max_codes` codes (K·B ≤ max_codes), so memory
    is bounded by max_codes decoded images whatever k is; log-sum-exp is accumulated across chunks.
    """
    if k < 1:
        raise ValueError(f"eval.k={k} must be at least 1")
    batch = x.shape[0]
    chunk = max(1, max_codes // batch)
    running_lse = torch.full((batch,), -math.inf, dtype=mu.dtype, device=mu.device)
    sum_log_w = torch.zeros(batch, dtype=mu.dtype, device=mu.device)
    sum_log_px_z = torch.zeros_like(sum_log_w)
    std = torch.exp(0.5 * logvar)
    done = 0
    while done < k:
        n = min(chunk, k - done)
        z = mu + std * torch.randn((n, *mu.shape), dtype=mu.dtype, device=mu.device)  # (n, B, latent_dim)
        log_px_z = log_likelihood(z, x)  # (n, B)
        log_w = log_px_z + standard_normal_log_prob(z) - diagonal_normal_log_prob(z, mu, logvar)
        running_lse = torch.logaddexp(running_lse, torch.logsumexp(log_w, dim=0))
        sum_log_w += log_w.sum(dim=0)
        sum_log_px_z += log_px_z.sum(dim=0)
        done += n
    return {"nll": -(running_lse - math.log(k)), "nelbo": -sum_log_w / k, "recon": -sum_log_px_z / k}


def model_log_likelihood(model) -> LogLikelihood:
    """log p(x|z) + constant of a model's decoder: −recon, exactly the training term per image."""
    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n, batch = z.shape[:2]
        logits = model.decode(z.reshape(n * batch, -1))
        targets = x.expand(n, *x.shape).reshape(logits.shape)
        return -model.likelihood.error(logits, targets).view(n, batch)

    return log_likelihood
