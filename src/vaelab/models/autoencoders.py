"""Model types: the AE and the VAE. Each knows its loss terms, how they combine, and how its
codes are sampled; the LightningModule, the evaluation and the configs ask it instead of
testing its name.

Adding a model type: declare it in `MODEL_TYPES` (vaelab/catalog.py: its name, class, settings
and terms), subclass `Autoencoder` here (or in a file of its own in models/) with
`declared=MODEL_TYPES["<name>"]`, set `not_applicable`, implement `posterior`, `losses`,
`combine` and `code_distribution`, and write conf/model/<name>.yaml. Settings of its own (like
the VAE's `beta`) are keyword arguments of its constructor, the same names as its declaration's
`settings` (checked when the class is defined); the config checks refuse them for the model
types that do not take them.
It stacks (models/stack.py: N members trained as one module) with nothing written for it, as
long as `losses` draws its noise through `noise_shape` and reads settings that members may
differ in (`per_member`) from buffers.
"""

import inspect
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple, Optional

import torch
from torch import nn

from vaelab.catalog import FROM_DATA, MODEL_TYPES, ModelType
from vaelab.models.conv import ConvDecoder, ConvEncoder
from vaelab.models.decomposition import kl_decomposition
from vaelab.models.gated import GATED_MLP_WIDTHS, GatedMLPDecoder, GatedMLPEncoder
from vaelab.models.losses import Likelihood, gaussian_kl_per_dim
from vaelab.models.mlp import MLPDecoder, MLPEncoder
from vaelab.models.nets64 import (CONV64_CHANNELS, MLP1200_ENCODER, Conv64Decoder, Conv64Encoder, MLP1200Decoder,
                                  MLP1200Encoder)
from vaelab.models.objectives import log_prior_over_posterior
from vaelab.models.priors import (PseudoInputs, log_gaussian_mixture, log_posterior_from_noise, log_standard_normal,
                                  mixture_moments)
from vaelab.models.schedules import KLSchedule

# Adding a network: write its encoder/decoder pair in models/<name>.py, name it here and in
# vaelab.catalog.NETWORKS (the choices of model.net).
NETWORK_MODULES = {
    "mlp": (MLPEncoder, MLPDecoder),
    "conv": (ConvEncoder, ConvDecoder),
    "conv64": (Conv64Encoder, Conv64Decoder),  # disentanglement_lib's, 64×64 images only
    "mlp1200": (MLP1200Encoder, MLP1200Decoder),  # β-VAE's on dSprites (= β-TCVAE's), tanh decoder
    "gated_mlp": (GatedMLPEncoder, GatedMLPDecoder),  # the VampPrior paper's gated dense layers
}
# model.hidden_dims=null takes these: widths of the MLP's layers, channels of the conv net's.
# One 400-channel conv layer would give 78,400-wide heads (4.8 M parameters, minutes per CPU epoch).
# The published nets (models/nets64.py) have fixed widths: null gives theirs, any other value is refused.
DEFAULT_HIDDEN_DIMS = {"mlp": (400,), "conv": (32, 64), "conv64": CONV64_CHANNELS, "mlp1200": MLP1200_ENCODER,
                       "gated_mlp": GATED_MLP_WIDTHS}

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
    """Where a model's codes are drawn from to generate images: the Gaussian N(mean, L·Lᵀ), or, given
    `components`, the equal-weight mixture of N(μ_k, diag σ_k²) (a VampPrior), whose mean and
    covariance `mean` and L·Lᵀ then are (traversals step in its std)."""

    name: str  # "prior" or "fitted_gaussian": panels call the samples "<name>_samples"
    mean: torch.Tensor  # (d,)
    scale_tril: torch.Tensor  # (d, d) lower-triangular L
    caption: str  # what the samples are
    unit: str  # what one step of a traversal is
    components: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (K, d) μ_k and σ_k of a mixture

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(n, len(self.mean), generator=generator).to(self.mean)
        return self.from_noise(eps, generator)

    def from_noise(self, eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Codes from standard normal noise eps (n, d): mean + L·ε, or μ_k + σ_k·ε with k drawn uniformly
        from `generator` (a mixture)."""
        if self.components is None:
            return self.mean + eps @ self.scale_tril.T
        means, stds = self.components
        pick = torch.randint(len(means), (len(eps),), generator=generator).to(means.device)
        return means[pick] + stds[pick] * eps

    def std(self) -> torch.Tensor:
        """(d,) marginal standard deviations, sqrt(diag(L·Lᵀ))."""
        return self.scale_tril.pow(2).sum(dim=1).sqrt()


def cholesky_with_ridge(cov: torch.Tensor) -> torch.Tensor:
    """A Cholesky factor of `cov` (d, d); a small ridge keeps it defined when some dimensions never vary."""
    ridge = 1e-6 * (cov.diagonal().mean() + 1e-12) * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    return torch.linalg.cholesky(cov + ridge)


def fitted_gaussian(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and a Cholesky factor (d, d) of the codes' empirical covariance."""
    mean = codes.mean(dim=0)
    centred = codes - mean
    return mean, cholesky_with_ridge(centred.T @ centred / max(len(codes) - 1, 1))


class Autoencoder(nn.Module):
    """What every model type shares: an encoder network, a decoder, the likelihood p(x|z).

    Losses are batch means of per-image terms, each summed over pixels (recon) or latent
    dimensions (kl), so β means the same for every image and latent size.
    """

    name: ClassVar[str]
    terms: ClassVar[tuple[str, ...]]  # logged as {stage}/{term}, in this order; "loss" is optimised
    eval_terms: ClassVar[tuple[str, ...]] = ()  # logged after `terms` at validation and test only
    not_applicable: ClassVar[dict[str, str]] = {}  # evaluation terms this type has not, and why
    # Attributes in which the members of a stack (models/stack.py) may differ: each reaches the loss
    # as a buffer (one value per member) or is read on the host only (`advance`). A stack refuses
    # members that differ in any other setting: its one code path would use member 0's.
    per_member: ClassVar[tuple[str, ...]] = ()
    loss_from_means: bool = True  # `combine` makes `loss` from the mean terms (not so for the IWAE bound)

    def __init_subclass__(cls, declared: Optional[ModelType] = None, **kwargs):
        """`declared`: the model type's declaration (vaelab.catalog), whose name, terms and
        per_member the class takes; its constructor must take the declared settings."""
        super().__init_subclass__(**kwargs)
        if declared is None:
            return
        cls.name, cls.terms, cls.per_member = declared.name, declared.terms, declared.per_member
        cls.eval_terms = declared.eval_terms
        taken = set(inspect.signature(cls).parameters) - set(FROM_DATA)
        if taken != set(declared.settings):
            raise TypeError(f"{cls.__name__}'s constructor takes {', '.join(sorted(taken))}; its declaration "
                            f"(vaelab.catalog.MODEL_TYPES[{declared.name!r}]) says {', '.join(sorted(declared.settings))}")

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 20,
                 hidden_dims: Optional[Sequence[int]] = None, net: str = "mlp", recon_loss: str = "mse",
                 pixel_range: Sequence[float] = (0.0, 1.0), sigma: Optional[str] = None):
        super().__init__()
        self.latent_dim = latent_dim
        hidden_dims = list(DEFAULT_HIDDEN_DIMS[net] if hidden_dims is None else hidden_dims)
        encoder_cls, decoder_cls = NETWORK_MODULES[net]
        self.encoder = encoder_cls(tuple(image_shape), hidden_dims)
        self.decoder = decoder_cls(tuple(image_shape), hidden_dims, latent_dim)
        self.likelihood = Likelihood(recon_loss, pixel_range, sigma=sigma or "learned")

    def _init_heads(self, *heads: nn.Linear) -> None:
        """Draw the heads on the encoder's features as its net's reference does (default: nn.Linear's own)."""
        init_head = getattr(self.encoder, "init_head", None)
        for head in heads if init_head is not None else ():
            init_head(head)

    @classmethod
    def stage_terms(cls, stage: str) -> tuple[str, ...]:
        """The terms `losses` returns and the module logs at `stage`: `terms` while training (train),
        then `eval_terms` too at val and test (the model in eval mode)."""
        return cls.terms if stage == "train" else (*cls.terms, *cls.eval_terms)

    @classmethod
    def metric_names(cls, stages: Sequence[str] = ("train", "val", "test")) -> list[str]:
        return [f"{stage}/{term}" for stage in stages for term in cls.stage_terms(stage)]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def posterior(self, x: torch.Tensor) -> Codes:
        raise NotImplementedError

    def noise_shape(self, batch_size: int) -> Optional[tuple[int, ...]]:
        """The shape of the standard normal noise ε that `losses` draws for a batch; None: it draws none.

        A stack (models/stack.py) draws each member's ε from that member's own generator and hands it
        to `losses(x, eps)`, so a model type that draws noise takes it from `eps` when given.
        """
        return None

    def losses(self, x: torch.Tensor, eps: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Batch means of `terms` for images `x` in the data's pixel range (in eval mode, of
        `stage_terms("val")`); `eps`: see `noise_shape`."""
        raise NotImplementedError

    def use_train_size(self, n: int) -> None:
        """The number of training images (the data set whose aggregate posterior a model type may
        estimate, like the VAE's KL decomposition); the training module sets it from the data."""

    def combine(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All of `terms` from the measured parts (recon, and kl where there is one)."""
        raise NotImplementedError

    def code_distribution(self, codes: Codes) -> CodeDistribution:
        """Where this model's codes come from when it generates, given the codes `codes` of some data."""
        raise NotImplementedError

    def kl_per_dim(self, codes: Codes) -> Optional[torch.Tensor]:
        """(latent_dim,) each dimension's KL averaged over the codes' images, summing to the KL; None
        where the KL does not split over dimensions (no KL, or a prior that is not a product)."""
        return None

    def scheduled_values(self, step: int, steps_per_epoch: int) -> dict[str, float]:
        """Settings that change during training, at optimiser step `step` (logged as train/<name>)."""
        return {}

    @property
    def schedule_varies(self) -> bool:
        """Whether `advance` must run before each training step."""
        return False

    def advance(self, step: int, steps_per_epoch: int) -> None:
        """Set the scheduled settings for optimiser step `step` (in place: a captured CUDA graph reads them)."""


class AE(Autoencoder, declared=MODEL_TYPES["ae"]):
    """Deterministic autoencoder: z = f(x), x' = g(z), trained on the reconstruction alone."""

    not_applicable = {
        "nll": "an AE defines no density p(x): it has no prior and a deterministic code, so there is no likelihood to estimate",
        "kl": "an AE has no posterior q(z|x) and no prior, so there is no KL term (and no nelbo)",
    }

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 20,
                 hidden_dims: Optional[Sequence[int]] = None, net: str = "mlp", recon_loss: str = "mse",
                 pixel_range: Sequence[float] = (0.0, 1.0), sigma: Optional[str] = None):
        super().__init__(image_shape, latent_dim, hidden_dims, net, recon_loss, pixel_range, sigma)
        self.fc_z = nn.Linear(self.encoder.out_features, latent_dim)
        self._init_heads(self.fc_z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_z(self.encoder(x))

    def posterior(self, x: torch.Tensor) -> Codes:
        return Codes(self.encode(x))

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        z = self.encode(x)
        return AutoencoderOutput(logits=self.decode(z), z=z)

    def losses(self, x: torch.Tensor, eps: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        return self.combine({"recon": self.likelihood.error(self(x).logits, x).mean()})

    def combine(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"recon": parts["recon"], "loss": parts["recon"]}

    def code_distribution(self, codes: Codes) -> CodeDistribution:
        # No prior: codes drawn from N(0, I) may lie far from any code the AE was trained on.
        mean, scale_tril = fitted_gaussian(codes.mu)
        return CodeDistribution("fitted_gaussian", mean, scale_tril,
                                "AE (no prior): decoded z ~ N(m, C), a Gaussian fitted to the mean and covariance of its test codes",
                                "std of the AE's codes")


class VAE(Autoencoder, declared=MODEL_TYPES["vae"]):
    """Variational autoencoder with a diagonal Gaussian q(z|x) and the prior N(0, I) (prior=standard)
    or a VampPrior (prior=vamp: models/priors.py), p(z) = (1/K) Σ_k q(z|u_k) over K = pseudo_inputs
    learned pseudo-images u_k.

    Per image (batch means of each are logged), with KL_j the closed-form KL of latent dimension j:

        nelbo = recon + KL                    the one-sample, β-free bound: every run compares on it
        loss  = recon + β·f(t)·Σ_j KL_j        objective=elbo: what is optimised; f is the KL schedule
                recon + β·|Σ_j KL_j − C(t)|     kl_schedule=capacity (models/schedules.py)
        with free bits λ (Kingma et al. 2016), each KL_j in `loss` is max(λ, batch mean of KL_j):
        no gradient pushes a dimension's KL below λ nats, while `kl` and `nelbo` stay the true ones.

        objective=iwae (Burda et al. 2015), z_i = μ + σ·ε_i, i = 1..k:
        loss  = −log (1/k) Σ_i exp(−recon(z_i) + β·f(t)·[log p(z_i) − log q(z_i|x)])
                the k-sample bound (β = 1: a tighter bound on −log p(x) than nelbo; k = 1: the ELBO
                with a sampled KL); recon, kl and nelbo are those of the first sample.

        objective=tcvae (β-TCVAE, Chen et al. 2018), the KL split into its parts (models/decomposition.py):
        loss  = recon + f(t)·(α·mi + β·tc + γ·dwkl)
                mi: index-code mutual information, tc: total correlation, dwkl: dimension-wise KL,
                estimated on the batch by minibatch stratified sampling from the training set's
                size N (`use_train_size`); α = γ = 1 weigh mi and dwkl as the ELBO does, so β weighs
                the TC alone. A KL schedule's f(t) scales all three weights; free bits and the
                capacity schedule, which act on the analytic KL, are refused.

    Every objective logs mi, tc and dwkl at validation and test (`eval_terms`): their sum is the
    one-sample KL log q(z|x) − log p(z) of the sample that was decoded, the expectation of `kl`.

    With prior=vamp the KL has no closed form: `kl` is the one-sample estimate log q(z|x) − log p(z)
    of the decoded sample (as the VampPrior paper trains), log p(z) − log q(z|x) in the IWAE weights
    and eval.py's NLL is the mixture's, and dwkl is E[Σ_j log q(z_j) − log p(z)] (a prior that is
    not a product has no dimension-wise KL; the three still add up to the sampled KL). Free bits,
    which floor each dimension's analytic KL, are refused.
    """

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 20,
                 hidden_dims: Optional[Sequence[int]] = None, net: str = "mlp", recon_loss: str = "mse",
                 pixel_range: Sequence[float] = (0.0, 1.0), sigma: Optional[str] = None, beta: float = 1.0,
                 objective: str = "elbo", k: int = 1, free_bits: float = 0.0, kl_schedule: str = "constant",
                 kl_period: float = 10.0, kl_period_unit: str = "epoch", kl_cycles: int = 4, kl_ratio: float = 0.5,
                 kl_capacity: float = 25.0, alpha: float = 1.0, gamma: float = 1.0, prior: str = "standard",
                 pseudo_inputs: int = 500):
        super().__init__(image_shape, latent_dim, hidden_dims, net, recon_loss, pixel_range, sigma)
        self.beta = float(beta)
        self.alpha, self.gamma = float(alpha), float(gamma)
        self.objective = objective
        self.k = int(k) if objective == "iwae" else 1
        self.free_bits = float(free_bits)
        self.schedule = KLSchedule(kl_schedule, float(kl_period), kl_period_unit, int(kl_cycles), float(kl_ratio),
                                   float(kl_capacity))
        if objective == "tcvae" and (self.free_bits > 0 or self.schedule.kind == "capacity"):
            raise ValueError("objective=tcvae weighs the KL's parts (mi, tc, dwkl): free bits and the capacity "
                             "schedule act on the analytic KL, so they take free_bits=0 and another kl_schedule")
        self.prior = prior
        if prior == "vamp" and self.free_bits > 0:
            raise ValueError("prior=vamp has no per-dimension KL for free bits to floor: it takes free_bits=0")
        self.fc_mu = nn.Linear(self.encoder.out_features, latent_dim)
        self.fc_var = nn.Linear(self.encoder.out_features, latent_dim)
        self._init_heads(self.fc_mu, self.fc_var)
        self.logvar_range = getattr(self.encoder, "logvar_range", (LOGVAR_MIN, LOGVAR_MAX))
        # Drawn after the networks: a standard-prior model of the same seed keeps its weights.
        self.prior_inputs = PseudoInputs(int(pseudo_inputs), image_shape, pixel_range) if prior == "vamp" else None
        # The KL's settings as tensors, read by the loss without a Python branch: a stack (models/stack.py)
        # runs this code once for all its members, each with its own values. float32 (MPS has no
        # float64): a float32 loss multiplied by one gives what the Python float gave, bit for bit;
        # eval.py's float64 sums see β rounded to float32 (≤ 6e-8 relative). Settings, not state: the
        # constructor's arguments rebuild them, so they are not saved with the weights.
        capacity = self.schedule.kind == "capacity"
        self.register_buffer("kl_floor", torch.tensor(self.free_bits), persistent=False)
        self.register_buffer("kl_is_capacity", torch.tensor(capacity), persistent=False)
        self.register_buffer("kl_weight_end", torch.tensor(self.beta), persistent=False)
        self.register_buffer("kl_target_end", torch.tensor(self.schedule.capacity if capacity else 0.0), persistent=False)
        # β·f(t) and C(t) while training: `advance` fills them in place before each step, so that a
        # replayed CUDA graph reads the new values (a Python float would be recorded once, as a constant).
        at_start = self.scheduled_values(0, 1)
        self.register_buffer("kl_weight", torch.tensor(at_start["beta"]), persistent=False)
        self.register_buffer("kl_target", torch.tensor(at_start.get("capacity", 0.0)), persistent=False)
        # objective=tcvae: (α, β, γ), and f(t)·(α, β, γ) while training (filled by `advance`).
        parts = torch.tensor([self.alpha, self.beta, self.gamma])
        self.register_buffer("kl_part_weights_end", parts, persistent=False)
        self.register_buffer("kl_part_weights", parts * self.schedule.weight(0, 1), persistent=False)
        # N, the training set's size, for the decomposition's estimator (0: unknown, the batch counts as the
        # data set). Set from the data by the training module and kept in its checkpoints (`use_train_size`).
        self.register_buffer("train_size", torch.tensor(0.0), persistent=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (B, latent_dim)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_var(h).clamp(*self.logvar_range)

    def posterior(self, x: torch.Tensor) -> Codes:
        return Codes(*self.encode(x))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z = μ + σ·ε, ε ~ N(0, I) drawn here from the global generator unless given."""
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std) if eps is None else eps
        return mu + eps * std

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        shape = (batch_size, self.latent_dim)
        return (self.k, *shape) if self.objective == "iwae" else shape

    def forward(self, x: torch.Tensor, eps: Optional[torch.Tensor] = None) -> AutoencoderOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, eps)
        return AutoencoderOutput(logits=self.decode(z), z=z, mu=mu, logvar=logvar)

    # -- the schedule -----------------------------------------------------------------------------
    def scheduled_values(self, step: int, steps_per_epoch: int) -> dict[str, float]:
        values = {"beta": self.beta * self.schedule.weight(step, steps_per_epoch)}
        if self.schedule.kind == "capacity":
            values["capacity"] = self.schedule.target(step, steps_per_epoch)
        return values

    @property
    def schedule_varies(self) -> bool:
        return self.schedule.varies

    def advance(self, step: int, steps_per_epoch: int) -> None:
        if self.schedule.varies:
            values = self.scheduled_values(step, steps_per_epoch)
            self.kl_weight.fill_(values["beta"])
            self.kl_target.fill_(values.get("capacity", 0.0))
            self.kl_part_weights.copy_(self.kl_part_weights_end * self.schedule.weight(step, steps_per_epoch))

    def use_train_size(self, n: int) -> None:
        self.train_size.fill_(float(n))

    # -- the prior --------------------------------------------------------------------------------
    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """prior=vamp: (K, latent_dim) means and log-variances of q(z|u_k), the prior's components."""
        return self.encode(self.prior_inputs())

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of codes (..., latent_dim), summed over the latent dimensions."""
        if self.prior_inputs is None:
            return log_standard_normal(z)
        return log_gaussian_mixture(z, *self.prior_components())

    def log_prior_over_posterior(self, z: torch.Tensor, eps: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """log p(z) − log q(z|x) at z = μ + σ·ε, summed over the latent dimensions; broadcasts over leading
        sample dimensions. N(0, I): the log 2π terms cancel (objectives.py)."""
        if self.prior_inputs is None:
            return log_prior_over_posterior(z, eps, logvar)
        return self.log_prior(z) - log_posterior_from_noise(eps, logvar)

    def _kl_weight_and_target(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """β·f(t) and C(t) while training; the values the schedule ends at otherwise; as `like`'s dtype and device."""
        weight, target = (self.kl_weight, self.kl_target) if self.training else (self.kl_weight_end, self.kl_target_end)
        return weight.to(like), target.to(like)

    # -- the objective ----------------------------------------------------------------------------
    def kl_penalty(self, kl_per_dim: torch.Tensor) -> torch.Tensor:
        """The KL part of `loss` from the batch means of each dimension's KL, (latent_dim,)."""
        # Clamped only where λ > 0: a clamp at 0 would cut the gradient of a rounding-negative KL.
        floor = self.kl_floor.to(kl_per_dim)
        kl = torch.where(floor > 0, kl_per_dim.clamp_min(floor), kl_per_dim).sum()
        weight, target = self._kl_weight_and_target(kl)
        return weight * torch.where(self.kl_is_capacity.to(kl.device), (kl - target).abs(), kl)

    def tc_penalty(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """objective=tcvae: the KL part of `loss`, f(t)·(α·mi + β·tc + γ·dwkl) (the schedule's end values
        outside training)."""
        weights = (self.kl_part_weights if self.training else self.kl_part_weights_end).to(parts["tc"])
        return weights[0] * parts["mi"] + weights[1] * parts["tc"] + weights[2] * parts["dwkl"]

    @property
    def _decomposes(self) -> bool:
        """Whether `losses` estimates mi, tc and dwkl: always for tcvae, which trains on them; else at evaluation."""
        return self.objective == "tcvae" or not self.training

    def _stage_losses(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {term: terms[term] for term in self.stage_terms("train" if self.training else "val")}

    def losses(self, x: torch.Tensor, eps: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        if self.objective == "iwae":
            return self.iwae_losses(x, self.k, eps)
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu) if eps is None else eps  # the draw that reparameterize would make
        z = self.reparameterize(mu, logvar, eps)
        parts = {"recon": self.likelihood.error(self.decode(z), x).mean()}
        log_pz = None if self.prior_inputs is None else self.log_prior(z)
        if log_pz is None:
            parts["kl_per_dim"] = gaussian_kl_per_dim(mu, logvar).mean(dim=0)
        else:  # no closed form: the sample's log q(z|x) − log p(z)
            parts["kl"] = (log_posterior_from_noise(eps, logvar) - log_pz).mean()
        if self._decomposes:
            parts.update(kl_decomposition(z, eps, mu, logvar, self.train_size, log_pz))
        return self._stage_losses(self.combine(parts))

    def iwae_losses(self, x: torch.Tensor, k: int, eps: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """The terms with `loss` the k-sample importance-weighted bound (see the class docstring)."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn((k, *mu.shape), dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, latent_dim)
        logits = self.decode(z.flatten(0, 1))
        recon = self.likelihood.error(logits, x.expand(k, *x.shape).flatten(0, 1)).view(k, -1)  # (k, B)
        weight, _ = self._kl_weight_and_target(recon)
        log_ratio = self.log_prior_over_posterior(z, eps, logvar)  # (k, B)
        log_w = -recon + weight * log_ratio
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)
        if self.prior_inputs is None:
            kl = gaussian_kl_per_dim(mu, logvar).sum(dim=1).mean()
        else:  # the first sample's, as recon
            kl = -log_ratio[0].mean()
        first = recon[0].mean()
        terms = {"recon": first, "kl": kl, "loss": -bound.mean(), "nelbo": first + kl}
        if self._decomposes:  # of the first sample, as recon and kl
            log_pz = None if self.prior_inputs is None else self.log_prior(z[0])
            terms.update(kl_decomposition(z[0], eps[0], mu, logvar, self.train_size, log_pz))
        return self._stage_losses(terms)

    @property
    def loss_from_means(self) -> bool:
        """Whether `combine` gets `loss` from the mean recon and KL alone (not for the IWAE bound, nor
        for tcvae, whose parts are estimated per batch)."""
        return self.objective == "elbo"

    def combine(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """From recon and either kl or kl_per_dim (the batch means of each dimension's KL);
        free bits need kl_per_dim. The IWAE bound cannot be built from means: see iwae_losses.
        Given mi, tc and dwkl (a batch's: models/decomposition.py), they follow, and tcvae's loss
        weighs them; without them tcvae's `loss` here is the ELBO's (eval.py takes `losses`' own)."""
        recon = parts["recon"]
        kl_per_dim = parts.get("kl_per_dim")
        kl = kl_per_dim.sum() if kl_per_dim is not None else parts["kl"]
        decomposed = all(term in parts for term in self.eval_terms)
        if self.objective == "tcvae" and decomposed:
            penalty = self.tc_penalty(parts)
        else:
            penalty = self.kl_penalty(kl_per_dim if kl_per_dim is not None else kl.reshape(1))
        terms = {"recon": recon, "kl": kl, "loss": recon + penalty, "nelbo": recon + kl}
        if decomposed:
            terms.update({term: parts[term] for term in self.eval_terms})
        return terms

    def kl_per_dim(self, codes: Codes) -> Optional[torch.Tensor]:
        if self.prior_inputs is not None:
            return None
        return gaussian_kl_per_dim(codes.mu, codes.logvar).mean(dim=0)

    def code_distribution(self, codes: Codes) -> CodeDistribution:
        return self.prior_distribution()

    @torch.no_grad()
    def prior_distribution(self) -> CodeDistribution:
        """p(z): N(0, I), or the VampPrior's mixture with its mean and covariance."""
        d, like = self.latent_dim, self.fc_mu.weight
        if self.prior_inputs is None:
            return CodeDistribution("prior", torch.zeros(d).to(like), torch.eye(d).to(like),
                                    "decoded z ~ N(0, I), the VAE's prior", "prior std")
        means, logvars = self.prior_components()
        mean, cov = mixture_moments(means, logvars)
        return CodeDistribution("prior", mean, cholesky_with_ridge(cov),
                                f"decoded z ~ VampPrior, (1/K) Σ_k q(z|u_k) over its K = {len(means)} pseudo-inputs",
                                "prior std", components=(means, torch.exp(0.5 * logvars)))

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n images (pixel means in [0, 1]) decoded from codes drawn from the prior (with `generator`,
        on the CPU; default: the global one)."""
        generator = generator if generator is not None else torch.default_generator
        z = self.prior_distribution().sample(n, generator)
        return self.likelihood.means(self.decode(z))
