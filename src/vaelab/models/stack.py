"""N models of one type and architecture trained as one nn.Module: a whole β × seed study in one step.

A stack runs its members' own code. It holds one copy of the member's module (`model`) whose
every parameter and buffer has a leading dimension N (torch.func.stack_module_state: member n's
weights are `{name: value[n]}`, under the names of the member's own state_dict), and computes

    losses = vmap(member n ↦ functional_call(model, weights[n], x_n, ε_n).losses)      each term (N,)
    objective = Σ_n alive_n · loss_n

Nothing in the model's code mixes members, so ∂objective/∂θ_n = ∂loss_n/∂θ_n: each member's
gradient is the one it would get alone, and an elementwise optimiser (Adam) over the stacked
parameters takes the N steps that N optimisers would. Clipping by norm is not elementwise: use
`clip_grad_norm_per_member`. Settings that differ between members (a VAE's β, free bits, KL
schedule: the model type's `per_member`) reach the loss as buffers, so the one code path reads
each member's own value; every other setting must be equal (`Stack` refuses members that differ).

    stack = Stack([VAE(...), VAE(...)], generators=[g0, g1])
    losses = stack.losses(x)                  # {"recon", "kl", "loss", "nelbo"}: each (N,)
    stack.objective(losses).backward()        # marks members whose loss is not finite as dead
    stack.mask_dead_gradients()               # their gradients → 0: Adam cannot spread a NaN
    VAE(...).load_state_dict(stack.member_state_dict(1))   # member 1 as a single model again

Images are (B, C, H, W), one batch shared by all members, or (N, B, C, H, W), a batch per member
(a single run's data order depends on its seed).

Equality with single runs (tests/test_stack.py shows it for every model type, network and
likelihood): `member_from_seed` builds a member as the single run with that seed builds its
model, and returns the generator that run draws its noise from; the stack draws member n's ε
(`noise_shape`) from generator n, in the order the single model draws from the global generator.
Losses and gradients then agree to float rounding (a batched matrix product sums in another
order than one product).
"""

import copy
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import nn

from vaelab.models.autoencoders import Autoencoder

IMAGE_DIMS = 4  # (B, C, H, W): a batch of images shared by all members


class _Losses(nn.Module):
    """`model.losses` as a module's forward: what torch.func.functional_call calls."""

    def __init__(self, model: Autoencoder):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, eps: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model.losses(x) if eps is None else self.model.losses(x, eps)


def member_from_seed(build: Callable[[], Autoencoder], seed: int,
                     device: torch.device | str = "cpu") -> tuple[Autoencoder, torch.Generator]:
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


def _host_settings(model: nn.Module) -> dict[str, Any]:
    """The plain (non-tensor) attributes of the model and its submodules, less its per-member settings."""
    per_member = set(getattr(type(model), "per_member", ()))
    settings = {}
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training" or isinstance(value, (torch.Tensor, nn.Module)):
                continue
            if prefix or key not in per_member:
                settings[f"{prefix}.{key}" if prefix else key] = value
    return settings


def _check_stackable(members: Sequence[nn.Module]) -> None:
    if not members:
        raise ValueError("a stack needs at least one member")
    first = members[0]

    def layout(m: nn.Module) -> dict[str, tuple]:
        return {name: (tuple(t.shape), t.dtype, t.device) for name, t in [*m.named_parameters(), *m.named_buffers()]}

    for i, member in enumerate(members[1:], start=1):
        if type(member) is not type(first):
            raise ValueError(f"member {i} is a {type(member).__name__}, member 0 a {type(first).__name__}: "
                             f"a stack holds one model type")
        if layout(member) != layout(first):
            raise ValueError(f"member {i} has other weights (names, shapes, dtype or device) than member 0: "
                             f"only members of one architecture stack")
        ours, theirs = _host_settings(member), _host_settings(first)
        differ = sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
        if differ:
            allowed = ", ".join(getattr(type(first), "per_member", ())) or "none"
            raise ValueError(f"member {i} differs from member 0 in {', '.join(differ)}; the members of a stack may "
                             f"differ only in their weights and in the settings a stack holds per member ({allowed})")


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put `value` in place of `module`'s parameter or buffer `name` (dotted), keeping its registration
    (nn.Module's __setattr__ replaces a registered name in place: its order, a buffer's persistence)."""
    owner_name, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner_name), leaf, value)


def _linear_weights(module: nn.Module) -> set[str]:
    """The names of the nn.Linear weights in `module`."""
    return {f"{name}.weight" if name else "weight" for name, m in module.named_modules() if isinstance(m, nn.Linear)}


class Stack(nn.Module):
    """N members of one model type and architecture, trained together (see the module docstring)."""

    def __init__(self, members: Sequence[Autoencoder], generators: Optional[Sequence[torch.Generator]] = None):
        """`members` keep their Python settings (`advance` asks each for its schedule's values);
        the stack copies their weights. `generators`: one per member, the source of its noise;
        None: one draw from the global generator serves all (reproducible, not the single runs' noise)."""
        super().__init__()
        _check_stackable(members)
        if generators is not None and len(generators) != len(members):
            raise ValueError(f"{len(members)} members need {len(members)} noise generators, not {len(generators)}")
        self.n = len(members)
        self.members = list(members)  # not submodules: their weights are not the stack's
        self.terms = type(members[0]).terms
        self.stage_terms = type(members[0]).stage_terms
        self.generators = list(generators) if generators is not None else None
        params, buffers = torch.func.stack_module_state(list(members))
        self.model = copy.deepcopy(members[0])
        # nn.Linear's weights (out, in) are held as (N, in, out): F.linear's batched product then reads
        # them, and writes their gradients, in memory order (no transposing copy of every gradient at
        # every step; on 2 CPU cores a stack of 4 MLP VAEs steps ~1.2× faster). `_weights` hands the
        # model its (N, out, in) view; member_* give each member's tensors in its own layout.
        self._transposed = _linear_weights(self.model)
        for name, value in params.items():
            _replace(self.model, name, nn.Parameter(value.transpose(1, 2).contiguous() if name in self._transposed
                                                    else value))
        for name, value in buffers.items():
            _replace(self.model, name, value)
        self._losses = [_Losses(self.model)]  # in a list: not a second path to the same weights
        # Saved: a resumed stack keeps its dead members dead.
        self.register_buffer("alive", torch.ones(self.n, dtype=torch.bool))

    # -- members as single models -----------------------------------------------------------------
    def _member_layout(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A member's slice of stacked tensor `name` in the member's own layout (a view)."""
        return t.T if name in self._transposed else t

    def member_state_dict(self, n: int) -> dict[str, torch.Tensor]:
        """Member n's weights as a state_dict that a single model of the members' architecture loads (strict)."""
        return {name: self._member_layout(name, value[n]).detach().clone(memory_format=torch.contiguous_format)
                for name, value in self.model.state_dict().items()}

    @torch.no_grad()
    def load_member_state_dict(self, n: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Member n's weights from a single model's state_dict (the inverse of `member_state_dict`); exact copies."""
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state_dict))
        if missing:
            raise ValueError(f"the state_dict lacks {', '.join(missing)}")
        for name, value in own.items():
            self._member_layout(name, value[n]).copy_(state_dict[name])

    def member_optimizer_state(self, n: int, optimizer: torch.optim.Optimizer) -> dict:
        """Member n's slice of an optimiser over this stack's parameters (one param group: the fused
        Adam, or a StackedAdam), as `optimizer.state_dict()` of the same optimiser over member n alone:
        its parameters numbered in the member's order, per-parameter tensors sliced (in the member's
        layout), scalars (Adam's step) as they are; the param group as member n's own optimiser has
        it (`member_param_group(n)` where the optimiser has one: a StackedAdam's own rate)."""
        if len(optimizer.param_groups) != 1:
            raise ValueError("member_optimizer_state takes an optimiser with one parameter group")
        named = list(self.model.named_parameters())
        state = {}
        for i, (name, p) in enumerate(named):
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0:
                    value = self._member_layout(name, value[n]).clone(memory_format=torch.contiguous_format)
                elif torch.is_tensor(value):
                    value = value.clone()
                state.setdefault(i, {})[key] = value
        if hasattr(optimizer, "member_param_group"):
            group = optimizer.member_param_group(n)
        else:
            group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(named)))}]}

    def member(self, n: int) -> Autoencoder:
        """Member n as a single model holding its current weights (on the stack's device)."""
        member = self.members[n]
        device = next(self.model.parameters()).device
        member.to(device).load_state_dict(self.member_state_dict(n))
        return member.train(self.training)

    def member_gradients(self, n: int) -> dict[str, Optional[torch.Tensor]]:
        """Member n's gradients under the names of `member_state_dict` (None before any backward)."""
        return {name: None if p.grad is None else self._member_layout(name, p.grad[n]).clone()
                for name, p in self.model.named_parameters()}

    # -- the losses -------------------------------------------------------------------------------
    def noise(self, batch_size: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """(N, *noise_shape) standard normal noise for a batch: member n's from its own generator."""
        shape = self.model.noise_shape(batch_size)
        if shape is None:
            return None
        if self.generators is None:
            return torch.randn((self.n, *shape), dtype=like.dtype, device=like.device)
        # Drawn where each generator lives (the training device, as train.py builds them), then moved.
        return torch.stack([torch.randn(shape, generator=g, dtype=like.dtype, device=g.device).to(like.device)
                            for g in self.generators])

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's terms for images `x`, (B, C, H, W) shared or (N, B, C, H, W); each term (N,)."""
        per_member = x.dim() == IMAGE_DIMS + 1
        if per_member and x.shape[0] != self.n or x.dim() not in (IMAGE_DIMS, IMAGE_DIMS + 1):
            raise ValueError(f"expected images (B, C, H, W) or ({self.n}, B, C, H, W) for {self.n} members, "
                             f"not {tuple(x.shape)}")
        eps = self.noise(x.shape[-IMAGE_DIMS], x)
        weights = ({f"model.{k}": v.transpose(1, 2) if k in self._transposed else v
                    for k, v in self.model.named_parameters()},
                   {f"model.{k}": v for k, v in self.model.named_buffers()})
        call = self._losses[0]

        def member_losses(weights, x, eps):
            return torch.func.functional_call(call, weights, (x, eps))

        return torch.func.vmap(member_losses, in_dims=(0, 0 if per_member else None, None if eps is None else 0))(
            weights, x, eps)

    # -- the schedule -----------------------------------------------------------------------------
    def scheduled_values(self, step: int, steps_per_epoch: int) -> list[dict[str, float]]:
        """Each member's `scheduled_values`."""
        return [m.scheduled_values(step, steps_per_epoch) for m in self.members]

    @property
    def schedule_varies(self) -> bool:
        return any(m.schedule_varies for m in self.members)

    @torch.no_grad()
    def advance(self, step: int, steps_per_epoch: int) -> None:
        """Each member's `advance`, then its buffers into the stack's (in place: a CUDA graph reads them)."""
        for m in self.members:
            m.advance(step, steps_per_epoch)
        self._copy_member_buffers()

    @torch.no_grad()
    def use_train_size(self, n: int) -> None:
        """Each member's `use_train_size`, then its buffers into the stack's."""
        for m in self.members:
            m.use_train_size(n)
        self._copy_member_buffers()

    def _copy_member_buffers(self) -> None:
        for name, value in self.model.named_buffers():
            value.copy_(torch.stack([m.get_buffer(name).to(value.device) for m in self.members]))

    # -- training together --------------------------------------------------------------------------
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

    def _per_member_view(self, t: torch.Tensor) -> torch.Tensor:
        return self.alive.view(-1, *[1] * (t.dim() - 1))

    @torch.no_grad()
    def mask_dead_gradients(self) -> None:
        """Set the gradients of dead members to 0, after backward and before the optimiser step.

        A dead member's loss gets no gradient, but going back through its NaN activations gives
        0·NaN = NaN in its weights' gradients; Adam would then make its weights and moments NaN.
        The other members' gradients never see them: no operation mixes members.
        """
        # On the CPU, reading `alive` costs nothing and skips ~5 % of a step while all live; on a GPU
        # it would wait for the step (and a captured graph cannot branch), so there the mask always runs.
        if self.alive.device.type == "cpu" and bool(self.alive.all()):
            return
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.masked_fill_(~self._per_member_view(p.grad), 0.0)

    @torch.no_grad()
    def clip_grad_norm_per_member(self, max_norm: float) -> torch.Tensor:
        """torch's `clip_grad_norm_` for each member alone: g_n ← g_n · min(1, max_norm / (‖g_n‖₂ + 1e-6)),
        ‖g_n‖₂ over all of member n's parameters. Returns the (N,) norms before clipping; no host sync."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norms = torch.stack([g.flatten(1).pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
        return norms
