"""Trained runs that several test files read: each trained once per test session, for all pytest-xdist
workers (conftest.built_once). A test that changes such a run's files works on a copy.

conftest.py imports the fixtures: every test file can ask for them by name.
"""

from pathlib import Path

import pytest

from conftest import built_once, run_entry_point_in_process, small_run_overrides, write_synthetic_dataset

# The 2×2 grid, β × seed: the sweep summary and compare's mean ± std over seeds (test_seeds.py), one W&B
# run per job in the sweep's group and the dashboard (test_sweeps.py), and the unstacked sweep that the
# stacked one must match (test_stacked_sweeps.py). Every test of those reads it with these overrides:
# the default loggers (W&B offline with its checkpoint artifact, and the CSV) and callbacks (latent
# panels), two epochs (so that the best epoch is a choice), and the small run of conftest.
BETA_SEED_GRID = ("model.beta=1,4", "seed=0,1", "logger.wandb.log_model=true")


def grid_overrides(data_dir: Path, log_dir: Path) -> list[str]:
    """The overrides of the shared grid's sweep (data_dir and log_dir aside): the stacked sweep repeats them."""
    return [*small_run_overrides(data_dir, log_dir), *BETA_SEED_GRID]


def sweep_dirs(log_dir: Path) -> list[Path]:
    return [p for p in Path(log_dir).glob("multirun/*/*") if p.is_dir()]


@pytest.fixture(scope="session")
def beta_seed_grid(tmp_path_factory) -> Path:
    """`train.py -m model.beta=1,4 seed=0,1 logger.wandb.log_model=true` (with the small run's
    overrides): its sweep directory. Trained in-process through the real entry point with Hydra's
    basic launcher: nothing about processes is checked on it. Read it; copy it to change it."""

    def build(directory: Path) -> None:
        data_dir = directory / "data"
        write_synthetic_dataset(data_dir)
        code = run_entry_point_in_process("-m", *grid_overrides(data_dir, directory / "outputs"))
        assert code == 0, f"the shared β × seed grid exited with {code}; see {directory / 'outputs'}"

    directory = built_once(tmp_path_factory, "beta_seed_grid", build)
    log_dir = directory / "outputs"
    assert [p.name for p in log_dir.iterdir()] == ["multirun"], list(log_dir.iterdir())  # no run dirs, one sweep
    (sweep_dir,) = sweep_dirs(log_dir)
    return sweep_dir


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A VAE and an AE, each trained one epoch by one sweep (`train.py -m model=vae,ae`, in-process)
    on their own synthetic data: {"data_dir": ..., "log_dir": ..., "vae": run dir, "ae": run dir}.

    Read by test_eval.py and test_progress.py. Read it; copy it to change it.
    """

    def build(directory: Path) -> None:
        write_synthetic_dataset(directory / "data")
        code = run_entry_point_in_process("-m", *small_run_overrides(directory / "data", directory / "outputs"),
                                          "logger=csv", "trainer.max_epochs=1",
                                          "callbacks.latent_panels.every_n_epochs=0", "model=vae,ae")
        assert code == 0, f"the VAE and AE sweep exited with {code}; see {directory / 'outputs'}"

    directory = built_once(tmp_path_factory, "eval_trained_vae_ae", build)
    log_dir = directory / "outputs"
    runs = {d.parent.name.split("_", 1)[1].split("-")[0]: d.parent for d in log_dir.glob("multirun/*/*/*/metrics.json")}
    assert set(runs) == {"vae", "ae"}, runs
    return {"data_dir": directory / "data", "log_dir": log_dir, **runs}
