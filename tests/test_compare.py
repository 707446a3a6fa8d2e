"""`python -m vaelab.reports.compare` on run directories laid out as train.py leaves them: once in a
process of its own, as a user runs it, and its main() in this process otherwise."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from vaelab.reports.compare import find_runs, load_runs, main

HEADER = ["epoch", "step", "test/kl", "test/loss", "test/nelbo", "test/recon", "train/kl", "train/loss", "train/nelbo",
          "train/recon", "train/recon_step", "val/active_units", "val/kl", "val/loss", "val/nelbo", "val/recon"]


def _write_run(run_dir: Path, model: str, beta: float, recon: list[float], kl: list[float]) -> None:
    """metrics.json and csv/metrics.csv in CSVLogger's layout: one row per logging call, blanks elsewhere."""
    (run_dir / "csv").mkdir(parents=True)
    rows = []
    for epoch, (r, k) in enumerate(zip(recon, kl)):
        terms = {"recon": r, "kl": k, "nelbo": r + k, "loss": r + beta * k} if model == "vae" else {"recon": r, "loss": r}
        rows.append({"epoch": epoch, "step": 10 * epoch + 4, "train/recon_step": r + 5})  # a _step row: not a curve point
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, **{f"val/{t}": v for t, v in terms.items()}})
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, **{f"train/{t}": v + 1 for t, v in terms.items()}})
    final = {f"test/{t}": v for t, v in terms.items()}
    rows.append({"epoch": len(recon), "step": 0, **final})
    header = [h for h in HEADER if model == "vae" or not h.endswith(("kl", "nelbo"))]
    with (run_dir / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    metrics = {"status": "completed", "model": model, "beta": beta if model == "vae" else None, "latent_dim": 4,
               "recon_loss": "mse", "terms": list(terms),
               "epochs": len(recon), **final, "val/loss": 1.0}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun" / "2024-01-01" / "10-00-00"
    _write_run(root / "0_vae-z4-beta1", "vae", 1.0, recon=[60.0, 50.0, 45.0], kl=[5.0, 8.0, 9.0])
    _write_run(root / "1_vae-z4-beta4", "vae", 4.0, recon=[70.0, 65.0, 62.0], kl=[2.0, 3.0, 3.5])
    _write_run(root / "2_ae-z4", "ae", 1.0, recon=[40.0, 35.0, 33.0], kl=[0, 0, 0])
    return root


def test_runs_of_a_sweep_are_found_and_read(sweep):
    runs = load_runs(find_runs([sweep]))
    assert [r.label for r in runs] == ["vae β=1 z=4", "vae β=4 z=4", "ae z=4"]
    assert runs[1].curves["val/kl"] == [(0, 2.0), (1, 3.0), (2, 3.5)]
    assert runs[1].curves["train/recon"] == [(0, 71.0), (1, 66.0), (2, 63.0)]  # epoch means, not _step values
    assert "val/kl" not in runs[2].curves


def test_compare_writes_the_table_and_the_charts(sweep, tmp_path):
    """`python -m vaelab.reports.compare <runs> --out <dir>` in a process of its own."""
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "vaelab.reports.compare", str(sweep / "0_vae-z4-beta1"), str(sweep / "1_vae-z4-beta4"),
                             str(sweep / "2_ae-z4"), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = (out / "compare.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "directory" not in line]
    assert len(rows) == 3
    beta4 = next(r for r in rows if r.startswith("| vae β=4"))
    cells = [c.strip() for c in beta4.strip("|").split("|")]
    # run, model, β, latent_dim, recon_loss, epochs, status, test/recon, test/kl, test/nelbo, test/loss
    assert cells[1:11] == ["vae", "4", "4", "mse", "3", "completed", "62.000", "3.500", "65.500", "76.000"]
    ae = next(r for r in rows if r.startswith("| ae z=4"))
    assert [c.strip() for c in ae.strip("|").split("|")][8] == "–"  # an AE has no test/kl
    for name in ("recon_vs_epoch.png", "kl_vs_epoch.png", "nelbo_vs_epoch.png", "rate_distortion.png"):
        image = np.asarray(Image.open(out / name))
        assert image.shape[0] > 100 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20, name
        assert f"]({name})" in text
    assert "Not placed (no KL" in text and "ae z=4" in text.split("Not placed")[1]
    assert "disentanglement" not in text.lower()  # no run was evaluated: nothing about it


def test_compare_without_runs_says_so(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2  # `python -m` exits with main()'s code
    err = capsys.readouterr().err
    assert err.startswith(f"error: no metrics.json in {tmp_path}") and err.count("\n") == 1, err  # one line


# -- disentanglement: evaluations linked to their training runs ----------------------------------------------

# MIG and FactorVAE score given to each job of the shared β × seed grid, by (β, seed): numbers that an
# evaluation of a data=dsprites run would leave (the metrics themselves: tests/test_disentanglement.py).
GIVEN = {(1.0, 0): (0.10, 0.50), (1.0, 1): (0.20, 0.60), (4.0, 0): (0.30, 0.70), (4.0, 1): (0.50, 0.90)}


def _evaluation_record(checkpoint: Path, mig: float, factor_vae: float) -> dict:
    """What eval.py's disentanglement stage leaves in its record (eval.json), with the numbers given."""
    from vaelab.evaluation import disentanglement as dis

    sizes = dis.Sizes(points=300, train=200, test=100, batch=8)
    return {"checkpoint": str(checkpoint.resolve()), "disentanglement/mig": mig, "disentanglement/factor_vae": factor_vae,
            "disentanglement/protocol": {**dis.protocol(sizes, ["mig", "factor_vae"], 42), "data": "dSprites-like (procedural)"}}


def _wandb_run(folder: Path) -> dict:
    from vaelab.reports.wandb_offline import summarize, wait_until_finished

    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    assert wait_until_finished(run_file), run_file
    return summarize(run_file)


def test_evaluations_reach_the_summary_compare_and_the_training_runs_wandb(beta_seed_grid, tmp_path):
    """Each job of a real sweep evaluated (eval.py's link to the training run, with given numbers): the sweep
    summary is rebuilt with the numbers, compare.md has them in its tables, against β and as the colour of the
    rate–distortion chart, and the training run's W&B run gets them as summary values."""
    import shutil

    from omegaconf import OmegaConf

    from vaelab.reports.summary import CSV_FILE, MD_FILE, SEEDS_CSV_FILE, EvalSweepExit, job_dirs, run_config
    from vaelab.rundir import EVALS_DIR, latest_evaluation
    from vaelab.tasks.eval import record_in_training_run

    sweep = tmp_path / "sweep"
    shutil.copytree(beta_seed_grid, sweep, ignore=shutil.ignore_patterns("images"))
    jobs = {(float(run_config(d)["model.beta"]), int(run_config(d)["seed"])): d for d in job_dirs(sweep)}
    assert set(jobs) == set(GIVEN)
    first = jobs[1.0, 0]
    record_in_training_run(_evaluation_record(first / "checkpoints" / "last.ckpt", 0.9, 0.9), first / "checkpoints" / "last.ckpt",
                           tmp_path / "evals" / "earlier")  # replaced by the later evaluation with the same protocol
    for (beta, seed), job in jobs.items():
        out = tmp_path / "evals" / job.name  # laid out as `eval.py -m` leaves its jobs
        (out / ".hydra").mkdir(parents=True)
        (out / ".hydra" / "overrides.yaml").write_text(f"- ckpt_path={job}/checkpoints/last.ckpt\n")
        checkpoint = job / "checkpoints" / "last.ckpt"
        record = _evaluation_record(checkpoint, *GIVEN[beta, seed])
        (out / "eval.json").write_text(json.dumps(record))
        record_in_training_run(record, checkpoint, out)
        wandb_run = _wandb_run(out)
        assert wandb_run["id"] == _wandb_run(job)["id"]  # the training run's W&B run, resumed offline
        assert wandb_run["summary"]["disentanglement/mig"] == GIVEN[beta, seed][0]
        assert wandb_run["summary"]["disentanglement/factor_vae"] == GIVEN[beta, seed][1]
        assert wandb_run["summary"]["disentanglement/protocol"].startswith("disentanglement_lib metrics, sizes points 300")
    assert len(list((first / EVALS_DIR).glob("*.json"))) == 1
    assert latest_evaluation(first)["evaluation"] == str((tmp_path / "evals" / first.name).resolve())

    # The summary, rebuilt by each evaluation, and once more at the end of `eval.py -m`.
    (sweep / MD_FILE).unlink()
    EvalSweepExit().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "evals")}}}))
    with (sweep / CSV_FILE).open() as f:
        per_job = {row["run_dir"]: row for row in csv.DictReader(f)}
    for key, job in jobs.items():
        row = per_job[str(job)]
        assert (float(row["disentanglement/mig"]), float(row["disentanglement/factor_vae"])) == GIVEN[key]
        assert row["evaluation"] == str((tmp_path / "evals" / job.name).resolve())
    with (sweep / SEEDS_CSV_FILE).open() as f:
        groups = list(csv.DictReader(f))
    for beta in (1.0, 4.0):
        migs = [GIVEN[beta, seed][0] for seed in (0, 1)]
        group = next(g for g in groups if f"model.beta={beta:g}" in g["overrides"])
        assert float(group["disentanglement/mig_mean"]) == pytest.approx(np.mean(migs))
        assert float(group["disentanglement/mig_std"]) == pytest.approx(np.std(migs, ddof=1))
    md = (sweep / MD_FILE).read_text()
    assert "- disentanglement_lib metrics, sizes points 300, train 200, test 100, batch 8, lowered" in md
    assert "0.40 ± 0.14 (2)" in md  # β = 4: MIG 0.3 and 0.5

    # compare.md
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    text = (out / "compare.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    mig_column = cells.index("disentanglement/mig")
    for (beta, seed), (mig, _) in GIVEN.items():
        row = next(line for line in text.splitlines() if line.startswith("| ") and f"`{jobs[beta, seed]}`" in line)
        assert [c.strip() for c in row.strip("|").split("|")][mig_column] == f"{mig:.3f}"
    assert "0.40 ± 0.14 (2)" in text.split("## Across seeds", 1)[1]
    runs = load_runs(find_runs([sweep]))
    from vaelab.reports.compare import beta_families, metric_against_beta
    ((label, family),) = beta_families(runs)
    assert label == "all runs"
    assert [(beta, s.mean) for beta, s in metric_against_beta(family, "disentanglement/mig")] == [
        (1.0, pytest.approx(0.15)), (4.0, pytest.approx(0.40))]
    for name in ("mig_vs_beta.png", "factor_vae_vs_beta.png"):
        image = np.asarray(Image.open(out / name))
        assert image.shape[0] > 100 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20, name
        assert f"]({name})" in text.split("## Disentanglement", 1)[1]
    assert "Points are coloured by their MIG" in text
    assert np.asarray(Image.open(out / "rate_distortion.png")).shape[1] == 700  # wider: the MIG colour bar
