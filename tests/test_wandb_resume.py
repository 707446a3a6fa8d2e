"""A resume continues the W&B run, and log_model=true records the best checkpoint: real W&B in
offline mode and a real Lightning Trainer through the entry point (in-process), read back from the
`.wandb` files with vaelab.reports.wandb_offline."""

import base64
import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import built_once, run_dirs, run_entry_point_in_process, small_run_overrides, write_synthetic_dataset
from vaelab.reports.wandb_offline import summarize

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 8  # (640 - 128 validation images) / batches of 64
LOGGING = ["logger=wandb", "callbacks.latent_panels=null", "trainer.log_every_n_steps=1"]


def _train(data_dir: Path, log_dir: Path, *overrides: str) -> Path:
    assert run_entry_point_in_process(*small_run_overrides(data_dir, log_dir), *LOGGING, *overrides) == 0
    (run_dir,) = run_dirs(log_dir)
    return run_dir


def _wandb_file(run_dir: Path) -> Path:
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return path


def _steps(history: list[dict], metric: str) -> list[int]:
    return [row["trainer/global_step"] for row in history if metric in row]


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def first_run(tmp_path_factory) -> Path:
    """2 epochs (16 steps), every epoch's checkpoint kept (save_top_k=-1), log_model=true, on its own
    synthetic data (`_data_dir`): once per session for all pytest-xdist workers (conftest.built_once).
    Read it; resume from it into a new run dir."""

    def build(directory: Path) -> None:
        write_synthetic_dataset(directory / "data")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("WANDB_MODE", "offline")
            env.setenv("WANDB_SILENT", "true")
            _train(directory / "data", directory / "outputs", "+callbacks.model_checkpoint.save_top_k=-1",
                   "logger.wandb.log_model=true")

    (run_dir,) = run_dirs(built_once(tmp_path_factory, "wandb_resume_first_run", build) / "outputs")
    return run_dir


def _data_dir(first_run: Path) -> Path:
    """The data the first run was trained on (beside its outputs/runs/<date>/<run>)."""
    return first_run.parents[3] / "data"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_a_resume_logs_into_the_same_wandb_run_from_the_checkpoint_step(first_run, tmp_path, offline):
    last = first_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    first = summarize(_wandb_file(first_run))
    assert checkpoint["global_step"] == 2 * STEPS_PER_EPOCH
    assert checkpoint["wandb_run"] == {"id": first["id"], "logs": [str(_wandb_file(first_run))]}

    resumed_dir = _train(_data_dir(first_run), tmp_path / "outputs", f"ckpt_path={last}", "trainer.max_epochs=3")
    assert resumed_dir != first_run and len(list(first_run.glob("wandb/offline-run-*"))) == 1  # the earlier one as it was
    resumed = summarize(_wandb_file(resumed_dir))
    assert resumed["id"] == first["id"] and resumed["name"] == first["name"]

    # The history goes on from the checkpoint's step: together, every step once.
    start, end = 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH
    assert _steps(first["history"], "train/loss_step") == list(range(start))
    assert _steps(resumed["history"], "train/loss_step") == list(range(start, end))
    assert min(row["trainer/global_step"] for row in resumed["history"]) == start
    assert _steps(first["history"], "val/loss") + _steps(resumed["history"], "val/loss") == [
        STEPS_PER_EPOCH * (e + 1) - 1 for e in range(3)]
    # The CSV record of the new run directory says the same.
    rows = _csv_rows(resumed_dir)
    assert int(rows[0]["step"]) == start and min(int(r["step"]) for r in rows) == start
    assert [int(r["step"]) for r in rows if r["train/loss_step"]] == list(range(start, end))

    # The resumed run's checkpoints carry the run on: its id, and both parts' files.
    again = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)["wandb_run"]
    assert again == {"id": first["id"], "logs": [str(_wandb_file(first_run)), str(_wandb_file(resumed_dir))]}


def test_steps_logged_after_the_checkpoint_are_in_the_run_once(first_run, tmp_path, offline):
    """As after a kill -9 in epoch 1: the run logged steps 8-15 after the checkpoint of epoch 0."""
    epoch0 = first_run / "checkpoints" / "epoch_000.ckpt"
    assert torch.load(epoch0, weights_only=True)["global_step"] == STEPS_PER_EPOCH
    resumed_dir = _train(_data_dir(first_run), tmp_path / "outputs", f"ckpt_path={epoch0}", "trainer.max_epochs=3")
    first, resumed = summarize(_wandb_file(first_run)), summarize(_wandb_file(resumed_dir))
    assert resumed["id"] == first["id"]

    end = 3 * STEPS_PER_EPOCH
    logged = _steps(first["history"], "train/loss_step") + _steps(resumed["history"], "train/loss_step")
    assert logged == list(range(end))  # steps 8-15 once (the first copy), then 16-23
    assert _steps(first["history"], "val/loss") + _steps(resumed["history"], "val/loss") == [7, 15, 23]
    assert _steps(first["history"], "train/loss") + _steps(resumed["history"], "train/loss") == [7, 15, 23]

    # The new run's CSV has every step from the checkpoint's on, and the replayed ones are the
    # values the W&B run kept (the resume is exact).
    rows = [r for r in _csv_rows(resumed_dir) if r["train/loss_step"]]
    assert [int(r["step"]) for r in rows] == list(range(STEPS_PER_EPOCH, end))
    kept = {row["trainer/global_step"]: row["train/loss_step"] for row in first["history"] if "train/loss_step" in row}
    assert [float(r["train/loss_step"]) for r in rows[:STEPS_PER_EPOCH]] == [kept[s] for s in range(8, 16)]


def test_log_model_records_the_best_checkpoint_as_an_artifact_offline(first_run):
    metrics = json.loads((first_run / "metrics.json").read_text())
    best = Path(metrics["best_checkpoint"])
    assert best.parent == first_run / "checkpoints" and best.name.startswith("epoch_")
    run = summarize(_wandb_file(first_run))
    (artifact,) = run["artifacts"]  # once, of three checkpoints (epoch_000, epoch_001, last)
    assert artifact["name"] == f"model-{run['id']}" and artifact["type"] == "model"
    assert sorted(artifact["aliases"]) == ["best", "latest"]
    assert artifact["metadata"]["original_filename"] == best.name
    assert artifact["metadata"]["score"] == pytest.approx(metrics["val/loss"])
    # Offline it refers to the checkpoint in the run directory (no copy), which `wandb sync` uploads.
    (file,) = artifact["files"]
    assert file["path"] == "model.ckpt" and file["local_path"] == str(best.resolve())
    assert file["size"] == best.stat().st_size
    assert file["digest"] == base64.b64encode(hashlib.md5(best.read_bytes()).digest()).decode()


def test_a_run_file_cut_short_is_read_to_its_last_whole_record(first_run, tmp_path):
    """What a kill -9 leaves: the earlier attempt's file, which a resume reads back."""
    from vaelab.reports.wandb_offline import history

    whole = _wandb_file(first_run).read_bytes()
    rows = list(history(_wandb_file(first_run)))
    cut = tmp_path / "run-cut.wandb"
    cut.write_bytes(whole[: len(whole) // 2])
    read = list(history(cut))
    assert 0 < len(read) < len(rows) and read == rows[: len(read)]


def test_lightning_still_has_the_private_wandb_logger_attributes_vaelab_uses(monkeypatch):
    """vaelab/lightning_compat.py reads Lightning's WandbLogger internals; an upgrade that drops
    or renames one fails here, not in a resumed run."""
    import pytorch_lightning as pl

    from vaelab.lightning_compat import (WANDB_LOGGER_PRIVATE, artifact_name, logged_checkpoint_times,
                                                  logged_keys, missing_wandb_attributes, set_wandb_run_id,
                                                  started_wandb_run, wandb_init_arguments)
    from vaelab.training.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="vaelab", prefix="p", checkpoint_name="best-model")
    assert not missing_wandb_attributes(logger), (
        f"pytorch-lightning {pl.__version__} lacks WandbLogger.{', '.join(missing_wandb_attributes(logger))}; "
        f"update vaelab/lightning_compat.py (needs {', '.join(WANDB_LOGGER_PRIVATE)})")
    set_wandb_run_id(logger, "abc123")
    assert wandb_init_arguments(logger)["id"] == "abc123" and logger.version == "abc123"
    assert started_wandb_run(logger) is None  # asking does not start a run
    assert logged_checkpoint_times(logger) == {} and artifact_name(logger) == "best-model"
    assert logged_keys(logger, {"val/loss": 1.0}) == {"p-val/loss"}
