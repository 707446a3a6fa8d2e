"""One table per sweep: `summary.csv` and `summary.md` in the sweep directory.

    python -m vaelab.summary outputs/multirun/<date>/<time>     # rebuild it for any sweep dir

Each job directory of the sweep (`<sweep dir>/<num>_<run name>/`) gives one row, read from
its `.hydra/overrides.yaml` and `metrics.json` only, so the table can be rebuilt at any time,
also for a sweep that was interrupted (its unfinished jobs show `status` = `missing`).
Rewritten after every job of a multirun by `SweepSummary`, a Hydra callback (conf/hydra/default.yaml).
Imports nothing heavy: Hydra instantiates the callback for every run, and `--help` stays fast.
"""

import csv
import io
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from vaelab.files import markdown_table, write_text
from vaelab.rundir import EVAL_FILE, METRICS_FILE, is_rank_zero_process, logged_terms, read_record

log = logging.getLogger(__name__)

CSV_FILE, MD_FILE = "summary.csv", "summary.md"
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


def _record(job_dir: Path) -> dict[str, Any]:
    record = read_record(job_dir)
    if record is None:
        return {"status": "missing", "error": f"no {METRICS_FILE}: the job did not finish (still running, or killed)"}
    return record


def columns(records: list[dict[str, Any]]) -> list[str]:
    """job, run_name, status, overrides, then val/ and test/ of every loss term that a job logged
    (an AE's recon and loss, a VAE's also kl and nelbo; rundir.logged_terms), error, run_dir."""
    terms = logged_terms(records)
    return ["job", "run_name", "status", "overrides", *(f"{s}/{t}" for s in ("val", "test") for t in terms), "error", "run_dir"]


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
        }
        row.update({name: record.get(name) for name in names if "/" in name})
        rows.append(row)
    return rows, names, common


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
    writer = csv.DictWriter(buffer, fieldnames=names)
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    write_text(sweep_dir / CSV_FILE, buffer.getvalue())

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
    # Jobs that run at once (joblib) each rewrite the summary: a reader never sees half a file.
    write_text(sweep_dir / MD_FILE, "\n".join(lines))
    return rows


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
                log.error("job %s (%s) %s: %s", row["job"], row["run_name"], row["status"], row["error"])
            log.error("%d of %d jobs failed; see %s", len(failed), len(rows), sweep_dir / MD_FILE)
            # Hydra has no other way to set the exit code; SystemExit passes its error handler.
            sys.exit(FAILED_SWEEP_EXIT_CODE)


class EvalSweepExit(Callback):
    """`eval.py -m`: exit non-zero when a job left no eval.json (it failed, or was killed).

    A failed job's error is in the metrics.json that `vaelab.sweeps.jobs.record_failure` leaves in its
    directory; the other jobs' results stay.
    """

    def on_multirun_end(self, config, **kwargs) -> None:
        jobs = job_dirs(Path(config.hydra.sweep.dir))
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
        print("usage: python -m vaelab.summary <sweep dir>   (e.g. outputs/multirun/<date>/<time>)", file=sys.stderr)
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
