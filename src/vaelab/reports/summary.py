"""One table per sweep: `summary.csv` and `summary.md` in the sweep directory.

    python -m vaelab.reports.summary outputs/multirun/<date>/<time>     # rebuild it for any sweep dir

Each job directory of the sweep (`<sweep dir>/<num>_<run name>/`) gives one row, read from
its `.hydra/overrides.yaml` and `metrics.json` only, so the table can be rebuilt at any time,
also for a sweep that was interrupted (its unfinished jobs show `status` = `missing`).

Across seeds: `summary_by_seed.csv` (and a section of `summary.md` when some setting ran with
more than one seed) has one row per group of jobs that differ only in `seed`: the mean and the
sample standard deviation (n − 1) of every metric over the group's completed jobs, their number
n, and how many of its jobs failed (failed, interrupted or missing). Jobs are grouped by their
settings (`settings`: the config Hydra saved, less `seed` and the keys that only say where
files are or how the run logs), so a seed set in a config file groups as well as one on the
command line; `vaelab.reports.compare` groups runs the same way.
Rewritten after every job of a multirun by `SweepSummary`, a Hydra callback (conf/hydra/default.yaml).

Disentanglement: a job evaluated by eval.py (data with known factors) gets its newest evaluation's
`disentanglement/*` numbers as columns (mean ± std in the seeds' table) and the `evaluation`
directory they come from (vaelab.rundir.latest_evaluation); eval.py rebuilds the summary of the
sweep whose job it evaluated, and a rebuild picks up every evaluation done since.
Imports nothing heavy: Hydra instantiates the callback for every run, and `--help` stays fast.
"""

import csv
import io
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from vaelab.files import write_text
from vaelab.reports.tables import markdown_table
from vaelab.rundir import (EVAL_FILE, METRICS_FILE, is_rank_zero_process, latest_evaluation, logged_terms, read_record,
                           training_run_dir)
from vaelab.settings import flatten, is_setting

log = logging.getLogger(__name__)

CSV_FILE, MD_FILE = "summary.csv", "summary.md"
SEEDS_CSV_FILE = "summary_by_seed.csv"  # one row per group of jobs that differ only in seed
SEED_KEY = "seed"
# Exit code of a multirun in which at least one job failed (a single run's VaelabError exits 2).
FAILED_SWEEP_EXIT_CODE = 1


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories, in job order (Hydra names them `<num>_<run name>`)."""
    dirs = [p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml")]

    def number(path: Path) -> tuple[int, str]:
        head = path.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else sys.maxsize, path.name)

    return sorted(dirs, key=number)


def _job_overrides(job_dir: Path) -> list[str]:
    return [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]


EVALUATION_KEY = "evaluation"  # the directory of the evaluation whose disentanglement numbers a row shows
PROTOCOL_KEY = "protocol"  # that evaluation's protocol, in one line: not a column, written below the table


def _record(job_dir: Path) -> dict[str, Any]:
    """The job's metrics.json, with its newest evaluation's disentanglement numbers and directory."""
    record = read_record(job_dir)
    if record is None:
        return {"status": "missing", "error": f"no {METRICS_FILE}: the job did not finish (still running, or killed)"}
    evaluation = latest_evaluation(job_dir)
    if evaluation is not None:
        record = {**record, **evaluation["scores"], EVALUATION_KEY: evaluation["evaluation"],
                  PROTOCOL_KEY: evaluation.get("protocol_text")}
    return record


def disentanglement_columns(records: list[dict[str, Any]]) -> list[str]:
    """The disentanglement/* numbers that any record holds, in the order of the first that has each."""
    return list(dict.fromkeys(key for record in records for key in record if key.startswith("disentanglement/")))


def columns(records: list[dict[str, Any]]) -> list[str]:
    """job, run_name, status, overrides, then val/ and test/ of every loss term that a job logged
    (an AE's recon and loss, a VAE's also kl and nelbo; rundir.logged_terms), the disentanglement
    numbers and their evaluation when some job was evaluated, error, run_dir."""
    terms = logged_terms(records)
    evaluated = disentanglement_columns(records)
    return ["job", "run_name", "status", "overrides", *(f"{s}/{t}" for s in ("val", "test") for t in terms),
            *evaluated, *([EVALUATION_KEY] if evaluated else []), "error", "run_dir"]


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The rows (one per job), the columns, and the overrides that all jobs share.

    A row's `overrides` are those that set the job apart from the others (the swept values);
    with a single job they are all of its overrides.
    """
    dirs = job_dirs(sweep_dir)
    overrides = {d: _job_overrides(d) for d in dirs}
    common = [o for o in overrides[dirs[0]] if all(o in v for v in overrides.values())] if len(dirs) > 1 else []
    records = {d: _record(d) for d in dirs}
    names = columns(list(records.values()))
    rows = []
    for d in dirs:
        record = records[d]
        row = {
            "job": d.name.split("_", 1)[0],
            "run_name": record.get("run_name") or d.name.split("_", 1)[-1],
            "status": record.get("status", "missing"),
            "overrides": " ".join(o for o in overrides[d] if o not in common),
            "error": record.get("error") or "",
            "run_dir": str(d),
            "seed": _seed(d, record, overrides[d]),  # not a column of summary.csv: for the groups of seeds
            PROTOCOL_KEY: record.get(PROTOCOL_KEY),
        }
        row.update({name: record.get(name) for name in names if "/" in name or name == EVALUATION_KEY})
        rows.append(row)
    return rows, names, common


# -- groups of seeds (also used by vaelab.reports.compare) -----------------------------------------------

def _is_setting(key: str) -> bool:
    return is_setting(key, also_not=(SEED_KEY,))


# Parsed configs by (path, size, mtime): the summary is rewritten after every job of a sweep, and
# parsing each earlier job's YAML again made a 16-job sweep's summaries cost seconds.
_PARSED_CONFIGS: dict[tuple[str, int, int], Optional[dict[str, Any]]] = {}


def run_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's composed config as Hydra saved it (`.hydra/config.yaml`, interpolations left as
    written), flattened to dotted keys; None when the file is missing or unreadable."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _PARSED_CONFIGS:
        try:
            _PARSED_CONFIGS[key] = flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
        except Exception:  # a half-written or foreign file: the run is grouped by its overrides, or alone
            _PARSED_CONFIGS[key] = None
    config = _PARSED_CONFIGS[key]
    return dict(config) if config is not None else None


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a run trains and measures: its flattened config less `seed` and NOT_SETTINGS."""
    return {k: v for k, v in config.items() if _is_setting(k)}


def settings_key(config: dict[str, Any]) -> str:
    """A string equal for configs whose `settings` are equal."""
    return "config:" + json.dumps(settings(config), sort_keys=True, default=str)


def is_seed_override(override: str) -> bool:
    return override.split("=", 1)[0].lstrip("+~") == SEED_KEY


def seed_group_key(run_dir: Path, overrides: Optional[list[str]] = None) -> str:
    """Equal for runs that differ only in seed (and in NOT_SETTINGS): their settings when the
    config is readable, else their overrides less `seed=...`, else the run directory (alone)."""
    config = run_config(run_dir)
    if config is not None:
        return settings_key(config)
    if overrides is not None:
        return "overrides:" + json.dumps(sorted(o for o in overrides if not is_seed_override(o)))
    return f"run:{Path(run_dir).resolve()}"


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof = 1) of the finite values, in float64; std is
    None for fewer than two values, mean too for none."""
    mean: Optional[float]
    std: Optional[float]
    n: int

    def text(self) -> str:
        """`mean ± std (n)`, std to two significant digits and the mean to the same decimal
        place (`123.20 ± 0.93 (3)`); `mean (1)` for one value, to 5 digits; empty for none."""
        if self.mean is None:
            return ""
        if self.std is None:
            return f"{self.mean:.5g} ({self.n})"
        decimals = min(8, max(0, 1 - math.floor(math.log10(self.std)))) if self.std > 0 else 3
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f} ({self.n})"


def mean_std(values: Iterable[Any]) -> MeanStd:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not xs:
        return MeanStd(None, None, 0)
    mean = math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return MeanStd(mean, std, len(xs))


def _seed(job_dir: Path, record: dict[str, Any], overrides: list[str]) -> Any:
    if record.get(SEED_KEY) is not None:
        return record[SEED_KEY]
    seeds = [o.split("=", 1)[1] for o in overrides if is_seed_override(o) and "=" in o]
    return seeds[-1] if seeds else (run_config(job_dir) or {}).get(SEED_KEY)


def seed_columns(names: list[str]) -> list[str]:
    """group, overrides (those of the group's jobs less seed), seeds (of its completed jobs), n
    (its completed jobs), failed (its jobs that failed, were interrupted or are missing), jobs,
    then `<metric>_mean` and `<metric>_std` for every metric column of the per-job table."""
    metrics = [n for n in names if "/" in n]
    return ["group", "overrides", "seeds", "n", "failed", "jobs", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))]


def collect_by_seed(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """One row per group of jobs that differ only in seed (`seed_group_key`), in the order of
    their first job; statistics over the completed jobs only (`MeanStd` under each metric)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        job_dir = Path(row["run_dir"])
        groups.setdefault(seed_group_key(job_dir, _job_overrides(job_dir)), []).append(row)
    metrics = [n for n in names if "/" in n]
    out = []
    for i, members in enumerate(groups.values()):
        done = [r for r in members if r["status"] == "completed"]
        out.append({
            "group": i,
            "overrides": " ".join(o for o in members[0]["overrides"].split() if not is_seed_override(o)),
            "seeds": " ".join(str(r["seed"]) for r in done if r["seed"] is not None),
            "n": len(done),
            "failed": len(members) - len(done),
            "jobs": " ".join(r["job"] for r in members),
            **{m: mean_std(r.get(m) for r in done) for m in metrics},
        })
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}" if math.isfinite(value) else str(value)
    return str(value)


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write `summary.csv` and `summary.md` into `sweep_dir`; returns the rows."""
    sweep_dir = Path(sweep_dir)
    rows, names, common = collect(sweep_dir)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    write_text(sweep_dir / CSV_FILE, buffer.getvalue())
    groups = collect_by_seed(rows, names)
    write_text(sweep_dir / SEEDS_CSV_FILE, _seed_csv(groups, names))

    failed = [r for r in rows if r["status"] != "completed"]
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(rows)} jobs: {len(rows) - len(failed)} completed, {len(failed)} failed or missing.",
        "",
        f"Overrides shared by all jobs: `{' '.join(common)}`" if common else "No overrides are shared by all jobs.",
        "",
        *markdown_table(names, [[_cell(row[c]) for c in names] for row in rows]),
        "",
    ]
    lines += _protocol_lines(rows)
    if any(g["n"] + g["failed"] > 1 for g in groups):
        lines += _seed_section(groups, names)
    # Jobs that run at once (joblib) each rewrite the summary: a reader never sees half a file.
    write_text(sweep_dir / MD_FILE, "\n".join(lines))
    return rows


def _protocol_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Under the table: which protocol the disentanglement numbers follow, and which jobs follow each."""
    jobs_by_protocol: dict[str, list[str]] = {}
    for row in rows:
        if row.get(PROTOCOL_KEY):
            jobs_by_protocol.setdefault(row[PROTOCOL_KEY], []).append(row["job"])
    if not jobs_by_protocol:
        return []
    lines = ["Disentanglement: each job's newest evaluation (`python eval.py ckpt_path=<job>/checkpoints/...`; "
             f"its directory in `{EVALUATION_KEY}`). Protocol:", ""]
    lines += [f"- {text} (jobs {' '.join(jobs)})" for text, jobs in jobs_by_protocol.items()]
    if len(jobs_by_protocol) > 1:
        lines += ["", "**Note:** the jobs were evaluated with different protocols: their numbers do not compare."]
    return [*lines, ""]


def _seed_csv(groups: list[dict[str, Any]], names: list[str]) -> str:
    """summary_by_seed.csv: full float64 values; an empty cell where there is no value (std of one run)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=seed_columns(names))
    writer.writeheader()
    for group in groups:
        row = {k: v for k, v in group.items() if not isinstance(v, MeanStd)}
        for name, stat in group.items():
            if isinstance(stat, MeanStd):
                row[f"{name}_mean"], row[f"{name}_std"] = stat.mean, stat.std
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def _seed_section(groups: list[dict[str, Any]], names: list[str]) -> list[str]:
    metrics = [n for n in names if "/" in n]
    header = ["group", "overrides", "seeds", "n", "failed", *metrics]
    return [
        "## Across seeds",
        "",
        f"{len(groups)} groups of jobs that differ only in `seed` (also in `{SEEDS_CSV_FILE}`). Each metric: "
        "mean ± sample standard deviation (n − 1) over the group's completed jobs, and their number (n); "
        "a group with one completed job shows its value alone, `value (1)`. `failed`: the group's jobs that "
        "failed, were interrupted or did not finish; they are left out of the statistics.",
        "",
        *markdown_table(header, [[g["group"], g["overrides"], g["seeds"], g["n"], g["failed"],
                                  *(g[m].text() for m in metrics)] for g in groups]),
        "",
    ]


class SweepSummary(Callback):
    """Keep the summary current after each job; at the end, exit non-zero if any job failed.

    Hydra calls `on_job_end` where the job ran, so the table is there even if the sweep
    itself stops early (e.g. Optuna when every trial failed), and `on_multirun_end` in the
    launching process after every job has returned, whatever the launcher (basic, joblib,
    submitit) or sweeper (basic, Optuna).
    """

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and is_rank_zero_process():
            write_summary(config.hydra.sweep.dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not job_dirs(sweep_dir):
            return
        rows = write_summary(sweep_dir)
        failed = [r for r in rows if r["status"] != "completed"]
        log.info("sweep summary: %s", sweep_dir / MD_FILE)
        if failed:
            for row in failed:
                why = row["error"] or (f"resume with python train.py ckpt_path={row['run_dir']}/checkpoints/interrupted.ckpt"
                                       if row["status"] == "interrupted" else "")
                log.error("job %s (%s) %s: %s", row["job"], row["run_name"], row["status"], why)
            log.error("%d of %d jobs failed; see %s", len(failed), len(rows), sweep_dir / MD_FILE)
            # Hydra has no other way to set the exit code; SystemExit passes its error handler.
            sys.exit(FAILED_SWEEP_EXIT_CODE)


def evaluated_sweeps(eval_dirs: list[Path]) -> list[Path]:
    """The training sweeps (their directories, holding a summary) whose jobs these evaluations
    measured disentanglement of: read from each eval.json's checkpoint."""
    sweeps = []
    for eval_dir in eval_dirs:
        try:
            record = json.loads((eval_dir / EVAL_FILE).read_text())
        except (OSError, ValueError):
            continue
        run_dir = training_run_dir(Path(record.get("checkpoint", ""))) if "disentanglement/protocol" in record else None
        if run_dir is not None and (run_dir.parent / CSV_FILE).is_file():
            sweeps.append(run_dir.parent)
    return list(dict.fromkeys(sweeps))


class EvalSweepExit(Callback):
    """`eval.py -m`: rebuild the summary of every training sweep whose jobs it evaluated (each job
    rebuilds it too, but jobs that run at once may each miss another's numbers); exit non-zero when
    a job left no eval.json (it failed, or was killed).

    A failed job's error is in the metrics.json that `vaelab.sweeps.jobs.record_failure` leaves in its
    directory; the other jobs' results stay.
    """

    def on_multirun_end(self, config, **kwargs) -> None:
        jobs = job_dirs(Path(config.hydra.sweep.dir))
        for sweep_dir in evaluated_sweeps(jobs):
            write_summary(sweep_dir)
            log.info("sweep summary with the disentanglement numbers: %s", sweep_dir / MD_FILE)
        failed = [d for d in jobs if not (d / EVAL_FILE).is_file()]
        for job_dir in failed:
            error = (read_record(job_dir) or {}).get("error") or f"no {EVAL_FILE}: the job did not finish"
            log.error("evaluation %s failed: %s", job_dir.name, error)
        if failed:
            log.error("%d of %d evaluations failed", len(failed), len(jobs))
            sys.exit(FAILED_SWEEP_EXIT_CODE)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m vaelab.reports.summary <sweep dir>   (e.g. outputs/multirun/<date>/<time>)", file=sys.stderr)
        return 2
    sweep_dir = Path(argv[0])
    if not job_dirs(sweep_dir):
        print(f"error: {sweep_dir} holds no job directories (<num>_<run name>/.hydra/overrides.yaml)", file=sys.stderr)
        return 2
    rows = write_summary(sweep_dir)
    print((sweep_dir / MD_FILE).read_text())
    return 0 if all(r["status"] == "completed" for r in rows) else FAILED_SWEEP_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
