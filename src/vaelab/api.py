"""vaelab from Python (a notebook, a script): train a run, load one, and use its model.

    import vaelab

    run = vaelab.train("model.latent_dim=8", "trainer.max_epochs=3")   # what python train.py ... does
    run = vaelab.load("outputs/runs/<date>/<time>_vae-z8-beta1")       # or a run trained before
    x, labels = run.test_images(8)                                     # (8, C, H, W) as the model saw them
    mu, logvar = run.encode(x)                                         # a VAE's q(z|x); an AE: its code
    images = run.decode(mu)                                            # (8, C, H, W) pixel means
    samples = run.sample(16, seed=0)

A refused setting raises `vaelab.ConfigError` with the line `python train.py` prints. docs/python-api.md
walks through a session. Nothing here knows more than the entry points do: `train` runs train.py's task
(`vaelab.tasks.train.run`) under Hydra with train.py's config (conf/train.yaml) and check; `load` reads
the model as eval.py does (`vaelab.tasks.eval.load_model`) and builds the data module from the run's
data config as eval.py does (`vaelab.config.training_data_config`).
"""

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab.errors import CheckpointError, ConfigError, VaelabError, refused
from vaelab.models import Autoencoder, Codes
from vaelab.rundir import METRICS_FILE, read_record

Device = Union[str, torch.device]
Images = torch.Tensor  # or anything torch.as_tensor reads, e.g. a NumPy array

# The test codes an AE's `sample` fits its Gaussian to: as many as eval.py's and the panels' (n_codes).
AE_CODES = 2000


def repository_root() -> Path:
    """The folder holding conf/train.yaml and train.py: $VAELAB_ROOT when it has them (train.py sets
    it to its own folder), else the checkout that vaelab is installed from (`pip install -e .`)."""
    candidates = [Path(os.environ["VAELAB_ROOT"])] if os.environ.get("VAELAB_ROOT") else []
    candidates.append(Path(__file__).resolve().parents[2])
    for root in candidates:
        if (root / "conf" / "train.yaml").is_file():
            return root
    raise FileNotFoundError(f"vaelab's configs (conf/train.yaml) are not in {' or '.join(map(str, candidates))}: "
                            f"install vaelab from its repository (pip install -e .), or set VAELAB_ROOT to it")


@contextlib.contextmanager
def _hydra_of_our_own() -> Iterator[None]:
    """Hydra's global state for vaelab alone while the block runs; the caller's (if any) after it."""
    from hydra.core.global_hydra import GlobalHydra

    caller = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        if caller is not None:
            GlobalHydra.instance().initialize(caller)


def _compose(config_name: str, overrides: list[str], hydra_config: bool = False) -> DictConfig:
    """conf/<config_name>.yaml composed with `overrides` (Hydra's compose API), as the entry point
    composes it; Hydra's refusal of an override is ConfigError with the entry point's line."""
    from hydra import compose, initialize_config_dir

    from vaelab.tasks.cli import hydra_refusal

    with _hydra_of_our_own(), initialize_config_dir(config_dir=str(repository_root() / "conf"), version_base="1.3"):
        try:
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_config)
        except Exception as err:
            message = hydra_refusal(err)
            if message is None:
                raise
            raise ConfigError(message) from None


def _root_dir() -> str:
    """paths.root_dir as the entry points resolve it (they set VAELAB_ROOT to their folder)."""
    return os.environ.get("VAELAB_ROOT") or str(repository_root())


# -- a loaded run ------------------------------------------------------------------------------

class Run:
    """A trained model with what its run left: made by `vaelab.load` or `vaelab.train`.

    Attributes:
        model: the `Autoencoder` (an nn.Module: `vaelab.models.VAE` or `AE`), on `device`, in eval mode.
        config: the run's composed config (its .hydra/config.yaml, a DictConfig), which resolves
            outside Hydra: paths.root_dir as train.py sets it, paths.output_dir the run directory,
            run_name the run's. For a checkpoint without its run directory: the checkpoint's
            hyperparameters in the same layout (model.*, optimizer.*, data.pixel_range, trainer.gradient_clip_*).
        metrics: the run's metrics.json (a dict: "test/loss", "val/nelbo", "status", ...); {} without it.
        checkpoint: the .ckpt file the weights come from (a Path).
        which: "best" (the run's best checkpoint, the one it tested), "last" (checkpoints/last.ckpt,
            when there is no best one) or "given" (load was given this file).
        run_dir: the run directory (a Path), or None for a checkpoint outside one.
        device: the torch.device of the model and of every tensor the methods return.
        name, latent_dim, image_shape, pixel_range: the model type ("vae", "ae"), the size d of a
            code, (C, H, W) of an image, and (low, high), the range of the images' pixel values.

    Every method runs under torch.no_grad() and returns float32 tensors on `device`. Images passed
    in are a float tensor (B, C, H, W) in `pixel_range`, or one image (C, H, W) (a batch of one:
    the result has B = 1); a uint8 tensor (0..255, as the data files store images) is converted as
    the run's data module converts its batches (to `pixel_range`). They may be on any device.
    """

    def __init__(self, model: Autoencoder, config: DictConfig, metrics: dict[str, Any], checkpoint: Path,
                 which: str, run_dir: Optional[Path], device: torch.device, image_shape: tuple[int, int, int]):
        self.model, self.config, self.metrics = model, config, metrics
        self.checkpoint, self.which, self.run_dir, self.device = checkpoint, which, run_dir, device
        self.name: str = model.name
        self.latent_dim: int = model.latent_dim
        self.image_shape = image_shape
        low, scale = model.likelihood.low, model.likelihood.scale
        self.pixel_range: tuple[float, float] = (low, low + scale)
        self._data = None  # the data module, built when first needed
        self._distribution = None  # where `sample` draws codes from

    def __repr__(self) -> str:
        where = self.run_dir if self.run_dir is not None else self.checkpoint
        return (f"Run({self.name}, latent_dim={self.latent_dim}, image_shape={self.image_shape}, "
                f"checkpoint={self.checkpoint.name} ({self.which}), device={self.device}, from {where})")

    # -- images and codes ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Images) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The model's own `encode`: for a VAE the parameters of q(z|x), a tuple (mu, logvar), each
        (B, latent_dim) float32 (mu the posterior mean, logvar its log-variance); for an AE its
        deterministic code z, one tensor (B, latent_dim) float32. On `device`. `x`: see the class."""
        return self.model.encode(self._images(x))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes z (B, latent_dim) or (latent_dim,) → images (B, C, H, W) float32 on `device`, in
        `pixel_range`: the decoder's pixel means, E[x|z] under its likelihood (model.recon_loss):
        sigmoid(logits) for bce (the Bernoulli probabilities), mse and gaussian (the Gaussian's
        mean), the continuous Bernoulli's mean for cbernoulli; mapped from [0, 1] to `pixel_range`."""
        z = torch.as_tensor(z)
        if z.dim() == 1:
            z = z.unsqueeze(0)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"codes of shape {tuple(z.shape)}: decode takes (B, {self.latent_dim}) or "
                             f"({self.latent_dim},), codes of this model's latent_dim={self.latent_dim}")
        return self._decoded(z.to(self.device, self._dtype))

    @torch.no_grad()
    def reconstruct(self, x: Images) -> torch.Tensor:
        """Images x → decode(the mean code of x): (B, C, H, W) float32 on `device`, in `pixel_range`.

        For a VAE the decoded posterior mean μ(x) (no sampling: the same images each call), i.e.
        `decode(encode(x)[0])`; for an AE `decode(encode(x))`."""
        return self._decoded(self.model.posterior(self._images(x)).mu)

    @torch.no_grad()
    def sample(self, n: int, seed: Optional[int] = None) -> torch.Tensor:
        """n generated images (n, C, H, W) float32 on `device`, in `pixel_range` (decoded pixel means).

        Codes are drawn where the model generates from: a VAE's prior N(0, I); an AE has no prior,
        so from a Gaussian fitted to the codes of its first 2,000 test images (as eval.py and the
        panels do; this reads the test images once). `seed`: the same seed gives the same images
        on every device; None draws from torch's global generator (torch.manual_seed sets it)."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else torch.default_generator
        return self._decoded(self._code_distribution().sample(n, generator))

    @torch.no_grad()
    def test_images(self, n: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The run's test images as the model saw them, and their labels: the first `n` (all: None).

        images: (N, C, H, W) float32 on `device`, in `pixel_range`; the data module's test batches
        after `on_after_batch_transfer` (binarised runs: their fixed draw, the one the run was tested
        on). labels: (N,) int64 on `device`; -1 where the data have no labels. The data config is the
        run's (.hydra/config.yaml), as eval.py reads it; for a checkpoint outside a run directory,
        eval.py's default (conf/eval.yaml's data) with the checkpoint's pixel_range."""
        data = self._datamodule()
        data.load()
        images, labels = data.splits["test"]
        if n is not None:
            images, labels = images[:n], labels[:n]
        return data.on_after_batch_transfer((images.to(self.device), labels.to(self.device)), 0)

    # -- the parts ---------------------------------------------------------------------------------
    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _images(self, x: Images) -> torch.Tensor:
        """Images as the model takes them: (B, C, H, W) float on `device`, in `pixel_range`."""
        x = torch.as_tensor(x)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            c, h, w = self.image_shape
            raise ValueError(f"images of shape {tuple(x.shape)}: this model takes (B, {c}, {h}, {w}) or ({c}, {h}, {w})")
        x = x.to(self.device)
        if x.dtype == torch.uint8:  # as stored: converted as the data module converts each batch
            no_labels = torch.full((len(x),), -1, dtype=torch.long, device=self.device)
            x, _ = self._datamodule().on_after_batch_transfer((x, no_labels), 0)
        elif not x.is_floating_point():
            raise TypeError(f"images of dtype {x.dtype}: give floats in pixel_range={list(self.pixel_range)} "
                            f"or uint8 (0..255)")
        return x.to(self._dtype)

    def _decoded(self, z: torch.Tensor) -> torch.Tensor:
        likelihood = self.model.likelihood
        return likelihood.low + likelihood.scale * likelihood.means(self.model.decode(z))

    def _code_distribution(self):
        if self._distribution is None:
            if "kl" in self.model.terms:  # a model with a prior: it draws from it, whatever the codes
                codes = Codes(torch.zeros(1, self.latent_dim, device=self.device))
            else:
                from vaelab.evaluation.latent import encode

                codes = encode(self.model, self.test_images(AE_CODES)[0])
            self._distribution = self.model.code_distribution(codes)
        return self._distribution

    def _datamodule(self):
        """The run's data module (`vaelab.data.ImageDataModule`), built as eval.py builds it."""
        if self._data is None:
            from vaelab.config import training_data_config
            from vaelab.tasks.build import build

            cfg = _compose("eval", [])
            with open_dict(cfg):
                cfg.ckpt_path = str(self.checkpoint)
                cfg.paths.root_dir = _root_dir()
            data, _ = training_data_config(cfg, [])
            if [float(v) for v in data.pixel_range] != list(self.pixel_range):  # eval.py's default data config:
                with open_dict(data):  # the images in the range the checkpoint was trained on
                    data.pixel_range = list(self.pixel_range)
            self._data = build("data", data)
        return self._data


def _checkpoint_config(hparams: dict[str, Any]) -> DictConfig:
    """A checkpoint's hyperparameters in the layout of a run's config."""
    clipping = ("gradient_clip_val", "gradient_clip_algorithm")
    model = {k: v for k, v in hparams.items() if k not in ("image_shape", "pixel_range", "optimizer", *clipping)}
    return OmegaConf.create({
        "model": {**model, "image_shape": list(hparams.get("image_shape") or [])},
        "optimizer": dict(hparams.get("optimizer") or {}),
        "data": {"pixel_range": list(hparams.get("pixel_range") or (0.0, 1.0))},
        "trainer": {key: hparams.get(key) for key in clipping},
    })


def _run_config(run_dir: Path, record: dict[str, Any]) -> DictConfig:
    """The run's .hydra/config.yaml, with what Hydra and the entry point filled in while it ran."""
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    with open_dict(config):
        config.paths.root_dir = _root_dir()
        config.paths.output_dir = str(run_dir)  # was ${hydra:runtime.output_dir}
        if record.get("run_name"):
            config.run_name = record["run_name"]  # was ${run_name:}, which a sweep's swept keys extend
    return config


def _checkpoint_of(run_dir: Path, record: dict[str, Any]) -> tuple[Path, str]:
    """The best checkpoint of a run directory (metrics.json's best_checkpoint), else its last.ckpt."""
    folder = run_dir / "checkpoints"
    best = record.get("best_checkpoint")
    if best and (folder / Path(best).name).is_file():  # by name: the directory may have moved since
        return folder / Path(best).name, "best"
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt", "last"
    found = sorted(p.name for p in folder.glob("*.ckpt"))
    raise CheckpointError(f"{run_dir} holds no checkpoint to load (no best checkpoint in {METRICS_FILE}, no "
                          f"checkpoints/last.ckpt{'; there are ' + ', '.join(found) if found else ''}); give a run "
                          f"directory whose training saved checkpoints, or one .ckpt file")


def load(path: Union[str, os.PathLike], device: Device = "cpu") -> Run:
    """The trained model at `path`, with its config and metrics, on `device` (e.g. "cpu", "cuda").

    `path`: a run directory (what `python train.py` or `vaelab.train` writes: the best checkpoint,
    else checkpoints/last.ckpt) or a .ckpt file (with its run's config and metrics when it lies in
    <run dir>/checkpoints/). The checkpoint is read with weights_only=True: no code in it is run.
    CheckpointError (one line) for a path without a readable vaelab checkpoint. Draws nothing from
    torch's global random generator."""
    from vaelab.checkpoints import read_checkpoint
    from vaelab.tasks.eval import load_model

    path, device = Path(path).expanduser(), torch.device(device)
    if path.is_dir():
        run_dir: Optional[Path] = path.resolve()
        record = read_record(run_dir) or {}
        checkpoint, which = _checkpoint_of(run_dir, record)
        if not (run_dir / ".hydra" / "config.yaml").is_file():
            run_dir, record = None, {}  # checkpoints/ without a run's config: the weights alone
    elif path.is_file():
        checkpoint, which = path.resolve(), "given"
        run_dir = checkpoint.parent.parent  # where eval.py looks for the run's config, too
        run_dir = run_dir if (run_dir / ".hydra" / "config.yaml").is_file() else None
        record = (read_record(run_dir) or {}) if run_dir is not None else {}
    else:
        raise CheckpointError(f"{path} does not exist; give a run directory (outputs/runs/<date>/<time>_<name>) "
                              f"or a .ckpt file")
    with torch.random.fork_rng(devices=[]):  # building the model draws initial weights: not from the caller's generator
        model = load_model(checkpoint, device)  # first: one CheckpointError line for a file that is none
    hparams = read_checkpoint(checkpoint)["hyper_parameters"]
    config = _run_config(run_dir, record) if run_dir is not None else _checkpoint_config(hparams)
    return Run(model, config, record, checkpoint, which, run_dir, device, tuple(hparams["image_shape"]))


# -- training ----------------------------------------------------------------------------------

def _override(key: str, value: Union[str, os.PathLike]) -> str:
    value = os.fspath(value)
    plain = re.fullmatch(r"[\w./:~+@-]+", value) is not None
    return f"{key}={value}" if plain else f"{key}=" + '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _refuse_several_processes(cfg: DictConfig) -> None:
    from vaelab.sweeps.jobs import trainer_processes

    if trainer_processes(cfg.trainer) == 1:
        return
    key = "trainer.num_nodes" if (cfg.trainer.get("num_nodes") or 1) != 1 else "trainer.devices"
    raise refused(key, OmegaConf.select(cfg, key),
                  "1 in vaelab.train, which trains in this process (Lightning would start this program again for "
                  "each other device): run python train.py with these overrides, then vaelab.load(<its run dir>)")


@contextlib.contextmanager
def process_as_before() -> Iterator[None]:
    """What a run in this process changes, restored after it: sys.argv, os.environ (Hydra's and
    W&B's variables, VAELAB_ROOT), the root logger's handlers and level (Hydra adds the console
    and the run's log file), the known-noise filters and warning filters, Hydra's global state."""
    from vaelab.tasks.cli import silence_known_noise

    argv, environ = sys.argv, dict(os.environ)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = [logging.getLogger(name) for name in ("pytorch_lightning.utilities.rank_zero",
                                                  "lightning_fabric.utilities.rank_zero")]
    filters = [logger.filters[:] for logger in noisy]
    try:
        with warnings.catch_warnings(), _hydra_of_our_own():
            silence_known_noise()  # as train.py does at its start
            yield
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        for logger, kept in zip(noisy, filters):
            logger.filters[:] = kept


def train(*overrides: str, log_dir: Optional[Union[str, os.PathLike]] = None, device: Device = "cpu") -> Run:
    """Train as `python train.py <overrides>` does, in this process; the run it wrote, loaded on `device`.

    `overrides`: the words after `python train.py`, one string each ("model=ae", "model.beta=4",
    "trainer.max_epochs=3"). `log_dir`: the folder the run directory goes under (paths.log_dir;
    default: outputs/ of the repository, as for train.py). The run is the CLI's in every respect:
    conf/train.yaml composed by Hydra, vaelab's config check, the run directory
    <log_dir>/runs/<date>/<time>_<run name> with .hydra/, train.log, checkpoints/, the CSV,
    wandb/ (offline unless WANDB_MODE=online) and metrics.json. Its log lines go to the console.

    A value that train.py refuses (vaelab's check, or Hydra's: a key or choice that does not exist)
    raises ConfigError with the line train.py prints; so do a sweep (-m, or an experiment that is
    one) and several devices, which need train.py's own processes. Other failures raise as they
    happen (a NaN loss: NonFiniteLossError). Afterwards this process is as before: sys.argv,
    os.environ, logging, warning filters, Hydra's global state and torch's, NumPy's and Python's
    random generators (training seeds them with `seed`)."""
    try:
        run_dir = _train_in_this_process([str(o) for o in overrides], log_dir)
    except ConfigError as err:
        raise err.with_traceback(None) from None  # one line, as train.py prints it: no Hydra frames
    return load(run_dir, device)


def _train_in_this_process(overrides: list[str], log_dir: Optional[Union[str, os.PathLike]]) -> Path:
    """`train`'s work: the run directory it wrote."""
    import hydra

    from vaelab.config import check_train_config
    from vaelab.rundir import release_run_dir
    from vaelab.tasks.cli import hydra_refusal, refuse_unwritable_run_dir, refuse_used_run_dir

    argv = overrides + ([_override("paths.log_dir", log_dir)] if log_dir is not None else [])
    for arg in argv:
        if arg.startswith("-"):
            raise ConfigError(f"{arg}: vaelab.train takes overrides (key=value) only; a sweep (-m) or another Hydra "
                              f"flag needs python train.py {arg} ...")
    root = repository_root()
    outcome: dict[str, Any] = {}

    def task(cfg: DictConfig) -> None:
        """train.py's task: vaelab's check, then vaelab.tasks.train.run; what it raises is kept for
        the caller (Hydra would print it, then raise it)."""
        try:
            check_train_config(cfg)
            _refuse_several_processes(cfg)
            outcome["run_dir"] = Path(cfg.paths.output_dir)
            from vaelab.checkpoints import restore_rng_states, rng_states
            from vaelab.tasks.train import run

            states = rng_states()
            try:
                run(cfg)
            finally:
                restore_rng_states(states)
        except Exception as err:
            outcome["error"] = err

    task.__module__ = "train"  # Hydra names the job after it, as after train.py: train.log
    explicit_run_dir = next((a.partition("=")[2].strip("\"'") for a in argv
                             if a.partition("=")[0].lstrip("+") == "hydra.run.dir"), None)
    with process_as_before():
        os.environ.setdefault("VAELAB_ROOT", str(root))  # paths.root_dir, as train.py sets it
        try:
            composed = _compose("train", argv, hydra_config=True)  # Hydra's refusals, and the sweep check
            if str(composed.hydra.mode) == "RunMode.MULTIRUN":
                raise refused("hydra.mode", "MULTIRUN", "RUN in vaelab.train, which trains one run (an experiment "
                              "or hparams_search that is a sweep sets it): run the sweep with python train.py, then "
                              "vaelab.load each of its run directories")
            for check in (refuse_unwritable_run_dir, refuse_used_run_dir):  # train.py's, before Hydra starts
                try:
                    check(argv)
                except VaelabError as err:  # a used run dir is the rundir check's error: the same line
                    raise ConfigError(str(err)) from None
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what goes wrong instead of printing it
            sys.argv = [str(root / "train.py"), *argv]
            try:
                hydra.main(version_base="1.3", config_path=str(root / "conf"), config_name="train")(task)()
            except Exception as err:  # what Hydra refuses as it runs (tasks/cli.run_app's lines)
                message = hydra_refusal(err)
                if message is None:
                    raise
                raise ConfigError(message) from None
        finally:
            if explicit_run_dir:
                release_run_dir(Path(explicit_run_dir))  # refuse_used_run_dir took it for this process
    if "error" in outcome:
        raise outcome["error"]
    return outcome["run_dir"]
