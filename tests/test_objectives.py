"""Objectives and schedules: each schedule against its closed form, a scheduled β and learning rate
reaching the training step through the real entry point, gradient clipping, free bits' gradient,
and the IWAE bound between the ELBO and the exact log-likelihood of a model small enough to
integrate."""

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import needs_cuda, run_dirs, run_entry_point_in_process, small_run_overrides
from vaelab.data import MNISTDataModule
from vaelab.models import VAE, KLSchedule, build_model, gaussian_kl_per_dim
from vaelab.training import LitAutoencoder
from vaelab.training.optim import cosine_lr_factor


# -- closed forms ---------------------------------------------------------------------------------

def test_linear_warm_up_rises_from_zero_to_one_over_the_period():
    schedule = KLSchedule("linear", period=2, unit="epoch")
    steps_per_epoch = 50  # period: 100 steps
    assert [schedule.weight(t, steps_per_epoch) for t in (0, 25, 50, 99, 100, 500)] == [0, 0.25, 0.5, 0.99, 1, 1]
    assert schedule.target(30, steps_per_epoch) == 0


def test_cyclical_schedule_rises_for_a_fraction_of_each_cycle_then_holds():
    schedule = KLSchedule("cyclical", period=400, unit="step", cycles=4, ratio=0.5)  # cycles of 100 steps
    # τ = (t mod 100) / 100; f = min(1, τ / 0.5); after 400 steps, 1
    expected = {0: 0.0, 25: 0.5, 49: 0.98, 50: 1.0, 99: 1.0, 100: 0.0, 125: 0.5, 310: 0.2, 399: 1.0, 400: 1.0, 1000: 1.0}
    for step, value in expected.items():
        assert schedule.weight(step) == pytest.approx(value), step


def test_capacity_target_grows_linearly_to_its_maximum_with_full_weight():
    schedule = KLSchedule("capacity", period=1000, unit="step", capacity=25.0)
    assert [schedule.target(t) for t in (0, 100, 500, 1000, 5000)] == pytest.approx([0, 2.5, 12.5, 25, 25])
    assert schedule.weight(100) == 1
    model = build_model("vae", (1, 28, 28), latent_dim=3, hidden_dims=[8], kl_schedule="capacity", beta=10,
                        kl_period=1000, kl_period_unit="step", kl_capacity=25.0)
    assert model.scheduled_values(100, 7) == {"beta": 10, "capacity": 2.5}


def test_constant_schedule_has_no_per_step_work_and_its_settings_are_not_saved():
    model = build_model("vae", (1, 28, 28), latent_dim=3, hidden_dims=[8], beta=4, free_bits=0.5)
    assert not model.schedule_varies and model.scheduled_values(12345, 10) == {"beta": 4}
    model.advance(12345, 10)
    assert (float(model.kl_weight), float(model.kl_target), float(model.kl_floor)) == (4.0, 0.0, 0.5)
    # The settings' buffers are rebuilt from the constructor's arguments: checkpoints hold the weights only.
    assert not [name for name in model.state_dict() if name.startswith("kl_")]


def test_cosine_learning_rate_warms_up_linearly_then_decays_to_its_floor():
    warmup, total = 10, 110
    assert [cosine_lr_factor(t, warmup, total) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cosine_lr_factor(10, warmup, total) == pytest.approx(1.0)
    assert cosine_lr_factor(60, warmup, total) == pytest.approx(0.5)  # half-way: ½(1 + cos(π/2))
    assert cosine_lr_factor(110, warmup, total, min_factor=0.1) == pytest.approx(0.1)
    assert cosine_lr_factor(35, warmup, total, 0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))


# -- the objective ------------------------------------------------------------------------------

def test_free_bits_give_no_gradient_to_dimensions_below_the_floor():
    model = build_model("vae", (1, 28, 28), latent_dim=4, hidden_dims=[8], beta=2.0, free_bits=0.5)
    kl_per_dim = torch.tensor([0.1, 0.49, 0.8, 2.0], requires_grad=True)
    penalty = model.kl_penalty(kl_per_dim)
    assert float(penalty.detach()) == pytest.approx(2.0 * (0.5 + 0.5 + 0.8 + 2.0))
    penalty.backward()
    assert kl_per_dim.grad.tolist() == [0.0, 0.0, 2.0, 2.0]


def test_free_bits_change_the_loss_but_not_the_bound():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    plain = build_model("vae", (1, 28, 28), latent_dim=4, hidden_dims=[8], recon_loss="bce")
    floored = build_model("vae", (1, 28, 28), latent_dim=4, hidden_dims=[8], recon_loss="bce", free_bits=5.0)
    floored.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    a = plain.losses(x)
    torch.manual_seed(1)
    b = floored.losses(x)
    for term in ("recon", "kl", "nelbo"):
        torch.testing.assert_close(a[term], b[term])
    kl_dims = gaussian_kl_per_dim(*floored.encode(x)).mean(dim=0)
    torch.testing.assert_close(b["loss"], b["recon"] + kl_dims.clamp_min(5.0).sum())


def test_iwae_with_one_sample_is_the_elbo_of_that_sample():
    torch.manual_seed(0)
    model = build_model("vae", (1, 28, 28), latent_dim=3, hidden_dims=[16], recon_loss="bce", objective="iwae", k=1)
    x = torch.rand(8, 1, 28, 28).bernoulli()
    torch.manual_seed(5)
    out = model.losses(x)
    torch.manual_seed(5)  # the same ε: z = μ + σ·ε, then log q − log p of that z
    mu, logvar = model.encode(x)
    eps = torch.randn(1, *mu.shape)
    z = mu + torch.exp(0.5 * logvar) * eps
    recon = model.likelihood.error(model.decode(z[0]), x)
    log_q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z[0]).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z[0]).sum(1)
    torch.testing.assert_close(out["loss"], (recon + log_q - log_p).mean())
    torch.testing.assert_close(out["recon"], recon.mean())
    # The sampled KL averages to the analytic one in nelbo: over 16,000 draws the two agree.
    with torch.no_grad():
        many = model.losses(x.repeat(2000, 1, 1, 1))
    torch.testing.assert_close(many["loss"], many["nelbo"], atol=0.05, rtol=0)


class TinyDecoder(nn.Module):
    """1-d code → 3 Bernoulli pixels: small enough to integrate p(x) = ∫ p(x|z) N(z) dz on a grid."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, z):
        return self.net(z).view(-1, 1, 1, 3)


def test_iwae_bound_lies_between_the_elbo_and_the_exact_log_likelihood():
    torch.manual_seed(0)
    model = VAE(image_shape=(1, 1, 3), latent_dim=1, hidden_dims=[8], recon_loss="bce", objective="iwae", k=5).double()
    model.decoder = TinyDecoder().double()
    with torch.no_grad():  # a posterior far from the true one, so the bounds differ visibly
        model.fc_var.bias.fill_(-3.0)
    x = torch.tensor([[[[1.0, 0.0, 1.0]]]], dtype=torch.float64)

    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        log_joint = -model.likelihood.error(model.decode(grid), x.expand(len(grid), -1, -1, -1)) \
            + torch.distributions.Normal(0.0, 1.0).log_prob(grid[:, 0]).double()
        log_px = float(torch.logsumexp(log_joint, 0) + math.log(float(grid[1] - grid[0])))
        batch = x.expand(20_000, -1, -1, -1)
        iwae = -float(model.iwae_losses(batch, 5)["loss"])
        elbo = -float(model.iwae_losses(batch, 1)["loss"])
        analytic_elbo = -float(model.iwae_losses(batch, 5)["nelbo"])
    assert elbo < iwae < log_px
    assert elbo == pytest.approx(analytic_elbo, abs=0.02)  # the sampled KL averages to the analytic one
    assert log_px - iwae > 0.05 and iwae - elbo > 0.05  # strictly between, by more than the noise


def test_validation_uses_the_values_the_schedule_ends_at():
    model = build_model("vae", (1, 28, 28), latent_dim=3, hidden_dims=[8], beta=3.0, kl_schedule="linear",
                        kl_period=100, kl_period_unit="step")
    model.advance(0, 10)  # β·f(0) = 0 while training
    x = torch.rand(4, 1, 28, 28)
    model.train()
    torch.manual_seed(0)
    training = model.losses(x)
    model.eval()
    torch.manual_seed(0)
    evaluation = model.losses(x)
    torch.testing.assert_close(training["loss"], training["recon"])
    torch.testing.assert_close(evaluation["loss"], evaluation["recon"] + 3.0 * evaluation["kl"])


# -- through the real entry point and Lightning ---------------------------------------------------

def _step_rows(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f) if row.get("train/lr")]


@pytest.mark.parametrize("schedule", [
    ["model.kl_schedule=linear", "model.kl_period=6", "model.kl_period_unit=step", "model.beta=2"],
    ["model.kl_schedule=capacity", "model.kl_period=1", "model.kl_period_unit=epoch", "model.kl_capacity=3",
     "model.beta=5"],
])
def test_scheduled_beta_and_lr_reach_the_step(shared_data_dir, tmp_path, schedule):
    """β·f(t) and lr(t) are logged at every step; the logged loss is made with that β."""
    code = run_entry_point_in_process(
        *small_run_overrides(shared_data_dir, tmp_path), *schedule, "logger=csv", "trainer.log_every_n_steps=1",
        "optimizer.scheduler=cosine", "optimizer.warmup_steps=3", "trainer.gradient_clip_val=5", "test=false")
    assert code == 0
    rows = _step_rows(run_dirs(tmp_path)[0])
    steps_per_epoch = math.ceil((640 - 128) / 64)
    total = 2 * steps_per_epoch
    assert [r["step"] for r in rows] == list(range(total))
    for r in rows:
        t = int(r["step"])
        assert r["train/lr"] == pytest.approx(1e-3 * cosine_lr_factor(t, 3, total))
        if "model.kl_schedule=linear" in schedule:
            assert r["train/beta"] == pytest.approx(2 * min(1, t / 6))
            expected = r["train/recon_step"] + r["train/beta"] * r["train/kl_step"]
        else:
            assert r["train/beta"] == 5 and r["train/capacity"] == pytest.approx(3 * min(1, t / steps_per_epoch))
            expected = r["train/recon_step"] + 5 * abs(r["train/kl_step"] - r["train/capacity"])
        assert r["train/loss_step"] == pytest.approx(expected, rel=1e-5, abs=1e-4)


def _fit_one_step(data_dir: Path, **settings) -> LitAutoencoder:
    torch.manual_seed(0)
    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[32], recon_loss="bce", **settings)
    datamodule = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=64, val_size=128)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    module.initial = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, datamodule=datamodule)
    return module


def test_the_scheduled_learning_rate_is_the_one_adam_steps_with(data_dir):
    """Adam's first update moves each weight with a gradient by lr·g/(|g| + ε) ≈ ±lr: so the largest
    move is the rate of step 0, here lr/4 of a 4-step warm-up."""
    module = _fit_one_step(data_dir, lr=1e-2, optimizer={"scheduler": "cosine", "warmup_steps": 4})
    moved = max(float((p.detach() - p0).abs().max()) for p, p0 in zip(module.parameters(), module.initial))
    assert moved == pytest.approx(1e-2 / 4, rel=1e-3)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clipping_bounds_the_gradient_the_optimiser_steps_with(data_dir, algorithm):
    module = _fit_one_step(data_dir, gradient_clip_val=0.01, gradient_clip_algorithm=algorithm)
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if algorithm == "norm":
        assert float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) <= 0.01 * (1 + 1e-4)
    else:
        assert max(float(g.abs().max()) for g in grads) <= 0.01
    unclipped = _fit_one_step(data_dir)
    assert float(torch.stack([p.grad.norm() for p in unclipped.parameters()]).norm()) > 1  # clipping did act


@needs_cuda
def test_cuda_graph_follows_the_lr_schedule_and_clips_exactly_like_the_eager_step():
    """An AE (no sampling noise): graph and eager must agree step for step."""
    import copy

    from vaelab.training.graph_step import CudaGraphStep
    from vaelab.training.optim import clip_gradients, make_lr_scheduler, make_optimizer

    torch.manual_seed(0)
    graphed = build_model("ae", (1, 28, 28), latent_dim=4, hidden_dims=[32], recon_loss="bce").cuda()
    eager = copy.deepcopy(graphed)
    schedule = {"scheduler": "cosine", "warmup_steps": 3}
    opt_g = make_optimizer(graphed.parameters(), 1e-2, torch.device("cuda"), capturable=True, tensor_lr=True)
    opt_e = make_optimizer(eager.parameters(), 1e-2, torch.device("cuda"))
    sch_g, sch_e = (make_lr_scheduler(o, schedule, 1e-2, total_steps=8) for o in (opt_g, opt_e))
    batches = [torch.rand(64, 1, 28, 28, device="cuda").bernoulli() for _ in range(8)]
    step = CudaGraphStep(graphed.losses, list(graphed.parameters()), opt_g, batches[0],
                         before_optimizer_step=lambda: clip_gradients(list(graphed.parameters()), 1.0))
    for x in batches:
        graph_loss = step(x)["loss"].clone()
        opt_e.zero_grad()
        eager_loss = eager.losses(x)["loss"]
        eager_loss.backward()
        clip_gradients(list(eager.parameters()), 1.0)
        opt_e.step()
        sch_g.step()
        sch_e.step()
        torch.testing.assert_close(graph_loss, eager_loss.detach())
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b)
    assert float(opt_g.param_groups[0]["lr"]) == pytest.approx(opt_e.param_groups[0]["lr"])


@needs_cuda
def test_cuda_graph_replays_with_each_steps_beta():
    from vaelab.training.graph_step import CudaGraphStep
    from vaelab.training.optim import make_optimizer

    model = build_model("vae", (1, 28, 28), latent_dim=4, hidden_dims=[32], recon_loss="bce", kl_schedule="linear",
                        kl_period=4, kl_period_unit="step", beta=2.0).cuda()
    optimizer = make_optimizer(model.parameters(), 1e-3, torch.device("cuda"), capturable=True)
    x = torch.rand(64, 1, 28, 28, device="cuda").bernoulli()
    model.advance(0, 1)
    step = CudaGraphStep(model.losses, list(model.parameters()), optimizer, x)
    for t in range(6):
        model.advance(t, 1)
        losses = {k: float(v) for k, v in step(x).items()}
        assert losses["loss"] == pytest.approx(losses["recon"] + 2.0 * min(1, t / 4) * losses["kl"], rel=1e-5)


def test_plateau_lowers_the_rate_after_validations_without_improvement(data_dir):
    """At lr = 1e-6 val/loss moves by far less than the scheduler's 1e-4 relative threshold: with
    patience 0 every validation after the first halves the rate."""
    torch.manual_seed(0)
    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[32], recon_loss="bce", lr=1e-6,
                            optimizer={"scheduler": "plateau", "monitor": "val/loss", "factor": 0.5, "patience": 0})
    datamodule = MNISTDataModule(data_dir=str(data_dir), source="local", batch_size=64, val_size=128)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # with the sanity check: not counted
    trainer.fit(module, datamodule=datamodule)
    assert module.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-6)


# -- evaluation of the new objectives and likelihoods ----------------------------------------------

TRAINED = {
    "iwae-gaussian": ["model.objective=iwae", "model.k=3", "model.recon_loss=gaussian"],
    "free_bits-cbernoulli": ["model.free_bits=0.5", "model.recon_loss=cbernoulli", "model.kl_schedule=linear"],
}


# The tests on it stay on one pytest-xdist worker (make test: --dist loadgroup): it is trained once.
on_evaluated_objectives = pytest.mark.xdist_group("evaluated_objectives")


@pytest.fixture(scope="module")
def evaluated_objectives(shared_data_dir, tmp_path_factory):
    """Each of TRAINED trained one epoch and evaluated, in this process: {name: eval.json}."""
    import json

    root = tmp_path_factory.mktemp("objectives")
    checkpoints = {}
    for name, overrides in TRAINED.items():
        log_dir = root / name
        assert run_entry_point_in_process(*small_run_overrides(shared_data_dir, log_dir), *overrides, "logger=csv",
                                          "trainer.max_epochs=1", "callbacks.latent_panels.every_n_epochs=0") == 0
        (run_dir,) = run_dirs(log_dir)
        checkpoints[name] = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    records = {}
    for name, checkpoint in checkpoints.items():
        assert run_entry_point_in_process(f"ckpt_path={checkpoint}", f"paths.log_dir={root / name}", "eval.k=50",
                                          "eval.n_samples=100", "eval.max_images=60", script="eval.py") == 0
        (path,) = (root / name).glob("evals/*/*/eval.json")
        records[name] = json.loads(path.read_text())
    return records


@on_evaluated_objectives
def test_eval_scores_density_likelihoods_in_nats(evaluated_objectives):
    for record in evaluated_objectives.values():
        assert record["test/nll_is_likelihood"] is True and record["test/nll_constant"] == 0
        # importance sampling tightens the bound: nll below nelbo, both finite
        assert math.isfinite(record["test/nll"]) and record["test/nll"] <= record["test/nelbo"] + 0.5


@on_evaluated_objectives
def test_eval_reports_the_objective_each_model_was_trained_on(evaluated_objectives):
    iwae = evaluated_objectives["iwae-gaussian"]
    assert iwae["objective"] == "iwae" and iwae["recon_loss"] == "gaussian"
    # test/loss is the k = 3 bound (not recon + β·kl): between the k = 50 nll and the ELBO, up to noise
    assert iwae["test/nll"] - 1 <= iwae["test/loss"] <= iwae["test/nelbo"] + 1
    floored = evaluated_objectives["free_bits-cbernoulli"]
    expected = floored["test/recon"] + sum(max(0.5, kl) for kl in floored["test/kl_per_dim"])  # β = 1 at the end
    assert floored["test/loss"] == pytest.approx(expected, rel=1e-6)
    assert floored["test/nelbo"] == pytest.approx(floored["test/recon"] + floored["test/kl"], rel=1e-6)
