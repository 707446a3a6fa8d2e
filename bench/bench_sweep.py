"""Sweep throughput: jobs per hour when N small `python train.py` runs share one machine.

    python bench/bench_sweep.py --concurrent 1 2 --jobs 4 --epochs 2
    python bench/bench_sweep.py --concurrent 1 2 4 --jobs 8 -- trainer.accelerator=gpu

For each N in --concurrent, runs --jobs complete training runs (startup, data, fit, test,
metrics.json: all a sweep job does), at most N at a time, and prints wall time and jobs per
hour. On one GPU several small runs overlap each other's host work; on a CPU they share the
cores (each run then uses cores / N threads). The same effect inside a Hydra sweep comes from
the joblib launcher (see README).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_epoch import prepare_data  # noqa: E402


def run_jobs(concurrent: int, jobs: int, overrides: list[str]) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
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
    parser.add_argument("--concurrent", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args()
    note, data_root = prepare_data(Path(tempfile.mkdtemp(prefix="bench-data-")), None)
    print(f"data: {note}; each job: {args.epochs} epochs, batch {args.batch_size}, logger=csv, W&B off")
    overrides = [f"data.data_dir={data_root}", "data.source=local", f"data.batch_size={args.batch_size}",
                 f"trainer.max_epochs={args.epochs}", "logger=csv", "trainer.enable_progress_bar=false", *args.overrides]
    for n in args.concurrent:
        elapsed = run_jobs(n, args.jobs, overrides)
        print(f"{n} at a time: {args.jobs} jobs in {elapsed:.1f} s = {3600 * args.jobs / elapsed:.1f} jobs/hour")


if __name__ == "__main__":
    main()
