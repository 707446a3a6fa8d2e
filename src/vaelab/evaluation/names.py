"""Names derived from a checkpoint path (kept free of heavy imports: the entry point uses it at start)."""

import re
from pathlib import Path
from typing import Optional


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
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", name)
