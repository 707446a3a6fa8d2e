"""The stack (models/stack.py): each member trains as the same model trained alone.

A single run here is what train.py does around the model: seed, build, then Adam steps whose
noise comes from the global generator. Members differ in seed, β, free bits and KL schedule;
every model type, network, objective and likelihood stacks, and so does a model type written
for this test; tiny sizes (6×6 images, 16 hidden units, 3 latent dimensions) keep the file fast.
"""

import math
from collections.abc import Sequence

import pytest
import torch

from vaelab.models import AE, VAE
from vaelab.models.stack import Stack, member_from_seed
from vaelab.training.optim import StackedAdam

IMAGE = (1, 6, 6)
HIDDEN = [16]
LATENT = 3
BATCH = 8
STEPS = 4
LR = 1e-2  # large enough that 4 Adam steps move every weight visibly
SETTINGS = [  # one member each: a constant β, a linear warm-up with free bits, a capacity target
    dict(beta=0.5),
    dict(beta=4.0, free_bits=0.05, kl_schedule="linear", kl_period=3, kl_period_unit="step"),
    dict(beta=1.0, kl_schedule="capacity", kl_period=2, kl_period_unit="step", kl_capacity=2.0),
]
SEEDS = [3, 7, 11]
# float32: a batched matrix product sums in another order, and Adam's m/√v magnifies rounding in small gradients.
CLOSE = dict(rtol=1e-4, atol=1e-5)


class SparseAE(AE):
    """A model type added after the stack was written (as test_model_types.py adds it): nothing for stacks."""

    name = "sparse_ae"
    terms = ("recon", "l1", "loss")

    def __init__(self, *args, l1_weight: float = 1e-2, **kwargs):
        super().__init__(*args, **kwargs)
        self.l1_weight = float(l1_weight)

    def losses(self, x: torch.Tensor, eps=None) -> dict[str, torch.Tensor]:
        out = self(x)
        recon, l1 = self.likelihood.error(out.logits, x).mean(), out.z.abs().sum(dim=1).mean()
        return {"recon": recon, "l1": l1, "loss": recon + self.l1_weight * l1}


def _builder(settings: dict, cls=VAE, **architecture):
    architecture = {"recon_loss": "bce", **architecture}
    return lambda: cls(IMAGE, LATENT, HIDDEN if architecture.get("net") != "conv" else [4, 4], **architecture, **settings)


# Each case: the members' builders (one architecture, per-member settings as SETTINGS vary them).
CASES = {
    "vae-mlp-bce": [_builder(s) for s in SETTINGS],
    "vae-mse-own-data": [_builder(s, recon_loss="mse") for s in SETTINGS[:2]],
    "vae-conv": [_builder(s, net="conv") for s in SETTINGS[:2]],
    "iwae": [_builder(dict(beta=b, objective="iwae", k=3)) for b in (0.5, 1.0)],
    "gaussian-learned-sigma": [_builder(s, recon_loss="gaussian") for s in SETTINGS[:2]],
    "cbernoulli": [_builder(s, recon_loss="cbernoulli") for s in SETTINGS[1:]],
    "ae": [_builder({}, AE), _builder({}, AE)],
    "new-model-type": [_builder({}, SparseAE), _builder({}, SparseAE)],
    # the prior's pseudo-inputs are weights of each member; its KL is sampled from the member's own noise
    "vampprior-gated": [_builder(dict(beta=1.0, prior="vamp", pseudo_inputs=3), net="gated_mlp"),
                        _builder(dict(beta=2.0, prior="vamp", pseudo_inputs=3, kl_schedule="linear", kl_period=2,
                                      kl_period_unit="step"), net="gated_mlp")],
    "vampprior-iwae": [_builder(dict(beta=b, objective="iwae", k=3, prior="vamp", pseudo_inputs=3)) for b in (0.5, 1.0)],
}


def _batches(seed: int) -> torch.Tensor:
    """(STEPS, B, C, H, W) grey-level images: one data order per seed, as a run's loader gives."""
    return torch.rand(STEPS, BATCH, *IMAGE, generator=torch.Generator().manual_seed(100 + seed))


def _adam(parameters) -> torch.optim.Adam:
    # As vaelab.training.make_optimizer on the CPU.
    return torch.optim.Adam(parameters, lr=LR, fused=True)


def _train_alone(build, seed: int, batches: torch.Tensor, val_x: torch.Tensor):
    """The single run: its per-step losses and gradients, its final weights and its eval losses."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        optimizer = _adam(model.parameters())
        steps = []
        for step, x in enumerate(batches):
            model.advance(step, 1)
            optimizer.zero_grad()
            losses = model.losses(x)
            losses["loss"].backward()
            steps.append(({k: v.detach() for k, v in losses.items()},
                          {name: p.grad.clone() for name, p in model.named_parameters()}))
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val = model.losses(val_x)
    return steps, model.state_dict(), val


def _stack(builders: Sequence, seeds: list[int]) -> Stack:
    members = [member_from_seed(build, seed) for build, seed in zip(builders, seeds)]
    return Stack([m for m, _ in members], generators=[g for _, g in members])


def _train_stacked(stack: Stack, batches: torch.Tensor, poison=None):
    """`batches` (STEPS, ...) shared or (N, STEPS, ...) per member; `poison(stack, step)` may break a member."""
    optimizer = _adam(stack.parameters())
    steps = []
    for step in range(STEPS):
        if poison is not None:
            poison(stack, step)
        stack.advance(step, 1)
        optimizer.zero_grad()
        losses = stack.losses(batches[step] if batches.dim() == len(IMAGE) + 2 else batches[:, step])
        objective = stack.objective(losses)
        assert torch.isfinite(objective)
        objective.backward()
        stack.mask_dead_gradients()
        steps.append(({k: v.detach() for k, v in losses.items()},
                      [stack.member_gradients(n) for n in range(stack.n)]))
        optimizer.step()
    return steps


def _assert_member_equals_alone(stack, stacked_steps, n, alone_steps, alone_weights):
    for step, ((losses, grads), (own_losses, own_grads)) in enumerate(zip(stacked_steps, alone_steps)):
        assert list(losses) == list(stack.terms)
        for term in stack.terms:
            torch.testing.assert_close(losses[term][n], own_losses[term], **CLOSE,
                                       msg=lambda m: f"member {n}, step {step}, {term}: {m}")
        for name, grad in own_grads.items():
            torch.testing.assert_close(grads[n][name], grad, **CLOSE, msg=lambda m: f"member {n}, step {step}, {name}: {m}")
    for name, weight in alone_weights.items():
        torch.testing.assert_close(stack.member_state_dict(n)[name], weight, **CLOSE, msg=lambda m: f"member {n}, {name}: {m}")


# ---------------------------------------------------------------- equality with single runs


@pytest.mark.parametrize("case", list(CASES))
def test_each_member_trains_as_it_would_alone(case):
    builders = CASES[case]
    n, seeds = len(builders), SEEDS[:len(builders)]
    per_member_data = case != "vae-mlp-bce"  # one batch shared by all members, or each its own data order
    batches = [_batches(seed if per_member_data else 0) for seed in seeds]
    val_x = torch.rand(BATCH, *IMAGE, generator=torch.Generator().manual_seed(0))
    alone = [_train_alone(build, seed, b, val_x) for build, seed, b in zip(builders, seeds, batches)]

    stack = _stack(builders, seeds)
    stacked_steps = _train_stacked(stack, torch.stack(batches) if per_member_data else batches[0])
    for member in range(n):
        steps, weights, _ = alone[member]
        _assert_member_equals_alone(stack, stacked_steps, member, steps, weights)

    # Evaluation takes the values each schedule ends at, as a single VAE's does; the noise goes on in step.
    stack.eval()
    with torch.no_grad():
        val = stack.losses(val_x)
    for member in range(n):
        for term in stack.terms:
            torch.testing.assert_close(val[term][member], alone[member][2][term], **CLOSE)
    assert stack.alive.all()


def test_a_member_starts_from_its_seeds_initialisation_and_noise():
    stack = _stack(CASES["vae-mlp-bce"][:2], SEEDS[:2])
    eps = stack.noise(BATCH, torch.zeros(()))  # (N, B, latent_dim): each member's first draw
    for n, (settings, seed) in enumerate(zip(SETTINGS[:2], SEEDS[:2])):
        torch.manual_seed(seed)
        single = _builder(settings)()
        for name, weight in single.state_dict().items():
            assert torch.equal(stack.member_state_dict(n)[name], weight), name
        # What the single run's first reparameterisation, torch.randn_like(std), draws: bit for bit.
        assert torch.equal(eps[n], torch.randn(BATCH, LATENT))


def test_without_generators_the_members_draw_different_noise_from_the_global_generator():
    members = [_builder(s)() for s in SETTINGS[:2]]
    stack = Stack(members)
    eps = stack.noise(BATCH, torch.zeros(()))
    assert eps.shape == (2, BATCH, LATENT) and not torch.equal(eps[0], eps[1])


# ---------------------------------------------------------------- splitting back


def test_member_state_dict_loads_into_the_single_model_and_round_trips():
    members = [member_from_seed(_builder(s), seed)[0] for s, seed in zip(SETTINGS, SEEDS)]
    stack = Stack(members)
    with torch.no_grad():  # weights the members never had: the split must come from the stack
        for p in stack.parameters():
            p.add_(torch.randn_like(p))
    split = []
    for n, settings in enumerate(SETTINGS):
        single = _builder(settings)()
        single.load_state_dict(stack.member_state_dict(n))  # strict: the same keys and shapes
        split.append(single)
    again = Stack(split)
    for name, value in stack.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    again.eval()
    split[1].eval()
    x = torch.rand(BATCH, *IMAGE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        stacked = again.losses(x)
    torch.manual_seed(0)
    single = split[1].losses(x, torch.randn(3, BATCH, LATENT)[1])  # member 1's share of the stack's one draw
    for term, value in single.items():
        torch.testing.assert_close(stacked[term][1], value)


# ---------------------------------------------------------------- a failing member


def test_a_nan_in_one_member_stops_that_member_not_the_stack():
    val_x = torch.rand(BATCH, *IMAGE)
    batches = [_batches(seed) for seed in SEEDS]
    alone = [_train_alone(build, seed, b, val_x) for build, seed, b in zip(CASES["vae-mlp-bce"], SEEDS, batches)]

    def poison(stack, step):  # member 1's weights become NaN before step 2: a run that diverged
        if step == 2:
            with torch.no_grad():
                stack.model.fc_mu.weight[1].fill_(math.nan)

    stack = _stack(CASES["vae-mlp-bce"], SEEDS)
    stacked_steps = _train_stacked(stack, torch.stack(batches), poison)
    assert stack.alive.tolist() == [True, False, True]
    for member in (0, 2):
        steps, weights, _ = alone[member]
        _assert_member_equals_alone(stack, stacked_steps, member, steps, weights)
    losses, grads = stacked_steps[2]
    assert torch.isnan(losses["loss"][1])  # reported as it is, for the member's run to fail on
    assert all(torch.count_nonzero(g) == 0 for g in grads[1].values())
    # Only what was poisoned is NaN: Adam got zero gradients for the dead member, not NaN ones.
    dead = stack.member_state_dict(1)
    assert all(torch.isfinite(w).all() for name, w in dead.items() if name != "fc_mu.weight")


def test_a_stopped_member_gets_no_gradient():
    stack = _stack(CASES["vae-mlp-bce"][:2], SEEDS[:2])
    stack.stop(0)
    stack.objective(stack.losses(_batches(0)[0])).backward()
    stack.mask_dead_gradients()
    assert all(torch.count_nonzero(g) == 0 for g in stack.member_gradients(0).values())
    assert all(torch.count_nonzero(g) > 0 for name, g in stack.member_gradients(1).items() if name.endswith("bias"))


def test_gradient_clipping_takes_each_members_own_norm():
    x = _batches(0)[0]
    stack = _stack(CASES["vae-mlp-bce"], SEEDS)
    stack.objective(stack.losses(x)).backward()
    max_norm = 1.0
    stack.clip_grad_norm_per_member(max_norm)
    for n, (settings, seed) in enumerate(zip(SETTINGS, SEEDS)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            single = _builder(settings)()
            single.losses(x)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(single.parameters(), max_norm)
        for name, p in single.named_parameters():
            torch.testing.assert_close(stack.member_gradients(n)[name], p.grad, **CLOSE)


# ---------------------------------------------------------------- what does not stack


@pytest.mark.parametrize("other, says", [
    (lambda: VAE(IMAGE, LATENT, [8], recon_loss="bce"), "other weights"),  # another width
    (lambda: VAE(IMAGE, LATENT, HIDDEN, recon_loss="mse"), "likelihood.kind"),
    (lambda: VAE(IMAGE, LATENT, HIDDEN, recon_loss="bce", objective="iwae", k=2), "k, objective"),
    (lambda: VAE(IMAGE, LATENT, HIDDEN, recon_loss="gaussian"), "other weights"),  # a learned σ: a parameter
    (lambda: AE(IMAGE, LATENT, HIDDEN, recon_loss="bce"), "is a AE"),
    (lambda: VAE(IMAGE, LATENT, [4, 4], net="conv", recon_loss="bce"), "other weights"),
], ids=["width", "likelihood", "iwae", "learned-sigma", "ae", "conv"])
def test_members_that_cannot_stack_are_refused(other, says):
    with pytest.raises(ValueError, match=says):
        Stack([_builder({})(), other()])


def test_a_setting_that_the_stack_cannot_hold_per_member_is_refused_not_dropped():
    """SparseAE's l1_weight is a Python number: member 0's would serve every member, so the stack refuses."""
    with pytest.raises(ValueError, match=r"differs from member 0 in l1_weight; .* \(none\)"):
        Stack([_builder({}, SparseAE)(), _builder(dict(l1_weight=0.5), SparseAE)()])


def test_a_member_loads_back_and_its_optimizer_state_is_its_own_adam():
    """load_member_state_dict inverts member_state_dict; member_optimizer_state is the Adam of member n alone."""
    settings, seeds = SETTINGS[:2], SEEDS[:2]
    stack = _stack(CASES["vae-mlp-bce"][:2], seeds)
    alone = [member_from_seed(_builder(s), seed)[0] for s, seed in zip(settings, seeds)]
    x = torch.rand(2, BATCH, *IMAGE, generator=torch.Generator().manual_seed(5))
    stacked_adam = _adam(stack.parameters())
    stacked_adam.zero_grad()
    stack.objective(stack.losses(x)).backward()
    stacked_adam.step()
    for n, model in enumerate(alone):
        model.load_state_dict(stack.member_state_dict(n))
        own = stack.member_optimizer_state(n, stacked_adam)
        names = list(model.state_dict())
        assert own["param_groups"][0]["params"] == list(range(len(names)))
        for i, name in enumerate(names):
            assert own["state"][i]["exp_avg"].shape == model.state_dict()[name].shape
        torch.optim.Adam(model.parameters(), lr=LR, fused=True).load_state_dict(own)  # loads as a single Adam
    before = stack.member_state_dict(0)
    stack.load_member_state_dict(0, alone[1].state_dict())
    for name, value in alone[1].state_dict().items():
        assert torch.equal(stack.member_state_dict(0)[name], value)
    stack.load_member_state_dict(0, before)
    assert all(torch.equal(stack.member_state_dict(0)[k], v) for k, v in before.items())


# ---------------------------------------------------------------- a learning rate per member


def test_stacked_adam_takes_each_members_torch_adam_step_at_its_own_rate():
    """Each member's slice moves as torch.optim.Adam (fused, as make_optimizer builds it) moves the
    member's own tensors at its own rate, also when a schedule changes the rates between steps."""
    rates = [1e-3, 3e-3, 1e-2]
    shapes = [(3, 5, 4), (3, 4)]
    generator = torch.Generator().manual_seed(0)
    stacked = [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]
    alone = [[p[n].detach().clone().requires_grad_() for p in stacked] for n in range(len(rates))]
    optimizer = StackedAdam(stacked, rates)
    own = [torch.optim.Adam(params, lr=rate, fused=True) for params, rate in zip(alone, rates)]
    worst = 0.0
    for step in range(6):
        # Gradients of several magnitudes, and a member-1 gradient of 0 (a dead member's) at step 2.
        grads = [torch.randn(shape, generator=generator) * 10.0 ** torch.randint(-4, 2, shape, generator=generator)
                 for shape in shapes]
        if step == 2:
            for g in grads:
                g[1] = 0
        if step == 3:  # a schedule: every member's rate changes, each its own way
            new = [rate * factor for rate, factor in zip(rates, (0.5, 0.1, 2.0))]
            optimizer.param_groups[0]["lr"] = new
            for adam, rate in zip(own, new):
                adam.param_groups[0]["lr"] = rate
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        for n, params in enumerate(alone):
            for p, g in zip(params, grads):
                p.grad = g[n].clone()
        optimizer.step()
        for adam in own:
            adam.step()
        for n, params in enumerate(alone):
            for p, single in zip(stacked, params):
                torch.testing.assert_close(p[n], single, rtol=1e-6, atol=1e-7, msg=lambda m: f"member {n}, step {step}: {m}")
                worst = max(worst, float((p[n] - single).detach().abs().max()))
    for n, adam in enumerate(own):
        for p, single in zip(stacked, alone[n]):
            state, single_state = optimizer.state[p], adam.state[single]
            assert set(state) == set(single_state) == {"step", "exp_avg", "exp_avg_sq"}
            assert torch.equal(state["step"], single_state["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state[key][n], single_state[key], rtol=1e-6, atol=0)
    print(f"\nStackedAdam against torch.optim.Adam per member, 6 steps: max |Δθ| {worst:.1e}")


def test_a_members_optimizer_state_has_its_own_learning_rate():
    stack = _stack(CASES["vae-mlp-bce"][:2], SEEDS[:2])
    rates = [LR, 3 * LR]
    optimizer = StackedAdam(stack.parameters(), rates, member_defaults=_adam([torch.zeros(1, requires_grad=True)]).defaults)
    stack.objective(stack.losses(_batches(0)[0])).backward()
    optimizer.step()
    for n, rate in enumerate(rates):
        own = stack.member_optimizer_state(n, optimizer)
        model = _builder(SETTINGS[n])()
        single = torch.optim.Adam(model.parameters(), lr=rate, fused=True)
        expected = {k: v for k, v in single.param_groups[0].items() if k != "params"}
        assert {k: v for k, v in own["param_groups"][0].items() if k != "params"} == expected
        single.load_state_dict(own)  # loads as the member's own Adam, at its own rate
        assert single.param_groups[0]["lr"] == rate and single.param_groups[0]["fused"]
        assert int(own["state"][0]["step"]) == 1
    with pytest.raises(ValueError, match="leading dimension of 3 members"):
        StackedAdam(stack.parameters(), [LR] * 3)
