"""Fault injection: what survives a fault, what is lost, and what the user reads.

Real processes where the fault is a signal (kill -9, SIGTERM, SIGUSR2, a killed DDP rank): `train.py`
forked from this process, which has imported torch and Lightning already (`_Forked`), and a freshly
started `python train.py` for the killed DDP rank (`_exec`); the others run
`train.py` in this process (runpy) with the fault put into the one function it hits: a writer
that finds the disk full, a checkpoint file that is corrupt or hostile, a run directory that
another process holds. Each test adds a row to the table printed at the end of the session
(conftest.pytest_terminal_summary): fault, what survived, what was lost.
"""

import atexit
import csv
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import FAULT_TABLE, REPO, run_entry_point_in_process, small_run_overrides
from vaelab.checkpoints import check_resumable, read_checkpoint
from vaelab.errors import CheckpointError
from vaelab.rundir import lock_run_dir

pytestmark = pytest.mark.slow

EPOCHS = 3
# Many small steps (32 per epoch), so that a signal lands inside an epoch; no panels (not under test).
FAST = ["logger=csv", "data.batch_size=16", f"trainer.max_epochs={EPOCHS}", "trainer.log_every_n_steps=1"]
NO_PANELS = "callbacks.latent_panels=null"
# What an interrupted and resumed run must reproduce bit for bit.
COMPARED = ("train/loss", "val/loss", "val/kl", "test/loss", "test/nelbo", "global_step", "epochs", "best_epoch")


def _overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    panels = [] if any(e.startswith("callbacks.latent_panels") for e in extra) else [NO_PANELS]
    return [*small_run_overrides(data_dir, run_dir.parent / "logs"), *FAST, *panels, f"hydra.run.dir={run_dir}", *extra]


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _train_in_process(data_dir: Path, run_dir: Path, *extra: str) -> int:
    return run_entry_point_in_process(*_overrides(data_dir, run_dir, *extra))


def _one_line_error(capfd, *fragments: str) -> str:
    output = "".join(capfd.readouterr())
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line or line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


class _Forked:
    """`python train.py <args>` as a process of its own, forked from this one: torch and Lightning are
    imported already, so it trains at once instead of spending seconds on imports. The child runs the
    real entry point (run_entry_point_in_process) in the repository, with the environment a user's
    shell gives it and its stdout and stderr in files; a signal reaches it as it reaches `python
    train.py`. It ends as the interpreter would: it waits for the threads the run left (a run that
    leaves one hangs here as it would there), runs the exit handlers the run registered (not this
    process's), and exits with the entry point's code. For the faults whose behaviour does not depend
    on a freshly started interpreter: a signal, kill -9. The part of Popen's interface the tests use.
    (conftest keeps this process at one torch thread: the child of a process whose thread pool has
    started can hang in its first parallel op.)"""

    def __init__(self, *args: str, env: dict[str, str]):
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                atexit._clear()  # pytest's exit handlers are not the run's
                os.dup2(self._out.fileno(), 1)
                os.dup2(self._err.fileno(), 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                os.chdir(REPO)
                os.environ.clear()
                os.environ.update(env)
                code = run_entry_point_in_process(*args)
                for thread in threading.enumerate():  # as the interpreter does before it exits
                    if thread is not threading.current_thread() and not thread.daemon:
                        thread.join()
                atexit._run_exitfuncs()
            except BaseException:  # noqa: B036 (nothing may run on into pytest's code in the child)
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float = 120) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise subprocess.TimeoutExpired(["train.py"], timeout)
            time.sleep(0.05)
        return tuple(f.seek(0) or f.read().decode(errors="replace") for f in (self._out, self._err))


def _start(data_dir: Path, run_dir: Path, *extra: str) -> _Forked:
    return _start_entry_point(*_overrides(data_dir, run_dir, *extra))


def _exec(data_dir: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """`python train.py ...` started afresh, for a fault whose outcome depends on the whole life of
    the interpreter (a killed DDP rank: rank 0 must notice and its interpreter exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "LOCAL_RANK", "NODE_RANK", "MASTER_"))}
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *_overrides(data_dir, run_dir, *extra)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_entry_point(*args: str) -> _Forked:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "LOCAL_RANK", "NODE_RANK", "MASTER_", "PYTEST_"))}
    return _Forked(*args, env={**env, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"})


def _wait_for(process: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, f"the run ended (exit {process.returncode}) before {what}: {process.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.01)
    except BaseException:
        process.kill()  # a test that gives up leaves no run behind
        raise


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "csv" / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(shared_data_dir, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("faults") / "uninterrupted"
    assert _train_in_process(shared_data_dir, run_dir) == 0
    return _record(run_dir)


def _assert_same_training(resumed: dict, uninterrupted: dict) -> None:
    assert {k: resumed[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}


def test_kill_9_after_an_epoch_then_resume_gives_the_uninterrupted_metrics(shared_data_dir, tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    process = _start(shared_data_dir, killed)
    last = killed / "checkpoints" / "last.ckpt"
    _wait_for(process, last.exists, "last.ckpt")
    process.kill()  # SIGKILL: nothing of the process runs after this
    process.communicate()
    epoch = read_checkpoint(last)["epoch"]  # whole, whichever epoch's it is: it was renamed into place
    resumed = tmp_path / "resumed"
    assert _train_in_process(shared_data_dir, resumed, f"ckpt_path={last}") == 0
    _assert_same_training(_record(resumed), uninterrupted)
    FAULT_TABLE.append(("kill -9 during training", f"last.ckpt (epoch {epoch}); resumed bitwise equal to an uninterrupted run",
                        "the epoch in flight (retrained on resume)"))


def test_sigterm_saves_a_mid_epoch_checkpoint_and_resume_continues_exactly(shared_data_dir, tmp_path, uninterrupted):
    stopped = tmp_path / "stopped"
    process = _start(shared_data_dir, stopped)
    _wait_for(process, lambda: _logged_steps(stopped) >= 5, "5 logged steps")
    process.send_signal(signal.SIGTERM)
    output = "".join(process.communicate(timeout=120))
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output
    record = _record(stopped)
    checkpoint = stopped / "checkpoints" / "interrupted.ckpt"
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert record["resume_checkpoint"] == str(checkpoint)
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"ckpt_path={checkpoint}" in errors[0], output[-3000:]  # the one line says how to resume
    step = read_checkpoint(checkpoint)["global_step"]
    assert step == record["global_step"] and 0 < step < EPOCHS * 32
    resumed = tmp_path / "resumed"
    assert _train_in_process(shared_data_dir, resumed, f"ckpt_path={checkpoint}") == 0
    _assert_same_training(_record(resumed), uninterrupted)
    FAULT_TABLE.append(("SIGTERM (preemption)", f"interrupted.ckpt at step {step} (mid-epoch), metrics.json "
                        "'interrupted', exit 143; resumed bitwise equal", "nothing"))


def test_a_requeued_slurm_job_resumes_its_interrupted_run_in_place(shared_data_dir, tmp_path, monkeypatch, uninterrupted):
    """SLURM's side simulated: the advance warning (SIGUSR2, as submitit's sbatch asks for) to a job
    with a SLURM_JOB_ID, an `scontrol` that records the requeue, then the same command again with
    SLURM_RESTART_COUNT=1, in the same run directory."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol-calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    run_dir = tmp_path / "job"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    process = _start(shared_data_dir, run_dir)
    _wait_for(process, lambda: _logged_steps(run_dir) >= 5, "5 logged steps")
    process.send_signal(signal.SIGUSR2)
    output = "".join(process.communicate(timeout=120))
    assert process.returncode == 128 + signal.SIGUSR2, output[-3000:]
    assert calls.read_text() == "requeue 4242\n"
    assert _record(run_dir)["status"] == "interrupted" and "requeued as SLURM job 4242" in output
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert _train_in_process(shared_data_dir, run_dir) == 0
    _assert_same_training(_record(run_dir), uninterrupted)
    # The step values (one row per optimiser step): the interrupted run's (kept aside), then the resumed run's.
    rows = [row for name in ("metrics.until_restart1.csv", "metrics.csv")
            for row in csv.DictReader((run_dir / "csv" / name).open())]
    assert [int(row["step"]) for row in rows if row["train/loss_step"]] == list(range(uninterrupted["global_step"]))
    FAULT_TABLE.append(("SLURM preemption + requeue (simulated)", "the run directory, continued in place; every "
                        "step logged once (csv/metrics.until_restart1.csv, then metrics.csv); bitwise equal", "nothing"))


def test_a_full_disk_keeps_every_earlier_file_and_says_so_in_one_line(shared_data_dir, tmp_path, monkeypatch, capfd):
    import vaelab.checkpoints

    real_save, saves = torch.save, []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        saves.append(f.name)
        if len(saves) <= 2:  # epoch 0: its best checkpoint and last.ckpt
            return real_save(obj, f, *args, **kwargs)
        f.write(b"\0" * 4096)  # part of the file, then no room for the rest
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(vaelab.checkpoints.torch, "save", save_until_the_disk_is_full)
    run_dir = tmp_path / "full"
    assert _train_in_process(shared_data_dir, run_dir) == 2
    _one_line_error(capfd, "the disk is full", "could not be written")
    folder = run_dir / "checkpoints"
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 0  # the earlier last.ckpt, whole
    assert not list(folder.glob(".*partial"))
    record = _record(run_dir)
    assert record["status"] == "failed" and "the disk is full" in record["error"]
    FAULT_TABLE.append(("disk full while writing a checkpoint", "last.ckpt of the epoch before (loads); metrics.json "
                        "'failed'", f"the epoch being saved; one line: the disk is full: …/{Path(saves[-1]).name.split('.')[1]}.ckpt could not be written"))


def _hostile_checkpoint(path: Path, marker: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {}, "hyper_parameters": {"name": "vae"}, "payload": Payload()}, path)
    return path


def test_a_hostile_checkpoint_is_refused_and_never_run(shared_data_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's pre-2.6 default
    marker = tmp_path / "the-payload-ran"
    hostile = _hostile_checkpoint(tmp_path / "hostile.ckpt", marker)
    run_dir = tmp_path / "run"
    assert _train_in_process(shared_data_dir, run_dir, f"ckpt_path={hostile}") == 2
    _one_line_error(capfd, "not a safe vaelab checkpoint", "posix.system")
    assert not marker.exists()
    assert not (run_dir / "checkpoints").exists()  # refused before any training
    FAULT_TABLE.append(("checkpoint with a __reduce__ payload", "everything; the payload never runs", "nothing"))


def test_corrupt_checkpoints_are_named_in_one_line(uninterrupted, tmp_path):
    good = Path(uninterrupted["last_checkpoint"]).read_bytes()
    cases = {
        "empty.ckpt": b"",
        "truncated.ckpt": good[: len(good) // 2],
        "random.ckpt": os.urandom(4096),
        "text.ckpt": b"epoch 3, val/loss 41.2\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=r"is not a readable checkpoint .* use another one"):
            read_checkpoint(tmp_path / name)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a vaelab checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")
    FAULT_TABLE.append(("empty, truncated, random, text or foreign .ckpt", "everything", "nothing (one line, exit 2)"))


def test_resuming_with_other_settings_names_what_the_checkpoint_was_trained_with(uninterrupted, shared_data_dir, tmp_path, capfd):
    checkpoint = read_checkpoint(uninterrupted["last_checkpoint"])
    trained = dict(checkpoint["hyper_parameters"])
    optimizer, clipping = trained.pop("optimizer"), {k: trained.pop(k) for k in ("gradient_clip_val", "gradient_clip_algorithm")}
    shape = trained.pop("image_shape")
    trained.pop("pixel_range")
    check_resumable(checkpoint, "x.ckpt", trained, optimizer, clipping, shape)  # the same settings resume
    check_resumable(checkpoint, "x.ckpt", {**trained, "cuda_graph": False}, optimizer, clipping, shape)
    with pytest.raises(CheckpointError, match=r"trained with model.latent_dim=4 \(this run asks for model.latent_dim=8\)"):
        check_resumable(checkpoint, "x.ckpt", {**trained, "latent_dim": 8}, optimizer, clipping, shape)
    with pytest.raises(CheckpointError, match=r"model.beta=1 model.name=vae .*\(this run asks for .*model.name=ae"):
        check_resumable(checkpoint, "x.ckpt", {**trained, "name": "ae", "beta": None}, optimizer, clipping, shape)
    # Through the entry point: a changed learning rate would be recorded but not used (the optimiser's
    # state wins), so it is refused before training, and nothing is written.
    run_dir = tmp_path / "lr"
    assert _train_in_process(shared_data_dir, run_dir, f"ckpt_path={uninterrupted['last_checkpoint']}", "model.lr=0.01") == 2
    _one_line_error(capfd, "model.lr=0.001", "this run asks for model.lr=0.01", "same settings")
    assert not (run_dir / "checkpoints").exists()
    FAULT_TABLE.append(("resume with another model.lr / latent_dim / model", "everything", "nothing (refused before training)"))


def test_best_checkpoint_ranking_carries_over_to_the_resumed_run(tmp_path):
    import pytorch_lightning as pl

    from vaelab.training.callbacks import ResumableModelCheckpoint

    earlier = tmp_path / "earlier" / "checkpoints"
    earlier.mkdir(parents=True)
    (earlier / "epoch_000.ckpt").write_bytes(b"the best weights")
    callback = ResumableModelCheckpoint(dirpath=str(tmp_path / "resumed" / "checkpoints"), monitor="val/loss")
    score = torch.tensor(10.0)
    callback.load_state_dict({"dirpath": str(earlier), "best_model_path": str(earlier / "epoch_000.ckpt"),
                              "best_model_score": score, "best_k_models": {str(earlier / "epoch_000.ckpt"): score},
                              "kth_best_model_path": str(earlier / "epoch_000.ckpt"), "kth_value": score,
                              "last_model_path": str(earlier / "last.ckpt")})
    copied = tmp_path / "resumed" / "checkpoints" / "epoch_000.ckpt"
    assert callback.best_model_path == str(copied) and copied.read_bytes() == b"the best weights"
    assert callback.best_model_score == 10.0
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert not callback.check_monitor_top_k(trainer, torch.tensor(20.0))  # a worse epoch does not become the best
    assert callback.check_monitor_top_k(trainer, torch.tensor(5.0))
    assert (earlier / "epoch_000.ckpt").read_bytes() == b"the best weights"  # the earlier run is untouched


def test_a_busy_run_dir_is_refused_and_freed_when_its_writer_dies(shared_data_dir, tmp_path, capfd):
    run_dir = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vaelab.rundir import lock_run_dir; "
                               f"lock_run_dir({str(run_dir)!r}); print('locked', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train_in_process(shared_data_dir, run_dir) == 2
        _one_line_error(capfd, f"is being written by vaelab process {holder.pid}", "hydra.run.dir")
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(run_dir)  # the OS released the dead holder's lock: now this process holds it
    other = subprocess.run([sys.executable, "-c", f"from vaelab.rundir import lock_run_dir; lock_run_dir({str(run_dir)!r})"],
                           env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True)
    assert other.returncode != 0 and f"is being written by vaelab process {os.getpid()}" in other.stderr
    FAULT_TABLE.append(("two runs given the same hydra.run.dir", "the first run's files", "nothing (the second is refused)"))


@pytest.mark.parametrize("lr, says", [(1e30, "became"), (1e4, "diverged")])
def test_a_diverged_or_nan_run_ends_failed_in_one_line(shared_data_dir, tmp_path, capfd, lr, says):
    run_dir = tmp_path / "run"
    # No step values before the first validation: the loss is first looked at when validation (and
    # the latent panels, which would trip on NaN codes) begins.
    assert _train_in_process(shared_data_dir, run_dir, f"model.lr={lr}", "trainer.max_epochs=2",
                             "trainer.log_every_n_steps=100", "callbacks.latent_panels.every_n_epochs=1") == 2
    _one_line_error(capfd, says, "lower model.lr")
    record = _record(run_dir)
    assert record["status"] == "failed" and says in record["error"]
    FAULT_TABLE.append((f"model.lr={lr:g}", "the checkpoints before the fault", f"the run ('failed': {says})"))


def test_a_killed_ddp_rank_ends_the_run_without_hanging(shared_data_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    process = _exec(shared_data_dir, run_dir, "trainer.devices=2", "trainer.max_epochs=50")
    _wait_for(process, lambda: _logged_steps(run_dir) >= 3, "3 logged steps", timeout=180)
    ranks = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert ranks, "rank 1 was not found among the children of rank 0"
    os.kill(int(ranks[0]), signal.SIGKILL)
    killed_at = time.monotonic()
    process.communicate(timeout=120)
    waited = time.monotonic() - killed_at
    assert process.returncode != 0 and waited < 60
    FAULT_TABLE.append(("kill -9 of DDP rank 1", f"the checkpoints so far; rank 0 exits (code {process.returncode}) "
                        f"after {waited:.0f} s", "the epoch in flight"))


def test_a_preempted_sweep_records_its_job_as_interrupted_and_starts_no_other(shared_data_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    process = _start_entry_point("-m", *small_run_overrides(shared_data_dir, tmp_path / "logs"), *FAST, NO_PANELS,
                                 "model.beta=1,2", f"hydra.sweep.dir={sweep_dir}")
    first_job = lambda: next(iter(sorted(sweep_dir.glob("0_*"))), sweep_dir / "none")  # noqa: E731
    _wait_for(process, lambda: _logged_steps(first_job()) >= 5, "5 logged steps of job 0")
    process.send_signal(signal.SIGTERM)
    output = "".join(process.communicate(timeout=120))
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    from vaelab.reports.summary import write_summary

    rows = write_summary(sweep_dir)
    assert [row["status"] for row in rows] == ["interrupted"]  # job 1 was never started
    assert (first_job() / "checkpoints" / "interrupted.ckpt").is_file()
    FAULT_TABLE.append(("SIGTERM to a sweep", "job 0's interrupted.ckpt; the summary says 'interrupted'; exit 143",
                        "the jobs not started (rerun them)"))
