"""vaelab: autoencoders and (β-)VAEs on MNIST-style images.

From Python (docs/python-api.md): `vaelab.train(*overrides)` trains as `python train.py` does and
`vaelab.load(path)` reads a run directory or a checkpoint; both give a `vaelab.api.Run` (the model,
its config and metrics, encode/decode/reconstruct/sample/test_images). A refused setting raises
`vaelab.ConfigError`. Importing vaelab imports no torch: `load` and `train` are imported when first used.
"""

from typing import Any

from vaelab.errors import ConfigError
from vaelab.naming import register_resolvers

__version__ = "0.1.0"
__all__ = ["ConfigError", "Run", "load", "train"]

# ${run_name:} and ${eval_name:...} in conf/: every process that composes a vaelab config
# (the entry points, joblib and submitit workers, the tests) has imported vaelab by then.
register_resolvers()

_FROM_API = ("Run", "load", "train")  # vaelab.api imports torch: only when one of these is asked for


def __getattr__(name: str) -> Any:
    if name in _FROM_API:
        from vaelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FROM_API])
