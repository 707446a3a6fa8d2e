"""Data sets whose images are made from known factors of variation (vaelab.catalog.FACTOR_DATASETS).

The disentanglement metrics code against `GroundTruth` only: the factors' names and sizes, uniform
draws of factor indices, the images for any indices (as the data module stores them: uint8
(n, C, H, W)), and the factors' values. A data set of this kind is a full grid of
prod(factor_sizes) images; flat grid indices run with the last factor fastest (`index`,
`factors_of`).

Torch-free at import (vaelab.catalog and the config check import nothing heavy); the methods
import torch when called.
"""

from math import prod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class GroundTruth:
    """A data set with known factors of variation. Factor indices are int64 (n, K), K =
    len(factor_names), column k in 0..factor_sizes[k]-1."""

    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()

    @property
    def num_images(self) -> int:
        """The images of the full grid: prod(factor_sizes)."""
        return prod(self.factor_sizes)

    def sample_factors(self, n: int, generator: "torch.Generator") -> "torch.Tensor":
        """(n, K) int64 factor indices drawn uniformly over the grid (each factor independently
        uniform), on the CPU, from `generator`."""
        import torch

        columns = [torch.randint(size, (n,), generator=generator, dtype=torch.int64) for size in self.factor_sizes]
        return torch.stack(columns, dim=1) if columns else torch.zeros(n, 0, dtype=torch.int64)

    def images(self, factors: "torch.Tensor") -> "torch.Tensor":
        """uint8 (n, C, H, W), as the data module stores images, for the factor indices (n, K)."""
        raise NotImplementedError

    def factor_values(self, factors: "torch.Tensor") -> "torch.Tensor":
        """float64 (n, K): the value each factor index stands for."""
        raise NotImplementedError

    # -- flat grid indices (the order of the grid: last factor fastest) ---------------------------
    def index(self, factors: "torch.Tensor") -> "torch.Tensor":
        """int64 (n,) flat grid indices of factor indices (n, K)."""
        import torch

        factors = torch.as_tensor(factors, dtype=torch.int64)
        flat = torch.zeros(factors.shape[0], dtype=torch.int64, device=factors.device)
        for k, size in enumerate(self.factor_sizes):
            flat = flat * size + factors[:, k]
        return flat

    def factors_of(self, index: "torch.Tensor") -> "torch.Tensor":
        """int64 (n, K) factor indices of flat grid indices (n,); the inverse of `index`."""
        import torch

        rest = torch.as_tensor(index, dtype=torch.int64).clone()
        columns = []
        for size in reversed(self.factor_sizes):
            columns.append(rest % size)
            rest = rest // size
        return torch.stack(columns[::-1], dim=1)
