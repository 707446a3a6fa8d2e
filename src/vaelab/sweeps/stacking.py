"""Which jobs of a sweep can train as one stacked model (issue 14), and how they are grouped.

Jobs share a stack when their composed configs differ only in per-member settings: the seed
(each member its own initialisation, data order and noise), β, free bits, the KL schedule's
settings and the learning rate model.lr (each member its own Adam rate, following the shared
optimizer.scheduler from its own base rate). Everything else (the architecture, the data, the
batch size, the optimiser's schedule, the trainer) must be equal; jobs that differ there form
stacks of their own.
A job that cannot stack at all (`why_not_stackable`) runs alone, as without stacking.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from vaelab.settings import flatten, is_setting

# Per-member settings: the keys in which the members of one stack may differ.
MEMBER_KEYS = ("seed", "model.beta", "model.alpha", "model.gamma", "model.free_bits", "model.kl_schedule", "model.kl_period",
               "model.kl_period_unit", "model.kl_cycles", "model.kl_ratio", "model.kl_capacity", "model.lr")
# The data module that gives a stack's training batches one per member (ImageDataModule.for_members).
STACKED_DATA = "vaelab.data.ImageDataModule"


def stack_key(cfg: DictConfig) -> str:
    """Equal for jobs that can share one stack: their configs less the per-member settings and the
    keys that do not define what trains (vaelab.settings.NOT_SETTINGS; the stack's logging interval
    and progress bar are its first member's)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    shared = {k: v for k, v in flatten(container).items() if is_setting(k, also_not=MEMBER_KEYS)}
    return json.dumps(shared, sort_keys=True, default=str)


def why_not_stackable(cfg: DictConfig) -> Optional[str]:
    """Why this job must train alone, or None when it can be a member of a stack. Every model type,
    network, objective and likelihood stacks (models/stack.py); what cannot is said here."""
    data, trainer = cfg.data, cfg.trainer
    if cfg.get("ckpt_path"):
        return "ckpt_path: a resumed run trains alone"
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if devices not in (1, "1", [0]) or nodes not in (1, None):
        return f"trainer.devices={devices}: a stack trains on one device"
    target = data.get("_target_")
    if target != STACKED_DATA:
        return f"data reads with {target}: a stack reads its data with {STACKED_DATA}"
    return None


def _unresolve(node: Any, output_dir: str) -> Any:
    """`node` with the job's run directory written as the interpolation it was resolved from."""
    if isinstance(node, dict):
        return {k: _unresolve(v, output_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_unresolve(v, output_dir) for v in node]
    if isinstance(node, str) and output_dir in node:
        return node.replace(output_dir, "${paths.output_dir}")
    return node


def resolved_stack_key(cfg: DictConfig) -> str:
    """`stack_key` of a resolved job config: the values resolved from the job's own run directory
    (trainer.default_root_dir, the callbacks' dirpath, ...) do not count."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return stack_key(OmegaConf.create(_unresolve(container, str(cfg.paths.output_dir))))


def check_stack(cfgs: Sequence[DictConfig]) -> None:
    """ValueError unless the resolved job configs `cfgs` can train as one stack."""
    if len(cfgs) < 2:
        raise ValueError(f"a stack needs at least 2 jobs, not {len(cfgs)}")
    for i, cfg in enumerate(cfgs):
        reason = why_not_stackable(cfg)
        if reason is not None:
            raise ValueError(f"job {i} cannot be a member of a stack: {reason}")
    key = resolved_stack_key(cfgs[0])
    differ = [i for i, cfg in enumerate(cfgs) if resolved_stack_key(cfg) != key]
    if differ:
        raise ValueError(f"jobs {differ} differ from job 0 in more than the per-member settings "
                         f"(vaelab.sweeps.stacking.MEMBER_KEYS): they cannot share a stack")
    dirs = [str(Path(cfg.paths.output_dir).resolve()) for cfg in cfgs]
    if len(set(dirs)) != len(dirs):
        raise ValueError("every member needs a run directory of its own (paths.output_dir)")


def group_jobs(cfgs: list[DictConfig]) -> tuple[list[list[int]], dict[int, str]]:
    """Stacks of job indices (in job order, each of 2 or more jobs) and, for each job that trains
    alone, why: not stackable, or no other job with the same settings."""
    stacks: dict[str, list[int]] = {}
    alone: dict[int, str] = {}
    for i, cfg in enumerate(cfgs):
        reason = why_not_stackable(cfg)
        if reason is not None:
            alone[i] = reason
        else:
            stacks.setdefault(stack_key(cfg), []).append(i)
    groups = []
    for members in stacks.values():
        if len(members) == 1:
            alone[members[0]] = "no other job differs from it only in seed, β, free bits, the KL schedule or model.lr"
        else:
            groups.append(members)
    return groups, alone
