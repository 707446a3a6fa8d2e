"""dSprites-like images, made on this machine: `data=dsprites`.

The definition is dSprites' (deepmind/dsprites-dataset): 3 shapes (square, ellipse, heart;
values 1, 2, 3) × 6 scales (linspace(0.5, 1, 6)) × 40 orientations (linspace(0, 2π, 40): the
first and the last are the same angle, kept as in the official file) × 32 posX × 32 posY
(linspace(0, 1, 32)) = 737,280 binary 64×64 images. The grid's flat index runs with posY fastest,
then posX, orientation, scale, shape (the official latents_sizes [1, 3, 6, 40, 32, 32] without
its one-valued 'color').

The official file cannot be downloaded here, so every image is drawn by `render`, with the sizes
measured on the official sample images:

- Coordinates: pixel (row r, column c) covers [c, c+1) × [r, r+1) and its centre is (c+½, r+½);
  x grows to the right, y grows downward (posY=0 is at the top, as in the official images).
- The shape's centre is at x = 16 + 32·posX, y = 16 + 32·posY (so 16..48).
- Square: side 20·scale; ellipse: semi-axes 13·scale (horizontal at orientation 0) and 7·scale;
  heart: the curve (x² + y² − 1)³ = x²y³ (point down), stretched to a 20·scale × 17·scale
  bounding box, whose centre is the shape's centre (the official heart's outline was never
  published).
- Orientation θ turns the shape counter-clockwise as the image is seen (y down), about its
  centre. Not verified against the official images pixel by pixel (they are not here).
- No anti-aliasing: a pixel is 1 (stored 255) where its centre lies inside (or on) the turned
  shape, else 0.

So a square at orientation 0 covers exactly (20·scale)² pixels wherever it is: its edges never
pass through a pixel centre. Images are uint8 0/255, (N, 1, 64, 64), as the data module stores
binary images.

`load` draws `size` images of the grid (without repeats, with data.split_seed), splits off the
test images and keeps the rest in random order; the images are rendered once and cached
bit-packed (64×64 bits = 512 bytes an image) in `<data_dir>/dsprites/`, keyed by the size, the
seed and RENDER_VERSION.
"""

import logging
import math
from pathlib import Path

import numpy as np
import torch

from vaelab.catalog import DSPRITES_MAX_SIZE
from vaelab.data.cache import cached, writable_cache_file
from vaelab.data.factors import GroundTruth

log = logging.getLogger(__name__)

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")  # shape values 1, 2, 3; the data module's labels 0, 1, 2
GRID_SIZE = math.prod(FACTOR_SIZES)  # 737,280
IMAGE_SIZE = 64
DESCRIPTION = "dSprites-like (procedural)"
# At most this many images are held: uint8 64×64 images are 4 KiB each, so 0.5 GiB (the whole grid
# would be 2.8 GiB). The config check refuses more, before anything is drawn.
MAX_SIZE = DSPRITES_MAX_SIZE
# Raise when the drawing rules change: cached images of an older version are drawn again.
RENDER_VERSION = 1

SQUARE_SIDE = 20.0  # pixels at scale 1
ELLIPSE_SEMI_AXES = (13.0, 7.0)  # (along the shape's x axis, along its y axis) at scale 1
HEART_BOX = (20.0, 17.0)  # (width, height) at scale 1
# The bounding box of (x² + y² − 1)³ − x²y³ <= 0 (y up): |x| <= 1.139, -1 <= y <= 1.2366.
_HEART_X, _HEART_BOTTOM, _HEART_TOP = 1.13905, -1.0, 1.23665
_BATCH = 1024  # images drawn at once: 1024 × 64 × 64 float64 pixel coordinates are 32 MiB a tensor


def factor_values(factors: torch.Tensor) -> torch.Tensor:
    """float64 (n, 5): shape 1..3, scale 0.5..1, orientation in radians 0..2π, posX and posY 0..1."""
    factors = torch.as_tensor(factors, dtype=torch.int64).cpu()
    columns = [
        factors[:, 0].double() + 1,
        torch.linspace(0.5, 1.0, FACTOR_SIZES[1], dtype=torch.float64)[factors[:, 1]],
        torch.linspace(0.0, 2 * math.pi, FACTOR_SIZES[2], dtype=torch.float64)[factors[:, 2]],
        torch.linspace(0.0, 1.0, FACTOR_SIZES[3], dtype=torch.float64)[factors[:, 3]],
        torch.linspace(0.0, 1.0, FACTOR_SIZES[4], dtype=torch.float64)[factors[:, 4]],
    ]
    return torch.stack(columns, dim=1)


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Whether points (u right, v down, in pixels from the shape's centre, in the shape's own
    unturned frame) lie inside shape `shape` (0 square, 1 ellipse, 2 heart) of `scale` (n, 1, 1)."""
    if shape == 0:
        half = SQUARE_SIDE * scale / 2
        return (u.abs() <= half) & (v.abs() <= half)
    if shape == 1:
        a, b = ELLIPSE_SEMI_AXES[0] * scale, ELLIPSE_SEMI_AXES[1] * scale
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    # The heart curve's frame: x right, y up, its bounding box's centre at the shape's centre.
    x = u / (HEART_BOX[0] * scale) * (2 * _HEART_X)
    y = -v / (HEART_BOX[1] * scale) * (_HEART_TOP - _HEART_BOTTOM) + (_HEART_TOP + _HEART_BOTTOM) / 2
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


def draw(values: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 1, 64, 64) images, 0 or 255, of factor *values* (n, 5) float64 (shape 1..3, scale,
    orientation in radians, posX, posY; any values, not only the grid's), on their device."""
    device = values.device
    n = len(values)
    scale, theta = values[:, 1].view(n, 1, 1), values[:, 2].view(n, 1, 1)
    cx, cy = (16 + 32 * values[:, 3]).view(n, 1, 1), (16 + 32 * values[:, 4]).view(n, 1, 1)
    centres = torch.arange(IMAGE_SIZE, dtype=torch.float64, device=device) + 0.5
    dx, dy = centres.view(1, 1, -1) - cx, centres.view(1, -1, 1) - cy  # (n, 1, W), (n, H, 1)
    # Turning the shape by θ counter-clockwise on screen (y down) maps its point (u, v) to
    # (u cos θ + v sin θ, −u sin θ + v cos θ); a pixel is tested at the inverse of that map.
    cos, sin = torch.cos(theta), torch.sin(theta)
    u, v = dx * cos - dy * sin, dx * sin + dy * cos  # (n, H, W)
    mask = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool, device=device)
    shape = values[:, 0].round().long() - 1
    for k in range(len(SHAPES)):
        rows = (shape == k).nonzero().flatten()
        if len(rows):
            mask[rows] = _inside(k, u[rows], v[rows], scale[rows])
    return (mask.to(torch.uint8) * 255).unsqueeze(1)


def render(factors: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (n, 1, 64, 64) images, 0 or 255, of the factor indices (n, 5), on the CPU (drawn in
    batches on `device`: float64 arithmetic, so the CPU and a GPU draw the same pixels)."""
    factors = torch.as_tensor(factors, dtype=torch.int64).cpu()
    if factors.dim() != 2 or factors.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"factors must be (n, {len(FACTOR_SIZES)}) indices {FACTOR_NAMES}, not {tuple(factors.shape)}")
    sizes = torch.tensor(FACTOR_SIZES)
    if len(factors) and bool(((factors < 0) | (factors >= sizes)).any()):
        raise ValueError(f"factor indices out of range: each column k must be in 0..{[s - 1 for s in FACTOR_SIZES]}[k]")
    out = torch.empty(len(factors), 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for start in range(0, len(factors), _BATCH):
        out[start:start + _BATCH] = draw(factor_values(factors[start:start + _BATCH]).to(device)).cpu()
    return out


class DSprites(GroundTruth):
    """The dSprites-like grid as ground truth: `images` renders the images of any factor indices."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        return render(factors, self.device)

    def factor_values(self, factors: torch.Tensor) -> torch.Tensor:
        return factor_values(factors)


# -- a data set of `size` images of the grid ---------------------------------------------------------

def pack(images: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 1, 64, 64) 0/255 images as (n, 512) bytes, 8 pixels a byte."""
    return torch.from_numpy(np.packbits(images.view(len(images), -1).numpy() > 127, axis=1))


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack`: uint8 (n, 1, 64, 64) 0/255."""
    bits = np.unpackbits(packed.numpy(), axis=1)  # (n, 4096) 0/1
    np.multiply(bits, 255, out=bits)
    return torch.from_numpy(bits).view(len(bits), 1, IMAGE_SIZE, IMAGE_SIZE)


def drawn_indices(size: int, seed: int) -> torch.Tensor:
    """The grid indices of the `size` images a data set of that size uses: distinct, uniformly
    drawn with `seed`, in random order (the first ones are the test images)."""
    if not 1 <= size <= GRID_SIZE:
        raise ValueError(f"size must be in 1..{GRID_SIZE}, not {size}")
    order = torch.randperm(GRID_SIZE, generator=torch.Generator().manual_seed(seed))
    return order[:size].clone()  # its own storage: saved alone, not with the whole permutation


def load(size: int, seed: int, data_dir: Path, device: torch.device | str = "cpu") -> dict:
    """`size` images of the grid drawn with `seed`: {"images": uint8 (size, 1, 64, 64),
    "factors": int64 (size, 5), "location": str}, in random order; rendered once, then read from
    the cache (bit-packed)."""
    indices = drawn_indices(size, seed)
    path = writable_cache_file(Path(data_dir) / "dsprites", f"vaelab-dsprites-{size}-seed{seed}.pt", create=True)
    ground_truth = DSprites(device)

    def decode() -> dict[str, torch.Tensor]:
        log.info("rendering %d %s images (once; cached in %s)", size, DESCRIPTION,
                 path or "nowhere: data_dir is not writable")
        factors = ground_truth.factors_of(indices)
        chunks = [pack(ground_truth.images(factors[i:i + 8 * _BATCH])) for i in range(0, size, 8 * _BATCH)]
        return {"packed": torch.cat(chunks), "indices": indices}  # never the whole draw unpacked and packed at once

    stored = cached((("dsprites", RENDER_VERSION, size, seed),), path, decode)
    if not torch.equal(stored["indices"], indices):  # the same key draws the same indices: a different torch?
        stored = decode()
    where = f"cached in {path}" if path is not None else "not cached"
    return {
        "images": unpack(stored["packed"]),
        "factors": ground_truth.factors_of(indices),
        "location": f"{DESCRIPTION}: {size} of the {GRID_SIZE} grid images, drawn with seed {seed}, {where}",
    }
