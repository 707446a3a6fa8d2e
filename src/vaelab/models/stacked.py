"""N MLP VAEs of one architecture trained as one nn.Module: a whole β × seed study in one step.

Each member n keeps its own weights (every weight has a leading dimension N, and a layer is one
batched matrix product, `torch.baddbmm`), its own β, free bits and KL schedule, and its own
reparameterisation noise. What is optimised is the sum of the members' losses,

    objective = Σ_n alive_n · loss_n          (N,) per-member losses, each as `VAE.losses` reduces it

and nothing in the forward pass mixes members, so ∂objective/∂θ_n = ∂loss_n/∂θ_n: each member's
gradient is the one it would get alone. Adam is elementwise, so one Adam over the stacked
parameters takes exactly the N steps that N Adams would: torch's Adam when the members share a
learning rate, `StackedAdam` (a rate per member, torch's Adam step on each member's slice) when not.
Clipping by norm is not elementwise: use `clip_grad_norm_per_member`, not torch's, which would
take one norm over all members.

    stack = StackedVAE.from_members([VAE(...), VAE(...)])      # copies each member's weights
    losses = stack.losses(x)                  # {"recon", "kl", "loss", "nelbo"}: each (N,)
    stack.objective(losses).backward()        # marks members whose loss is not finite as dead
    stack.mask_dead_gradients()               # their gradients → 0: Adam cannot spread a NaN
    VAE(...).load_state_dict(stack.member_state_dict(1))   # member 1 as a single model again

Inputs are (B, C, H, W), one batch shared by all members, or (N, B, C, H, W), a batch per
member (a single run's data order depends on its seed, so members of different seeds see
different batches).

Equality with single runs (tests/test_stacked.py shows each, on the CPU):
- Initialisation: `from_members` copies the members' weights, so a member built after
  `torch.manual_seed(s)` starts where the single run with seed s starts (`member_from_seed`).
- Noise: with `generators` (one `torch.Generator` per member), member n draws its ε of shape
  (B, latent_dim) from its own generator, in the order a single VAE draws from the global one.
  `member_from_seed` returns the generator in the state the global one is in right after the
  single model is built; a single run that draws nothing else in between (no sanity-check
  validation, no dynamic binarisation from the global generator, no CUDA-graph warm-up) then
  draws the same ε. Without `generators`, one (N, B, latent_dim) draw from the global generator
  serves all members: reproducible, but not the single runs' noise.
- Losses and gradients then agree to float rounding (baddbmm and addmm sum in other orders):
  after 4 Adam steps at lr 1e-2 on 6×6 images, losses within 3e-7 relative and weights within
  1e-6 in float32; within 3e-15 and 2e-16 in float64.

Not (yet) stackable: the IWAE objective, the learned σ of the gaussian likelihood (one parameter
per member), and conv networks.
"""

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import nn

from vaelab.models.autoencoders import LOGVAR_MAX, LOGVAR_MIN, VAE, AutoencoderOutput
from vaelab.models.losses import Likelihood, gaussian_kl_per_dim
from vaelab.models.mlp import MLPDecoder, MLPEncoder
from vaelab.models.schedules import KLSchedule


class StackedLinear(nn.Module):
    """N independent `nn.Linear(in_features, out_features)`: (N, B, in) → (N, B, out).

        y_n = x_n W_nᵀ + b_n     for each member n, W_n (out, in) being nn.Linear's weight

    `weight` holds the transposes W_nᵀ, (N, in, out): on the CPU, baddbmm with a contiguous
    right operand took 15–20% less time (forward + backward, N=16, 784→400) than with the
    transposed view of (N, out, in). `member_state_dict` gives nn.Linear's layout back.
    """

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))  # (N, in, out): W_nᵀ
        self.bias = nn.Parameter(torch.empty(n, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def extra_repr(self) -> str:
        n, in_features, out_features = self.weight.shape
        return f"n={n}, in_features={in_features}, out_features={out_features}"


def _linears(module: nn.Module, prefix: str) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear layers of `module` in forward order, with their names in the member's state_dict."""
    return [(f"{prefix}.{name}", m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def member_from_seed(build: Callable[[], VAE], seed: int,
                     device: torch.device | str = "cpu") -> tuple[VAE, torch.Generator]:
    """The model `build()` makes after `torch.manual_seed(seed)` (as a single run with that seed
    initialises it: on the CPU), moved to `device`, and the generator that run draws its noise
    from, in the state it is in once the model is built. The global generators are left as they were.

    On the CPU that is the global CPU generator, which the initialisation has advanced; on a
    CUDA device it is that device's generator, which the initialisation does not touch: still
    at `seed` (not checked on a GPU yet).
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build()
        if device.type == "cpu":
            generator = torch.Generator()
            generator.set_state(torch.get_rng_state())
        else:
            generator = torch.Generator(device).manual_seed(seed)
    return model.to(device), generator


class StackedVAE(nn.Module):
    """N MLP VAEs (models/autoencoders.py) of one architecture, trained together (see the module docstring).

    Every term is (N,): per member, the batch mean of per-image terms, each summed over pixels
    (recon) or latent dimensions (kl), as `VAE.losses` reduces them.
    """

    name = "stacked_vae"
    terms = VAE.terms  # logged per member as {stage}/{term}, in this order

    def __init__(self, n: int, image_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int],
                 likelihood: Likelihood, betas: Sequence[float], free_bits: Sequence[float],
                 schedules: Sequence[KLSchedule], generators: Optional[Sequence[torch.Generator]] = None):
        """Uninitialised weights: build it with `from_members`, which also checks that the members can stack."""
        super().__init__()
        if not len(betas) == len(free_bits) == len(schedules) == n:
            raise ValueError(f"{n} members need {n} betas, free bits and schedules, not "
                             f"{len(betas)}, {len(free_bits)} and {len(schedules)}")
        if generators is not None and len(generators) != n:
            raise ValueError(f"{n} members need {n} noise generators, not {len(generators)}")
        self.n, self.image_shape, self.latent_dim = n, tuple(image_shape), latent_dim
        pixels = math.prod(self.image_shape)
        encoder_sizes = [pixels, *hidden_dims]
        decoder_sizes = [latent_dim, *reversed(hidden_dims), pixels]
        # As MLPEncoder and MLPDecoder: a ReLU after every encoder layer and every decoder layer but the last.
        self.encoder = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(encoder_sizes[:-1], encoder_sizes[1:]))
        self.decoder = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(decoder_sizes[:-1], decoder_sizes[1:]))
        self.fc_mu = StackedLinear(n, hidden_dims[-1], latent_dim)
        self.fc_var = StackedLinear(n, hidden_dims[-1], latent_dim)
        self.likelihood = likelihood
        self.betas, self.schedules = tuple(float(b) for b in betas), tuple(schedules)
        self._member_names: Optional[list[str]] = None  # the members' state_dict keys: set by from_members
        self.generators = list(generators) if generators is not None else None
        # Settings, not state: rebuilt from the members, so not saved with the weights.
        self.register_buffer("beta", torch.tensor(self.betas), persistent=False)
        self.register_buffer("free_bits", torch.tensor([float(f) for f in free_bits]), persistent=False)
        self.register_buffer("is_capacity", torch.tensor([s.kind == "capacity" for s in schedules]), persistent=False)
        self.register_buffer("capacity", torch.tensor([s.capacity if s.kind == "capacity" else 0.0 for s in schedules]),
                             persistent=False)
        # β·f(t) and C(t) of each member while training, filled in place by `advance` (a replayed
        # CUDA graph reads the new values); they start at step 0's, as a single VAE's do.
        at_start = self.scheduled_values(0, 1)
        self.register_buffer("kl_weight", torch.tensor([v["beta"] for v in at_start]), persistent=False)
        self.register_buffer("kl_target", torch.tensor([v.get("capacity", 0.0) for v in at_start]), persistent=False)
        # Saved: a resumed stack keeps its dead members dead.
        self.register_buffer("alive", torch.ones(n, dtype=torch.bool))

    # -- building from single models and splitting back -------------------------------------------
    @classmethod
    def from_members(cls, members: Sequence[VAE],
                     generators: Optional[Sequence[torch.Generator]] = None) -> "StackedVAE":
        """A stack whose member n has the weights and settings of `members[n]`; ValueError if they cannot stack."""
        if not members:
            raise ValueError("a stack needs at least one member")
        first = members[0]
        _check_stackable(first)
        for i, member in enumerate(members[1:], start=1):
            _check_stackable(member)
            differ = [key for key, value in _architecture(member).items() if _architecture(first)[key] != value]
            if differ:
                raise ValueError(f"member {i} has another {' and '.join(differ)} than member 0; only members that "
                                 f"differ in β, free bits, the KL schedule and their weights stack")
        hidden_dims = [m.out_features for _, m in _linears(first.encoder, "encoder")]
        source = first.likelihood
        likelihood = Likelihood(source.kind, (source.low, source.low + source.scale), sigma=source.sigma or "learned")
        stack = cls(len(members), first.decoder.image_shape, first.latent_dim, hidden_dims, likelihood,
                    [m.beta for m in members], [m.free_bits for m in members], [m.schedule for m in members],
                    generators)
        stack._member_names = [name for name, _ in _member_parameters(first)]
        stack.to(device=first.fc_mu.weight.device, dtype=first.fc_mu.weight.dtype)
        with torch.no_grad():
            for n, member in enumerate(members):
                for (name, stacked), (_, own) in zip(stack._stacked_parameters(), _member_parameters(member)):
                    stacked[n].copy_(_to_stacked_layout(name, own))
        return stack

    def _stacked_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) in the order of `_member_parameters`: encoder, decoder, fc_mu, fc_var."""
        layers = [*self.encoder, *self.decoder, self.fc_mu, self.fc_var]
        return [(f"{i}.{kind}", getattr(layer, kind)) for i, layer in enumerate(layers) for kind in ("weight", "bias")]

    def _member_tensors(self, n: int, of: Callable[[nn.Parameter], Optional[torch.Tensor]]) -> dict:
        if self._member_names is None:
            raise ValueError("member names are known only for a stack built with StackedVAE.from_members")
        return {name: None if of(p) is None else
                _to_stacked_layout(stacked_name, of(p)[n]).detach().clone(memory_format=torch.contiguous_format)
                for name, (stacked_name, p) in zip(self._member_names, self._stacked_parameters())}

    def member_state_dict(self, n: int) -> dict[str, torch.Tensor]:
        """Member n's weights as a state_dict that a VAE of the members' architecture loads (strict)."""
        return self._member_tensors(n, lambda p: p)

    @torch.no_grad()
    def load_member_state_dict(self, n: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Member n's weights from a state_dict of a VAE of the members' architecture (the inverse of
        `member_state_dict`); exact copies."""
        if self._member_names is None:
            raise ValueError("member names are known only for a stack built with StackedVAE.from_members")
        missing = [name for name in self._member_names if name not in state_dict]
        if missing:
            raise ValueError(f"the state_dict lacks {', '.join(missing)}")
        for name, (stacked_name, p) in zip(self._member_names, self._stacked_parameters()):
            p[n].copy_(_to_stacked_layout(stacked_name, state_dict[name]))

    def member_optimizer_state(self, n: int, optimizer: torch.optim.Optimizer) -> dict:
        """Member n's slice of an optimiser over this stack's parameters (one param group, e.g. the
        fused Adam, or a StackedAdam), as `optimizer.state_dict()` of the same optimiser over member n
        alone: its parameters numbered in `member_state_dict`'s order, per-parameter tensors sliced,
        scalars (Adam's step) as they are; a StackedAdam's param group as member n's own Adam has it
        (`StackedAdam.member_param_group`: its own rate)."""
        if len(optimizer.param_groups) != 1:
            raise ValueError("member_optimizer_state takes an optimiser with one parameter group")
        state = {}
        for i, (name, p) in enumerate(self._stacked_parameters()):
            for key, value in optimizer.state.get(p, {}).items():
                if not torch.is_tensor(value):
                    own = value
                elif value.dim() == 0:
                    own = value.clone()
                else:
                    own = _to_stacked_layout(name, value[n]).clone(memory_format=torch.contiguous_format)
                state.setdefault(i, {})[key] = own
        if isinstance(optimizer, StackedAdam):
            group = optimizer.member_param_group(n)
        else:
            group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(self._stacked_parameters())))}]}

    def member_gradients(self, n: int) -> dict[str, Optional[torch.Tensor]]:
        """Member n's gradients under the names of `member_state_dict` (None before any backward)."""
        return self._member_tensors(n, lambda p: p.grad)

    # -- the network ------------------------------------------------------------------------------
    def _per_member(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W), shared, or (N, B, C, H, W), one batch per member → (N, B, C·H·W)."""
        if x.dim() == len(self.image_shape) + 1:
            return x.flatten(1).expand(self.n, -1, -1)
        if x.dim() == len(self.image_shape) + 2 and x.shape[0] == self.n:
            return x.flatten(2)
        raise ValueError(f"expected images (B, {', '.join(map(str, self.image_shape))}) or ({self.n}, B, ...) for "
                         f"{self.n} members, not {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of each member's q(z|x), each (N, B, latent_dim)."""
        h = self._per_member(x)
        for layer in self.encoder:
            h = torch.relu(layer(h))
        return self.fc_mu(h), self.fc_var(h).clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (N, B, latent_dim) → pixel logits (N, B, C, H, W)."""
        h = z
        for layer in self.decoder[:-1]:
            h = torch.relu(layer(h))
        return self.decoder[-1](h).view(self.n, -1, *self.image_shape)

    def noise(self, mu: torch.Tensor) -> torch.Tensor:
        """ε ~ N(0, I) like `mu` (N, B, latent_dim): member n's from its own generator, if there are generators."""
        if self.generators is None:
            return torch.randn_like(mu)
        return torch.stack([torch.randn(mu.shape[1:], generator=g, dtype=mu.dtype, device=mu.device)
                            for g in self.generators])

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Each member's output, every field with a leading dimension N."""
        mu, logvar = self.encode(x)
        z = mu + self.noise(mu) * torch.exp(0.5 * logvar)  # the reparameterisation, as VAE.reparameterize
        return AutoencoderOutput(logits=self.decode(z), z=z, mu=mu, logvar=logvar)

    # -- the schedule -----------------------------------------------------------------------------
    def scheduled_values(self, step: int, steps_per_epoch: int) -> list[dict[str, float]]:
        """Each member's settings at optimiser step `step`, as `VAE.scheduled_values` gives them."""
        values = []
        for beta, schedule in zip(self.betas, self.schedules):
            member = {"beta": beta * schedule.weight(step, steps_per_epoch)}
            if schedule.kind == "capacity":
                member["capacity"] = schedule.target(step, steps_per_epoch)
            values.append(member)
        return values

    @property
    def schedule_varies(self) -> bool:
        return any(s.varies for s in self.schedules)

    def advance(self, step: int, steps_per_epoch: int) -> None:
        """Set every member's β·f(t) and C(t) for optimiser step `step`, in place."""
        if self.schedule_varies:
            values = self.scheduled_values(step, steps_per_epoch)
            self.kl_weight.copy_(torch.tensor([v["beta"] for v in values], dtype=self.kl_weight.dtype))
            self.kl_target.copy_(torch.tensor([v.get("capacity", 0.0) for v in values], dtype=self.kl_target.dtype))

    def _kl_weight_and_target(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) β·f(t) and C(t) while training on a varying schedule; the values they end at otherwise."""
        if self.training and self.schedule_varies:
            return self.kl_weight, self.kl_target
        return self.beta, self.capacity

    # -- the objective ----------------------------------------------------------------------------
    def kl_penalty(self, kl_per_dim: torch.Tensor) -> torch.Tensor:
        """(N,) the KL part of each member's loss from the batch means of each dimension's KL, (N, latent_dim)."""
        # Free bits: each dimension's mean KL is at least λ_n; clamped only where λ_n > 0, as
        # VAE.kl_penalty does (a clamp at 0 would cut the gradient of a rounding-negative KL).
        floored = torch.clamp(kl_per_dim, min=self.free_bits.unsqueeze(1))
        kl = torch.where(self.free_bits.unsqueeze(1) > 0, floored, kl_per_dim).sum(dim=1)
        weight, target = self._kl_weight_and_target()
        return weight * torch.where(self.is_capacity, (kl - target).abs(), kl)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's terms for images `x` (see `_per_member`), each (N,), reduced as VAE.losses."""
        out = self(x)
        images = self._per_member(x).reshape(out.logits.shape)
        # Per image (N·B,): summed over pixels; then the batch mean of each member.
        error = self.likelihood.error(out.logits.flatten(0, 1), images.flatten(0, 1)).view(self.n, -1)
        return self.combine({"recon": error.mean(dim=1),
                             "kl_per_dim": gaussian_kl_per_dim(out.mu, out.logvar).mean(dim=1)})

    def combine(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All of `terms` (N,) from recon (N,) and kl_per_dim (N, latent_dim) or kl (N,), as VAE.combine."""
        recon = parts["recon"]
        kl_per_dim = parts.get("kl_per_dim")
        kl = kl_per_dim.sum(dim=1) if kl_per_dim is not None else parts["kl"]
        penalty = self.kl_penalty(kl_per_dim if kl_per_dim is not None else kl.unsqueeze(1))
        return {"recon": recon, "kl": kl, "loss": recon + penalty, "nelbo": recon + kl}

    def objective(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar to minimise: Σ_n loss_n over the members still alive.

        A member whose loss is not finite is marked dead here, in place and without a host sync
        (so a captured CUDA graph does it too), and stays out of this and every later step. Its
        loss enters through `torch.where`, not a product: 0·NaN would be NaN.
        """
        self.alive.logical_and_(torch.isfinite(losses["loss"]))
        return torch.where(self.alive, losses["loss"], 0.0).sum()

    def stop(self, n: int) -> None:
        """Take member n out of training (e.g. it diverged to a large but finite loss)."""
        self.alive[n] = False

    @torch.no_grad()
    def mask_dead_gradients(self) -> None:
        """Set the gradients of dead members to 0, after backward and before the optimiser step.

        A dead member's loss gets no gradient, but going back through its NaN activations gives
        0·NaN = NaN in its weights' gradients; Adam would then make its weights and moments NaN.
        The other members' gradients never see them: no operation mixes members.
        """
        for _, p in self._stacked_parameters():
            if p.grad is not None:
                p.grad.masked_fill_(~self.alive.view(-1, *[1] * (p.dim() - 1)), 0.0)

    @torch.no_grad()
    def clip_grad_norm_per_member(self, max_norm: float) -> torch.Tensor:
        """torch's `clip_grad_norm_` for each member alone: g_n ← g_n · min(1, max_norm / (‖g_n‖₂ + 1e-6)),
        ‖g_n‖₂ over all of member n's parameters. Returns the (N,) norms before clipping; no host sync."""
        grads = [p.grad for _, p in self._stacked_parameters() if p.grad is not None]
        norms = torch.stack([g.flatten(1).pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
        return norms

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """(N, n, C, H, W): n images (pixel means in [0, 1]) per member, decoded from codes drawn from the prior."""
        z = torch.randn(self.n, n, self.latent_dim, device=self.fc_mu.weight.device)
        return self.likelihood.means(self.decode(z))


class StackedAdam(torch.optim.Optimizer):
    """Adam over the parameters of a stack (each with a leading dimension N) with a learning rate
    per member: N torch Adams, one per member, each at its own rate.

    `lr` is a list of N rates, `param_groups[0]["lr"]` too (a schedule sets it, as torch's schedulers
    set a float); member n's slice of every parameter takes torch.optim.Adam's step at lr_n:

        t ← t + 1
        m ← β1 m + (1 − β1) g                       exp_avg
        v ← β2 v + (1 − β2) g²                      exp_avg_sq
        θ_n ← θ_n − lr_n / (1 − β1ᵗ) · m_n / (√v_n / √(1 − β2ᵗ) + ε)

    with torch's defaults β = (0.9, 0.999), ε = 1e-8, no weight decay or amsgrad. The state has
    torch's keys ("step": a 0-dim float32 tensor on the parameter's device, "exp_avg",
    "exp_avg_sq"), so that `StackedVAE.member_optimizer_state` gives member n's own Adam state.
    Device ops only (the rates travel to the device when they change, without a sync).
    `member_defaults`: the param group (less "params") of the Adam each member trains with alone,
    for `member_param_group`; torch.optim.Adam's with these betas and eps if None.
    """

    PER_MEMBER = ("lr", "initial_lr")  # param-group entries that hold one value per member

    def __init__(self, params, lr: Sequence[float], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 member_defaults: Optional[dict] = None):
        lrs = [float(r) for r in lr]
        if not lrs or min(lrs) <= 0:
            raise ValueError(f"StackedAdam needs a positive learning rate per member, not {lrs}")
        super().__init__(params, {"lr": lrs, "betas": tuple(betas), "eps": float(eps)})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() == 0 or p.shape[0] != len(lrs):
                    raise ValueError(f"a parameter of shape {tuple(p.shape)} has no leading dimension of "
                                     f"{len(lrs)} members")
        if member_defaults is None:
            like = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lrs[0], betas=betas, eps=eps)
            member_defaults = like.defaults
        self.member_defaults = {k: v for k, v in member_defaults.items() if k != "params"}
        self._rates: dict[tuple, tuple[list[float], torch.Tensor]] = {}  # (device, dtype) → (rates, (N,) tensor)

    def member_param_group(self, n: int) -> dict:
        """Member n's param group as its own torch.optim.Adam has it (less "params"): its own rate."""
        group = self.param_groups[0]
        own = {k: (v[n] if k in self.PER_MEMBER else v) for k, v in group.items() if k != "params"}
        return {**self.member_defaults, **own}

    def _rate(self, rates: Sequence[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`rates` as an (N,) tensor on `device`, made anew only when they changed (no host sync)."""
        rates = [float(r) for r in rates]
        cached = self._rates.get((device, dtype))
        if cached is None or cached[0] != rates:
            cached = self._rates[(device, dtype)] = (rates, torch.tensor(rates, dtype=dtype, device=device))
        return cached[1]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("StackedAdam does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            if len(group["lr"]) != params[0].shape[0]:
                raise ValueError(f"{len(group['lr'])} learning rates for {params[0].shape[0]} members")
            device, dtype = params[0].device, params[0].dtype
            if any(p.device != device or p.dtype != dtype for p in params):
                raise ValueError("StackedAdam takes the parameters of one device and dtype per param group")
            torch._foreach_add_(steps, 1)
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            # The bias corrections in float64, as torch's Adam takes them (in float32, 1 − β2 at t = 1
            # alone is 1.3e-5 off); cast to the parameters' dtype where they meet the moments.
            wide = torch.float32 if device.type == "mps" else torch.float64
            t = torch.stack(steps).to(wide)  # (P,): every parameter's step count
            bias_correction1 = 1 - beta1 ** t
            bias_correction2_sqrt = (1 - beta2 ** t).sqrt().to(dtype)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, list(bias_correction2_sqrt.unbind()))
            torch._foreach_add_(denom, group["eps"])
            updates = torch._foreach_div(exp_avgs, denom)
            # lr_n / (1 − β1ᵗ): (P, N), each row shaped to broadcast over its parameter's member slices.
            step_sizes = (self._rate(group["lr"], device, wide).unsqueeze(0) / bias_correction1.unsqueeze(1)).to(dtype)
            torch._foreach_mul_(updates, [size.view(-1, *[1] * (p.dim() - 1)) for size, p in zip(step_sizes, params)])
            torch._foreach_sub_(params, updates)
        return loss


def _to_stacked_layout(name: str, t: torch.Tensor) -> torch.Tensor:
    """A weight transposed (nn.Linear's (out, in) ↔ StackedLinear's (in, out)), a bias as it is; its own inverse."""
    return t.T if name.endswith("weight") else t


def _member_parameters(member: VAE) -> list[tuple[str, nn.Parameter]]:
    """A member's (name, parameter) in the order of `StackedVAE._stacked_parameters`."""
    layers = [*_linears(member.encoder, "encoder"), *_linears(member.decoder, "decoder"),
              ("fc_mu", member.fc_mu), ("fc_var", member.fc_var)]
    return [(f"{name}.{kind}", getattr(layer, kind)) for name, layer in layers for kind in ("weight", "bias")]


def _check_stackable(member: nn.Module) -> None:
    if type(member) is not VAE:
        raise ValueError(f"only VAEs stack (so far), not {type(member).__name__}")
    if not (isinstance(member.encoder, MLPEncoder) and isinstance(member.decoder, MLPDecoder)):
        raise ValueError("only the mlp network stacks (so far), not model.net=conv")
    if member.objective != "elbo":
        raise ValueError(f"only model.objective=elbo stacks (so far), not {member.objective}")
    if any(True for _ in member.likelihood.parameters()):
        raise ValueError(f"recon_loss={member.likelihood.kind} with a learned σ has a parameter of its own; "
                         f"it does not stack (so far)")
    names = {name for name, _ in member.named_parameters()}
    if names != {name for name, _ in _member_parameters(member)}:
        raise ValueError(f"the member has parameters that a stack does not hold: {sorted(names)}")


def _architecture(member: VAE) -> dict[str, tuple]:
    """What members must share to stack: the data's shape, the shapes of their weights, the likelihood."""
    likelihood = member.likelihood
    return {"image shape": tuple(member.decoder.image_shape),
            "network": tuple((name, tuple(p.shape)) for name, p in _member_parameters(member)),
            "likelihood": (likelihood.kind, likelihood.low, likelihood.scale, likelihood.sigma),
            "dtype or device": (member.fc_mu.weight.dtype, member.fc_mu.weight.device)}
