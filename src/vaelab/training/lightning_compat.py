"""The only private parts of Lightning that vaelab uses, in one place.

A replayed CUDA graph runs the optimiser update itself, so Lightning's `LightningOptimizer.step`
never runs and would not count the step (global_step, max_steps, the logging interval and the
checkpoints all follow that count). Lightning's manual-optimisation loop installs two hooks on the
optimizer wrapper, `_on_before_step` and `_on_after_step`, which do exactly that bookkeeping
around `step()`; `CountedStep` calls them around a step that Lightning does not see.

A test in tests/test_training_step.py fails with a clear message when a Lightning upgrade drops
them; pyproject.toml pins pytorch-lightning to the minor version tested.
"""

import pytorch_lightning as pl
from pytorch_lightning.core.optimizer import LightningOptimizer

PRIVATE_HOOKS = ("_on_before_step", "_on_after_step")


def missing_hooks(optimizer: LightningOptimizer) -> list[str]:
    return [name for name in PRIVATE_HOOKS if not callable(getattr(optimizer, name, None))]


class CountedStep:
    """`with counted_step:` counts the optimiser step taken inside as Lightning counts its own.

    Made once per fit (the hooks are checked then) and entered once per step: a plain class,
    since a replayed graph step takes a fraction of a millisecond of host time.
    """

    def __init__(self, optimizer: LightningOptimizer):
        missing = missing_hooks(optimizer)
        if missing:
            raise RuntimeError(f"pytorch-lightning {pl.__version__} has no LightningOptimizer.{', '.join(missing)}; "
                               f"the CUDA-graph step needs them (vaelab/training/lightning_compat.py): "
                               f"use model.cuda_graph=false or the pytorch-lightning version pinned in pyproject.toml")
        self.optimizer = optimizer

    def __enter__(self) -> None:
        self.optimizer._on_before_step()

    def __exit__(self, *exc_info) -> None:
        self.optimizer._on_after_step()
