"""Image panels that show the latent space: each is a uint8 RGB array (H, W, 3) with a caption.

Grids of decoded images are tiles of the images' own size (H×W) with 2-pixel grey borders, so a
grid of r rows and c columns is (r·(H+2)+2) × (c·(W+2)+2) pixels: grey tiles for one channel,
colour tiles for three (the two image kinds a panel shows; another C is refused). The traversal
grid gets a white margin above and to its left that names its rows and columns (`labelled_grid`);
the grid itself sits unchanged in the bottom-right corner. Charts (scatter, KL bars, the
latent × factor matrix) are matplotlib figures rendered without pyplot, so no global state or
display is touched, and with fixed margins: `tight_layout` measured every tick label again and
took half of a chart's time.
"""

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from vaelab.evaluation.latent import ACTIVE_THRESHOLD, activity, batches, encode, most_active_first, project_2d

PADDING = 2
TRAVERSAL_RANGE = 3.0  # traverse ±3 standard deviations of the model's code distribution
LABEL_PX = 11  # text size of a grid's labels, in pixels (matplotlib's DejaVu Sans, drawn with PIL)
LINE_PX = LABEL_PX + 5  # one line of labels; a grid whose rows are lower is magnified to this
# The latent × factor matrix (`mutual_information_panel`), in pixels: one cell, and the margins
# for the latent labels (left), the colour bar (right), the title (top) and the factor names (bottom).
MI_CELL_H, MI_CELL_W = 24, 80
MI_MIN_PLOT_H, MI_MIN_PLOT_W = 144, 240  # a short matrix keeps a readable colour bar, a narrow one its title
MI_LEFT, MI_RIGHT, MI_TOP, MI_BOTTOM = 130, 110, 40, 70


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


@functools.lru_cache(maxsize=None)
def _label_font() -> ImageFont.FreeTypeFont:
    """The font matplotlib ships (DejaVu Sans): the same labels on every machine, with −, σ and ×."""
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), LABEL_PX)


def signed(value: float) -> str:
    """-2.25 → "−2.25", 0.75 → "+0.75", 0 → "0": a traversal's column label."""
    return "0" if value == 0 else f"{value:+g}".replace("-", "−")


def labelled_grid(grid: np.ndarray, tile: tuple[int, int], row_cells: Sequence[Sequence[str]],
                  row_header: Sequence[str], column_labels: Sequence[str], title: str) -> np.ndarray:
    """A `grid_image` of tiles `tile` = (H, W) with a white margin that names its rows and columns.

    Left: a table with one line per grid row, its cells `row_cells[r]`, headed by `row_header` on
    the line above the grid. Top: `title`, then each column's label above it (every second or
    third one where they would crowd). The grid sits unchanged in the bottom-right corner,
    magnified by a whole factor (each pixel repeated) only when its rows are lower than a line of
    text, so `image[-h:, -w:]` is the grid (or its magnification).
    """
    tile_h, tile_w = tile
    pitch_h, pitch_w = tile_h + PADDING, tile_w + PADDING
    rows, cols = (grid.shape[0] - PADDING) // pitch_h, (grid.shape[1] - PADDING) // pitch_w
    if (rows, cols) != (len(row_cells), len(column_labels)):
        raise ValueError(f"a grid of {rows}×{cols} tiles needs {rows} row labels and {cols} column labels, "
                         f"not {len(row_cells)} and {len(column_labels)}")
    scale = max(1, math.ceil(LINE_PX / pitch_h))
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    font = _label_font()
    gap = 8  # between the table's columns, and before the grid
    widths = [math.ceil(max(font.getlength(text) for text in [header, *(cells[j] for cells in row_cells)]))
              for j, header in enumerate(row_header)]
    starts = list(np.cumsum([4, *(w + gap for w in widths[:-1])]))  # each table column's left edge
    left = max(4 + sum(w + gap for w in widths), math.ceil(font.getlength(title)) + 8 - grid.shape[1])
    top = 2 * LINE_PX + 4
    canvas = Image.new("RGB", (left + grid.shape[1], top + grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    ink, grey = (0, 0, 0), (100, 100, 100)
    draw.text((4, 2 + LINE_PX / 2), title, fill=ink, font=font, anchor="lm")
    label_line = 2 + 1.5 * LINE_PX  # the column labels and the table's header
    for x, header in zip(starts, row_header):
        draw.text((float(x), label_line), header, fill=grey, font=font, anchor="lm")
    for r, cells in enumerate(row_cells):
        y = top + scale * (PADDING + r * pitch_h + tile_h / 2)
        for x, text in zip(starts, cells):
            draw.text((float(x), y), text, fill=ink, font=font, anchor="lm")
    widest = max(font.getlength(text) for text in column_labels)
    stride = max(1, math.ceil((widest + 4) / (scale * pitch_w)))
    for c, text in enumerate(column_labels):
        if c % stride == 0:
            draw.text((left + scale * (PADDING + c * pitch_w + tile_w / 2), label_line), text, fill=ink, font=font,
                      anchor="mm")
    return np.asarray(canvas).copy()


def mutual_information_size(n_latents: int, n_factors: int) -> tuple[int, int]:
    """(height, width) in pixels of `mutual_information_panel`'s image."""
    return (MI_TOP + max(MI_CELL_H * n_latents, MI_MIN_PLOT_H) + MI_BOTTOM,
            MI_LEFT + max(MI_CELL_W * n_factors, MI_MIN_PLOT_W) + MI_RIGHT)


def mutual_information_panel(mi: np.ndarray, latent_labels: Sequence[str], factor_names: Sequence[str],
                             title: str = "mutual information between each latent and each factor",
                             unit: str = "nats", vmax: Optional[float] = None) -> np.ndarray:
    """The (L, K) matrix `mi` of latents (rows, named by `latent_labels`) × factors (columns,
    `factor_names`) as coloured cells with their values written in, and a colour scale from 0 to
    `vmax` (the largest value when None) labelled with `unit`. A uint8 (H, W, 3) image of
    `mutual_information_size(L, K)`: cells of 24 × 80 pixels (larger for a few latents or factors),
    so that 32 latents × 6 factors are 878 × 720 pixels."""
    mi = np.asarray(mi, dtype=float)
    n_latents, n_factors = mi.shape
    if (len(latent_labels), len(factor_names)) != mi.shape:
        raise ValueError(f"an ({n_latents}, {n_factors}) matrix needs {n_latents} latent labels and "
                         f"{n_factors} factor names, not {len(latent_labels)} and {len(factor_names)}")
    height, width = mutual_information_size(n_latents, n_factors)
    plot_h, plot_w = height - MI_TOP - MI_BOTTOM, width - MI_LEFT - MI_RIGHT
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((MI_LEFT / width, MI_BOTTOM / height, plot_w / width, plot_h / height))
    finite = mi[np.isfinite(mi)]  # a value an estimator could not give (NaN) is written, not coloured
    top = float(vmax) if vmax is not None else max(float(finite.max()) if finite.size else 0.0, 1e-12)
    shown = ax.imshow(mi, aspect="auto", cmap="viridis", vmin=0.0, vmax=top, interpolation="nearest")
    size = 8 if n_latents <= 16 else 7
    for (i, j), value in np.ndenumerate(mi):
        dark = shown.norm(value) < 0.6 if np.isfinite(value) else True  # viridis is dark below ~0.6
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=size, color="white" if dark else "black")
    ax.set_xticks(range(n_factors), [str(f) for f in factor_names], fontsize=8, rotation=30, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks(range(n_latents), [str(z) for z in latent_labels], fontsize=size)
    ax.set_xlabel("factor", fontsize=8)
    ax.set_ylabel("latent", fontsize=8)
    bar = fig.add_axes(((MI_LEFT + plot_w + 16) / width, MI_BOTTOM / height, 14 / width, plot_h / height))
    fig.colorbar(shown, cax=bar).set_label(unit, fontsize=8)
    bar.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9, y=1 - 12 / height, va="top")
    image = figure_image(fig)
    if image.shape[:2] != (height, width):  # inches × dpi rounded the other way: pad or crop with white
        fixed = np.full((height, width, 3), 255, dtype=np.uint8)
        h, w = min(height, image.shape[0]), min(width, image.shape[1])
        fixed[:h, :w] = image[:h, :w]
        image = fixed
    return image


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


def traversal_labels(order: torch.Tensor, kl: Optional[torch.Tensor], spread: torch.Tensor,
                     row_factors: Optional[Sequence[Optional[str]]] = None) -> tuple[list[list[str]], list[str]]:
    """The cells and header of the traversal's row table: each traversed dimension `order[r]`
    (numbered from 1, as the KL bars), its KL in nats (`kl`, for a model with a KL term) or else
    the std of its codes (`spread`, an AE's traversal unit), and where given its factor."""
    if row_factors is not None and len(row_factors) != len(spread):
        raise ValueError(f"row_factors names a factor for each of the {len(spread)} latent dimensions, "
                         f"not {len(row_factors)}")
    header = ["latent", "KL (nats)" if kl is not None else "code std", *(["factor"] if row_factors is not None else [])]
    cells = []
    for dim in (int(d) for d in order):
        stat = f"{float(kl[dim]):.2f}" if kl is not None else f"{float(spread[dim]):.3g}"
        factor = [row_factors[dim] or "–"] if row_factors is not None else []
        cells.append([f"z{dim + 1}", stat, *factor])
    return cells, header


@torch.no_grad()
def make_panels(model, x: torch.Tensor, labels: torch.Tensor, n_images: int = 8, n_samples: int = 64,
                interpolation_steps: int = 10, traversal_dims: int = 10, traversal_steps: int = 9,
                seed: int = 0, classes: Optional[Sequence[str]] = None,
                row_factors: Optional[Sequence[Optional[str]]] = None) -> list[Panel]:
    """All panels of the plain model `model` on images `x` (N, C, H, W, in the data's pixel range) with
    `labels` (-1: none) and, where the data set names them, `classes` (the name of each label).
    `row_factors`, where the data's factors are known: for each latent dimension (latent_dim
    entries, in the dimensions' order), the factor it follows most, or None; the traversal
    panel writes it beside the dimension's row.

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
    kl = model.kl_per_dim(codes)
    order = most_active_first(codes)[:traversal_dims]
    steps = torch.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, traversal_steps).to(codes.mu)
    centre, spread = distribution.mean, distribution.std()
    rows = []
    for dim in order:
        z = codes.mu[0].repeat(traversal_steps, 1)
        z[:, dim] = centre[dim] + steps * spread[dim]
        rows.append(z)
    unit = distribution.unit
    grid = grid_image(decode_means(model, torch.cat(rows)), traversal_steps)
    panels.append(Panel("traversals", labelled_grid(grid, tuple(x.shape[2:]), *traversal_labels(order, kl, spread, row_factors),
                                                    [signed(float(k)) for k in steps], f"mean + k × {unit}, k ="),
                        f"row r: dimension {[int(d) + 1 for d in order]}[r] (most active first), labelled with its "
                        f"{'KL' if kl is not None else 'std'}{' and the factor it follows most' if row_factors else ''}; "
                        f"column: its value from −{TRAVERSAL_RANGE:g} to +{TRAVERSAL_RANGE:g} {unit} around the "
                        f"mean; the others at a test image's code"))

    # 5) 2-D scatter of the codes coloured by label (one colour when the data have no labels).
    coords, axes = project_2d(codes.mu)
    how = "the latent itself" if codes.mu.shape[1] <= 2 else "PCA of the codes"
    labels = labels[: len(coords)]
    by = " by label" if bool((labels >= 0).any()) else ""
    panels.append(Panel("latent_scatter", scatter_panel(coords, labels, axes, f"test codes ({how}){by}", classes),
                        f"{len(coords)} test codes, {how}, " + ("coloured by label" if by else "the data have no labels")))

    # 6) KL per dimension, for model types with a KL term.
    if kl is not None:
        active = activity(codes) > ACTIVE_THRESHOLD
        panels.append(Panel("kl_per_dim", kl_bar_panel(kl, active),
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
