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


def test_compare_without_runs_says_so(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2  # `python -m` exits with main()'s code
    err = capsys.readouterr().err
    assert err.startswith(f"error: no metrics.json in {tmp_path}") and err.count("\n") == 1, err  # one line
