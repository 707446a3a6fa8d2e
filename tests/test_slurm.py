"""`hydra/launcher=slurm` against a real SLURM cluster on this machine (the `slurm_cluster` fixture:
munge, slurmctld and two slurmd nodes, tests/slurm_cluster.py), through `python train.py -m` with
docs/devices.md's command: only the partition, the account and the CPU accelerator differ from what a GPU
cluster gets. Skipped, with the reason, where SLURM is not installed (`make test` installs it as root,
as in CI)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import (FAULT_TABLE, REPO, built_once, finish, one_device_test_losses, run_dirs, small_run_overrides,
                      start_entry_point)
from vaelab import rundir
from vaelab.sweeps.slurm import rank_settings
from vaelab.tasks.cli import rank_overrides

# docs/devices.md's command; the cluster's partition and account, and trainer.accelerator=cpu (small_run_overrides).
SLURM_SWEEP = ("-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.account=vaelab")
LONG_EPOCHS = 20  # the reference and the preempted run: long enough to be signalled in the middle of training


def _start(cluster, data_dir: Path, log_dir: Path, *overrides: str, epochs: int = 2) -> subprocess.Popen:
    shrunk = [o for o in small_run_overrides(data_dir, log_dir) if not o.startswith("trainer.max_epochs=")]
    return start_entry_point(*SLURM_SWEEP, *shrunk, f"trainer.max_epochs={epochs}", "logger=csv", *overrides,
                             env=cluster.env)


def _sweep_dir(log_dir: Path) -> Path:
    (sweep_dir,) = Path(log_dir).glob("multirun/*/*")
    return sweep_dir


def _job_dir(sweep_dir: Path, num: int = 0) -> Path:
    (job_dir,) = sweep_dir.glob(f"{num}_*")
    return job_dir


def _record(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def _test_metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if k.startswith("test/")}


def _summary_rows(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def _slurm_ids(sweep_dir: Path) -> list[str]:
    """The SLURM job ids of the sweep's jobs (`<array>_<index>`, or `<id>` for a lone job), from submitit's folders."""
    return sorted(p.name.rsplit("_submitted.pkl")[0] for p in sweep_dir.glob(".submitit/*/*_submitted.pkl"))


def _task_logs(log_dir: Path) -> str:
    """The tails of every task's logs under `log_dir` (submitit's .submitit/<job>/ files), for a failure message."""
    return "".join(f"\n== {path}\n{path.read_text(errors='replace')[-1500:]}"
                   for path in sorted(Path(log_dir).glob("multirun/*/*/.submitit/*/*_log.*")))


def _ok(result: subprocess.CompletedProcess, log_dir: Optional[Path] = None) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:] + (_task_logs(log_dir) if log_dir else "")
    return result


def _wait_for(condition, timeout: float, what: str, cluster=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s" + (f"\n{cluster.logs()}" if cluster else ""))
        time.sleep(0.2)


def _slurm(cluster, *command: str) -> str:
    result = subprocess.run(command, env={**os.environ, **cluster.env}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout


# -- without a cluster: which process of a run is which rank, and what each rank writes ----------

@pytest.mark.parametrize(("env", "rank"), [
    ({}, 0),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, 0),  # a one-task SLURM job
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, 0),
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "3"}, 3),  # srun starts all tasks at once, none has LOCAL_RANK yet
    ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "RANK": "1"}, 1),  # torchrun
])
def test_every_task_a_cluster_starts_is_a_rank_of_the_one_run(env, rank, monkeypatch, tmp_path):
    for name in ("SLURM_NTASKS", "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert rundir.cluster_rank() == rank and rundir.is_rank_zero_process() is (rank == 0)
    (tmp_path / "checkpoints").mkdir()  # what rank 0 of this very run may have written already
    if rank == 0:  # the run's one owner: refuses a directory with results, takes the lock
        with pytest.raises(rundir.ConfigError, match="already holds an earlier run"):
            rundir.refuse_earlier_run(tmp_path)
        rundir.lock_run_dir(tmp_path)
        assert (tmp_path / rundir.LOCK_FILE).read_text().startswith("vaelab process")
        rundir.release_run_dir(tmp_path)
    else:  # another rank of the same run: neither refuses nor locks (it used to, and hung its job)
        rundir.refuse_earlier_run(tmp_path)
        rundir.lock_run_dir(tmp_path)
        assert not (tmp_path / rundir.LOCK_FILE).exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_rank_zero_writes_the_config_and_train_log_other_ranks_their_own_log(rank, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", str(rank))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    rank_settings(cfg)
    assert (cfg.hydra.output_subdir, cfg.hydra.job.name) == ((".hydra", "app") if rank == 0 else (None, "train_ddp_process_1"))  # compose() names the job "app"
    # A single run's rank 1 started by srun gets the same, as overrides (rank 0 none; a sweep's tasks get them above).
    assert rank_overrides(["model.beta=4"]) == ([] if rank == 0 else ["hydra.output_subdir=null", "hydra.job.name=train_ddp_process_1"])
    assert rank_overrides(["-m", "model.beta=1,4"]) == []


def test_a_cpu_job_asks_slurm_for_no_gpu():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        gpu = compose(config_name="train", overrides=["hydra/launcher=slurm", "trainer.devices=4"], return_hydra_config=True)
        cpu = compose(config_name="train", overrides=["hydra/launcher=slurm", "trainer.devices=4", "trainer.accelerator=cpu"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert (gpu.hydra.launcher.gpus_per_node, gpu.hydra.launcher.tasks_per_node) == (4, 4)
    assert (cpu.hydra.launcher.gpus_per_node, cpu.hydra.launcher.tasks_per_node) == (None, 4)
    assert list(cpu.hydra.launcher.srun_args) == ["--kill-on-bad-exit=1"]


@pytest.mark.parametrize(("trainer", "strategy"), [({"devices": 2}, True), ({"devices": 1, "num_nodes": 2}, True),
                                                  ({"devices": 1}, False), ({"devices": 2, "strategy": "ddp_spawn"}, False)])
def test_several_processes_get_ddp_with_vaelabs_timeout(trainer, strategy):
    from pytorch_lightning.strategies import DDPStrategy

    from vaelab.tasks.train import trainer_settings

    settings, extra = trainer_settings(OmegaConf.create({**trainer, "ddp_timeout_s": 10}))
    assert "ddp_timeout_s" not in settings  # vaelab's key, not a Trainer argument
    assert isinstance(extra.get("strategy"), DDPStrategy) is strategy  # one device keeps Lightning's (and the CUDA graph)


# -- on the cluster --------------------------------------------------------------------------------

PLACEMENTS = {"one node": "trainer.devices=2", "two nodes": "trainer.num_nodes=2"}


@pytest.fixture(scope="module")
def reference_sweeps(slurm_cluster, shared_data_dir, tmp_path_factory) -> dict[str, Path]:
    """Three sweeps started at once (the cluster has room for all their jobs): "beta", `model.beta=1,4`
    with one task each, and one job of 2 tasks per placement ("one node", "two nodes"). They are
    the uninterrupted references of the preemption tests below (beta's job 0 is model.beta=1).
    Built once per session (pytest-xdist sets a module's fixtures up again when the worker ran
    another module's test in between)."""
    sweeps = {"beta": "model.beta=1,4", **PLACEMENTS}

    def build(directory: Path) -> None:
        started = {name: _start(slurm_cluster, shared_data_dir, directory / name.replace(" ", "_"), override,
                                epochs=LONG_EPOCHS) for name, override in sweeps.items()}
        for name, process in started.items():
            log_dir = directory / name.replace(" ", "_")
            result = _ok(finish(process), log_dir)
            (log_dir / "console.txt").write_text(result.stdout + result.stderr)

    directory = built_once(tmp_path_factory, "slurm_reference_sweeps", build)
    return {name: _sweep_dir(directory / name.replace(" ", "_")) for name in sweeps}


@pytest.fixture(scope="module")
def beta_sweep(reference_sweeps) -> Path:
    return reference_sweeps["beta"]


@pytest.fixture(scope="module")
def two_task_sweeps(reference_sweeps) -> dict[str, Path]:
    return {name: reference_sweeps[name] for name in PLACEMENTS}


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_beta_sweep_is_one_slurm_job_per_setting(beta_sweep):
    rows = _summary_rows(beta_sweep)
    assert [(r["status"], r["overrides"]) for r in rows] == [("completed", "model.beta=1"), ("completed", "model.beta=4")]
    assert len(_slurm_ids(beta_sweep)) == 2
    for num in (0, 1):
        job_dir = _job_dir(beta_sweep, num)
        assert _record(job_dir)["devices"] == 1
        assert not (job_dir / ".vaelab.lock").exists() and not list(job_dir.glob("train_ddp_process_*.log"))
    # What sbatch and srun were asked for: conf/hydra/launcher/slurm.yaml, and no GPU for a CPU job.
    (script,) = beta_sweep.glob(".submitit/*/*_submission.sh")
    text = script.read_text()
    for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=32GB",
                 "#SBATCH --signal=USR2@120", "#SBATCH --time=240", "#SBATCH --partition=debug", "#SBATCH --account=vaelab", "--kill-on-bad-exit=1"):
        assert line in text
    assert "gpu" not in text
    # The cluster keeps no accounting: submitit's sacct would fail at every poll; the sweep asks squeue, quietly.
    console = (beta_sweep.parents[2] / "console.txt").read_text()
    assert "SLURM sweep: 2 jobs" in console and "sacct" not in console and "accounting" not in console


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_job_on_two_tasks_or_two_nodes_is_one_run(two_task_sweeps, shared_data_dir):
    records = {}
    for name, sweep_dir in two_task_sweeps.items():
        run_dir = _job_dir(sweep_dir)
        # One run: rank 0 writes the run's files, rank 1 only its log (it trained the same model).
        assert {p.name for p in run_dir.iterdir()} == {".hydra", "train.log", "train_ddp_process_1.log", "metrics.json",
                                                        "checkpoints", "csv", "images"}
        for log_file in ("train.log", "train_ddp_process_1.log"):
            assert "hyperparameters: model=vae latent_dim=4 hidden_dims=[64] beta=1" in (run_dir / log_file).read_text()
        record = records[name] = _record(run_dir)
        assert record["status"] == "completed" and record["devices"] == 2
        # Where SLURM put rank 1: beside rank 0, or on the second node.
        (slurm_id,) = _slurm_ids(sweep_dir)
        rank_one = (sweep_dir / ".submitit" / slurm_id / f"{slurm_id}_1_log.out").read_text()
        assert ("node=1(2), global_rank=1(2)" if name == "two nodes" else "local_rank=1(2), node=0(1)") in rank_one
        # The test set was split over the ranks without padding: one device gives the same numbers
        # (the KL exactly; the recon depends on the sampled z).
        one_device = one_device_test_losses(record["best_checkpoint"], shared_data_dir)
        assert one_device["test/kl"] == pytest.approx(record["test/kl"], rel=1e-5)
        assert one_device["test/recon"] == pytest.approx(record["test/recon"], rel=2e-2)
    # Ranks 0 and 1 see the same data and noise wherever SLURM places them.
    assert _test_metrics(records["one node"]) == _test_metrics(records["two nodes"])


def _task_pids(slurm_id: str, rank: Optional[int] = None) -> list[int]:
    """The processes of a (non-array) SLURM job's tasks on this machine, or of its task `rank`."""
    wanted = {f"SLURM_JOB_ID={slurm_id}"} | ({f"SLURM_PROCID={rank}"} if rank is not None else set())
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted <= set(environ.read_bytes().decode(errors="replace").split("\0")) and \
                    b"submitit.core._submit" in (environ.parent / "cmdline").read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return pids


def _task_pid(slurm_id: str, rank: int) -> int:
    pids = _task_pids(slurm_id, rank)
    assert pids, f"no process of task {rank} of SLURM job {slurm_id}"
    return pids[0]


def _settled(cluster, slurm_id: str) -> bool:
    """The job's first attempt is gone: none of its tasks runs, and no node is still cleaning up after it."""
    nodes = _slurm(cluster, "sinfo", "--noheader", "--Node", "--format=%T").split()
    return not _task_pids(slurm_id) and not any(state.startswith("completing") for state in nodes)


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
@pytest.mark.parametrize("tasks", [1, 2])
def test_a_preempted_job_is_requeued_and_finishes_in_its_run_directory(slurm_cluster, shared_data_dir, tmp_path,
                                                                     beta_sweep, two_task_sweeps, tasks):
    process = _start(slurm_cluster, shared_data_dir, tmp_path, "model.beta=1", f"trainer.devices={tasks}",
                     epochs=LONG_EPOCHS)
    try:
        _wait_for(lambda: list(tmp_path.glob("multirun/*/*/0_*/checkpoints/last.ckpt")), 120, "the first epoch's checkpoint")
        sweep_dir = _sweep_dir(tmp_path)
        run_dir = _job_dir(sweep_dir)
        (slurm_id,) = _slurm_ids(sweep_dir)
        if tasks == 1:  # SLURM's advance warning of a time limit, as `--signal=USR2@120` sends it, to the job's tasks
            _slurm(slurm_cluster, "scancel", "--signal=USR2", slurm_id)
        else:  # the warning reaching rank 1 only (SLURM signals each task on its own): both ranks must stop at one batch
            os.kill(_task_pid(slurm_id, 1), signal.SIGUSR2)
        _wait_for(lambda: (run_dir / "metrics.json").exists() and _record(run_dir)["status"] == "interrupted", 120,
                  "the interrupted run's record", slurm_cluster)
        interrupted = _record(run_dir)
        assert interrupted["resume_checkpoint"] == str(run_dir / "checkpoints" / "interrupted.ckpt")
        assert 0 < interrupted["global_step"] < LONG_EPOCHS * 8

        # vaelab ran the real `scontrol requeue`: SLURM holds the job back (BeginTime, 2 minutes, time for the
        # nodes to clean up), then restarts it. The test skips the wait once the first attempt is gone, but not
        # within the wall-clock second in which SLURM killed it: the node revokes the job's credential as of
        # that second and refuses a launch whose new credential dates from it ("Killing non-startable batch
        # JobId=...: Job credential revoked" in slurmctld.log). The job then ends for good (FAILED, Restarts=1,
        # no task started) and the sweep rightly reports it failed: this test used to fail so whenever the
        # first attempt exited quickly. SLURM's own BeginTime delay never meets that. The kill reached the node
        # before the job left COMPLETING, so a start from the second after the job settled is always safe.
        def restarted() -> bool:
            job = _slurm(slurm_cluster, "scontrol", "show", "job", slurm_id)
            if "Restarts=1" in job and "JobState=PENDING Reason=BeginTime" in job and _settled(slurm_cluster, slurm_id):
                settled_at = time.time()
                time.sleep(int(settled_at) + 1 - settled_at)
                _slurm(slurm_cluster, "scontrol", "update", f"JobId={slurm_id}", "StartTime=now")
            return "Restarts=1" in job and "JobState=PENDING" not in job and "JobState=COMPLETING" not in job

        _wait_for(restarted, 60, "the requeue and restart", slurm_cluster)
        result = _ok(finish(process, timeout=300), tmp_path)
    finally:  # a failed check leaves no sweep behind
        if process.poll() is None:
            process.kill()
    record = _record(run_dir)
    assert record["status"] == "completed" and record["epochs"] == LONG_EPOCHS
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.until_restart1.csv").is_file()  # the rows before the requeue
    # Exactly what the same job gave without the interruption.
    uninterrupted = _job_dir(beta_sweep, 0) if tasks == 1 else _job_dir(two_task_sweeps["one node"])
    assert _test_metrics(record) == _test_metrics(_record(uninterrupted))
    assert "requeued by SLURM (restart 1): resuming in place" in (run_dir / "train.log").read_text()
    assert [r["status"] for r in _summary_rows(sweep_dir)] == ["completed"], result.stdout[-2000:]
    FAULT_TABLE.append((f"SLURM SIGUSR2 + requeue, real SLURM, {tasks} task(s)", "the run directory, continued in place; "
                        "bitwise the uninterrupted test metrics", "nothing"))


FAILURES = ("srun", "the rendezvous timeout", "never started")


@pytest.fixture(scope="module")
def failed_sweeps(slurm_cluster, shared_data_dir, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess, float]]:
    """A sweep per way a job fails, started at once: (its log dir, its console, its seconds from start to exit).

    "srun", "the rendezvous timeout": the data reached node n1 only, so rank 1, on n2, fails before the
    ranks meet; srun stops rank 0, or (without --kill-on-bad-exit) DDP's timeout ends it.
    "never started": the job's shell fails before srun starts Python (hydra.launcher.setup runs
    first): no task, no run directory. Built once per session, as reference_sweeps."""
    def run(log_dir: Path, name: str) -> None:
        log_dir.mkdir()
        if name == "never started":
            data_dir, overrides = shared_data_dir, ["hydra.launcher.setup=[exit 3]", "model.beta=2"]
        else:
            (log_dir / "data_n1").symlink_to(shared_data_dir, target_is_directory=True)
            data_dir = f"{log_dir}/data_${{oc.env:SLURMD_NODENAME,none}}"  # resolved on each node
            overrides = ["data.source=local", "trainer.num_nodes=2"]
            if name == "the rendezvous timeout":  # srun lets rank 0 wait; DDP's timeout ends it
                overrides += ["hydra.launcher.srun_args=[]", "trainer.ddp_timeout_s=10"]
        started = time.monotonic()
        result = finish(_start(slurm_cluster, data_dir, log_dir / "out", *overrides), timeout=240)
        elapsed = time.monotonic() - started
        (log_dir / "console.json").write_text(json.dumps({"returncode": result.returncode, "stdout": result.stdout,
                                                          "stderr": result.stderr, "elapsed": elapsed}))

    def build(directory: Path) -> None:
        with ThreadPoolExecutor(len(FAILURES)) as pool:
            list(pool.map(run, [directory / name.replace(" ", "_") for name in FAILURES], FAILURES))

    directory = built_once(tmp_path_factory, "slurm_failed_sweeps", build)
    outcomes = {}
    for name in FAILURES:
        log_dir = directory / name.replace(" ", "_")
        console = json.loads((log_dir / "console.json").read_text())
        outcomes[name] = (log_dir, subprocess.CompletedProcess([], console["returncode"], console["stdout"],
                                                               console["stderr"]), console["elapsed"])
    return outcomes


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
@pytest.mark.parametrize("stopped_by", FAILURES[:2])
def test_a_failing_rank_fails_its_job_with_its_error_in_bounded_time(failed_sweeps, stopped_by):
    log_dir, result, elapsed = failed_sweeps[stopped_by]
    assert result.returncode == 1, (result.stdout + result.stderr)[-4000:]  # a sweep with a failed job
    sweep_dir = _sweep_dir(log_dir / "out")
    (row,) = _summary_rows(sweep_dir)
    cause = f"rank 1 failed: no mnist files in {log_dir}/data_n2/MNIST/raw (data.source=local)"
    assert row["status"] == "failed" and row["error"].startswith(cause)
    assert _record(_job_dir(sweep_dir))["error"] == row["error"]
    if stopped_by == "srun":
        assert "rank 0 ended without a result (stopped by srun or SLURM" in row["error"]
    else:
        assert "rank 0 failed: torch.distributed.DistStoreError: Timed out" in row["error"]
    assert cause in result.stderr + result.stdout  # said on the console too
    assert elapsed < 120, f"the sweep took {elapsed:.0f} s to notice the failure"


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_job_that_never_starts_is_listed_as_failed(failed_sweeps):
    log_dir, result, _ = failed_sweeps["never started"]
    assert result.returncode == 1, (result.stdout + result.stderr)[-4000:]
    sweep_dir = _sweep_dir(log_dir / "out")
    (row,) = _summary_rows(sweep_dir)
    assert row["status"] == "failed" and row["run_name"] == "vae-z4-beta2"
    assert row["error"].startswith("rank 0 ended without a result (stopped by srun or SLURM, or never started: see ")
    assert Path(row["run_dir"]).name == "0_vae-z4-beta2"  # where Hydra would have put it


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_the_ranks_srun_starts_for_a_single_run_share_its_directory(slurm_cluster, shared_data_dir, tmp_path):
    """Without the launcher: `srun --ntasks-per-node=2 python train.py trainer.devices=2`, both tasks at once."""
    command = ["srun", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--partition=debug", sys.executable,
               str(REPO / "train.py"), *small_run_overrides(shared_data_dir, tmp_path), "logger=csv", "trainer.devices=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "LOCAL_RANK", "NODE_RANK", "MASTER_"))}
    result = subprocess.run(command, env={**env, **slurm_cluster.env}, cwd=REPO, capture_output=True, text=True,
                            timeout=240)
    _ok(result)
    (run_dir,) = run_dirs(tmp_path)
    assert re.fullmatch(r"\d+\.0_vae-z4-beta1", run_dir.name) and run_dir.parent.name == "slurm"
    assert {p.name for p in run_dir.iterdir()} == {".hydra", "train.log", "train_ddp_process_1.log", "metrics.json",
                                                    "checkpoints", "csv", "images"}
    record = _record(run_dir)
    assert record["status"] == "completed" and record["devices"] == 2
    assert "hyperparameters: model=vae" in (run_dir / "train_ddp_process_1.log").read_text()
