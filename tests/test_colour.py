"""Everything follows the image shape (C, H, W): grey or colour, any size.

On tensors: both nets decode every shape back to itself; each likelihood of a colour image is the
sum of its channels' (closed form); test/bpd = test/nll / (C·H·W·ln 2) on a model whose nll is
known exactly; colour panels are RGB tiles of the images' size with grey borders, grey ones are
the grey levels on all three channels; the latent scatter is coloured by label, one colour without
labels; eval records completeness as not applicable on data without labels.
End to end (train.py then eval.py in-process): colour npz data sets, with and without labels.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import built_once, run_dirs, run_entry_point_in_process
from vaelab.evaluation.panels import PADDING, grid_image, make_panels, scatter_figure
from vaelab.models import AE, VAE, Likelihood
from vaelab.models.losses import LOG_SIGMA_MIN, soft_clip
from vaelab.models.stack import Stack

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 16, 24), (1, 17, 5), (3, 1, 1)]


# -- the nets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("cls", [AE, VAE])
def test_both_nets_decode_any_image_shape_to_itself(cls, net, shape):
    torch.manual_seed(0)
    model = cls(image_shape=shape, latent_dim=3, hidden_dims=[8] if net == "mlp" else [4, 8], net=net)
    x = torch.rand(5, *shape)
    out = model(x)
    assert out.logits.shape == x.shape and out.z.shape == (5, 3)
    assert model.decode(torch.randn(2, 3)).shape == (2, *shape)
    losses = model.losses(x)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()  # every weight (the first layer takes C·H·W values or C channels) gets a gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_mlp_flattens_every_channel_of_every_pixel():
    model = VAE(image_shape=(3, 10, 7), hidden_dims=[8], net="mlp")
    assert model.encoder.net[1][0].in_features == 3 * 10 * 7
    assert model.decoder.net[-1].out_features == 3 * 10 * 7


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_a_stack_of_colour_models_gives_each_member_its_own_losses(net):
    shape, seeds = (3, 8, 10), (1, 2)

    def build(seed):
        torch.manual_seed(seed)
        return VAE(image_shape=shape, latent_dim=3, hidden_dims=[8] if net == "mlp" else [4, 4], net=net, beta=seed)

    members = [build(s) for s in seeds]
    stack = Stack(members, generators=[torch.Generator().manual_seed(10 + s) for s in seeds])
    x = torch.rand(4, *shape)
    stacked = stack.losses(x)
    for n, (member, seed) in enumerate(zip(members, seeds)):
        eps = torch.randn(member.noise_shape(4), generator=torch.Generator().manual_seed(10 + seed))
        alone = member.losses(x, eps)
        for term, value in alone.items():
            torch.testing.assert_close(stacked[term][n], value, rtol=1e-5, atol=1e-5)


# -- the likelihoods: a colour image's term is the sum of its channels' --------------------------------

LIKELIHOODS = [("mse", None), ("bce", None), ("cbernoulli", None), ("gaussian", "learned")]


@pytest.mark.parametrize("pixel_range", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize(("kind", "sigma"), LIKELIHOODS)
def test_a_colour_image_costs_the_sum_of_its_channels(kind, sigma, pixel_range):
    g = torch.Generator().manual_seed(0)
    low, high = pixel_range
    logits = 3 * torch.randn(6, 3, 5, 7, generator=g, dtype=torch.float64)
    x = low + (high - low) * torch.rand(6, 3, 5, 7, generator=g, dtype=torch.float64)
    likelihood = Likelihood(kind, pixel_range, sigma=sigma or "learned").double()
    if sigma == "learned":
        with torch.no_grad():
            likelihood.log_sigma.fill_(-1.3)
    colour = likelihood.error(logits, x)
    channels = sum(likelihood.error(logits[:, c : c + 1], x[:, c : c + 1]) for c in range(3))
    assert colour.shape == (6,)
    torch.testing.assert_close(colour, channels, rtol=1e-12, atol=1e-10)
    # Summed over C·H·W values whatever their layout: the same values as one grey image (6, 1, 15, 7).
    torch.testing.assert_close(colour, likelihood.error(logits.reshape(6, 1, 15, 7), x.reshape(6, 1, 15, 7)),
                               rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("pixel_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_the_optimal_sigma_is_one_per_colour_image_over_all_its_channels(pixel_range):
    """The convention: σ*² = ‖x_u − x̂‖²/(C·H·W), one σ* per image that its channels share; its
    error is then the sum of each channel's Gaussian term with that σ*, in closed form."""
    g = torch.Generator().manual_seed(1)
    low, high = pixel_range
    logits = torch.randn(4, 3, 6, 5, generator=g, dtype=torch.float64)
    x = low + (high - low) * torch.rand(4, 3, 6, 5, generator=g, dtype=torch.float64)
    likelihood = Likelihood("gaussian", pixel_range, sigma="optimal")
    x_u, mean = (x - low) / (high - low), torch.sigmoid(logits)
    squared = (x_u - mean).pow(2).flatten(2).sum(dim=2)  # (B, C) each channel's squared error
    d, hw = 3 * 6 * 5, 6 * 5
    log_sigma = soft_clip(0.5 * torch.log(squared.sum(dim=1) / d), LOG_SIGMA_MIN)  # (B,) one σ* per image
    per_channel = (0.5 * squared / torch.exp(2 * log_sigma)[:, None]
                   + hw * (log_sigma[:, None] + 0.5 * math.log(2 * math.pi) + math.log(high - low)))
    torch.testing.assert_close(likelihood.error(logits, x), per_channel.sum(dim=1), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(likelihood.log_std(logits, x), log_sigma, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["mse", "bce", "cbernoulli", "gaussian"])
def test_the_recon_term_of_colour_images_is_the_batch_mean_of_their_sums(kind):
    torch.manual_seed(0)
    model = AE(image_shape=(3, 8, 8), latent_dim=2, hidden_dims=[8], recon_loss=kind)
    x = torch.rand(5, 3, 8, 8)
    per_image = model.likelihood.error(model(x).logits, x)
    assert per_image.shape == (5,)
    torch.testing.assert_close(model.losses(x)["recon"], per_image.mean())


# -- bits per dimension -----------------------------------------------------------------------------

def _blind_vae(shape, bias: float) -> VAE:
    """A VAE whose q(z|x) is the prior N(0, I) and whose decoder ignores z (logits = `bias` everywhere):
    then w = p(x|z)·p(z)/q(z|x) = p(x|z) exactly, and nll = the mse Σ (x − sigmoid(bias))² in closed form."""
    model = VAE(image_shape=shape, latent_dim=2, hidden_dims=[4], net="mlp", recon_loss="mse").double()
    with torch.no_grad():
        for layer in (model.fc_mu, model.fc_var, model.decoder.net[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
        model.decoder.net[-1].bias.fill_(bias)
    return model.eval()


def _eval_cfg(binarize: str = "none"):
    return OmegaConf.create({"eval": {"k": 7, "batch_size": 5, "max_codes": 50_000}, "data": {"binarize": binarize}})


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 4, 5)])
def test_bpd_is_the_nll_per_value_in_bits_for_colour_data_only(shape):
    from vaelab.tasks.eval import likelihood_metrics

    bias = 0.3
    model = _blind_vae(shape, bias)
    x = torch.rand(12, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    closed_form = float((x - torch.sigmoid(torch.tensor(bias, dtype=torch.float64))).pow(2).flatten(1).sum(1).mean())
    metrics, _ = likelihood_metrics(model, x, _eval_cfg())
    assert metrics["test/nll"] == pytest.approx(closed_form, rel=1e-12)
    if shape[0] == 1:  # grey: the keys as before, no bpd
        assert "test/bpd" not in metrics and "test/bpd_measures" not in metrics
        return
    assert metrics["test/bpd"] == pytest.approx(closed_form / (3 * 4 * 5 * math.log(2)), rel=1e-12)
    measures = metrics["test/bpd_measures"]
    assert measures.startswith("test/nll / (C·H·W·ln 2): bits per dimension of the continuous density")
    assert "not comparable with the literature's bits per dimension on 8-bit images" in measures
    assert "not discretised" in measures and "½·log2 π" in measures  # mse: the constant nll leaves out


def test_bpd_says_what_it_is_for_each_likelihood():
    from vaelab.evaluation.nll import bits_per_dim, nll_meaning

    assert bits_per_dim(2 * math.log(2) * 3 * 32 * 32, (3, 32, 32)) == pytest.approx(2.0)
    for kind in ("mse", "gaussian", "cbernoulli", "bce"):
        assert "test/bpd_measures" not in nll_meaning(kind, "none")  # grey (channels=1): unchanged
        for binarize in ("none", "dynamic"):
            assert "not comparable with the literature's" in nll_meaning(kind, binarize, channels=3)["test/bpd_measures"]
    assert "the cross-entropy test/nll in bits" in nll_meaning("bce", "none", channels=3)["test/bpd_measures"]
    assert "binarised images" in nll_meaning("bce", "dynamic", channels=3)["test/bpd_measures"]
    assert "density p(x) of recon_loss=gaussian" in nll_meaning("gaussian", "none", channels=3)["test/bpd_measures"]


# -- panels -----------------------------------------------------------------------------------------

def _expected_grid(images: torch.Tensor, ncol: int) -> np.ndarray:
    """The grid built by hand: tiles at (PADDING + r·(H + PADDING), PADDING + c·(W + PADDING)) on mid-grey."""
    n, c, h, w = images.shape
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + PADDING) + PADDING, ncol * (w + PADDING) + PADDING, 3), 128, dtype=np.uint8)
    tiles = (images.expand(n, 3, h, w) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, tile in enumerate(tiles):
        top, left = PADDING + (i // ncol) * (h + PADDING), PADDING + (i % ncol) * (w + PADDING)
        grid[top : top + h, left : left + w] = tile
    return grid


@pytest.mark.parametrize("channels", [1, 3])
def test_a_grid_is_rgb_tiles_of_the_images_size_on_a_grey_border(channels):
    images = torch.rand(7, channels, 5, 9, generator=torch.Generator().manual_seed(0))
    grid = grid_image(images, ncol=3)
    assert grid.dtype == np.uint8 and grid.shape == (3 * (5 + 2) + 2, 3 * (9 + 2) + 2, 3)
    assert np.array_equal(grid, _expected_grid(images, 3))
    if channels == 1:  # grey: each level on all three channels
        assert np.array_equal(grid[..., 0], grid[..., 1]) and np.array_equal(grid[..., 0], grid[..., 2])
    else:
        assert not np.array_equal(grid[..., 0], grid[..., 1])


def test_a_grid_refuses_images_that_are_neither_grey_nor_rgb():
    with pytest.raises(ValueError, match="grey \\(C=1\\) or RGB \\(C=3\\) images, not C=2"):
        grid_image(torch.rand(4, 2, 5, 5), ncol=2)


def test_the_panels_of_a_colour_model_are_rgb_pngs_of_its_image_size(tmp_path):
    from vaelab.evaluation.panels import save_panels

    torch.manual_seed(0)
    shape = (3, 12, 20)
    model = VAE(image_shape=shape, latent_dim=3, hidden_dims=[4, 8], net="conv")
    x, labels = torch.rand(30, *shape), torch.arange(30) % 3
    panels = {p.name: p for p in make_panels(model, x, labels, n_samples=9, classes=("cat", "dog", "fish"))}
    tile_h, tile_w = 12 + PADDING, 20 + PADDING
    # The traversal grid has a labelled margin (its own tests: test_panels.py).
    sizes = {"reconstructions": (2, 8), "prior_samples": (3, 3), "interpolations": (4, 10)}
    for name, (rows, cols) in sizes.items():
        assert panels[name].image.shape == (rows * tile_h + 2, cols * tile_w + 2, 3), name
    # The top row shows the test images themselves, in colour.
    assert np.array_equal(panels["reconstructions"].image[: tile_h + 2], _expected_grid(x[:8], 8)[: tile_h + 2])
    paths = save_panels(list(panels.values()), tmp_path)
    for path in paths:
        with Image.open(path) as png:
            assert png.mode == "RGB"
            assert png.size[::-1] == panels[path.stem].image.shape[:2]


def _scatter_points(fig):
    """(colours, legend texts, number of axes) of a scatter figure."""
    ax = fig.axes[0]
    colours = [tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in ax.collections]
    legend = ax.get_legend()
    return colours, None if legend is None else [t.get_text() for t in legend.get_texts()], len(fig.axes)


def test_the_scatter_is_coloured_by_label_and_named_by_class():
    from matplotlib.colors import to_rgb

    coords = torch.randn(30, 2)
    labels = torch.tensor([0, 2, 5] * 10)
    colours, legend, n_axes = _scatter_points(scatter_figure(coords, labels, ["z1", "z2"], "t"))
    assert colours == [tuple(np.round(to_rgb(f"C{c}"), 3)) for c in (0, 2, 5)] and legend == ["0", "2", "5"]
    names = [f"class {i}" for i in range(6)]
    _, legend, _ = _scatter_points(scatter_figure(coords, labels, ["z1", "z2"], "t", classes=names))
    assert legend == ["class 0", "class 2", "class 5"] and n_axes == 1
    # More classes than colours: one colour scale and its colourbar, no legend.
    many = torch.arange(30) % 15
    colours, legend, n_axes = _scatter_points(scatter_figure(coords, many, ["z1", "z2"], "t"))
    assert legend is None and n_axes == 2


def test_the_scatter_of_data_without_labels_is_one_colour_without_a_legend():
    coords = torch.randn(30, 2)
    colours, legend, n_axes = _scatter_points(scatter_figure(coords, torch.full((30,), -1), ["z1", "z2"], "t"))
    assert len(colours) == 1 and legend is None and n_axes == 1
    torch.manual_seed(0)
    model = AE(image_shape=(3, 6, 6), latent_dim=2, hidden_dims=[8])
    panels = {p.name: p for p in make_panels(model, torch.rand(20, 3, 6, 6), torch.full((20,), -1), n_samples=4)}
    assert "the data have no labels" in panels["latent_scatter"].caption


# -- completeness needs labels ----------------------------------------------------------------------

def test_completeness_keys_are_those_that_completeness_writes():
    from vaelab.evaluation.classifier import LabelClassifier
    from vaelab.evaluation.latent import encode
    from vaelab.evaluation.regularity import completeness
    from vaelab.tasks.eval import completeness_keys

    torch.manual_seed(0)
    for cls in (VAE, AE):
        model, x = cls(image_shape=(3, 6, 6), latent_dim=2, hidden_dims=[8]), torch.rand(20, 3, 6, 6)
        codes = encode(model, x)
        classifier = LabelClassifier(3 * 6 * 6, n_classes=4)
        judged = completeness(model, classifier, codes, x, 10, torch.Generator().manual_seed(0))
        assert ["classifier/test_accuracy", *judged] == completeness_keys(model.code_distribution(codes).name)


def _image_set(labels: torch.Tensor, classes=None):
    from vaelab.data import ImageSet

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(labels), 3, 4, 4), generator=g, dtype=torch.uint8)
    return ImageSet("toy", "npz", "toy.npz", images, labels, images[:10], labels[:10], classes=classes)


def test_the_classifier_has_the_labels_classes_and_takes_colour_images(tmp_path):
    from vaelab.evaluation.classifier import cache_path, cached_classifier, class_count

    labels = torch.arange(60) % 4
    images = _image_set(labels)
    assert class_count(images) == 4 and class_count(_image_set(labels, classes=tuple("abcdef"))) == 6
    model, info = cached_classifier(images, tmp_path, "toy")
    assert model.net[-1].out_features == 4 and model.net[1].in_features == 3 * 4 * 4
    assert info["classifier/classes"] == 4 and 0 <= info["classifier/test_accuracy"] <= 1
    # The cache key is the data: other labels, another file.
    assert cache_path(_image_set(labels.flip(0)), tmp_path, "toy") != cache_path(images, tmp_path, "toy")
    with pytest.raises(ValueError, match="has no labels"):
        cached_classifier(_image_set(torch.full((60,), -1)), tmp_path, "toy")


def test_grey_data_keep_their_classifier_cache_key():
    """(N, 1, H, W) images hash as the (N, H, W) bytes they were before colour: cached classifiers still apply."""
    from vaelab.evaluation.classifier import data_key

    images, labels = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8), torch.arange(20) % 10
    assert data_key(images.unsqueeze(1), labels) == data_key(images, labels)
    assert data_key(images.reshape(20, 1, 28, 28).expand(20, 3, 28, 28)[:, :1], labels) == data_key(images, labels)


@pytest.fixture
def unlabelled_eval(tmp_path, data_dir, monkeypatch):
    """An untrained small VAE evaluated in-process on IDX data that `ImageSet.labelled` calls unlabelled."""
    from vaelab.data import ImageSet
    from vaelab.training import LitAutoencoder

    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[16])
    path = tmp_path / "untrained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    monkeypatch.setattr(ImageSet, "labelled", property(lambda self: False))
    code = run_entry_point_in_process(f"ckpt_path={path}", f"paths.log_dir={tmp_path / 'outputs'}",
                                      f"data.data_dir={data_dir}", "data.source=local", "data.val_size=128",
                                      "eval.k=5", "eval.max_images=60", "eval.n_samples=50",
                                      f"eval.classifier_dir={tmp_path / 'classifiers'}", script="eval.py")
    assert code == 0
    (record_file,) = (tmp_path / "outputs").rglob("eval.json")
    return json.loads(record_file.read_text()), (record_file.parent / "report.md").read_text(), tmp_path


def test_without_labels_eval_says_completeness_does_not_apply(unlabelled_eval):
    record, report, tmp_path = unlabelled_eval
    keys = ["classifier/test_accuracy", "completeness/test_confidence", "completeness/test_class_coverage",
            "completeness/prior_confidence", "completeness/prior_class_coverage"]
    assert {k: record["not_applicable"][k] for k in keys} == dict.fromkeys(keys, record["not_applicable"][keys[0]])
    assert record["not_applicable"][keys[0]].startswith("the data set has no labels")
    assert not [k for k in record if k.startswith(("completeness/", "classifier/"))]
    assert "time/classifier_s" not in record and not (tmp_path / "classifiers").exists()  # nothing trained
    assert "test/nll" in record and "test/bpd" not in record  # grey: no bpd
    assert "Not applicable to these data" in report and "the data set has no labels" in report
    assert "latent_scatter" in record["panels"]


# -- end to end: colour npz files through train.py and eval.py --------------------------------------

NPZ_SIZE = 16


def _write_npz(path: Path, labelled: bool, n: int = 200) -> Path:
    """x uint8 (n, 16, 16, 3) colour images with a learnable structure (class c: a bright square in
    colour channel c % 3, row band c // 3), and int labels y (0..5) when `labelled`; without y the
    data set has no labels."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, size=n)
    x = rng.integers(0, 40, size=(n, NPZ_SIZE, NPZ_SIZE, 3)).astype(np.uint8)
    for i, c in enumerate(y):
        top = 2 + 6 * (int(c) // 3)
        x[i, top : top + 5, 3:13, int(c) % 3] = rng.integers(180, 256, size=(5, 10))
    arrays = {"x": x, "y": y.astype(np.int64)} if labelled else {"x": x}
    np.savez(path, **arrays)
    return path


def _npz_overrides(npz: Path, log_dir: Path) -> list[str]:
    return ["data=npz", f"data.path={npz}", f"data.data_dir={npz.parent}", f"paths.log_dir={log_dir}",
            "data.val_size=20", "data.batch_size=32", "model.latent_dim=3", "trainer.max_epochs=1",
            "trainer.log_every_n_steps=2", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=csv",
            "callbacks.latent_panels.every_n_epochs=1"]


@pytest.fixture(scope="session")
def colour_runs(tmp_path_factory):
    """Colour npz data trained one epoch with model.net=conv and with mlp, and an unlabelled npz with
    mlp, each evaluated; in-process, once per session: {case: (run dir, eval.json, eval dir)}."""

    def build(directory: Path) -> None:
        cases = {"conv": True, "mlp": True, "unlabelled": False}
        for case, labelled in cases.items():
            npz = _write_npz(directory / f"{case}.npz", labelled)
            log_dir = directory / case
            net = "conv" if case == "conv" else "mlp"
            hidden = "[8,16]" if net == "conv" else "[32]"
            code = run_entry_point_in_process(*_npz_overrides(npz, log_dir), f"model.net={net}",
                                              f"model.hidden_dims={hidden}")
            assert code == 0, f"training {case} exited with {code}; see {log_dir}"
            (run_dir,) = run_dirs(log_dir)
            checkpoint = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
            code = run_entry_point_in_process(f"ckpt_path={checkpoint}", f"paths.log_dir={log_dir}", "eval.k=10",
                                              "eval.n_samples=50", f"eval.classifier_dir={directory / 'classifiers'}",
                                              script="eval.py")
            assert code == 0, f"evaluating {case} exited with {code}; see {log_dir}"

    directory = built_once(tmp_path_factory, "colour_npz_runs", build)
    out = {}
    for case in ("conv", "mlp", "unlabelled"):
        (run_dir,) = run_dirs(directory / case)
        (record_file,) = (directory / case).glob("evals/**/eval.json")
        out[case] = (run_dir, json.loads(record_file.read_text()), record_file.parent)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", ["conv", "mlp"])
def test_colour_npz_data_train_and_evaluate_with_bpd_and_colour_panels(colour_runs, case):
    run_dir, record, eval_dir = colour_runs[case]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["test/loss"])
    d = 3 * NPZ_SIZE * NPZ_SIZE
    assert record["test/bpd"] == pytest.approx(record["test/nll"] / (d * math.log(2)), rel=1e-12)
    assert "not comparable with the literature's" in record["test/bpd_measures"]
    assert "test/bpd" in (eval_dir / "report.md").read_text()
    assert record["classifier/classes"] == 6 and 0 < record["completeness/prior_confidence"] <= 1
    tile = NPZ_SIZE + PADDING
    for folder, suffix in ((eval_dir / "images", ""), (run_dir / "images", "_epoch000")):
        with Image.open(folder / f"reconstructions{suffix}.png") as png:
            image = np.asarray(png)
            assert png.mode == "RGB" and image.shape == (2 * tile + 2, 8 * tile + 2, 3)
        assert not np.array_equal(image[..., 0], image[..., 1])  # colour, not grey


@pytest.mark.slow
def test_an_unlabelled_npz_evaluates_without_completeness(colour_runs):
    _, record, eval_dir = colour_runs["unlabelled"]
    assert record["not_applicable"]["completeness/prior_confidence"].startswith("the data set has no labels")
    assert not [k for k in record if k.startswith(("completeness/", "classifier/"))]
    assert "test/bpd" in record
    assert "Not applicable to these data" in (eval_dir / "report.md").read_text()
