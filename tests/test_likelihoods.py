"""The gaussian (σ-VAE) and continuous Bernoulli decoder likelihoods against closed forms,
torch.distributions and numerical quadrature."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from vaelab.models import AE, VAE, Likelihood
from vaelab.models.losses import (LOG_SIGMA_MIN, cbernoulli_log_normalizer, cbernoulli_mean, cbernoulli_nll,
                                  reconstruction_error)

CB_LOGITS = [0.0, 1e-4, -1e-4, 0.05, -0.05, 3.0, -3.0, 15.0, -15.0]


def _soft_clip(log_sigma):
    """The σ-VAE's soft clip, written out: min + log(1 + exp(log σ − min))."""
    return LOG_SIGMA_MIN + torch.log1p(torch.exp(log_sigma - LOG_SIGMA_MIN))


def _batch(seed=0, shape=(3, 1, 4, 5), low=0.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    x = low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)
    return logits, x


def _quadrature(n=200):
    """Gauss–Legendre nodes and weights on [0, 1] (float64)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)


# ---------------------------------------------------------------- gaussian, learned σ


@pytest.mark.parametrize("pixel_range", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("log_sigma", [0.0, -1.3, -3.0])
def test_gaussian_learned_error_is_the_normal_negative_log_density(pixel_range, log_sigma):
    likelihood = Likelihood("gaussian", pixel_range, sigma="learned").double()
    with torch.no_grad():
        likelihood.log_sigma.fill_(log_sigma)
    low, high = pixel_range
    logits, x = _batch(low=low, high=high)
    # in the data's units: the decoded image low + scale·sigmoid, σ scaled by the same factor
    scale = high - low
    sigma = scale * torch.exp(_soft_clip(torch.tensor(log_sigma, dtype=torch.float64)))
    expected = -Normal(low + scale * torch.sigmoid(logits), sigma).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(likelihood.error(logits, x), expected, rtol=1e-12, atol=1e-10)
    assert likelihood.constant(x[0].numel()) == 0.0
    assert likelihood.is_density


def test_gaussian_learned_sigma_is_a_trained_saved_parameter():
    likelihood = Likelihood("gaussian", sigma="learned")
    assert list(likelihood.state_dict()) == ["log_sigma"]
    assert likelihood.log_sigma.item() == 0.0 and likelihood.log_sigma.shape == ()
    logits, x = _batch()
    likelihood.error(logits.float(), x.float()).mean().backward()
    assert likelihood.log_sigma.grad is not None and likelihood.log_sigma.grad.item() != 0.0
    # a submodule of the model: trained with it, saved in its state_dict, moved with it
    model = VAE(image_shape=(1, 4, 5), latent_dim=2, hidden_dims=(8,), recon_loss="gaussian")
    assert "likelihood.log_sigma" in dict(model.named_parameters())
    assert "likelihood.log_sigma" in model.state_dict()
    assert model.double().likelihood.log_sigma.dtype == torch.float64


@pytest.mark.parametrize("kind", ["mse", "bce", "cbernoulli"])
def test_other_likelihoods_hold_no_parameters_or_buffers(kind):
    likelihood = Likelihood(kind)
    assert likelihood.state_dict() == {} and list(likelihood.parameters()) == [] and list(likelihood.buffers()) == []
    for cls in (AE, VAE):
        model = cls(image_shape=(1, 4, 5), latent_dim=2, hidden_dims=(8,), recon_loss=kind)
        assert not [k for k in model.state_dict() if k.startswith("likelihood")]
    assert list(Likelihood("gaussian", sigma="optimal").state_dict()) == []


# ---------------------------------------------------------------- gaussian, optimal σ


@pytest.mark.parametrize("pixel_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_gaussian_optimal_sigma_is_the_root_mean_squared_error_per_image(pixel_range):
    likelihood = Likelihood("gaussian", pixel_range, sigma="optimal")
    low, high = pixel_range
    logits, x = _batch(seed=1, low=low, high=high)
    unit, mean = (x - low) / (high - low), torch.sigmoid(logits)
    rms = (unit - mean).pow(2).flatten(1).mean(1).sqrt()  # σ* = sqrt(‖x − x̂‖²/D), in [0, 1] units
    torch.testing.assert_close(likelihood.log_std(logits, x), _soft_clip(rms.log()), rtol=1e-12, atol=1e-12)
    scale = high - low
    sigma = scale * torch.exp(_soft_clip(rms.log()))
    expected = -Normal(low + scale * mean, sigma[:, None, None, None]).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(likelihood.error(logits, x), expected, rtol=1e-12, atol=1e-10)


def test_the_optimal_sigma_minimises_the_gaussian_negative_log_density():
    logits, x = _batch(seed=2)
    mean = torch.sigmoid(logits)
    rms = (x - mean).pow(2).flatten(1).mean(1).sqrt()
    grid = torch.exp(torch.linspace(-4, 1, 2001, dtype=torch.float64))  # σ values
    nll = -Normal(mean[None], grid[:, None, None, None, None]).log_prob(x[None]).flatten(2).sum(2)  # (grid, B)
    at_optimum = -Normal(mean, rms[:, None, None, None]).log_prob(x).flatten(1).sum(1)
    assert (nll >= at_optimum - 1e-9).all()
    best = grid[nll.argmin(dim=0)]
    torch.testing.assert_close(best, rms, rtol=3e-3, atol=0)  # the grid's spacing is 0.25 %
    # unclipped, ‖x − x̂‖²/(2σ*²) = D/2
    D = x[0].numel()
    torch.testing.assert_close(at_optimum, D / 2 + D / 2 * torch.log(2 * math.pi * rms**2))


# ---------------------------------------------------------------- soft clip


@pytest.mark.parametrize("sigma", ["learned", "optimal"])
def test_a_perfect_reconstruction_gives_a_finite_loss_and_gradient(sigma):
    likelihood = Likelihood("gaussian", sigma=sigma)
    if sigma == "learned":
        with torch.no_grad():
            likelihood.log_sigma.fill_(-50.0)  # far below the bound
    logits = torch.randn(2, 1, 4, 5, requires_grad=True)
    x = torch.sigmoid(logits).detach()
    error = likelihood.error(logits, x)
    assert torch.isfinite(error).all()
    D = x[0].numel()
    torch.testing.assert_close(error, torch.full((2,), D * (LOG_SIGMA_MIN + 0.5 * math.log(2 * math.pi))), rtol=1e-5, atol=1e-4)
    error.sum().backward()
    assert torch.isfinite(logits.grad).all()
    if sigma == "learned":
        assert torch.isfinite(likelihood.log_sigma.grad)


# ---------------------------------------------------------------- continuous Bernoulli


@pytest.mark.parametrize("logit", CB_LOGITS)
def test_the_continuous_bernoulli_density_integrates_to_one(logit):
    nodes, weights = _quadrature()
    logits = torch.full_like(nodes, logit)
    density = torch.exp(-cbernoulli_nll(logits, nodes))
    assert float((weights * density).sum()) == pytest.approx(1.0, abs=1e-12)
    # through Likelihood, one-pixel images in [-1, 1]: the density in the data's units integrates to 1 there
    likelihood = Likelihood("cbernoulli", (-1.0, 1.0))
    x = (2 * nodes - 1).view(-1, 1, 1, 1)
    density = torch.exp(-likelihood.error(logits.view(-1, 1, 1, 1), x))
    assert float((2 * weights * density).sum()) == pytest.approx(1.0, abs=1e-12)
    assert likelihood.constant(1) == 0.0 and likelihood.is_density


@pytest.mark.parametrize("logit", CB_LOGITS + [0.39, 0.41, 0.029, 0.031, -0.5, 1.4, 1.6, -40.0, 100.0])
def test_the_log_normalizer_matches_a_float64_direct_computation(logit):
    direct = math.log(2) if logit == 0 else math.log(abs(logit) / math.tanh(abs(logit) / 2))
    for dtype, rtol in ((torch.float32, 1e-6), (torch.float64, 1e-13)):
        value = cbernoulli_log_normalizer(torch.tensor([logit], dtype=dtype))
        assert value.dtype == dtype
        assert float(value) == pytest.approx(direct, rel=rtol, abs=0)
    # the series used near 0: log(2y / tanh y) = log 2 + y²/3 − 7y⁴/90 + 62y⁶/2835 + O(y⁸), y = l/2
    y = logit / 2
    if 0 < abs(logit) < 0.1:
        series = math.log(2) + y**2 / 3 - 7 * y**4 / 90 + 62 * y**6 / 2835
        assert series == pytest.approx(direct, rel=1e-14, abs=0)
    assert cbernoulli_log_normalizer(torch.tensor(0.0, dtype=torch.float64)).item() == math.log(2)


@pytest.mark.parametrize("logit", CB_LOGITS + [0.29, 0.31, 1.49, 1.51, -1.51, 50.0, -50.0, -200.0])
def test_means_is_the_continuous_bernoulli_mean(logit):
    nodes, weights = _quadrature()
    logits = torch.full_like(nodes, logit)
    integrated = float((weights * nodes * torch.exp(-cbernoulli_nll(logits, nodes))).sum())
    likelihood = Likelihood("cbernoulli")
    for dtype, tol in ((torch.float32, 3e-7), (torch.float64, 1e-13)):
        mean = likelihood.means(torch.tensor([logit], dtype=dtype))
        assert mean.dtype == dtype
        if abs(logit) <= 15:  # quadrature resolves the density
            assert float(mean) == pytest.approx(integrated, abs=tol)
        expected = 0.5 if logit == 0 else 1 / (-math.expm1(-logit)) - 1 / logit  # float64 closed form
        assert float(mean) == pytest.approx(expected, abs=max(tol, 1e-13 / max(abs(logit), 1e-3)))
    # far out on the negative side the mean is ≈ 1/|l|, to float32's relative precision
    far = likelihood.means(torch.tensor([-1e4, -200.0]))
    torch.testing.assert_close(far, torch.tensor([1e-4, 1 / 200 + 0.0]), rtol=2e-7, atol=0)
    # the other likelihoods' means are sigmoid(logits)
    assert Likelihood("mse").means(torch.tensor(0.3)).item() == pytest.approx(torch.sigmoid(torch.tensor(0.3)).item())


def test_gradients_are_finite_at_zero_logits():
    for dtype in (torch.float32, torch.float64):
        logits = torch.zeros(4, dtype=dtype, requires_grad=True)
        x = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=dtype)
        (grad_log_c,) = torch.autograd.grad(cbernoulli_log_normalizer(logits).sum(), logits)
        assert (grad_log_c == 0).all()  # log C is even: its slope at 0 is 0
        (grad_nll,) = torch.autograd.grad(cbernoulli_nll(logits, x).sum(), logits)
        torch.testing.assert_close(grad_nll, 0.5 - x)  # σ(0) − x − 0
        (grad_mean,) = torch.autograd.grad(cbernoulli_mean(logits).sum(), logits)
        torch.testing.assert_close(grad_mean, torch.full_like(logits, 1 / 12))


# near 0, both sides of the series thresholds (float64: 0.03 for log C, 0.3 for the mean;
# float32: 0.4 and 1.5), and far out
GRAD_LOGITS = [0.0, 1e-4, -1e-4, 0.02, 0.029, 0.031, 0.05, 0.29, 0.31, 0.39, 0.41, 1.49, 1.51, -3.0, 15.0, -60.0]


def test_gradients_match_finite_differences_in_float64():
    logits = torch.tensor(GRAD_LOGITS, dtype=torch.float64, requires_grad=True)
    x = torch.linspace(0, 1, len(GRAD_LOGITS), dtype=torch.float64)
    assert torch.autograd.gradcheck(cbernoulli_log_normalizer, (logits,))
    assert torch.autograd.gradcheck(cbernoulli_mean, (logits,))
    assert torch.autograd.gradcheck(lambda l: cbernoulli_nll(l, x), (logits,))


def test_float32_gradients_match_the_closed_form_derivative():
    # d log C / dl = 1/l − 1/sinh(l), and dE[x]/dl = e^(−l)/(1 − e^(−l))² ... in float64 closed forms
    for logit in GRAD_LOGITS[1:]:
        l32 = torch.tensor(logit, dtype=torch.float32, requires_grad=True)
        (g,) = torch.autograd.grad(cbernoulli_log_normalizer(l32), l32)
        l = float(l32.detach())
        expected = 1 / l - 1 / math.sinh(l)
        assert float(g) == pytest.approx(expected, rel=2e-5, abs=1e-9)
        (gm,) = torch.autograd.grad(cbernoulli_mean(l32), l32)
        expected_mean = 1 / l**2 - 1 / (4 * math.sinh(l / 2) ** 2)
        assert float(gm) == pytest.approx(expected_mean, rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------- construction


def test_unknown_kinds_and_sigmas_are_refused():
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        Likelihood("laplace")
    with pytest.raises(ValueError, match="unknown gaussian sigma"):
        Likelihood("gaussian", sigma="fixed")
    with pytest.raises(ValueError, match="needs its σ"):
        reconstruction_error(torch.zeros(1, 2), torch.zeros(1, 2), "gaussian")
    assert not Likelihood("mse").is_density and not Likelihood("bce").is_density
    assert Likelihood("mse").sigma is None  # σ only means something for gaussian
