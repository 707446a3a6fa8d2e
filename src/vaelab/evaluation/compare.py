"""Compare finished runs without the network: a table of final metrics, curves and the rate–distortion plot.

    python -m vaelab.compare outputs/multirun/2024-01-01/10-00-00          # every run of a sweep
    python -m vaelab.compare <run dir> <run dir> ... --out my-comparison

Reads each run's metrics.json and csv/metrics.csv (the records train.py leaves) and writes
compare.md with PNGs beside it: recon, kl and nelbo against epoch (one chart each, all runs
overlaid; solid: validation, dashed: training) and kl against recon, one point per run. The
W&B runs carry the same numbers under the same names.
"""

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vaelab.files import markdown_table, write_text
from vaelab.rundir import METRICS_FILE, logged_terms  # light modules: compare loads no torch


@dataclass
class Run:
    dir: Path
    metrics: dict
    label: str = ""
    # curves["val/recon"] = [(epoch, value), ...], from the epoch rows of csv/metrics.csv
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories: the given ones that hold metrics.json, and any below the others (sweeps)."""
    found: list[Path] = []
    for path in paths:
        if (path / METRICS_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.rglob(METRICS_FILE))
        else:
            raise FileNotFoundError(f"{path} is not a directory")
    if not found:
        raise FileNotFoundError(f"no {METRICS_FILE} in {', '.join(map(str, paths))}: give run directories or sweep directories")
    return list(dict.fromkeys(found))


def terms_of(runs: list[Run]) -> list[str]:
    return logged_terms([run.metrics for run in runs])


def curve_terms(runs: list[Run]) -> list[str]:
    """Terms drawn against epoch: all but `loss`, which depends on β and compares no runs."""
    return [t for t in terms_of(runs) if t != "loss"]


def read_curves(csv_path: Path, terms: list[str]) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    if not csv_path.is_file():
        return curves
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            for stage in ("train", "val"):
                for term in terms:
                    value = row.get(f"{stage}/{term}")
                    if value not in (None, ""):  # bare names are epoch means; _step rows are skipped
                        curves.setdefault(f"{stage}/{term}", []).append((int(row["epoch"]), float(value)))
    return curves


def _beta(metrics: dict) -> Optional[float]:
    return metrics.get("beta") if isinstance(metrics.get("beta"), (int, float)) else None  # an AE has no β


def run_label(metrics: dict) -> str:
    beta = _beta(metrics)
    return f"{metrics.get('model', '?')}{'' if beta is None else f' β={beta:g}'} z={metrics.get('latent_dim')}"


def load_runs(dirs: list[Path]) -> list[Run]:
    runs = []
    for d in dirs:
        metrics = json.loads((d / METRICS_FILE).read_text())
        runs.append(Run(d, metrics, run_label(metrics), read_curves(d / "csv" / "metrics.csv", metrics.get("terms", []))))
    labels = [r.label for r in runs]
    for run in runs:  # runs that differ in something else keep their directory name
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.dir.name})"
    return runs


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def curve_chart(runs: list[Run], term: str, path: Path) -> bool:
    """`term` against epoch for every run that logged it; False when none did (e.g. kl of AEs)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    drawn = False
    for i, run in enumerate(runs):
        for stage, style in (("val", "-"), ("train", "--")):
            points = run.curves.get(f"{stage}/{term}")
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, style, marker="o", markersize=3, color=f"C{i % 10}",
                        label=f"{run.label} ({stage})")
                drawn = True
    if not drawn:
        return False
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{term} (per image)")
    ax.set_title(f"{term} per epoch; solid: val, dashed: train", fontsize=9)
    ax.legend(fontsize=6)
    _save(fig, path)
    return True


def _final(metrics: dict, term: str) -> Optional[float]:
    value = metrics.get(f"test/{term}", metrics.get(f"val/{term}"))
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def rate_distortion_chart(runs: list[Run], path: Path) -> list[Run]:
    """kl (rate) against recon (distortion), one labelled point per run with both; returns those runs."""
    placed = [r for r in runs if _final(r.metrics, "kl") is not None and _final(r.metrics, "recon") is not None]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for i, run in enumerate(placed):
        x, y = _final(run.metrics, "kl"), _final(run.metrics, "recon")
        ax.scatter([x], [y], color=f"C{i % 10}")
        ax.annotate(run.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("rate: kl (nats per image)")
    ax.set_ylabel("distortion: recon (per image)")
    ax.set_title("rate–distortion: larger β moves runs up and to the left", fontsize=9)
    _save(fig, path)
    return placed


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return "–" if value is None else str(value)


def write_compare(runs: list[Run], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table = [*(f"test/{t}" for t in terms_of(runs)), "val/loss", "val/active_units"]
    rows = []
    for run in runs:
        m = run.metrics
        beta = _beta(m)
        rows.append([_cell(c) for c in (run.label, m.get("model"), None if beta is None else f"{beta:g}", m.get("latent_dim"),
                                        m.get("recon_loss"), m.get("epochs"), m.get("status"), *(m.get(k) for k in table))]
                    + [f"`{run.dir}`"])
    lines = [
        "# Comparison of runs", "",
        f"{len(runs)} run(s); final metrics are those of metrics.json (test/* of the best checkpoint, val/* of the best epoch).", "",
        *markdown_table(["run", "model", "β", "latent_dim", "recon_loss", "epochs", "status", *table, "directory"], rows),
    ]
    if len({r.metrics.get("recon_loss") for r in runs}) > 1:
        lines += ["", "**Note:** the runs use different `recon_loss` (mse and bce): their recon, nelbo and loss are "
                  "on different scales and do not compare."]
    lines += ["", "## Curves", ""]
    for term in curve_terms(runs):
        name = f"{term}_vs_epoch.png"
        if curve_chart(runs, term, out / name):
            lines += [f"![{term} against epoch]({name})", ""]
    placed = rate_distortion_chart(runs, out / "rate_distortion.png")
    lines += ["## Rate–distortion", "", "Each run with a KL term is one point: its KL (the rate, in nats) against its "
              "reconstruction error (the distortion), from test/* (val/* when a run was not tested). β trades one for the other.", "",
              "![rate–distortion](rate_distortion.png)", ""]
    left_out = [r.label for r in runs if r not in placed]
    if left_out:
        lines += [f"Not placed (no KL: an AE has no rate term, or the run did not finish): {', '.join(left_out)}.", ""]
    return write_text(out / "compare.md", "\n".join(lines))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaelab.compare", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories holding runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="where compare.md and the PNGs go (default: outputs/compare/<date>_<time>)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(find_runs(args.paths))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or Path("outputs") / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = write_compare(runs, out)
    print(f"compared {len(runs)} runs: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
