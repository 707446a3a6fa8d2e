"""Importance-sampled negative log-likelihood −log p(x) of a VAE (Burda et al. 2015, eq. 8).

    log p(x) ≈ log (1/k) Σ_{j=1..k} w_j,   w_j = p(x|z_j) p(z_j) / q(z_j|x),   z_j ~ q(z|x)

computed as logsumexp(log w) − log k, so no weight ever leaves float range. For z = μ + σ·ε,
log p(z) − log q(z|x) is taken from the noise ε (`log_prior_over_posterior`), as Burda et al. do:
recomputing (z − μ)²/σ² from z loses the digits of ε when σ ≪ |μ|. A VAE whose prior is not N(0, I)
(a VampPrior) gives its own (`VAE.log_prior_over_posterior`, the `log_prior_ratio` argument). The estimate is
a lower bound on log p(x) for every k (in expectation) that tightens as k grows, and it is
never below the ELBO estimate (1/k) Σ_j log w_j of the same samples (Jensen's inequality).

The decoder likelihood log p(x|z) is the model's own (`vaelab.models.Likelihood`): −recon, the
training term per image, up to a constant (½·D·log π for mse, 0 for the others). vaelab reports
`nll` without that constant, on the same scale as `nelbo` (which omits it too), so the two
compare directly; eval.json also stores the constant.

What nll then measures depends on the likelihood and the data (`nll_meaning`): −log p(x) of a
normalised distribution (a density, or a probability mass for binary pixels), except for bce on
grey levels. The Bernoulli p(x|z) = Π x'^x (1 − x')^(1−x) is a
distribution over pixels in {0, 1} only; with grey targets x ∈ [0, 1] its −log is the
cross-entropy with soft targets, which no density of x gives (exp(−cross-entropy) does not
integrate to 1 over [0, 1]^D: the continuous Bernoulli's normaliser fixes that), so that nll is a
cross-entropy, not comparable with published NLLs.

For colour data (C > 1 channels) eval.json adds test/bpd = test/nll / (C·H·W · ln 2)
(`bits_per_dim`), the convention of colour-image papers, and test/bpd_measures: bits per
dimension of the likelihood in use, a continuous density of levels in data.pixel_range for mse,
gaussian and cbernoulli. The literature's bits per dimension (CIFAR-10 and the like) are −log2 of
a *discrete* probability of 8-bit values (a discretised likelihood, or a density of uniformly
dequantised values on [0, 256]); vaelab's likelihoods are not discretised, so its bpd does not
compare with those numbers (a density on [0, 1] is 8 bits per dimension below the same density on
[0, 256], and can be negative). Grey data keep test/nll alone, as before.
"""

import math
from collections.abc import Callable

import torch

from vaelab.evaluation.latent import batches
from vaelab.models.objectives import log_prior_over_posterior

# What test/nll is, by likelihood kind (models.losses.RECON_LOSSES), whether or not the data are binarised.
DENSITIES = {
    "mse": "−log p(x) in nats under the Gaussian p(x|z) = N(x', ½·I), less the constant test/nll_constant = ½·D·log π",
    "gaussian": "−log p(x) in nats under the Gaussian p(x|z) = N(x', σ²·I) with the decoder's σ: a density, no constant left out",
    "cbernoulli": "−log p(x) in nats under the continuous Bernoulli p(x|z), a density on [0, 1]: no constant left out",
}
BERNOULLI_ON_BINARY = ("−log p(x) in nats of the binarised images under Bernoulli pixels (a probability mass): "
                       "comparable with published NLLs on binarised data")
BERNOULLI_ON_GREY = ("a cross-entropy, not −log p(x): on grey levels the Bernoulli −log p(x|z) is the cross-entropy "
                     "with soft targets, the −log of no density; not comparable with published NLLs "
                     "(data.binarize=dynamic or static makes it −log p(x))")


# What test/bpd is (colour data only), by likelihood kind, and why it is not the literature's 8-bit bpd.
BPD = "test/nll / (C·H·W·ln 2): "
BPD_OF_DENSITY = "bits per dimension of the continuous density p(x) of recon_loss={kind}, x in data.pixel_range"
BPD_LESS_MSE_CONSTANT = ", less the constant ½·log2 π ≈ 0.83 bits per dimension that test/nll leaves out"
BPD_OF_BINARY = "bits per dimension of the binarised images under Bernoulli pixels (−log2 of a probability mass of {0, 1} values)"
BPD_OF_CROSS_ENTROPY = "the cross-entropy test/nll in bits per dimension, the −log2 of no density"
NOT_8_BIT = ("; not comparable with the literature's bits per dimension on 8-bit images (e.g. CIFAR-10), which are "
             "−log2 of a discrete probability of the 256 levels (a discretised likelihood, or a density of "
             "dequantised values on [0, 256])")
NOT_DISCRETISED = (": this likelihood is not discretised (a density of levels in [0, 1] reads 8 bits per dimension "
                   "lower than the same density on [0, 256], and can be negative)")


def nll_meaning(kind: str, binarize: str, channels: int = 1) -> dict[str, bool | str]:
    """eval.json's statement of what test/nll is, for likelihood `kind` on data with `data.binarize`:
    test/nll_is_likelihood (whether it is −log p(x) of a normalised distribution, density or mass,
    up to test/nll_constant; False: a cross-entropy) and test/nll_measures (one sentence); for colour
    data (`channels` > 1), also test/bpd_measures: what test/bpd (`bits_per_dim`) is."""
    if kind == "bce":
        binary = binarize != "none"  # static or dynamic: pixels in {0, 1}
        meaning = {"test/nll_is_likelihood": binary, "test/nll_measures": BERNOULLI_ON_BINARY if binary else BERNOULLI_ON_GREY}
        bpd = BPD + (BPD_OF_BINARY + NOT_8_BIT + ": these are two-level images" if binary
                     else BPD_OF_CROSS_ENTROPY + NOT_8_BIT)
    elif kind in DENSITIES:
        meaning = {"test/nll_is_likelihood": True, "test/nll_measures": DENSITIES[kind]}
        bpd = (BPD + BPD_OF_DENSITY.format(kind=kind) + (BPD_LESS_MSE_CONSTANT if kind == "mse" else "")
               + NOT_8_BIT + NOT_DISCRETISED)
    else:
        # A new likelihood must say what its nll is rather than borrow another's sentence.
        raise ValueError(f"no statement of what test/nll measures for recon_loss={kind!r}; add one to {__name__}")
    if channels > 1:
        meaning["test/bpd_measures"] = bpd
    return meaning


def bits_per_dim(nll: float, image_shape: tuple[int, ...]) -> float:
    """test/bpd: nll (nats per image) / (C·H·W · ln 2), in bits per dimension (per value of an image).

    The continuous density's bits per dimension for the likelihood in use (see `nll_meaning`), not
    the literature's discrete 8-bit bits per dimension unless the likelihood is discretised (none of
    vaelab's is): a density on [0, 1] reads 8 bits per dimension lower than on [0, 256].
    """
    return nll / (math.prod(image_shape) * math.log(2))


# log p(x|z) up to the constant: takes codes (K, B, latent_dim) and images (B, ...), returns (K, B).
LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Told (images done, images in all) after each batch of images.
Progress = Callable[[int, int], None]
# log p(z) − log q(z|x) from (z, ε, logvar), each (K, B, latent_dim); returns (K, B).
LogPriorRatio = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def importance_sampled_nll(
    x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, log_likelihood: LogLikelihood,
    k: int, max_codes: int = 50_000, log_prior_ratio: LogPriorRatio = log_prior_over_posterior,
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
        eps = torch.randn((n, *mu.shape), dtype=mu.dtype, device=mu.device)  # (n, B, latent_dim)
        z = mu + std * eps
        log_px_z = log_likelihood(z, x)  # (n, B)
        log_w = log_px_z + log_prior_ratio(z, eps, logvar)
        running_lse = torch.logaddexp(running_lse, torch.logsumexp(log_w, dim=0))
        sum_log_w += log_w.sum(dim=0)
        sum_log_px_z += log_px_z.sum(dim=0)
        done += n
    return {"nll": -(running_lse - math.log(k)), "nelbo": -sum_log_w / k, "recon": -sum_log_px_z / k}


@torch.no_grad()
def importance_sampled_sums(
    x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, log_likelihood: LogLikelihood,
    k: int, batch_size: int, max_codes: int = 50_000, progress: Progress | None = None,
    log_prior_ratio: LogPriorRatio = log_prior_over_posterior,
) -> dict[str, float]:
    """The sums over all images `x` of `importance_sampled_nll`'s nll, nelbo and recon (float64 on
    the host: a mean is one division), estimated `batch_size` images at a time.

    `progress(done, total)`, if given, is called after each batch, once its sums are on the host
    (where they are read anyway): it adds no wait on the device. None (the default): silent.
    """
    sums = {"nll": 0.0, "nelbo": 0.0, "recon": 0.0}
    total = len(x)
    for part in batches(total, batch_size):
        estimate = importance_sampled_nll(x[part], mu[part], logvar[part], log_likelihood, k, max_codes=max_codes,
                                          log_prior_ratio=log_prior_ratio)
        for key in sums:
            sums[key] += float(estimate[key].double().sum())
        if progress is not None:
            progress(part.stop, total)
    return sums


def model_log_likelihood(model) -> LogLikelihood:
    """log p(x|z) + constant of a model's decoder: −recon, exactly the training term per image."""
    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n, batch = z.shape[:2]
        logits = model.decode(z.reshape(n * batch, -1))
        targets = x.expand(n, *x.shape).reshape(logits.shape)
        return -model.likelihood.error(logits, targets).view(n, batch)

    return log_likelihood
