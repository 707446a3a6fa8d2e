"""The importance weights shared by the IWAE objective (training) and the NLL estimate (eval.py).

For z = μ + σ·ε, ε ~ N(0, I), drawn from q(z|x) = N(μ, diag σ²):

    log w = log p(x|z) + log p(z) − log q(z|x)
    log p(z) − log q(z|x) = −½ Σ_j (z_j² − ε_j² − log σ_j²)      (the log 2π terms cancel)

log q is taken from the noise ε itself, as Burda et al. (2015) do: (z − μ)²/σ² recomputed from z
loses precision when σ ≪ |μ| (float32 keeps ~7 digits of z, so z − μ keeps few of ε·σ).
"""

import torch


def log_prior_over_posterior(z: torch.Tensor, eps: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) − log N(z; μ, diag exp(logvar)) for z = μ + exp(logvar/2)·eps, summed over
    the last (latent) dimension; broadcasts over leading sample dimensions."""
    return -0.5 * (z.pow(2) - eps.pow(2) - logvar).sum(dim=-1)
