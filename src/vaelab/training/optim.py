"""The optimiser, its learning-rate schedule and gradient clipping; the optimiser of a stack of models.

`optimizer.scheduler` (conf/optimizer/default.yaml), for optimiser step t of T in all (0-based),
base rate lr = model.lr, W = optimizer.warmup_steps, floor m = optimizer.min_lr:

    constant  lr(t) = lr
    cosine    lr(t) = lr · (t + 1) / W                                   for t < W (linear warm-up)
              lr(t) = m + (lr − m) · ½ (1 + cos(π (t − W) / (T − W)))    after (Loshchilov & Hutter 2017)
    plateau   lr ← max(m, lr · factor) after `patience` validations without a better `monitor`
              (torch's ReduceLROnPlateau, stepped once per validation)

On the CUDA-graph step the rate is a device tensor that the scheduler fills in place (torch's
schedulers do that for tensor rates; Adam reads it when capturable): the graph sees each new value.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any, Optional

import torch

from vaelab.catalog import LR_SCHEDULERS


def make_optimizer(parameters, lr: float, device: torch.device, capturable: bool = False,
                   tensor_lr: bool = False) -> torch.optim.Optimizer:
    """Adam; the fused kernel where it exists (CPU and CUDA) updates all tensors in one launch.

    `tensor_lr`: the rate as a device tensor, for a schedule that a captured CUDA graph must follow.
    """
    fused = device.type in ("cpu", "cuda")
    rate = torch.tensor(float(lr), device=device) if tensor_lr else lr
    return torch.optim.Adam(parameters, lr=rate, fused=fused, capturable=capturable)


def cosine_lr_factor(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """lr(t) / lr of the cosine schedule with linear warm-up (see the module docstring)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_lr_scheduler(optimizer: torch.optim.Optimizer, settings: dict[str, Any], lr: float,
                      total_steps: float) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """The scheduler that `settings` (the `optimizer` config) names; None for a constant rate."""
    kind = settings.get("scheduler", "constant")
    if kind == "constant":
        return None
    min_lr = float(settings.get("min_lr", 0.0))
    if kind == "cosine":
        warmup, total, floor = int(settings.get("warmup_steps", 0)), int(total_steps), min_lr / lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: cosine_lr_factor(t, warmup, total, floor))
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=float(settings.get("factor", 0.5)),
                                                          patience=int(settings.get("patience", 2)), min_lr=min_lr)
    raise ValueError(f"optimizer.scheduler={kind} is not one of {', '.join(LR_SCHEDULERS)}")


def lr_of_step(optimizer: torch.optim.Optimizer, scheduler, lr: float, step: int) -> float:
    """The rate that optimiser step `step` was taken with, for the log; base rate `lr`.

    Read from the closed form where there is one: the optimiser's own value may be a device tensor.
    """
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return lr * scheduler.lr_lambdas[0](step)
    return float(optimizer.param_groups[0]["lr"])  # constant, or plateau (changed between epochs only)


def steps_per_batch(scheduler) -> bool:
    """Whether the scheduler is stepped after every optimiser step (else once per validation)."""
    return scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def clip_gradients(parameters: list[torch.nn.Parameter], value: Optional[float], algorithm: str = "norm") -> None:
    """Lightning's `trainer.gradient_clip_val` / `gradient_clip_algorithm`, done here because manual
    optimisation (needed for the graph step) makes Lightning refuse them.

    norm:  g ← g · min(1, value / ‖g‖₂), ‖g‖₂ over all parameters together
    value: g ← clamp(g, −value, value)
    Device tensors only, no host sync: it runs inside a captured CUDA graph too.
    """
    if not value:
        return
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(parameters, value, foreach=True)
    else:
        torch.nn.utils.clip_grad_norm_(parameters, value, foreach=True)


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
    "exp_avg_sq"), so that `Stack.member_optimizer_state` gives member n's own Adam state.
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
        # (device, dtype) → (rates, their (N,) tensor): one tensor, updated in place when the rates change
        # (between steps, outside a captured CUDA graph, which reads it at every replay).
        self._rates: dict[tuple, tuple[list[float], torch.Tensor]] = {}

    def member_param_group(self, n: int) -> dict:
        """Member n's param group as its own torch.optim.Adam has it (less "params"): its own rate."""
        group = self.param_groups[0]
        own = {k: (v[n] if k in self.PER_MEMBER else v) for k, v in group.items() if k != "params"}
        return {**self.member_defaults, **own}

    def _rate(self, rates: Sequence[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`rates` as an (N,) tensor on `device`: the same tensor at every step, written only when they
        changed (a copy from the host, without a sync)."""
        rates = [float(r) for r in rates]
        cached = self._rates.get((device, dtype))
        if cached is None:
            cached = self._rates[(device, dtype)] = (rates, torch.tensor(rates, dtype=dtype, device=device))
        elif cached[0] != rates:
            cached[1].copy_(torch.tensor(rates, dtype=dtype), non_blocking=True)
            cached = self._rates[(device, dtype)] = (rates, cached[1])
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


class MemberRates:
    """The learning rates of a StackedAdam, whose member n gets at optimiser step t the rate its single
    run's schedule (`make_lr_scheduler`) gives it from its own base rate lr_n:

        constant  lr_n(t) = lr_n
        cosine    lr_n(t) = lr_n · cosine_lr_factor(t, W, T, min_lr / lr_n)     (= m + (lr_n − m)·½(1 + cos …))
        plateau   lr_n ← max(m, lr_n · factor) after `patience` validations without a better member-n value

    computed as that run's scheduler computes it (the cosine: the same float products; plateau: a
    torch ReduceLROnPlateau per member, over a stand-in optimiser at the member's rate), and kept in
    the optimiser's param group: "lr" (and "initial_lr" under a cosine) as lists of N. `step()`
    follows each optimiser step, `validated(values)` each validation (plateau); `member_state_dicts(n)`
    is what member n's own scheduler would save (none for a constant rate)."""

    def __init__(self, optimizer: StackedAdam, settings: dict[str, Any], lrs: Sequence[float], total_steps: int):
        self.kind = settings.get("scheduler", "constant")
        self.optimizer, self.lrs, self.last_epoch = optimizer, [float(r) for r in lrs], 0
        self._template: Optional[dict[str, Any]] = None
        self.factors: Optional[list] = None
        self.plateaus: Optional[list[torch.optim.lr_scheduler.ReduceLROnPlateau]] = None
        if self.kind == "cosine":
            warmup, floor = int(settings.get("warmup_steps", 0)), float(settings.get("min_lr", 0.0))
            self.factors = [functools.partial(cosine_lr_factor, warmup_steps=warmup, total_steps=int(total_steps),
                                              min_factor=floor / lr) for lr in self.lrs]
            # torch's bookkeeping keys of a LambdaLR just built (this torch version's), filled in per member.
            stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            self._template = torch.optim.lr_scheduler.LambdaLR(stand_in, lambda t: 1.0).state_dict()
            optimizer.param_groups[0]["initial_lr"] = list(self.lrs)
        elif self.kind == "plateau":
            self.plateaus = [make_lr_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr), settings, lr,
                                               total_steps=0) for lr in self.lrs]
        elif self.kind != "constant":
            raise ValueError(f"optimizer.scheduler={self.kind} is not one of {', '.join(LR_SCHEDULERS)}")
        self._set()  # the rates of step 0, as a LambdaLR sets them when it is built

    def rate(self, n: int, step: int) -> float:
        """Member n's rate at optimiser step `step` (what its single run's lr_of_step gives)."""
        if self.plateaus is not None:
            return float(self.plateaus[n].optimizer.param_groups[0]["lr"])
        return self.lrs[n] if self.factors is None else self.lrs[n] * self.factors[n](step)

    def _set(self) -> None:
        self.optimizer.param_groups[0]["lr"] = [self.rate(n, self.last_epoch) for n in range(len(self.lrs))]

    def step(self) -> None:
        self.last_epoch += 1
        if self.factors is not None:  # a constant rate stays as it is, a plateau's changes at validations
            self._set()

    def validated(self, values: dict[int, float]) -> None:
        """After a validation: member n's monitored value `values[n]` (members that stopped left out)."""
        if self.plateaus is None:
            return
        for n, value in values.items():
            self.plateaus[n].step(value)
        self._set()

    def member_state_dicts(self, n: int) -> list[dict[str, Any]]:
        """The lr_schedulers entry of member n's single-run checkpoint: its scheduler's state, or []."""
        if self.plateaus is not None:
            return [self.plateaus[n].state_dict()]
        if self._template is None:
            return []
        return [{**self._template, "base_lrs": [self.lrs[n]], "last_epoch": self.last_epoch,
                 "_step_count": self.last_epoch + 1, "_last_lr": [self.rate(n, self.last_epoch)]}]
