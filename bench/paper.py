"""bench/quality.py --paper: the Fashion-MNIST density table of the VampPrior / Exemplar-VAE papers.

    python bench/quality.py --paper                               # both experiments, seed 1, to their end
    python bench/quality.py --paper --seeds 1 2 3                 # 3 seeds each, stacked (one process per experiment)
    python bench/quality.py --paper --max-time 00:01:00:00        # each fit capped at 60 minutes (a CPU look)
    python bench/quality.py --paper --runs <run or sweep dir> ... # score runs trained before, e.g. on a GPU

The runs: `python train.py experiment=fashion_vae_paper` and `experiment=fashion_vampprior_paper`
(conf/experiment/: the papers' gated MLP, z = 40, KL warm-up over 100 epochs, early stopping on
val/nelbo after 50 epochs without improvement, at most 2,000 epochs), several seeds as one stacked
sweep (`-m seed=1,2,3 hydra/launcher=stacked`).

The score, as the papers measure it: test NLL −log p(x) importance-sampled with k = 5000 samples
of q(z|x) per image (`--k`), on all 10,000 test images (`--n-test`), binarised once with
TEST_DRAW_SEED, each run's tested checkpoint (its best val/nelbo), with the model's own prior
(a VampPrior's mixture: `VAE.log_prior_over_posterior`). The table gives each experiment's mean ±
std over its seeds beside the paper's number, the difference, and issue 25's target (the VAE within
0.5 nats of 228.70, the VampPrior at most 227.85); paper_curves.png beside the report draws
val/nelbo against epoch for every run scored (the CPU look and the GPU runs on one chart when both
are given with --runs). Each scored run's records (metrics.json, its config, csv/metrics.csv, its score)
are copied to paper_runs/ beside the report, and its score is kept in <run dir>/paper_score.json for
that checkpoint, k and test draw: `--runs bench/paper_runs/*` redraws the table and the curves
without the checkpoints (e.g. the CPU look beside GPU runs).
"""

import csv
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from quality import (FIT_CLOCK, SCORE_SEED, TEST_DRAW_SEED, batch_size_of, load_best, machine, run_train_py,
                     score_vaelab, train_py, trained_epochs, write_readme)

BEGIN, END = "<!-- paper:begin -->", "<!-- paper:end -->"
CURVES = "paper_curves.png"
SCORE_FILE = "paper_score.json"  # a run's score, kept in its directory
RECORDS = "paper_runs"  # beside the report: each scored run's records (keep_records)


@dataclass(frozen=True)
class PaperRow:
    """A row of the papers' table and what issue 25 asks of vaelab's reproduction."""

    experiment: str
    model: str
    nll: float  # the Exemplar-VAE paper's test NLL (sajadn/Exemplar-VAE, images/density_estimation.png)
    std: float
    target: str
    low: float  # the target's interval of mean NLLs
    high: float


PAPER = {row.experiment: row for row in (
    PaperRow("fashion_vae_paper", "VAE, Gaussian prior", 228.70, 0.15, "within 0.5 of 228.70", 228.20, 229.20),
    PaperRow("fashion_vampprior_paper", "VAE, VampPrior", 227.35, 0.05, "≤ 227.85", -math.inf, 227.85),
)}


@dataclass
class Scored:
    """One run scored: where it is, its experiment and seed, and the numbers."""

    run_dir: Path
    experiment: str
    seed: int
    nll: float
    nelbo: float
    epochs: float
    best_epoch: Optional[int]
    fit_s: Optional[float]
    stopped: str  # why its fit ended


def experiment_of(run_dir: Path) -> str:
    """Which row of the table a run belongs to, from its saved config: the prior it trained with."""
    import yaml

    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    return "fashion_vampprior_paper" if config["model"].get("prior") == "vamp" else "fashion_vae_paper"


def why_stopped(record: dict, run_dir: Path) -> str:
    """Early stopping, the time cap or max_epochs, from metrics.json and the run's config."""
    import yaml

    if record.get("stopped_early"):
        return f"early stopping at epoch {record.get('stopped_epoch', '?')}"
    trainer = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["trainer"]
    epochs = record.get("epochs")  # the epochs it finished
    if trainer.get("max_time") and (epochs is None or epochs < trainer["max_epochs"]):
        return f"max_time {trainer['max_time']}"
    return f"max_epochs {trainer['max_epochs']}"


def cached_scores(run_dir: Path, record: dict, test_x, k: int) -> dict[str, float]:
    """score_vaelab's NLL and nelbo of the run's tested checkpoint, kept in <run dir>/paper_score.json for
    the same checkpoint, k and test images (k = 5000 on 10,000 images is many CPU minutes; a run's
    records copied elsewhere keep it)."""
    key = {"checkpoint": Path(record["best_checkpoint"]).name, "k": k, "n_test": len(test_x),
           "test_draw_seed": TEST_DRAW_SEED, "score_seed": SCORE_SEED}
    cache = run_dir / SCORE_FILE
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["scores"]
    scores = score_vaelab(load_best(record), test_x, k)
    cache.write_text(json.dumps({"key": key, "scores": scores}, indent=1))
    return scores


def keep_records(run_dir: Path, into: Path) -> None:
    """Copy what the report and the curves read (metrics.json, the saved config, the CSV record's
    epoch rows, the score) to `into`, so that a later invocation can chart these runs beside others
    (--runs)."""
    for name in ("metrics.json", ".hydra/config.yaml", SCORE_FILE, FIT_CLOCK):
        if (run_dir / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / name, into / name)
    record = run_dir / "csv" / "metrics.csv"
    if record.is_file():  # the rows of the epoch means ({stage}/{term}), not those of every logging step
        terms = json.loads((run_dir / "metrics.json").read_text()).get("terms", [])
        means = {f"{stage}/{term}" for stage in ("train", "val", "test") for term in terms}
        (into / "csv").mkdir(parents=True, exist_ok=True)
        with record.open(newline="") as src, (into / "csv" / "metrics.csv").open("w", newline="") as dst:
            rows = csv.DictReader(src)
            writer = csv.DictWriter(dst, fieldnames=rows.fieldnames)
            writer.writeheader()
            writer.writerows(row for row in rows if any(row.get(key) for key in means))


def score_run(run_dir: Path, test_x, k: int, seed: Optional[int] = None) -> Scored:
    record = json.loads((run_dir / "metrics.json").read_text())
    scores = cached_scores(run_dir, record, test_x, k)
    clock = run_dir / FIT_CLOCK
    fit_s = json.loads(clock.read_text())["fit_s"] if clock.is_file() else record.get("time/fit_s")
    scored = Scored(run_dir, experiment_of(run_dir), int(record.get("seed", seed if seed is not None else -1)),
                    scores["nll"], scores["nelbo"], trained_epochs(record, batch_size_of(run_dir)),
                    record.get("best_epoch"), fit_s, why_stopped(record, run_dir))
    print(f"  {scored.experiment} seed {scored.seed}: NLL {scored.nll:.2f}, nelbo {scored.nelbo:.2f}, "
          f"{scored.epochs:.1f} epochs (best {scored.best_epoch}), {scored.stopped}; {run_dir}")
    return scored


def train_experiment(experiment: str, seeds: list[int], max_time: Optional[str], ctx) -> tuple[list[Path], float]:
    """`train.py experiment=<experiment>` for each seed (a stacked sweep for two or more): the run
    directories and the wall time of the command."""
    cap = [f"trainer.max_time={max_time}"] if max_time else []
    if len(seeds) == 1:
        run_dir = ctx.work / f"{experiment}_seed{seeds[0]}"
        _, wall, _ = run_train_py([f"experiment={experiment}", f"seed={seeds[0]}", *cap], ctx.data_root, ctx.gz_dir,
                                  run_dir)
        return [run_dir], wall
    from vaelab.reports.summary import job_dirs

    sweep_dir = ctx.work / experiment
    wall = train_py(["hydra/launcher=stacked", f"experiment={experiment}", f"seed={','.join(map(str, seeds))}", *cap,
                     f"hydra.sweep.dir={sweep_dir}"], ctx.data_root, ctx.gz_dir, multirun=True)
    return job_dirs(sweep_dir), wall


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(scored: list[Scored], walls: dict[str, float], k: int) -> str:
    lines = [f"| model | experiment | seeds | test NLL (k = {k}) | paper | NLL − paper | target | met | test nelbo | "
             "epochs (best) | fit time | why it stopped |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for experiment, paper in PAPER.items():
        rows = [s for s in scored if s.experiment == experiment]
        if not rows:
            continue
        nlls = [s.nll for s in rows]
        mean = statistics.mean(nlls)
        met = "yes" if paper.low <= mean <= paper.high else f"no: {_off_by(mean, paper):.2f} nats off"
        epochs = ", ".join(f"{s.epochs:.1f} ({s.best_epoch})" for s in rows)
        fits = [s.fit_s for s in rows if s.fit_s is not None]
        fit = f"{statistics.mean(fits) / 60:.1f} min" if fits else "–"
        if experiment in walls:
            fit += f" (command: {walls[experiment] / 60:.1f} min)"
        lines.append(f"| {paper.model} | `{experiment}` | {', '.join(str(s.seed) for s in rows)} | {mean_std(nlls)} | "
                     f"{paper.nll:.2f} ± {paper.std:.2f} | {mean - paper.nll:+.2f} | {paper.target} | {met} | "
                     f"{mean_std([s.nelbo for s in rows])} | {epochs} | {fit} | {'; '.join(sorted({s.stopped for s in rows}))} |")
    return "\n".join(lines)


def _off_by(mean: float, paper: PaperRow) -> float:
    return mean - paper.high if mean > paper.high else paper.low - mean


def curves_chart(scored: list[Scored], path: Path) -> bool:
    """val/nelbo against epoch of every scored run (its csv/metrics.csv, read as compare reads it), the
    y axis on the last 30 nats above the best, with the papers' test NLLs as dashed lines for scale
    (an NLL is below its model's nelbo: the importance-sampled bound is tighter)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vaelab.reports.compare import read_curves

    curves = [(s, read_curves(s.run_dir / "csv" / "metrics.csv", ["nelbo"]).get("val/nelbo", [])) for s in scored]
    curves = [(s, points) for s, points in curves if points]
    if not curves:
        return False
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (s, points) in enumerate(curves):
        epochs, values = zip(*points)
        ax.plot(epochs, values, color=f"C{i % 10}", label=f"{PAPER[s.experiment].model}, seed {s.seed}, "
                f"{s.epochs:.0f} epochs ({s.stopped}): test NLL {s.nll:.2f}")
    best = min(v for _, points in curves for _, v in points)
    for j, paper in enumerate(PAPER.values()):
        ax.axhline(paper.nll, color=f"C{j % 10}", linestyle="--", linewidth=0.8, label=f"paper: {paper.model}, test NLL {paper.nll:.2f}")
    ax.set_ylim(min(best, *(p.nll for p in PAPER.values())) - 2, best + 30)
    ax.set(xlabel="epoch", ylabel="val/nelbo (nats per image)", title="val/nelbo per epoch (dashed: the papers' test NLLs)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return True


def report(scored: list[Scored], walls: dict[str, float], args, started: str, total_s: float, curves: bool) -> str:
    chart = f"\n\n![val/nelbo per epoch]({CURVES})" if curves else ""
    return (f"{BEGIN}\nMeasured {started} on {machine()}. `python bench/quality.py {' '.join(sys.argv[1:])}` "
            f"({total_s / 60:.1f} min in all; a run scored before is read from its {SCORE_FILE}): test NLL with "
            f"k = {args.k} importance samples on the first "
            f"{args.n_test} test images (one binarised draw, seed {TEST_DRAW_SEED}), the checkpoint each run "
            f"tested (best val/nelbo); paper: Norouzi et al. 2020 (Exemplar VAE), Fashion-MNIST table.\n\n"
            f"{table(scored, walls, args.k)}{chart}\n{END}")


def run_paper(args, ctx, started: str, begin: float) -> None:
    """--paper: train (or take --runs), score, write the report section and the curves."""
    from vaelab.reports.compare import find_runs

    walls: dict[str, float] = {}
    if args.runs:
        run_dirs = find_runs(args.runs)
    else:
        run_dirs = []
        for experiment in args.experiments:
            dirs, walls[experiment] = train_experiment(experiment, args.seeds, args.max_time, ctx)
            run_dirs += dirs
    scored = [score_run(d, ctx.test_x, ctx.k) for d in run_dirs]
    out_dir = args.out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in scored:
        if s.run_dir.resolve().parent != (out_dir / RECORDS).resolve():  # not already kept records
            keep_records(s.run_dir, out_dir / RECORDS / f"{s.experiment}_seed{s.seed}_{s.run_dir.name}")
    curves = curves_chart(scored, out_dir / CURVES)
    section = report(scored, walls, args, started, time.perf_counter() - begin, curves)
    print("\n" + section)
    write_readme(section, args.out, BEGIN, END)
    print(f"\nwritten to {args.out}" + (f" and {out_dir / CURVES}" if curves else ""))
