"""data=dsprites: the dSprites-like grid drawn by vaelab.data.dsprites (its factors, index order and
drawing rules, stated in the module's docstring), the data module's splits of it, its cache, the
ground-truth interface (vaelab.data.factors) and one training run through the real entry point."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from conftest import REPO, run_dirs, run_entry_point_in_process
from vaelab.catalog import DATASETS, FACTOR_DATASETS
from vaelab.config import check_train_config
from vaelab.data import GroundTruth, ImageDataModule, cache, dsprites
from vaelab.errors import ConfigError

SIZES = (3, 6, 40, 32, 32)


@pytest.fixture(autouse=True)
def _a_new_process():
    """Each test loads as a new process would: nothing kept from the one before."""
    cache._IN_PROCESS.clear()
    yield
    cache._IN_PROCESS.clear()


def one(shape=0, scale=5, orientation=0, pos_x=0, pos_y=0) -> torch.Tensor:
    """The (1, 64, 64) bool mask of one grid image (factor indices)."""
    return dsprites.render(torch.tensor([[shape, scale, orientation, pos_x, pos_y]]))[0, 0] > 0


def box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(first row, last row, first column, last column) of the pixels that are set."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


# -- the grid -----------------------------------------------------------------------------------

def test_the_factor_grid_is_dsprites():
    truth = dsprites.DSprites()
    assert isinstance(truth, GroundTruth)
    assert truth.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert truth.factor_sizes == SIZES and truth.num_images == dsprites.GRID_SIZE == 737_280
    assert "dsprites" in DATASETS and FACTOR_DATASETS == ("dsprites",)
    last = torch.tensor([[2, 5, 39, 31, 31]])
    first = torch.zeros(1, 5, dtype=torch.int64)
    assert truth.factor_values(first).tolist() == [[1.0, 0.5, 0.0, 0.0, 0.0]]
    assert truth.factor_values(last).tolist() == [[3.0, 1.0, 2 * math.pi, 1.0, 1.0]]
    values = truth.factor_values(truth.factors_of(torch.arange(0, dsprites.GRID_SIZE, 997)))
    assert values.dtype == torch.float64
    scales = sorted(set(truth.factor_values(torch.tensor([[0, s, 0, 0, 0] for s in range(6)]))[:, 1].tolist()))
    assert np.allclose(scales, np.linspace(0.5, 1, 6))
    angles = truth.factor_values(torch.tensor([[0, 0, o, 0, 0] for o in range(40)]))[:, 2]
    assert np.allclose(angles.numpy(), np.linspace(0, 2 * math.pi, 40)) and angles[0] == 0 and angles[-1] == 2 * math.pi
    # The first and the last orientation are the same angle, kept as in the official file: the same image.
    for shape in range(3):
        assert torch.equal(one(shape, 3, 0, 7, 20), one(shape, 3, 39, 7, 20))


def test_the_flat_index_runs_with_posY_fastest():
    truth = dsprites.DSprites()
    unit = torch.eye(5, dtype=torch.int64)  # one factor at index 1, the others at 0
    assert truth.index(unit).tolist() == [6 * 40 * 32 * 32, 40 * 32 * 32, 32 * 32, 32, 1]
    assert truth.factors_of(torch.arange(3)).tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2]]
    assert truth.factors_of(torch.tensor([dsprites.GRID_SIZE - 1])).tolist() == [[2, 5, 39, 31, 31]]
    every = torch.arange(dsprites.GRID_SIZE)
    assert torch.equal(truth.index(truth.factors_of(every)), every)


def test_sample_factors_is_uniform_over_the_grid_and_follows_its_generator():
    truth = dsprites.DSprites()
    a = truth.sample_factors(30_000, torch.Generator().manual_seed(3))
    b = truth.sample_factors(30_000, torch.Generator().manual_seed(3))
    assert a.dtype == torch.int64 and a.shape == (30_000, 5) and torch.equal(a, b)
    for k, size in enumerate(SIZES):
        counts = torch.bincount(a[:, k], minlength=size)
        assert len(counts) == size and counts.min() > 0.8 * 30_000 / size and counts.max() < 1.2 * 30_000 / size
    images = truth.images(a[:50])
    assert images.dtype == torch.uint8 and images.shape == (50, 1, 64, 64)
    assert set(images.unique().tolist()) <= {0, 255}


# -- the drawing rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", range(6))
def test_a_square_has_side_20_scale_pixels_wherever_it_is(scale):
    side = round(20 * (0.5 + 0.1 * scale))  # 10, 12, ..., 20: its edges never pass through a pixel centre
    for pos_x, pos_y in [(0, 0), (31, 31), (5, 17), (13, 2), (30, 9)]:
        mask = one(0, scale, 0, pos_x, pos_y)
        top, bottom, left, right = box(mask)
        assert (bottom - top + 1, right - left + 1, int(mask.sum())) == (side, side, side * side)
        # Centred on x = 16 + 32·posX (columns), y = 16 + 32·posY (rows, downward), in pixel units.
        assert abs((left + right + 1) / 2 - (16 + 32 * pos_x / 31)) <= 0.5
        assert abs((top + bottom + 1) / 2 - (16 + 32 * pos_y / 31)) <= 0.5


def test_the_centre_convention_in_reference_pixels():
    # Pixel (r, c) has its centre at (c + ½, r + ½); posX=posY=0 puts the centre at (16, 16): a
    # scale-1 square spans 6..26, i.e. rows and columns 6..25.
    assert box(one(0, 5, 0, 0, 0)) == (6, 25, 6, 25)
    assert box(one(0, 5, 0, 31, 0)) == (6, 25, 38, 57)   # posX moves right (columns)
    assert box(one(0, 5, 0, 0, 31)) == (38, 57, 6, 25)   # posY moves down (rows): posY=0 is the top
    assert box(one(0, 0, 0, 0, 0)) == (11, 20, 11, 20)   # scale 0.5: side 10, same centre


def test_the_ellipse_and_the_heart_have_the_measured_sizes():
    for scale in range(6):
        s = 0.5 + 0.1 * scale
        top, bottom, left, right = box(one(1, scale, 0, 15, 15))
        assert abs((right - left + 1) - 26 * s) <= 1 and abs((bottom - top + 1) - 14 * s) <= 1  # semi-axes 13s, 7s
    heart = one(2, 5, 0, 15, 15)
    top, bottom, left, right = box(heart)
    assert abs((right - left + 1) - 20) <= 1 and abs((bottom - top + 1) - 17) <= 1
    widths = heart.sum(1)[top:bottom + 1]
    assert widths[-1] <= 2 and widths[:5].min() >= 10  # the point is down, the lobes up
    # It turns about its bounding box's centre, which is the shape's centre (16 + 32·15/31 = 31.48).
    assert abs((left + right + 1) / 2 - 31.48) <= 0.6 and abs((top + bottom + 1) / 2 - 31.48) <= 0.6


@pytest.mark.parametrize("shape", [1, 2, 3])
def test_turning_by_90_degrees_turns_the_image_counter_clockwise(shape):
    # Centred at pos 0.5 (x = y = 32), the pixel grid is symmetric about the centre, so turning the
    # shape by 90° must turn the image by 90°: counter-clockwise as seen (torch.rot90 on (H, W)).
    values = torch.tensor([[shape, 0.9, 0.0, 0.5, 0.5], [shape, 0.9, math.pi / 2, 0.5, 0.5]], dtype=torch.float64)
    upright, turned = dsprites.draw(values)[:, 0]
    assert torch.equal(turned, torch.rot90(upright, 1, dims=(0, 1)))
    if shape == 3:  # the heart's point (down at 0) is on the right after a counter-clockwise quarter turn
        mask = turned > 0
        top, bottom, left, right = box(mask)
        assert mask[:, right].sum() <= 2 and mask[:, left + 1:left + 5].sum(0).min() >= 10
    # The grid's orientation 10 (92.3°) is close to it.
    grid = one(shape - 1, 5, 10, 15, 15)
    near = dsprites.draw(torch.tensor([[shape, 1.0, math.pi / 2, 15 / 31, 15 / 31]], dtype=torch.float64))[0, 0] > 0
    assert (grid ^ near).sum() < 0.15 * near.sum()


# -- the data module: splits, labels, factors, cache -------------------------------------------------

def _module(data_dir: Path, **kwargs) -> ImageDataModule:
    settings = dict(name="dsprites", data_dir=str(data_dir), size=2000, val_size=0.1, test_size=0.1) | kwargs
    dm = ImageDataModule(**settings)
    dm.load()
    return dm


def test_the_splits_are_drawn_with_split_seed_and_hold_the_images_of_their_factors(tmp_path):
    dm = _module(tmp_path)
    assert dm.info["data/location"].startswith("dSprites-like (procedural): 2000 of the 737280 grid images")
    assert (dm.info["data/train_size"], dm.info["data/val_size"], dm.info["data/test_size"]) == (1600, 200, 200)
    assert dm.info["data/image_shape"] == [1, 64, 64] and dm.info["data/labelled"] and dm.image_shape == (1, 64, 64)
    assert dm.images.classes == ("square", "ellipse", "heart")
    drawn = dm.ground_truth.factors_of(dsprites.drawn_indices(2000, 0))
    assert len(set(dm.ground_truth.index(drawn).tolist())) == 2000  # no image twice
    test, val, train = drawn[:200], drawn[200:400], drawn[400:]
    assert torch.equal(dm.images.test_factors, test)
    for split, factors in (("train", train), ("val", val), ("test", test)):
        images, labels = dm.splits[split]
        assert images.dtype == torch.uint8 and torch.equal(labels, factors[:, 0])
        assert torch.equal(images, dsprites.render(factors)), split
    # Views of one tensor of 2000 images: nothing held twice.
    assert dm.splits["train"][0].untyped_storage().data_ptr() == dm.images.train_images.untyped_storage().data_ptr()
    again, other = _module(tmp_path / "again"), _module(tmp_path / "other", split_seed=1)
    assert torch.equal(again.splits["val"][0], dm.splits["val"][0])
    assert not torch.equal(other.images.test_factors, dm.images.test_factors)
    counts = _module(tmp_path, val_size=300, test_size=100)  # counts; the same draw, so the same cache file
    assert [counts.info[f"data/{split}_size"] for split in ("train", "val", "test")] == [1600, 300, 100]


def test_a_second_load_reads_the_cache_and_renders_nothing(tmp_path, monkeypatch):
    first = _module(tmp_path)
    path = tmp_path / "dsprites" / "vaelab-dsprites-2000-seed0.pt"
    assert path.is_file() and path.stat().st_size < 2000 * 512 + 20_000  # bit-packed: 512 bytes an image

    def _fail(*args, **kwargs):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(dsprites, "render", _fail)
    cache._IN_PROCESS.clear()  # as a new process
    second = _module(tmp_path)
    assert torch.equal(second.images.train_images, first.images.train_images)
    assert torch.equal(second.images.test_images, first.images.test_images)
    third = _module(tmp_path)  # the same process: the tensors it holds
    assert torch.equal(third.splits["test"][0], first.splits["test"][0])


def _checked(*overrides: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=dsprites", "data.mirrors=null", *overrides])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    check_train_config(cfg)


def test_the_config_check_bounds_what_is_held_in_memory():
    _checked()
    _checked(f"data.size={dsprites.MAX_SIZE}")
    for overrides, line in [
        (["data.size=null"], "data.size=null must be a count of at most 131072 images for data.name=dsprites: the data "
                             "module holds every image as uint8 (4 KiB each; all 737280 would be 2.8 GiB)"),
        (["data.source=download"], "data.source=download must be auto or local for data.name=dsprites: its images are "
                                   "drawn on this machine"),
        (["data.size=100", "data.val_size=90"], "data.val_size=90 must be less than the 90 images that "
                                                "data.test_size=0.1 leaves of data.size=100: together they leave no "
                                                "images to train on"),
        (["data.size=100", "data.test_size=100"], "data.test_size=100 must be smaller than the data.size=100 images, "
                                                  "which it splits into test and train+val"),
        (["data=mnist", "data.size=10"], "data.size=10 must be null for data.name=mnist, which does not read it "
                                         "(data=dsprites does)"),
    ]:
        with pytest.raises(ConfigError) as err:
            _checked(*overrides)
        assert str(err.value) == line


# -- through the entry point ----------------------------------------------------------------------

def test_trains_on_dsprites_through_the_entry_point(tmp_path):
    log_dir = tmp_path / "outputs"
    code = run_entry_point_in_process(
        f"paths.log_dir={log_dir}", f"data.data_dir={tmp_path / 'data'}", "data=dsprites", "data.size=2000",
        "data.batch_size=64", "model.net=mlp", "model.hidden_dims=[32]", "model.latent_dim=4", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=csv")
    (run_dir,) = run_dirs(log_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert code == 0 and metrics["status"] == "completed", (run_dir / "train.log").read_text()[-3000:]
    assert np.isfinite(metrics["test/loss"])
    assert (metrics["data/name"], metrics["data/source"]) == ("dsprites", "procedural")
    assert metrics["data/location"].startswith("dSprites-like (procedural)")
    assert (metrics["data/train_size"], metrics["data/val_size"], metrics["data/test_size"]) == (1600, 200, 200)
    assert metrics["data/image_shape"] == [1, 64, 64] and metrics["data/labelled"] is True
