"""Names of runs and evaluations: Hydra resolvers, registered when vaelab is imported.

A run is named by its model (`vae-z20-beta1`, `ae-z16`) followed by every other key that its
sweep varies (`vae-z20-beta1-lr0.003`, `vae-z20-beta1-batch_size256-seed2`), so the run
directories and the W&B runs of a sweep never share a name. The sweep's varying keys are taken
from its command line and its sweeper's `params` when it starts (`SweptKeys`, a Hydra callback)
and handed to every job's process through the environment, whatever the launcher.

Kept light (no torch): every process that composes a vaelab config imports it.
"""

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vaelab.rundir import cluster_tasks

SWEPT_KEYS_ENV = "VAELAB_SWEPT_KEYS"
# Keys that the model part of the name shows already.
_IN_MODEL_NAME = {"model", "model.name", "model.latent_dim", "model.beta"}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_short(v) for v in value)
    return str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", name)


def swept_keys(overrides: list[str], sweeper_params: Optional[dict] = None) -> list[str]:
    """The keys a sweep varies: command-line overrides in sweep syntax (a,b  range()  choice()
    glob()) and the keys of its sweeper's `params` (Optuna's, an experiment's grid)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([*overrides, *(f"{k}={v}" for k, v in (sweeper_params or {}).items())])
    keys = [o.key_or_group for o in parsed if not o.is_hydra_override()
            and (o.is_sweep_override() or o.key_or_group in (sweeper_params or {}))]
    return list(dict.fromkeys(keys))


def run_stamp() -> str:
    """`${run_stamp:}`: where under runs/ a single run's directory goes: `<date>/<time to the
    microsecond>`, unique to its process; for the processes that srun starts together as the
    ranks of one run (SLURM_NTASKS > 1), `slurm/<job id>.<step id>`, the same for all of them
    (and again when SLURM requeues the job, which then resumes in place)."""
    if cluster_tasks() > 1 and os.environ.get("SLURM_JOB_ID"):
        return f"slurm/{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")


def run_name(_root_: DictConfig) -> str:
    """`<model>-z<latent_dim>[-beta<β>]`, then `-<last part of key><value>` per other swept key."""
    model = _root_.model
    name = f"{model.name}-z{model.latent_dim}"
    if model.get("beta") is not None:
        name += f"-beta{_short(model.beta)}"
    for key in filter(None, os.environ.get(SWEPT_KEYS_ENV, "").split(",")):
        if key in _IN_MODEL_NAME:
            continue
        value = OmegaConf.select(_root_, key)
        if isinstance(value, DictConfig):  # a config group: its choice's own name, if it has one
            value = value.get("name")
            name += f"-{_short(value)}" if value is not None else ""
        else:
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            name += f"-{key.rsplit('.', 1)[-1]}{_short(value)}"
    return _safe(name)


def checkpoint_run_name(ckpt_path: Optional[str]) -> str:
    """`<run name>_<checkpoint>` for `.../<time>_<run name>/checkpoints/<checkpoint>.ckpt`, else the file's stem.

    >>> checkpoint_run_name("outputs/runs/2024-01-01/10-00-00-000000_vae-z20-beta1/checkpoints/last.ckpt")
    'vae-z20-beta1_last'
    """
    if not ckpt_path:
        return "eval"
    path = Path(str(ckpt_path))
    name = path.stem
    if path.parent.name == "checkpoints":
        run = path.parent.parent.name
        name = f"{run.split('_', 1)[-1]}_{name}"
    return _safe(name)


class SweptKeys(Callback):
    """At the start of a multirun, tell every job which keys the sweep varies (see above)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = config.hydra.sweeper.get("params")  # None for the basic sweeper without an experiment
        params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(list(config.hydra.overrides.task), params))


def slurm_gpus_per_node(accelerator: str, devices: Any) -> Any:
    """`${slurm_gpus:<accelerator>,<devices>}` in conf/hydra/launcher/slurm.yaml: a CPU job asks for no GPU."""
    return None if accelerator == "cpu" else devices


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("eval_name", checkpoint_run_name, replace=True)
    # Cached, as Hydra's ${now:} is: Lightning reads hydra.run.dir again to relaunch rank 1 into it.
    OmegaConf.register_new_resolver("run_stamp", run_stamp, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus_per_node, replace=True)
