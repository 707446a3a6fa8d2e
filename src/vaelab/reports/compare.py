"""Compare finished runs without the network: a table of final metrics, curves and the rate–distortion plot.

    python -m vaelab.reports.compare outputs/multirun/2024-01-01/10-00-00          # every run of a sweep
    python -m vaelab.reports.compare <run dir> <run dir> ... --out my-comparison

Reads each run's metrics.json and csv/metrics.csv (the records train.py leaves) and writes
compare.md with PNGs beside it: recon, kl and nelbo against epoch (one chart each, all runs
overlaid; solid: validation, dashed: training) and kl against recon, one point per run. The
W&B runs carry the same numbers under the same names.

Runs that differ only in `seed` (their saved configs, .hydra/config.yaml, are equal but for the
seed and the keys that say where files are: vaelab.reports.summary.seed_group_key) form a group:
compare.md gets a table "Across seeds" with one row per group (mean ± sample std (n) of each
metric over its completed runs) below the per-run table, the curves show a group's mean with a
±1 std band, and the rate–distortion chart one point per group at its mean with ±1 std error
bars on both axes. A run without replicas is a group of one and keeps its single point.
Disentanglement (data with known factors): a run evaluated by eval.py has its newest evaluation's
`disentanglement/*` numbers (vaelab.rundir.latest_evaluation). When some run has them, compare.md adds
them to its tables, draws each against β (model.beta of the run's saved config; one line per group
of other settings, e.g. model.objective=elbo and tcvae, at the mean of the seeds with a ±1 std band)
and colours the rate–distortion chart by MIG, the protocol named beside every chart; without them
compare.md is as above.
From PROGRESS_FROM_RUNS runs on, each stage (reading, each chart, writing) prints one line
with its time on stderr; fewer runs print only the result.
"""

import argparse
import csv
import json
import math
import re
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from vaelab.files import write_text
from vaelab.reports.tables import markdown_table
from vaelab.rundir import METRICS_FILE, latest_evaluation, logged_terms  # light modules: compare loads no torch
from vaelab.reports.summary import SEED_KEY, MeanStd, mean_std, run_config, settings, settings_key

Progress = Optional[Callable[[str], None]]  # called with one line per stage; None: quiet
PROGRESS_FROM_RUNS = 5  # the command line prints a line per stage (with its time) from this many runs on


def _progress(line: str) -> None:
    print(f"compare: {line}", file=sys.stderr, flush=True)


@dataclass
class Run:
    dir: Path
    metrics: dict
    label: str = ""
    # curves["val/recon"] = [(epoch, value), ...], from the epoch rows of csv/metrics.csv
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # the saved config (.hydra/config.yaml) flattened to dotted keys; None when the run has none
    config: Optional[dict[str, Any]] = None
    # the newest evaluation recorded in the run (vaelab.rundir.latest_evaluation); its scores are in `metrics`
    evaluation: Optional[dict[str, Any]] = None

    @property
    def completed(self) -> bool:
        return self.metrics.get("status") == "completed"


@dataclass
class Group:
    """Runs that differ only in seed; a run without replicas is a group of one. Statistics are
    over the completed runs only; the others are counted in `failed`."""
    runs: list[Run]
    label: str = ""

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.completed]

    @property
    def failed(self) -> int:
        return len(self.runs) - len(self.completed)

    @property
    def seeds(self) -> list[Any]:
        return [r.metrics.get(SEED_KEY) for r in self.completed]

    def stat(self, name: str) -> MeanStd:
        return mean_std(r.metrics.get(name) for r in self.completed)


@dataclass(frozen=True)
class Point:
    """A point of the rate–distortion chart: a group's mean KL and recon, std None for one run."""
    label: str
    kl: MeanStd
    recon: MeanStd
    mig: MeanStd = MeanStd(None, None, 0)  # the group's MIG, when its runs were evaluated


def _natural(path: Path) -> list:
    """A sort key that orders the numbers in a path by value."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(path))]


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories: the given ones that hold metrics.json, and any below the others (sweeps)."""
    found: list[Path] = []
    for path in paths:
        if (path / METRICS_FILE).is_file():
            found.append(path)
        elif path.is_dir():  # in job order: 2_... before 10_...
            found += sorted((p.parent for p in path.rglob(METRICS_FILE)), key=_natural)
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
        evaluation = latest_evaluation(d)
        scores = evaluation["scores"] if evaluation is not None else {}
        runs.append(Run(d, {**metrics, **scores}, run_label(metrics),
                        read_curves(d / "csv" / "metrics.csv", metrics.get("terms", [])), run_config(d), evaluation))
    labels = [r.label for r in runs]
    for run in runs:  # runs that differ in something else keep their directory name
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.dir.name})"
    return runs


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of runs whose settings are equal but for the seed, in the order of their first run.

    A run without a saved config (.hydra/config.yaml) is a group of its own. A group is labelled
    like its runs (`vae β=1 z=4`); groups that share a label add the settings in which they differ.
    """
    by_key: dict[str, Group] = {}
    for run in runs:
        key = settings_key(run.config) if run.config is not None else f"run:{run.dir.resolve()}"
        by_key.setdefault(key, Group([])).runs.append(run)
    groups = list(by_key.values())
    for group in groups:
        group.label = run_label(group.runs[0].metrics)
    for label in {g.label for g in groups}:
        same = [g for g in groups if g.label == label]
        if len(same) < 2:
            continue
        configs = [settings(g.runs[0].config) if g.runs[0].config is not None else None for g in same]
        known = [c for c in configs if c is not None]
        keys = sorted({k for c in known for k in c})
        differ = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in known}) > 1]
        for group, config in zip(same, configs):
            if config is None:  # no config to tell it apart: its directory, as in the per-run table
                group.label = f"{label} ({group.runs[0].dir.name})"
            elif differ:
                group.label = f"{label} ({', '.join(f'{k}={_short(config.get(k))}' for k in differ)})"
    return groups


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, MeanStd]]:
    """Per epoch that every curve has, the mean and sample std of their values."""
    by_epoch = [dict(c) for c in curves if c]
    if not by_epoch:
        return []
    epochs = sorted(set.intersection(*(set(c) for c in by_epoch)))
    return [(e, mean_std(c[e] for c in by_epoch)) for e in epochs]


def _as_groups(runs_or_groups: list) -> list[Group]:
    return [g if isinstance(g, Group) else Group([g], g.label) for g in runs_or_groups]


def curve_chart(groups: list[Group] | list[Run], term: str, path: Path) -> bool:
    """`term` against epoch for every run that logged it; False when none did (e.g. kl of AEs).

    A group with two or more completed runs is drawn as their mean with a ±1 std band; other
    runs one line each. Runs may be given in place of groups (each its own).
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    drawn, colour, bands = False, 0, False
    for group in _as_groups(groups):
        members = group.completed
        if len(members) >= 2:
            for stage, style in (("val", "-"), ("train", "--")):
                points = mean_curve([r.curves.get(f"{stage}/{term}", []) for r in members])
                if points:
                    epochs = [e for e, _ in points]
                    means = [s.mean for _, s in points]
                    stds = [s.std or 0.0 for _, s in points]
                    ax.plot(epochs, means, style, marker="o", markersize=3, color=f"C{colour % 10}",
                            label=f"{group.label}, mean of {max(s.n for _, s in points)} ({stage})")
                    ax.fill_between(epochs, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                                    color=f"C{colour % 10}", alpha=0.2, linewidth=0)
                    drawn = bands = True
            colour += 1
            continue
        for run in group.runs:
            for stage, style in (("val", "-"), ("train", "--")):
                points = run.curves.get(f"{stage}/{term}")
                if points:
                    epochs, values = zip(*points)
                    ax.plot(epochs, values, style, marker="o", markersize=3, color=f"C{colour % 10}",
                            label=f"{run.label} ({stage})")
                    drawn = True
            colour += 1
    if not drawn:
        return False
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{term} (per image)")
    ax.set_title(f"{term} per epoch; solid: val, dashed: train" + ("; mean of the seeds, bands: ±1 std" if bands else ""),
                 fontsize=9)
    ax.legend(fontsize=6)
    _save(fig, path)
    return True


def _final(metrics: dict, term: str) -> Optional[float]:
    value = metrics.get(f"test/{term}", metrics.get(f"val/{term}"))
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _placeable(group: Group) -> list[Run]:
    """The group's completed runs that have a final KL and recon."""
    return [r for r in group.completed if _final(r.metrics, "kl") is not None and _final(r.metrics, "recon") is not None]


def rate_distortion_points(groups: list[Group] | list[Run]) -> list[Point]:
    """The points of the rate–distortion chart: per group, the mean and sample std of the final
    KL and recon (test/*, else val/*) over its completed runs that have both; groups with none
    are left out. A group of one run is its single point (std None)."""
    points = []
    for group in _as_groups(groups):
        members = _placeable(group)
        if members:
            label = group.label if len(group.runs) == 1 else f"{group.label} (n={len(members)})"
            points.append(Point(label, mean_std(_final(r.metrics, "kl") for r in members),
                                mean_std(_final(r.metrics, "recon") for r in members),
                                mean_std(r.metrics.get(MIG) for r in members)))
    return points


def rate_distortion_chart(groups: list[Group] | list[Run], path: Path, mig_protocol: Optional[str] = None) -> list[Point]:
    """kl (rate) against recon (distortion): one labelled point per group, at its mean, with
    ±1 std error bars on both axes when it holds several runs; returns the points drawn.

    When some point has a MIG, every point is coloured by its (mean) MIG, with a colour bar labelled
    `mig_protocol`, and points without one are grey: where on the trade-off the factors separate."""
    points = rate_distortion_points(groups)
    fig = Figure(figsize=(7, 4.5) if _coloured_by_mig(points) else (6, 4.5))
    ax = fig.add_subplot()
    colour = _mig_colours(fig, ax, points, mig_protocol) if _coloured_by_mig(points) else None
    for i, point in enumerate(points):
        x, y = point.kl.mean, point.recon.mean
        shade = colour(point) if colour is not None else f"C{i % 10}"
        if point.kl.std is None and point.recon.std is None:
            ax.scatter([x], [y], color=shade, edgecolors="black" if colour is not None else None)
        else:
            ax.errorbar([x], [y], xerr=[point.kl.std or 0.0], yerr=[point.recon.std or 0.0], fmt="o",
                        color=shade, capsize=3, elinewidth=1, markeredgecolor="black" if colour is not None else None)
        ax.annotate(point.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("rate: kl (nats per image)")
    ax.set_ylabel("distortion: recon (per image)")
    seeds = any(p.kl.std is not None or p.recon.std is not None for p in points)
    ax.set_title("rate–distortion: larger β moves runs up and to the left"
                 + ("\nmean of the seeds, bars: ±1 std" if seeds else ""), fontsize=9)
    _save(fig, path)
    return points


def _coloured_by_mig(points: list[Point]) -> bool:
    return any(p.mig.mean is not None for p in points)


def _mig_colours(fig: Figure, ax, points: list[Point], protocol: Optional[str]) -> Callable[[Point], Any]:
    """A colour bar of MIG beside `ax` (its label: the protocol) and the colour of each point: grey without a MIG."""
    values = [p.mig.mean for p in points if p.mig.mean is not None]
    norm, cmap = Normalize(min(values), max(values)), colormaps["viridis"]
    label = "MIG" + (f" ({protocol})" if protocol else "")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
    bar.set_label("\n".join(textwrap.wrap(label, 60)), fontsize=7)
    return lambda point: "lightgrey" if point.mig.mean is None else cmap(norm(point.mig.mean))


# -- disentanglement against β ---------------------------------------------------------------------------

MIG = "disentanglement/mig"
BETA_KEY = "model.beta"


def disentanglement_keys(runs: list[Run]) -> list[str]:
    """The disentanglement numbers any run has, in the order of its evaluation (MIG, SAP, DCI, ...)."""
    return list(dict.fromkeys(key for run in runs if run.evaluation for key in run.evaluation["scores"]))


def run_beta(run: Run) -> Optional[float]:
    """The run's β: model.beta of its saved config, else metrics.json's; None for a model without one."""
    for beta in ((run.config or {}).get(BETA_KEY), run.metrics.get("beta")):
        if isinstance(beta, (int, float)) and not isinstance(beta, bool):
            return float(beta)
    return None


def _family_settings(run: Run) -> Optional[dict[str, Any]]:
    return {k: v for k, v in settings(run.config).items() if k != BETA_KEY} if run.config is not None else None


def beta_families(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Runs with a β, by their other settings (seed and β aside): one line each on a chart against β,
    labelled by the settings in which the families differ (`all runs` for one family)."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        if run_beta(run) is not None:
            family = _family_settings(run)
            key = json.dumps(family, sort_keys=True, default=str) if family is not None else f"run:{run.dir.resolve()}"
            by_key.setdefault(key, []).append(run)
    families = list(by_key.values())
    known = [_family_settings(f[0]) for f in families]
    keys = sorted({k for c in known if c is not None for k in c})
    differ = [k for k in keys if len({json.dumps((c or {}).get(k), default=str) for c in known}) > 1]
    labels = []
    for family, config in zip(families, known):
        if len(families) == 1:
            labels.append("all runs")
        elif config is None:
            labels.append(family[0].dir.name)
        else:
            labels.append(", ".join(f"{k}={_short(config.get(k))}" for k in differ))
    return list(zip(labels, families))


def metric_against_beta(family: list[Run], key: str) -> list[tuple[float, MeanStd]]:
    """Per β of the family, the mean and sample std of `key` over its completed runs that have it."""
    by_beta: dict[float, list[Any]] = {}
    for run in family:
        if run.completed and isinstance(run.metrics.get(key), (int, float)):
            by_beta.setdefault(run_beta(run), []).append(run.metrics[key])
    return [(beta, mean_std(values)) for beta, values in sorted(by_beta.items())]


def metric_vs_beta_chart(runs: list[Run], key: str, path: Path, protocol: Optional[str]) -> bool:
    """`key` against β, one line per family of runs (`beta_families`) at the mean over the seeds, with a
    ±1 std band where a β has several runs; False when no run has the number."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    betas: set[float] = set()
    for i, (label, family) in enumerate(beta_families(runs)):
        points = metric_against_beta(family, key)
        if not points:
            continue
        xs, means = [b for b, _ in points], [s.mean for _, s in points]
        stds = [s.std or 0.0 for _, s in points]
        ax.plot(xs, means, "-", marker="o", markersize=4, color=f"C{i % 10}",
                label=f"{label} (runs per β: {', '.join(str(s.n) for _, s in points)})")
        ax.fill_between(xs, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                        color=f"C{i % 10}", alpha=0.2, linewidth=0)
        betas.update(xs)
    if not betas:
        return False
    if min(betas) > 0:  # β is swept by factors (1, 2, 4, 8, ...)
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(betas), [f"{b:g}" for b in sorted(betas)])
    ax.set_xlabel("β (model.beta)")
    ax.set_ylabel(key.split("/", 1)[1])
    ax.set_title("\n".join(textwrap.wrap(f"{key} against β; mean of the seeds, band: ±1 std"
                                          + (f". {protocol}" if protocol else ""), 80)), fontsize=8)
    ax.legend(fontsize=6)
    _save(fig, path)
    return True


def protocols(runs: list[Run]) -> dict[str, list[Run]]:
    """The evaluations' protocols (their one-line text) and the runs evaluated with each."""
    found: dict[str, list[Run]] = {}
    for run in runs:
        if run.evaluation is not None:
            found.setdefault(run.evaluation.get("protocol_text") or "protocol not recorded", []).append(run)
    return found


def disentanglement_section(runs: list[Run], out: Path, progress: Progress) -> list[str]:
    """compare.md's Disentanglement section and its charts, one per number against β."""
    used = protocols(runs)
    protocol = next(iter(used)) if len(used) == 1 else None
    lines = ["## Disentanglement", "",
             "Each run's newest evaluation (`python eval.py ckpt_path=<run>/checkpoints/...`, recorded in "
             "`<run>/evals/`), on data with known factors. Protocol:", "",
             *(f"- {text}" + (f": {', '.join(r.label for r in members)}" if protocol is None else "")
               for text, members in used.items()), ""]
    if protocol is None:
        lines += ["**Note:** the runs were evaluated with different protocols: their numbers do not compare.", ""]
    lines += ["| run | checkpoint | evaluation |", "|---|---|---|",
              *(f"| {r.label} | {Path(r.evaluation['checkpoint']).name} | `{r.evaluation['evaluation']}` |"
                for r in runs if r.evaluation is not None), ""]
    lines += ["Each number against β: one line per group of runs whose other settings are equal, at the mean over "
              "their seeds (completed runs) with a band of ±1 sample standard deviation where a β has several.", ""]
    for key in disentanglement_keys(runs):
        name = f"{key.split('/', 1)[1]}_vs_beta.png"
        start = time.perf_counter()
        if metric_vs_beta_chart(runs, key, out / name, protocol):
            lines += [f"![{key} against β]({name})", ""]
            _timed(progress, start, f"drew {name}")
    return lines


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return "–" if value is None else str(value)


def _timed(progress: Progress, start: float, what: str) -> None:
    if progress is not None:
        progress(f"{what} in {time.perf_counter() - start:.2f} s")


def _seed_table(groups: list[Group], table: list[str]) -> list[str]:
    rows = []
    for group in groups:
        m = group.runs[0].metrics
        beta = _beta(m)
        rows.append([_cell(c) for c in (group.label, m.get("model"), None if beta is None else f"{beta:g}", m.get("latent_dim"),
                                        m.get("recon_loss"), " ".join(map(str, group.seeds)) or None,
                                        len(group.completed), group.failed)]
                    + [group.stat(k).text() or "–" for k in table])
    return ["## Across seeds", "",
            f"{len(groups)} group(s) of runs that differ only in `seed`. Each metric: mean ± sample standard deviation "
            "(n − 1) over the group's completed runs, and their number (n); a group with one completed run shows its "
            "value alone, `value (1)`. `failed`: runs of the group that failed or were interrupted, left out of the "
            "statistics.", "",
            *markdown_table(["group", "model", "β", "latent_dim", "recon_loss", "seeds", "n", "failed", *table], rows)]


def write_compare(runs: list[Run], out: Path, progress: Progress = None) -> Path:
    """compare.md and its charts in `out`; `progress` gets one line per chart and for the writing."""
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    seeded = any(len(g.runs) > 1 for g in groups)
    table = [*(f"test/{t}" for t in terms_of(runs)), "val/loss", "val/active_units", *disentanglement_keys(runs)]
    rows = []
    for run in runs:
        m = run.metrics
        beta = _beta(m)
        rows.append([_cell(c) for c in (run.label, m.get("model"), None if beta is None else f"{beta:g}", m.get("latent_dim"),
                                        m.get("recon_loss"), m.get("epochs"), m.get("status"), *(m.get(k) for k in table),
                                        m.get(SEED_KEY))]
                    + [f"`{run.dir}`"])
    lines = [
        "# Comparison of runs", "",
        f"{len(runs)} run(s); final metrics are those of metrics.json (test/* of the best checkpoint, val/* of the best epoch).", "",
        *markdown_table(["run", "model", "β", "latent_dim", "recon_loss", "epochs", "status", *table, "seed", "directory"], rows),
    ]
    if len({r.metrics.get("recon_loss") for r in runs}) > 1:
        lines += ["", "**Note:** the runs use different `recon_loss` (mse and bce): their recon, nelbo and loss are "
                  "on different scales and do not compare."]
    if seeded:
        lines += ["", *_seed_table(groups, table)]
    lines += ["", "## Curves", ""]
    if seeded:
        lines += ["A group of runs that differ only in seed is drawn as the mean of its completed runs (per epoch that "
                  "all of them logged) with a band of ±1 standard deviation; other runs one line each.", ""]
    for term in curve_terms(runs):
        name = f"{term}_vs_epoch.png"
        start = time.perf_counter()
        if curve_chart(groups, term, out / name):
            lines += [f"![{term} against epoch]({name})", ""]
            _timed(progress, start, f"drew {name}")
    used = protocols(runs)
    start = time.perf_counter()
    mig_protocol = next(iter(used)) if len(used) == 1 else "protocols differ: see compare.md" if used else None
    points = rate_distortion_chart(groups, out / "rate_distortion.png", mig_protocol)
    _timed(progress, start, f"drew rate_distortion.png ({len(points)} points)")
    lines += ["## Rate–distortion", "", "Each run with a KL term is one point: its KL (the rate, in nats) against its "
              "reconstruction error (the distortion), from test/* (val/* when a run was not tested). β trades one for the other.", ""]
    if seeded:
        lines += ["Runs that differ only in seed are one point, labelled with their number n, at the mean over their "
                  "completed runs, with error bars of ±1 sample standard deviation (n − 1) of the KL (horizontal) and of "
                  "the recon (vertical) across the seeds; a run without replicas is a single point without bars.", ""]
    if _coloured_by_mig(points):
        lines += ["Points are coloured by their MIG (`disentanglement/mig`, the mean over the seeds); grey: not "
                  "evaluated.", ""]
    lines += ["![rate–distortion](rate_distortion.png)", ""]
    left_out = [g.label for g in groups if not _placeable(g)]
    if left_out:
        lines += [f"Not placed (no KL: an AE has no rate term, or the run did not finish): {', '.join(left_out)}.", ""]
    if used:
        lines += disentanglement_section(runs, out, progress)
    start = time.perf_counter()
    path = write_text(out / "compare.md", "\n".join(lines))
    _timed(progress, start, f"wrote {path}")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaelab.reports.compare", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories holding runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="where compare.md and the PNGs go (default: outputs/compare/<date>_<time>)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        runs = load_runs(find_runs(args.paths))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress = _progress if len(runs) >= PROGRESS_FROM_RUNS else None
    _timed(progress, start, f"read {len(runs)} runs ({len(group_runs(runs))} settings)")
    out = args.out or Path("outputs") / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = write_compare(runs, out, progress)
    print(f"compared {len(runs)} runs: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
