"""Sweeps through the real entry point: `train.py -m ...` with Hydra's real sweepers and launchers,
real Lightning (DDP over gloo on the CPU), real W&B in offline mode.

Jobs are tiny (one epoch of 8 batches); the slow tests share one synthetic data set, and the W&B tests
the β × seed grid of tests/shared_runs.py. A sweep runs inside the test's process
(conftest.run_entry_point_in_process) unless processes are what the test is about: the sweep's own
exit code with a failed job, the joblib and submitit workers, and the processes of a job on two
devices (each its own `python train.py` and the rank Lightning relaunches) are real processes.
"""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import REPO, run_entry_point, run_entry_point_in_process, small_run_overrides
from vaelab.naming import SweptKeys
from vaelab.sweeps import workers
from vaelab.sweeps.jobs import _one_process
from vaelab.reports.summary import CSV_FILE, FAILED_SWEEP_EXIT_CODE, MD_FILE, SweepSummary, main as summary_main, write_summary
from vaelab.reports.wandb_offline import summarize

slow = pytest.mark.slow


def _overrides(data_dir: Path, log_dir: Path, *args: str) -> list[str]:
    return [*(o for o in small_run_overrides(data_dir, log_dir) if not o.startswith("trainer.max_epochs")),
            "trainer.max_epochs=1", *args]


def _sweep(data_dir: Path, log_dir: Path, *args: str, multirun: bool = True, timeout: int = 400, env=None):
    """`python train.py -m ...` in a process of its own."""
    return run_entry_point(*(["-m"] if multirun else []), *_overrides(data_dir, log_dir, *args), timeout=timeout, env=env)


def _sweep_in_process(data_dir: Path, log_dir: Path, *args: str, multirun: bool = True) -> int:
    """The same sweep inside this process: its exit code."""
    return run_entry_point_in_process(*(["-m"] if multirun else []), *_overrides(data_dir, log_dir, *args))


def _only_sweep_dir(log_dir: Path) -> Path:
    """The one directory the sweep wrote; nothing else in the log dir (no second sweep, no run dirs)."""
    assert [p.name for p in log_dir.iterdir()] == ["multirun"], list(log_dir.iterdir())
    sweep_dirs = [p for p in log_dir.glob("multirun/*/*") if p.is_dir()]
    assert len(sweep_dirs) == 1, sweep_dirs
    return sweep_dirs[0]


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


VAE_TERMS = ("recon", "kl", "loss", "nelbo", "mi", "tc", "dwkl")  # at val and test, with the KL's parts


def _summary_rows(sweep_dir: Path, terms=VAE_TERMS) -> list[dict[str, str]]:
    """The rows of summary.csv, whose columns are val/ and test/ of the terms the jobs logged."""
    with (sweep_dir / CSV_FILE).open() as f:
        reader = csv.DictReader(f)
        metrics = [f"{stage}/{term}" for stage in ("val", "test") for term in terms]
        assert reader.fieldnames == ["job", "run_name", "status", "overrides", *metrics, "error", "run_dir"]
        return list(reader)


def _hyperparameter_lines(job_dir: Path) -> list[str]:
    """What each process of the job trained with: rank 0 logs to train.log, rank r to train_ddp_process_r.log."""
    lines = []
    for log_file in sorted(job_dir.glob("train*.log")):
        lines += [line.split(" - ", 1)[1] for line in log_file.read_text().splitlines() if "hyperparameters:" in line]
    return lines


def _output(result) -> str:
    return (result.stdout + result.stderr)[-4000:]


# -- fast: configs and the summary ------------------------------------------------------------

def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


class _Submitted(Exception):
    """Raised where the launcher would call sbatch: the test has its submission script."""


def test_slurm_launcher_asks_sbatch_for_the_trainers_nodes_and_devices(tmp_path, monkeypatch):
    """The real launcher, instantiated as Hydra does in the sweep's process, submits the sweep as
    one job array whose script asks for trainer.num_nodes nodes and trainer.devices tasks and GPUs
    per node (sbatch itself is not called: no cluster needed)."""
    from submitit.slurm.slurm import SlurmExecutor

    scripts = []

    def sbatch(executor, submission_file):
        scripts.append(Path(submission_file).read_text())
        raise _Submitted

    monkeypatch.setattr(SlurmExecutor, "_make_submission_command", sbatch)
    cfg = _compose("hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2", f"paths.log_dir={tmp_path}")
    GlobalHydra.instance().clear()
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    launcher.config = cfg  # what Hydra's launcher.setup() sets
    with pytest.raises(_Submitted):
        launcher.launch([["model.beta=1"], ["model.beta=4"]], initial_job_idx=0)
    (script,) = scripts
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --array=0-1%2",  # the two jobs: one array
                 "#SBATCH --signal=USR2@120", "--kill-on-bad-exit=1"):
        assert line in script, script
    assert str(tmp_path / "multirun") in script  # the job's logs go to the sweep's directory


def _job_list(*overrides: str) -> tuple[DictConfig, list[DictConfig], list[str]]:
    """The config of `train.py <overrides>` and the composed config of each job its sweeper launches,
    in launch order, with the run names the jobs get (the swept keys handed on, as in a sweep)."""
    cfg = _compose(*overrides)
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    with open_dict(cfg):
        cfg.hydra.overrides.task = list(overrides)  # as Hydra has them at the start of a multirun
    environ = dict(os.environ)
    try:
        SweptKeys().on_multirun_start(cfg)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            configs = [compose(config_name="train", overrides=[*overrides, *job], return_hydra_config=True) for job in jobs]
        names = [c.run_name for c in configs]  # resolved now: it reads the swept keys from the environment
    finally:
        os.environ.clear()
        os.environ.update(environ)
        GlobalHydra.instance().clear()
    return cfg, configs, names


@pytest.mark.parametrize(("experiment", "jobs"), [
    ("ae_vs_vae", [("ae", 16, None, "ae-z16"), ("vae", 16, 1, "vae-z16-beta1")]),
    ("beta_sweep", [("vae", 16, beta, f"vae-z16-beta{beta:g}") for beta in (0.5, 1, 2, 4, 8)]),
    ("latent_sweep", [(model, z, 1 if model == "vae" else None, f"{model}-z{z}" + ("-beta1" if model == "vae" else ""))
                      for model in ("ae", "vae") for z in (2, 8, 16, 32)]),
])
def test_an_experiment_is_a_sweep_whose_jobs_train_its_settings(experiment, jobs):
    """`python train.py experiment=<name>` (no -m) sweeps: the basic sweeper expands its grid into these
    jobs, in this order, each composed with the experiment's defaults and named by what it varies."""
    cfg, configs, names = _job_list(f"experiment={experiment}")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert [(c.model.name, c.model.latent_dim, c.model.get("beta"), n) for c, n in zip(configs, names)] == jobs
    assert len(set(names)) == len(configs)  # no two jobs share a run directory name


def test_worker_slots_are_the_lowest_free_ones_and_freed_with_their_holder(tmp_path):
    first, second, third = (workers.claim_slot(tmp_path) for _ in range(3))
    assert (first, second, third) == (0, 1, 2)
    workers._held.pop(1).close()  # the worker of slot 1 exits: its lock goes with it
    assert workers.claim_slot(tmp_path) == 1
    while workers._held:
        workers._held.pop().close()


def test_a_worker_takes_its_gpu_at_its_first_one_device_job_and_gives_several_device_jobs_the_sweeps(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    for name, value in (("_claimed", None), ("_slot_gpu", None), ("_sweep_visible", None)):
        monkeypatch.setattr(workers, name, value)
    monkeypatch.setattr(workers, "_held", [])
    threads = torch.get_num_threads()
    other = workers.claim_slot(tmp_path / workers.SLOTS_DIR)  # another worker holds slot 0: this one gets slot 1
    try:
        first = workers.take_worker_slot(tmp_path, n_jobs=2, several_devices=True)
        assert (first.slot, first.cuda_visible_devices) == (1, None) and os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
        second = workers.take_worker_slot(tmp_path, n_jobs=2, several_devices=False)
        assert (second.slot, second.cuda_visible_devices) == (1, "5") and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert workers.sweep_environment()["CUDA_VISIBLE_DEVICES"] == "3,5"  # what a several-device job's process sees
    finally:
        torch.set_num_threads(threads)
        while workers._held:
            workers._held.pop().close()
    assert other == 0


@pytest.mark.parametrize(("n_jobs", "expected"), [(2, 2), (-1, 16), (-2, 15), (None, 1), (64, 64)])
def test_n_jobs_means_what_joblib_makes_of_it(n_jobs, expected):
    assert workers.resolved_n_jobs(n_jobs, cores=16) == expected


@pytest.mark.parametrize(("devices", "nodes", "one"), [(1, 1, True), ("1", 1, True), ([0], 1, True), (2, 1, False),
                                                      ("0,1", 1, False), (-1, 1, False), ("auto", 1, False), (1, 2, False)])
def test_which_jobs_need_a_process_of_their_own(devices, nodes, one):
    assert _one_process(OmegaConf.create({"devices": devices, "num_nodes": nodes})) is one


def _fake_job(sweep_dir: Path, name: str, overrides: list[str], record: dict | None) -> Path:
    job = sweep_dir / name
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if record is not None:
        (job / "metrics.json").write_text(json.dumps(record))
    return job


def test_summary_has_one_row_per_job_and_says_what_failed(tmp_path, capsys):
    common = ["paths.log_dir=/x", "trainer.max_epochs=1"]
    values = {f"{s}/{t}": 1.5 for s in ("val", "test") for t in ("recon", "kl", "nelbo", "loss")}
    _fake_job(tmp_path, "0_ae-z4", [*common, "model=ae"],
              {"status": "completed", "run_name": "ae-z4", "terms": ["recon", "loss"],
               "val/recon": 2.0, "val/loss": 2.0, "test/recon": 3.0, "test/loss": 3.0})
    _fake_job(tmp_path, "1_vae-z4-beta1", [*common, "model=vae"],
              {"status": "completed", "run_name": "vae-z4-beta1", "terms": ["recon", "kl", "loss", "nelbo"], **values})
    _fake_job(tmp_path, "2_vae-z4-beta1", [*common, "model=vae", "model.lr=1e30"],
              {"status": "failed", "run_name": "vae-z4-beta1", "error": "the training loss became nan"})
    _fake_job(tmp_path, "10_ae-z8", [*common, "model=ae", "model.latent_dim=8"], None)  # never finished

    rows = write_summary(tmp_path)
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]  # job order, not name order
    written = _summary_rows(tmp_path, terms=("recon", "kl", "loss", "nelbo"))  # the terms these records name
    assert [r["status"] for r in written] == ["completed", "completed", "failed", "missing"]
    assert [r["overrides"] for r in written] == ["model=ae", "model=vae", "model=vae model.lr=1e30", "model=ae model.latent_dim=8"]
    assert written[0]["val/recon"] == "2.0" and written[0]["val/kl"] == ""  # an AE has no KL
    assert all(written[1][name] == "1.5" for name in values)
    assert written[2]["error"] == "the training loss became nan" and "no metrics.json" in written[3]["error"]
    assert written[3]["run_dir"] == str(tmp_path / "10_ae-z8")
    md = (tmp_path / MD_FILE).read_text()
    assert "4 jobs: 2 completed, 2 failed or missing" in md and "paths.log_dir=/x trainer.max_epochs=1" in md
    assert len([line for line in md.splitlines() if line.startswith("| ")]) == 1 + 4  # header + one row per job

    (tmp_path / CSV_FILE).unlink()
    assert summary_main([str(tmp_path)]) == FAILED_SWEEP_EXIT_CODE  # the helper rebuilds it
    assert len(_summary_rows(tmp_path, terms=("recon", "kl", "loss", "nelbo"))) == 4
    assert "| 10 | ae-z8 | missing |" in capsys.readouterr().out
    assert summary_main([str(tmp_path / "0_ae-z4")]) == 2  # not a sweep dir


def test_the_end_of_a_sweep_says_why_each_job_failed_and_how_to_resume_an_interrupted_one(tmp_path, caplog):
    _fake_job(tmp_path, "0_vae-z4-beta1", ["model.beta=1"], {"status": "failed", "run_name": "vae-z4-beta1",
                                                             "error": "the training loss became nan"})
    _fake_job(tmp_path, "1_vae-z4-beta2", ["model.beta=2"], {"status": "interrupted", "run_name": "vae-z4-beta2",
                                                             "signal": "SIGTERM"})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as exit_info:
        SweepSummary().on_multirun_end(config)
    assert exit_info.value.code == FAILED_SWEEP_EXIT_CODE
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "job 0 (vae-z4-beta1) failed: the training loss became nan" in lines
    assert (f"job 1 (vae-z4-beta2) interrupted: resume with python train.py "
            f"ckpt_path={tmp_path / '1_vae-z4-beta2'}/checkpoints/interrupted.ckpt") in lines


# -- slow: real sweeps -------------------------------------------------------------------------

@pytest.fixture
def offline_wandb(monkeypatch):
    """W&B offline and quiet in this process and the processes it starts, as conftest.start_entry_point has it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


GRID = {"vae-z4-beta1-seed0": (1, 0), "vae-z4-beta1-seed1": (1, 1), "vae-z4-beta4-seed0": (4, 0), "vae-z4-beta4-seed1": (4, 1)}


@slow
def test_grid_2x2_one_wandb_run_per_job_in_one_group_and_a_summary(beta_seed_grid, tmp_path):
    sweep_dir = beta_seed_grid
    jobs = _job_dirs(sweep_dir)
    names = [j.name.split("_", 1)[1] for j in jobs]
    assert names == list(GRID) and [j.name.split("_")[0] for j in jobs] == ["0", "1", "2", "3"]

    group = f"train-{sweep_dir.parent.name}_{sweep_dir.name}"  # the sweep's name and time
    for job, name in zip(jobs, names):
        beta, seed = GRID[name]
        assert _metrics(job)["status"] == "completed"
        runs = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(runs) == 1, runs
        run = summarize(runs[0])
        assert (run["name"], run["group"]) == (name, group)
        assert {f"model.beta={beta}", f"seed={seed}"} <= set(run["tags"])
        assert not any(t.startswith(("paths.", "data.data_dir")) for t in run["tags"])
        assert any("test/recon" in row for row in run["history"])  # finished: the test values are in

    rows = _summary_rows(sweep_dir)
    assert [(r["job"], r["run_name"], r["status"]) for r in rows] == [(str(i), n, "completed") for i, n in enumerate(names)]
    for row, job, name in zip(rows, jobs, names):
        beta, seed = GRID[name]
        assert row["overrides"].split() == [f"model.beta={beta}", f"seed={seed}"]
        assert row["run_dir"] == str(job)
        metrics = _metrics(job)
        for metric in (f"{stage}/{term}" for stage in ("val", "test") for term in ("recon", "kl", "loss", "nelbo")):
            assert float(row[metric]) == pytest.approx(metrics[metric])
    assert (sweep_dir / MD_FILE).read_text().count("| completed |") == 4

    # The helper, as a command, rebuilds the same table from the directory alone (a copy: the grid is shared).
    copy = tmp_path / sweep_dir.name
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("*.ckpt", "wandb", "images", "csv"))
    (copy / CSV_FILE).unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "vaelab.reports.summary", str(copy)], capture_output=True, text=True)
    assert rebuilt.returncode == 0, _output(rebuilt)
    assert (copy / CSV_FILE).read_text() == (sweep_dir / CSV_FILE).read_text().replace(str(sweep_dir), str(copy))


@slow
def test_dashboard_of_a_real_offline_sweep_draws_only_what_the_runs_logged(beta_seed_grid, tmp_path, capsys):
    from wandb_workspaces.workspaces import internal

    from vaelab.reports.dashboard import SPEC_FILE, describe, main as dashboard_main, read_run

    grid = beta_seed_grid
    assert dashboard_main([str(grid), "--out", str(tmp_path)]) == 0  # --out: the grid is shared, read only
    printed = capsys.readouterr().out
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    jobs = _job_dirs(grid)
    every_key = set().union(*_logged_keys(jobs).values())
    group = f"train-{grid.parent.name}_{grid.name}"
    assert spec["filter"] == {"group": group} and spec["name"] == group
    sections = {s["name"]: s["panels"] for s in spec["sections"]}
    assert list(sections) == ["Loss components", "Rate–distortion", "Hyperparameters", "Panels", "Runs"]
    lines = {p["title"]: p["y"] for p in sections["Loss components"]}
    assert lines == {**{t: [f"train/{t}", f"val/{t}"] for t in ("recon", "kl", "nelbo", "loss")},
                     **{t: [f"val/{t}"] for t in ("mi", "tc", "dwkl")}}  # the KL's parts: validation only
    [scatter] = sections["Rate–distortion"]
    assert (scatter["x"], scatter["y"], scatter["color"]) == ("val/recon", "val/kl", "model.beta")
    [parallel] = sections["Hyperparameters"]
    assert parallel["config"] == ["model.beta", "seed"]  # the swept keys, in command-line order
    assert parallel["metrics"] == ["val/nelbo"]  # no eval.py: no test/nll
    [media] = sections["Panels"]
    assert media["keys"] and all(key.startswith("panels/") for key in media["keys"])
    drawn = {key for panels in sections.values() for p in panels
             for key in [*p.get("metrics", []), *p.get("keys", []), *(p["y"] if p["type"] == "line" else [])]}
    drawn |= {scatter["x"], scatter["y"]}
    assert drawn <= every_key, drawn - every_key  # nothing drawn that no run logged
    # The W&B view is what W&B stores: it parses as W&B's own model, with the group filter and the panels.
    view = internal.View.model_validate(spec["wandb_view"])
    assert view.spec.section.run_sets[0].filters["filters"][0]["value"] == group
    assert sum(len(s.panels) for s in view.spec.section.panel_bank_config.sections) == 7 + 1 + 1 + 1 + 1
    assert "wandb sync" in printed and f"WANDB_MODE=online python -m vaelab.reports.dashboard {grid}" in printed
    # Runs given one by one: the view shows those runs, by their W&B ids, not their whole group.
    two = [read_run(job) for job in jobs[:2]]
    ids = [next(job.glob("wandb/offline-run-*")).name.rsplit("-", 1)[1] for job in jobs[:2]]
    assert describe(two, "two runs", chosen_runs=True)["filter"] == {"ids": ids}


def _logged_keys(jobs: list[Path]) -> dict[str, set[str]]:
    """Every key each job logged, read here independently of the dashboard: the CSV header and the W&B history."""
    logged = {}
    for job in jobs:
        with (job / "csv" / "metrics.csv").open() as f:
            keys = set(next(csv.reader(f)))
        for row in summarize(next(job.glob("wandb/offline-run-*/run-*.wandb")))["history"]:
            keys |= set(row) | {key.removesuffix("/_type") for key in row if key.endswith("/_type")}  # images
        logged[job.name] = keys
    return logged


@slow
def test_failed_jobs_are_recorded_and_the_sweep_goes_on(shared_data_dir, tmp_path):
    """The sweep as a process of its own: a failed job makes its exit code, which a scheduler reads."""
    log_dir = tmp_path / "outputs"
    # a NaN loss (an exception during fit), a good job after it, and a value the checks refuse
    result = _sweep(shared_data_dir, log_dir, "model.lr=1e30,1e-3,-1", "logger=csv")
    assert result.returncode == FAILED_SWEEP_EXIT_CODE, _output(result)
    assert "2 of 3 jobs failed" in result.stdout + result.stderr
    sweep_dir = _only_sweep_dir(log_dir)
    rows = _summary_rows(sweep_dir)
    assert [r["status"] for r in rows] == ["failed", "completed", "failed"]
    assert "training loss became" in rows[0]["error"] and rows[2]["error"] == "model.lr=-1 must be a number > 0"
    # The run name shows the key the sweep varies, so no two jobs share one.
    assert [r["run_name"] for r in rows] == ["vae-z4-beta1-lr1e+30", "vae-z4-beta1-lr0.001", "vae-z4-beta1-lr-1"]
    assert math.isfinite(float(rows[1]["test/nelbo"]))
    for row in rows:
        assert _metrics(Path(row["run_dir"]))["status"] == row["status"]


@slow
def test_grid_on_two_devices_runs_each_job_once_and_survives_a_failed_job(shared_data_dir, tmp_path, offline_wandb):
    """The sweep in this process; each job on two devices is its own `python train.py`, whose rank 1
    Lightning relaunches: 4 processes for the two jobs that train."""
    log_dir = tmp_path / "outputs"
    # a NaN loss on both ranks, a good job after it, and a value refused before any process starts
    code = _sweep_in_process(shared_data_dir, log_dir, "trainer.devices=2", "model.lr=1e30,1e-3,-1")
    assert code == FAILED_SWEEP_EXIT_CODE
    sweep_dir = _only_sweep_dir(log_dir)  # no second sweep, no run dir from a relaunched rank
    failed, completed, refused = _job_dirs(sweep_dir)
    assert "training loss became" in _metrics(failed)["error"]
    assert _metrics(refused)["error"] == "model.lr=-1 must be a number > 0" and not (refused / "checkpoints").exists()
    metrics = _metrics(completed)
    assert metrics["status"] == "completed" and metrics["devices"] == 2
    for job, lr in [(failed, "1e+30"), (completed, "0.001")]:
        lines = _hyperparameter_lines(job)
        assert len(lines) == 2 and lines[0] == lines[1] and f"lr={lr}" in lines[0]  # both ranks, same job
        assert (job / "train_ddp_process_1.log").is_file()  # rank 1 was a process of its own
        runs = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(runs) == 1 and summarize(runs[0])["group"] == f"train-{sweep_dir.parent.name}_{sweep_dir.name}"
    assert [r["status"] for r in _summary_rows(sweep_dir)] == ["failed", "completed", "failed"]


@slow
def test_joblib_launcher_gives_each_worker_its_own_gpu_and_share_of_the_cores(shared_data_dir, tmp_path, monkeypatch):
    """The sweep in this process; its two joblib workers are real processes."""
    log_dir = tmp_path / "outputs"
    # Two GPUs as the sweep sees them (names only: the jobs train on the CPU, which ignores them).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    code = _sweep_in_process(shared_data_dir, log_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                             "model.latent_dim=4,8,12", "logger=csv")
    assert code == 0
    sweep_dir = _only_sweep_dir(log_dir)
    assert "JoblibLauncher" in OmegaConf.load(sweep_dir / "multirun.yaml").hydra.launcher._target_
    assert [(r["run_name"], r["status"]) for r in _summary_rows(sweep_dir)] == [
        ("vae-z4-beta1", "completed"), ("vae-z8-beta1", "completed"), ("vae-z12-beta1", "completed")]
    workers = [_metrics(job)["worker"] for job in _job_dirs(sweep_dir)]
    cores = os.cpu_count() or 1
    for worker in workers:  # slot s of 2 workers: GPU s mod 2 of "3,5", cores // 2 threads
        assert worker["workers"] == 2 and worker["slot"] in (0, 1)
        assert worker["cuda_visible_devices"] == ["3", "5"][worker["slot"]]
        assert 1 <= worker["torch_threads"] <= max(1, cores // 2)
        assert worker["pid"] != os.getpid()  # a worker process, not this one
    by_process = {w["pid"]: w["slot"] for w in workers}
    assert len(set(by_process.values())) == len(by_process), workers  # two processes never share a slot
    for job in _job_dirs(sweep_dir):  # the job itself ran with that one GPU visible
        assert f"CUDA_VISIBLE_DEVICES={_metrics(job)['worker']['cuda_visible_devices']}" in (job / "train.log").read_text()


@slow
def test_submitit_local_executor_runs_the_jobs_of_an_ae_and_vae_sweep_and_its_dashboard(shared_data_dir, tmp_path,
                                                                                      offline_wandb, capsys):
    """The sweep in this process; its jobs run in submitit's worker processes, with W&B offline. An AE
    logs no KL: its row and its W&B run say so, and the dashboard takes its keys run by run."""
    from vaelab.reports.dashboard import SPEC_FILE, main as dashboard_main

    log_dir = tmp_path / "outputs"
    code = _sweep_in_process(shared_data_dir, log_dir, "hydra/launcher=submitit_local", "model=ae,vae")
    assert code == 0
    sweep_dir = _only_sweep_dir(log_dir)
    rows = _summary_rows(sweep_dir)
    assert [(r["run_name"], r["status"]) for r in rows] == [("ae-z4", "completed"), ("vae-z4-beta1", "completed")]
    jobs = _job_dirs(sweep_dir)
    assert len(list(sweep_dir.glob(".submitit/*/*_result.pkl"))) == 2  # each job came back from its worker
    ae, vae = rows
    assert ae["val/kl"] == ae["test/nelbo"] == "" and vae["val/kl"] != "" and vae["test/nelbo"] != ""  # an AE has no KL
    logged = _logged_keys(jobs)
    assert "val/kl" not in logged[jobs[0].name] and "val/kl" in logged[jobs[1].name]

    assert dashboard_main([str(sweep_dir)]) == 0
    capsys.readouterr()
    sections = {s["name"]: s["panels"] for s in json.loads((sweep_dir / SPEC_FILE).read_text())["sections"]}
    [parallel] = sections["Hyperparameters"]
    assert parallel["config"] == ["model.name"]  # model=ae,vae is model.name in W&B's config
    assert parallel["metrics"] == ["val/nelbo"]  # the VAE's: β-free
    lines = {p["title"]: p["y"] for p in sections["Loss components"]}
    assert lines["kl"] == ["train/kl", "val/kl"]  # the VAE logged them, the AE did not: the keys of all runs


@slow
@pytest.mark.parametrize("devices", [1, 2])
def test_optuna_search_every_rank_trains_the_sampled_values(shared_data_dir, tmp_path, devices):
    """`hparams_search=optuna` (a multirun without -m), in this process. On two devices its one trial
    is a `python train.py` of its own and its relaunched rank 1; on one device two trials, in here."""
    log_dir = tmp_path / "outputs"
    trials = 2 if devices == 1 else 1
    code = _sweep_in_process(shared_data_dir, log_dir, "hparams_search=optuna", f"hydra.sweeper.n_trials={trials}",
                             f"trainer.devices={devices}", "logger=csv", multirun=False)  # hparams_search sets MULTIRUN
    assert code == 0
    sweep_dir = _only_sweep_dir(log_dir)
    jobs = _job_dirs(sweep_dir)
    assert len(jobs) == trials
    objective = []
    for job in jobs:
        sampled = dict(o.split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")
                       if o.startswith(("model.beta=", "model.latent_dim=", "model.lr=")))
        assert len(sampled) == 3
        # conf/hparams_search/optuna.yaml's search space (β in range(0.5, 8, step=0.5), lr a choice), less the
        # key the command line fixes (model.latent_dim=4 of the small run): that one is not searched
        assert float(sampled["model.beta"]) in [0.5 * i for i in range(1, 17)]
        assert float(sampled["model.lr"]) in (3e-4, 1e-3, 3e-3) and sampled["model.latent_dim"] == "4"
        lines = _hyperparameter_lines(job)
        assert len(lines) == devices and len(set(lines)) == 1  # every rank: the same values
        logged = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
        assert float(logged["beta"]) == float(sampled["model.beta"]) and logged["latent_dim"] == sampled["model.latent_dim"]
        assert float(logged["lr"]) == float(sampled["model.lr"])
        metrics = _metrics(job)
        assert metrics["status"] == "completed" and metrics["devices"] == devices
        objective.append(metrics["val/nelbo"])
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == pytest.approx(min(objective))  # the study minimised val/nelbo
    assert not list(REPO.glob("*.db")) and not list(sweep_dir.rglob("*.db"))  # storage: null, in memory
