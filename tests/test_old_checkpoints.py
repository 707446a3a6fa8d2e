"""A checkpoint that an earlier vaelab wrote still evaluates and resumes.

tests/fixtures/vae-14170b7-last.ckpt was written by `python train.py` at commit 14170b7 (before the
SLURM and one-training-path work): a VAE, MLP 784-8-2, one epoch on conftest's synthetic data, with

    paths.log_dir=<tmp> data.data_dir=<conftest's data> data.val_size=128 data.batch_size=64
    model.hidden_dims=[8] model.latent_dim=2 trainer.max_epochs=1 trainer.accelerator=cpu logger=csv
    callbacks.latent_panels.every_n_epochs=0

Its run directory is gone, as when a checkpoint is copied elsewhere: eval.py and a resume must
work from the file alone.
"""

import json
import shutil

import pytest

from conftest import REPO, UNREACHABLE_MIRROR, run_dirs, run_entry_point_in_process

FIXTURE = REPO / "tests" / "fixtures" / "vae-14170b7-last.ckpt"
DATA = ("data.source=local", "data.val_size=128", "data.batch_size=64", f"data.mirrors=[{UNREACHABLE_MIRROR}]")


@pytest.fixture
def old_checkpoint(tmp_path):
    path = tmp_path / "old" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    shutil.copy(FIXTURE, path)
    return path


def test_a_14170b7_checkpoint_evaluates(old_checkpoint, shared_data_dir, tmp_path):
    log_dir = tmp_path / "outputs"
    code = run_entry_point_in_process(f"ckpt_path={old_checkpoint}", f"paths.log_dir={log_dir}",
                                      f"data.data_dir={shared_data_dir}", *DATA, "eval.k=20", "eval.n_samples=64",
                                      "eval.max_images=64", f"eval.classifier_dir={tmp_path / 'classifiers'}",
                                      script="eval.py")
    assert code == 0
    (eval_json,) = log_dir.glob("evals/*/*/eval.json")
    result = json.loads(eval_json.read_text())
    assert result["model"] == "vae" and result["latent_dim"] == 2
    assert result["test/nll"] <= result["test/nelbo"] + 1e-3  # the importance-sampled bound is tighter


def test_a_14170b7_checkpoint_resumes(old_checkpoint, shared_data_dir, tmp_path):
    log_dir = tmp_path / "outputs"
    code = run_entry_point_in_process(f"ckpt_path={old_checkpoint}", f"paths.log_dir={log_dir}",
                                      f"data.data_dir={shared_data_dir}", *DATA, "model.hidden_dims=[8]",
                                      "model.latent_dim=2", "trainer.max_epochs=2", "trainer.accelerator=cpu",
                                      "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2", "logger=csv",
                                      "callbacks.latent_panels.every_n_epochs=0")
    assert code == 0
    (run_dir,) = run_dirs(log_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    # One more epoch on top of the checkpoint's one: 8 steps of 64 images each.
    assert record["status"] == "completed" and (record["epochs"], record["global_step"]) == (2, 16)
