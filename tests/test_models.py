"""Shapes, the logvar clamp, the reparameterisation and the parameter count of the plain models."""

import math

import pytest
import torch

from vaelab.models import AE, VAE, AutoencoderOutput, build_model
from vaelab.models.autoencoders import LOGVAR_MAX, LOGVAR_MIN

MNIST = (1, 28, 28)
HIDDEN = {"mlp": [32], "conv": [8, 16]}
BATCH = 3


def _model(cls, net, latent_dim, image_shape=MNIST):
    torch.manual_seed(0)
    return cls(image_shape, latent_dim, HIDDEN[net], net)


@pytest.fixture
def images():
    return torch.rand(BATCH, *MNIST, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("latent_dim", [1, 2, 16])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_vae_shapes(net, latent_dim, images):
    vae = _model(VAE, net, latent_dim)
    mu, logvar = vae.encode(images)
    assert mu.shape == logvar.shape == (BATCH, latent_dim)
    assert vae.decode(mu).shape == (BATCH, *MNIST)
    out = vae(images)
    assert isinstance(out, AutoencoderOutput)
    assert out.logits.shape == (BATCH, *MNIST)
    assert out.z.shape == out.mu.shape == out.logvar.shape == (BATCH, latent_dim)
    samples = vae.sample(5)
    assert samples.shape == (5, *MNIST)
    assert samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("latent_dim", [1, 2, 16])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_ae_shapes(net, latent_dim, images):
    ae = _model(AE, net, latent_dim)
    z = ae.encode(images)
    assert z.shape == (BATCH, latent_dim)
    out = ae(images)
    assert out.logits.shape == (BATCH, *MNIST)
    torch.testing.assert_close(out.z, z)
    assert out.mu is None and out.logvar is None


@pytest.mark.parametrize("image_shape", [(1, 27, 20), (3, 32, 32), (2, 5, 9)])
@pytest.mark.parametrize("hidden_dims", [[8], [8, 16], [4, 8, 16]])
@pytest.mark.parametrize("cls", [AE, VAE])
def test_conv_decodes_odd_and_non_square_images_to_the_input_shape(cls, hidden_dims, image_shape):
    model = cls(image_shape, 4, hidden_dims, "conv")
    x = torch.rand(2, *image_shape)
    assert model(x).logits.shape == x.shape


# ---------------------------------------------------------------- logvar clamp


@pytest.mark.parametrize("bias, bound", [(1e4, LOGVAR_MAX), (-1e4, LOGVAR_MIN)])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_logvar_is_clamped(net, bias, bound, images):
    vae = _model(VAE, net, 4)
    with torch.no_grad():
        vae.fc_var.bias.fill_(bias)
    _, logvar = vae.encode(images)
    assert torch.all(logvar == bound)
    out = vae(images)
    assert torch.all(out.logvar == bound)
    assert torch.isfinite(out.z).all() and torch.isfinite(out.logits).all()


def test_logvar_clamp_bounds_are_ordered_and_finite():
    assert LOGVAR_MIN < 0 < LOGVAR_MAX
    assert math.isfinite(math.exp(LOGVAR_MAX)) and math.exp(0.5 * LOGVAR_MIN) > 0


# ---------------------------------------------------------------- reparameterize


def test_reparameterize_matches_mean_and_std():
    mu = torch.tensor([1.5, -2.0, 0.0, 0.3], dtype=torch.float64)
    logvar = torch.tensor([0.0, 1.0, -3.0, 2.0], dtype=torch.float64)
    n = 200_000
    torch.manual_seed(0)
    z = VAE.reparameterize(mu.expand(n, -1), logvar.expand(n, -1))
    std = torch.exp(0.5 * logvar)
    # Tolerance: 5 standard errors, σ/√n for the mean and ≈ σ/√(2n) for the std of a Gaussian.
    assert torch.all((z.mean(0) - mu).abs() < 5 * std / math.sqrt(n))
    assert torch.all((z.std(0) - std).abs() < 5 * std / math.sqrt(2 * n))


def test_reparameterize_passes_gradients_to_mu_and_logvar():
    mu = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    logvar = torch.tensor([[0.2, -0.4, 1.0]], requires_grad=True)
    torch.manual_seed(0)
    z = VAE.reparameterize(mu, logvar)
    z.sum().backward()
    # z = μ + ε·exp(½ logvar): dz/dμ = 1, dz/dlogvar = ½ ε σ = ½ (z − μ)
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(logvar.grad, 0.5 * (z - mu).detach())
    assert torch.all(logvar.grad != 0)


# ---------------------------------------------------------------- build_model


def test_build_model_rejects_unknown_model_listing_choices():
    with pytest.raises(ValueError, match="foo") as info:
        build_model("foo", MNIST, 2, [8])
    assert "ae" in str(info.value) and "vae" in str(info.value)


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_build_model_rejects_unknown_net_listing_choices(name):
    with pytest.raises(ValueError, match="resnet") as info:
        build_model(name, MNIST, 2, [8], net="resnet")
    assert "mlp" in str(info.value) and "conv" in str(info.value)


@pytest.mark.parametrize("name, cls", [("ae", AE), ("vae", VAE)])
def test_build_model_builds_the_named_class(name, cls):
    assert type(build_model(name, MNIST, 2, (8,), net="conv")) is cls


# ---------------------------------------------------------------- parameter count


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_mlp_vae_has_the_pytorch_examples_parameter_count():
    vae = VAE(MNIST, 20, [400], "mlp")
    assert _count(vae.encoder) == 784 * 400 + 400
    assert _count(vae.fc_mu) == _count(vae.fc_var) == 400 * 20 + 20
    assert _count(vae.decoder) == 20 * 400 + 400 + 400 * 784 + 784
    total = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert _count(vae) == total == 652_824
