"""The optimiser, its learning-rate schedule and gradient clipping.

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

import math
from typing import Any, Optional

import torch

LR_SCHEDULERS = ("constant", "cosine", "plateau")


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
