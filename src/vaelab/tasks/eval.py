"""The evaluation task that `python eval.py ckpt_path=...` runs: numbers, panels and a report.

Writes into its own run directory (never into the training run's): eval.json (one flat JSON
object), report.md (the numbers, what they mean, the panels embedded) and images/<panel>.png.
"""

import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vaelab.checkpoints import read_checkpoint
from vaelab.config import refuse, task_overrides, training_data_config
from vaelab.errors import CheckpointError
from vaelab.evaluation.classifier import cache_path, cached_classifier, grey_levels
from vaelab.evaluation.latent import ACTIVE_THRESHOLD, activity, batches, encode, kl_per_dim
from vaelab.evaluation.nll import importance_sampled_nll, model_log_likelihood, nll_meaning
from vaelab.evaluation.panels import make_panels, save_panels
from vaelab.evaluation.regularity import completeness, continuity
from vaelab.evaluation.report import write_report
from vaelab.files import write_json
from vaelab.models import Autoencoder, Codes
from vaelab.rundir import EVAL_FILE
from vaelab.tasks.build import build
from vaelab.tasks.cli import unwritable_dir
from vaelab.training import LitAutoencoder

log = logging.getLogger(__name__)


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
def likelihood_metrics(model: Autoencoder, x: torch.Tensor, cfg: DictConfig) -> tuple[dict[str, Any], Codes]:
    """The model's test terms (test/recon, ...) and, for a model with a KL term, the
    importance-sampled nll; means over the images `x`.

    With a stochastic encoder, recon is averaged over the eval.k samples of q(z|x) (the same
    expectation as training's single-sample test/recon, with far less noise) and the KL is
    exact, so nelbo ≥ nll up to the estimate's tiny error. A deterministic code's recon is exact.
    What nll is (−log p(x), or a cross-entropy for bce on grey levels) is stated
    beside it: test/nll_is_likelihood, test/nll_measures (`nll_meaning`).
    """
    codes = encode(model, x, batch_size=cfg.eval.batch_size)
    if "kl" not in model.terms:  # a deterministic code: the model's own losses are exact
        sums = {term: 0.0 for term in model.terms}
        for part in batches(len(x), cfg.eval.batch_size):
            for term, value in model.losses(x[part]).items():
                sums[term] += float(value) * (part.stop - part.start)
        return {f"test/{term}": total / len(x) for term, total in sums.items()}, codes
    meaning = nll_meaning(model.likelihood.kind, cfg.data.binarize)  # first: an unknown kind fails before the work
    log_likelihood = model_log_likelihood(model)
    sums = {"nll": 0.0, "nelbo": 0.0, "recon": 0.0}
    for part in batches(len(x), cfg.eval.batch_size):
        estimate = importance_sampled_nll(x[part], codes.mu[part], codes.logvar[part], log_likelihood, int(cfg.eval.k),
                                          max_codes=cfg.eval.max_codes)
        for key in sums:
            sums[key] += float(estimate[key].double().sum())
    n = len(x)
    kl_dims = kl_per_dim(codes)
    terms = model.combine({"recon": torch.tensor(sums["recon"] / n, dtype=torch.float64), "kl_per_dim": kl_dims.double().cpu()})
    if not model.loss_from_means:  # e.g. the IWAE bound: the model's own loss, averaged over the test images
        terms["loss"] = torch.tensor(sum(float(model.losses(x[part])["loss"]) * (part.stop - part.start)
                                         for part in batches(n, cfg.eval.batch_size)) / n, dtype=torch.float64)
    nll = sums["nll"] / n
    return {
        **{f"test/{k}": float(v) for k, v in terms.items()},
        "test/nll": nll, "test/nll_gap": float(terms["nelbo"]) - nll, "test/nelbo_same_samples": sums["nelbo"] / n,
        "test/nll_constant": model.likelihood.constant(x[0].numel()), **meaning,
        "test/kl_per_dim": [float(v) for v in kl_dims],
    }, codes


def grey_test_images(datamodule, n: int) -> torch.Tensor:
    """The first `n` test images as grey levels in [0, 1] (N, 1, H, W), before any binarisation.

    The test split keeps the test file's order, so these are the images of the first n of the
    split, as the decoder's pixel means are: the reference for judging decoded samples.
    """
    return grey_levels(datamodule.images.test_images[:n])


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt_path` (checked: vaelab.config.check_eval_config) on the test set; returns eval.json's record."""
    ckpt_path = Path(cfg.ckpt_path)
    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, verbose=False)
    device = _device(cfg.eval.device)

    data, data_from = training_data_config(cfg, task_overrides())
    log.info("data config: %s", data_from)
    with open_dict(cfg):
        cfg.data = data
    datamodule = build("data", cfg.data)
    data_info = datamodule.load()
    classifier_path = cache_path(datamodule.images, Path(cfg.eval.classifier_dir), datamodule.name)
    check_classifier_cache(classifier_path)  # before the minutes of evaluation that come before it
    model = load_model(ckpt_path, device)

    images, labels = datamodule.splits["test"]
    if cfg.eval.max_images:
        images, labels = images[: cfg.eval.max_images], labels[: cfg.eval.max_images]
    x, labels = datamodule.on_after_batch_transfer((images.to(device), labels.to(device)), 0)

    record: dict[str, Any] = {"checkpoint": str(ckpt_path.resolve()), "model": model.name, "terms": list(model.terms),
                              "beta": getattr(model, "beta", None), "objective": getattr(model, "objective", None),
                              "latent_dim": model.latent_dim,
                              "recon_loss": model.likelihood.kind, "eval/k": int(cfg.eval.k), "eval/images": len(x),
                              "data_config": data_from, **data_info}
    metrics, codes = likelihood_metrics(model, x, cfg)
    record.update(metrics)
    record["test/active_units"] = int((activity(codes) > ACTIVE_THRESHOLD).sum())
    if model.not_applicable:
        record["not_applicable"] = {f"test/{term}": why for term, why in model.not_applicable.items()}

    generator = torch.Generator().manual_seed(cfg.seed)
    some = Codes(*(None if c is None else c[: cfg.eval.n_codes] for c in codes))
    record.update(continuity(model, some.mu, generator))
    classifier, classifier_info = cached_classifier(datamodule.images, Path(cfg.eval.classifier_dir), datamodule.name, device)
    record.update(classifier_info)
    # The reference: grey test images, not x (binarised when data.binarize is set), since the
    # samples judged beside them are pixel means, grey levels.
    record.update(completeness(model, classifier, some, grey_test_images(datamodule, len(some.mu)),
                               cfg.eval.n_samples, generator))

    panels = make_panels(model, x[: cfg.eval.n_codes], labels[: cfg.eval.n_codes], seed=cfg.seed)
    record["panels"] = {p.name: str(path.relative_to(out_dir)) for p, path in zip(panels, save_panels(panels, out_dir / "images"))}
    record["panel_captions"] = {p.name: p.caption for p in panels}

    write_json(out_dir / EVAL_FILE, record)
    write_report(out_dir / "report.md", record)
    log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.items())
                                    if k.startswith("test/") and isinstance(v, float) and math.isfinite(v)))
    log.info("wrote %s and %s", out_dir / EVAL_FILE, out_dir / "report.md")
    return record
