"""W&B dashboards as code: a workspace view of a sweep (or of chosen runs), built from what the runs logged.

    python -m vaelab.reports.dashboard outputs/multirun/<date>/<time>        # a sweep's runs
    python -m vaelab.reports.dashboard <run dir> <run dir> ... [--out DIR] [--name NAME]
    WANDB_MODE=online python -m vaelab.reports.dashboard <the same>          # publish (after wandb login and sync)

The view (the `wandb-workspaces` library, built without a network) is filtered to the sweep's
W&B group, or to the given runs' ids, and has five sections:

  Loss components    train and val `recon`, `kl`, `nelbo`, `loss` against the step (epoch means),
                     and the KL's parts val `mi`, `tc`, `dwkl`; one line per run, grouped by model and β
  Rate–distortion    val/kl against val/recon, one point per run, coloured by β
  Hyperparameters    parallel coordinates from the swept keys to val/nelbo (val/loss for AEs),
                     and test/nll where a run logged it
  Panels             the latent-space images under their logged keys (panels/<name>)
  Runs               a run comparer, the config keys side by side

Every metric key in the view is one that the runs logged: read from their csv/metrics.csv and
their `.wandb` files, never from a list kept here. Offline (the default) it writes
`dashboard.json` beside the runs: vaelab's description of the sections with their keys, and the
W&B view itself (`wandb_view`, the JSON that W&B stores) and prints the commands that publish
it. With WANDB_MODE=online it saves the view to the runs' project and prints its URL.
"""

import argparse
import csv
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from vaelab.reports.compare import find_runs
from vaelab.files import write_json
from vaelab.rundir import read_record
from vaelab.settings import LOCATION_KEYS
from vaelab.reports.wandb_offline import summarize

log = logging.getLogger("vaelab.reports.dashboard")

SPEC_FILE = "dashboard.json"
# The loss components, in the order drawn; a VAE's KL parts (mi, tc, dwkl) are logged at validation only.
TERMS = ("recon", "kl", "nelbo", "loss", "mi", "tc", "dwkl")
# Overrides that say where things are or how a run logs, not what is trained: never a hyperparameter axis.
NOT_AXES = (*LOCATION_KEYS, "logger")
# W&B's own history keys and Lightning's bookkeeping: not metrics to draw.
NOT_METRICS = ("_", "epoch", "trainer/global_step", "step")


@dataclass
class LoggedRun:
    dir: Path
    record: dict[str, Any]
    overrides: dict[str, str]
    wandb_id: str
    group: Optional[str]
    project: str
    entity: Optional[str]
    config: Any = None  # the run's resolved config (.hydra/config.yaml)
    group_names: set[str] = field(default_factory=set)  # config groups with a `name` (model, data)
    images: dict[str, Path] = field(default_factory=dict)  # media key → its last image file
    keys: set[str] = field(default_factory=set)  # every metric key the run logged (CSV and W&B)
    media_keys: set[str] = field(default_factory=set)  # the image keys among them (W&B only)


def _is_metric(key: str) -> bool:
    return not key.startswith(NOT_METRICS)


def _csv_keys(run_dir: Path) -> set[str]:
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return set()
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    return {key for key in header if _is_metric(key)}


def _wandb_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/*run-*/run-*.wandb"))


def read_run(run_dir: Path) -> LoggedRun:
    """What `run_dir` logged to W&B and to its CSV record; ValueError for a run without W&B."""
    files = _wandb_files(run_dir)
    if not files:
        raise ValueError(f"{run_dir} has no W&B run (train it with logger=wandb): a dashboard shows W&B runs")
    keys, media, group, images = _csv_keys(run_dir), set(), None, {}
    for path in files:  # a resumed run may have several offline folders with the same id
        run = summarize(path)
        group = group or run["group"] or None
        for row in run["history"]:
            # W&B stores an image or a histogram as nested keys: <key>/_type, <key>/path, ...
            composite = {key.removesuffix("/_type"): value for key, value in row.items() if key.endswith("/_type")}
            media |= {key for key, kind in composite.items() if kind == "image-file"}
            images.update({key: path.parent / "files" / row[f"{key}/path"] for key, kind in composite.items()
                           if kind == "image-file" and f"{key}/path" in row})
            keys |= {key for key in row if _is_metric(key) and not key.startswith(tuple(f"{c}/" for c in composite))}
            keys |= set(composite)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    overrides = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    return LoggedRun(
        dir=run_dir, record=read_record(run_dir) or {},
        overrides=dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o),
        wandb_id=files[-1].stem.removeprefix("run-"), group=group,
        project=OmegaConf.select(config, "logger.wandb.project", default=None) or "vaelab",
        entity=OmegaConf.select(config, "logger.wandb.entity", default=None),
        config=config, group_names={k for k, v in config.items() if OmegaConf.is_dict(v) and "name" in v},
        keys=keys, media_keys=media, images=images,
    )


def swept_keys(runs: list[LoggedRun]) -> list[str]:
    """The config keys whose override differs between the runs (the sweep's axes), in command-line
    order; a config group's choice (`model=ae,vae`) is its `<group>.name` key, which the runs log."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides if not k.startswith(NOT_AXES)))
    swept = [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]
    return [f"{k}.name" if "." not in k and k in runs[0].group_names else k for k in swept]


def _logged_by_any(runs: list[LoggedRun], *keys: str) -> list[str]:
    return [key for key in keys if any(key in run.keys for run in runs)]


def describe(runs: list[LoggedRun], name: str, chosen_runs: bool = False) -> dict[str, Any]:
    """vaelab's description of the view: its filter, grouping and sections with the keys they draw.

    The filter is the sweep's W&B group when the runs are one sweep's, given as its directory; runs
    given one by one (`chosen_runs`) are filtered by their W&B ids, so the view shows them alone.
    """
    groups = {run.group for run in runs}
    if not chosen_runs and len(groups) == 1 and None not in groups:
        run_filter = {"group": groups.pop()}
    else:
        run_filter = {"ids": [run.wandb_id for run in runs]}
    swept = swept_keys(runs)
    axes = swept or [k for k in ("model.beta", "model.latent_dim") if any(k in run.overrides for run in runs)]
    target = _logged_by_any(runs, "val/nelbo") or _logged_by_any(runs, "val/loss")
    loss_panels = [{"title": term, "y": _logged_by_any(runs, f"train/{term}", f"val/{term}")} for term in TERMS]
    sections = [
        {"name": "Loss components", "panels": [{"type": "line", "x": "Step", **p} for p in loss_panels if p["y"]]},
        {"name": "Rate–distortion", "panels": (
            [{"type": "scatter", "title": "val/kl against val/recon, coloured by β", "x": "val/recon", "y": "val/kl",
              "color": "model.beta"}] if _logged_by_any(runs, "val/kl", "val/recon") == ["val/kl", "val/recon"] else [])},
        {"name": "Hyperparameters", "panels": [{"type": "parallel_coordinates", "title": "swept keys → " + ", ".join(target),
                                                 "config": axes, "metrics": [*target, *_logged_by_any(runs, "test/nll")]}]},
        {"name": "Panels", "panels": [{"type": "media", "keys": sorted(set().union(*(run.media_keys for run in runs)))}]},
        {"name": "Runs", "panels": [{"type": "run_comparer", "config": axes}]},
    ]
    # A section with nothing the runs logged is left out (an AE sweep has no rate–distortion plane).
    sections = [s for s in sections if s["panels"] and any(p["type"] != "media" or p["keys"] for p in s["panels"])]
    first = runs[0]
    return {"name": name, "entity": first.entity, "project": first.project, "filter": run_filter,
            "group_by": ["model.name", "model.beta"], "runs": [str(run.dir) for run in runs], "sections": sections}


def build_workspace(description: dict[str, Any], entity: str):
    """The wandb-workspaces Workspace of `description` (no network)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def panel(p: dict[str, Any]):
        kind = p["type"]
        if kind == "line":
            return wr.LinePlot(title=p["title"], x=p["x"], y=p["y"])
        if kind == "scatter":
            return wr.ScatterPlot(title=p["title"], x=p["x"], y=p["y"], z=wr.Config(p["color"]))
        if kind == "parallel_coordinates":
            return wr.ParallelCoordinatesPlot(title=p["title"], columns=[
                *(wr.ParallelCoordinatesPlotColumn(metric=wr.Config(key)) for key in p["config"]),
                *(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(key)) for key in p["metrics"])])
        if kind == "media":
            return wr.MediaBrowser(title="latent-space panels", media_keys=p["keys"], mode="grid")
        return wr.RunComparer(diff_only="split")

    run_filter = description["filter"]
    # One expression in And(...): wandb-workspaces deprecates a plain list of filters.
    filters = ws.And(ws.Metric("Group") == run_filter["group"] if "group" in run_filter
                     else ws.Metric("ID").isin(run_filter["ids"]))
    return ws.Workspace(
        entity=entity, project=description["project"], name=description["name"],
        sections=[ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"]], is_open=True)
                  for s in description["sections"]],
        runset_settings=ws.RunsetSettings(filters=filters, groupby=[ws.Config(k) for k in description["group_by"]]),
    )


def _csv_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every column of the run's csv/metrics.csv."""
    series: dict[str, list[tuple[int, float]]] = {}
    path = run_dir / "csv" / "metrics.csv"
    if path.is_file():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if value and key != "step" and _is_metric(key):
                        series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def render(description: dict[str, Any], runs: list[LoggedRun], path: Path) -> Path:
    """The view's panels drawn locally with matplotlib from the runs' records (no W&B account
    needed): what the published workspace shows, in one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    sections = {s["name"]: s["panels"] for s in description["sections"]}
    series = {run.dir: _csv_series(run.dir) for run in runs}
    last = {run.dir: {key: points[-1][1] for key, points in series[run.dir].items()} for run in runs}
    colours = {run.dir: f"C{i % 10}" for i, run in enumerate(runs)}
    labels = {run.dir: run.record.get("run_name") or run.dir.name for run in runs}
    lines = sections.get("Loss components", [])
    media = (sections.get("Panels") or [{"keys": []}])[0]["keys"][:4]
    columns = max(len(lines), 2, len(media), 1)
    fig = Figure(figsize=(4 * columns, 3.4 * 3))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, columns)
    for i, panel in enumerate(lines):
        ax = fig.add_subplot(grid[0, i])
        for run in runs:
            for key in panel["y"]:
                points = series[run.dir].get(key)
                if points:
                    ax.plot(*zip(*points), color=colours[run.dir], ls="-" if key.startswith("val/") else "--", marker=".",
                            label=labels[run.dir] if key.startswith("val/") else None)
        ax.set(title=f"{panel['title']} (val solid, train dashed)", xlabel="step")
    if lines:
        fig.axes[0].legend(fontsize=7)
    for panel in sections.get("Rate–distortion", []):
        ax = fig.add_subplot(grid[1, 0])
        placed = [run for run in runs if panel["x"] in last[run.dir] and panel["y"] in last[run.dir]]
        betas = [OmegaConf.select(run.config, panel["color"], default=None) for run in placed]
        dots = ax.scatter([last[r.dir][panel["x"]] for r in placed], [last[r.dir][panel["y"]] for r in placed],
                          c=[b if b is not None else 0 for b in betas], cmap="viridis")
        fig.colorbar(dots, ax=ax, label=panel["color"])
        ax.set(title=panel["title"], xlabel=panel["x"], ylabel=panel["y"])
    for panel in sections.get("Hyperparameters", []):
        ax = fig.add_subplot(grid[1, 1:])
        axes = [*panel["config"], *panel["metrics"]]
        values = {key: [OmegaConf.select(run.config, key, default=None) if key in panel["config"] else last[run.dir].get(key)
                        for run in runs] for key in axes}
        for j, run in enumerate(runs):
            ys = []
            for key in axes:
                column = values[key]
                order = sorted({str(v) for v in column}) if any(isinstance(v, str) for v in column) else None
                numbers = [order.index(str(v)) if order else (v if v is not None else float("nan")) for v in column]
                low, high = min(numbers), max(numbers)
                ys.append((numbers[j] - low) / (high - low) if high > low else 0.5)
            ax.plot(range(len(axes)), ys, color=colours[run.dir], marker="o")
        ax.set_xticks(range(len(axes)), axes)
        ax.set_yticks([])
        ax.set(title=panel["title"] + " (each axis scaled to its range)")
    for i, key in enumerate(media):
        run = next((r for r in runs if key in r.images and r.images[key].is_file()), None)
        ax = fig.add_subplot(grid[2, i])
        ax.axis("off")
        if run is not None:
            ax.imshow(imread(run.images[key]))
            ax.set_title(f"{key} ({labels[run.dir]})", fontsize=8)
    fig.suptitle(f"W&B view '{description['name']}', drawn locally from the runs' records", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def _common_folder(dirs: list[Path]) -> Path:
    return Path(os.path.commonpath([str(d.resolve()) for d in dirs]))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaelab.reports.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories")
    parser.add_argument("--out", type=Path, default=None, help=f"where {SPEC_FILE} goes (default: the runs' common folder)")
    parser.add_argument("--name", default=None, help="the view's name (default: the sweep's W&B group)")
    parser.add_argument("--render", type=Path, default=None, metavar="PNG",
                        help="also draw the view's panels locally into this PNG (no account needed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        dirs = find_runs(args.paths)
        runs = []
        for i, run_dir in enumerate(dirs, 1):
            runs.append(read_run(run_dir))
            if len(dirs) >= 20 and i % max(1, len(dirs) // 10) == 0:
                log.info("read %d/%d runs (%.1f s)", i, len(dirs), time.perf_counter() - started)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("read %d runs' W&B files and CSV records in %.1f s", len(runs), time.perf_counter() - started)
    name = args.name or next((run.group for run in runs if run.group), None) or f"vaelab: {len(runs)} runs"
    description = describe(runs, name, chosen_runs=any(path in dirs for path in args.paths))
    online = os.environ.get("WANDB_MODE", "").lower() == "online"
    if online:
        import wandb

        entity = description["entity"] or wandb.Api().default_entity
        workspace = build_workspace(description, entity).save()
        print(f"saved the W&B view '{name}': {workspace.url}")
        return 0
    workspace = build_workspace(description, description["entity"] or "<your entity>")
    out = args.out or _common_folder(dirs)
    path = write_json(out / SPEC_FILE, {**description, "wandb_view": workspace._spec})
    log.info("built the view in %.1f s", time.perf_counter() - started)
    if args.render:
        log.info("drew the panels into %s (%.1f s)", render(description, runs, args.render), time.perf_counter() - started)
    offline_runs = " ".join(str(d / "wandb" / "offline-run-*") for d in dirs) if len(dirs) <= 4 else f"{out}/*/wandb/offline-run-*"
    print(f"wrote {path}: {len(description['sections'])} sections, the view W&B would store")
    print("to publish it (online, logged in):")
    print(f"    wandb sync {offline_runs}")
    print(f"    WANDB_MODE=online python -m vaelab.reports.dashboard {' '.join(str(p) for p in args.paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
