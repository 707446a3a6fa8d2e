"""Loss terms of AEs and VAEs.

Every term is reduced the same way: summed over the D = C·H·W values of an image, every channel
of every pixel (reconstruction), or over the latent dimensions (KL), then averaged over the batch.
A colour image's reconstruction term is therefore the sum of its channels' terms, each computed as
for a grey image (for gaussian: with the one σ the image's channels share, see `Likelihood`). Mixing a per-pixel mean with a
sum would silently rescale β by the number of pixels. The decoder likelihoods p(x|z) are the
class `Likelihood`; its `error` is one value per image (B,), the batch mean is the caller's.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.catalog import RECON_LOSSES, SIGMAS

LOG_SIGMA_MIN = -6.0  # the σ-VAE's lower bound on log σ (Rybkin et al. 2021), in [0, 1] pixel units
_LOG_2PI = math.log(2 * math.pi)


def _sum_per_example(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(start_dim=1).sum(dim=1)


class BernoulliNLL(torch.autograd.Function):
    """Per-pixel −log p(x | logits) = softplus(l) − x·l, with its gradient σ(l) − x (and −l for x).

    The same values as `F.binary_cross_entropy_with_logits(reduction="none")`, written out for
    the CPU: torch's CPU `log1p` (inside the built-in) is not vectorised; at batch 128 the built-in
    took 0.6 ms of a 4.7 ms MLP VAE step on 2 cores, this function 0.3 ms. softplus(l) =
    max(l, 0) + log(1 + e) with e = exp(−|l|) ∈ (0, 1] loses at most one rounding of 1 + e
    against log1p: < 1e-7 nats per pixel in float32. `bernoulli_nll` computes it in float32
    under autocast, as the built-in is. Written with `setup_context`, so that torch.func.vmap (a
    stack of models, models/stack.py) derives its batching rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        softplus = logits.clamp_min(0).add_(logits.abs().neg_().exp_().add_(1).log_())
        return softplus.sub_(logits * x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, x = ctx.saved_tensors
        grad_logits = (torch.sigmoid(logits) - x).mul_(grad) if ctx.needs_input_grad[0] else None
        grad_x = -logits * grad if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


def reconstruction_error(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Reconstruction error of decoder `logits` against images `x` in [0, 1], one value per image (B,),
    summed over its C·H·W values ("pixels" below: each channel of each pixel).

    mse:        ‖x − sigmoid(logits)‖², summed over pixels.
    bce:        −log p(x|z) for independent Bernoulli pixels with these logits, in nats, summed
                over pixels (x may be grey levels: the cross-entropy with soft targets).
    cbernoulli: −log p(x|z) for independent continuous Bernoulli pixels, in nats, summed over
                pixels (see `cbernoulli_nll`).
    gaussian needs its σ: use `Likelihood("gaussian")`.
    """
    if kind == "mse":
        per_pixel = (torch.sigmoid(logits) - x).pow(2)
    elif kind == "bce":
        per_pixel = bernoulli_nll(logits, x)
    elif kind == "cbernoulli":
        per_pixel = cbernoulli_nll(logits, x)
    elif kind == "gaussian":
        raise ValueError("the gaussian reconstruction error needs its σ: use Likelihood('gaussian', pixel_range, sigma).error")
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {', '.join(RECON_LOSSES)}")
    return _sum_per_example(per_pixel)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE with logits, (B, ...): the CPU fast path `BernoulliNLL` or torch's built-in."""
    if logits.device.type == "cpu":
        if torch.is_autocast_enabled("cpu"):  # in float32, as the built-in computes it under autocast
            with torch.autocast("cpu", enabled=False):
                return BernoulliNLL.apply(logits.float(), x.float())
        return BernoulliNLL.apply(logits, x)
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _series_below(dtype: torch.dtype, float32: float, float64: float) -> float:
    """|l| below which a Taylor series replaces a closed form that cancels: where the series'
    truncation error meets the closed form's rounding error in `dtype`."""
    return float64 if dtype == torch.float64 else float32


def soft_clip(log_sigma: torch.Tensor, low: float = LOG_SIGMA_MIN) -> torch.Tensor:
    """low + softplus(log σ − low): log σ bounded below by `low`, smoothly (σ-VAE, Rybkin et al. 2021)."""
    return low + F.softplus(log_sigma - low)


def cbernoulli_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) with λ = sigmoid(l), elementwise.

        C(l) = l / tanh(l/2)   (2 at l = 0), an even function of l
        log C = log 2 + y²/3 − 7y⁴/90 + 62y⁶/2835 + O(y⁸),  y = l/2,   for |l| small
        log C = log(|l| / tanh(|l|/2))                                  elsewhere

    The ratio has no cancellation, but it and its gradient do near 0 (0/0 at 0); the series
    is used below |l| = 0.4 (0.03 in float64), where its truncation error (127y⁸/18900) meets
    the closed form's rounding. Each branch sees a safe value where it is not taken, so the
    gradient is finite everywhere (0 at l = 0).
    """
    small = logits.abs() < _series_below(logits.dtype, 0.4, 0.03)
    y = torch.where(small, logits, 0.0) / 2
    y2 = y * y
    series = math.log(2) + y2 * (1 / 3 + y2 * (-7 / 90 + y2 * (62 / 2835)))
    a = torch.where(small, 1.0, logits.abs())
    return torch.where(small, series, torch.log(a / torch.tanh(a / 2)))


def cbernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] of the continuous Bernoulli with λ = sigmoid(l), elementwise, in [0, 1].

        E[x] = 1/(1 − e^(−l)) − 1/l
             = 1/2 + l/12 − l³/720 + l⁵/30240 − l⁷/1209600 + l⁹/47900160 + O(l¹¹)   for |l| small

    Written with a = |l| and q = 1/(1 − e^(−a)) = −1/expm1(−a), E[x] = q − 1/a for l > 0 and
    1 − (q − 1/a) = 1/a − e^(−a)·q for l < 0 (no overflow, no cancellation for large |l|).
    The two closed-form terms cancel near 0; the series is used below |l| = 1.5 (0.3 in float64).
    """
    small = logits.abs() < _series_below(logits.dtype, 1.5, 0.3)
    s = torch.where(small, logits, 0.0)
    s2 = s * s
    series = 0.5 + s * (1 / 12 + s2 * (-1 / 720 + s2 * (1 / 30240 + s2 * (-1 / 1209600 + s2 / 47900160))))
    a = torch.where(small, 1.0, logits.abs())
    q = -1 / torch.expm1(-a)
    direct = torch.where(logits > 0, q - 1 / a, 1 / a - torch.exp(-a) * q)
    return torch.where(small, series, direct)


def cbernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel −log p(x|λ) of the continuous Bernoulli, x ∈ [0, 1], λ = sigmoid(l), in nats:

        p(x|λ) = C(λ) λ^x (1 − λ)^(1−x)  →  −log p = BCE_with_logits(l, x) − log C(l)
    """
    return bernoulli_nll(logits, x) - cbernoulli_log_normalizer(logits)


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """`reconstruction_error` averaged over the batch: the training loss term."""
    return reconstruction_error(logits, x, kind).mean()


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mu_j, exp(logvar_j)) ‖ N(0, 1)] of each latent dimension of each example, (B, latent_dim).

    Appendix B of Kingma & Welling (arXiv:1312.6114): −½ (1 + log σ_j² − μ_j² − σ_j²).
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mu, exp(logvar)) ‖ N(0, I)] in closed form, summed over latent dims, batch mean."""
    return gaussian_kl_per_dim(mu, logvar).sum(dim=1).mean()


class Likelihood(nn.Module):
    """The decoder's p(x|z) for images in `pixel_range`: what the reconstruction error means.

    The decoder's sigmoid covers [0, 1]; images are mapped there (x_u = `to_unit(x)`, x̂ =
    sigmoid(logits)), and the error is reported in the data's own units (an mse on [-1, 1]
    pixels is 4 times the one on [0, 1]; bce needs [0, 1]). For the densities (gaussian,
    cbernoulli), −log p(x) = −log p(x_u) + D·log(scale), scale = high − low (change of variables).

        error(logits, x) = −log p(x|z) − constant(D), per image (B,), summed over its D = C·H·W
                           values (every channel of every pixel: "pixels" below)
        constant(D)      = 0 for bce, gaussian and cbernoulli; ½·D·log π for mse

    mse:        scale²·‖x_u − x̂‖², read as the Gaussian N(x', σ² I) with σ² = ½ in the data's
                units, since −log N(x; x', σ² I) = ‖x − x'‖²/(2σ²) + (D/2)·log(2πσ²) = ‖x − x'‖² + ½·D·log π
    bce:        Σ BCE_with_logits(l, x_u), the Bernoulli −log p(x|z) (a probability mass: exact
                for binary images only; on grey levels the cross-entropy with soft targets)
    gaussian:   the σ-VAE (Rybkin et al. 2021), p(x_u|z) = N(x_u; x̂, σ² I):
                ‖x_u − x̂‖²/(2σ²) + D·log σ + ½·D·log 2π + D·log(scale)
                σ = "learned": one scalar, the parameter `log_sigma` (init 0) of this module,
                shared by every pixel and channel;
                σ = "optimal": per image, σ*² = ‖x_u − x̂‖²/D, which minimises the above over σ
                (then ‖x_u − x̂‖²/(2σ*²) = D/2): one σ* per image over all its C·H·W values,
                not one per channel (a colour image's channels share it, as its pixels do);
                either soft-clipped: log σ ← −6 + softplus(log σ + 6), so a perfect
                reconstruction gives a finite loss (σ is in [0, 1] units)
    cbernoulli: the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), λ = sigmoid(l):
                Σ [BCE_with_logits(l, x_u) − log C(l)] + D·log(scale),  C(l) = l / tanh(l/2);
                its mean (`means`) is 1/(1 − e^(−l)) − 1/l, not λ

    An nn.Module: the learned σ is a parameter of the model (trained, saved, moved with it);
    the other likelihoods hold no parameters or buffers.
    """

    def __init__(self, kind: str = "mse", pixel_range: Sequence[float] = (0.0, 1.0), sigma: str = "learned"):
        super().__init__()
        if kind not in RECON_LOSSES:
            raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {', '.join(RECON_LOSSES)}")
        if kind == "gaussian" and sigma not in SIGMAS:
            raise ValueError(f"unknown gaussian sigma {sigma!r}; choose one of {', '.join(SIGMAS)}")
        self.kind = kind
        self.sigma = sigma if kind == "gaussian" else None
        self.low, self.scale = float(pixel_range[0]), float(pixel_range[1]) - float(pixel_range[0])
        if self.sigma == "learned":
            self.log_sigma = nn.Parameter(torch.zeros(()))

    def extra_repr(self) -> str:
        sigma = f", sigma={self.sigma}" if self.sigma else ""
        return f"kind={self.kind}, pixel_range=({self.low:g}, {self.low + self.scale:g}){sigma}"

    @property
    def is_density(self) -> bool:
        """Whether error + constant is an exact −log density of grey-level images: gaussian, cbernoulli.

        bce's is exact on binary images only (a probability mass), which the caller knows;
        mse's is the density of a Gaussian whose σ² = ½ is fixed, not fitted. Both: False.
        """
        return self.kind in ("gaussian", "cbernoulli")

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the data's pixel range → [0, 1], the range of the decoder's pixel means."""
        return x if (self.low, self.scale) == (0.0, 1.0) else (x - self.low) / self.scale

    def means(self, logits: torch.Tensor) -> torch.Tensor:
        """Decoded pixel means in [0, 1]: sigmoid(logits), or the continuous Bernoulli's mean."""
        return cbernoulli_mean(logits) if self.kind == "cbernoulli" else torch.sigmoid(logits)

    def log_std(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) the gaussian's soft-clipped log σ per image, in [0, 1] pixel units."""
        if self.kind != "gaussian":
            raise ValueError(f"recon_loss={self.kind} has no σ")
        logits = _at_least_float32(logits)
        squared = _sum_per_example((torch.sigmoid(logits) - self.to_unit(x)).pow(2))
        return self._log_std(squared, logits[0].numel())

    def _log_std(self, squared: torch.Tensor, n_pixels: int) -> torch.Tensor:
        if self.sigma == "learned":
            return soft_clip(self.log_sigma).expand(squared.shape)
        # ½·log σ*²; the floor only keeps log finite at 0, where soft_clip gives −6 either way
        variance = (squared / n_pixels).clamp_min(torch.finfo(squared.dtype).tiny)
        return soft_clip(0.5 * variance.log())

    def error(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) reconstruction error of images `x` (in the data's pixel range), in the data's units."""
        if self.kind in ("mse", "bce"):
            error = reconstruction_error(logits, self.to_unit(x), self.kind)
            return error if self.scale == 1 else error * self.scale**2  # bce has scale 1
        logits = _at_least_float32(logits)
        x, n_pixels = self.to_unit(x), logits[0].numel()
        if self.kind == "gaussian":
            squared = _sum_per_example((torch.sigmoid(logits) - x).pow(2))
            log_sigma = self._log_std(squared, n_pixels)
            nll = 0.5 * squared * torch.exp(-2 * log_sigma) + n_pixels * (log_sigma + 0.5 * _LOG_2PI)
        else:
            nll = _sum_per_example(cbernoulli_nll(logits, x))
        return nll if self.scale == 1 else nll + n_pixels * math.log(self.scale)

    def constant(self, n_pixels: int) -> float:
        """−log p(x|z) − error, in nats (see above)."""
        return 0.5 * n_pixels * math.log(math.pi) if self.kind == "mse" else 0.0
