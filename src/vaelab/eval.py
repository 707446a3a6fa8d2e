"""The evaluation task that `python eval.py ckpt_path=...` runs: numbers, panels and a report.

Writes into its own run directory (never into the training run's): eval.json (one flat JSON
object), report.md (the numbers, what they mean, the panels embedded) and images/<panel>.png.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab.config import check_ckpt_path
from vaelab.errors import ConfigError
from vaelab.evaluation.classifier import cached_classifier
from vaelab.evaluation.latent import ACTIVE_THRESHOLD, Codes, activity, batches, encode, kl_per_dim
from vaelab.evaluation.nll import autoencoder_log_likelihood, decoder_constant, importance_sampled_nll
from vaelab.evaluation.panels import make_panels, save_panels
from vaelab.evaluation.regularity import completeness, continuity
from vaelab.evaluation.report import write_report
from vaelab.module import LitAutoencoder
from vaelab.rundir import EVAL_FILE
from vaelab.train import build_datamodule

log = logging.getLogger(__name__)

NOT_APPLICABLE_AE = {
    "test/nll": "an AE defines no density p(x): it has no prior and a deterministic code, so there is no likelihood to estimate",
    "test/kl": "an AE has no posterior q(z|x) and no prior, so there is no KL term (and no nelbo)",
}


def _user_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def use_training_data_config(cfg: DictConfig, ckpt_path: Path, overrides: list[str]) -> str:
    """Replace cfg.data with the training run's data config, keeping data overrides given to eval.

    `overrides` are the command-line overrides given to eval. Returns where the data config came
    from. The training run's config holds interpolations such as ${paths.data_dir}; placed into
    this config, they resolve against its paths.
    """
    trained_cfg = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if any(o.lstrip("+~").split("=", 1)[0] == "data" for o in overrides):
        return "the data group given to eval"
    if not trained_cfg.is_file():
        return f"eval's data config (no training config at {trained_cfg})"
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides if o.lstrip("+~").startswith("data.")}
    values = {key: OmegaConf.select(cfg, key) for key in given}
    with open_dict(cfg):
        cfg.data = OmegaConf.load(trained_cfg).data
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    return str(trained_cfg) + (f" with {', '.join(sorted(given))} from the command line" if given else "")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def likelihood_metrics(module: LitAutoencoder, x: torch.Tensor, cfg: DictConfig) -> tuple[dict[str, Any], Codes]:
    """test/recon, kl, loss, nelbo and the importance-sampled nll, means over the images `x`.

    For a VAE, recon is averaged over the eval.k samples of q(z|x) (the same expectation as
    training's single-sample test/recon, with far less noise) and the KL is exact, so
    nelbo ≥ nll up to the estimate's tiny error. An AE's recon is its deterministic error.
    """
    model, k = module.model, int(cfg.eval.k)
    log_likelihood = autoencoder_log_likelihood(module)
    codes = encode(model, x, batch_size=cfg.eval.batch_size)
    if codes.logvar is None:
        recon = torch.cat([-log_likelihood(codes.mu[p][None], x[p])[0] for p in batches(len(x), cfg.eval.batch_size)])
        return {"test/recon": float(recon.mean()), "test/loss": float(recon.mean())}, codes
    sums = {"nll": 0.0, "nelbo": 0.0, "recon": 0.0}
    for part in batches(len(x), cfg.eval.batch_size):
        estimate = importance_sampled_nll(x[part], codes.mu[part], codes.logvar[part], log_likelihood, k,
                                          max_codes=cfg.eval.max_codes)
        for key in sums:
            sums[key] += float(estimate[key].double().sum())
    n = len(x)
    kl_dims = kl_per_dim(codes)
    recon, kl, nll = sums["recon"] / n, float(kl_dims.sum()), sums["nll"] / n
    nelbo = recon + kl
    return {
        "test/recon": recon, "test/kl": kl, "test/nelbo": nelbo, "test/loss": recon + module.hparams.beta * kl,
        "test/nll": nll, "test/nll_gap": nelbo - nll, "test/nelbo_same_samples": sums["nelbo"] / n,
        "test/nll_constant": decoder_constant(module.hparams.recon_loss, x[0].numel()),
        "test/kl_per_dim": [float(v) for v in kl_dims],
    }, codes


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt_path` on the test set; returns what eval.json holds."""
    if not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path is required: python eval.py ckpt_path=<run dir>/checkpoints/last.ckpt")
    check_ckpt_path(cfg.ckpt_path)
    ckpt_path = Path(cfg.ckpt_path)
    if int(cfg.eval.k) < 1:
        raise ConfigError(f"eval.k={cfg.eval.k} must be at least 1")
    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, verbose=False)
    device = _device(cfg.eval.device)

    data_from = use_training_data_config(cfg, ckpt_path, _user_overrides())
    log.info("data config: %s", data_from)
    datamodule = build_datamodule(cfg)
    data_info = datamodule.load()
    module = LitAutoencoder.load_from_checkpoint(ckpt_path, map_location=device).eval()
    hp = module.hparams
    if tuple(hp.pixel_range) != tuple(float(v) for v in cfg.data.pixel_range):
        raise ConfigError(f"the checkpoint was trained with data.pixel_range={list(hp.pixel_range)}, "
                          f"but eval has {list(cfg.data.pixel_range)}; pass data.pixel_range={list(hp.pixel_range)}")

    images, labels = datamodule.splits["test"]
    if cfg.eval.max_images:
        images, labels = images[: cfg.eval.max_images], labels[: cfg.eval.max_images]
    x, labels = datamodule.on_after_batch_transfer((images.to(device), labels.to(device)), 0)

    record: dict[str, Any] = {"checkpoint": str(ckpt_path.resolve()), "model": hp.model, "beta": float(hp.beta),
                              "latent_dim": hp.latent_dim, "recon_loss": hp.recon_loss, "eval/k": int(cfg.eval.k),
                              "eval/images": len(x), "data_config": data_from, **data_info}
    metrics, codes = likelihood_metrics(module, x, cfg)
    record.update(metrics)
    record["test/active_units"] = int((activity(codes) > ACTIVE_THRESHOLD).sum())
    if hp.model == "ae":
        record["not_applicable"] = NOT_APPLICABLE_AE

    generator = torch.Generator().manual_seed(cfg.seed)
    some = codes.mu[: cfg.eval.n_codes]
    if len(some) >= 2:
        record.update(continuity(module, some, generator))
    classifier, classifier_info = cached_classifier(datamodule.splits, Path(cfg.eval.classifier_dir), datamodule.name, device)
    record.update(classifier_info)
    record.update(completeness(module, classifier, some, module._to_unit_range(x[: cfg.eval.n_codes]),
                               cfg.eval.n_samples, generator))

    panels = make_panels(module, x[: cfg.eval.n_codes], labels[: cfg.eval.n_codes], seed=cfg.seed)
    record["panels"] = {p.name: str(path.relative_to(out_dir)) for p, path in zip(panels, save_panels(panels, out_dir / "images"))}
    record["panel_captions"] = {p.name: p.caption for p in panels}

    (out_dir / EVAL_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    write_report(out_dir / "report.md", record)
    log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.items())
                                    if k.startswith("test/") and isinstance(v, float) and math.isfinite(v)))
    log.info("wrote %s and %s", out_dir / EVAL_FILE, out_dir / "report.md")
    return record
