"""The VampPrior (model.prior=vamp, models/priors.py) and the gated MLP (model.net=gated_mlp, models/gated.py)."""

import json
import math

import pytest
import torch

from conftest import needs_cuda, run_dirs, run_entry_point_in_process, small_run_overrides
from vaelab.evaluation.nll import importance_sampled_nll
from vaelab.models import VAE, gaussian_kl
from vaelab.models import priors
from vaelab.models.gated import GatedDense, GatedMLPEncoder
from vaelab.models.objectives import log_prior_over_posterior
from vaelab.models.priors import log_gaussian_mixture, log_standard_normal, mixture_moments

IMAGE = (1, 6, 6)
LATENT = 3


def _vamp(k: int = 4, **settings) -> VAE:
    return VAE(IMAGE, LATENT, [16], recon_loss="bce", prior="vamp", pseudo_inputs=k, **settings)


def _direct_mixture_log_density(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k Π_j N(z_j; μ_kj, σ_kj²), one component at a time with torch.distributions, in float64."""
    z, means, stds = z.double(), means.double(), torch.exp(0.5 * logvars.double())
    per_component = torch.stack([torch.distributions.Normal(means[k], stds[k]).log_prob(z).sum(-1)
                                 for k in range(len(means))])
    return torch.logsumexp(per_component, dim=0) - math.log(len(means))


def test_the_vampprior_is_the_mixture_of_the_pseudo_inputs_posteriors(monkeypatch):
    torch.manual_seed(0)
    model = _vamp(k=5)
    z = 1.5 * torch.randn(2, 7, LATENT)  # leading sample dimensions broadcast
    with torch.no_grad():
        means, logvars = model.encode(model.prior_inputs())
        expected = _direct_mixture_log_density(z, means, logvars)
        torch.testing.assert_close(model.log_prior(z).double(), expected, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(priors, "MIXTURE_CHUNK_ELEMENTS", 2 * len(means))  # two samples per chunk
        torch.testing.assert_close(model.log_prior(z).double(), expected, rtol=1e-5, atol=1e-5)


def test_pseudo_inputs_are_drawn_and_kept_in_the_pixel_range_as_the_paper_does():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 4, [8], prior="vamp", pseudo_inputs=500)
    weight = model.prior_inputs.weight
    assert weight.shape == (500, 1, 28, 28)
    assert float(weight.detach().mean()) == pytest.approx(0.05, abs=1e-3)
    assert float(weight.detach().std()) == pytest.approx(0.01, rel=0.02)
    with torch.no_grad():
        weight[0, 0, 0, :3] = torch.tensor([-0.5, 0.3, 1.7])
    assert model.prior_inputs()[0, 0, 0, :3].tolist() == pytest.approx([0.0, 0.3, 1.0])  # hardtanh(w, 0, 1)
    shifted = VAE((1, 28, 28), 4, [8], pixel_range=(-1.0, 1.0), prior="vamp", pseudo_inputs=2)
    with torch.no_grad():
        assert float(shifted.prior_inputs().min()) >= -1.0 and float(shifted.prior_inputs().max()) <= 1.0


def _one_standard_component() -> VAE:
    """K = 1 pseudo-input whose posterior is N(0, I) (the heads' biases cancel its features), while
    other images have posteriors of their own."""
    torch.manual_seed(1)
    model = _vamp(k=1)
    with torch.no_grad():
        features = model.encoder(model.prior_inputs())[0]
        model.fc_mu.bias.sub_(model.fc_mu(features))
        model.fc_var.bias.sub_(model.fc_var(features))
        means, logvars = model.prior_components()
    assert float(means.abs().max()) < 1e-5 and float(logvars.abs().max()) < 1e-5
    return model


def test_with_one_pseudo_input_whose_posterior_is_standard_normal_it_is_the_standard_prior():
    model = _one_standard_component()
    standard = VAE(IMAGE, LATENT, [16], recon_loss="bce", objective="iwae", k=4)
    standard.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("prior_inputs")})
    z, eps, logvar = torch.randn(6, 5, LATENT), torch.randn(6, 5, LATENT), torch.randn(6, 5, LATENT)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prior(z), log_standard_normal(z), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.log_prior_over_posterior(z, eps, logvar), log_prior_over_posterior(z, eps, logvar),
                                   rtol=1e-5, atol=1e-5)
        x = torch.rand(5, *IMAGE)
        mu, lv = model.encode(x)
        estimates = []
        for ratio in (model.log_prior_over_posterior, log_prior_over_posterior):
            torch.manual_seed(3)
            estimates.append(importance_sampled_nll(x, mu, lv, lambda z, x: -standard.likelihood.error(
                standard.decode(z.flatten(0, 1)), x.expand(len(z), *x.shape).flatten(0, 1)).view(len(z), -1),
                k=50, log_prior_ratio=ratio))
        for key in ("nll", "nelbo", "recon"):
            torch.testing.assert_close(estimates[0][key], estimates[1][key], rtol=1e-5, atol=1e-4)
        iwae = VAE(IMAGE, LATENT, [16], recon_loss="bce", objective="iwae", k=4, prior="vamp", pseudo_inputs=1)
        iwae.load_state_dict(model.state_dict())
        noise = torch.randn(4, 5, LATENT)
        torch.testing.assert_close(iwae.losses(x, noise)["loss"], standard.losses(x, noise)["loss"], rtol=1e-5, atol=1e-4)


def test_the_sampled_kl_averages_to_the_closed_form_kl_of_the_standard_prior():
    model = _one_standard_component()
    x = torch.rand(4, *IMAGE).repeat(5000, 1, 1, 1)  # 4 images, 5000 draws each
    with torch.no_grad():
        mu, logvar = model.encode(x[:4])
        sampled = [float(model.losses(x)["kl"]) for _ in range(2)]
    exact = float(gaussian_kl(mu, logvar))
    # the one-sample estimate has a standard error of ~ sqrt(Var / 20000) per mean: far below 0.05 nats here
    assert sampled == pytest.approx([exact, exact], abs=0.05)


def test_the_kls_parts_add_up_to_the_sampled_kl_with_a_vampprior():
    torch.manual_seed(0)
    model = _vamp(k=6).eval()
    model.use_train_size(1000)
    with torch.no_grad():
        terms = model.losses(torch.rand(32, *IMAGE))
    assert terms["mi"] + terms["tc"] + terms["dwkl"] == pytest.approx(float(terms["kl"]), abs=1e-4)
    assert float(terms["nelbo"]) == pytest.approx(float(terms["recon"] + terms["kl"]), rel=1e-6)


def test_prior_samples_come_from_the_mixture_and_its_moments_are_the_mixtures():
    means = torch.tensor([[-4.0, 0.0], [4.0, 1.0]])
    logvars = torch.log(torch.tensor([[0.25, 1.0], [1.0, 0.04]]))
    mean, cov = mixture_moments(means, logvars)
    assert mean.tolist() == pytest.approx([0.0, 0.5])
    # Var = E[σ²] + Var(μ): 0.625 + 16 on the first axis, 0.52 + 0.25 on the second; Cov = E[μ1 μ2] − 0 = 2
    torch.testing.assert_close(cov, torch.tensor([[16.625, 2.0], [2.0, 0.77]]))
    torch.manual_seed(0)
    model = VAE((1, 4, 4), 2, [8], prior="vamp", pseudo_inputs=2)
    model.prior_components = lambda: (means, logvars)  # the components, as if the encoder gave them
    distribution = model.prior_distribution()
    z = distribution.sample(40_000, torch.Generator().manual_seed(0))
    assert ((z[:, 0] < 0).float().mean()) == pytest.approx(0.5, abs=0.01)  # each component half the time
    left = z[z[:, 0] < 0]
    assert float(left[:, 0].std()) == pytest.approx(0.5, rel=0.03) and float(left[:, 1].std()) == pytest.approx(1.0, rel=0.03)
    torch.testing.assert_close(distribution.std(), cov.diagonal().sqrt(), rtol=1e-4, atol=1e-4)
    assert log_gaussian_mixture(z[:5], means, logvars).shape == (5,)


def test_a_gated_dense_layer_is_the_papers_and_the_gated_net_clips_the_log_variance():
    torch.manual_seed(0)
    layer = GatedDense(300, 200)
    x = torch.randn(4, 300)
    expected = (x @ layer.h.weight.T + layer.h.bias) * torch.sigmoid(x @ layer.g.weight.T + layer.g.bias)
    torch.testing.assert_close(layer(x), expected)
    assert float(layer.h.weight.detach().std()) == pytest.approx(math.sqrt(2 / 300), rel=0.02)  # he_init: N(0, 2 / fan_in)
    model = VAE((1, 28, 28), 40, None, net="gated_mlp", recon_loss="bce")
    assert isinstance(model.encoder, GatedMLPEncoder) and model.encoder.out_features == 300
    assert float(model.fc_var.weight.detach().std()) == pytest.approx(math.sqrt(2 / 300), rel=0.05)  # the heads too
    with torch.no_grad():
        model.fc_var.bias.fill_(50.0)
        _, logvar = model.encode(torch.rand(2, 1, 28, 28))
        assert float(logvar.max()) == 2.0
        model.fc_var.bias.fill_(-50.0)
        assert float(model.encode(torch.rand(2, 1, 28, 28))[1].min()) == -6.0
    n_weights = sum(p.numel() for p in model.parameters())
    # 2 gated layers 784-300-300, heads 300→40 ×2; decoder gated 40-300-300, linear 300→784
    assert n_weights == 2 * (785 * 300 + 301 * 300) + 2 * 301 * 40 + 2 * (41 * 300 + 301 * 300) + 301 * 784


def test_vamp_refuses_free_bits_in_the_model_and_the_config():
    from test_config import _checked

    from vaelab.errors import ConfigError

    with pytest.raises(ValueError, match="prior=vamp"):
        _vamp(free_bits=0.5)
    with pytest.raises(ConfigError, match="model.free_bits=0.5 must be 0 with model.prior=vamp"):
        _checked("model.prior=vamp", "model.free_bits=0.5")
    with pytest.raises(ConfigError, match="model.pseudo_inputs=10 must be null with model.prior=standard"):
        _checked("model.pseudo_inputs=10")
    with pytest.raises(ConfigError, match="model.prior=gaussian"):
        _checked("model.prior=gaussian")
    _checked("model.prior=vamp", "model.pseudo_inputs=10", "model.net=gated_mlp", "model.objective=iwae", "model.k=5")


def test_train_and_eval_a_vampprior_gated_vae(shared_data_dir, tmp_path):
    """train.py, then eval.py: the NLL, the KL estimated from the same samples, prior samples and completeness."""
    log_dir = tmp_path / "outputs"
    overrides = [o for o in small_run_overrides(shared_data_dir, log_dir) if not o.startswith("model.hidden_dims")]
    code = run_entry_point_in_process(*overrides, "trainer.max_epochs=1", "model.net=gated_mlp", "model.hidden_dims=[32,32]",
                                      "model.prior=vamp", "model.pseudo_inputs=20", "model.recon_loss=bce",
                                      "data.binarize=dynamic", "logger=csv", "callbacks.latent_panels.every_n_epochs=1")
    assert code == 0
    (run_dir,) = run_dirs(log_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/nelbo"] == pytest.approx(metrics["test/recon"] + metrics["test/kl"], rel=1e-5)
    assert metrics["test/mi"] + metrics["test/tc"] + metrics["test/dwkl"] == pytest.approx(metrics["test/kl"], abs=0.05)
    assert list(run_dir.glob("images/prior_samples_epoch*.png"))
    code = run_entry_point_in_process(f"ckpt_path={metrics['best_checkpoint']}", f"paths.log_dir={log_dir}", "eval.k=20",
                                      "eval.n_samples=100", f"eval.classifier_dir={tmp_path / 'classifiers'}",
                                      script="eval.py")
    assert code == 0
    (record_file,) = log_dir.glob("evals/*/*/eval.json")
    record = json.loads(record_file.read_text())
    assert record["test/nll"] <= record["test/nelbo_same_samples"]
    # no closed form: the KL is that of the k samples per image, recon + kl their nelbo
    assert record["test/kl"] == pytest.approx(record["test/nelbo_same_samples"] - record["test/recon"], rel=1e-9)
    assert record["test/kl"] == pytest.approx(metrics["test/kl"], rel=0.1)
    assert "test/kl_per_dim" not in record
    assert 0 < record["completeness/prior_confidence"] <= 1
    assert "prior_samples" in record["panels"] and "kl_per_dim" not in record["panels"]


@needs_cuda
def test_a_vampprior_step_replayed_as_a_cuda_graph_equals_the_eager_step():
    """The prior's components are encoded inside the step: the graph replays them with the new pseudo-inputs."""
    from test_tcvae import assert_graphed_steps_equal_eager

    torch.manual_seed(0)
    graphed = VAE((1, 28, 28), 8, None, net="gated_mlp", recon_loss="bce", prior="vamp", pseudo_inputs=50,
                  kl_schedule="linear", kl_period=3, kl_period_unit="step").cuda()
    assert_graphed_steps_equal_eager(graphed, [torch.rand(64, 1, 28, 28, device="cuda").bernoulli() for _ in range(5)])
