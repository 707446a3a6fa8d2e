"""`hydra/launcher=stacked`: the jobs of a sweep that can share a model train as one stack.

    python train.py -m model.beta=0.5,1,2,4,8 seed=0,1,2 hydra/launcher=stacked

The launcher composes every job's config as Hydra's basic launcher does, groups the jobs
(`vaelab.sweeps.stacking.group_jobs`: jobs that differ only in seed, β, free bits, the KL
schedule and the learning rate share a stack), logs the plan, and then

- gives every job of a stack what Hydra's `run_job` gives a job: its directory with `.hydra/`,
  its `train.log` (each member's log gets the stack's lines), the `on_job_start` and
  `on_job_end` callbacks (the sweep summary), and a JobReturn; and trains the stack in this
  process with `vaelab.tasks.train.train_stack`, which leaves each member's run directory
  as a single run leaves it, with `"stacked"` in its metrics.json;
- runs every other job through `run_job` as the basic launcher does, one after another.

A member that fails (a NaN loss) fails alone; an error of the whole stack fails its members,
each recorded in its metrics.json, and the sweep goes on.
"""

import copy
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, _save_config, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from vaelab.errors import RunInterrupted
from vaelab.sweeps.jobs import describe_error, override_tags, record_failure, sweep_group
from vaelab.sweeps.stacking import group_jobs

log = logging.getLogger("vaelab")


def compose_jobs(hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]],
                 initial_job_idx: int) -> list[DictConfig]:
    """Each job's full config (with its `hydra` node), numbered as the basic launcher numbers them."""
    configs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        configs.append(sweep_config)
    return configs


def describe_plan(configs: list[DictConfig], stacks: list[list[int]], alone: dict[int, str]) -> list[str]:
    """The lines that say how the jobs were grouped, before any trains."""
    def job(i: int) -> str:
        return f"#{configs[i].hydra.job.num} {' '.join(filter_overrides(configs[i].hydra.overrides.task))}".rstrip()

    lines = [f"{len(configs)} jobs: {len(stacks)} stack(s) of {sum(map(len, stacks))} jobs, {len(alone)} alone"]
    for s, members in enumerate(stacks):
        lines.append(f"stack {s + 1} ({len(members)} members, one model): " + "; ".join(job(i) for i in members))
    for i, why in sorted(alone.items()):
        lines.append(f"alone: {job(i)} ({why})")
    return lines


class _MemberJob:
    """One member of a stack set up as `run_job` sets up a job: its output directory, its
    `.hydra/` files, its resolved task config."""

    def __init__(self, config: DictConfig):
        self.config = config
        HydraConfig.instance().set_config(config)
        output_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(OmegaConf.select(config, "hydra.sweep.subdir"))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        self.output_dir = Path(config.hydra.runtime.output_dir)
        self.task_cfg = copy.deepcopy(config)
        with read_write(self.task_cfg), open_dict(self.task_cfg):
            del self.task_cfg["hydra"]
        self.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if config.hydra.output_subdir is not None:
            hydra_output = self.output_dir / str(config.hydra.output_subdir)
            _save_config(self.task_cfg, "config.yaml", hydra_output)
            _save_config(self.hydra_cfg, "hydra.yaml", hydra_output)
            _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
        # Resolved while this job's HydraConfig is set: ${hydra:runtime.output_dir}, ${run_name:}.
        self.resolved = OmegaConf.create(OmegaConf.to_container(self.task_cfg, resolve=True))
        wandb = OmegaConf.select(self.resolved, "logger.wandb")
        if wandb is not None:  # its W&B run is built with the others, under the last member's Hydra config
            wandb.group = wandb.get("group") or sweep_group()
            wandb.tags = list(dict.fromkeys([*(wandb.get("tags") or []), *override_tags()]))

    def job_return(self, status: JobStatus, value: Any) -> JobReturn:
        ret = JobReturn()
        ret.cfg, ret.hydra_cfg = self.task_cfg, self.hydra_cfg
        ret.overrides = OmegaConf.to_container(self.config.hydra.overrides.task)
        ret.working_dir = os.getcwd()
        ret.task_name = self.config.hydra.job.name
        ret.status, ret.return_value = status, value
        return ret


def _log_to_every_member(members: list[_MemberJob]) -> list[logging.Handler]:
    """Hydra's job logging into the first member's train.log, and the same lines into the others'."""
    configure_log(members[0].config.hydra.job_logging, members[0].config.hydra.verbose)
    root = logging.getLogger()
    template = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    added: list[logging.Handler] = []
    if template is None:
        return added
    for member in members[1:]:
        handler = logging.FileHandler(member.output_dir / Path(template.baseFilename).name)
        handler.setFormatter(template.formatter)
        handler.setLevel(template.level)
        root.addHandler(handler)
        added.append(handler)
    return added


def run_stack(hydra_context: HydraContext, task_function: TaskFunction, configs: list[DictConfig],
              check: Optional[Callable[[DictConfig], None]]) -> list[JobReturn]:
    """Train the jobs `configs` as one stack; one JobReturn per job, in order."""
    train_stack = getattr(task_function, "train_stack")  # vaelab.tasks.cli.report_errors puts it there
    callbacks = hydra_context.callbacks
    original = HydraConfig.instance().cfg
    members = [_MemberJob(config) for config in configs]
    handlers = _log_to_every_member(members)
    returns: list[Optional[JobReturn]] = [None] * len(members)
    try:
        ready = []
        for i, member in enumerate(members):
            HydraConfig.instance().set_config(member.config)
            callbacks.on_job_start(config=member.config, task_function=task_function)
            try:
                if check is not None:
                    check(member.task_cfg)  # a bad value fails its job here, with its message
                ready.append(i)
            except Exception as err:
                log.error("job #%s failed: %s", member.config.hydra.job.num, describe_error(err))
                record_failure(member.resolved, describe_error(err))
                returns[i] = member.job_return(JobStatus.FAILED, err)
        if len(ready) == 1:  # the others failed their checks: it trains alone, as the basic launcher would run it
            member = members[ready[0]]
            HydraConfig.instance().set_config(member.config)
            returns[ready[0]] = member.job_return(JobStatus.COMPLETED, task_function(member.task_cfg))
        elif ready:
            log.info("training %d jobs as one stacked model: %s", len(ready),
                     ", ".join(str(members[i].output_dir.name) for i in ready))
            try:
                results = train_stack([members[i].resolved for i in ready])
                for i, result in zip(ready, results):
                    ok = result.status == "completed"
                    returns[i] = members[i].job_return(JobStatus.COMPLETED if ok else JobStatus.FAILED,
                                                       result.value if ok else RuntimeError(result.error or "failed"))
            except RunInterrupted as err:  # each member recorded "interrupted": the sweep stops, as run_sweep_job does
                log.error("stack interrupted: %s; the sweep stops here", err)
                sys.exit(err.exit_code)
            except Exception as err:  # the whole stack: each member records it and the sweep goes on
                log.exception("the stack failed: %s", describe_error(err))
                for i in ready:
                    HydraConfig.instance().set_config(members[i].config)
                    record_failure(members[i].resolved, describe_error(err))
                    returns[i] = members[i].job_return(JobStatus.FAILED, err)
        for member, ret in zip(members, returns):
            HydraConfig.instance().set_config(member.config)
            callbacks.on_job_end(config=member.config, job_return=ret)
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
        HydraConfig.instance().cfg = original
    return returns  # type: ignore[return-value]


def launch(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
           job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """The launcher's launch (see the module docstring)."""
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs = compose_jobs(hydra_context, config, job_overrides, initial_job_idx)
    stacks, alone = group_jobs(configs)
    if getattr(task_function, "train_stack", None) is None:  # eval.py: nothing to stack
        stacks, alone = [], {i: "this entry point trains no stacks" for i in range(len(configs))}
    for line in describe_plan(configs, stacks, alone):
        log.info("%s", line)
    check = getattr(task_function, "check", None)  # vaelab.tasks.cli.report_errors puts it there
    returns: dict[int, JobReturn] = {}
    first_of = {members[0]: members for members in stacks}
    for i, cfg in enumerate(configs):  # in job order: a stack when its first job comes
        if i in first_of:
            for j, ret in zip(first_of[i], run_stack(hydra_context, task_function, [configs[j] for j in first_of[i]], check)):
                returns[j] = ret
        elif i in alone:
            returns[i] = run_job(hydra_context=hydra_context, task_function=task_function, config=cfg,
                                 job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    return [returns[i] for i in range(len(configs))]
