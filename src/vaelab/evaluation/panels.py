"""Image panels that show the latent space: each is a uint8 RGB array (H, W, 3) with a caption.

Grids of decoded images are tiles of the images' own size (H×W) with 2-pixel grey borders, so a
grid of r rows and c columns is (r·(H+2)+2) × (c·(W+2)+2) pixels: grey tiles for one channel,
colour tiles for three (the two image kinds a panel shows; another C is refused). Charts
(scatter, KL bars) are matplotlib figures rendered without pyplot, so no global state or display
is touched, and with fixed margins: `tight_layout` measured every tick label again and took half
of a chart's time.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torchvision.utils import make_grid

from vaelab.evaluation.latent import ACTIVE_THRESHOLD, activity, batches, encode, kl_per_dim, most_active_first, project_2d

PADDING = 2
TRAVERSAL_RANGE = 3.0  # traverse ±3 standard deviations of the model's code distribution


@dataclass
class Panel:
    name: str  # file stem: images/<name>_epoch<N>.png
    image: np.ndarray  # (H, W, 3) uint8
    caption: str


def grid_image(images: torch.Tensor, ncol: int) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] → one uint8 (H', W', 3) grid, `ncol` images per row: C=1 grey
    (each level on all three channels), C=3 RGB; the borders mid-grey (0.5) either way."""
    if images.shape[1] not in (1, 3):
        raise ValueError(f"a panel shows grey (C=1) or RGB (C=3) images, not C={images.shape[1]} "
                         f"(images {tuple(images.shape[1:])})")
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=ncol, padding=PADDING, pad_value=0.5)
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def figure_image(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@torch.no_grad()
def decode_means(model, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Decoded pixel means in [0, 1] of codes (N, d), (N, C, H, W)."""
    return torch.cat([model.likelihood.means(model.decode(z[part])) for part in batches(len(z), batch_size)])


def scatter_panel(coords: torch.Tensor, labels: torch.Tensor, axes: list[str], title: str,
                  classes: Optional[Sequence[str]] = None) -> np.ndarray:
    """`scatter_figure` rendered: (500, 500, 3) uint8."""
    return figure_image(scatter_figure(coords, labels, axes, title, classes))


def scatter_figure(coords: torch.Tensor, labels: torch.Tensor, axes: list[str], title: str,
                   classes: Optional[Sequence[str]] = None) -> Figure:
    """The 2-D codes `coords` (N, 2) coloured by label (N,): up to 10 classes in matplotlib's C0–C9
    with a legend (named by `classes[label]` where given), more on a continuous colour scale with a
    colourbar; points without a label (-1) in grey, and a data set without labels in one colour,
    with no legend."""
    fig = Figure(figsize=(5, 5), dpi=100)
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.1, top=0.93)
    ax = fig.add_subplot()
    points, values = coords.cpu().numpy(), labels.cpu().numpy()
    known = values >= 0
    present = np.unique(values[known])
    if not known.all():  # no label: one colour, named only beside labelled points
        ax.scatter(points[~known, 0], points[~known, 1], s=6, alpha=0.7, color="C0" if not known.any() else "0.6",
                   label="no label")
    if len(present) and present.max() < 10:
        for c in present:
            mask = values == c
            name = classes[int(c)] if classes is not None and int(c) < len(classes) else str(int(c))
            ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, color=f"C{int(c)}", label=name)
    elif len(present):  # too many classes for a legend: the label's number on a colour scale
        shown = ax.scatter(points[known, 0], points[known, 1], s=6, alpha=0.7, c=values[known], cmap="turbo")
        fig.colorbar(shown, ax=ax, label="label")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    if len(present) and present.max() < 10:
        ax.legend(markerscale=2, fontsize=7, loc="best", title="label", title_fontsize=7)
    return fig


def kl_bar_panel(kl: torch.Tensor, active: torch.Tensor) -> np.ndarray:
    fig = Figure(figsize=(6, 3), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.16, top=0.9)
    ax = fig.add_subplot()
    dims = np.arange(1, len(kl) + 1)
    colours = ["C0" if a else "C7" for a in active.cpu().numpy()]
    ax.bar(dims, kl.cpu().numpy(), color=colours)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats, mean over images)")
    ax.set_title(f"KL per dimension; blue: active (Cov_x(E_q[z_i]) > {ACTIVE_THRESHOLD}), grey: inactive", fontsize=8)
    return figure_image(fig)


@torch.no_grad()
def make_panels(model, x: torch.Tensor, labels: torch.Tensor, n_images: int = 8, n_samples: int = 64,
                interpolation_steps: int = 10, traversal_dims: int = 10, traversal_steps: int = 9,
                seed: int = 0, classes: Optional[Sequence[str]] = None) -> list[Panel]:
    """All panels of the plain model `model` on images `x` (N, C, H, W, in the data's pixel range) with
    `labels` (-1: none) and, where the data set names them, `classes` (the name of each label).

    The first `n_images` images are the fixed set shown; all N are encoded for the scatter,
    the activity order and the AE's fitted Gaussian.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    codes = encode(model, x)
    distribution = model.code_distribution(codes)
    n_images = min(n_images, len(x))
    panels: list[Panel] = []

    # 1) Reconstructions decode the posterior mean, so they do not change with the sampled z.
    originals = model.likelihood.to_unit(x[:n_images])
    recon = decode_means(model, codes.mu[:n_images])
    panels.append(Panel("reconstructions", grid_image(torch.cat([originals, recon]), n_images),
                        "top: test images; bottom: their reconstructions (decoded E_q[z|x])"))

    # 2) Samples from where the model's codes come from: a VAE's prior, a Gaussian fitted to an AE's codes.
    z = distribution.sample(n_samples, generator)
    panels.append(Panel(f"{distribution.name}_samples", grid_image(decode_means(model, z), int(np.ceil(np.sqrt(n_samples)))),
                        distribution.caption))

    # 3) Interpolations: row i goes linearly in code space from image i to image i + pairs.
    pairs = max(1, n_images // 2)
    t = torch.linspace(0, 1, interpolation_steps).to(codes.mu)[None, :, None]  # (1, steps, 1)
    z_a = codes.mu[:pairs, None]
    z_b = codes.mu[pairs : 2 * pairs, None] if len(x) >= 2 * pairs else z_a  # one image: a constant row
    path = ((1 - t) * z_a + t * z_b).reshape(-1, codes.mu.shape[1])
    panels.append(Panel("interpolations", grid_image(decode_means(model, path), interpolation_steps),
                        f"each row: decoded codes on the straight line between two test images' codes, {interpolation_steps} steps"))

    # 4) Traversals: row r varies the r-th most active dimension, the others stay at image 0's code.
    order = most_active_first(codes)[:traversal_dims]
    steps = torch.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, traversal_steps).to(codes.mu)
    centre, spread = distribution.mean, distribution.std()
    rows = []
    for dim in order:
        z = codes.mu[0].repeat(traversal_steps, 1)
        z[:, dim] = centre[dim] + steps * spread[dim]
        rows.append(z)
    unit = distribution.unit
    panels.append(Panel("traversals", grid_image(decode_means(model, torch.cat(rows)), traversal_steps),
                        f"row r: dimension {[int(d) + 1 for d in order]}[r] (most active first) from "
                        f"−{TRAVERSAL_RANGE:g} to +{TRAVERSAL_RANGE:g} {unit}; the others at a test image's code"))

    # 5) 2-D scatter of the codes coloured by label (one colour when the data have no labels).
    coords, axes = project_2d(codes.mu)
    how = "the latent itself" if codes.mu.shape[1] <= 2 else "PCA of the codes"
    labels = labels[: len(coords)]
    by = " by label" if bool((labels >= 0).any()) else ""
    panels.append(Panel("latent_scatter", scatter_panel(coords, labels, axes, f"test codes ({how}){by}", classes),
                        f"{len(coords)} test codes, {how}, " + ("coloured by label" if by else "the data have no labels")))

    # 6) KL per dimension, for model types with a KL term.
    if "kl" in model.terms:
        active = activity(codes) > ACTIVE_THRESHOLD
        panels.append(Panel("kl_per_dim", kl_bar_panel(kl_per_dim(codes), active),
                            f"KL per latent dimension; {int(active.sum())} of {len(active)} units active"))
    model.train(was_training)
    return panels


def save_panels(panels: list[Panel], folder: Path, suffix: str = "") -> list[Path]:
    """Write images/<name><suffix>.png for each panel; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for panel in panels:
        path = folder / f"{panel.name}{suffix}.png"
        Image.fromarray(panel.image).save(path)
        paths.append(path)
    return paths
