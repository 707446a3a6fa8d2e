"""The disentanglement metrics (vaelab.evaluation.disentanglement) on representations whose answer
is known: codes equal to the factors, codes that mix the factors by a rotation, random codes.
MIG and DCI are checked against second implementations written here from the papers' formulas
(numpy only); eval's disentanglement=auto/true/false on MNIST, which has no known factors, runs
in this process through the entry point."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import run_entry_point_in_process
from vaelab.data.factors import GroundTruth
from vaelab.evaluation import disentanglement as dis

SIZES = dis.Sizes(points=3000, train=2000, test=1000, batch=32)  # small: seconds, not minutes


class IndexImages(GroundTruth):
    """Factors → images by a fixed map: a 1 × K uint8 image holding the factor indices."""

    def __init__(self, sizes=(4, 5, 6)):
        self.factor_sizes = tuple(sizes)
        self.factor_names = tuple(f"f{k}" for k in range(len(sizes)))

    def images(self, factors):
        return factors.to(torch.uint8).view(len(factors), 1, 1, -1)

    def factor_values(self, factors):
        return factors.double()


def factors_of(images: torch.Tensor) -> np.ndarray:
    return images.reshape(len(images), -1).double().numpy()


def rotation(k: int, angle: float = math.pi / 4) -> np.ndarray:
    """Mixes factor 2i with 2i+1 by `angle` (a last odd factor stays)."""
    r = np.eye(k)
    c, s = math.cos(angle), math.sin(angle)
    for i in range(0, k - 1, 2):
        r[i:i + 2, i:i + 2] = [[c, -s], [s, c]]
    return r


def random_codes(images: torch.Tensor) -> np.ndarray:
    """Codes independent of the factors (seeded by the batch, so deterministic)."""
    return np.random.default_rng(int(images.sum()) + len(images)).normal(size=(len(images), 3))


# -- second implementations, from the papers -----------------------------------------------------

def plug_in_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats of two discrete samples, from their joint histogram."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    seen = joint > 0
    return float((joint[seen] * np.log(joint[seen] / outer[seen])).sum())


def equal_width_bins(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each latent into `bins` equal-width bins between its min and max (the max in the last)."""
    low, high = codes.min(0), codes.max(0)
    return np.clip(np.floor((codes - low) / (high - low) * bins), 0, bins - 1).astype(int)


def mig_from_the_paper(codes: np.ndarray, factors: np.ndarray) -> float:
    """Chen et al. 2018, eq. 6 with the 20-bin codes: mean_k (I(z_j(k); v_k) − max_{j≠j(k)} I(z_j; v_k)) / H(v_k)."""
    z = equal_width_bins(codes)
    gaps = []
    for k in range(factors.shape[1]):
        info = sorted((plug_in_mutual_information(z[:, j], factors[:, k]) for j in range(z.shape[1])), reverse=True)
        entropy = plug_in_mutual_information(factors[:, k], factors[:, k])
        gaps.append((info[0] - info[1]) / entropy)
    return float(np.mean(gaps))


def dci_from_the_paper(importance: np.ndarray) -> tuple[float, float]:
    """Eastwood & Williams 2018, section 2: R (latents × factors); D = Σ_i ρ_i (1 − H_K(P_i.)), C = Σ_j ρ_j (1 − H_D(P_.j))."""
    d, k = importance.shape
    r = importance + 1e-11

    def one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
        p = p / p.sum(axis=1, keepdims=True)
        return 1 + (p * np.log(p)).sum(axis=1) / np.log(base)

    disentanglement = float((one_minus_entropy(r, k) * importance.sum(1) / importance.sum()).sum())
    completeness = float((one_minus_entropy(r.T, d) * importance.sum(0) / importance.sum()).sum())
    return disentanglement, completeness


def sample(gt, represent, n, seed=0):
    return dis.sample_codes(gt, encoder(gt, represent), n, torch.Generator().manual_seed(seed))


def encoder(gt, represent):
    """Factors → codes as the metrics get them (codes_of); random codes without the grid's cache,
    so that they are noise drawn afresh for every image drawn, independent of the factors (cached,
    they would be one fixed random code per grid image, which identifies the image)."""
    if represent is random_codes:
        return lambda factors: dis.encode_factors(gt, represent, factors)
    return dis.codes_of(gt, represent)


# -- MIG ---------------------------------------------------------------------------------------------

def test_mig_of_codes_equal_to_the_factors_is_its_formula_and_near_one():
    gt = IndexImages()
    codes, factors = sample(gt, factors_of, SIZES.points)
    result = dis.mig(codes, factors)
    # Every factor has ≤ 20 values, so the 20 bins resolve each one: I(z_k; v_k) = H(v_k) and
    # MIG = mean_k (H(v_k) − max_{j≠k} I(z_j; v_k)) / H(v_k), the second term the sample's small bias.
    expected = np.mean([1 - max(plug_in_mutual_information(factors[:, j], factors[:, k]) for j in range(3) if j != k)
                        / plug_in_mutual_information(factors[:, k], factors[:, k]) for k in range(3)])
    assert result["mig"] == pytest.approx(expected, abs=1e-12)
    assert 0.98 < result["mig"] <= 1
    assert np.diag(result["mutual_information"]) == pytest.approx(result["entropy"], abs=1e-12)
    assert result["entropy"] == pytest.approx([math.log(s) for s in gt.factor_sizes], abs=0.01)  # uniform factors


def test_mig_agrees_with_a_second_implementation_and_drops_for_mixed_and_random_codes():
    gt = IndexImages()
    codes, factors = sample(gt, factors_of, SIZES.points)
    mixed = codes @ rotation(3)
    noise = np.random.default_rng(1).normal(size=codes.shape)
    for c in (codes, mixed, noise):
        assert dis.mig(c, factors)["mig"] == pytest.approx(mig_from_the_paper(c, factors), abs=1e-9)
    assert dis.mig(mixed, factors)["mig"] < 0.6 * dis.mig(codes, factors)["mig"]
    assert abs(dis.mig(noise, factors)["mig"]) < 0.02


# -- DCI ---------------------------------------------------------------------------------------------

def test_dci_scores_of_importance_matrices_follow_the_paper():
    assert dis.dci_scores(np.eye(4)[:, [2, 0, 3, 1]]) == pytest.approx((1, 1), abs=1e-6)  # one latent per factor
    assert dis.dci_scores(np.ones((4, 4))) == pytest.approx((0, 0), abs=1e-9)  # every latent informs every factor
    # Two latents share one factor, a third has none: each latent is pure (D = 1), the factor is split (C < 1).
    split = np.array([[1.0, 0], [1.0, 0], [0, 2.0], [0, 0]])
    d, c = dis.dci_scores(split)
    assert d == pytest.approx(1, abs=1e-6) and c == pytest.approx(0.5 * (1 - math.log(2) / math.log(4)) + 0.5, abs=1e-6)
    r = np.random.default_rng(0).random((6, 4))
    assert dis.dci_scores(r) == pytest.approx(dci_from_the_paper(r), abs=1e-9)


def test_dci_of_codes_equal_to_the_factors_is_one_and_its_importance_gives_the_papers_scores():
    from sklearn.ensemble import GradientBoostingClassifier

    gt = IndexImages()
    codes, factors = sample(gt, factors_of, 1000)
    test = sample(gt, factors_of, 500, seed=1)
    exact = dis.dci(codes, factors, *test, seed=0)
    assert (exact["dci_disentanglement"], exact["dci_completeness"]) == pytest.approx((1, 1), abs=1e-3)
    assert exact["dci_informativeness"] == 1.0
    mixed = dis.dci(codes @ rotation(3), factors, test[0] @ rotation(3), test[1], seed=0)
    # The importances by sklearn's trees fitted here, the scores by the paper's formula.
    importance = np.stack([GradientBoostingClassifier(random_state=0).fit(codes @ rotation(3), factors[:, j])
                           .feature_importances_ for j in range(3)], axis=1)
    assert mixed["importance"] == pytest.approx(importance, abs=1e-12)
    assert (mixed["dci_disentanglement"], mixed["dci_completeness"]) == pytest.approx(dci_from_the_paper(importance), abs=1e-9)
    assert mixed["dci_disentanglement"] < 0.7 and mixed["dci_completeness"] < 0.7
    noise = dis.dci(np.random.default_rng(1).normal(size=(1000, 3)), factors,
                    np.random.default_rng(2).normal(size=(500, 3)), test[1], seed=0)
    assert noise["dci_disentanglement"] < 0.05 and noise["dci_completeness"] < 0.05
    chance = np.mean([1 / s for s in gt.factor_sizes])
    assert abs(noise["dci_informativeness"] - chance) < 0.06


# -- SAP, FactorVAE, β-VAE, modularity --------------------------------------------------------------------

def test_sap_of_binary_factors_is_one_minus_chance():
    """Codes = binary factors: the factor's own latent classifies it perfectly, every other latent
    is independent of it, so at chance, 1/2: SAP = 1 − 1/2."""
    gt = IndexImages((2, 2, 2))
    result = dis.sap(*sample(gt, factors_of, SIZES.train), *sample(gt, factors_of, SIZES.test, seed=1), seed=0)
    assert np.diag(result["score_matrix"]) == pytest.approx(1.0)
    assert result["sap"] == pytest.approx(0.5, abs=0.04)
    # Each latent the sum of all three factors, up to signs: every latent classifies every factor equally well.
    mixed = lambda images: factors_of(images) @ np.array([[1, 1, 1], [1, -1, 1], [1, 1, -1]])  # noqa: E731
    assert dis.sap(*sample(gt, mixed, SIZES.train), *sample(gt, mixed, SIZES.test, seed=1), seed=0)["sap"] < 0.3
    assert dis.sap(*sample(gt, random_codes, SIZES.train), *sample(gt, random_codes, SIZES.test, seed=1),
                   seed=0)["sap"] < 0.05


def test_factor_vae_and_beta_vae_scores_are_one_for_codes_equal_to_the_factors_and_chance_for_random_codes():
    gt = IndexImages()
    # The fixed factor's latent has variance 0 in its batch (FactorVAE) and |z1 − z2| = 0 on it
    # (β-VAE): every vote and every prediction is right. A fourth latent with std 0.01 < 0.05 is pruned.
    with_pruned = lambda images: np.concatenate([factors_of(images), 0.01 * random_codes(images)[:, :1]], 1)  # noqa: E731
    result = dis.factor_vae(gt, encoder(gt, with_pruned), SIZES, torch.Generator().manual_seed(0))
    assert result["factor_vae"] == 1.0 and result["factor_vae_train"] == 1.0 and result["factor_vae_active_dims"] == 3
    assert dis.beta_vae(gt, encoder(gt, factors_of), SIZES, torch.Generator().manual_seed(0), seed=0)["beta_vae"] == 1.0
    chance = 1 / 3
    assert abs(dis.factor_vae(gt, encoder(gt, random_codes), SIZES, torch.Generator().manual_seed(0))["factor_vae"] - chance) < 0.1
    assert abs(dis.beta_vae(gt, encoder(gt, random_codes), SIZES, torch.Generator().manual_seed(0), seed=0)["beta_vae"] - chance) < 0.1
    # Every latent pruned (a code that does not vary): score 0, as disentanglement_lib.
    assert dis.factor_vae(gt, encoder(gt, lambda im: np.zeros((len(im), 2))), SIZES, torch.Generator())["factor_vae"] == 0.0


def test_modularity_follows_ridgeway_and_zemel():
    assert dis.modularity_score(np.diag([0.5, 1.0, 2.0])) == 1.0  # each latent informs one factor
    assert dis.modularity_score(np.ones((2, 3))) == pytest.approx(0.0)  # each informs all equally
    m = np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])  # the second latent informs nothing: 0, as disentanglement_lib
    assert dis.modularity_score(m) == pytest.approx((1 - 0.25 / (1 * 2)) / 2)
    gt = IndexImages()
    codes, factors = sample(gt, factors_of, SIZES.points)
    m = np.array([[plug_in_mutual_information(equal_width_bins(codes)[:, j], factors[:, k]) for k in range(3)]
                  for j in range(3)])
    out, _, _ = dis.compute(gt, factors_of, SIZES, seed=0, metrics=["modularity"])
    assert out["modularity"] > 0.99 and out["explicitness"] > 0.95
    assert dis.modularity_score(m) > 0.99
    mixed, _, _ = dis.compute(gt, lambda im: factors_of(im) @ rotation(3), SIZES, seed=0, metrics=["modularity"])
    assert mixed["modularity"] < out["modularity"] - 0.05
    noise = dis.explicitness(*sample(gt, random_codes, SIZES.points), *sample(gt, random_codes, SIZES.test, seed=1), seed=0)
    assert abs(noise - 0.5) < 0.05  # ROC-AUC of a guess


# -- the suite ------------------------------------------------------------------------------------------------

def test_the_suite_is_deterministic_given_the_seed_and_each_metric_independent_of_the_others():
    gt = IndexImages()
    mixed = lambda images: factors_of(images) @ rotation(3)  # noqa: E731
    small = dis.Sizes(points=500, train=300, test=200, batch=16)
    first, seconds, found = dis.compute(gt, mixed, small, seed=3)
    again, _, _ = dis.compute(gt, mixed, small, seed=3)
    other, _, _ = dis.compute(gt, mixed, small, seed=4)
    assert set(seconds) == set(dis.METRICS)
    numbers = {k: v for k, v in first.items() if isinstance(v, float)}
    assert set(dis.metric_keys()) <= {f"disentanglement/{k}" for k in numbers}
    assert numbers == {k: v for k, v in again.items() if isinstance(v, float)}
    assert numbers != {k: v for k, v in other.items() if isinstance(v, float)}
    alone, _, _ = dis.compute(gt, mixed, small, seed=3, metrics=["sap"])
    assert alone["sap"] == first["sap"]
    with pytest.raises(ValueError, match="not a disentanglement metric"):
        dis.compute(gt, mixed, small, metrics=["irs"])


def test_mean_codes_encode_images_as_the_data_module_turns_them_into_model_input():
    class Halves:  # a data module's on_after_batch_transfer: uint8 → floats
        def on_after_batch_transfer(self, batch, index):
            return batch[0] / 255, batch[1]

    class Posterior(torch.nn.Module):
        def posterior(self, x):
            return type("Codes", (), {"mu": x.flatten(1) * 2})()

    images = torch.tensor([[[[0, 255]]], [[[51, 102]]]], dtype=torch.uint8)
    codes = dis.mean_codes(Posterior(), Halves(), torch.device("cpu"), batch_size=1)(images)
    assert codes.dtype == np.float64 and codes == pytest.approx(np.array([[0, 2], [0.4, 0.8]]))


def test_grid_codes_encode_each_image_once_and_give_the_same_codes():
    gt = IndexImages()
    seen = []

    def represent(images):
        seen.append(len(images))
        return factors_of(images) * 2

    cached = dis.codes_of(gt, represent)
    assert isinstance(cached, dis.GridCodes)
    factors = gt.sample_factors(5000, torch.Generator().manual_seed(0))  # 120 grid images, drawn ~42 times each
    assert cached(factors) == pytest.approx(dis.encode_factors(gt, lambda im: factors_of(im) * 2, factors))
    assert sum(seen) == len(torch.unique(gt.index(factors))) == gt.num_images
    assert cached(factors[:10]) == pytest.approx(2 * factors[:10].numpy()) and sum(seen) == gt.num_images


# -- eval on data without known factors --------------------------------------------------------------------

@pytest.fixture
def untrained_checkpoint(tmp_path):
    from vaelab.training import LitAutoencoder

    module = LitAutoencoder(name="vae", latent_dim=4, hidden_dims=[16])
    path = tmp_path / "untrained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_eval_refuses_disentanglement_true_on_mnist_with_one_line(untrained_checkpoint, data_dir, tmp_path, capsys):
    code = run_entry_point_in_process(f"ckpt_path={untrained_checkpoint}", f"paths.log_dir={tmp_path / 'outputs'}",
                                      f"data.data_dir={data_dir}", "data.source=local", "data.val_size=128",
                                      "eval.disentanglement=true", script="eval.py")
    output = "".join(capsys.readouterr())
    errors = [line.split("[ERROR] - ", 1)[1] for line in output.splitlines() if "[ERROR]" in line]
    assert code == 2 and "Traceback" not in output and errors == [
        "eval.disentanglement=true must be auto or false for data.name=mnist: the data set has no known factors of "
        "variation (the disentanglement metrics need them: data=dsprites)"], output[-3000:]
    assert not list((tmp_path / "outputs").rglob("eval.json"))


# The other disentanglement keys' refusals: tests/test_config.py EVAL_CASES.


def test_eval_lists_the_metrics_as_not_applicable_on_data_without_factors(untrained_checkpoint, data_dir, tmp_path):
    from vaelab.data import load_images
    from vaelab.evaluation.classifier import LabelClassifier, cache_path

    # A cached (untrained) reference classifier: eval reads it instead of training one.
    cached = cache_path(load_images("mnist", data_dir, "local"), tmp_path / "classifiers", "mnist")
    cached.parent.mkdir()
    torch.save(LabelClassifier(28 * 28).state_dict(), cached)
    common = (f"ckpt_path={untrained_checkpoint}", f"data.data_dir={data_dir}", "data.source=local",
              "data.val_size=128", "eval.k=5", "eval.max_images=60", "eval.n_samples=50",
              f"eval.classifier_dir={cached.parent}")
    records = {}
    for mode in ("auto", "false"):
        out = tmp_path / mode
        assert run_entry_point_in_process(*common, f"paths.log_dir={out}", f"eval.disentanglement={mode}",
                                          script="eval.py") == 0
        (record_file,) = out.rglob("eval.json")
        records[mode] = (json.loads(record_file.read_text()), (record_file.parent / "report.md").read_text())
    record, report = records["auto"]
    assert {k: v for k, v in record["not_applicable"].items() if k.startswith("disentanglement/")} == dict.fromkeys(
        dis.metric_keys(), "the data set has no known factors of variation")
    assert "time/disentanglement_s" not in record and "disentanglement/protocol" not in record
    section = report.split("## Disentanglement", 1)[1].split("## Panels", 1)[0]
    assert "Not applicable to these data: the data set has no known factors of variation" in section
    assert "disentanglement/" not in report.split("### Completeness", 1)[1].split("## Disentanglement", 1)[0]
    record, report = records["false"]
    assert not any(k.startswith("disentanglement/") for k in record.get("not_applicable", {}))
    assert "Not computed (eval.disentanglement=false)" in report


# -- eval on dSprites-like data ----------------------------------------------------------------------------------

def test_eval_measures_disentanglement_on_dsprites_and_reports_the_protocol(tmp_path):
    """An untrained 64×64 VAE through eval.py with data=dsprites: every metric's number, the protocol,
    the mutual-information matrix, the stage's time and the report's section."""
    import sklearn

    from vaelab.data import ImageDataModule
    from vaelab.evaluation.classifier import LabelClassifier, cache_path
    from vaelab.training import LitAutoencoder

    module = LitAutoencoder(name="vae", image_shape=(1, 64, 64), latent_dim=3, hidden_dims=[16])
    run_dir = tmp_path / "run"  # as train.py leaves a run (with a W&B run) that eval links its numbers to
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "model": "vae", "beta": 1.0}))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "wandb_run": {"id": "dsprites0run", "logs": []}}, checkpoint)
    data = dict(name="dsprites", data_dir=str(tmp_path / "data"), size=600, val_size=100, test_size=100)
    images = ImageDataModule(**data)
    images.load()  # drawn once and cached in data_dir, where eval reads them
    cached = cache_path(images.images, tmp_path / "classifiers", "dsprites")  # an untrained reference classifier:
    cached.parent.mkdir()  # eval reads it instead of training one
    torch.save(LabelClassifier(64 * 64, n_classes=3).state_dict(), cached)
    # DCI's gradient-boosted trees take seconds even here (113 factor values): tests/test_disentanglement.py checks it above.
    code = run_entry_point_in_process(f"ckpt_path={checkpoint}", f"paths.log_dir={tmp_path / 'outputs'}", "data=dsprites",
                                      *(f"data.{key}={value}" for key, value in data.items() if key != "name"),
                                      f"eval.classifier_dir={cached.parent}", "eval.k=2", "eval.n_samples=20",
                                      "eval.n_codes=50", "eval.disentanglement=true",
                                      "eval.disentanglement_metrics=[mig,sap,factor_vae,beta_vae,modularity]",
                                      "eval.disentanglement_sizes.points=300", "eval.disentanglement_sizes.train=200",
                                      "eval.disentanglement_sizes.test=100", "eval.disentanglement_sizes.batch=8",
                                      script="eval.py")
    assert code == 0
    (record_file,) = (tmp_path / "outputs").rglob("eval.json")
    record = json.loads(record_file.read_text())
    report = (record_file.parent / "report.md").read_text()
    measured = ["mig", "sap", "factor_vae", "beta_vae", "modularity"]
    for key in dis.metric_keys(measured):
        assert 0 <= record[key] <= 1, key
    assert not any(key in record for key in dis.metric_keys(["dci"]))
    names = record["disentanglement/factor_names"]
    assert len(names) == len(record["disentanglement/factor_sizes"]) >= 2
    mi = np.array(record["disentanglement/mutual_information"])
    assert mi.shape == (3, len(names)) and (mi >= 0).all()
    protocol = record["disentanglement/protocol"]
    assert protocol["sizes"] == {"points": 300, "train": 200, "test": 100, "batch": 8}
    assert protocol["sklearn"] == sklearn.__version__ and protocol["seed"] == 42
    assert protocol["data"].startswith("dSprites-like (procedural)")
    assert set(protocol["metrics"]) == set(measured)  # eval.json sorts its keys
    assert set(record["disentanglement/time_s"]) == set(measured) and record["time/disentanglement_s"] > 0
    assert not any(k.startswith("disentanglement/") for k in record.get("not_applicable", {}))
    section = report.split("## Disentanglement", 1)[1].split("## Panels", 1)[0]
    assert f"| `disentanglement/mig` | {record['disentanglement/mig']:.3f} |" in section
    assert "dSprites-like (procedural)" in section and "Mutual information, latent × factor" in section
    assert "**not** its sizes" in section and "no latent to vote with" in section  # untrained: μ(x) hardly varies
    assert (record_file.parent / record["panels"]["mutual_information"]).is_file()
    assert "![mutual_information](images/mutual_information.png)" in report
    # Linked to the training run (vaelab.rundir), where compare and the sweep summary read it, and in its W&B run.
    from vaelab.reports.wandb_offline import summarize, wait_until_finished
    from vaelab.rundir import latest_evaluation

    evaluation = latest_evaluation(run_dir)
    assert evaluation["scores"] == {key: record[key] for key in dis.metric_keys(measured)}
    assert evaluation["evaluation"] == str(record_file.parent.resolve()) and evaluation["protocol"] == protocol
    assert evaluation["protocol_text"].startswith("disentanglement_lib metrics, sizes points 300, train 200, test 100, batch 8")
    (wandb_file,) = record_file.parent.glob("wandb/offline-run-*/run-dsprites0run.wandb")
    assert wait_until_finished(wandb_file)
    summary = summarize(wandb_file)["summary"]
    assert {key: summary[key] for key in dis.metric_keys(measured)} == evaluation["scores"]


def test_the_reports_protocol_sizes_are_the_modules_defaults():
    from dataclasses import asdict

    from vaelab.evaluation.report import PROTOCOL_SIZES

    assert PROTOCOL_SIZES == asdict(dis.Sizes())


def test_the_traversal_names_a_factor_only_for_an_active_latent_that_carries_enough_of_it():
    from vaelab.tasks.eval import FOLLOWS_FRACTION, followed_factors

    entropy = [math.log(3), math.log(32)]
    record = {"disentanglement/factor_names": ["shape", "posX"], "disentanglement/factor_entropy": entropy,
              "disentanglement/mutual_information": [
                  [0.9 * entropy[0], 0.2 * entropy[1]],  # shape, the larger share of its factor's entropy
                  [0.0, 0.5 * entropy[1]],  # posX
                  [0.0, 0.99 * FOLLOWS_FRACTION * entropy[1]],  # just below the fraction: none
                  [0.0, 0.5 * entropy[1]],  # as much as the second, but an inactive latent: bias, none
              ]}
    assert followed_factors(record, [True, True, True, False]) == ["shape", "posX", None, None]
    assert followed_factors({}, [True]) is None
