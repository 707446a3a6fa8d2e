"""Building objects from the config: every group names its class with `_target_` (conf/), and
`build` instantiates it, the same way for the model, the data, the loggers, the callbacks and
the trainer."""

from typing import Any, Optional

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vaelab.errors import ConfigError, VaelabError


def build(key: str, node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate (containers as plain lists and dicts); an object that refuses its
    settings (e.g. Lightning: trainer.accelerator=gpu without a GPU) is one ConfigError naming `key`."""
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:  # Hydra wraps the object's own error in two lines
        cause = err.__cause__ or err
        if isinstance(cause, VaelabError):
            raise cause from None
        raise ConfigError(f"{key} could not be built: {cause} (check the {key}.* settings)") from None


def build_each(key: str, nodes: Optional[DictConfig]) -> list[Any]:
    """One object per entry of a group of `_target_`s (loggers, callbacks); null entries are off."""
    return [build(f"{key}.{name}", node) for name, node in (nodes or {}).items() if node is not None]
