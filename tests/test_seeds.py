"""Runs that differ only in seed: the sweep summary and `vaelab.reports.compare` report mean ± std (n).

The reference numbers are computed here, by hand, from the jobs' metrics.json files with the
statistics module (exact arithmetic), and compared with what summary_by_seed.csv, summary.md,
compare.md and the rate–distortion chart's points hold. The slow tests read the real 2×2 sweep
`train.py -m model.beta=1,4 seed=0,1` that tests/shared_runs.py trains once for the whole session.
"""

import csv
import itertools
import json
import os
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict
from PIL import Image

from conftest import REPO
from vaelab.naming import SweptKeys
from vaelab.reports.compare import group_runs, load_runs, find_runs, main as compare_main, rate_distortion_points
from vaelab.reports.summary import CSV_FILE, MD_FILE, SEEDS_CSV_FILE, mean_std, write_summary

slow = pytest.mark.slow

# A VAE's terms, and at val and test the KL's parts (models/decomposition.py).
METRICS = [f"{stage}/{term}" for stage in ("val", "test") for term in ("recon", "kl", "loss", "nelbo", "mi", "tc", "dwkl")]
CELL = re.compile(r"^(-?\d+(?:\.(\d+))?) ± (\d+(?:\.\d+)?) \((\d+)\)$")  # `mean ± std (n)`


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def _by_hand(job_dirs: list[Path], metrics=METRICS) -> dict[float, dict[str, tuple[float, float, int]]]:
    """Per β, per metric: (mean, sample std, n) over the completed jobs, with the statistics module."""
    records = [_metrics(d) for d in job_dirs]
    records = [r for r in records if r["status"] == "completed"]
    out = {}
    for beta in sorted({r["beta"] for r in records}):
        group = [r for r in records if r["beta"] == beta]
        out[beta] = {m: (statistics.mean(r[m] for r in group), statistics.stdev(r[m] for r in group), len(group))
                     for m in metrics}
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _table(md: str, title: str) -> list[dict[str, str]]:
    """The rows of the first markdown table after the line `title`, as dicts of its header."""
    lines = md.split(title, 1)[1].splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    start = lines.index(rows[0])
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in rows[2:]]


def _assert_cell(cell: str, expected: tuple[float, float, int]) -> None:
    """A markdown cell `mean ± std (n)`: both rounded to the decimals shown, n exact."""
    match = CELL.match(cell)
    assert match, cell
    decimals = len(match.group(2) or "")
    tolerance = 0.5 * 10 ** -decimals + 1e-9
    mean, std, n = expected
    assert abs(float(match.group(1)) - mean) <= tolerance, (cell, expected)
    assert abs(float(match.group(3)) - std) <= tolerance, (cell, expected)
    assert int(match.group(4)) == n


# -- fast -------------------------------------------------------------------------------------

def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def test_the_beta_seeds_experiment_sweeps_15_jobs_that_group_into_5_betas_of_3_seeds(tmp_path):
    """`python train.py experiment=beta_seeds` (no -m): the basic sweeper expands it into 15 VAE jobs,
    each named by its β and seed, and the summary's grouping (the saved configs less seed) makes of
    them one group per β with seeds 0 1 2."""
    from vaelab.reports.summary import seed_group_key

    cfg = _compose("experiment=beta_seeds")
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.optimized_metric == "val/nelbo"
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["experiment=beta_seeds"]  # as Hydra has them at the start of a multirun
    environ = dict(os.environ)
    try:
        SweptKeys().on_multirun_start(cfg)  # the keys the jobs' names show
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            configs = [compose(config_name="train", overrides=["experiment=beta_seeds", *job], return_hydra_config=True)
                       for job in jobs]
        names = [c.run_name for c in configs]
    finally:
        os.environ.clear()
        os.environ.update(environ)
        GlobalHydra.instance().clear()
    assert names == [f"vae-z16-beta{beta}-seed{seed}" for beta in ("0.5", "1", "2", "4", "8") for seed in (0, 1, 2)]
    assert {(c.model.name, c.model.latent_dim) for c in configs} == {("vae", 16)}
    groups = {}
    for num, cfg in enumerate(configs):  # each job's .hydra/config.yaml as Hydra saves it: no hydra key, unresolved
        job = tmp_path / str(num) / ".hydra"
        job.mkdir(parents=True)
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.save(cfg, job / "config.yaml")
        groups.setdefault(seed_group_key(job.parent), []).append((cfg.model.beta, cfg.seed))
    assert sorted(groups.values()) == [[(beta, 0), (beta, 1), (beta, 2)] for beta in (0.5, 1, 2, 4, 8)]


def test_mean_std_is_the_sample_statistics_in_float64():
    values = [0.1, 0.2, 0.4, 1e-3]
    stat = mean_std([*values, None, float("nan"), "x"])  # what is not a finite number is left out
    assert (stat.mean, stat.n) == (pytest.approx(statistics.mean(values), rel=1e-15), 4)
    assert stat.std == pytest.approx(statistics.stdev(values), rel=1e-14)
    assert mean_std([123.25, 124.5]).text() == "123.88 ± 0.88 (2)"  # std to 2 digits, the mean to its place
    one = mean_std([3.0])
    assert (one.mean, one.std, one.n, one.text()) == (3.0, None, 1, "3 (1)")  # no std from one run
    assert mean_std([]).text() == "" and mean_std([2.0, 2.0]).text() == "2.000 ± 0.000 (2)"


def _fake_run(root: Path, name: str, config: dict, record: dict) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    (run / "metrics.json").write_text(json.dumps(record))
    return run


def test_runs_are_grouped_by_their_settings_less_seed_and_locations(tmp_path):
    """Two single runs whose seed came from the config (no seed override), in different log
    dirs, are one group; a run with another learning rate is not."""
    def config(seed, log_dir, lr=0.001):
        return {"seed": seed, "run_name": "${run_name:}", "model": {"name": "vae", "beta": 1, "latent_dim": 4, "lr": lr},
                "paths": {"log_dir": str(log_dir), "output_dir": "${hydra:runtime.output_dir}"},
                "data": {"data_dir": str(log_dir / "data"), "val_size": 128}}

    def record(seed, recon, kl):
        return {"status": "completed", "model": "vae", "beta": 1, "latent_dim": 4, "recon_loss": "mse", "seed": seed,
                "terms": ["recon", "kl", "loss", "nelbo"], "test/recon": recon, "test/kl": kl, "val/loss": recon + kl}

    runs = [_fake_run(tmp_path / "a", "run", config(7, tmp_path / "a"), record(7, 50.0, 4.0)),
            _fake_run(tmp_path / "b", "run", config(8, tmp_path / "b"), record(8, 52.0, 5.0)),
            _fake_run(tmp_path / "c", "run", config(7, tmp_path / "c", lr=0.01), record(7, 40.0, 9.0))]
    groups = group_runs(load_runs(runs))
    assert [[r.dir for r in g.runs] for g in groups] == [runs[:2], runs[2:]]
    assert [g.label for g in groups] == ["vae β=1 z=4 (model.lr=0.001)", "vae β=1 z=4 (model.lr=0.01)"]
    assert groups[0].seeds == [7, 8]
    first, second = rate_distortion_points(groups)
    assert (first.kl.mean, first.kl.std, first.recon.mean, first.recon.std) == (
        4.5, pytest.approx(statistics.stdev([4.0, 5.0])), 51.0, pytest.approx(statistics.stdev([50.0, 52.0])))
    assert (second.kl.mean, second.kl.std, second.recon.std, second.label) == (9.0, None, None, "vae β=1 z=4 (model.lr=0.01)")


# -- slow: a real 2×2 grid, β × seed (tests/shared_runs.py) -------------------------------------------

BETAS = (1, 4)


def _jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


@slow
def test_summary_aggregates_the_beta_seed_grid_as_computed_by_hand(beta_seed_grid):
    jobs = _jobs(beta_seed_grid)
    assert [j.name.split("_", 1)[1] for j in jobs] == ["vae-z4-beta1-seed0", "vae-z4-beta1-seed1",
                                                       "vae-z4-beta4-seed0", "vae-z4-beta4-seed1"]
    expected = _by_hand(jobs)
    assert set(expected) == set(BETAS)

    # summary.csv keeps one row per job, its columns as before
    per_job = _read_csv(beta_seed_grid / CSV_FILE)
    assert [r["overrides"] for r in per_job] == ["model.beta=1 seed=0", "model.beta=1 seed=1", "model.beta=4 seed=0",
                                                "model.beta=4 seed=1"]
    assert list(per_job[0]) == ["job", "run_name", "status", "overrides", *METRICS, "error", "run_dir"]

    groups = _read_csv(beta_seed_grid / SEEDS_CSV_FILE)
    assert list(groups[0]) == ["group", "overrides", "seeds", "n", "failed", "jobs",
                               *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))]
    assert [(g["overrides"], g["seeds"], g["n"], g["failed"], g["jobs"]) for g in groups] == [
        ("model.beta=1", "0 1", "2", "0", "0 1"), ("model.beta=4", "0 1", "2", "0", "2 3")]
    for group, beta in zip(groups, BETAS):
        for metric in METRICS:
            mean, std, _ = expected[beta][metric]
            assert float(group[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12, abs=1e-12)
            assert float(group[f"{metric}_std"]) == pytest.approx(std, rel=1e-9, abs=1e-12)

    md = (beta_seed_grid / MD_FILE).read_text()
    assert len(_table(md, "# Sweep")) == 4  # the per-job table as before
    rows = _table(md, "## Across seeds")
    assert [(r["overrides"], r["seeds"], r["n"], r["failed"]) for r in rows] == [("model.beta=1", "0 1", "2", "0"),
                                                                                ("model.beta=4", "0 1", "2", "0")]
    for row, beta in zip(rows, BETAS):
        for metric in METRICS:
            _assert_cell(row[metric], expected[beta][metric])


@slow
def test_compare_aggregates_the_beta_seed_grid_as_computed_by_hand(beta_seed_grid, tmp_path, capsys):
    out = tmp_path / "report"
    assert compare_main([str(beta_seed_grid), "--out", str(out)]) == 0
    assert "compare:" not in capsys.readouterr().err  # four runs: no stage lines
    expected = _by_hand(_jobs(beta_seed_grid), [*METRICS, "val/active_units"])
    md = (out / "compare.md").read_text()
    assert len(_table(md, "# Comparison of runs")) == 4  # one row per run, as before
    rows = _table(md, "## Across seeds")
    assert [(r["group"], r["β"], r["seeds"], r["n"], r["failed"]) for r in rows] == [
        ("vae β=1 z=4", "1", "0 1", "2", "0"), ("vae β=4 z=4", "4", "0 1", "2", "0")]
    for row, beta in zip(rows, BETAS):
        for metric in ("test/recon", "test/kl", "test/loss", "test/nelbo", "val/loss", "val/active_units"):
            _assert_cell(row[metric], expected[beta][metric])

    # the chart: one point per β at the mean, bars of ±1 std in both axes
    points = rate_distortion_points(group_runs(load_runs(find_runs([beta_seed_grid]))))
    assert [p.label for p in points] == ["vae β=1 z=4 (n=2)", "vae β=4 z=4 (n=2)"]
    for point, beta in zip(points, BETAS):
        for stat, metric in ((point.kl, "test/kl"), (point.recon, "test/recon")):
            mean, std, n = expected[beta][metric]
            assert (stat.mean, stat.std, stat.n) == (pytest.approx(mean, rel=1e-12), pytest.approx(std, rel=1e-9), n)
    image = np.asarray(Image.open(out / "rate_distortion.png"))
    assert image.shape[0] > 100 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20
    assert "±1 sample standard deviation" in md and "![rate–distortion](rate_distortion.png)" in md


@slow
def test_a_failed_and_a_missing_job_are_counted_not_averaged(beta_seed_grid, tmp_path, capsys):
    """A copy of the grid with a third seed of β=1 that failed (its metrics.json written by
    hand, with a value that must not enter the mean) and a third of β=4 that never finished."""
    sweep = tmp_path / "sweep"
    shutil.copytree(beta_seed_grid, sweep, ignore=shutil.ignore_patterns("*.ckpt"))
    jobs = _jobs(sweep)
    for number, source, beta in ((4, jobs[0], 1), (5, jobs[2], 4)):
        job = sweep / f"{number}_vae-z4-beta{beta}-seed2"
        (job / ".hydra").mkdir(parents=True)
        config = OmegaConf.load(source / ".hydra" / "config.yaml")
        config.seed = 2
        OmegaConf.save(config, job / ".hydra" / "config.yaml")
        overrides = [o if not o.startswith("seed=") else "seed=2" for o in OmegaConf.load(source / ".hydra" / "overrides.yaml")]
        OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    (sweep / "4_vae-z4-beta1-seed2" / "metrics.json").write_text(json.dumps(
        {"status": "failed", "error": "the training loss became nan", "seed": 2, "model": "vae", "beta": 1, "latent_dim": 4,
         "recon_loss": "mse", "terms": ["recon", "kl", "loss", "nelbo"], "val/recon": 1e6, "test/kl": 1e6, "test/recon": 1e6}))
    expected = _by_hand(jobs)  # the four completed jobs

    rows = write_summary(sweep)
    assert [r["status"] for r in rows] == ["completed"] * 4 + ["failed", "missing"]
    assert len(_read_csv(sweep / CSV_FILE)) == 6
    groups = _read_csv(sweep / SEEDS_CSV_FILE)
    assert [(g["overrides"], g["seeds"], g["n"], g["failed"], g["jobs"]) for g in groups] == [
        ("model.beta=1", "0 1", "2", "1", "0 1 4"), ("model.beta=4", "0 1", "2", "1", "2 3 5")]
    for group, beta in zip(groups, BETAS):
        assert float(group["val/recon_mean"]) == pytest.approx(expected[beta]["val/recon"][0], rel=1e-12)
    md_rows = _table((sweep / MD_FILE).read_text(), "## Across seeds")
    assert [(r["n"], r["failed"]) for r in md_rows] == [("2", "1"), ("2", "1")]
    _assert_cell(md_rows[0]["val/recon"], expected[1]["val/recon"])

    # compare sees five runs (the missing one left no metrics.json): it prints its stages
    out = tmp_path / "report"
    assert compare_main([str(sweep), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for stage in ("compare: read 5 runs (2 settings) in ", "compare: drew recon_vs_epoch.png in ",
                  "compare: drew rate_distortion.png (2 points) in ", f"compare: wrote {out / 'compare.md'} in "):
        assert stage in err, err
    rows = _table((out / "compare.md").read_text(), "## Across seeds")
    assert [(r["group"], r["n"], r["failed"]) for r in rows] == [("vae β=1 z=4", "2", "1"), ("vae β=4 z=4", "2", "0")]
    _assert_cell(rows[0]["test/recon"], expected[1]["test/recon"])
    point = rate_distortion_points(group_runs(load_runs(find_runs([sweep]))))[0]
    assert (point.kl.mean, point.kl.n) == (pytest.approx(expected[1]["test/kl"][0], rel=1e-12), 2)


def test_one_seed_per_setting_adds_no_section(tmp_path):
    """A sweep without replicas: summary_by_seed.csv has groups of one (std empty), summary.md no extra section."""
    for i, lr in enumerate((0.001, 0.01)):
        job = tmp_path / f"{i}_vae-z4-beta1-lr{lr}"
        (job / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"model.lr={lr}"]), job / ".hydra" / "overrides.yaml")
        (job / "metrics.json").write_text(json.dumps({"status": "completed", "seed": 42, "terms": ["recon", "loss"],
                                                      "val/recon": 2.0 + i, "val/loss": 2.0 + i}))
    write_summary(tmp_path)
    groups = _read_csv(tmp_path / SEEDS_CSV_FILE)
    assert [(g["overrides"], g["n"], g["val/recon_mean"], g["val/recon_std"]) for g in groups] == [
        ("model.lr=0.001", "1", "2.0", ""), ("model.lr=0.01", "1", "3.0", "")]
    assert "## Across seeds" not in (tmp_path / MD_FILE).read_text()
