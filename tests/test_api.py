"""The Python API (vaelab.train, vaelab.load, Run; docs/python-api.md): the page's session runs as
shown, and a run trained in-process is the run `python train.py` makes.

One tiny VAE is trained twice for the module, the same way: by `python train.py` (in-process, the
real entry point) and by `vaelab.train`; an AE once. All on conftest's synthetic images, on the CPU.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import vaelab
from conftest import REPO, needs_cuda, run_dirs, run_entry_point_in_process, small_run_overrides
from vaelab.data import MNISTDataModule
from vaelab.errors import CheckpointError

pytestmark = pytest.mark.xdist_group("api")  # the module's trained runs, on one worker

DOC = REPO / "docs" / "python-api.md"


def _process_state() -> dict:
    root = logging.getLogger()
    return {"environ": dict(os.environ), "argv": list(sys.argv), "handlers": root.handlers[:], "level": root.level,
            "hydra": GlobalHydra.instance().is_initialized(), "warnings": list(warnings.filters), "rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state()[1].copy()}


def _same_state(before: dict, after: dict) -> None:
    assert after["environ"] == before["environ"]
    assert after["argv"] == before["argv"]
    assert after["handlers"] == before["handlers"] and after["level"] == before["level"]
    assert after["hydra"] == before["hydra"] and after["warnings"] == before["warnings"]
    assert torch.equal(after["rng"], before["rng"])
    assert np.array_equal(after["numpy_rng"], before["numpy_rng"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data_dir) -> dict:
    """The same small VAE run by `python train.py` (in-process) and by `vaelab.train`, with the
    default loggers (W&B offline, CSV) and callbacks; the process's state around vaelab.train."""
    base = tmp_path_factory.mktemp("api")
    code = run_entry_point_in_process(*small_run_overrides(shared_data_dir, base / "cli_runs"))
    assert code == 0
    (cli_dir,) = run_dirs(base / "cli_runs")
    before = _process_state()
    run = vaelab.train(*small_run_overrides(shared_data_dir, base / "api_runs"))
    after = _process_state()
    return {"cli_dir": cli_dir, "run": run, "before": before, "after": after, "base": base}


@pytest.fixture(scope="module")
def run(runs) -> "vaelab.Run":
    return runs["run"]


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, shared_data_dir) -> "vaelab.Run":
    overrides = small_run_overrides(shared_data_dir, tmp_path_factory.mktemp("api_ae"))
    return vaelab.train(*overrides, "model=ae", "trainer.max_epochs=1", "logger=csv",
                        "callbacks.latent_panels.every_n_epochs=0")


# -- the page ---------------------------------------------------------------------------------------

def test_the_docs_session_runs_as_shown(shared_data_dir, tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/python-api.md, in order, in one namespace; `overrides` (which the
    page asks the reader to define) is the small synthetic run."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)  # the figures are saved in the working directory
    namespace = {"overrides": [*small_run_overrides(shared_data_dir, tmp_path / "outputs"), "logger=csv"]}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}, python block {i + 1}", "exec"), namespace)  # noqa: S102 (our docs)
    out = capsys.readouterr().out

    run = namespace["run"]
    assert isinstance(run, vaelab.Run) and run.metrics["status"] == "completed"
    assert run.run_dir.parent.parent == (tmp_path / "outputs" / "runs").resolve() and run.which == "best"
    assert "refused: model.beta=-1 must be a number >= 0" in out  # what the page's comment shows
    from PIL import Image

    side = run.image_shape[1]
    for name, columns, rows in (("reconstructions", 8, 2), ("interpolation", 10, 1), ("traversal", 9, 1),
                                ("samples", 8, 2)):
        with Image.open(tmp_path / f"{name}.png") as image:  # a grid of about columns × rows images
            width, height = image.size
            assert width > height and width / height == pytest.approx(columns / rows, rel=0.3), (name, image.size)
            assert width >= columns * side
    assert namespace["samples"].shape == (16, *run.image_shape)


# -- vaelab.train is python train.py ----------------------------------------------------------------

def _files(run_dir: Path) -> list[str]:
    """The run directory's files, W&B's run id and time stamp replaced by placeholders."""
    names = (str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    return sorted(re.sub(r"offline-run-\d+_\d+-(\w+)", "offline-run-ID", re.sub(r"run-\w+\.wandb", "run-ID.wandb", n))
                  for n in names)


def test_train_writes_the_run_directory_that_train_py_writes(runs):
    cli_dir, run = runs["cli_dir"], runs["run"]
    api_dir = run.run_dir
    assert api_dir.parent.parent == (runs["base"] / "api_runs" / "runs").resolve()
    assert api_dir.name.split("_", 1)[1] == cli_dir.name.split("_", 1)[1] == "vae-z4-beta1"
    assert _files(api_dir) == _files(cli_dir)
    assert "train.log" in _files(api_dir) and any(f.endswith("run-ID.wandb") for f in _files(api_dir))

    def text(run_dir: Path, name: str, log_dir: str) -> str:
        return (run_dir / name).read_text().replace(str(runs["base"] / log_dir), "<log dir>")

    for name in (".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert text(api_dir, name, "api_runs") == text(cli_dir, name, "cli_runs"), name
    api_hydra, cli_hydra = (OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra for d in (api_dir, cli_dir))
    assert api_hydra.job.name == cli_hydra.job.name == "train"
    assert api_hydra.overrides.hydra == cli_hydra.overrides.hydra == ["hydra.mode=RUN"]
    assert api_hydra.runtime.output_dir == str(api_dir)

    api, cli = (json.loads((d / "metrics.json").read_text()) for d in (api_dir, cli_dir))
    assert api["status"] == cli["status"] == "completed"
    assert sorted(api) == sorted(cli)
    assert run.metrics == api  # the loaded run's metrics are metrics.json's
    # The same seed, data and code: the same training, to the last digit of every metric.
    for key in (k for k in api if k.startswith(("train/", "val/", "test/"))):
        assert api[key] == pytest.approx(cli[key], rel=1e-6, abs=1e-9), key


def test_train_leaves_the_process_as_it_was(runs):
    _same_state(runs["before"], runs["after"])  # W&B's WANDB_MODE=dryrun and VAELAB_ROOT gone, Hydra's log handlers too


@pytest.mark.parametrize("override", ["model.beta=-1", "model.nope=1", "model=nope"])
def test_a_refused_value_raises_config_error_with_the_line_train_py_prints(override, tmp_path, capfd):
    code = run_entry_point_in_process(override, f"paths.log_dir={tmp_path / 'cli'}")
    cli_output = "".join(capfd.readouterr())
    assert code == 2
    before = _process_state()
    with pytest.raises(vaelab.ConfigError) as refused:
        vaelab.train(override, log_dir=tmp_path / "api")
    _same_state(before, _process_state())
    message = str(refused.value)
    assert message.startswith(override.split("=")[0]) and "\n" not in message
    assert any(line.endswith(message) for line in cli_output.splitlines()), (message, cli_output)
    api_output = "".join(capfd.readouterr())
    assert "Traceback" not in api_output and "Error executing job" not in api_output and message not in api_output
    frames = traceback.extract_tb(refused.tb)
    assert [f.name for f in frames] == ["test_a_refused_value_raises_config_error_with_the_line_train_py_prints",
                                        "train"]  # raised by vaelab.train itself: no Hydra frames below it
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


@pytest.mark.parametrize("overrides, message", [
    (["trainer.accelerator=cpu", "trainer.devices=2"], "trainer.devices=2 must be 1 in vaelab.train, which trains in this process"),
    (["experiment=beta_sweep"], "hydra.mode=MULTIRUN must be RUN in vaelab.train, which trains one run"),
    (["-m", "model.beta=1,4"], "-m: vaelab.train takes overrides (key=value) only"),
])
def test_what_needs_train_py_s_own_processes_is_refused(overrides, message, tmp_path):
    with pytest.raises(vaelab.ConfigError) as refused:
        vaelab.train(*overrides, log_dir=tmp_path)
    assert str(refused.value).startswith(message)
    assert not list(tmp_path.rglob("checkpoints"))  # nothing trained


# -- vaelab.load ------------------------------------------------------------------------------------

def _outputs(run: "vaelab.Run", x: torch.Tensor) -> list[torch.Tensor]:
    mu, logvar = run.encode(x)
    return [mu, logvar, run.reconstruct(x), run.decode(mu), run.sample(5, seed=3)]


def test_load_of_the_run_directory_and_of_its_checkpoint_agree(run, tmp_path):
    assert run.which == "best" and str(run.checkpoint) == run.metrics["best_checkpoint"]
    assert run.checkpoint.name == "epoch_001.ckpt"  # two epochs: the second was best here
    x, _ = run.test_images(16)
    by_file = vaelab.load(run.checkpoint)
    assert by_file.which == "given" and by_file.run_dir == run.run_dir and by_file.metrics == run.metrics
    assert OmegaConf.to_yaml(by_file.config) == OmegaConf.to_yaml(run.config)
    for a, b in zip(_outputs(run, x), _outputs(by_file, x)):
        assert torch.equal(a, b)

    # A checkpoint on its own: the config is its hyperparameters, in the run config's layout.
    alone = tmp_path / "model.ckpt"
    shutil.copy(run.checkpoint, alone)
    single = vaelab.load(alone)
    assert single.run_dir is None and single.metrics == {} and single.which == "given"
    assert single.config.model.name == "vae" and single.config.model.latent_dim == run.config.model.latent_dim == 4
    assert list(single.config.model.hidden_dims) == [64] and list(single.config.data.pixel_range) == [0.0, 1.0]
    for a, b in zip(_outputs(run, x), _outputs(single, x)):
        assert torch.equal(a, b)

    # A run directory without a best checkpoint: last.ckpt.
    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy)
    (copy / "checkpoints" / run.checkpoint.name).unlink()
    last = vaelab.load(copy)
    assert last.which == "last" and last.checkpoint == copy / "checkpoints" / "last.ckpt"


def test_load_refuses_a_path_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        vaelab.load(tmp_path / "nowhere")
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds no checkpoint to load"):
        vaelab.load(tmp_path / "run")


def test_the_loaded_config_resolves_to_what_the_run_used(run):
    assert run.config.run_name == "vae-z4-beta1" == run.metrics["run_name"]
    assert run.config.paths.output_dir == str(run.run_dir)
    assert run.config.model.latent_dim == 4 and run.config.data.val_size == 128
    OmegaConf.to_container(run.config, resolve=True)  # every interpolation resolves outside Hydra


def test_shapes_dtypes_and_devices(run):
    x, labels = run.test_images(6)
    assert run.device == torch.device("cpu") and run.name == "vae" and run.latent_dim == 4
    assert run.image_shape == (1, 28, 28) and run.pixel_range == (0.0, 1.0)
    assert not run.model.training
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and labels.shape == (6,) and labels.dtype == torch.int64
    mu, logvar = run.encode(x)
    assert mu.shape == logvar.shape == (6, 4) and mu.dtype == torch.float32
    for images in (run.reconstruct(x), run.decode(mu), run.sample(6, seed=0)):
        assert images.shape == (6, 1, 28, 28) and images.dtype == torch.float32 and images.device == run.device
        assert 0 <= float(images.min()) and float(images.max()) <= 1  # pixel means, in pixel_range
        assert not images.requires_grad
    assert run.decode(mu[0]).shape == (1, 1, 28, 28)  # one code: a batch of one
    assert torch.equal(run.reconstruct(x[0]), run.reconstruct(x[:1]))  # one image (C, H, W): a batch of one
    with pytest.raises(ValueError, match=r"takes \(B, 1, 28, 28\)"):
        run.encode(torch.zeros(2, 28, 28, 1))
    with pytest.raises(ValueError, match="latent_dim=4"):
        run.decode(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="uint8"):
        run.encode(torch.zeros(2, 1, 28, 28, dtype=torch.int32))


def test_uint8_images_are_converted_as_the_data_module_converts_them(run):
    stored, _ = run._datamodule().splits["test"]  # uint8 (N, C, H, W), as the data files hold them
    assert stored.dtype == torch.uint8
    x, _ = run.test_images(8)
    assert torch.equal(run.encode(stored[:8])[0], run.encode(x)[0])
    assert torch.equal(run.reconstruct(stored[0]), run.reconstruct(stored[:8].float()[:1] / 255))


def test_reconstruct_is_the_decoded_posterior_mean(run):
    x, _ = run.test_images(10)
    mu, _ = run.encode(x)
    assert torch.equal(run.reconstruct(x), run.decode(mu))
    assert torch.equal(run.reconstruct(x), run.reconstruct(x))  # no sampling


def test_sample_draws_from_the_prior_with_its_seed(run):
    assert torch.equal(run.sample(4, seed=7), run.sample(4, seed=7))
    assert not torch.equal(run.sample(4, seed=7), run.sample(4, seed=8))
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(7))  # N(0, I), as the prior says
    assert torch.equal(run.sample(4, seed=7), run.decode(z))
    torch.manual_seed(1)
    first = run.sample(3)
    torch.manual_seed(1)
    assert torch.equal(run.sample(3), first)  # seed=None: torch's global generator


def _data_module_test_set(dm: MNISTDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The test set as the Trainer hands it to the model: each test batch moved and transformed."""
    dm.setup("test")
    batches = [dm.on_after_batch_transfer(dm.transfer_batch_to_device(b, torch.device("cpu"), 0), 0)
               for b in dm.test_dataloader()]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_test_images_are_the_data_module_s_test_batches(run, shared_data_dir, tmp_path, binarize):
    if binarize != "none":  # the same weights in a run whose data config binarises (its fixed test draw)
        copy = tmp_path / "run"
        shutil.copytree(run.run_dir, copy)
        config = OmegaConf.load(copy / ".hydra" / "config.yaml")
        config.data.binarize = binarize
        OmegaConf.save(config, copy / ".hydra" / "config.yaml")
        run = vaelab.load(copy)
    dm = MNISTDataModule(data_dir=str(shared_data_dir), source="local", val_size=128, batch_size=64, binarize=binarize)
    expected_x, expected_y = _data_module_test_set(dm)
    x, labels = run.test_images()
    assert len(x) == 157 and torch.equal(x, expected_x) and torch.equal(labels, expected_y)
    first_x, first_labels = run.test_images(10)
    assert torch.equal(first_x, expected_x[:10]) and torch.equal(first_labels, expected_y[:10])
    if binarize == "dynamic":
        assert set(x.unique().tolist()) == {0.0, 1.0}


def test_an_ae_encodes_to_its_code_and_samples_from_a_fitted_gaussian(ae_run):
    assert ae_run.name == "ae" and ae_run.metrics["status"] == "completed"
    x, _ = ae_run.test_images(5)
    code = ae_run.encode(x)
    assert isinstance(code, torch.Tensor) and code.shape == (5, 4)
    assert torch.equal(ae_run.reconstruct(x), ae_run.decode(code))
    samples = ae_run.sample(6, seed=0)
    assert samples.shape == (6, 1, 28, 28) and torch.equal(samples, ae_run.sample(6, seed=0))
    # The codes come from a Gaussian fitted to the test codes, not from N(0, I).
    from vaelab.models.autoencoders import fitted_gaussian

    mean, scale_tril = fitted_gaussian(ae_run.encode(ae_run.test_images()[0]))
    eps = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(samples, ae_run.decode(mean + eps @ scale_tril.T), atol=1e-6)


@needs_cuda
def test_load_on_a_cuda_device(run):
    on_gpu = vaelab.load(run.run_dir, device="cuda")
    x, labels = on_gpu.test_images(8)
    assert x.device.type == labels.device.type == on_gpu.device.type == "cuda"
    assert next(on_gpu.model.parameters()).device.type == "cuda"
    for a, b in zip(_outputs(on_gpu, x.cpu()), _outputs(run, x.cpu())):
        assert a.device.type == "cuda"
        assert torch.allclose(a.cpu(), b, atol=1e-4)


# -- import vaelab ----------------------------------------------------------------------------------

def test_import_vaelab_imports_no_torch():
    check = ("import sys, vaelab; assert 'torch' not in sys.modules, 'torch imported'; "
             "assert issubclass(vaelab.ConfigError, ValueError); print(sorted(vaelab.__all__)); "
             "vaelab.load; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["['ConfigError', 'Run', 'load', 'train']", "True"]
