"""Batches cut from tensors by indexing, instead of one image at a time through a Dataset."""

import math
from collections.abc import Sequence
from typing import Callable, Optional

import torch


class EpochSeed:
    """Holds the epoch number; Lightning calls `set_epoch` on a loader's `sampler` each epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ResumableLoader:
    """A loader's place in its epoch, for mid-epoch checkpoints: `state_dict` holds the epoch and
    the batches that `batches_done()` says were trained on (Lightning saves it in every checkpoint
    and hands it back on resume). The count comes from the trainer, not from what the loader
    yielded: Lightning fetches a batch ahead."""

    sampler: EpochSeed
    batches_done: Optional[Callable[[], int]]
    _resume_at: Optional[tuple[int, int]]  # (epoch, batches already trained on)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": self.batches_done() if self.batches_done else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def first_batch(self) -> int:
        """The batch this epoch starts at: after those a resumed checkpoint had trained on, else 0 (once)."""
        if self._resume_at is None:
            return 0
        epoch, done = self._resume_at
        self._resume_at = None
        return done if epoch == self.sampler.epoch else 0


class TensorBatchLoader(ResumableLoader):
    """Yields (images, labels) batches of `batch_size` from tensors that may live on the GPU.

    Sharding across `world_size` ranks follows torch's DistributedSampler: a permutation seeded
    by (seed, epoch), the same on every rank; for training it is padded by repeating its start
    so all ranks take the same number of steps, and rank r takes every world_size-th index from r.
    Evaluation (`pad=False`) shards without padding, so every image is counted exactly once.

    Resumable (ResumableLoader): a run resumed from a mid-epoch checkpoint takes the rest of that
    epoch's permutation, not all of it.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pad: bool = True,
        drop_last: bool = False,
        batches_done: Optional[Callable[[], int]] = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world_size, self.seed, self.pad = rank, world_size, seed, pad
        self.sampler = EpochSeed()
        self.batch_sampler = None  # Lightning inspects these two attributes of any loader
        self.batches_done = batches_done
        self._resume_at: Optional[tuple[int, int]] = None  # (epoch, batches already trained on)

    def _num_samples(self) -> int:
        n = len(self.images)
        if self.pad:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def num_batches(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches()

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, on the CPU."""
        n = len(self.images)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.sampler.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.pad:
            total = math.ceil(n / self.world_size) * self.world_size
            repeats = math.ceil(total / n)
            order = order.repeat(repeats)[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        first = self.first_batch()
        # One gather per epoch into this epoch's order, then every batch is a slice (a view):
        # no kernel launch per step, which matters when the step itself is one CUDA graph.
        order = self.indices().to(self.images.device, non_blocking=True)
        images, labels = self.images[order], self.labels[order]
        size = self.batch_size
        for start in range(first * size, self.num_batches() * size, size):
            yield images[start : start + size], labels[start : start + size]


class StackedBatchLoader(ResumableLoader):
    """Training batches (N, B, C, H, W) uint8: member n's batch is the one a single run with seed
    `seeds[n]` gets at that step (one TensorBatchLoader per member gives each epoch's order)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seeds: Sequence[int],
                 batches_done: Optional[Callable[[], int]] = None):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.members = [TensorBatchLoader(images, labels, batch_size, shuffle=True, seed=s, pad=True) for s in seeds]
        self.sampler = EpochSeed()  # Lightning calls set_epoch on it
        self.batch_sampler = None
        self.batches_done = batches_done
        self._resume_at: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        return self.members[0].num_batches()

    def __iter__(self):
        first = self.first_batch()
        for member in self.members:
            member.sampler.set_epoch(self.sampler.epoch)
        order = torch.stack([m.indices() for m in self.members]).to(self.images.device)  # (N, n)
        images, labels = self.images[order], self.labels[order]  # (N, n, H, W), (N, n)
        size = self.batch_size
        for start in range(first * size, len(self) * size, size):
            yield images[:, start : start + size], labels[:, start : start + size]
