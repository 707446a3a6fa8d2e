"""End to end through the real entry point: `python train.py ...` in a subprocess where the process
is what is checked (the run a user types, the DDP relaunch of rank 1), in this process otherwise
(conftest.run_entry_point_in_process: the same script, without the interpreter's start).

Real torchvision reading, real Lightning Trainer, real Hydra, real W&B in offline mode; data
are small synthetic IDX files.
"""

import csv
import json
import math
import re
from pathlib import Path

import pytest

from conftest import N_TEST, N_TRAIN, one_device_test_losses, run_dirs, run_entry_point, run_entry_point_in_process, small_run_overrides
from vaelab.reports.wandb_offline import summarize

pytestmark = pytest.mark.slow

VAE_METRICS = [f"{stage}/{term}" for stage in ("train", "val", "test") for term in ("recon", "kl", "loss", "nelbo")]
AE_METRICS = [f"{stage}/{term}" for stage in ("train", "val", "test") for term in ("recon", "loss")]


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _only_run_dir(log_dir: Path) -> Path:
    dirs = run_dirs(log_dir)
    assert len(dirs) == 1, dirs
    return dirs[0]


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _assert_run_dir(run_dir: Path, metric_names: list[str]) -> dict:
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    for name in metric_names:
        assert math.isfinite(metrics[name]), name
    assert (metrics["data/source"], metrics["data/train_size"], metrics["data/val_size"], metrics["data/test_size"]) == ("local", N_TRAIN - 128, 128, N_TEST)
    assert Path(metrics["best_checkpoint"]).is_file()
    header = _csv_rows(run_dir)[0].keys()
    for name in metric_names:
        assert name in header
    assert "train/recon_step" in header and "train/loss_step" in header
    assert not any(k.endswith("_epoch") for k in header)  # the contract: bare names are epoch means
    return metrics


# What Lightning and wandb printed at every run before (issue 22): each removed at its cause.
NOISE = {
    "wandb's warning about the anonymous setting Lightning passes": "anonymous setting",
    "a FLOPs count of 0 (no example input)": "Total FLOPs: 0",
    "Lightning's warning on fewer batches than the logging interval": "smaller than the logging interval",
    "Lightning's hint on a machine with SLURM installed": "`srun` command is available",
    "any Python warning": "Warning:",
    "a traceback": "Traceback",
}


def test_vae_run_writes_everything_and_prints_nothing_a_user_cannot_act_on(shared_data_dir, tmp_path):
    """`python train.py ...` as a user types it, in a process of its own, with the default loggers (W&B
    offline), the model summary and the default logging interval (50 steps; 8 batches an epoch here)."""
    log_dir = tmp_path / "outputs"
    overrides = [o for o in small_run_overrides(shared_data_dir, log_dir) if not o.startswith("trainer.log_every_n_steps=")]
    result = _ok(run_entry_point(*overrides, "model.beta=4"))
    output = result.stdout + result.stderr
    printed = {what: text for what, text in NOISE.items() if text in output}
    assert not printed, f"{printed}\n{output[-3000:]}"
    assert re.search(r"Total FLOPs: [1-9]", output), output[-3000:]  # counted on one example image
    assert "step values: logged every 8 steps, once per epoch of 8 batches (trainer.log_every_n_steps=50)" in output
    run_dir = _only_run_dir(log_dir)
    assert run_dir.name.endswith("vae-z4-beta4")
    metrics = _assert_run_dir(run_dir, VAE_METRICS)
    for stage in ("val", "test"):
        assert metrics[f"{stage}/loss"] == pytest.approx(metrics[f"{stage}/recon"] + 4 * metrics[f"{stage}/kl"], rel=1e-5)
        assert metrics[f"{stage}/nelbo"] == pytest.approx(metrics[f"{stage}/recon"] + metrics[f"{stage}/kl"], rel=1e-5)
    # Training learned something: the second epoch's mean loss is below the first's.
    epoch_losses = [float(r["train/loss"]) for r in _csv_rows(run_dir) if r["train/loss"]]
    assert len(epoch_losses) == 2 and epoch_losses[1] < epoch_losses[0]
    # The data source is printed, so no one mistakes a small run for a full one.
    assert "source=local" in result.stdout + result.stderr

    wandb_files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    run = summarize(wandb_files[0])
    assert run["name"] == "vae-z4-beta4"
    assert run["config"]["model"]["beta"] == 4 and run["config"]["data_used"]["data/source"] == "local"
    logged = {key for row in run["history"] for key in row}
    assert set(VAE_METRICS) <= logged and "train/recon_step" in logged
    test_row = next(row for row in run["history"] if "test/recon" in row)
    assert test_row["test/recon"] == pytest.approx(metrics["test/recon"])


def test_ae_run_has_no_kl_and_tests_its_best_checkpoint(shared_data_dir, tmp_path):
    log_dir = tmp_path / "outputs"
    assert run_entry_point_in_process(*small_run_overrides(shared_data_dir, log_dir), "model=ae", "logger=csv") == 0
    run_dir = _only_run_dir(log_dir)
    assert run_dir.name.endswith("ae-z4")
    metrics = _assert_run_dir(run_dir, AE_METRICS)
    assert not any(k.endswith(("/kl", "/nelbo")) for k in metrics)
    assert metrics["terms"] == ["recon", "loss"] and metrics["beta"] is None
    assert not list(run_dir.glob("wandb"))
    assert "kl" not in "".join(_csv_rows(run_dir)[0].keys())
    # The AE is deterministic: test/* are exactly the best checkpoint's losses on the test set.
    reference = one_device_test_losses(metrics["best_checkpoint"], shared_data_dir)
    assert metrics["test/recon"] == pytest.approx(reference["test/recon"], rel=1e-5)
    assert metrics["test/recon"] != pytest.approx(metrics["train/recon"], rel=1e-3)  # not some other stage's value


def test_two_process_ddp_run_is_one_run_with_exact_test_metrics(shared_data_dir, tmp_path):
    log_dir = tmp_path / "outputs"
    _ok(run_entry_point(*small_run_overrides(shared_data_dir, log_dir), "trainer.devices=2"))
    run_dir = _only_run_dir(log_dir)
    metrics = _assert_run_dir(run_dir, VAE_METRICS)
    assert metrics["devices"] == 2
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1
    # The test set was split over the ranks without padding: a one-device evaluation of the
    # same checkpoint gives the same numbers.
    result = one_device_test_losses(metrics["best_checkpoint"], shared_data_dir)
    # The KL is deterministic given the encoder (closed form): any image padded, dropped or
    # counted twice would show. The recon depends on the sampled z, so it only agrees closely.
    assert result["test/kl"] == pytest.approx(metrics["test/kl"], rel=1e-5)
    assert result["test/recon"] == pytest.approx(metrics["test/recon"], rel=2e-2)


def test_debug_fdr_checks_the_whole_path_and_keeps_only_the_record(shared_data_dir, tmp_path):
    log_dir = tmp_path / "outputs"
    assert run_entry_point_in_process(*small_run_overrides(shared_data_dir, log_dir), "debug=fdr") == 0
    run_dir = _only_run_dir(log_dir)
    assert {p.name for p in run_dir.iterdir()} == {".hydra", "train.log", "metrics.json"}  # as conf/debug/fdr.yaml says
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 1 and math.isfinite(metrics["test/nelbo"])


def _fails_cleanly(code: int, capfd, *fragments: str) -> str:
    """An in-process run (conftest.run_entry_point_in_process) that ended with exit code 2 and its
    message, no traceback: what it printed, read from `capfd`."""
    output = "".join(capfd.readouterr())
    assert code == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for fragment in fragments:
        assert fragment in output, output[-3000:]
    return output


# A value that the config check refuses (model.latent_dim=0, callbacks.latent_panels.every_n_epochs=-1, ...)
# ends the run with its one line: test_config.py checks every rule in-process, and one in a process of its own.


def test_corrupt_data_file_is_named(data_dir, tmp_path, capfd):
    path = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    code = run_entry_point_in_process(*small_run_overrides(data_dir, tmp_path / "outputs"))
    _fails_cleanly(code, capfd, str(path), "truncated", "data.source=download")
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))


def test_an_earlier_run_dir_is_never_overwritten(shared_data_dir, tmp_path, capfd):
    log_dir = tmp_path / "outputs"
    overrides = small_run_overrides(shared_data_dir, log_dir) + ["logger=csv", "trainer.max_epochs=1"]
    assert run_entry_point_in_process(*overrides) == 0
    first = _only_run_dir(log_dir)
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    capfd.readouterr()
    _fails_cleanly(run_entry_point_in_process(*overrides, f"hydra.run.dir={first}"), capfd, "already holds an earlier run")
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_trainer_setting_lightning_rejects_ends_with_one_clear_message(shared_data_dir, tmp_path, capfd):
    code = run_entry_point_in_process(*small_run_overrides(shared_data_dir, tmp_path / "outputs"), "+trainer.strategy=nonsense")
    _fails_cleanly(code, capfd, "trainer could not be built:", "nonsense", "check the trainer.* settings")
