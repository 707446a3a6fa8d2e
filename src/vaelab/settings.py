"""What in a run's config defines what it trains and measures, and what only says where it reads
and writes or how it logs. Two uses follow this one list: the sweep summary (runs that differ only
in these keys and in `seed` are replicas of one setting) and stacking (jobs that differ only in
these keys and in per-member settings train as one stack, vaelab.sweeps.stacking)."""

from typing import Any

# Config keys that say where a run reads and writes or how it logs, not what it trains and measures.
NOT_SETTINGS = ("paths", "run_name", "task_name", "optimized_metric", "logger", "hydra", "data.data_dir",
                "data.mirrors", "data.system_dir", "trainer.enable_progress_bar", "trainer.log_every_n_steps")

# Overrides that say where things are, not what is trained: no W&B tag, no dashboard axis.
LOCATION_KEYS = ("paths.", "data.data_dir", "data.mirrors", "data.system_dir", "ckpt_path", "hydra.", "hydra/")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config container as {"dotted.key": value}; an empty mapping stays a value ({})."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def is_setting(key: str, also_not: tuple[str, ...] = ()) -> bool:
    """Whether dotted `key` defines what a run trains (neither in NOT_SETTINGS nor in `also_not`)."""
    return not any(key == k or key.startswith(k + ".") for k in (*NOT_SETTINGS, *also_not))
