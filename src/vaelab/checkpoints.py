"""Checkpoints: written atomically, read safely, checked against the run, and exact to resume from.

- Written through `AtomicCheckpointIO` (Lightning's `plugins=`): a temporary file in the
  checkpoint's own directory, fsynced, renamed (vaelab.files.atomic_write). Lightning's own
  writer goes through the system's temporary directory and moves the file across filesystems,
  which can leave a truncated `last.ckpt` under its final name when the disk fills up.
- Read with `torch.load(weights_only=True)` whatever the torch version: a checkpoint holds
  tensors and plain values only, so a file that asks to build other Python objects (a pickled
  `__reduce__` payload) is refused, never run. Every failure is one CheckpointError line.
- `check_resumable` compares a checkpoint's hyperparameters with the run's config before any
  training: resuming with another model or optimiser setting is refused with the keys it was
  trained with.
- `rng_states` / `restore_rng_states`: the generators behind the VAE's sampling noise and
  dynamic binarisation (torch, CUDA, numpy, Python), stored as tensors and plain values so that
  the checkpoint stays loadable with weights_only=True.
"""

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from vaelab.errors import CheckpointError, show
from vaelab.files import atomic_write

# Settings that do not change what a checkpoint's weights mean: a resume may change them.
RESUMABLE_CHANGES = frozenset({"cuda_graph"})


def read_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at `path`, loaded with weights_only=True; CheckpointError if it is not a
    readable, safe vaelab checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give ckpt_path=<run dir>/checkpoints/last.ckpt "
                              f"(or interrupted.ckpt, or a best epoch_NNN.ckpt) of an earlier run")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # bytes that are no pickle of plain values at all (random, text)
            raise _unreadable(path, err) from None
        what = f"it asks to build {found.group(1)}"
        raise CheckpointError(f"{path} is not a safe vaelab checkpoint: {what}, which vaelab never loads (no code in a "
                              f"checkpoint is run); use a checkpoint that vaelab's train.py wrote") from None
    except (RuntimeError, EOFError, ValueError, IndexError, KeyError, TypeError, AttributeError, OSError,
            zipfile.BadZipFile) as err:
        raise _unreadable(path, err) from None
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)
            and "name" in (checkpoint.get("hyper_parameters") or {})):
        raise CheckpointError(f"{path} is a torch file but not a vaelab checkpoint (no model weights with their "
                              f"hyperparameters); use a checkpoint that vaelab's train.py wrote")
    return checkpoint


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    # torch's weights-only refusal is a page of advice around one line of cause ("Unsupported operand 170").
    cause = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(err))
    reason = cause.group(1) if cause else str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    return CheckpointError(f"{path} is not a readable checkpoint (empty, truncated or not a torch file: {reason}); "
                           f"use another one, e.g. the run's checkpoints/last.ckpt or a best epoch_NNN.ckpt")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer and reader, made atomic and safe (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("vaelab's checkpoint writer takes no storage_options")
        with atomic_write(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location)


def _trained_with(hparams: dict[str, Any]) -> dict[str, Any]:
    """The config keys a checkpoint was trained with: model.<setting> and optimizer.<setting>."""
    keys = {f"model.{k}": v for k, v in hparams.items() if k not in ("image_shape", "pixel_range", "optimizer",
                                                                        "gradient_clip_val", "gradient_clip_algorithm")}
    keys.update({f"optimizer.{k}": v for k, v in (hparams.get("optimizer") or {}).items()})
    for key in ("gradient_clip_val", "gradient_clip_algorithm"):
        keys[f"trainer.{key}"] = hparams.get(key)
    return keys


def check_resumable(checkpoint: dict[str, Any], path: Union[str, Path], model: dict[str, Any],
                    optimizer: Optional[dict[str, Any]], trainer: dict[str, Any], image_shape: list[int]) -> None:
    """Refuse a resume whose model, optimiser or clipping settings differ from the checkpoint's.

    The optimiser's state, the learning-rate schedule and the weights all come from the
    checkpoint, so a changed setting would be recorded in the new run's config but not used.
    """
    trained = _trained_with(checkpoint["hyper_parameters"])
    asked = _trained_with({**model, "optimizer": optimizer or {},
                           **{k: trainer.get(k) for k in ("gradient_clip_val", "gradient_clip_algorithm")}})
    if trained.get("trainer.gradient_clip_val") is None and asked.get("trainer.gradient_clip_val") is None:
        for keys in (trained, asked):  # no clipping: the algorithm is not used
            keys.pop("trainer.gradient_clip_algorithm", None)
    differ = [key for key in sorted(set(trained) | set(asked))
              if key.split(".", 1)[1] not in RESUMABLE_CHANGES and trained.get(key) != asked.get(key)]
    shape = list(checkpoint["hyper_parameters"].get("image_shape") or image_shape)
    if shape != list(image_shape):
        differ.append("image_shape")
    if differ:
        was = " ".join(f"{key}={show(trained.get(key))}" for key in differ if key != "image_shape")
        now = " ".join(f"{key}={show(asked.get(key))}" for key in differ if key != "image_shape")
        images = (f"images of shape {shape}, not the data's {list(image_shape)}; " if "image_shape" in differ else "")
        raise CheckpointError(
            f"{path} was trained with {images}{was} (this run asks for {now}); a resume continues that model and "
            f"its optimiser, so resume with the same settings (drop the overrides), or start a new run without ckpt_path"
        )


def rng_states() -> dict[str, Any]:
    """The random generators' states, as tensors and plain values (weights_only-loadable)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy = states["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
