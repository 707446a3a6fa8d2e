"""report.md of an evaluation: the numbers of eval.json with what they mean, and the panels."""

from pathlib import Path
from typing import Any

from vaelab.files import write_text
from vaelab.reports.tables import markdown_table


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    return markdown_table(["metric", "value", "meaning"], [(f"`{a}`", b, c) for a, b, c in rows])


def write_report(path: Path, r: dict[str, Any]) -> None:
    has_density = "test/nll" in r  # a model with a prior and a stochastic encoder (a VAE)
    # bce on grey levels: test/nll is a cross-entropy, −log of no normalised p(x) (evaluation/nll.py)
    is_likelihood = r.get("test/nll_is_likelihood", True)
    beta = f", β={r['beta']:g}" if r.get("beta") is not None else ""
    lines = [f"# Evaluation of `{r['checkpoint']}`", "",
             f"Model: **{r['model']}**, latent_dim={r['latent_dim']}{beta}, recon_loss={r['recon_loss']}. "
             f"Data: {r.get('data/name')} from {r.get('data/source')} ({r.get('data/location')}), "
             f"{r['eval/images']} test images (binarize={r.get('data/binarize')}); data config: {r['data_config']}.", "",
             "## Test metrics (means per image, nats where a likelihood is defined)", ""]
    meanings = {
        "recon": "reconstruction term, summed over pixels"
                 + (f", averaged over the {r['eval/k']} samples of q(z|x)" if has_density else ""),
        "kl": "KL[q(z|x) ‖ N(0, I)], exact",
        "nelbo": "recon + kl: the negative ELBO, an upper bound on " + ("−log p(x)" if is_likelihood else "test/nll"),
        "loss": "what training optimised" + (f" (recon + β·kl, β={r['beta']:g})" if r.get("beta") is not None else ""),
    }
    rows = [(f"test/{term}", _num(r[f"test/{term}"]), meanings.get(term, "")) for term in r["terms"]]
    if has_density:
        nll_is = "−log p(x)" if is_likelihood else "**a cross-entropy, not −log p(x)** (see below)"
        rows += [("test/nll", _num(r["test/nll"]), f"{nll_is}, importance-sampled with k={r['eval/k']}")]
        if "test/bpd" in r:  # colour data
            rows += [("test/bpd", _num(r["test/bpd"], 4), "nll / (C·H·W·ln 2), bits per dimension: **not** the "
                      "literature's 8-bit bpd (see below)")]
        rows += [("test/nll_gap", _num(r["test/nll_gap"]), "nelbo − nll ≥ 0: how loose the bound is")]
    lines += _table(rows)
    if has_density:
        constant = r["test/nll_constant"]
        lines += ["", "### How nll is estimated", "",
                  "log p(x) ≈ logsumexp_j log w_j − log k, w_j = p(x|z_j) p(z_j) / q(z_j|x), z_j ~ q(z|x) "
                  "(Burda et al. 2015), accumulated in chunks so memory does not grow with k. "
                  f"Here nll = {_num(r['test/nll'])} {'≤' if r['test/nll_gap'] >= 0 else '> (an estimate off by noise)'} "
                  f"nelbo = {_num(r['test/nelbo'])} (gap {_num(r['test/nll_gap'])} nats); "
                  f"the ELBO of the very same samples is {_num(r['test/nelbo_same_samples'])}.",
                  "", f"**What nll measures** (`test/nll_is_likelihood` = {str(is_likelihood).lower()}): "
                  f"{r['test/nll_measures']}."]
        if "test/bpd_measures" in r:
            lines += ["", f"**What bpd measures**: {r['test/bpd_measures']}."]
        if r["recon_loss"] == "mse":
            lines += ["", "The mse decoder is read as a Gaussian p(x|z) = N(x', σ² I) with σ² = ½, since "
                      "−log N(x; x', σ² I) = ‖x − x'‖²/(2σ²) + (D/2)·log(2πσ²) = ‖x − x'‖² + ½·D·log π. "
                      "nll and nelbo above leave out the constant ½·D·log π = "
                      f"{constant:.2f} nats, like the training metrics; the Gaussian's full negative log-density is "
                      f"nll + {constant:.2f} = {r['test/nll'] + constant:.2f} nats."]
        elif r["recon_loss"] == "bce" and not is_likelihood:
            lines += ["", "The bce decoder is a Bernoulli likelihood, a distribution over pixels in {0, 1}. These "
                      f"test images are grey levels (binarize={r.get('data/binarize')}), so its −log p(x|z) = "
                      "−Σ [x·log x' + (1 − x)·log(1 − x')] is the cross-entropy with soft targets x, the −log of "
                      "no density of x (exp(−cross-entropy) does not integrate to 1 over grey images; the continuous "
                      "Bernoulli's normaliser is what fixes that): nll here is a cross-entropy, lower for "
                      "better models of these data but not comparable with published NLLs. Train and evaluate with "
                      "data.binarize=dynamic (or static) for −log p(x) in nats."]
    else:
        lines += ["", f"**Not applicable to model={r['model']}:**", "",
                  *(f"- `{k}`: {v}" for k, v in r["not_applicable"].items() if k.startswith("test/"))]

    lines += ["", "## Latent space", "",
              f"Active units (Burda et al. 2015: Cov_x(E_q[z_i]) > 0.01): **{r['test/active_units']} of {r['latent_dim']}**."]
    if "test/kl_per_dim" in r:
        lines += ["", *markdown_table(["dimension", "KL (nats)"], [(i + 1, f"{v:.3f}") for i, v in enumerate(r["test/kl_per_dim"])])]
    lines += ["", "### Continuity", "",
              "With s the median distance between a test code and its nearest neighbouring code, the mean RMS "
              "pixel change of the decoded image per unit latent step, along a random direction (step s) and "
              "towards the nearest neighbouring test code. A ratio near 1 or below: stepping off the data's codes "
              "changes the image no more than moving to a neighbour; ≫ 1: abrupt changes between the data's codes.", "",
              *_table([("continuity/step", _num(r.get("continuity/step")), "s, in the model's own code units"),
                       ("continuity/random_change_per_unit", _num(r.get("continuity/random_change_per_unit")), "random direction"),
                       ("continuity/neighbour_change_per_unit", _num(r.get("continuity/neighbour_change_per_unit")), "towards the nearest test code"),
                       ("continuity/ratio", _num(r.get("continuity/ratio")), "random / neighbour")])]
    lines += ["", "### Completeness", ""]
    if "completeness/test_confidence" not in r:  # a data set without labels: no classifier to judge with
        by_reason: dict[str, list[str]] = {}
        for key, why in r.get("not_applicable", {}).items():
            if key.startswith(("classifier/", "completeness/")):
                by_reason.setdefault(why, []).append(f"`{key}`")
        lines += ["Not applicable to these data:", "", *(f"- {', '.join(keys)}: {why}" for why, keys in by_reason.items())]
    else:
        lines += _completeness(r)
    lines += _disentanglement(r)
    lines += ["", "## Panels", ""]
    for name, file in r["panels"].items():
        lines += [f"### {name.replace('_', ' ')}", "", r["panel_captions"][name], "", f"![{name}]({file})", ""]
    times = [(key[len("time/"):-len("_s")], value) for key, value in r.items()
             if key.startswith("time/") and key.endswith("_s") and key not in ("time/total_s", "time/write_s")]
    if times:  # eval.json has the same numbers, with the writing of the files and the total
        lines += ["## Time per stage", "", *markdown_table(["stage", "seconds"], [(name, f"{value:.1f}") for name, value in times]),
                  "", f"{_num(sum(value for _, value in times), 1)} s in all before the files were written "
                  "(eval.json: `time/<stage>_s`, `time/total_s`).", ""]
    write_text(path, "\n".join(lines) + "\n")


def _completeness(r: dict[str, Any]) -> list[str]:
    """The completeness section's text and table, for a labelled data set."""
    classes = r.get("classifier/classes", 10)  # records written before colour data had no count: 10
    rows = [("completeness/test_confidence", _num(r["completeness/test_confidence"]), "real test images, never binarised (the reference)"),
            ("completeness/prior_confidence", _num(r["completeness/prior_confidence"]), "decoded z ~ N(0, I)"),
            ("completeness/prior_class_coverage", _num(r["completeness/prior_class_coverage"]), f"of {classes}: how many classes the samples spread over")]
    if "completeness/fitted_gaussian_confidence" in r:
        rows += [("completeness/fitted_gaussian_confidence", _num(r["completeness/fitted_gaussian_confidence"]), "decoded z ~ N(m, C) fitted to the AE's codes"),
                 ("completeness/fitted_gaussian_class_coverage", _num(r["completeness/fitted_gaussian_class_coverage"]), f"of {classes}")]
    return [
        "Do decoded prior samples look like data? A small classifier, trained once on the same training file "
        f"and cached (test accuracy {_num(r['classifier/test_accuracy'])}), judges them: the mean max-softmax "
        "confidence, and the class coverage exp(H(mean predicted distribution)). Confidence was chosen over a "
        "Fréchet distance of classifier features: it is unbiased with a thousand samples and reads on a fixed "
        f"scale (1/{classes} to 1). The decoded samples are pixel means, levels in [0, 1]; the classifier is "
        "trained, and its reference numbers (test accuracy, `completeness/test_*`) are measured, on such levels "
        f"too: the test images before any binarisation (here binarize={r.get('data/binarize')}), "
        "so that the reference compares like with like.", "", *_table(rows)]


# disentanglement_lib's sizes (evaluation/disentanglement.py Sizes(), here without importing torch)
PROTOCOL_SIZES = {"points": 10_000, "train": 10_000, "test": 5_000, "batch": 64}

# What each disentanglement number is, as disentanglement_lib computes it (evaluation/disentanglement.py).
DISENTANGLEMENT_MEANINGS = {
    "mig": "MIG (Chen et al. 2018): mean over factors of the gap between the two latents most informative about it, / H(v_k)",
    "sap": "SAP (Kumar et al. 2018): mean over factors of the gap between the two best single-latent classifiers' accuracies",
    "dci_disentanglement": "DCI (Eastwood & Williams 2018): each latent's importance concentrated on one factor",
    "dci_completeness": "DCI: each factor's importance concentrated on one latent",
    "dci_informativeness": "DCI: test accuracy of the gradient-boosted trees predicting the factors",
    "factor_vae": "FactorVAE score (Kim & Mnih 2018): majority-vote accuracy, the latent varying least with a factor fixed",
    "beta_vae": "β-VAE score (Higgins et al. 2017): logistic-regression accuracy naming the shared factor",
    "modularity": "modularity (Ridgeway & Zemel 2018): each latent's mutual information concentrated on one factor",
    "explicitness": "explicitness (Ridgeway & Zemel 2018): mean test ROC-AUC of a logistic regression per factor",
}


def _disentanglement(r: dict[str, Any]) -> list[str]:
    """The disentanglement section: the numbers, the protocol and the latent × factor mutual information."""
    lines = ["", "## Disentanglement", ""]
    if "disentanglement/protocol" not in r:
        missing = {k: why for k, why in r.get("not_applicable", {}).items() if k.startswith("disentanglement/")}
        if missing:
            lines += [f"Not applicable to these data: {next(iter(missing.values()))} "
                      f"({', '.join(f'`{k}`' for k in missing)})."]
        else:
            lines += ["Not computed (eval.disentanglement=false)."]
        return lines
    p = r["disentanglement/protocol"]
    rows = [(f"disentanglement/{key}", _num(r[f"disentanglement/{key}"]), meaning)
            for key, meaning in DISENTANGLEMENT_MEANINGS.items() if f"disentanglement/{key}" in r]
    sizes = p["sizes"]
    lines += [f"The mean codes μ(x) of images drawn uniformly from the factor grid of {p['data']}, against the "
              f"factors {', '.join(f'{n} ({s})' for n, s in zip(r['disentanglement/factor_names'], r['disentanglement/factor_sizes']))}; "
              f"computed as google-research/disentanglement_lib does, with {sizes['points']} points, "
              f"{sizes['train']} train, {sizes['test']} test, batches of {sizes['batch']} "
              + ("(its own sizes) " if sizes == PROTOCOL_SIZES else
                 "(**not** its sizes, {points} points, {train} train, {test} test, batches of {batch}: set by "
                 "`eval.disentanglement_sizes`, so not comparable with published numbers) ".format(**PROTOCOL_SIZES))
              + f"(seed {p['seed']}, scikit-learn {p['sklearn']}; eval.json: `disentanglement/protocol`). "
              "All lie in [0, 1], higher is better.", "", *_table(rows)]
    if "disentanglement/factor_vae_active_dims" in r:
        active, prune = r["disentanglement/factor_vae_active_dims"], p["metrics"]["factor_vae"]["prune_std"]
        lines += ["", f"FactorVAE's votes used the {active} latents whose std over the data is at least {prune}." if active
                  else f"No latent's std over the data reaches {prune}: FactorVAE has no latent to vote with, and its "
                       "score is 0 (as disentanglement_lib gives it)."]
    if r.get("disentanglement/warnings"):
        lines += ["", "scikit-learn warned: " + "; ".join(r["disentanglement/warnings"]) + "."]
    if "disentanglement/mutual_information" in r:
        names = r["disentanglement/factor_names"]
        entropy = r["disentanglement/factor_entropy"]
        lines += ["", "### Mutual information, latent × factor (nats, 20-bin codes)", "",
                  *markdown_table(["latent", *names],
                                  [(f"z{i + 1}", *(f"{v:.3f}" for v in row))
                                   for i, row in enumerate(r["disentanglement/mutual_information"])]
                                  + [("H(factor)", *(f"{v:.3f}" for v in entropy))])]
    times = r.get("disentanglement/time_s", {})
    if times:
        lines += ["", "Seconds per metric: " + ", ".join(f"{name} {value:.1f}" for name, value in times.items()) + "."]
    return lines
