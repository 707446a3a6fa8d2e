"""The KL's parts (models/decomposition.py) and the β-TCVAE objective (model.objective=tcvae).

The estimator is checked on Gaussians whose parts are known: q(z|x) = N(x, s²·I) around points x
drawn from N(0, Σ). Two regimes:
- a data set far larger than the batch (N = 10⁹, the continuous limit): q(z) = N(0, Σ + s²·I), so
  TC = ½(Σ_j log Σ'_jj − log det Σ'), MI = ½(log det Σ' − D·log s²), dwKL = Σ_j ½(Σ'_jj − 1 − log Σ'_jj);
- a finite data set of N = 5000 points (what a VAE's training set is): the exact parts from the
  whole data set (every log q(z) a sum over all N posteriors), against the paper's minibatch
  stratified sampling, the reference code's "column" weights (rtqichen/beta-tcvae, open PR #1)
  and minibatch weighted sampling (MWS).
"""

import math

import pytest
import torch

from conftest import needs_cuda
from vaelab.models import VAE
from vaelab.models.decomposition import decompose, kl_decomposition, log_posterior_matrix, mss_log_weights

PARTS = ("mi", "tc", "dwkl")


def column_log_weights(batch_size: int, n: int) -> torch.Tensor:
    """The reference code's matrix, written here to show what it does: it means the paper's, but strides by
    M = batch_size − 1 where the diagonal needs batch_size + 1, so 1/N fills column 0 and the stratum weight column 1."""
    m = batch_size - 1
    strat = (n - m) / (n * m)
    w = torch.full((batch_size, batch_size), 1 / m, dtype=torch.float64)
    w.view(-1)[::m + 1] = 1 / n
    w.view(-1)[1::m + 1] = strat
    w[m - 1, 0] = strat
    return w.log()


def mws_log_weights(batch_size: int, n: int) -> torch.Tensor:
    """Minibatch weighted sampling (the paper's eq. in Appendix C.1): every entry 1/(N·M)."""
    return torch.full((batch_size, batch_size), -math.log(batch_size * n), dtype=torch.float64)


def _equicorrelated(d: int, rho: float) -> torch.Tensor:
    return (1 - rho) * torch.eye(d, dtype=torch.float64) + rho * torch.ones(d, d, dtype=torch.float64)


def _batch(x: torch.Tensor, s2: float, generator: torch.Generator):
    """z = x + s·ε: the sample, its noise, and q(z|x)'s mean and log-variance."""
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    logvar = torch.full_like(x, math.log(s2))
    return x + math.sqrt(s2) * eps, eps, x, logvar


def _mean_estimates(draw_x, s2: float, batch_size: int, log_weights: torch.Tensor, reps: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    runs = [decompose(*_batch(draw_x(batch_size, generator), s2, generator), log_weights) for _ in range(reps)]
    return {part: sum(float(r[part]) for r in runs) / reps for part in PARTS}


# ---------------------------------------------------------------- the weights


def test_mss_weights_are_the_papers_with_each_samples_own_image_on_the_diagonal():
    m, n = 5, 100
    w = mss_log_weights(m, torch.tensor(float(n), dtype=torch.float64)).exp()
    strat = (n - m + 1) / (n * (m - 1))
    for i in range(m):
        for j in range(m):
            expected = 1 / n if i == j else strat if j == (i + 1) % m else 1 / (m - 1)
            assert w[i, j].item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(m, dtype=torch.float64))
    # The reference's matrix has the same values, in the wrong places: 1/N in column 0, not on the diagonal.
    reference = column_log_weights(m, n).exp()
    assert reference[:, 0].tolist() == pytest.approx([1 / n] * (m - 2) + [strat, 1 / n])
    assert reference.diagonal()[1:].tolist() != pytest.approx([1 / n] * (m - 1))


def test_small_batches_and_an_unknown_data_set_size():
    two = mss_log_weights(2, torch.tensor(10.0, dtype=torch.float64)).exp()
    torch.testing.assert_close(two, torch.tensor([[0.1, 0.9], [0.9, 0.1]], dtype=torch.float64))
    assert mss_log_weights(1, torch.tensor(10.0)).exp().item() == 1.0  # alone: q(z) = q(z|x), mi = 0
    # N unknown (0) or below the batch: the batch is the data set, N = M.
    torch.testing.assert_close(mss_log_weights(4, torch.tensor(0.0)), mss_log_weights(4, torch.tensor(4.0)))
    torch.testing.assert_close(mss_log_weights(4, torch.tensor(0.0)).exp().sum(dim=1), torch.ones(4))


def test_the_matrix_holds_each_images_posterior_density_at_each_sample():
    generator = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    eps = torch.randn(4, 3, generator=generator)
    z = mu + (0.5 * logvar).exp() * eps
    matrix = log_posterior_matrix(z, eps, mu, logvar)
    for i in range(4):
        for m in range(4):
            q = torch.distributions.Normal(mu[m], (0.5 * logvar[m]).exp())
            torch.testing.assert_close(matrix[i, m], q.log_prob(z[i]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the estimates


def test_the_parts_add_up_to_the_sampled_kl():
    """mi + tc + dwkl = (1/M) Σ_i [log q(z_i|x_i) − log p(z_i)], whatever the weights."""
    generator = torch.Generator().manual_seed(1)
    mu = torch.randn(64, 6, generator=generator, dtype=torch.float64)
    logvar = torch.randn(64, 6, generator=generator, dtype=torch.float64) - 1
    eps = torch.randn(64, 6, generator=generator, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * eps
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(mu, (0.5 * logvar).exp())
    sampled_kl = (q.log_prob(z) - p.log_prob(z)).sum(dim=1).mean()
    for log_w in (mss_log_weights(64, torch.tensor(1000.0, dtype=torch.float64)), column_log_weights(64, 1000)):
        parts = decompose(z, eps, mu, logvar, log_w)
        assert float(sum(parts.values())) == pytest.approx(float(sampled_kl), abs=1e-5)


def test_the_estimates_approach_the_closed_form_parts_of_a_correlated_gaussian():
    """N ≫ M: q(z) = N(0, Σ'), Σ' = Σ + s²I. Within 0.5 nats at batch 256, closer at 1024."""
    d, s2 = 5, 0.1
    sigma = _equicorrelated(d, 0.9)
    sigma_z = sigma + s2 * torch.eye(d, dtype=torch.float64)
    diag = sigma_z.diagonal()
    exact = {"tc": 0.5 * float(diag.log().sum() - torch.logdet(sigma_z)),
             "mi": 0.5 * float(torch.logdet(sigma_z) - d * math.log(s2)),
             "dwkl": float(0.5 * (diag - 1 - diag.log()).sum())}
    scale = torch.linalg.cholesky(sigma)

    def draw_x(m, generator):
        return torch.randn(m, d, generator=generator, dtype=torch.float64) @ scale.T

    errors = {}
    for m in (256, 1024):
        estimates = _mean_estimates(draw_x, s2, m, mss_log_weights(m, torch.tensor(1e9, dtype=torch.float64)), 5, 0)
        errors[m] = {part: abs(estimates[part] - exact[part]) for part in PARTS}
    assert exact["tc"] == pytest.approx(2.68, abs=0.01)
    assert max(errors[256].values()) < 0.5, errors
    assert errors[1024]["tc"] < errors[256]["tc"] and errors[1024]["mi"] < errors[256]["mi"], errors
    assert sum(errors[1024].values()) < sum(errors[256].values()), errors


@pytest.fixture(scope="module")
def finite_data_set():
    """N = 5000 points of N(0, Σ) (D = 6, correlation 0.7), q(z|x) = N(x, 0.02·I): the exact parts of
    its aggregate posterior from every point (2000 samples), and a batch drawer."""
    d, n, s2 = 6, 5000, 0.02
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(n, d, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(_equicorrelated(d, 0.7)).T
    z, eps, mu, logvar = _batch(data[torch.randint(n, (2000,), generator=generator)], s2, generator)
    log_q, log_q_dims = [], []
    for part in z.split(100):
        matrix = -0.5 * ((part[:, None] - data[None]) ** 2 / s2 + math.log(s2) + math.log(2 * math.pi))
        log_q.append(torch.logsumexp(matrix.sum(dim=-1), dim=1) - math.log(n))
        log_q_dims.append((torch.logsumexp(matrix, dim=1) - math.log(n)).sum(dim=-1))
    log_q, log_q_dims = torch.cat(log_q), torch.cat(log_q_dims)
    own = (-0.5 * (eps ** 2 + logvar + math.log(2 * math.pi))).sum(dim=-1)
    log_p = (-0.5 * (z ** 2 + math.log(2 * math.pi))).sum(dim=-1)
    exact = {"mi": float((own - log_q).mean()), "tc": float((log_q - log_q_dims).mean()),
             "dwkl": float((log_q_dims - log_p).mean())}

    def draw_x(m, gen):  # a batch without repeats, as a shuffled loader gives
        return data[torch.randperm(n, generator=gen)[:m]]

    return exact, draw_x, n, s2


def test_on_a_finite_data_set_the_papers_weights_find_the_total_correlation(finite_data_set):
    exact, draw_x, n, s2 = finite_data_set
    assert exact["tc"] == pytest.approx(3.82, abs=0.05)  # the known value this toy is built to have
    errors = {}
    for m in (256, 1024):
        estimates = _mean_estimates(draw_x, s2, m, mss_log_weights(m, torch.tensor(float(n), dtype=torch.float64)), 5, 1)
        errors[m] = {part: abs(estimates[part] - exact[part]) for part in PARTS}
    assert max(errors[256].values()) < 0.5, errors
    assert sum(errors[1024].values()) < sum(errors[256].values()), errors


def test_the_reference_codes_column_weights_overstate_the_total_correlation(finite_data_set):
    """At batch 256 (this toy, 5 batches averaged): exact TC 3.82, the paper's MSS 3.75, the column weights
    6.28, MWS 48.9 (at 1024: 3.75, 5.08, 47.7): the column weights count each sample's own posterior with
    1/(M−1), not 1/N, and so take MI for TC."""
    exact, draw_x, n, s2 = finite_data_set
    m = 256
    mss = _mean_estimates(draw_x, s2, m, mss_log_weights(m, torch.tensor(float(n), dtype=torch.float64)), 5, 1)
    columns = _mean_estimates(draw_x, s2, m, column_log_weights(m, n), 5, 1)
    mws = _mean_estimates(draw_x, s2, m, mws_log_weights(m, n), 5, 1)
    assert abs(mss["tc"] - exact["tc"]) < 0.3
    assert columns["tc"] - exact["tc"] > 1.5  # ≈ 6.2 against 3.8
    assert columns["mi"] - exact["mi"] < -1.5  # the MI it takes from the TC
    assert mws["tc"] - exact["tc"] > 20


# ---------------------------------------------------------------- the objective

IMAGE, LATENT, HIDDEN = (1, 6, 6), 3, [16]


def _vae(**settings) -> VAE:
    model = VAE(IMAGE, LATENT, HIDDEN, recon_loss="bce", **settings)
    model.use_train_size(1000)
    return model


def test_tcvae_loss_weighs_each_part_and_nelbo_stays_the_elbo():
    torch.manual_seed(0)
    model = _vae(objective="tcvae", alpha=0.5, beta=6.0, gamma=2.0)
    x = torch.rand(16, *IMAGE)
    eps = torch.randn(16, LATENT)
    losses = model.losses(x, eps)
    assert list(losses) == ["recon", "kl", "loss", "nelbo"]  # training: the train stage's terms
    mu, logvar = model.encode(x)
    z = mu + (0.5 * logvar).exp() * eps
    parts = kl_decomposition(z, eps, mu, logvar, torch.tensor(1000.0))
    expected = losses["recon"] + 0.5 * parts["mi"] + 6.0 * parts["tc"] + 2.0 * parts["dwkl"]
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["nelbo"], losses["recon"] + losses["kl"])
    model.eval()
    evaluated = model.losses(x, eps)
    assert list(evaluated) == ["recon", "kl", "loss", "nelbo", "mi", "tc", "dwkl"]
    for part in PARTS:
        torch.testing.assert_close(evaluated[part], parts[part])
    # α = β = γ = 1: the loss is recon plus the sampled KL, the ELBO of the sample.
    plain = _vae(objective="tcvae")
    plain.load_state_dict(model.state_dict())
    out = plain.losses(x, eps)
    sampled_kl = sum(parts.values())
    torch.testing.assert_close(out["loss"], out["recon"] + sampled_kl)


def test_every_vae_logs_the_parts_at_evaluation_only():
    torch.manual_seed(0)
    for settings in (dict(), dict(objective="iwae", k=3), dict(objective="tcvae", beta=4.0)):
        model = _vae(**settings)
        x = torch.rand(8, *IMAGE)
        assert list(model.losses(x)) == list(VAE.terms)
        model.eval()
        losses = model.losses(x)
        assert list(losses) == list(VAE.stage_terms("val")) == ["recon", "kl", "loss", "nelbo", *PARTS]
    assert "val/tc" in VAE.metric_names(("val",)) and "train/tc" not in VAE.metric_names(("train",))


def test_a_kl_schedule_scales_all_three_weights():
    torch.manual_seed(0)
    model = _vae(objective="tcvae", alpha=2.0, beta=6.0, gamma=3.0, kl_schedule="linear", kl_period=4,
                 kl_period_unit="step")
    x, eps = torch.rand(8, *IMAGE), torch.randn(8, LATENT)
    mu, logvar = model.encode(x)
    parts = kl_decomposition(mu + (0.5 * logvar).exp() * eps, eps, mu, logvar, model.train_size)
    for step, f in ((0, 0.0), (1, 0.25), (4, 1.0)):
        model.advance(step, 1)
        losses = model.losses(x, eps)
        expected = losses["recon"] + f * (2.0 * parts["mi"] + 6.0 * parts["tc"] + 3.0 * parts["dwkl"])
        torch.testing.assert_close(losses["loss"], expected)
        assert model.scheduled_values(step, 1) == {"beta": 6.0 * f}
    model.advance(0, 1)
    model.eval()  # evaluation: the weights the schedule ends at
    losses = model.losses(x, eps)
    torch.testing.assert_close(losses["loss"], losses["recon"] + 2.0 * parts["mi"] + 6.0 * parts["tc"] + 3.0 * parts["dwkl"])


@pytest.mark.parametrize("settings", [dict(free_bits=0.1), dict(kl_schedule="capacity")])
def test_tcvae_refuses_what_acts_on_the_analytic_kl(settings):
    with pytest.raises(ValueError, match="objective=tcvae"):
        VAE(IMAGE, LATENT, HIDDEN, objective="tcvae", **settings)


def test_a_stacked_tcvae_member_equals_its_single_run():
    """Members differing in α, β, γ and schedule train as they would alone (tests/test_stack.py's oracle)."""
    from test_stack import (CLOSE, SEEDS, _assert_member_equals_alone, _batches, _stack, _train_alone,
                            _train_stacked)

    settings = [dict(alpha=1.0, beta=6.0, gamma=1.0),
                dict(alpha=0.5, beta=2.0, gamma=3.0, kl_schedule="linear", kl_period=3, kl_period_unit="step")]
    builders = [lambda s=s: _vae(objective="tcvae", **s) for s in settings]
    seeds = SEEDS[:2]
    batches = [_batches(seed) for seed in seeds]
    val_x = torch.rand(8, *IMAGE, generator=torch.Generator().manual_seed(0))
    alone = [_train_alone(build, seed, b, val_x) for build, seed, b in zip(builders, seeds, batches)]
    stack = _stack(builders, seeds)
    steps = _train_stacked(stack, torch.stack(batches))
    for member in range(2):
        _assert_member_equals_alone(stack, steps, member, alone[member][0], alone[member][1])
    stack.eval()
    with torch.no_grad():
        val = stack.losses(val_x)
    assert list(val) == list(VAE.stage_terms("val"))
    for member in range(2):
        for term in val:
            torch.testing.assert_close(val[term][member], alone[member][2][term], **CLOSE)


# ---------------------------------------------------------------- training module, checkpoints, config


def test_validation_and_test_log_the_parts_with_the_training_sets_size(data_dir, tmp_path):
    import pytorch_lightning as pl

    from vaelab.data import MNISTDataModule
    from vaelab.training import LitAutoencoder

    torch.manual_seed(0)
    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[32], objective="tcvae", beta=6.0)
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=64, val_size=128)
    dm.load()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, max_epochs=1, limit_train_batches=2,
                         limit_val_batches=1, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    n = dm.info["data/train_size"]
    assert float(module.model.train_size) == n
    logged = trainer.callback_metrics
    assert {"val/mi", "val/tc", "val/dwkl", "val/kl"} <= set(logged) and "train/tc" not in logged
    assert module.terms == ("recon", "kl", "loss", "nelbo", "mi", "tc", "dwkl")  # metrics.json's "terms"
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert {f"test/{part}" for part in PARTS} <= set(result)
    # The checkpoint keeps N: eval.py and vaelab.load estimate with the training set's size.
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = LitAutoencoder.load_from_checkpoint(path, weights_only=True)
    assert float(loaded.model.train_size) == n
    # A checkpoint from before the decomposition (no train_size) still loads: N unknown, the batch is the data set.
    old = torch.load(path, weights_only=True)
    del old["train_size"]
    torch.save(old, path)
    assert float(LitAutoencoder.load_from_checkpoint(path, weights_only=True).model.train_size) == 0


def _checked(*overrides: str) -> None:
    from test_config import _checked as checked

    checked(*overrides)


@pytest.mark.parametrize(("overrides", "says"), [
    (["model=ae", "model.objective=tcvae"], "model.objective=tcvae must be null for model=ae"),
    (["model.objective=tcvae", "model.free_bits=0.5"], "model.free_bits=0.5 must be 0 with model.objective=tcvae"),
    (["model.objective=tcvae", "model.kl_schedule=capacity"], "must be constant, linear or cyclical with model.objective=tcvae"),
    (["model.alpha=2"], "model.alpha=2 must be null or 1 with model.objective=elbo"),
    (["model.objective=iwae", "model.k=2", "model.gamma=0.5"], "model.gamma=0.5 must be null or 1 with model.objective=iwae"),
    (["model.objective=tcvae", "model.gamma=-1"], "model.gamma=-1"),
])
def test_the_config_refuses_tcvae_where_it_cannot_apply(overrides, says):
    from vaelab.errors import ConfigError

    with pytest.raises(ConfigError, match=None) as refused:
        _checked(*overrides)
    assert says in str(refused.value)


def test_the_config_takes_tcvae_and_the_parts_as_monitors():
    _checked("model.objective=tcvae", "model.beta=6", "model.alpha=0.5", "model.kl_schedule=linear")
    _checked("callbacks.model_checkpoint.monitor=val/tc", "optimized_metric=test/mi")
    _checked("model.alpha=1", "model.gamma=1")  # the value null stands for


def test_a_tcvae_sweep_over_alpha_beta_gamma_is_one_stack_the_stack_takes():
    from test_stacked_sweeps import _grid

    from vaelab.models.stack import Stack
    from vaelab.sweeps.stacking import group_jobs
    from vaelab.tasks.build import build

    configs = _grid("model.objective=tcvae", "model.beta=1,6", "model.alpha=0.5,1", "model.gamma=1,2",
                    "model.hidden_dims=[8]")
    (members,), alone = group_jobs(configs)
    assert alone == {} and len(members) == 8
    modules = [build("model", configs[i].model, image_shape=[1, 28, 28], pixel_range=[0.0, 1.0]) for i in members]
    stack = Stack([m.model for m in modules])
    weights = stack.model.kl_part_weights_end  # (members, 3): each member's own (α, β, γ)
    assert sorted(map(tuple, weights.tolist())) == sorted((a, b, g) for b in (1, 6) for a in (0.5, 1) for g in (1, 2))


def test_train_py_with_tcvae_writes_the_parts_to_metrics_json(shared_data_dir, tmp_path):
    import json

    from conftest import run_dirs, run_entry_point_in_process, small_run_overrides

    log_dir = tmp_path / "outputs"
    code = run_entry_point_in_process(*small_run_overrides(shared_data_dir, log_dir), "trainer.max_epochs=1",
                                      "model.objective=tcvae", "model.beta=6", "logger=csv",
                                      "callbacks.latent_panels.every_n_epochs=0")
    assert code == 0
    (run_dir,) = run_dirs(log_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["terms"] == ["recon", "kl", "loss", "nelbo", *PARTS]
    for stage in ("val", "test"):
        parts = [record[f"{stage}/{part}"] for part in PARTS]
        assert all(math.isfinite(v) for v in parts)
        assert record[f"{stage}/tc"] > -0.5  # a TC estimate: near or above 0
    assert record["test/nelbo"] == pytest.approx(record["test/recon"] + record["test/kl"], rel=1e-5)


@needs_cuda
def test_a_tcvae_step_replayed_as_a_cuda_graph_equals_the_eager_step():
    """No data-dependent branch: N, the weights and the schedule are device tensors the graph reads."""
    torch.manual_seed(0)
    graphed = VAE((1, 28, 28), 4, [32], objective="tcvae", beta=6.0, kl_schedule="linear", kl_period=3,
                  kl_period_unit="step").cuda()
    graphed.use_train_size(60000)
    assert_graphed_steps_equal_eager(graphed, [torch.rand(64, 1, 28, 28, device="cuda") for _ in range(5)])


def assert_graphed_steps_equal_eager(graphed: VAE, batches: list[torch.Tensor]) -> None:
    """Training steps of `graphed`, one per batch, each a replay of one captured CUDA graph, give the
    losses and weights of the same steps taken eagerly by a copy, with the same noise."""
    import copy

    from vaelab.training import make_optimizer
    from vaelab.training.graph_step import CudaGraphStep

    eager = copy.deepcopy(graphed)
    noise = [torch.randn(len(x), graphed.latent_dim, device="cuda") for x in batches]
    opt_g = make_optimizer(graphed.parameters(), 1e-3, torch.device("cuda"), capturable=True)
    opt_e = make_optimizer(eager.parameters(), 1e-3, torch.device("cuda"))
    static_eps = noise[0].clone()
    step = CudaGraphStep(lambda x: graphed.losses(x, static_eps), list(graphed.parameters()), opt_g, batches[0])
    for i, (x, eps) in enumerate(zip(batches, noise)):
        graphed.advance(i, 1)
        eager.advance(i, 1)
        static_eps.copy_(eps)
        graph_loss = step(x)["loss"].clone()
        opt_e.zero_grad()
        eager_loss = eager.losses(x, eps)["loss"]
        eager_loss.backward()
        opt_e.step()
        torch.testing.assert_close(graph_loss, eager_loss.detach())
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b)
