"""Loss terms against closed forms and hand-computed values, and how the LightningModule combines them."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vaelab.models import AE, VAE, Likelihood, gaussian_kl, reconstruction_loss
from vaelab.models.losses import BernoulliNLL, bernoulli_nll


def _random_posterior(batch=5, dims=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, dims, generator=g, dtype=torch.float64)
    logvar = torch.randn(batch, dims, generator=g, dtype=torch.float64)
    return mu, logvar


# ---------------------------------------------------------------- gaussian_kl


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = _random_posterior()
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected, rtol=1e-12, atol=1e-12)


def test_gaussian_kl_matches_monte_carlo_estimate():
    mu, logvar = _random_posterior(batch=4, dims=3, seed=1)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)
    torch.manual_seed(0)
    z = q.sample((200_000,))  # (S, B, D)
    # One unbiased estimate of the batch-mean KL per sample s: mean_b Σ_d [log q(z) − log p(z)].
    per_sample = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(-1)
    estimate = per_sample.mean()
    std_error = per_sample.std() / math.sqrt(per_sample.numel())
    # Tolerance: 5 Monte-Carlo standard errors (a chance miss of ~6e-7 for a correct KL; the
    # seed is fixed anyway). A wrong sign or a missing term is off by many more.
    assert abs(gaussian_kl(mu, logvar) - estimate) < 5 * std_error
    assert std_error < 0.02  # the check is sharp enough to mean something


def test_gaussian_kl_is_exactly_zero_at_the_prior():
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_gaussian_kl_sums_over_latent_dims_and_averages_over_batch():
    mu = torch.ones(2, 3, dtype=torch.float64)  # each dim: ½ μ² = 0.5 with σ = 1
    mu_wide = torch.ones(2, 6, dtype=torch.float64)
    mu_long = torch.ones(4, 3, dtype=torch.float64)
    assert gaussian_kl(mu, torch.zeros_like(mu)).item() == pytest.approx(1.5)
    assert gaussian_kl(mu_wide, torch.zeros_like(mu_wide)).item() == pytest.approx(3.0)
    assert gaussian_kl(mu_long, torch.zeros_like(mu_long)).item() == pytest.approx(1.5)


# ---------------------------------------------------------------- reconstruction_loss


LOGITS = torch.tensor(
    [[[[0.3, -1.2, 2.0], [0.0, 4.0, -0.7]]], [[[-2.5, 0.8, 1.1], [-0.1, 0.05, 3.0]]]], dtype=torch.float64
)  # (2, 1, 2, 3)
TARGETS = torch.tensor(
    [[[[0.0, 1.0, 0.5], [0.25, 1.0, 0.0]]], [[[0.9, 0.0, 1.0], [0.3, 0.6, 0.75]]]], dtype=torch.float64
)  # grey levels included: soft targets


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _hand_loss(per_pixel) -> float:
    """Sum per_pixel(logit, x) over each image's pixels, then average over the batch."""
    totals = []
    for b in range(LOGITS.shape[0]):
        total = 0.0
        for c in range(LOGITS.shape[1]):
            for h in range(LOGITS.shape[2]):
                for w in range(LOGITS.shape[3]):
                    total += per_pixel(LOGITS[b, c, h, w].item(), TARGETS[b, c, h, w].item())
        totals.append(total)
    return sum(totals) / len(totals)


def test_mse_is_per_image_sum_then_batch_mean():
    expected = _hand_loss(lambda logit, x: (_sigmoid(logit) - x) ** 2)
    assert reconstruction_loss(LOGITS, TARGETS, "mse").item() == pytest.approx(expected, rel=1e-12)


def test_bce_is_bernoulli_nll_in_nats_with_soft_targets():
    def nll(logit, x):
        p = _sigmoid(logit)
        return -(x * math.log(p) + (1 - x) * math.log(1 - p))

    expected = _hand_loss(nll)
    assert reconstruction_loss(LOGITS, TARGETS, "bce").item() == pytest.approx(expected, rel=1e-12)


def test_cpu_bernoulli_nll_equals_torchs_bce_with_logits_in_value_and_gradient():
    # Logits from saturated to tiny, where softplus' two branches and the rounding of 1 + e differ.
    logits = torch.tensor([-100.0, -30.0, -17.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 17.0, 30.0, 100.0]).repeat(3, 1)
    targets = torch.tensor([0.0, 0.5, 1.0]).unsqueeze(1).expand_as(logits)
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value = BernoulliNLL.apply(ours, targets)
    reference = F.binary_cross_entropy_with_logits(theirs, targets, reduction="none")
    torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-6)
    value.sum().backward()
    reference.sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=1e-7)


def test_cpu_bernoulli_nll_gradient_is_the_analytic_one_for_logits_and_targets():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 9, generator=g, dtype=torch.float64) * 10).requires_grad_()
    targets = torch.rand(6, 9, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(BernoulliNLL.apply, (logits, targets))


def test_cpu_bernoulli_nll_is_computed_in_float32_under_bf16_autocast():
    logits = torch.linspace(-8, 8, 40)
    targets = torch.rand(40, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = bernoulli_nll(logits.bfloat16(), targets)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, F.binary_cross_entropy_with_logits(logits.bfloat16().float(), targets, reduction="none"))


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_doubling_the_pixels_doubles_the_loss(kind):
    single = reconstruction_loss(LOGITS, TARGETS, kind)
    double = reconstruction_loss(torch.cat([LOGITS, LOGITS], dim=-1), torch.cat([TARGETS, TARGETS], dim=-1), kind)
    torch.testing.assert_close(double, 2 * single)


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_doubling_the_batch_leaves_the_loss_unchanged(kind):
    single = reconstruction_loss(LOGITS, TARGETS, kind)
    double = reconstruction_loss(torch.cat([LOGITS, LOGITS]), torch.cat([TARGETS, TARGETS]), kind)
    torch.testing.assert_close(double, single)


def test_unknown_reconstruction_loss_lists_the_choices():
    with pytest.raises(ValueError, match="mse") as info:
        reconstruction_loss(LOGITS, TARGETS, "l1")
    assert "bce" in str(info.value)


# ---------------------------------------------------------------- the model types' losses


def _model(cls, **kwargs):
    torch.manual_seed(0)
    return cls(latent_dim=4, hidden_dims=(32,), **kwargs)


def _images(low=0.0, high=1.0, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 1, 28, 28, generator=g)


@pytest.mark.parametrize("beta", [0.0, 0.5, 4.0])
def test_vae_loss_is_recon_plus_beta_kl_and_nelbo_is_recon_plus_kl(beta):
    vae, x = _model(VAE, beta=beta), _images()
    torch.manual_seed(123)
    losses = vae.losses(x)
    torch.manual_seed(123)  # the same reparameterised sample
    out = vae(x)
    recon = reconstruction_loss(out.logits, x, "mse")
    kl = gaussian_kl(out.mu, out.logvar)
    assert list(losses) == list(VAE.terms) == ["recon", "kl", "loss", "nelbo"]
    torch.testing.assert_close(losses["recon"], recon)
    torch.testing.assert_close(losses["kl"], kl)
    torch.testing.assert_close(losses["loss"], recon + beta * kl)
    torch.testing.assert_close(losses["nelbo"], recon + kl)
    assert kl.item() > 0  # otherwise beta would not be tested


def test_ae_losses_are_recon_only():
    ae, x = _model(AE), _images()
    losses = ae.losses(x)
    assert list(losses) == list(AE.terms) == ["recon", "loss"]
    torch.testing.assert_close(losses["recon"], reconstruction_loss(ae(x).logits, x, "mse"))
    torch.testing.assert_close(losses["loss"], losses["recon"])


def test_metric_names_follow_the_terms_of_each_model_type():
    assert AE.metric_names(["val"]) == ["val/recon", "val/loss"]
    # val and test also log the KL's parts (mi, tc, dwkl: models/decomposition.py), train does not.
    assert VAE.metric_names() == [f"{s}/{t}" for s in ("train", "val", "test") for t in ("recon", "kl", "loss", "nelbo")
                                  + (("mi", "tc", "dwkl") if s != "train" else ())]


def test_mse_in_minus_one_to_one_is_four_times_the_unit_range_mse():
    ae, x = _model(AE, pixel_range=(-1, 1)), _images(-1.0, 1.0)
    recon = ae.losses(x)["recon"]
    logits = ae(x).logits  # the AE is deterministic: the same logits
    unit = reconstruction_loss(logits, (x + 1) / 2, "mse")
    torch.testing.assert_close(recon, 4 * unit)
    # the same number in the data's own units: the decoder's image is 2·sigmoid − 1
    data_units = (2 * torch.sigmoid(logits) - 1 - x).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(recon, data_units)


def test_likelihood_maps_the_pixel_range_to_the_unit_interval_and_back():
    likelihood = Likelihood("mse", (-1.0, 1.0))
    x = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(likelihood.to_unit(x), torch.tensor([0.0, 0.5, 1.0]))
    identity = Likelihood("bce")
    assert identity.to_unit(x) is x  # [0, 1] data are not copied


def test_cpu_bernoulli_nll_runs_under_vmap_with_the_values_and_gradients_of_each_slice():
    """A stack of models (models/stack.py) runs the likelihood under torch.func.vmap."""
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 5, 7, generator=g) * 4, torch.rand(3, 5, 7, generator=g)

    def total(l, x):
        return BernoulliNLL.apply(l, x).sum()

    values = torch.func.vmap(lambda l, x: BernoulliNLL.apply(l, x))(logits, targets)
    grads = torch.func.vmap(torch.func.grad(total))(logits, targets)
    for n in range(3):
        torch.testing.assert_close(values[n], BernoulliNLL.apply(logits[n], targets[n]), rtol=0, atol=0)
        torch.testing.assert_close(grads[n], torch.sigmoid(logits[n]) - targets[n])
