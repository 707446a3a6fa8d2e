"""Model types: the AE and the VAE. Each knows its loss terms, how they combine, and how its
codes are sampled; the LightningModule, the evaluation and the configs ask it instead of
testing its name.

Adding a model type: subclass `Autoencoder` here (or in a file of its own in models/), set
`name`, `terms` and `not_applicable`, implement `posterior`, `losses`, `combine` and
`code_distribution`, list it in `MODEL_TYPES` (models/__init__.py) and write
conf/model/<name>.yaml. Settings of its own (like the VAE's `beta`) are keyword arguments of
its constructor; the config checks refuse them for the model types that do not take them.
"""

from collections.abc import Sequence
from typing import ClassVar, NamedTuple, Optional

import torch
from torch import nn

from vaelab.models.conv import ConvDecoder, ConvEncoder
from vaelab.models.losses import Likelihood, gaussian_kl
from vaelab.models.mlp import MLPDecoder, MLPEncoder

# Adding a network: write its encoder/decoder pair in models/<name>.py and name it here.
NETWORKS = {
    "mlp": (MLPEncoder, MLPDecoder),
    "conv": (ConvEncoder, ConvDecoder),
}

# exp(-20) keeps σ representable in float32 and bfloat16; exp(10) keeps σ² and the KL finite.
LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0


class AutoencoderOutput(NamedTuple):
    logits: torch.Tensor  # (B, C, H, W) decoder output before the sigmoid
    z: torch.Tensor  # (B, latent_dim) the code that was decoded
    mu: Optional[torch.Tensor] = None  # (B, latent_dim) VAE only
    logvar: Optional[torch.Tensor] = None  # (B, latent_dim) VAE only


class Codes(NamedTuple):
    mu: torch.Tensor  # (N, latent_dim) E_q[z|x] for a VAE, the code z = f(x) for an AE
    logvar: Optional[torch.Tensor] = None  # (N, latent_dim) log-variance of q(z|x); None: deterministic


class CodeDistribution(NamedTuple):
    """The Gaussian N(mean, L·Lᵀ) that a model's codes are drawn from to generate images."""

    name: str  # "prior" or "fitted_gaussian": panels call the samples "<name>_samples"
    mean: torch.Tensor  # (d,)
    scale_tril: torch.Tensor  # (d, d) lower-triangular L
    caption: str  # what the samples are
    unit: str  # what one step of a traversal is

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(n, len(self.mean), generator=generator).to(self.mean)
        return self.mean + eps @ self.scale_tril.T

    def std(self) -> torch.Tensor:
        """(d,) marginal standard deviations, sqrt(diag(L·Lᵀ))."""
        return self.scale_tril.pow(2).sum(dim=1).sqrt()


def fitted_gaussian(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and a Cholesky factor (d, d) of the codes' empirical covariance."""
    mean = codes.mean(dim=0)
    centred = codes - mean
    cov = centred.T @ centred / max(len(codes) - 1, 1)
    # A small ridge keeps the factorisation defined when some code dimensions never vary.
    ridge = 1e-6 * (cov.diagonal().mean() + 1e-12) * torch.eye(len(mean), dtype=cov.dtype, device=cov.device)
    return mean, torch.linalg.cholesky(cov + ridge)


class Autoencoder(nn.Module):
    """What every model type shares: an encoder network, a decoder, the likelihood p(x|z).

    Losses are batch means of per-image terms, each summed over pixels (recon) or latent
    dimensions (kl), so β means the same for every image and latent size.
    """

    name: ClassVar[str]
    terms: ClassVar[tuple[str, ...]]  # logged as {stage}/{term}, in this order; "loss" is optimised
    not_applicable: ClassVar[dict[str, str]] = {}  # evaluation terms this type has not, and why

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 20,
                 hidden_dims: Sequence[int] = (400,), net: str = "mlp", recon_loss: str = "mse",
                 pixel_range: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        self.latent_dim = latent_dim
        encoder_cls, decoder_cls = NETWORKS[net]
        self.encoder = encoder_cls(tuple(image_shape), list(hidden_dims))
        self.decoder = decoder_cls(tuple(image_shape), list(hidden_dims), latent_dim)
        self.likelihood = Likelihood(recon_loss, pixel_range)

    @classmethod
    def metric_names(cls, stages: Sequence[str] = ("train", "val", "test")) -> list[str]:
        return [f"{stage}/{term}" for stage in stages for term in cls.terms]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def posterior(self, x: torch.Tensor) -> Codes:
        raise NotImplementedError

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means of `terms` for images `x` in the data's pixel range."""
        raise NotImplementedError

    def combine(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All of `terms` from the measured parts (recon, and kl where there is one)."""
        raise NotImplementedError

    def code_distribution(self, codes: Codes) -> CodeDistribution:
        """Where this model's codes come from when it generates, given the codes `codes` of some data."""
        raise NotImplementedError


class AE(Autoencoder):
    """Deterministic autoencoder: z = f(x), x' = g(z), trained on the reconstruction alone."""

    name = "ae"
    terms = ("recon", "loss")
    not_applicable = {
        "nll": "an AE defines no density p(x): it has no prior and a deterministic code, so there is no likelihood to estimate",
        "kl": "an AE has no posterior q(z|x) and no prior, so there is no KL term (and no nelbo)",
    }

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 20,
                 hidden_dims: Sequence[int] = (400,), net: str = "mlp", recon_loss: str = "mse",
                 pixel_range: Sequence[float] = (0.0, 1.0)):
        super().__init__(image_shape, latent_dim, hidden_dims, net, recon_loss, pixel_range)
        self.fc_z = nn.Linear(self.encoder.out_features, latent_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_z(self.encoder(x))

    def posterior(self, x: torch.Tensor) -> Codes:
        return Codes(self.encode(x))

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        z = self.encode(x)
        return AutoencoderOutput(logits=self.decode(z), z=z)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.combine({"recon": self.likelihood.error(self(x).logits, x).mean()})

    def combine(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"recon": parts["recon"], "loss": parts["recon"]}

    def code_distribution(self, codes: Codes) -> CodeDistribution:
        # No prior: codes drawn from N(0, I) may lie far from any code the AE was trained on.
        mean, scale_tril = fitted_gaussian(codes.mu)
        return CodeDistribution("fitted_gaussian", mean, scale_tril,
                                "AE (no prior): decoded z ~ N(m, C), a Gaussian fitted to the mean and covariance of its test codes",
                                "std of the AE's codes")


class VAE(Autoencoder):
    """Variational autoencoder with a diagonal Gaussian q(z|x) and the prior N(0, I).

        loss  = recon + β · KL[q(z|x) ‖ N(0, I)]    what is optimised
        nelbo = recon + KL                           the β-free bound, so runs with different β compare
    """

    name = "vae"
    terms = ("recon", "kl", "loss", "nelbo")

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 20,
                 hidden_dims: Sequence[int] = (400,), net: str = "mlp", recon_loss: str = "mse",
                 pixel_range: Sequence[float] = (0.0, 1.0), beta: float = 1.0):
        super().__init__(image_shape, latent_dim, hidden_dims, net, recon_loss, pixel_range)
        self.beta = float(beta)
        self.fc_mu = nn.Linear(self.encoder.out_features, latent_dim)
        self.fc_var = nn.Linear(self.encoder.out_features, latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (B, latent_dim)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_var(h).clamp(LOGVAR_MIN, LOGVAR_MAX)

    def posterior(self, x: torch.Tensor) -> Codes:
        return Codes(*self.encode(x))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return AutoencoderOutput(logits=self.decode(z), z=z, mu=mu, logvar=logvar)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self(x)
        return self.combine({"recon": self.likelihood.error(out.logits, x).mean(), "kl": gaussian_kl(out.mu, out.logvar)})

    def combine(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        recon, kl = parts["recon"], parts["kl"]
        return {"recon": recon, "kl": kl, "loss": recon + self.beta * kl, "nelbo": recon + kl}

    def code_distribution(self, codes: Codes) -> CodeDistribution:
        d = codes.mu.shape[1]
        return CodeDistribution("prior", torch.zeros(d).to(codes.mu), torch.eye(d).to(codes.mu),
                                "decoded z ~ N(0, I), the VAE's prior", "prior std")

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images (pixel probabilities in [0, 1]) decoded from codes drawn from the prior."""
        z = torch.randn(n, self.latent_dim, device=self.fc_mu.weight.device)
        return self.likelihood.means(self.decode(z))
