"""The evaluation task that `python eval.py ckpt_path=...` runs: numbers, panels and a report.

Writes into its own run directory (never into the training run's): eval.json (one flat JSON
object), report.md (the numbers, what they mean, the panels embedded) and images/<panel>.png.
Disentanglement numbers are also linked to the training run they judge (`record_in_training_run`):
a small entry in <run dir>/evals/ (vaelab.rundir), the sweep's summary rebuilt, and the run's W&B
record given them as summary values.

Each stage (`STAGES`) ends with a log line "<stage>: done in <time> (<what it did>)" and leaves
time/<stage>_s in eval.json; the importance-sampled NLL and the classifier's first training also
log their progress as they go; a last line "eval: done in <time>" sums them up.
"""

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vaelab.checkpoints import read_checkpoint
from vaelab.config import refuse, task_overrides, training_data_config
from vaelab.errors import CheckpointError
from vaelab.evaluation import disentanglement
from vaelab.evaluation.classifier import cache_path, cached_classifier, pixel_levels
from vaelab.evaluation.latent import ACTIVE_THRESHOLD, activity, batches, encode
from vaelab.evaluation.nll import bits_per_dim, importance_sampled_sums, model_log_likelihood, nll_meaning
from vaelab.evaluation.panels import Panel, make_panels, mutual_information_panel, save_panels
from vaelab.evaluation.regularity import completeness, continuity
from vaelab.evaluation.report import write_report
from vaelab.files import write_json
from vaelab.models import Autoencoder, Codes
from vaelab.rundir import EVAL_FILE, record_evaluation, training_run_dir
from vaelab.tasks.build import build
from vaelab.tasks.cli import unwritable_dir
from vaelab.training import LitAutoencoder
from vaelab.training.loggers import log_summary_to_wandb_run

log = logging.getLogger(__name__)

# eval's stages in their order, each timed as time/<stage>_s in eval.json (nll: models with a KL
# term; objective: models whose own loss is not recon + β·kl, e.g. iwae), then time/total_s.
STAGES = {
    "load": "reading the data, the checkpoint and the test images",
    "terms": "encoding the test images; the exact terms (KL; an AE's recon and loss)",
    "nll": "the importance-sampled nll, and recon and nelbo averaged over the same k samples",
    "objective": "the model's own loss on the test images",
    "continuity": "continuity/*",
    "classifier": "loading (or training once) the reference classifier and its test accuracy (labelled data only)",
    "completeness": "completeness/* (labelled data only)",
    "disentanglement": "disentanglement/*: MIG, SAP, DCI, FactorVAE, beta-VAE, modularity (data with known factors only)",
    "panels": "the panels, drawn and saved",
    "write": "report.md and eval.json",
}


def format_duration(seconds: float) -> str:
    """12.3 s, 5 min 08 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


class ProgressLines:
    """A `Progress` (done, total) callback that logs "<name>: done/total <unit> (p %), <elapsed>
    elapsed, about <time> left" once at least `fraction` of the work and `min_interval_s` seconds
    have passed since the last line (whichever allows fewer lines: a run of seconds logs none, a
    long one about ten), and a last line at 100 % when it logged any before.
    Not a progress bar: one line each, readable in a log file."""

    def __init__(self, name: str, unit: str, fraction: float = 0.1, min_interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.unit, self.fraction, self.min_interval_s, self.clock = name, unit, fraction, min_interval_s, clock
        self.start = self.last_time = clock()
        self.last_done = 0
        self.lines = 0

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done < total:
            if done - self.last_done < self.fraction * total or now - self.last_time < self.min_interval_s:
                return
            left = f", about {format_duration((now - self.start) / done * (total - done))} left"
        elif self.lines:
            left = ""
        else:
            return
        log.info("%s: %d/%d %s (%.0f %%), %s elapsed%s", self.name, done, total, self.unit, 100 * done / total,
                 format_duration(now - self.start), left)
        self.last_done, self.last_time, self.lines = done, now, self.lines + 1


class Stages:
    """The time of each of eval's stages: `with stages("nll") as note:` times the block, logs
    "nll: done in 12.3 s (<note.detail>)" as it ends (when `verbose`) and keeps the seconds."""

    class Note:
        detail = ""

    def __init__(self, verbose: bool = True, clock: Callable[[], float] = time.perf_counter):
        self.verbose, self.clock = verbose, clock
        self.start = clock()
        self.seconds: dict[str, float] = {}
        self.running: Optional[tuple[str, float]] = None  # the stage in progress and its start

    @contextmanager
    def __call__(self, name: str) -> Iterator["Stages.Note"]:
        assert name in STAGES, name
        note = Stages.Note()
        start = self.clock()
        self.running = (name, start)
        try:
            yield note
        finally:
            self.running = None
        self.seconds[name] = self.clock() - start
        if self.verbose:
            log.info("%s: done in %s%s", name, format_duration(self.seconds[name]), f" ({note.detail})" if note.detail else "")

    def total(self) -> float:
        return self.clock() - self.start

    def record(self) -> dict[str, float]:
        """eval.json's time/<stage>_s of the stages so far (the one running: until now) and
        time/total_s, in seconds."""
        seconds = dict(self.seconds)
        if self.running is not None:
            seconds[self.running[0]] = self.clock() - self.running[1]
        return {**{f"time/{name}_s": round(value, 3) for name, value in seconds.items()},
                "time/total_s": round(self.total(), 3)}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(ckpt_path: Path, device: torch.device) -> Autoencoder:
    """The model of a vaelab checkpoint, read with weights_only=True (vaelab.checkpoints): no code
    in the file is run. CheckpointError (one line) for a file that is not a readable, safe
    checkpoint or whose weights do not fit the model its hyperparameters describe."""
    checkpoint = read_checkpoint(ckpt_path, map_location="cpu")
    try:
        module = LitAutoencoder(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CheckpointError(f"{ckpt_path} is a vaelab checkpoint whose weights do not fit the model its "
                              f"hyperparameters describe ({reason}); evaluate it with the vaelab version that "
                              f"wrote it") from None
    return module.model.to(device).eval()


def check_classifier_cache(path: Path) -> None:
    """Refuse, before any evaluation, a reference classifier that is not cached yet and could not
    be saved once trained (eval.classifier_dir is not writable)."""
    if path.is_file():
        return  # cached: only read
    blocked = unwritable_dir(path.parent)
    if blocked is not None:
        why = "is not writable by this user" if blocked.is_dir() else "is a file"
        refuse("eval.classifier_dir", str(path.parent), f"a directory that this user can write ({blocked} {why}): "
               f"the reference classifier of these data is not cached there yet, so eval trains it and saves it there; "
               f"give eval.classifier_dir=<a folder of yours>")


@torch.no_grad()
def likelihood_metrics(model: Autoencoder, x: torch.Tensor, cfg: DictConfig,
                       stages: Optional[Stages] = None) -> tuple[dict[str, Any], Codes]:
    """The model's test terms (test/recon, ...) and, for a model with a KL term, the
    importance-sampled nll; means over the images `x`.

    With a stochastic encoder, recon is averaged over the eval.k samples of q(z|x) (the same
    expectation as training's single-sample test/recon, with far less noise) and the KL is
    exact, so nelbo ≥ nll up to the estimate's tiny error. A deterministic code's recon is exact.
    What nll is (−log p(x), or a cross-entropy for bce on grey levels) is stated
    beside it: test/nll_is_likelihood, test/nll_measures (`nll_meaning`). Colour images (C > 1)
    also get test/bpd = nll / (C·H·W·ln 2) and test/bpd_measures (`bits_per_dim`: the continuous
    density's bits per dimension, not the literature's 8-bit bpd); grey images get no bpd.

    `stages` (eval's): times the stages terms, nll and objective, and logs the nll's progress;
    without it this is silent.
    """
    stages = stages or Stages(verbose=False)
    n, samples, batch_size = len(x), int(cfg.eval.k), cfg.eval.batch_size
    with stages("terms") as note:
        codes = encode(model, x, batch_size=batch_size)
        if "kl" not in model.terms:  # a deterministic code: the model's own losses are exact
            sums = {term: 0.0 for term in model.terms}
            for part in batches(n, batch_size):
                for term, value in model.losses(x[part]).items():
                    sums[term] += float(value) * (part.stop - part.start)
            note.detail = f"{n} images encoded; {', '.join(model.terms)} exact"
            return {f"test/{term}": total / n for term, total in sums.items()}, codes
        # first: an unknown kind fails before the work
        meaning = nll_meaning(model.likelihood.kind, cfg.data.binarize, channels=x.shape[1])
        kl_dims = model.kl_per_dim(codes)  # None: no closed form (a VampPrior), estimated with the NLL below
        note.detail = f"{n} images encoded" + ("" if kl_dims is None else
                                               f"; KL per dimension, exact: {float(kl_dims.sum()):.3f} nats")
    with stages("nll") as note:
        if stages.verbose:
            log.info("nll: importance sampling %d images with k=%d (%d images per pass, at most %d decoded codes at once)",
                     n, samples, batch_size, cfg.eval.max_codes)
        progress = ProgressLines("nll", "images") if stages.verbose else None
        sums = importance_sampled_sums(x, codes.mu, codes.logvar, model_log_likelihood(model), samples, batch_size,
                                       max_codes=cfg.eval.max_codes, progress=progress,
                                       log_prior_ratio=model.log_prior_over_posterior)
        note.detail = f"{n} images, k={samples}"
    recon = torch.tensor(sums["recon"] / n, dtype=torch.float64)
    if kl_dims is None:  # E_q[log q(z|x) − log p(z)] over the same k samples per image
        terms = model.combine({"recon": recon, "kl": torch.tensor((sums["nelbo"] - sums["recon"]) / n, dtype=torch.float64)})
    else:
        terms = model.combine({"recon": recon, "kl_per_dim": kl_dims.double().cpu()})
    if not model.loss_from_means:  # e.g. the IWAE bound: the model's own loss, averaged over the test images
        with stages("objective") as note:
            terms["loss"] = torch.tensor(sum(float(model.losses(x[part])["loss"]) * (part.stop - part.start)
                                             for part in batches(n, batch_size)) / n, dtype=torch.float64)
            note.detail = f"{getattr(model, 'objective', None) or 'its loss'} on {n} images"
    nll = sums["nll"] / n
    bpd = {"test/bpd": bits_per_dim(nll, tuple(x.shape[1:]))} if x.shape[1] > 1 else {}  # colour data only
    return {
        **{f"test/{k}": float(v) for k, v in terms.items()},
        "test/nll": nll, **bpd, "test/nll_gap": float(terms["nelbo"]) - nll, "test/nelbo_same_samples": sums["nelbo"] / n,
        "test/nll_constant": model.likelihood.constant(x[0].numel()), **meaning,
        **({} if kl_dims is None else {"test/kl_per_dim": [float(v) for v in kl_dims]}),
    }, codes


# What eval records instead of the classifier's and completeness's numbers on a data set without labels.
NO_LABELS = ("the data set has no labels: completeness is judged by a classifier trained on the data's labels, "
             "so there is no classifier and no completeness")


def levels_of_test_images(datamodule, n: int) -> torch.Tensor:
    """The first `n` test images as levels in [0, 1] (N, C, H, W), grey or colour, before any binarisation.

    The test split keeps the test file's order, so these are the images of the first n of the
    split, as the decoder's pixel means are: the reference for judging decoded samples.
    """
    return pixel_levels(datamodule.images.test_images[:n])


def completeness_keys(distribution_name: str) -> list[str]:
    """The classifier's and completeness's keys of eval.json for a model whose codes come from
    `distribution_name` (CodeDistribution.name): what a data set without labels lacks."""
    judged = ["test", "prior", *([distribution_name] if distribution_name != "prior" else [])]
    return ["classifier/test_accuracy",
            *(f"completeness/{what}_{number}" for what in judged for number in ("confidence", "class_coverage"))]


def disentanglement_sizes(cfg: DictConfig) -> disentanglement.Sizes:
    """eval.disentanglement_sizes as Sizes (a key not given: disentanglement_lib's default)."""
    given = cfg.eval.get("disentanglement_sizes") or {}
    return disentanglement.Sizes(**{key: int(value) for key, value in given.items()})


def disentanglement_metrics(model: Autoencoder, datamodule, cfg: DictConfig, device: torch.device,
                            note: Stages.Note) -> dict[str, Any]:
    """eval.json's disentanglement/* of the model's mean codes μ(x) against the data's known factors
    (datamodule.ground_truth), as disentanglement_lib computes them (evaluation/disentanglement.py)."""
    ground_truth = datamodule.ground_truth
    sizes = disentanglement_sizes(cfg)
    metrics = list(dict.fromkeys(cfg.eval.get("disentanglement_metrics") or disentanglement.METRICS))  # each once
    represent = disentanglement.mean_codes(model, datamodule, device, cfg.eval.batch_size)
    numbers, seconds, found = disentanglement.compute(ground_truth, represent, sizes, cfg.seed, metrics)
    record: dict[str, Any] = {f"disentanglement/{key}": value for key, value in numbers.items()
                              if isinstance(value, (int, float))}
    record["disentanglement/factor_names"] = list(ground_truth.factor_names)
    record["disentanglement/factor_sizes"] = [int(s) for s in ground_truth.factor_sizes]
    if "mutual_information" in numbers:  # latent × factor, nats: the panel's matrix
        record["disentanglement/mutual_information"] = [[float(v) for v in row] for row in numbers["mutual_information"]]
        record["disentanglement/factor_entropy"] = [float(v) for v in numbers["entropy"]]
    record["disentanglement/protocol"] = {**disentanglement.protocol(sizes, metrics, int(cfg.seed)),
                                          "data": datamodule.info.get("data/location", datamodule.name)}
    record["disentanglement/time_s"] = {name: round(value, 3) for name, value in seconds.items()}
    if found:
        record["disentanglement/warnings"] = found
    note.detail = ", ".join(f"{name} {format_duration(value)}" for name, value in seconds.items())
    return record


# A latent "follows" a factor (the traversal panel names it beside the latent's row) when its
# mutual information with it is at least this fraction of the factor's entropy.
FOLLOWS_FRACTION = 0.1


def followed_factors(record: dict[str, Any], active: Sequence[bool]) -> Optional[list[Optional[str]]]:
    """For each latent, the factor it carries the most information about, relative to the factor's
    entropy, if that is at least FOLLOWS_FRACTION of it and the latent is active (`active`: its mean
    code varies over the data, test/active_units' criterion); None without the metrics. An inactive
    latent follows nothing: its binned mutual information is estimation bias alone, which is large
    at small eval.disentanglement_sizes.points (20 bins × a factor's values over few points)."""
    if "disentanglement/mutual_information" not in record:
        return None
    share = [[m / h if h > 0 else 0.0 for m, h in zip(row, record["disentanglement/factor_entropy"])]
             for row in record["disentanglement/mutual_information"]]
    names = record["disentanglement/factor_names"]
    return [names[max(range(len(row)), key=row.__getitem__)] if on and max(row) >= FOLLOWS_FRACTION else None
            for row, on in zip(share, active)]


def mutual_information_matrix_panel(record: dict[str, Any]) -> Panel:
    """The latent × factor mutual information (eval.json's disentanglement/mutual_information) as a panel."""
    mi = record["disentanglement/mutual_information"]
    entropy = ", ".join(f"{n} {h:.2f}" for n, h in zip(record["disentanglement/factor_names"],
                                                        record["disentanglement/factor_entropy"]))
    points = record["disentanglement/protocol"]["sizes"]["points"]
    image = mutual_information_panel(np.array(mi), [f"z{i + 1}" for i in range(len(mi))],
                                     record["disentanglement/factor_names"])
    return Panel("mutual_information", image,
                 f"mutual information (nats) between each latent's mean code, in 20 equal-width bins, and each factor, "
                 f"from {points} images; a latent can carry at most the factor's entropy H ({entropy})")


def protocol_text(protocol: dict[str, Any]) -> str:
    """One line naming the disentanglement protocol, beside every number shown away from eval.json."""
    sizes = protocol["sizes"]
    at = ", ".join(f"{key} {value}" for key, value in sizes.items())
    lowered = "" if sizes == asdict(disentanglement.Sizes()) else ", lowered: not comparable with published numbers"
    return f"disentanglement_lib metrics, sizes {at}{lowered}; seed {protocol['seed']}, sklearn {protocol['sklearn']}"


def record_in_training_run(record: dict[str, Any], ckpt_path: Path, out_dir: Path) -> None:
    """Link the disentanglement numbers to the training run whose checkpoint was judged: an entry in
    <run dir>/evals/ (vaelab.rundir.record_evaluation, which compare and the sweep summary read), the
    sweep summary rebuilt when the run is a sweep's job, and the numbers in the run's W&B record."""
    scores = {key: record[key] for key in disentanglement.metric_keys() if isinstance(record.get(key), (int, float))}
    if not scores:  # data without known factors, or eval.disentanglement=false
        return
    run_dir = training_run_dir(ckpt_path)
    if run_dir is None:
        log.info("disentanglement: %s is not in a training run's checkpoints/ folder: the numbers are in %s only",
                 ckpt_path, out_dir / EVAL_FILE)
        return
    protocol = record["disentanglement/protocol"]
    entry = {"checkpoint": record["checkpoint"], "evaluation": str(out_dir.resolve()), "protocol": protocol,
             "protocol_text": protocol_text(protocol), "scores": scores, "keys": list(scores)}
    log.info("disentanglement: recorded in the training run, %s", record_evaluation(run_dir, entry))
    from vaelab.reports.summary import CSV_FILE, write_summary

    if (run_dir.parent / CSV_FILE).is_file():  # a sweep's job: its summary shows the numbers now
        write_summary(run_dir.parent)
        log.info("disentanglement: sweep summary rebuilt, %s", run_dir.parent / CSV_FILE)
    try:
        log_summary_to_wandb_run(read_checkpoint(ckpt_path, map_location="cpu"), run_dir, out_dir,
                                 {**entry["scores"], "disentanglement/protocol": entry["protocol_text"],
                                  "disentanglement/evaluation": entry["evaluation"]})
    except Exception as err:  # eval.json and the link are written: W&B is one more copy of the numbers
        log.warning("disentanglement: not logged to W&B (%s: %s)", type(err).__name__, str(err).splitlines()[0][:200])


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt_path` (checked: vaelab.config.check_eval_config) on the test set; returns eval.json's record."""
    stages = Stages()
    ckpt_path = Path(cfg.ckpt_path)
    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, verbose=False)
    device = _device(cfg.eval.device)

    with stages("load") as note:
        data, data_from = training_data_config(cfg, task_overrides())
        log.info("data config: %s", data_from)
        with open_dict(cfg):
            cfg.data = data
        datamodule = build("data", cfg.data)
        data_info = datamodule.load()
        labelled = datamodule.images.labelled  # without labels there is no classifier, no completeness
        if labelled:
            classifier_path = cache_path(datamodule.images, Path(cfg.eval.classifier_dir), datamodule.name)
            check_classifier_cache(classifier_path)  # before the minutes of evaluation that come before it
        model = load_model(ckpt_path, device)

        images, labels = datamodule.splits["test"]
        if cfg.eval.max_images:
            images, labels = images[: cfg.eval.max_images], labels[: cfg.eval.max_images]
        x, labels = datamodule.on_after_batch_transfer((images.to(device), labels.to(device)), 0)
        note.detail = f"{model.name} checkpoint, {len(x)} test images of {datamodule.name} on {device}"

    record: dict[str, Any] = {"checkpoint": str(ckpt_path.resolve()), "model": model.name, "terms": list(model.terms),
                              "beta": getattr(model, "beta", None), "objective": getattr(model, "objective", None),
                              "latent_dim": model.latent_dim,
                              "recon_loss": model.likelihood.kind, "eval/k": int(cfg.eval.k), "eval/images": len(x),
                              "data_config": data_from, **data_info}
    metrics, codes = likelihood_metrics(model, x, cfg, stages)
    record.update(metrics)
    record["test/active_units"] = int((activity(codes) > ACTIVE_THRESHOLD).sum())
    not_applicable = {f"test/{term}": why for term, why in model.not_applicable.items()}
    if "nll" in model.not_applicable and x.shape[1] > 1:  # colour data: bpd is the nll's, in other units
        not_applicable["test/bpd"] = model.not_applicable["nll"]
    if not labelled:
        not_applicable.update(dict.fromkeys(completeness_keys(model.code_distribution(codes).name), NO_LABELS))
    # eval.disentanglement: auto (when the data has known factors), true (checked: it has), false (skipped)
    with_factors = getattr(datamodule, "ground_truth", None) is not None
    wanted = cfg.eval.get("disentanglement", "auto")
    if wanted == "auto" and not with_factors:
        not_applicable.update(dict.fromkeys(disentanglement.metric_keys(), disentanglement.NO_FACTORS))
    elif wanted is True and not with_factors:  # check_eval_config refuses it first; this is the data's own word
        refuse("eval.disentanglement", True, f"auto or false for data.name={datamodule.name}: {disentanglement.NO_FACTORS}")
    if not_applicable:
        record["not_applicable"] = not_applicable

    generator = torch.Generator().manual_seed(cfg.seed)
    some = Codes(*(None if c is None else c[: cfg.eval.n_codes] for c in codes))
    with stages("continuity") as note:
        record.update(continuity(model, some.mu, generator))
        note.detail = f"{len(some.mu)} codes, ratio {record['continuity/ratio']:.3f}"
    if labelled:
        with stages("classifier") as note:
            classifier, classifier_info = cached_classifier(datamodule.images, Path(cfg.eval.classifier_dir),
                                                            datamodule.name, device, log_epochs=True)
            record.update(classifier_info)
            how = "loaded from the cache" if classifier_info["classifier/cached"] else "trained once and cached in"
            note.detail = f"{how} {classifier_info['classifier/path']}; test accuracy {classifier_info['classifier/test_accuracy']:.3f}"
        with stages("completeness") as note:
            # The reference: the test images as read, not x (binarised when data.binarize is set), since
            # the samples judged beside them are pixel means, levels in [0, 1].
            record.update(completeness(model, classifier, some, levels_of_test_images(datamodule, len(some.mu)),
                                       cfg.eval.n_samples, generator))
            note.detail = f"{cfg.eval.n_samples} decoded samples judged"
    else:
        log.info("classifier, completeness: not applicable (%s)", NO_LABELS)

    if wanted is not False and with_factors:
        with stages("disentanglement") as note:
            record.update(disentanglement_metrics(model, datamodule, cfg, device, note))
    elif wanted is not False:
        log.info("disentanglement: not applicable (%s)", disentanglement.NO_FACTORS)

    with stages("panels") as note:
        panels = make_panels(model, x[: cfg.eval.n_codes], labels[: cfg.eval.n_codes], seed=cfg.seed,
                             classes=datamodule.images.classes, row_factors=followed_factors(record, (activity(codes) > ACTIVE_THRESHOLD).tolist()))
        if "disentanglement/mutual_information" in record:
            panels.append(mutual_information_matrix_panel(record))
        record["panels"] = {p.name: str(path.relative_to(out_dir)) for p, path in zip(panels, save_panels(panels, out_dir / "images"))}
        record["panel_captions"] = {p.name: p.caption for p in panels}
        note.detail = f"{len(panels)} panels in {out_dir / 'images'}"

    with stages("write") as note:
        write_report(out_dir / "report.md", {**record, **stages.record()})
        # time/write_s and time/total_s end here: eval.json's own writing (a few kB) is all they leave out.
        record.update(stages.record())
        write_json(out_dir / EVAL_FILE, record)
        note.detail = f"{out_dir / 'report.md'} and {EVAL_FILE}"
    record_in_training_run(record, ckpt_path, out_dir)
    log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.items())
                                    if k.startswith("test/") and isinstance(v, float) and math.isfinite(v)))
    log.info("eval: done in %s (%s)", format_duration(stages.total()),
             ", ".join(f"{name} {format_duration(seconds)}" for name, seconds in stages.seconds.items()))
    return record
