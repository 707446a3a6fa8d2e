"""`python eval.py ckpt_path=...` on a VAE and an AE checkpoint, through the real entry point."""

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO, run_dirs, run_entry_point, run_entry_point_in_process, small_run_overrides

K = 50  # importance samples in tests: enough for nll < nelbo on a toy model, fast on a CPU


def test_eval_config_composes_with_its_defaults():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["ckpt_path=x.ckpt"])
    assert cfg.eval.k == 1000 and cfg.ckpt_path == "x.ckpt" and cfg.data.name == "mnist"


def test_eval_takes_the_data_config_of_the_training_run(tmp_path):
    from omegaconf import OmegaConf

    from vaelab.config import training_data_config

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    trained = {"data": {"name": "mnist", "data_dir": "/trained/data", "binarize": "dynamic", "val_size": 128,
                        "batch_size": 64, "source": "local", "split_seed": 0, "pixel_range": [0.0, 1.0]}}
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(trained))
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    def data_after(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="eval", overrides=[f"ckpt_path={ckpt}", *overrides])
        return training_data_config(cfg, [f"ckpt_path={ckpt}", *overrides])

    data, source = data_after()
    assert (data.binarize, data.data_dir, data.val_size) == ("dynamic", "/trained/data", 128)
    assert source.endswith("config.yaml")
    data, source = data_after("data.val_size=64")  # a data override given to eval wins
    assert (data.binarize, data.val_size) == ("dynamic", 64) and "data.val_size from the command line" in source
    data, _ = data_after("data=fashion_mnist")  # a whole data group: eval's own choice
    assert (data.name, data.binarize) == ("fashion_mnist", "none")


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def evaluated(shared_data_dir, tmp_path_factory):
    """A VAE and an AE, each trained one epoch and evaluated: {model: (run dir, metrics, eval dir, eval.json, report)}.

    Both trainings run as one sweep and both evaluations as one: starting a process (Lightning's
    import) is most of the time of such tiny runs.
    """
    log_dir = tmp_path_factory.mktemp("eval") / "outputs"
    _ok(run_entry_point("-m", *small_run_overrides(shared_data_dir, log_dir), "logger=csv", "trainer.max_epochs=1",
                        "callbacks.latent_panels.every_n_epochs=0", "model=vae,ae"))
    runs = {d.parent.name.split("_", 1)[1].split("-")[0]: d.parent for d in log_dir.glob("multirun/*/*/*/metrics.json")}
    metrics = {m: json.loads((runs[m] / "metrics.json").read_text()) for m in ("vae", "ae")}
    # No data overrides: eval takes them from the training runs' .hydra/config.yaml.
    checkpoints = ",".join(metrics[m]["best_checkpoint"] for m in ("vae", "ae"))
    # Its own classifier folder: other test files may already have cached one beside the shared data.
    _ok(run_entry_point("-m", f"ckpt_path={checkpoints}", f"paths.log_dir={log_dir}", f"eval.k={K}",
                        "eval.n_samples=200", f"eval.classifier_dir={log_dir.parent / 'classifiers'}", script="eval.py"))
    out = {}
    for job, model in enumerate(("vae", "ae")):
        (eval_dir,) = log_dir.glob(f"evals/*/*_multi/{job}_*")
        out[model] = (runs[model], metrics[model], eval_dir, json.loads((eval_dir / "eval.json").read_text()),
                      (eval_dir / "report.md").read_text())
    return out


def _whole_test_set_losses(checkpoint: str, data_dir: Path) -> dict[str, float]:
    """The model's losses over all test images in one batch: the exact per-image means, by another path."""
    import torch

    from vaelab.data import MNISTDataModule
    from vaelab.training import LitAutoencoder

    model = LitAutoencoder.load_from_checkpoint(checkpoint, map_location="cpu").model.eval()
    dm = MNISTDataModule(data_dir=str(data_dir), source="local", val_size=128)
    dm.load()
    x, _ = dm.on_after_batch_transfer(dm.splits["test"], 0)
    with torch.no_grad():
        return {k: float(v) for k, v in model.losses(x).items()}


# metrics.json's test/* are exact per-image means (sums and counts, module.py), computed in
# batches: they equal eval's one-pass numbers up to float32 summation order.
TRAINING_TEST_REL = 1e-5


def _assert_panels(eval_dir: Path, record: dict, report: str, names: set[str]) -> None:
    assert set(record["panels"]) == names
    for name, file in record["panels"].items():
        assert (eval_dir / file).is_file()
        assert f"![{name}]({file})" in report


@pytest.mark.slow
def test_vae_eval_reports_nll_below_nelbo(evaluated, shared_data_dir):
    run_dir, metrics, eval_dir, record, report = evaluated["vae"]
    assert eval_dir.name.endswith(f"{run_dir.name.split('_', 1)[1]}_{Path(metrics['best_checkpoint']).stem}")
    assert record["eval/k"] == K and record["eval/images"] == metrics["data/test_size"]
    assert record["test/nll"] < record["test/nelbo"]
    assert record["test/nll_gap"] == pytest.approx(record["test/nelbo"] - record["test/nll"])
    assert record["test/nll"] <= record["test/nelbo_same_samples"]  # Jensen, on the same samples
    # The KL is exact given the encoder: the same number as the module's own loss on the same images.
    whole = _whole_test_set_losses(metrics["best_checkpoint"], shared_data_dir)
    assert record["test/kl"] == pytest.approx(whole["kl"], rel=1e-5)
    assert record["test/kl"] == pytest.approx(metrics["test/kl"], rel=TRAINING_TEST_REL)
    assert sum(record["test/kl_per_dim"]) == pytest.approx(record["test/kl"], rel=1e-5)
    assert len(record["test/kl_per_dim"]) == 4
    # recon: k samples here, one in model.losses; the same expectation.
    assert record["test/recon"] == pytest.approx(whole["recon"], rel=1e-2)
    assert record["test/loss"] == pytest.approx(record["test/recon"] + record["beta"] * record["test/kl"])
    assert record["test/nll_constant"] == pytest.approx(0.5 * 784 * 1.1447298858494002)  # ½·D·log π, mse
    assert record["test/nll_is_likelihood"] is True and "N(x', ½·I)" in record["test/nll_measures"]
    for key in ("continuity/ratio", "completeness/prior_confidence", "completeness/test_confidence",
                "classifier/test_accuracy"):
        assert 0 < record[key] < float("inf"), key
    assert 1 <= record["completeness/prior_class_coverage"] <= 10
    assert f"{record['test/nll']:.3f}" in report and f"{record['test/nelbo']:.3f}" in report
    assert "gap" in report and "½·D·log π" in report
    _assert_panels(eval_dir, record, report,
                   {"reconstructions", "prior_samples", "interpolations", "traversals", "latent_scatter", "kl_per_dim"})


@pytest.mark.slow
def test_ae_eval_says_nll_and_kl_do_not_apply(evaluated, shared_data_dir):
    run_dir, metrics, eval_dir, record, report = evaluated["ae"]
    assert "test/nll" not in record and "test/kl" not in record and "test/nll_is_likelihood" not in record
    assert set(record["not_applicable"]) == {"test/nll", "test/kl"}
    assert "Not applicable to model=ae" in report and "no density p(x)" in report
    # An AE's reconstruction is deterministic: exactly the module's own loss on the same images.
    whole = _whole_test_set_losses(metrics["best_checkpoint"], shared_data_dir)
    assert record["test/recon"] == pytest.approx(whole["recon"], rel=1e-5)
    assert record["test/recon"] == pytest.approx(metrics["test/recon"], rel=TRAINING_TEST_REL)
    assert "completeness/fitted_gaussian_confidence" in record
    _assert_panels(eval_dir, record, report,
                   {"reconstructions", "fitted_gaussian_samples", "interpolations", "traversals", "latent_scatter"})
    # The reference classifier is trained once per data set and then read from its cache.
    assert evaluated["vae"][3]["classifier/cached"] is False and record["classifier/cached"] is True


@pytest.mark.slow
def test_eval_sweep_with_a_failed_job_exits_non_zero_and_keeps_the_others(evaluated, tmp_path):
    good = evaluated["ae"][1]["best_checkpoint"]
    result = run_entry_point("-m", f"ckpt_path={good},{tmp_path / 'missing.ckpt'}", f"paths.log_dir={tmp_path}",
                             f"eval.k={K}", "eval.n_samples=200", script="eval.py")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "1 of 2 evaluations failed" in output and "missing.ckpt must be the path of an existing .ckpt file" in output
    (good_dir,) = tmp_path.glob("evals/*/*_multi/0_*")
    assert json.loads((good_dir / "eval.json").read_text())["checkpoint"] == str(Path(good).resolve())


@pytest.mark.slow
def test_compare_reads_the_records_that_train_py_leaves(evaluated, tmp_path):
    import subprocess
    import sys

    from vaelab.reports.compare import load_runs

    run_dirs_ = [evaluated[m][0] for m in ("vae", "ae")]
    runs = load_runs(run_dirs_)
    assert runs[0].curves["val/recon"][0][0] == 0 and "val/kl" in runs[0].curves and "val/kl" not in runs[1].curves
    result = subprocess.run([sys.executable, "-m", "vaelab.reports.compare", *map(str, run_dirs_), "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "compare.md").read_text()
    assert "| vae β=1 z=4 | vae | 1 | 4 | mse | 1 | completed |" in text and "| ae z=4 | ae | – | 4 |" in text
    assert {p.name for p in tmp_path.glob("*.png")} == {"recon_vs_epoch.png", "kl_vs_epoch.png", "nelbo_vs_epoch.png",
                                                         "rate_distortion.png"}


@pytest.fixture(scope="module")
def bce_evaluated(shared_data_dir, tmp_path_factory):
    """A bce VAE trained one epoch on grey images and evaluated on the grey test images
    (data.binarize=none) and on binarised ones (dynamic: one fixed draw), in one eval sweep:
    {binarize: (eval.json, report)}."""
    log_dir = tmp_path_factory.mktemp("eval_bce") / "outputs"
    _ok(run_entry_point(*small_run_overrides(shared_data_dir, log_dir), "logger=csv", "trainer.max_epochs=1",
                        "callbacks.latent_panels.every_n_epochs=0", "model.recon_loss=bce"))
    (run_dir,) = run_dirs(log_dir)
    checkpoint = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    _ok(run_entry_point("-m", f"ckpt_path={checkpoint}", f"paths.log_dir={log_dir}", f"eval.k={K}",
                        "eval.n_samples=200", "data.binarize=none,dynamic", script="eval.py"))
    out = {}
    for path in log_dir.glob("evals/*/*_multi/*/eval.json"):
        record = json.loads(path.read_text())
        out[record["data/binarize"]] = (record, (path.parent / "report.md").read_text())
    assert set(out) == {"none", "dynamic"}
    return out


@pytest.mark.slow
def test_bce_nll_is_named_a_cross_entropy_on_grey_images_and_a_density_on_binarised_ones(bce_evaluated):
    grey, grey_report = bce_evaluated["none"]
    binary, binary_report = bce_evaluated["dynamic"]
    assert grey["recon_loss"] == binary["recon_loss"] == "bce"
    assert grey["test/nll_is_likelihood"] is False
    assert grey["test/nll_measures"].startswith("a cross-entropy, not −log p(x)")
    assert binary["test/nll_is_likelihood"] is True
    assert binary["test/nll_measures"].startswith("−log p(x) in nats of the binarised images")
    # The table's meaning of test/nll and the text under "How nll is estimated".
    assert f"| `test/nll` | {grey['test/nll']:.3f} | **a cross-entropy, not −log p(x)** (see below)" in grey_report
    assert "`test/nll_is_likelihood` = false" in grey_report and "cross-entropy with soft targets" in grey_report
    assert f"| `test/nll` | {binary['test/nll']:.3f} | −log p(x), importance-sampled" in binary_report
    assert "`test/nll_is_likelihood` = true" in binary_report and "cross-entropy" not in binary_report


@pytest.mark.slow
def test_completeness_reference_is_measured_on_grey_test_images_when_the_data_are_binarised(bce_evaluated,
                                                                                            shared_data_dir):
    import torch

    from vaelab.data import MNISTDataModule
    from vaelab.evaluation.classifier import LabelClassifier, grey_levels

    grey, binary = bce_evaluated["none"][0], bce_evaluated["dynamic"][0]
    classifier = LabelClassifier()
    classifier.load_state_dict(torch.load(binary["classifier/path"], weights_only=True))

    def test_images(binarize):
        dm = MNISTDataModule(data_dir=str(shared_data_dir), source="local", val_size=128, binarize=binarize)
        dm.load()
        return grey_levels(dm.splits["test"][0])  # uint8 0..255, binarised ones 0/255

    def confidence(images):
        with torch.no_grad():
            return float(torch.softmax(classifier(images), dim=1).max(dim=1).values.mean())

    on_grey, on_binarised = confidence(test_images("none")), confidence(test_images("dynamic"))
    # The same float32 computation as eval's: equal to ~1e-7. The toy classifier is nearly sure of
    # both kinds of image (measured: 0.99982 on grey, 0.99964 on binarised), yet 100 times further apart.
    assert abs(on_grey - on_binarised) > 1e-4
    assert binary["completeness/test_confidence"] == pytest.approx(on_grey, abs=1e-6)
    # The reference numbers do not depend on data.binarize: the same grey images judged.
    for key in ("classifier/test_accuracy", "completeness/test_confidence", "completeness/test_class_coverage"):
        assert binary[key] == grey[key], key


# -- checkpoints and folders that eval refuses before any work -------------------------------------

class Payload:
    """What a hostile checkpoint holds: unpickled by a loader that builds arbitrary objects, it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_bad_checkpoint(kind: str, path: Path, marker: Path, request) -> None:
    import torch

    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":  # the first half of a checkpoint that train.py wrote
        real = Path(request.getfixturevalue("evaluated")["vae"][1]["best_checkpoint"]).read_bytes()
        path.write_bytes(real[: len(real) // 2])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save({"state_dict": {}, "hyper_parameters": {"name": "vae"}, "x": Payload(marker)}, path)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "env", "says"), [
    ("empty", {}, "is not a readable checkpoint"),
    ("truncated", {}, "is not a readable checkpoint"),
    ("text", {}, "is not a readable checkpoint"),
    ("hostile", {}, "is not a safe vaelab checkpoint"),
    ("hostile", {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, "is not a safe vaelab checkpoint"),
])
def test_a_bad_checkpoint_ends_eval_with_one_line_and_none_of_it_runs(kind, env, says, tmp_path, request, monkeypatch):
    path, marker = tmp_path / f"{kind}.ckpt", tmp_path / "marker"
    _write_bad_checkpoint(kind, path, marker, request)
    for name, value in env.items():  # run_entry_point passes this process's environment on
        monkeypatch.setenv(name, value)
    result = run_entry_point(f"ckpt_path={path}", f"paths.log_dir={tmp_path / 'outputs'}", script="eval.py", timeout=120)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, "\n".join(lines)[-3000:]
    assert "[ERROR]" in lines[0] and f"{path} {says}" in lines[0]
    assert not marker.exists()  # the payload never ran
    assert not list((tmp_path / "outputs").rglob("eval.json"))


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line(tmp_path):
    import torch

    from vaelab.errors import CheckpointError
    from vaelab.tasks.eval import load_model

    path = tmp_path / "no_weights.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"name": "vae"}}, path)
    with pytest.raises(CheckpointError, match="weights do not fit the model its hyperparameters describe") as err:
        load_model(path, torch.device("cpu"))
    assert "\n" not in str(err.value)


@pytest.fixture
def untrained_checkpoint(tmp_path) -> Path:
    """A small VAE's weights and hyperparameters, as train.py's checkpoints hold them (not trained)."""
    import torch

    from vaelab.training import LitAutoencoder

    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[16])
    path = tmp_path / "untrained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_an_unwritable_classifier_dir_is_refused_before_any_evaluation(untrained_checkpoint, data_dir, tmp_path,
                                                                       capsys, monkeypatch):
    read_only = tmp_path / "classifiers"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes into a 0o555 directory: show eval what another user would see
        allowed = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == read_only and mode & os.W_OK
                            else allowed(p, mode, *a, **k))
    try:
        code = run_entry_point_in_process(f"ckpt_path={untrained_checkpoint}", f"paths.log_dir={tmp_path / 'outputs'}",
                                          f"data.data_dir={data_dir}", "data.source=local", "data.val_size=128",
                                          f"eval.classifier_dir={read_only}", script="eval.py")
    finally:
        read_only.chmod(0o755)
    output = "".join(capsys.readouterr())
    errors = [line.split("[ERROR] - ", 1)[1] for line in output.splitlines() if "[ERROR]" in line]
    assert code == 2 and "Traceback" not in output and errors == [
        f"eval.classifier_dir={read_only} must be a directory that this user can write ({read_only} is not writable by "
        f"this user): the reference classifier of these data is not cached there yet, so eval trains it and saves it "
        f"there; give eval.classifier_dir=<a folder of yours>"], output[-3000:]
    assert not list((tmp_path / "outputs").rglob("eval.json"))


def test_a_cached_classifier_is_read_from_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    from vaelab.tasks.eval import check_classifier_cache

    cached = tmp_path / "classifiers" / "mnist-0123.pt"
    cached.parent.mkdir()
    cached.write_bytes(b"weights")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    check_classifier_cache(cached)  # only read: no error
