"""The two properties the KL term buys, as numbers: continuity and completeness.

Continuity: nearby codes should decode to similar images, in every direction, not only along
the codes of the data. With s the median distance from a test code to its nearest neighbouring
test code (the latent space's own unit of "one step"), u a random unit direction and
rms(a, b) = sqrt(mean over pixels (a − b)²) on pixel means in [0, 1]:

    random_change_per_unit    = mean_i rms(g(z_i + s·u_i), g(z_i)) / s
    neighbour_change_per_unit = mean_i rms(g(z_nn(i)), g(z_i)) / ‖z_nn(i) − z_i‖
    ratio                     = random_change_per_unit / neighbour_change_per_unit

A ratio near 1 (or below) means a step off the data's codes changes the image no more than a
step to a neighbouring image; ≫ 1 means the decoder changes abruptly between the data's codes.
Steps are measured in each model's own code scale, so AE and VAE compare.

Completeness: codes drawn from the prior should decode to plausible images. Plausibility is
judged by a small classifier trained on the same data (`classifier.py`): its mean max-softmax
confidence on decoded samples, beside its confidence on real test images, and the class
coverage exp(H(mean predicted distribution)) (K, the number of classes, when samples spread over
all classes evenly, 1 when they collapse to one). It needs labels to train that classifier: on a
data set without them, eval records completeness as not applicable. Chosen over the Fréchet distance between classifier features because
it needs no large sample to be unbiased (FID is biased at a few thousand samples), reads on a
fixed scale (0.1 to 1) and is cheap enough for every evaluation. The reference numbers are
measured on the same kind of images as the samples: decoded samples are pixel means, levels in
[0, 1] (grey or colour), so the real test images are the ones as read, before any binarisation
(data.binarize).
A binarised image is sharper than any pixel mean and gets another confidence: judging samples
against it would mix the model's quality with the change of image kind.
"""

import torch

from vaelab.evaluation.latent import batches
from vaelab.evaluation.panels import decode_means
from vaelab.models import Codes


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1).sqrt()


@torch.no_grad()
def continuity(model, codes: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
    """Continuity numbers for codes (N, d) of test images (N ≥ 2)."""
    distances = torch.cdist(codes, codes)
    distances.fill_diagonal_(float("inf"))
    nn_dist, nn_idx = distances.min(dim=1)
    keep = nn_dist > 0  # identical codes give no direction to compare with
    codes, nn_dist, nn_idx = codes[keep], nn_dist[keep], nn_idx[keep]
    step = nn_dist.median()
    u = torch.randn(codes.shape, generator=generator).to(codes)
    u = u / u.norm(dim=1, keepdim=True)
    base = decode_means(model, codes)
    random_change = _rms(decode_means(model, codes + step * u), base) / step
    neighbour_change = _rms(base[nn_idx], base) / nn_dist
    r, n = float(random_change.mean()), float(neighbour_change.mean())
    return {"continuity/step": float(step), "continuity/random_change_per_unit": r,
            "continuity/neighbour_change_per_unit": n, "continuity/ratio": r / n if n > 0 else float("nan")}


@torch.no_grad()
def _judge(classifier, images: torch.Tensor, prefix: str) -> dict[str, float]:
    probs = torch.cat([torch.softmax(classifier(images[p]), dim=1) for p in batches(len(images), 1000)])
    mean = probs.mean(dim=0)
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum()
    return {f"{prefix}_confidence": float(probs.max(dim=1).values.mean()),
            f"{prefix}_class_coverage": float(entropy.exp())}


@torch.no_grad()
def completeness(model, classifier, codes: Codes, test_images: torch.Tensor, n_samples: int,
                 generator: torch.Generator) -> dict[str, float]:
    """Classifier judgements of decoded prior samples (N(0, I) for a model without a prior: an AE), and
    of the model's own code distribution where that is another (an AE's fitted Gaussian), from the same noise.

    `test_images` (N, C, H, W) give the reference values of real images: levels in [0, 1], never
    binarised (`classifier.pixel_levels` of the test file), like the decoded pixel means.
    """
    device = next(classifier.parameters()).device
    eps = torch.randn(n_samples, codes.mu.shape[1], generator=generator).to(codes.mu)
    out = _judge(classifier, test_images.to(device), "completeness/test")
    distribution = model.code_distribution(codes)
    prior = distribution.from_noise(eps, generator) if distribution.name == "prior" else eps
    out.update(_judge(classifier, decode_means(model, prior).to(device), "completeness/prior"))
    if distribution.name != "prior":
        z = distribution.from_noise(eps, generator)
        out.update(_judge(classifier, decode_means(model, z).to(device), f"completeness/{distribution.name}"))
    return out
