"""A small label classifier that vaelab trains once per data set and caches, to judge decoded samples.

It is a reference for *completeness* (see `regularity.py`): its confidence on decoded prior
samples says how much they look like some class of the data. The samples are the decoder's
pixel means, levels in [0, 1] (grey or colour: each of the C·H·W values), so the classifier is
trained and tested on levels too: the training and test files as read (`ImageSet`), never
binarised, whatever data.binarize is (a binarised image is another kind of image, on which its
confidence differs). One classifier thus serves every run on a data set, binarised or not.
It needs labels: a data set without them (`ImageSet.labelled` False) has no classifier, and eval
says completeness does not apply. It has as many classes as the labels have (`class_count`).
"""

import hashlib
import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from vaelab.data import ImageSet
from vaelab.evaluation.latent import batches
from vaelab.files import atomic_write

log = logging.getLogger(__name__)

N_CLASSES = 10  # MNIST's and Fashion-MNIST's: the default of LabelClassifier


class LabelClassifier(nn.Module):
    """MLP (C·H·W)-256-n_classes on images (N, C, H, W) in [0, 1]."""

    def __init__(self, n_pixels: int = 784, hidden: int = 256, n_classes: int = N_CLASSES):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_pixels, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pixel_levels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) → float (N, C, H, W) in [0, 1], the range of the decoder's pixel means."""
    return images.float().div(255)


def class_count(images: ImageSet) -> int:
    """The number of classes of a labelled data set: its number of class names where it has them,
    at least the largest label (training or test file) + 1, so that every label is a class."""
    largest = int(max(images.train_labels.max(), images.test_labels.max()))
    return max(largest + 1, len(images.classes or ()))


def data_key(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A digest of the training images and labels: a new data set gets a new classifier. Images of
    more than one channel add their shape (C, H, W), so that the same bytes in another layout are
    another data set; grey images (N, 1, H, W) keep the digest of their bytes alone, the key that
    MNIST-style data sets had before colour."""
    digest = hashlib.sha1(images.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    if images.dim() == 4 and images.shape[1] != 1:
        digest.update(repr(tuple(images.shape[1:])).encode())
    return digest.hexdigest()[:16]


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, min_steps: int = 500,
                     batch_size: int = 128, seed: int = 0, device: torch.device | str = "cpu",
                     log_epochs: bool = False, n_classes: int = N_CLASSES) -> LabelClassifier:
    """Fit on uint8 images (N, C, H, W), as levels in [0, 1], and labels in [0, n_classes), with
    Adam; deterministic given `seed`.

    At least `min_steps` steps: a small data set gets more epochs, or its classifier would be
    under-confident on real images and make every sample look implausible. With `log_epochs`, a
    log line per epoch (every ⌈epochs/10⌉-th when there are more than 10, and the last) with its
    training accuracy, loss and time; off by default, so that library use stays silent.
    """
    epochs = max(epochs, math.ceil(min_steps / math.ceil(len(images) / batch_size)))
    every = math.ceil(epochs / 10)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LabelClassifier(images[0].numel(), n_classes=n_classes).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all, y_all = images.to(device), labels.long().to(device)
    start = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        correct = torch.zeros((), dtype=torch.long, device=device)  # summed on the device: read once per epoch
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(len(x_all), generator=generator).to(device)
        for part in batches(len(order), batch_size):
            idx = order[part]
            logits = model(pixel_levels(x_all[idx]))
            loss = nn.functional.cross_entropy(logits, y_all[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if log_epochs:
                correct += (logits.detach().argmax(1) == y_all[idx]).sum()
                loss_sum += loss.detach() * (part.stop - part.start)
        if log_epochs and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            now = time.perf_counter()
            left = (now - start) / (epoch + 1) * (epochs - epoch - 1)
            log.info("classifier epoch %d/%d: train accuracy %.3f, loss %.3f, %.1f s; %.1f s so far%s",
                     epoch + 1, epochs, int(correct) / len(x_all), float(loss_sum) / len(x_all), now - epoch_start,
                     now - start, f", about {left:.0f} s left" if epoch + 1 < epochs else "")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of uint8 images (N, C, H, W), read as levels in [0, 1], whose label is the most probable class."""
    device = next(model.parameters()).device
    correct = sum(int((model(pixel_levels(images[p].to(device))).argmax(1) == labels[p].to(device)).sum())
                  for p in batches(len(images), 1000))
    return correct / len(images)


def cache_path(images: ImageSet, cache_dir: Path, name: str) -> Path:
    """Where the classifier of the training file of `images` is cached (or will be, once trained)."""
    return Path(cache_dir) / f"{name}-{data_key(images.train_images, images.train_labels)}.pt"


def cached_classifier(images: ImageSet, cache_dir: Path, name: str, device: torch.device | str = "cpu",
                      log_epochs: bool = False) -> tuple[LabelClassifier, dict]:
    """The classifier of the training file of a labelled data set `images` (the files as read, never
    binarised): loaded from `cache_dir` or trained there once (`log_epochs`: a log line per epoch,
    see `train_classifier`); its number of classes and its accuracy on the test file (never
    binarised) go in the record."""
    if not images.labelled:
        raise ValueError(f"the data set {name} has no labels: there is no classifier to train on it")
    train_x, train_y = images.train_images, images.train_labels
    path = cache_path(images, cache_dir, name)
    n_classes = class_count(images)
    model = LabelClassifier(train_x[0].numel(), n_classes=n_classes)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model = model.to(device).eval()
        cached = True
    else:
        log.info("training the reference classifier on %d images (once; cached in %s)", len(train_x), path)
        start = time.perf_counter()
        model = train_classifier(train_x, train_y, device=device, log_epochs=log_epochs, n_classes=n_classes)
        with atomic_write(path, "wb") as f:  # another process never reads half a file
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f)
        log.info("trained the reference classifier in %.1f s and saved it to %s", time.perf_counter() - start, path)
        cached = False
    return model, {"classifier/path": str(path), "classifier/cached": cached, "classifier/classes": n_classes,
                   "classifier/test_accuracy": accuracy(model, images.test_images, images.test_labels)}
