"""The importance-sampled NLL against a model whose marginal likelihood is known in closed form.

A linear-Gaussian VAE: z ~ N(0, I_d), x | z ~ N(Wz + b, σ² I_D) with σ² = ½ (the variance that
vaelab's mse decoder stands for). Then p(x) = N(x; b, W Wᵀ + σ² I), and with orthogonal columns
of W the exact posterior is diagonal: q*(z|x) = N(2Σ Wᵀ(x − b), Σ), Σ = (I + 2 WᵀW)⁻¹.
"""

import math

import pytest
import torch

from vaelab.evaluation.nll import importance_sampled_nll, nll_meaning
from vaelab.models import Likelihood

D, LATENT, SIGMA2 = 12, 3, 0.5


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=torch.float64))
    scales = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    w, b = q * scales, torch.randn(D, generator=g, dtype=torch.float64) * 0.3
    z = torch.randn(200, LATENT, generator=g, dtype=torch.float64)
    x = z @ w.T + b + math.sqrt(SIGMA2) * torch.randn(200, D, generator=g, dtype=torch.float64)
    return w, b, x


def _log_likelihood(w, b):
    # log N(x; Wz + b, ½ I) = −‖x − (Wz + b)‖² − ½·D·log π: the mse recon plus vaelab's constant
    def log_likelihood(z, x):
        return -(x - (z @ w.T + b)).pow(2).sum(dim=-1) - Likelihood("mse").constant(D)

    return log_likelihood


def _exact_nll(w, b, x):
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + SIGMA2 * torch.eye(D, dtype=torch.float64))
    return -marginal.log_prob(x)


def _posterior(w, b, x):
    var = 1.0 / (1.0 + w.pow(2).sum(dim=0) / SIGMA2)  # diagonal because WᵀW is diagonal
    mu = ((x - b) @ w) / SIGMA2 * var
    return mu, var.log().expand_as(mu)


def test_mse_constant_is_the_gaussian_with_variance_one_half():
    x, mean = torch.rand(5, D, dtype=torch.float64), torch.rand(5, D, dtype=torch.float64)
    reference = torch.distributions.Normal(mean, math.sqrt(SIGMA2)).log_prob(x).sum(dim=1)
    assert torch.allclose(-(x - mean).pow(2).sum(dim=1) - Likelihood("mse").constant(D), reference)
    assert Likelihood("bce").constant(D) == 0.0


def test_exact_posterior_gives_the_exact_likelihood_with_one_sample():
    w, b, x = _model()
    mu, logvar = _posterior(w, b, x)
    # With q = p(z|x) every weight equals p(x): the estimate is exact for any k.
    estimate = importance_sampled_nll(x, mu, logvar, _log_likelihood(w, b), k=1)
    assert torch.allclose(estimate["nll"], _exact_nll(w, b, x), atol=1e-9)
    assert torch.allclose(estimate["nelbo"], estimate["nll"], atol=1e-9)


def test_importance_sampling_recovers_the_likelihood_from_a_poor_posterior():
    w, b, x = _model()
    mu, logvar = _posterior(w, b, x)
    mu, logvar = mu + 0.5, logvar + 0.7  # shifted and too wide: the ELBO is loose
    exact = _exact_nll(w, b, x)
    torch.manual_seed(0)
    one = importance_sampled_nll(x, mu, logvar, _log_likelihood(w, b), k=1)
    many = importance_sampled_nll(x, mu, logvar, _log_likelihood(w, b), k=1000, max_codes=7 * len(x))
    gap_one, gap_many = float((one["nll"] - exact).mean()), float((many["nll"] - exact).mean())
    # Tolerance 0.03 nats on the mean over 200 images of the k=1000 error, whose bias is about
    # Var(w)/(2k·E[w]²) and spread sqrt(Var(w)/(200k))/E[w]: over 10 seeds |error| ≤ 0.012 for
    # this q. k=1 is off by the KL of q from the true posterior (> 0.5 nats here).
    assert abs(gap_many) < 0.03
    assert gap_one > 0.5
    # Jensen: log of the mean weight ≥ mean of the log weights, image by image.
    assert (many["nll"] <= many["nelbo"] + 1e-9).all()
    assert float(many["nelbo"].mean()) > float(exact.mean()) + 0.5


def test_a_memory_bound_below_the_batch_still_draws_one_sample_per_pass():
    w, b, x = _model()
    mu, logvar = _posterior(w, b, x)
    torch.manual_seed(1)
    estimate = importance_sampled_nll(x, mu + 0.3, logvar, _log_likelihood(w, b), k=1000, max_codes=len(x) // 2)
    assert abs(float((estimate["nll"] - _exact_nll(w, b, x)).mean())) < 0.03


def test_k_must_be_positive():
    w, b, x = _model()
    mu, logvar = _posterior(w, b, x)
    with pytest.raises(ValueError, match="eval.k=0 must be at least 1"):
        importance_sampled_nll(x, mu, logvar, _log_likelihood(w, b), k=0)


def test_weights_keep_their_precision_when_the_posterior_is_much_narrower_than_its_mean():
    # float32, |μ| ≈ 10, σ = 1e-6: z = μ + σ·ε is stored to ulp(10) ≈ 1e-6, so z − μ keeps about
    # one digit of σ·ε. log q must come from ε itself; the float64 reference uses the same ε.
    batch, latent, k = 50, 20, 100
    g = torch.Generator().manual_seed(0)
    mu = 10 * (1 + 0.1 * torch.randn(batch, latent, generator=g)) * torch.randn(batch, latent, generator=g).sign()
    logvar = torch.full((batch, latent), 2 * math.log(1e-6))
    x = torch.zeros(batch, 1)
    zero_log_likelihood = lambda z, x: z.new_zeros(z.shape[:2])  # noqa: E731 - log p(x|z) = 0: w = p(z)/q(z|x)
    torch.manual_seed(3)
    estimate = importance_sampled_nll(x, mu, logvar, zero_log_likelihood, k=k)
    torch.manual_seed(3)  # the same ε as the estimate drew (one chunk: k·B ≤ max_codes)
    eps = torch.randn(k, batch, latent).double()
    mu64, logvar64 = mu.double(), logvar.double()
    z64 = mu64 + torch.exp(0.5 * logvar64) * eps
    log_w = -0.5 * (z64.pow(2) - ((z64 - mu64) / torch.exp(0.5 * logvar64)).pow(2) - logvar64).sum(dim=-1)
    reference = -(torch.logsumexp(log_w, dim=0) - math.log(k))
    # Measured: max |nll − reference| over the 50 images 2.2e-4 nats, 1.7e-4 for nelbo (|nll| ≈ 1.3e3:
    # float32's own rounding); with log q from (z − μ)²/σ², the formula before, 4.19 and 1.00 nats.
    assert (estimate["nll"].double() - reference).abs().max() < 1e-2
    assert (estimate["nelbo"].double() + log_w.mean(dim=0)).abs().max() < 1e-2


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_nll_is_a_likelihood_except_for_bce_on_grey_levels(binarize):
    for kind in ("mse", "gaussian", "cbernoulli"):
        meaning = nll_meaning(kind, binarize)
        assert meaning["test/nll_is_likelihood"] is True and meaning["test/nll_measures"].startswith("−log p(x) in nats")
    # Only mse leaves a constant out of nll; the densities with their own σ or normaliser are exact.
    assert "constant" in nll_meaning("mse", binarize)["test/nll_measures"]
    assert "no constant left out" in nll_meaning("cbernoulli", binarize)["test/nll_measures"]
    bce = nll_meaning("bce", binarize)
    assert bce["test/nll_is_likelihood"] is (binarize != "none")
    assert bce["test/nll_measures"].startswith("a cross-entropy" if binarize == "none" else "−log p(x) in nats")
    with pytest.raises(ValueError, match="recon_loss='laplace'"):
        nll_meaning("laplace", binarize)
