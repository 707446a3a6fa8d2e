"""Latent diagnostics and image panels: active units on a constructed encoder, panel files of a real run
(train.py through the real entry point, in-process)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import built_once, run_dirs, run_entry_point_in_process, small_run_overrides, write_synthetic_dataset
from vaelab.evaluation.latent import active_units, activity, encode, most_active_first, project_2d
from vaelab.models import VAE, Codes, gaussian_kl


class ConstructedEncoder(torch.nn.Module):
    """E_q[z|x] with known spread over images x whose mean pixel t is ±1:
    z1 = 2t (Var 4), z2 = 0.2t (Var 0.04), z3 = 0.05t (Var 0.0025), z4 = 3 (Var 0)."""

    def posterior(self, x):
        t = x.flatten(1).mean(dim=1, keepdim=True)
        mu = torch.cat([2 * t, 0.2 * t, 0.05 * t, torch.full_like(t, 3.0)], dim=1)
        return Codes(mu, torch.zeros_like(mu))


def test_active_units_on_a_constructed_encoder():
    signs = torch.tensor([1.0, -1.0] * 50)
    x = signs[:, None, None, None].expand(100, 1, 4, 4)
    codes = encode(ConstructedEncoder(), x, batch_size=7)  # uneven batches must not matter
    assert torch.allclose(activity(codes), torch.tensor([4.0, 0.04, 0.0025, 0.0]), atol=1e-6)
    assert active_units(codes) == 2  # Burda et al.'s threshold 0.01 separates z2 from z3
    assert most_active_first(codes).tolist() == [0, 1, 2, 3]


def test_kl_per_dim_sums_to_the_logged_kl():
    mu, logvar = torch.randn(50, 6), torch.randn(50, 6)
    per_dim = VAE(latent_dim=6, hidden_dims=[8]).kl_per_dim(Codes(mu, logvar))
    assert per_dim.shape == (6,)
    assert float(per_dim.sum()) == pytest.approx(float(gaussian_kl(mu, logvar)), rel=1e-6)


def test_scatter_uses_the_latent_itself_in_two_dims_and_pca_otherwise():
    z2 = torch.randn(30, 2)
    assert torch.equal(project_2d(z2)[0], z2)
    z = torch.randn(200, 5) * torch.tensor([5.0, 0.1, 0.1, 0.1, 0.1])
    coords, axes = project_2d(z)
    assert coords.shape == (200, 2) and axes[0].startswith("PC1")
    assert coords[:, 0].var() > 100 * coords[:, 1].var()  # the first axis follows the widest direction


# -- one real training run through train.py, shared by the tests below ---------------------------

TILE = 28 + 2  # a 28×28 image and its 2-pixel border
GRID_PANELS = {  # name: (rows, columns) with the callback's defaults, latent_dim=4
    "reconstructions": (2, 8),
    "prior_samples": (8, 8),
    "interpolations": (4, 10),
    "traversals": (4, 9),
}
CHART_PANELS = {"latent_scatter": (500, 500), "kl_per_dim": (300, 600)}
LABELLED = {"traversals"}  # a white margin names the rows and columns; the grid is the bottom-right corner


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory) -> Path:
    """A VAE trained 3 epochs with the default loggers (W&B offline, CSV), panels every 2nd epoch, on
    its own synthetic data (`data_dir` beside the run's `outputs`): its run directory. In-process,
    once per session for all pytest-xdist workers (conftest.built_once)."""

    def build(directory: Path) -> None:
        write_synthetic_dataset(directory / "data")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("WANDB_MODE", "offline")
            env.setenv("WANDB_SILENT", "true")
            code = run_entry_point_in_process(*small_run_overrides(directory / "data", directory / "outputs"),
                                              "trainer.max_epochs=3", "callbacks.latent_panels.every_n_epochs=2")
        assert code == 0, f"the panels' training exited with {code}; see {directory / 'outputs'}"

    (run_dir,) = run_dirs(built_once(tmp_path_factory, "panels_vae_run", build) / "outputs")
    return run_dir


@pytest.mark.slow
def test_panels_are_written_at_the_configured_epochs(vae_run):
    # every_n_epochs=2 over 3 epochs (0, 1, 2): epoch 1, and the last epoch 2.
    names = {p.name for p in (vae_run / "images").iterdir()}
    expected = {f"{panel}_epoch{e:03d}.png" for panel in [*GRID_PANELS, *CHART_PANELS] for e in (1, 2)}
    assert names == expected


@pytest.mark.slow
@pytest.mark.parametrize("panel", [*GRID_PANELS, *CHART_PANELS])
def test_each_panel_has_its_size_and_is_not_blank(vae_run, panel):
    image = np.asarray(Image.open(vae_run / "images" / f"{panel}_epoch002.png"))
    if panel in GRID_PANELS:
        rows, cols = GRID_PANELS[panel]
        height, width = rows * TILE + 2, cols * TILE + 2
        if panel in LABELLED:
            assert image.shape[0] > height and image.shape[1] > width
            assert (image[: -height, : -width] == 255).mean() > 0.5  # the margin: white, with text
            image = image[-height:, -width:]
        assert image.shape == (height, width, 3)
        assert (image[:2] == 128).all() and (image[:, :2] == 128).all()  # the grid's grey border
        # Not blank: the decoded tiles themselves vary (borders alone would not).
        tile = image[2:30, 2:30]
        assert tile.std() > 1 and image.dtype == np.uint8
    else:
        assert image.shape == (*CHART_PANELS[panel], 3)
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # points, bars and text, not a white page


@pytest.mark.slow
def test_diagnostics_and_panels_reach_wandb(vae_run):
    from vaelab.reports.wandb_offline import summarize

    (run_file,) = vae_run.glob("wandb/offline-run-*/run-*.wandb")
    history = summarize(run_file)["history"]
    logged = {key for row in history for key in row}
    for panel in [*GRID_PANELS, *CHART_PANELS]:
        assert f"panels/{panel}/_type" in logged  # a wandb.Image (uint8 PNG)
    histograms = [row for row in history if row.get("val/kl_per_dim/_type") == "histogram"]
    assert len(histograms) == 3  # every validation epoch, one bin per latent dimension
    assert len(histograms[0]["val/kl_per_dim/values"]) == 4
    assert sum(1 for row in history if "val/active_units" in row) == 3


@pytest.mark.slow
def test_active_units_of_the_best_epoch_match_its_checkpoint(vae_run):
    from vaelab.data import MNISTDataModule
    from vaelab.training import LitAutoencoder

    metrics = json.loads((vae_run / "metrics.json").read_text())
    module = LitAutoencoder.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
    dm = MNISTDataModule(data_dir=str(vae_run.parents[3] / "data"), source="local", val_size=128)
    dm.load()
    images, labels = dm.splits["val"]
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert metrics["val/active_units"] == active_units(encode(module.model, x))


def test_panels_of_an_ae_with_a_two_dimensional_latent():
    from vaelab.evaluation.panels import make_panels
    from vaelab.models import AE

    torch.manual_seed(0)
    model = AE(latent_dim=2, hidden_dims=[16])
    x, labels = torch.rand(40, 1, 28, 28), torch.arange(40) % 10
    panels = {p.name: p for p in make_panels(model, x, labels, n_samples=9)}
    # An AE has no prior and no KL: its samples come from a fitted Gaussian, and there are no KL bars.
    assert set(panels) == {"reconstructions", "fitted_gaussian_samples", "interpolations", "traversals", "latent_scatter"}
    assert "fitted to the mean and covariance" in panels["fitted_gaussian_samples"].caption
    assert panels["fitted_gaussian_samples"].image.shape == (3 * TILE + 2, 3 * TILE + 2, 3)
    traversal = panels["traversals"].image  # one row per latent dimension, in the bottom-right corner
    assert (traversal[-(2 * TILE + 2), -1] == 128).all() and (traversal[-(2 * TILE + 3), -1] == 255).all()
    assert "the latent itself" in panels["latent_scatter"].caption
    assert model.training  # make_panels restores the mode it found


# -- labelled traversals and the latent × factor matrix ------------------------------------------------

def _ink_rows(margin: np.ndarray) -> np.ndarray:
    """Which pixel rows of a margin have text on them (dark pixels)."""
    return (margin.min(axis=2) < 128).any(axis=1)


def test_a_labelled_grid_keeps_the_grid_and_writes_a_line_per_row_and_the_columns_values():
    from vaelab.evaluation.panels import grid_image, labelled_grid

    torch.manual_seed(0)
    grid = grid_image(torch.rand(3 * 5, 1, 28, 28), 5)
    cells = [["z2", "3.10", "shape"], ["z1", "0.52", "posX"], ["z3", "0.00", "–"]]
    image = labelled_grid(grid, (28, 28), cells, ["latent", "KL (nats)", "factor"],
                          ["−3", "−1.5", "0", "+1.5", "+3"], "mean + k × prior std, k =")
    height, width = grid.shape[:2]
    assert np.array_equal(image[-height:, -width:], grid)  # the grid itself, bit for bit
    top, left = image.shape[0] - height, image.shape[1] - width
    assert top > 0 and left > 0
    # Each tile row has its label beside it (ink within the row's band of the left margin), and the
    # column labels and the title are above the grid.
    ink = _ink_rows(image[:, :left])
    for r in range(3):
        band = slice(top + 2 + r * TILE, top + 2 + r * TILE + 28)
        assert ink[band].any(), r
    assert _ink_rows(image[:top, left:]).any() and _ink_rows(image[:top, :left]).any()


def test_a_grid_of_small_images_is_magnified_by_a_whole_factor_to_hold_its_labels():
    from vaelab.evaluation.panels import LINE_PX, grid_image, labelled_grid

    grid = grid_image(torch.rand(2 * 3, 3, 6, 6), 3)  # rows of 6 + 2 pixels: lower than a line of text
    image = labelled_grid(grid, (6, 6), [["z1", "1.00"], ["z2", "0.10"]], ["latent", "KL (nats)"], ["−3", "0", "+3"], "k")
    scale = -(-LINE_PX // 8)
    magnified = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    assert scale > 1 and np.array_equal(image[-magnified.shape[0]:, -magnified.shape[1]:], magnified)


def test_a_labelled_grid_refuses_labels_that_do_not_match_its_rows():
    from vaelab.evaluation.panels import grid_image, labelled_grid

    grid = grid_image(torch.rand(4, 1, 8, 8), 2)
    with pytest.raises(ValueError, match="a grid of 2×2 tiles needs 2 row labels and 2 column labels, not 1 and 2"):
        labelled_grid(grid, (8, 8), [["z1"]], ["latent"], ["a", "b"], "t")


def test_the_traversal_rows_name_each_dimension_its_kl_or_code_std_and_its_factor():
    from vaelab.evaluation.panels import make_panels, traversal_labels
    from vaelab.models import AE

    torch.manual_seed(0)
    x, labels = torch.rand(40, 1, 28, 28), torch.arange(40) % 10
    vae = VAE(latent_dim=3, hidden_dims=[16])
    codes = encode(vae, x)
    kl, order = vae.kl_per_dim(codes), most_active_first(codes)
    cells, header = traversal_labels(order, kl, torch.ones(3), ["shape", None, "posY"])
    assert header == ["latent", "KL (nats)", "factor"]
    factors = {0: "shape", 1: "–", 2: "posY"}
    assert cells == [[f"z{int(d) + 1}", f"{float(kl[d]):.2f}", factors[int(d)]] for d in order]
    with pytest.raises(ValueError, match="a factor for each of the 3 latent dimensions, not 2"):
        traversal_labels(order, kl, torch.ones(3), ["shape", "scale"])
    panels = {p.name: p for p in make_panels(vae, x, labels, n_samples=4, row_factors=["shape", None, "posY"])}
    assert "the factor it follows most" in panels["traversals"].caption
    # An AE has no KL: its rows give the std of its codes, the traversal's unit.
    ae = AE(latent_dim=2, hidden_dims=[16])
    cells, header = traversal_labels(torch.tensor([1, 0]), None, torch.tensor([0.5, 2.0]))
    assert header == ["latent", "code std"] and cells == [["z2", "2"], ["z1", "0.5"]]
    panels = {p.name: p for p in make_panels(ae, x, labels, n_samples=4)}
    assert "labelled with its std" in panels["traversals"].caption


@pytest.mark.parametrize(("n_latents", "n_factors"), [(1, 1), (10, 5), (32, 6)])
def test_the_mutual_information_matrix_is_a_png_of_its_size(tmp_path, n_latents, n_factors):
    from vaelab.evaluation.panels import Panel, mutual_information_panel, mutual_information_size, save_panels

    rng = np.random.default_rng(0)
    mi = rng.random((n_latents, n_factors)) * 2
    factors = ["shape", "scale", "orientation", "posX", "posY", "colour"][:n_factors]
    image = mutual_information_panel(mi, [f"z{i + 1}" for i in range(n_latents)], factors)
    (path,) = save_panels([Panel("mutual_information", image, "MI")], tmp_path)
    with Image.open(path) as png:
        assert png.mode == "RGB" and png.size[::-1] == mutual_information_size(n_latents, n_factors)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # cells in many colours, text, a colour bar
    assert mutual_information_size(32, 6) == (878, 720)


def test_the_mutual_information_matrix_refuses_labels_of_another_shape():
    from vaelab.evaluation.panels import mutual_information_panel

    with pytest.raises(ValueError, match=r"an \(3, 2\) matrix needs 3 latent labels and 2 factor names, not 3 and 1"):
        mutual_information_panel(np.zeros((3, 2)), ["z1", "z2", "z3"], ["shape"])
