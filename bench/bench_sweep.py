"""Sweep throughput: jobs per hour of a real Hydra multirun, or of separate `python train.py` runs.

    python bench/bench_sweep.py --jobs 16 --launchers basic joblib --base .base   # Hydra sweeps, this tree vs another
    python bench/bench_sweep.py --jobs 16 --short                                  # jobs of 40 batches: the fixed cost
    python bench/bench_sweep.py --processes --concurrent 1 2 --jobs 4 --epochs 2   # separate processes, N at a time
    python bench/bench_sweep.py --jobs 8 -- trainer.accelerator=gpu                # extra train.py overrides after --
    python bench/bench_sweep.py --jobs 32 --epochs 10 --stacked                    # + hydra/launcher=stacked (issue 14)
    python bench/bench_sweep.py --jobs 32 --epochs 10 --betas 0.25 0.5 1 2 4 8 16 32 --launchers basic stacked \
        --basic-jobs 8 -- trainer.accelerator=gpu                                   # issue 14's GPU grid: 8 β × 4 seeds

Hydra sweeps (the default): `python train.py -m seed=0,...,J-1` with each --launchers entry:
`basic` runs the jobs one after another in the sweep's process, `joblib` in n_jobs worker
processes at once (--n-jobs, default: all cores), `stacked` (--stacked) as one stacked model
(hydra/launcher=stacked: the seeds of the grid share one stack). Every job is a complete run (data, fit with
validation, checkpoints, diagnostics and panels, test, metrics.json), logger=csv, no progress
bar. With --base DIR the same sweeps also run from the tree in DIR (an earlier commit: `mkdir
.base && git archive <commit> | tar -x -C .base`), interleaved with this tree's, and the table
gives this tree's jobs/hour over the base's: issue 13's "a 16-job single-device sweep reaches
≥ 3× today's jobs/hour" is that ratio. --short makes each job 1 epoch of 40 batches, so that
what a job costs besides training (what a GPU job of 10 epochs mostly is) dominates on a CPU.

--processes: J separate `python train.py` runs, at most N at a time (each with cores / N
threads): what the sweep's in-process jobs save against starting a process per job.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_epoch import cpu_name, prepare_data, remove_work_dir  # noqa: E402

SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=40"]


def clean_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    if tree != REPO:  # the other tree's package first; the venv's editable install points at this one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree / "src"), env.get("PYTHONPATH")]))
    return env


def completed_jobs(sweep_dir: Path) -> int:
    done = 0
    for record in sweep_dir.glob("*/metrics.json"):
        done += json.loads(record.read_text()).get("status") == "completed"
    return done


def grid(jobs: int, betas: list[str]) -> list[str]:
    """The sweep's overrides: `jobs` seeds, or len(betas) β values × jobs / len(betas) seeds."""
    if not betas:
        return [f"seed=range(0,{jobs})"]
    if jobs % len(betas):
        raise SystemExit(f"--jobs {jobs} is not a multiple of the {len(betas)} β values")
    return [f"model.beta={','.join(betas)}", f"seed=range(0,{jobs // len(betas)})"]


def hydra_sweep(tree: Path, launcher: str, jobs: int, betas: list[str], n_jobs: int | None, overrides: list[str],
                work: Path) -> float:
    """Wall seconds of one multirun of `jobs` jobs from `tree`; raises unless every job completed."""
    sweep_dir = work / f"{tree.name}-{launcher}-{time.monotonic_ns()}"
    command = [sys.executable, str(tree / "train.py"), "-m", *overrides, *grid(jobs, betas),
               f"hydra.sweep.dir={sweep_dir}"]
    if launcher == "joblib":
        command += ["hydra/launcher=joblib", *([f"hydra.launcher.n_jobs={n_jobs}"] if n_jobs else [])]
    elif launcher == "stacked":
        command += ["hydra/launcher=stacked"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=clean_env(tree), capture_output=True, text=True)
    wall = time.perf_counter() - start
    done = completed_jobs(sweep_dir)
    if result.returncode != 0 or done != jobs:
        raise RuntimeError(f"{tree.name} {launcher}: {done} of {jobs} jobs completed (exit {result.returncode}); "
                           f"see {sweep_dir}\n{result.stderr[-2000:]}")
    return wall


def separate_processes(concurrent: int, jobs: int, overrides: list[str], work: Path) -> float:
    out = work / f"processes-{concurrent}"
    env = clean_env(REPO)
    threads = max(1, (os.cpu_count() or 1) // concurrent)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    started: list[subprocess.Popen] = []
    for job in range(jobs):
        while sum(p.poll() is None for p in started) >= concurrent:
            time.sleep(0.05)
        cmd = [sys.executable, str(REPO / "train.py"), *overrides, f"seed={job}", f"hydra.run.dir={out}/job{job}"]
        started.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    failed = [p for p in started if p.wait() != 0]
    elapsed = time.perf_counter() - start
    done = sum(1 for job in range(jobs) if (out / f"job{job}" / "metrics.json").exists())
    if failed or done != jobs:
        raise RuntimeError(f"{jobs - done} of {jobs} jobs did not finish; see {out}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--betas", nargs="+", default=[], help="a β × seed grid: these β, --jobs / len(betas) seeds each")
    parser.add_argument("--basic-jobs", type=int, default=None,
                        help="fewer jobs for the one-at-a-time launcher (jobs/hour stay comparable), e.g. on a GPU")
    parser.add_argument("--launchers", nargs="+", choices=["basic", "joblib", "stacked"], default=["basic", "joblib"])
    parser.add_argument("--stacked", action="store_true", help="also hydra/launcher=stacked (this tree only)")
    parser.add_argument("--n-jobs", type=int, default=None, help="joblib's n_jobs (default: its own, all cores)")
    parser.add_argument("--base", type=Path, default=None, help="a tree to time beside this one (e.g. .base)")
    parser.add_argument("--rounds", type=int, default=1, help="each sweep this many times, trees interleaved")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--short", action="store_true", help="jobs of 1 epoch of 40 batches")
    parser.add_argument("--processes", action="store_true", help="separate train.py processes instead of a sweep")
    parser.add_argument("--concurrent", type=int, nargs="+", default=[1, 2], help="with --processes")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the sweep directories (printed)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    note, data_root = prepare_data(work / "data", args.data_dir)
    length = SHORT if args.short else [f"trainer.max_epochs={args.epochs}"]
    overrides = [f"data.data_dir={data_root}", "data.source=local", f"data.batch_size={args.batch_size}", *length,
                 "logger=csv", "trainer.enable_progress_bar=false", *args.overrides]
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; data: {note}")
    print(f"each job: {' '.join(length)}, batch {args.batch_size}, logger=csv; {args.jobs} jobs: {' '.join(grid(args.jobs, args.betas))}\n")

    if args.processes:
        for n in args.concurrent:
            elapsed = separate_processes(n, args.jobs, overrides, work)
            print(f"{n} at a time: {args.jobs} jobs in {elapsed:.1f} s = {3600 * args.jobs / elapsed:.1f} jobs/hour")
        remove_work_dir(work, args.keep)
        return

    if args.stacked and "stacked" not in args.launchers:
        args.launchers.append("stacked")
    trees = [REPO] + ([args.base.resolve()] if args.base else [])

    def jobs_of(launcher: str) -> int:
        return args.basic_jobs if launcher == "basic" and args.basic_jobs else args.jobs

    def trees_of(launcher: str) -> list[Path]:  # a tree older than issue 14 has no stacked launcher
        return [t for t in trees if launcher != "stacked" or (t / "conf/hydra/launcher/stacked.yaml").exists()]

    walls: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for launcher in args.launchers:
            for tree in trees_of(launcher):
                wall = hydra_sweep(tree, launcher, jobs_of(launcher), args.betas, args.n_jobs, overrides, work)
                walls.setdefault((tree.name, launcher), []).append(wall)
                print(f"  {tree.name:10s} {launcher:7s} {wall:7.1f} s", flush=True)
    print(f"\nmedian of {args.rounds}: wall s, jobs/hour")
    for launcher in args.launchers:
        per_hour = {}
        for tree in trees_of(launcher):
            wall = statistics.median(walls[(tree.name, launcher)])
            per_hour[tree.name] = 3600 * jobs_of(launcher) / wall
            print(f"  {tree.name:10s} {launcher:7s} {wall:7.1f} s  {per_hour[tree.name]:7.0f} jobs/hour ({jobs_of(launcher)} jobs)")
        if len(per_hour) == 2:
            print(f"  {launcher}: this tree / {args.base.name} = {per_hour[REPO.name] / per_hour[trees[1].name]:.2f}× the jobs/hour")
    if args.base and "basic" in args.launchers and "joblib" in args.launchers:
        best = max(3600 * jobs_of(name) / statistics.median(walls[(REPO.name, name)]) for name in args.launchers)
        base_serial = 3600 * jobs_of("basic") / statistics.median(walls[(trees[1].name, "basic")])
        base_joblib = 3600 * jobs_of("joblib") / statistics.median(walls[(trees[1].name, "joblib")])
        print(f"  this tree's best / {args.base.name}'s basic = {best / base_serial:.2f}×, / its joblib = {best / base_joblib:.2f}×")
    if "stacked" in args.launchers:
        def rate(launcher: str) -> float:
            return jobs_of(launcher) / statistics.median(walls[(REPO.name, launcher)])

        for launcher in (name for name in args.launchers if name != "stacked"):
            print(f"  stacked / {launcher} (this tree) = {rate('stacked') / rate(launcher):.2f}× the jobs/hour")
    remove_work_dir(work, args.keep)


if __name__ == "__main__":
    main()
