"""Fixtures: small synthetic MNIST-style IDX files, and running the real entry point."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from filelock import FileLock

from vaelab.tasks.cli import silence_known_noise
from vaelab.data import write_idx

silence_known_noise()
# One torch thread in each test process, whatever OMP_NUM_THREADS says (make test sets it to 1): two
# multi-threaded trainings on two cores run slower than one at a time, and test_faults.py forks this
# process, whose child would hang in its first parallel op had the parent's thread pool started.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 640, 157  # an odd test size: multi-device tests must not pad it
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 28×28 images with a learnable structure: class c draws a bright bar in row band c."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        row = 2 + 2 * int(c)
        images[i, row : row + 3, 4:24] = rng.integers(180, 256, size=(3, 20))
    return images, labels


def write_synthetic_dataset(root: Path, folder: str = "MNIST", n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """Uncompressed IDX files in `<root>/<folder>/raw/`, where torchvision looks for them."""
    raw = Path(root) / folder / "raw"
    train_x, train_y = synthetic_images(n_train, seed=0)
    test_x, test_y = synthetic_images(n_test, seed=1)
    for name, array in zip(IDX_NAMES, (train_x, train_y, test_x, test_y)):
        write_idx(raw / name, array)
    return raw


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    write_synthetic_dataset(root)
    return root


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Path:
    """One synthetic data set for end-to-end runs that only read it."""
    root = tmp_path_factory.mktemp("shared") / "data"
    write_synthetic_dataset(root)
    return root


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory `<session tmp>/<name>`, filled by `build(directory)` once per test session:
    by whichever pytest-xdist worker asks first, while the others wait on its lock file and
    then read what it built. A build that failed is not retried: every later use fails alike."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one folder for all workers
    directory, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with FileLock(str(root / f"{name}.lock")):
        if failed.exists():
            raise AssertionError(f"building {name} failed in another worker:\n{failed.read_text()}")
        if not done.exists():
            directory.mkdir(parents=True, exist_ok=True)
            try:
                build(directory)
            except BaseException as err:
                failed.write_text(f"{type(err).__name__}: {err}"[-5000:])
                raise
            done.touch()
    return directory


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real SLURM cluster on this machine (munge, slurmctld, nodes n1 and n2; tests/slurm_cluster.py),
    torn down after the session; the tests that use it are skipped, with the reason, without SLURM."""
    from slurm_cluster import Cluster, missing

    reason = missing()
    if reason:
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


# Rows (fault, what survived, what was lost) that tests/test_faults.py adds; printed at the end.
FAULT_TABLE: list[tuple[str, str, str]] = []


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)  # a pytest-xdist worker: send the rows home
    if workeroutput is not None:
        workeroutput["fault_table"] = json.dumps(FAULT_TABLE)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # pytest-xdist, in the controller: a worker's rows
    FAULT_TABLE.extend(tuple(row) for row in json.loads(getattr(node, "workeroutput", {}).get("fault_table", "[]")))


def pytest_terminal_summary(terminalreporter):
    if FAULT_TABLE:
        terminalreporter.section("faults: what survived, what was lost")
        for fault, survived, lost in FAULT_TABLE:
            terminalreporter.write_line(f"{fault:<48} | survived: {survived} | lost: {lost}")


# A test that needs a GPU: skipped on the CPU machines, run by the GPU script (bench/README.md).
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device; on a GPU machine: bash bench/gpu_run.sh (its first step runs "
           "pytest tests/test_training_step.py tests/test_objectives.py tests/test_likelihoods.py tests/test_api.py "
           "tests/test_tcvae.py tests/test_vampprior.py)")


UNREACHABLE_MIRROR = "http://127.0.0.1:9/"  # the discard port: refused at once, no network needed


def small_run_overrides(data_dir: Path, log_dir: Path) -> list[str]:
    return [
        f"paths.log_dir={log_dir}",
        f"data.data_dir={data_dir}",
        f"data.mirrors=[{UNREACHABLE_MIRROR}]",
        "data.val_size=128",
        "data.batch_size=64",
        "model.hidden_dims=[64]",
        "model.latent_dim=4",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=2",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
    ]


def start_entry_point(*args: str, script: str = "train.py", env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """`python train.py ...` started in a subprocess, as a user runs it; W&B stays offline; `env` added."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_"))}
    env = {**inherited, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(REPO / script), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: int = 300) -> subprocess.CompletedProcess:
    """Wait for a process that start_entry_point started (killed after `timeout` s, which fails the test)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(process.args)} ran longer than {timeout} s:\n{(stdout + stderr)[-4000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_entry_point(*args: str, script: str = "train.py", timeout: int = 300,
                    env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """`python train.py ...` in a subprocess, as a user runs it; W&B stays offline; `env` added."""
    return finish(start_entry_point(*args, script=script, env=env), timeout)


def one_device_test_losses(checkpoint: str, data_dir: Path) -> dict[str, float]:
    """The checkpoint's losses over the whole test set in one pass on one device."""
    import pytorch_lightning as pl
    import torch

    from vaelab.data import MNISTDataModule
    from vaelab.training import LitAutoencoder

    module = LitAutoencoder.load_from_checkpoint(checkpoint, map_location="cpu")
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", val_size=128, batch_size=64)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    return trainer.test(module, datamodule=dm, verbose=False)[0]


def run_dirs(log_dir: Path) -> list[Path]:
    return sorted(p for p in (Path(log_dir) / "runs").glob("*/*") if p.is_dir())


def run_entry_point_in_process(*args: str, script: str = "train.py") -> int:
    """`python <script> ...` inside this process (runpy, as `python` runs it, without starting an
    interpreter): returns the exit code; what it logs goes to the captured output and the run dir."""
    from vaelab.api import process_as_before

    # What the run changes in this process (os.environ: a sweep's swept keys; Hydra's log handlers:
    # the run's train.log, a console on a capture that has closed; Hydra's global state) ends with it,
    # as after vaelab.train: the same restoring.
    with process_as_before():
        sys.argv = [str(REPO / script), *args]
        try:
            runpy.run_path(str(REPO / script), run_name="__main__")
            return 0
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else 1


# Trained runs that several test files read, each built once per session (last: they use the above).
from shared_runs import beta_seed_grid, trained  # noqa: E402, F401
