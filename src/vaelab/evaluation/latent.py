"""The latent space as numbers: codes of a set of images, KL per dimension, active units.

Active units follow Burda et al. (2015, arXiv:1509.00519, section 5.2): dimension i is active
when A_i = Cov_x(E_{q(z|x)}[z_i]) > 0.01, i.e. when the posterior mean of z_i varies across
images. A collapsed dimension has μ_i(x) ≈ 0 for every x (q(z_i|x) = prior), so A_i ≈ 0.
"""

from collections.abc import Iterator

import torch

from vaelab.models import Codes

ACTIVE_THRESHOLD = 0.01  # Burda et al.'s threshold on Cov_x(E_q[z_i])


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000) -> Codes:
    """Codes (`model.posterior`) of images `x` (N, C, H, W), encoded `batch_size` at a time."""
    parts = [model.posterior(x[part]) for part in batches(len(x), batch_size)]
    return Codes(*(None if field[0] is None else torch.cat(field) for field in zip(*parts)))


def activity(codes: Codes) -> torch.Tensor:
    """(latent_dim,) A_i = Var_x(E_q[z_i]), the population variance over the N images."""
    return codes.mu.var(dim=0, unbiased=False)


def active_units(codes: Codes, threshold: float = ACTIVE_THRESHOLD) -> int:
    return int((activity(codes) > threshold).sum())


def most_active_first(codes: Codes) -> torch.Tensor:
    """Dimension indices ordered by activity, the most active first."""
    return torch.argsort(activity(codes), descending=True)


def project_2d(z: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """(N, 2) coordinates to plot and their axis names: z itself when it has ≤ 2 dims, else PCA."""
    d = z.shape[1]
    if d == 1:
        return torch.cat([z, torch.zeros_like(z)], dim=1), ["z1", ""]
    if d == 2:
        return z, ["z1", "z2"]
    centred = z - z.mean(dim=0)
    # Principal axes are the right singular vectors of the centred codes; S² ∝ explained variance.
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    explained = s.pow(2) / s.pow(2).sum()
    return centred @ vh[:2].T, [f"PC{i + 1} ({100 * float(explained[i]):.0f}% of variance)" for i in range(2)]
