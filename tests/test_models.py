"""Shapes, the logvar clamp, the reparameterisation and the parameter count of the plain models."""

import math

import pytest
import torch

from vaelab.catalog import MODEL_TYPES, NETWORKS, ModelType
from vaelab.models import AE, VAE, Autoencoder, AutoencoderOutput, Codes, build_model, model_class
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kl_and_sampling_stay_finite_at_the_clamp_bounds(dtype):
    from vaelab.models import gaussian_kl

    for bound in (LOGVAR_MIN, LOGVAR_MAX):
        logvar = torch.full((2, 3), bound, dtype=dtype)
        mu = torch.zeros_like(logvar)
        assert torch.isfinite(gaussian_kl(mu, logvar))
        z = VAE.reparameterize(mu, logvar)
        assert torch.isfinite(z).all() and (torch.exp(0.5 * logvar) > 0).all()


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


# ---------------------------------------------------------------- build_model and the model types


@pytest.mark.parametrize("name, cls", [("ae", AE), ("vae", VAE)])
def test_build_model_builds_the_named_type_with_its_settings(name, cls):
    model = build_model(name, MNIST, (0.0, 1.0), latent_dim=2, hidden_dims=(8,), net="conv", beta=None)
    assert type(model) is cls and model.latent_dim == 2 and model.name == name
    assert build_model("vae", MNIST, beta=4).beta == 4.0


def test_only_the_vae_takes_beta():
    assert "beta" in MODEL_TYPES["vae"].settings and "beta" not in MODEL_TYPES["ae"].settings
    with pytest.raises(TypeError, match="beta"):
        build_model("ae", MNIST, beta=4)  # the config checks refuse this first (test_config.py)


def test_each_declared_model_type_is_its_class_and_each_network_builds():
    for name, declared in MODEL_TYPES.items():
        cls = model_class(name)
        assert (cls.name, cls.terms, cls.per_member) == (name, declared.terms, declared.per_member)
    for net in NETWORKS:  # 64×64 and the net's own widths: conv64 takes no other size (models/nets64.py)
        assert build_model("vae", (1, 64, 64), net=net, latent_dim=2).encoder is not None


def test_a_class_whose_constructor_differs_from_its_declaration_is_refused_when_defined():
    declared = ModelType("tiny", "nowhere:Tiny", settings=("latent_dim", "width"), terms=("recon", "loss"))
    with pytest.raises(TypeError, match=r"Tiny's constructor takes depth, latent_dim; its declaration "
                                        r"\(vaelab.catalog.MODEL_TYPES\['tiny'\]\) says latent_dim, width"):
        class Tiny(Autoencoder, declared=declared):
            def __init__(self, latent_dim: int = 2, pixel_range=(0.0, 1.0), depth: int = 1):
                super().__init__(latent_dim=latent_dim)


def test_the_posterior_is_stochastic_for_the_vae_only(images):
    vae, ae = _model(VAE, "mlp", 3), _model(AE, "mlp", 3)
    codes = vae.posterior(images)
    torch.testing.assert_close(codes.mu, vae.encode(images)[0])
    assert codes.logvar.shape == (BATCH, 3)
    assert ae.posterior(images).logvar is None


def test_a_vae_generates_from_its_prior_and_an_ae_from_a_gaussian_fitted_to_its_codes():
    g = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, -1.0, 0.3]])
    codes = torch.randn(4000, 3, generator=g) @ mixing.T + torch.tensor([5.0, -1.0, 0.0])
    fitted = _model(AE, "mlp", 3).code_distribution(Codes(codes))
    z = fitted.sample(20000, g)
    assert fitted.name == "fitted_gaussian"
    assert torch.allclose(z.mean(dim=0), codes.mean(dim=0), atol=0.05)
    assert torch.allclose(torch.cov(z.T), torch.cov(codes.T), atol=0.1)
    assert torch.allclose(fitted.std(), codes.std(dim=0), rtol=1e-4)  # a traversal's unit step
    prior = _model(VAE, "mlp", 3).code_distribution(Codes(codes, torch.zeros_like(codes)))
    z = prior.sample(20000, g)
    assert prior.name == "prior" and torch.allclose(torch.cov(z.T), torch.eye(3), atol=0.05)


def test_every_model_type_combines_its_parts_into_exactly_its_terms():
    parts = {"recon": torch.tensor(10.0), "kl": torch.tensor(2.0)}
    for name, declared in MODEL_TYPES.items():
        model = build_model(name, MNIST, latent_dim=2, hidden_dims=(8,))
        assert tuple(model.combine(parts)) == declared.terms and "loss" in declared.terms
    assert build_model("vae", MNIST, beta=3).combine(parts)["loss"] == 16.0  # 10 + 3·2


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


@pytest.mark.parametrize(("net", "parameters"), [("mlp", 784 * 400 + 400), ("conv", 32 * 9 + 32 + 64 * 32 * 9 + 64)])
def test_each_net_has_its_own_default_widths(net, parameters):
    """model.hidden_dims=null: [400] for the MLP, channels [32, 64] for the conv net (one 400-channel
    conv layer would give 78,400-wide heads)."""
    model = build_model("vae", MNIST, latent_dim=2, net=net, hidden_dims=None)
    assert sum(p.numel() for p in model.encoder.parameters()) == parameters
