"""Disentanglement metrics of a representation against known factors of variation, as
google-research/disentanglement_lib computes them (`evaluation/metrics/*.py`, with the sizes and
settings of `config/unsupervised_study_v1/metric_configs/*.gin`; Locatello et al. 2019).

The representation is a function from images (uint8, as the data module stores them) to codes;
eval passes the model's mean code μ(x) (`mean_codes`). The factors come from a ground truth
(vaelab.data.factors.GroundTruth): `factor_sizes`, `sample_factors(n, generator)` (uniform over
the factor grid), `images(factors)`.

| metric | reference | what it measures |
|---|---|---|
| mig | Chen et al. 2018 (β-TCVAE) | mean over factors of (I(z_top1; v_k) − I(z_top2; v_k)) / H(v_k), codes in 20 equal-width bins |
| sap | Kumar et al. 2018 (DIP-VAE) | mean over factors of the gap between the two best single-latent LinearSVC accuracies |
| dci | Eastwood & Williams 2018 | gradient-boosted trees' importances: disentanglement, completeness; informativeness = test accuracy |
| factor_vae | Kim & Mnih 2018 | majority-vote accuracy of "which latent varies least when factor k is fixed" |
| beta_vae | Higgins et al. 2017 | logistic-regression accuracy of "which factor is shared" from mean |z1 − z2| |
| modularity | Ridgeway & Zemel 2018 | 1 − (Σ_k m_jk² − max_k m_jk²)/(max_k m_jk² (K − 1)) per latent, m the binned MI; explicitness: ROC-AUC of a logistic regression per factor |

Each metric draws its own samples from a generator seeded by (seed, metric), so its number does
not depend on which other metrics run (up to float rounding: the metrics share `GridCodes`, so an
image's code may come from another batch). Where disentanglement_lib leaves an sklearn estimator's
random_state unset (LinearSVC, GradientBoostingClassifier, LogisticRegression), it is set here from
the seed, so that every number is reproducible.
"""

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch

from vaelab.catalog import DISENTANGLEMENT_METRICS as METRICS
from vaelab.evaluation.latent import batches

log = logging.getLogger(__name__)

# The numbers each metric leaves in eval.json, as disentanglement/<key>.
KEYS = {"mig": ("mig",), "sap": ("sap",),
        "dci": ("dci_disentanglement", "dci_completeness", "dci_informativeness"),
        "factor_vae": ("factor_vae",), "beta_vae": ("beta_vae",), "modularity": ("modularity", "explicitness")}
NUM_BINS = 20  # discretizer.num_bins (mig.gin, modularity_explicitness.gin): equal-width histogram bins per latent
SAP_C = 0.01  # sap_score.py: svm.LinearSVC(C=0.01, class_weight="balanced"), discrete factors
PRUNE_STD = 0.05  # prune_dims.threshold: FactorVAE's votes skip latents whose std over the data is below it
CHUNK = 4096  # images rendered and encoded at once: bounds memory (64×64 uint8: 16 MB)
NO_FACTORS = "the data set has no known factors of variation"


@dataclass(frozen=True)
class Sizes:
    """How many points each metric draws; the defaults are disentanglement_lib's."""

    points: int = 10_000  # mig.num_train, modularity num_train, factor_vae num_variance_estimate
    train: int = 10_000  # sap, dci num_train; factor_vae, beta_vae num_train (votes, pairs of batches)
    test: int = 5_000  # sap, dci, modularity num_test; factor_vae, beta_vae num_eval
    batch: int = 64  # factor_vae, beta_vae batch_size: images per vote / per pair set


def metric_keys(metrics: Sequence[str] = METRICS) -> list[str]:
    """eval.json's keys of the numbers of `metrics`."""
    return [f"disentanglement/{key}" for name in metrics for key in KEYS[name]]


def protocol(sizes: Sizes, metrics: Sequence[str], seed: int) -> dict[str, Any]:
    """What was computed and how: eval.json's disentanglement/protocol."""
    import sklearn

    s = sizes
    every = {
        "mig": {"points": s.points, "discretizer": f"{NUM_BINS} equal-width bins per latent (np.histogram edges)",
                "mutual_information": "sklearn.metrics.mutual_info_score, nats",
                "score": "mean_k (I_top1 - I_top2) / H(v_k)"},
        "sap": {"train": s.train, "test": s.test, "classifier": f"LinearSVC(C={SAP_C}, class_weight='balanced') "
                "per (latent, factor)", "score": "mean_k of the gap between the two best test accuracies"},
        "dci": {"train": s.train, "test": s.test, "classifier": "GradientBoostingClassifier() per factor",
                "importance": "feature_importances_", "informativeness": "mean test accuracy"},
        "factor_vae": {"variance_points": s.points, "train_votes": s.train, "eval_votes": s.test,
                       "batch": s.batch, "prune_std": PRUNE_STD, "score": "eval accuracy of the majority vote"},
        "beta_vae": {"train_points": s.train, "eval_points": s.test, "batch": s.batch,
                     "classifier": "LogisticRegression()", "score": "eval accuracy"},
        "modularity": {"points": s.points, "test": s.test, "discretizer": f"{NUM_BINS} equal-width bins per latent",
                       "explicitness": "LogisticRegression() per factor on standardised codes, macro ROC-AUC on test"},
    }
    return {"reference": "google-research/disentanglement_lib, unsupervised_study_v1 metric configs",
            "representation": "the mean code mu(x)", "seed": seed, "sklearn": sklearn.__version__,
            "sizes": asdict(sizes), "estimators_random_state": "set from the seed (disentanglement_lib leaves it unset)",
            "metrics": {name: every[name] for name in metrics}}


# -- the representation and the samples -----------------------------------------------------------

Representation = Callable[[torch.Tensor], np.ndarray]  # uint8 images (n, C, H, W) -> float64 codes (n, D)


def mean_codes(model: torch.nn.Module, datamodule, device: torch.device, batch_size: int) -> Representation:
    """μ(x) of the model, the images turned into the model's input by the data module's own
    `on_after_batch_transfer` (floats in pixel_range), `batch_size` at a time."""

    @torch.no_grad()
    def represent(images: torch.Tensor) -> np.ndarray:
        parts = []
        for part in batches(len(images), batch_size):
            x, _ = datamodule.on_after_batch_transfer((images[part].to(device), None), 0)
            parts.append(model.posterior(x).mu.double().cpu())
        return torch.cat(parts).numpy()

    return represent


def encode_factors(ground_truth, represent: Representation, factors: torch.Tensor) -> np.ndarray:
    """Codes (n, D) of the images of `factors` (n, K), rendered and encoded CHUNK at a time."""
    return np.concatenate([represent(ground_truth.images(factors[part])) for part in batches(len(factors), CHUNK)])


MAX_CACHED_IMAGES = 4_000_000  # a grid of at most this many images has its codes cached (dSprites: 737,280)


class GridCodes:
    """A representation of a grid's images that renders and encodes each image once, keeping its
    code by flat grid index (GroundTruth.index). The images are a fixed function of the factors
    and so is μ(x), so this changes no number; it saves time: at the protocol's sizes FactorVAE and
    β-VAE draw about 2.9 million images, most of them more than once from dSprites' 737,280."""

    def __init__(self, ground_truth, represent: Representation):
        self.ground_truth, self.represent = ground_truth, represent
        self.known = np.zeros(ground_truth.num_images, dtype=bool)
        self.codes: Optional[np.ndarray] = None  # (num_images, D), allocated at the first codes

    def __call__(self, factors: torch.Tensor) -> np.ndarray:
        index = self.ground_truth.index(factors).numpy()
        missing = np.unique(index[~self.known[index]])
        if len(missing):
            fresh = encode_factors(self.ground_truth, self.represent, self.ground_truth.factors_of(torch.from_numpy(missing)))
            if self.codes is None:
                self.codes = np.zeros((len(self.known), fresh.shape[1]))
            self.codes[missing] = fresh
            self.known[missing] = True
        return self.codes[index]


def codes_of(ground_truth, represent: Representation) -> Callable[[torch.Tensor], np.ndarray]:
    """factors (n, K) → codes (n, D): through a GridCodes when the grid is small enough to keep."""
    if hasattr(ground_truth, "index") and getattr(ground_truth, "num_images", math.inf) <= MAX_CACHED_IMAGES:
        return GridCodes(ground_truth, represent)
    return lambda factors: encode_factors(ground_truth, represent, factors)


Encoder = Callable[[torch.Tensor], np.ndarray]  # factor indices (n, K) -> codes (n, D) of their images


def sample_codes(ground_truth, encode: Encoder, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` factor vectors drawn uniformly and the codes of their images: (n, D) codes, (n, K) factors."""
    factors = ground_truth.sample_factors(n, generator)
    return encode(factors), factors.numpy()


# -- the metrics, on codes and factors (numpy) --------------------------------------------------------

def histogram_discretize(codes: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """disentanglement_lib's _histogram_discretize: each latent into `num_bins` equal-width bins
    between its min and max, bin indices 1..num_bins. codes (n, D) -> (n, D) int."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        out[:, j] = np.digitize(codes[:, j], np.histogram(codes[:, j], num_bins)[1][:-1])
    return out


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(D, K) I(z_j; v_k) in nats (sklearn.metrics.mutual_info_score)."""
    from sklearn.metrics import mutual_info_score

    return np.array([[mutual_info_score(factors[:, k], discrete_codes[:, j]) for k in range(factors.shape[1])]
                     for j in range(discrete_codes.shape[1])])


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """(K,) H(v_k) in nats, as disentanglement_lib computes it: I(v_k; v_k)."""
    from sklearn.metrics import mutual_info_score

    return np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])


def mig(codes: np.ndarray, factors: np.ndarray) -> dict[str, Any]:
    """Mutual information gap; also the (D, K) mutual information and H(v_k) it is computed from."""
    m = discrete_mutual_info(histogram_discretize(codes), factors)
    entropy = discrete_entropy(factors)
    ranked = np.sort(m, axis=0)[::-1]
    second = ranked[1] if len(ranked) > 1 else np.zeros_like(ranked[0])  # one latent: no second best
    return {"mig": float(np.mean((ranked[0] - second) / entropy)), "mutual_information": m, "entropy": entropy}


def sap(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
        seed: int) -> dict[str, Any]:
    """SAP score with discrete factors: a LinearSVC per (latent, factor) on that latent alone,
    its test accuracy; the mean over factors of the best minus the second best."""
    from sklearn.svm import LinearSVC

    d, k = codes.shape[1], factors.shape[1]
    score = np.zeros((d, k))
    for i in range(d):
        for j in range(k):
            classifier = LinearSVC(C=SAP_C, class_weight="balanced", random_state=seed)
            classifier.fit(codes[:, i:i + 1], factors[:, j])
            score[i, j] = np.mean(classifier.predict(codes_test[:, i:i + 1]) == factors_test[:, j])
    ranked = np.sort(score, axis=0)
    second = ranked[-2] if d > 1 else np.zeros_like(ranked[-1])
    return {"sap": float(np.mean(ranked[-1] - second)), "score_matrix": score}


def _entropy(p: np.ndarray, base: int) -> np.ndarray:
    """scipy.stats.entropy(p, base=base) along axis 0: p normalised to sum 1 per column."""
    p = p / p.sum(axis=0, keepdims=True)
    return -(p * np.log(p)).sum(axis=0) / np.log(base)


def dci_scores(importance: np.ndarray) -> tuple[float, float]:
    """Disentanglement and completeness of an importance matrix R (D latents, K factors), as
    dci.py: D = Σ_j ρ_j (1 − H_K(P_j·)), ρ_j = Σ_k R_jk / Σ R; C = Σ_k ρ_k (1 − H_D(P_·k))."""
    d, k = importance.shape
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    per_code = 1.0 - _entropy(importance.T + 1e-11, base=k) if k > 1 else np.ones(d)
    per_factor = 1.0 - _entropy(importance + 1e-11, base=d) if d > 1 else np.ones(k)
    code_weight = weights.sum(axis=1) / weights.sum()
    factor_weight = weights.sum(axis=0) / weights.sum()
    return float(np.sum(per_code * code_weight)), float(np.sum(per_factor * factor_weight))


def dci(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
        seed: int) -> dict[str, Any]:
    """DCI with gradient-boosted trees (sklearn defaults), one classifier per factor."""
    from sklearn.ensemble import GradientBoostingClassifier

    importance = np.zeros((codes.shape[1], factors.shape[1]))
    accuracy = []
    for j in range(factors.shape[1]):
        model = GradientBoostingClassifier(random_state=seed).fit(codes, factors[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        accuracy.append(np.mean(model.predict(codes_test) == factors_test[:, j]))
    disentanglement, completeness = dci_scores(importance)
    return {"dci_disentanglement": disentanglement, "dci_completeness": completeness,
            "dci_informativeness": float(np.mean(accuracy)), "importance": importance}


def modularity_score(mutual_information: np.ndarray) -> float:
    """Ridgeway & Zemel's modularity from the (D, K) mutual information, as disentanglement_lib
    computes it: per latent 1 − (Σ_k m² − max m²)/(max m² · (K − 1)), 0 for a latent with no
    information; the mean over latents."""
    squared = np.square(mutual_information)
    top = squared.max(axis=1)
    k = squared.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 1.0 - (squared.sum(axis=1) - top) / (top * (k - 1.0))
    score[top == 0.0] = 0.0
    return float(np.mean(score))


def explicitness(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
                 seed: int) -> float:
    """Mean over factors of the test ROC-AUC (macro over the factor's values, one against the
    rest) of a logistic regression on the codes, standardised with the training codes' mean and
    std. Values that the test points lack are left out of the macro average (disentanglement_lib's
    MultiLabelBinarizer fails on them; with its 5,000 test points every value is there)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    mean, std = codes.mean(axis=0), codes.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant latent: left at 0 rather than nan
    train, test = (codes - mean) / std, (codes_test - mean) / std
    scores = []
    for j in range(factors.shape[1]):
        classifier = LogisticRegression(random_state=seed).fit(train, factors[:, j])
        truth = (factors_test[:, j][:, None] == classifier.classes_[None, :]).astype(int)
        # The values seen among the test points (all, at the protocol's 5,000): a value never seen has no ROC-AUC.
        seen = truth.any(axis=0) & ~truth.all(axis=0)
        scores.append(roc_auc_score(truth[:, seen], classifier.predict_proba(test)[:, seen]))
    return float(np.mean(scores))


# -- the sampled metrics: FactorVAE and β-VAE votes ------------------------------------------------------

def _fixed_factor_batches(ground_truth, n: int, batch: int, generator: torch.Generator,
                          pairs: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """n groups of `batch` factor vectors sharing factor k_i (drawn uniformly): FactorVAE's
    (all of a group share the value of one of them), or β-VAE's pairs (the second half shares
    factor k with the first, pair by pair). Returns k (n,), factors (n, batch, K), second (n, batch, K) or None."""
    sizes = len(ground_truth.factor_sizes)
    index = torch.randint(sizes, (n,), generator=generator)
    first = ground_truth.sample_factors(n * batch, generator).view(n, batch, sizes)
    rows = torch.arange(n)
    if not pairs:
        first[rows, :, index] = first[rows, 0, index][:, None]
        return index, first, None
    second = ground_truth.sample_factors(n * batch, generator).view(n, batch, sizes)
    second[rows, :, index] = first[rows, :, index]
    return index, first, second


def _grouped_codes(encode: Encoder, factors: torch.Tensor) -> np.ndarray:
    n, batch, k = factors.shape
    return encode(factors.reshape(n * batch, k)).reshape(n, batch, -1)


GROUPS_AT_ONCE = 256  # votes (or pairs of batches) drawn and encoded together: 256 × 64 images


def factor_vae_votes(ground_truth, encode: Encoder, n: int, batch: int, generator: torch.Generator,
                     global_variances: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(K, n_active) votes: for each of `n` batches with one factor fixed, the active latent with
    the least variance (normalised by its variance over the data) votes for that factor."""
    votes = np.zeros((len(ground_truth.factor_sizes), int(active.sum())), dtype=np.int64)
    for part in batches(n, GROUPS_AT_ONCE):
        index, factors, _ = _fixed_factor_batches(ground_truth, part.stop - part.start, batch, generator, pairs=False)
        codes = _grouped_codes(encode, factors)
        local = codes.var(axis=1, ddof=1)[:, active] / global_variances[active]
        np.add.at(votes, (index.numpy(), local.argmin(axis=1)), 1)
    return votes


def factor_vae(ground_truth, encode: Encoder, sizes: Sizes, generator: torch.Generator) -> dict[str, Any]:
    codes, _ = sample_codes(ground_truth, encode, sizes.points, generator)
    global_variances = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_variances) >= PRUNE_STD
    if not active.any():
        return {"factor_vae": 0.0, "factor_vae_active_dims": 0}
    train = factor_vae_votes(ground_truth, encode, sizes.train, sizes.batch, generator, global_variances, active)
    classifier = train.argmax(axis=0)  # each active latent's majority factor
    columns = np.arange(train.shape[1])
    evaluation = factor_vae_votes(ground_truth, encode, sizes.test, sizes.batch, generator, global_variances, active)
    return {"factor_vae": float(evaluation[classifier, columns].sum() / evaluation.sum()),
            "factor_vae_train": float(train[classifier, columns].sum() / train.sum()),
            "factor_vae_active_dims": int(active.sum())}


def beta_vae_points(ground_truth, encode: Encoder, n: int, batch: int,
                    generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) features mean_b |z1 − z2| of `n` pairs of batches sharing one factor, and that factor (n,)."""
    features, labels = [], []
    for part in batches(n, GROUPS_AT_ONCE):
        index, first, second = _fixed_factor_batches(ground_truth, part.stop - part.start, batch, generator, pairs=True)
        z1, z2 = _grouped_codes(encode, first), _grouped_codes(encode, second)
        features.append(np.abs(z1 - z2).mean(axis=1))
        labels.append(index.numpy())
    return np.concatenate(features), np.concatenate(labels)


def beta_vae(ground_truth, encode: Encoder, sizes: Sizes, generator: torch.Generator,
             seed: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    train, train_labels = beta_vae_points(ground_truth, encode, sizes.train, sizes.batch, generator)
    model = LogisticRegression(random_state=seed).fit(train, train_labels)
    test, test_labels = beta_vae_points(ground_truth, encode, sizes.test, sizes.batch, generator)
    return {"beta_vae": float(model.score(test, test_labels)), "beta_vae_train": float(model.score(train, train_labels))}


# -- all of them ------------------------------------------------------------------------------------------

def metric_seed(seed: int, name: str) -> int:
    """The seed of metric `name`'s own generator: independent of which other metrics run."""
    return int(np.random.SeedSequence([seed, METRICS.index(name)]).generate_state(1)[0])


def compute(ground_truth, represent: Representation, sizes: Sizes = Sizes(), seed: int = 0,
            metrics: Sequence[str] = METRICS) -> tuple[dict[str, Any], dict[str, float], list[str]]:
    """The metrics `metrics` of the representation. Returns (numbers and matrices by name,
    seconds per metric, the distinct warnings sklearn gave, e.g. a classifier that did not converge)."""
    for name in metrics:
        if name not in METRICS:
            raise ValueError(f"{name} is not a disentanglement metric; they are {', '.join(METRICS)}")
    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    encode = codes_of(ground_truth, represent)  # shared: an image drawn by two metrics is encoded once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in metrics:
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(metric_seed(seed, name))
            estimator_seed = metric_seed(seed, name) % 2**31
            if name == "factor_vae":
                out.update(factor_vae(ground_truth, encode, sizes, generator))
            elif name == "beta_vae":
                out.update(beta_vae(ground_truth, encode, sizes, generator, estimator_seed))
            elif name == "mig":
                out.update(mig(*sample_codes(ground_truth, encode, sizes.points, generator)))
            else:
                first = sample_codes(ground_truth, encode, sizes.points if name == "modularity" else sizes.train, generator)
                test = sample_codes(ground_truth, encode, sizes.test, generator)
                if name == "sap":
                    out.update(sap(*first, *test, seed=estimator_seed))
                elif name == "dci":
                    out.update(dci(*first, *test, seed=estimator_seed))
                else:  # modularity (and explicitness), from the binned mutual information of the points
                    m = discrete_mutual_info(histogram_discretize(first[0]), first[1])
                    out.update({"modularity": modularity_score(m), "explicitness": explicitness(*first, *test, seed=estimator_seed)})
                    if "mutual_information" not in out:  # MIG's when it ran, else this one (the same estimate)
                        out.update(mutual_information=m, entropy=discrete_entropy(first[1]))
            seconds[name] = time.perf_counter() - start
            log.debug("disentanglement: %s in %.1f s", name, seconds[name])
    found = list(dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught))
    return out, seconds, found
