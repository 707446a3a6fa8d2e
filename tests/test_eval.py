"""`python eval.py ckpt_path=...` on a VAE and an AE checkpoint, through the real entry point: in this
process (conftest.run_entry_point_in_process), and in a process of its own where the process is what
is checked (a refused checkpoint's exit code and its one line)."""

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO, built_once, run_dirs, run_entry_point, run_entry_point_in_process, small_run_overrides

K = 50  # importance samples in tests: enough for nll < nelbo on a toy model, fast on a CPU


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

    # A checkpoint outside a run directory: eval's own data config (its defaults), and the record says so.
    outside = tmp_path / "elsewhere" / "x.ckpt"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"ckpt_path={outside}"])
    data, source = training_data_config(cfg, [f"ckpt_path={outside}"])
    assert (data.name, data.binarize) == ("mnist", "none") and data == cfg.data
    assert source == f"eval's data config (no training config at {outside.parent.parent / '.hydra' / 'config.yaml'})"

    data, source = data_after()
    assert (data.binarize, data.data_dir, data.val_size) == ("dynamic", "/trained/data", 128)
    assert source.endswith("config.yaml")
    data, source = data_after("data.val_size=64")  # a data override given to eval wins
    assert (data.binarize, data.val_size) == ("dynamic", 64) and "data.val_size from the command line" in source
    data, _ = data_after("data=fashion_mnist")  # a whole data group: eval's own choice
    assert (data.name, data.binarize) == ("fashion_mnist", "none")


@pytest.fixture(scope="session")
def evaluated(trained, tmp_path_factory):
    """The VAE and the AE of `trained`, evaluated by one sweep (`eval.py -m ckpt_path=vae,ae`, in-process),
    once per session for all workers: {model: (run dir, metrics, eval dir, eval.json, report)}."""
    metrics = {m: json.loads((trained[m] / "metrics.json").read_text()) for m in ("vae", "ae")}

    def build(directory: Path) -> None:
        # No data overrides: eval takes them from the training runs' .hydra/config.yaml.
        checkpoints = ",".join(metrics[m]["best_checkpoint"] for m in ("vae", "ae"))
        # Its own classifier folder: the first evaluation trains the classifier, the second reads it.
        code = run_entry_point_in_process("-m", f"ckpt_path={checkpoints}", f"paths.log_dir={directory / 'outputs'}",
                                          f"eval.k={K}", "eval.n_samples=200",
                                          f"eval.classifier_dir={directory / 'classifiers'}", script="eval.py")
        assert code == 0, f"the eval sweep exited with {code}; see {directory / 'outputs'}"

    log_dir = built_once(tmp_path_factory, "eval_vae_ae_evaluated", build) / "outputs"
    out = {}
    for job, model in enumerate(("vae", "ae")):
        (eval_dir,) = log_dir.glob(f"evals/*/*_multi/{job}_*")
        out[model] = (trained[model], metrics[model], eval_dir, json.loads((eval_dir / "eval.json").read_text()),
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
def test_vae_eval_reports_nll_below_nelbo(evaluated, trained):
    run_dir, metrics, eval_dir, record, report = evaluated["vae"]
    assert eval_dir.name.endswith(f"{run_dir.name.split('_', 1)[1]}_{Path(metrics['best_checkpoint']).stem}")
    assert record["eval/k"] == K and record["eval/images"] == metrics["data/test_size"]
    assert record["test/nll"] < record["test/nelbo"]
    assert record["test/nll_gap"] == pytest.approx(record["test/nelbo"] - record["test/nll"])
    assert record["test/nll"] <= record["test/nelbo_same_samples"]  # Jensen, on the same samples
    # The KL is exact given the encoder: the same number as the module's own loss on the same images.
    whole = _whole_test_set_losses(metrics["best_checkpoint"], trained["data_dir"])
    assert record["test/kl"] == pytest.approx(whole["kl"], rel=1e-5)
    assert record["test/kl"] == pytest.approx(metrics["test/kl"], rel=TRAINING_TEST_REL)
    assert sum(record["test/kl_per_dim"]) == pytest.approx(record["test/kl"], rel=1e-5)
    assert len(record["test/kl_per_dim"]) == 4
    # recon: k samples here, one in model.losses; the same expectation.
    assert record["test/recon"] == pytest.approx(whole["recon"], rel=1e-2)
    assert record["test/loss"] == pytest.approx(record["test/recon"] + record["beta"] * record["test/kl"])
    assert record["test/nll_constant"] == pytest.approx(0.5 * 784 * 1.1447298858494002)  # ½·D·log π, mse
    assert record["test/nll_is_likelihood"] is True and "N(x', ½·I)" in record["test/nll_measures"]
    assert "test/bpd" not in record and "test/bpd_measures" not in record  # grey data: no bits per dimension
    assert record["classifier/classes"] == 10
    # MNIST has no known factors: only the disentanglement metrics do not apply (tests/test_disentanglement.py)
    assert [k for k in record["not_applicable"] if not k.startswith("disentanglement/")] == []
    for key in ("continuity/ratio", "completeness/prior_confidence", "completeness/test_confidence",
                "classifier/test_accuracy"):
        assert 0 < record[key] < float("inf"), key
    assert 1 <= record["completeness/prior_class_coverage"] <= 10
    assert f"{record['test/nll']:.3f}" in report and f"{record['test/nelbo']:.3f}" in report
    assert "gap" in report and "½·D·log π" in report
    _assert_panels(eval_dir, record, report,
                   {"reconstructions", "prior_samples", "interpolations", "traversals", "latent_scatter", "kl_per_dim"})


@pytest.mark.slow
def test_ae_eval_says_nll_and_kl_do_not_apply(evaluated, trained):
    run_dir, metrics, eval_dir, record, report = evaluated["ae"]
    assert "test/nll" not in record and "test/kl" not in record and "test/nll_is_likelihood" not in record
    assert {k for k in record["not_applicable"] if not k.startswith("disentanglement/")} == {"test/nll", "test/kl"}
    assert "Not applicable to model=ae" in report and "no density p(x)" in report
    # An AE's reconstruction is deterministic: exactly the module's own loss on the same images.
    whole = _whole_test_set_losses(metrics["best_checkpoint"], trained["data_dir"])
    assert record["test/recon"] == pytest.approx(whole["recon"], rel=1e-5)
    assert record["test/recon"] == pytest.approx(metrics["test/recon"], rel=TRAINING_TEST_REL)
    assert "completeness/fitted_gaussian_confidence" in record
    _assert_panels(eval_dir, record, report,
                   {"reconstructions", "fitted_gaussian_samples", "interpolations", "traversals", "latent_scatter"})
    # The reference classifier is trained once per data set and then read from its cache.
    assert evaluated["vae"][3]["classifier/cached"] is False and record["classifier/cached"] is True


@pytest.mark.slow
def test_eval_sweep_with_a_failed_job_exits_non_zero_and_keeps_the_others(evaluated, tmp_path, capfd):
    good = evaluated["ae"][1]["best_checkpoint"]
    classifiers = evaluated["ae"][2].parents[4] / "classifiers"  # evaluated's: cached there, only read
    code = run_entry_point_in_process("-m", f"ckpt_path={good},{tmp_path / 'missing.ckpt'}", f"paths.log_dir={tmp_path}",
                                      f"eval.k={K}", "eval.n_samples=200", f"eval.classifier_dir={classifiers}",
                                      script="eval.py")
    output = "".join(capfd.readouterr())
    assert code == 1, output[-3000:]
    assert "1 of 2 evaluations failed" in output and "missing.ckpt must be the path of an existing .ckpt file" in output
    (good_dir,) = tmp_path.glob("evals/*/*_multi/0_*")
    assert json.loads((good_dir / "eval.json").read_text())["checkpoint"] == str(Path(good).resolve())
    assert not list(tmp_path.glob("evals/*/*_multi/1_*/eval.json"))


@pytest.mark.slow
def test_compare_reads_the_records_that_train_py_leaves(evaluated, tmp_path):
    """compare's own process is checked in test_compare.py; here its main() reads train.py's records."""
    from vaelab.reports.compare import load_runs, main

    run_dirs_ = [evaluated[m][0] for m in ("vae", "ae")]
    runs = load_runs(run_dirs_)
    assert runs[0].curves["val/recon"][0][0] == 0 and "val/kl" in runs[0].curves and "val/kl" not in runs[1].curves
    assert main([*map(str, run_dirs_), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "compare.md").read_text()
    assert "| vae β=1 z=4 | vae | 1 | 4 | mse | 1 | completed |" in text and "| ae z=4 | ae | – | 4 |" in text
    # the KL's parts (mi, tc, dwkl) are drawn from their val curves: a VAE logs them at val and test
    assert {p.name for p in tmp_path.glob("*.png")} == {"recon_vs_epoch.png", "kl_vs_epoch.png", "nelbo_vs_epoch.png",
                                                         "mi_vs_epoch.png", "tc_vs_epoch.png", "dwkl_vs_epoch.png",
                                                         "rate_distortion.png"}


@pytest.fixture(scope="session")
def bce_evaluated(trained, tmp_path_factory):
    """A bce VAE trained one epoch on grey images and evaluated on the grey test images
    (data.binarize=none) and on binarised ones (dynamic: one fixed draw), in one eval sweep, all
    in-process and once per session for all workers: {binarize: (eval.json, report)}."""

    def build(directory: Path) -> None:
        log_dir = directory / "outputs"
        code = run_entry_point_in_process(*small_run_overrides(trained["data_dir"], log_dir), "logger=csv",
                                          "trainer.max_epochs=1", "callbacks.latent_panels.every_n_epochs=0",
                                          "model.recon_loss=bce")
        assert code == 0, f"the bce training exited with {code}; see {log_dir}"
        (run_dir,) = run_dirs(log_dir)
        checkpoint = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
        code = run_entry_point_in_process("-m", f"ckpt_path={checkpoint}", f"paths.log_dir={log_dir}", f"eval.k={K}",
                                          "eval.n_samples=200", "data.binarize=none,dynamic", script="eval.py")
        assert code == 0, f"the bce eval sweep exited with {code}; see {log_dir}"

    log_dir = built_once(tmp_path_factory, "eval_bce_evaluated", build) / "outputs"
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
def test_completeness_reference_is_measured_on_grey_test_images_when_the_data_are_binarised(bce_evaluated, trained):
    import torch

    from vaelab.data import MNISTDataModule
    from vaelab.evaluation.classifier import LabelClassifier, pixel_levels

    grey, binary = bce_evaluated["none"][0], bce_evaluated["dynamic"][0]
    classifier = LabelClassifier()
    classifier.load_state_dict(torch.load(binary["classifier/path"], weights_only=True))

    def test_images(binarize):
        dm = MNISTDataModule(data_dir=str(trained["data_dir"]), source="local", val_size=128, binarize=binarize)
        dm.load()
        return pixel_levels(dm.splits["test"][0])  # uint8 0..255, binarised ones 0/255

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
        real = (request.getfixturevalue("trained")["vae"] / "checkpoints" / "last.ckpt").read_bytes()
        path.write_bytes(real[: len(real) // 2])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save({"state_dict": {}, "hyper_parameters": {"name": "vae"}, "x": Payload(marker)}, path)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "env", "says", "in_a_process"), [
    ("empty", {}, "is not a readable checkpoint", False),
    ("truncated", {}, "is not a readable checkpoint", False),
    ("text", {}, "is not a readable checkpoint", False),
    ("hostile", {}, "is not a safe vaelab checkpoint", False),
    # As a user meets it: `python eval.py` in a process of its own, its exit code and all it prints.
    ("hostile", {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, "is not a safe vaelab checkpoint", True),
])
def test_a_bad_checkpoint_ends_eval_with_one_line_and_none_of_it_runs(kind, env, says, in_a_process, tmp_path, request,
                                                                       monkeypatch, capfd):
    path, marker = tmp_path / f"{kind}.ckpt", tmp_path / "marker"
    _write_bad_checkpoint(kind, path, marker, request)
    for name, value in env.items():  # run_entry_point passes this process's environment on
        monkeypatch.setenv(name, value)
    args = (f"ckpt_path={path}", f"paths.log_dir={tmp_path / 'outputs'}")
    if in_a_process:
        result = run_entry_point(*args, script="eval.py", timeout=120)
        code, output = result.returncode, result.stdout + result.stderr
    else:
        capfd.readouterr()  # what came before (a fixture built for this test) is not eval's
        code = run_entry_point_in_process(*args, script="eval.py")
        output = "".join(capfd.readouterr())
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, "\n".join(lines)[-3000:]
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


def _read_only(folder: Path, monkeypatch) -> None:
    """`folder` (made 0o555) as a user who cannot write it sees it: root writes into a 0o555 directory,
    so for root os.access says what it would say to another user."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        allowed = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == folder and mode & os.W_OK
                            else allowed(p, mode, *a, **k))


def test_an_unwritable_classifier_dir_is_refused_before_any_evaluation(untrained_checkpoint, data_dir, tmp_path,
                                                                       capsys, monkeypatch):
    read_only = tmp_path / "classifiers"
    read_only.mkdir()
    _read_only(read_only, monkeypatch)
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


def test_a_cached_classifier_is_read_from_a_folder_that_cannot_be_written(untrained_checkpoint, data_dir, tmp_path,
                                                                           monkeypatch):
    """The evaluation goes on with the cached classifier: it judges with it and writes nothing beside it."""
    import torch

    from vaelab.data import load_images
    from vaelab.evaluation.classifier import LabelClassifier, accuracy, cache_path

    images = load_images("mnist", data_dir, "local")
    cached = cache_path(images, tmp_path / "classifiers", "mnist")
    cached.parent.mkdir()
    torch.manual_seed(0)
    classifier = LabelClassifier(28 * 28).eval()  # untrained: its accuracy is its own, no other classifier's
    torch.save(classifier.state_dict(), cached)
    before = {p.name: p.read_bytes() for p in cached.parent.iterdir()}
    _read_only(cached.parent, monkeypatch)
    try:
        code = run_entry_point_in_process(f"ckpt_path={untrained_checkpoint}", f"paths.log_dir={tmp_path / 'outputs'}",
                                          f"data.data_dir={data_dir}", "data.source=local", "data.val_size=128",
                                          "eval.k=5", "eval.max_images=60", "eval.n_samples=50",
                                          f"eval.classifier_dir={cached.parent}", script="eval.py")
    finally:
        cached.parent.chmod(0o755)
    assert code == 0
    (record_file,) = (tmp_path / "outputs").rglob("eval.json")
    record = json.loads(record_file.read_text())
    assert record["classifier/cached"] is True and record["classifier/path"] == str(cached)
    with torch.no_grad():
        assert record["classifier/test_accuracy"] == accuracy(classifier, images.test_images, images.test_labels)
    assert 0 < record["completeness/test_confidence"] < 1
    assert {p.name: p.read_bytes() for p in cached.parent.iterdir()} == before  # only read
