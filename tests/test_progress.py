"""Long work shows progress: eval.py's stages each log their duration and leave time/<stage>_s in
eval.json; the importance-sampled NLL and the classifier's training log lines as they go."""

import json
import logging
import re

import pytest
import torch

from conftest import run_entry_point_in_process, synthetic_images
from test_nll import _log_likelihood, _model, _posterior

# eval.py's stages for a plain VAE (no "objective": its loss is recon + β·kl)
VAE_STAGES = ("load", "terms", "nll", "continuity", "classifier", "completeness", "panels", "write")


def test_nll_progress_counts_every_image_once_and_reaches_all_of_them():
    from vaelab.evaluation.nll import importance_sampled_nll, importance_sampled_sums

    w, b, x = _model()  # 200 images
    mu, logvar = _posterior(w, b, x)
    calls = []
    torch.manual_seed(0)
    sums = importance_sampled_sums(x, mu, logvar, _log_likelihood(w, b), k=30, batch_size=64,
                                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(64, 200), (128, 200), (192, 200), (200, 200)]
    # The same numbers as importance_sampled_nll batch by batch: progress changes nothing.
    torch.manual_seed(0)
    parts = [importance_sampled_nll(x[i:i + 64], mu[i:i + 64], logvar[i:i + 64], _log_likelihood(w, b), k=30)
             for i in range(0, 200, 64)]
    for key in ("nll", "nelbo", "recon"):
        assert sums[key] == pytest.approx(sum(float(p[key].double().sum()) for p in parts), rel=1e-12)


def test_progress_lines_come_every_tenth_of_the_work_and_not_more_often_than_the_interval(caplog):
    from vaelab.tasks.eval import ProgressLines

    def run(seconds_per_batch, batches=100, per_batch=100):
        now = [0.0]
        progress = ProgressLines("nll", "images", clock=lambda: now[0])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vaelab.tasks.eval"):
            for i in range(1, batches + 1):
                now[0] += seconds_per_batch
                progress(i * per_batch, batches * per_batch)
        return [r.getMessage() for r in caplog.records]

    slow = run(1.0)  # 100 s of work: a line every 10 %, each 10 s apart
    assert len(slow) == 10
    assert slow[0] == "nll: 1000/10000 images (10 %), 10.0 s elapsed, about 1 min 30 s left"
    assert slow[-1] == "nll: 10000/10000 images (100 %), 1 min 40 s elapsed"
    assert run(0.01) == []  # a second of work: the stage's own line is enough
    # 30 s: 10 % every 3 s, but at most a line per 10 s (and the last, since lines came before)
    assert [line.split(" (")[1].split(")")[0] for line in run(0.3)] == ["34 %", "68 %", "100 %"]
    hours = run(60.0)  # 100 min: still ten lines
    assert len(hours) == 10 and hours[0].endswith("(10 %), 10 min 00 s elapsed, about 1 h 30 min left")


def test_the_classifier_logs_a_line_per_epoch_with_its_accuracy_and_time(caplog):
    from vaelab.evaluation.classifier import train_classifier

    images, labels = (torch.from_numpy(a) for a in synthetic_images(256, seed=0))
    with caplog.at_level(logging.INFO, logger="vaelab.evaluation.classifier"):
        train_classifier(images, labels, epochs=3, min_steps=0)
    assert caplog.records == []  # library use: silent
    with caplog.at_level(logging.INFO, logger="vaelab.evaluation.classifier"):
        train_classifier(images, labels, epochs=3, min_steps=0, log_epochs=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    for epoch, line in enumerate(lines, 1):
        assert re.fullmatch(rf"classifier epoch {epoch}/3: train accuracy (0|1)\.\d{{3}}, loss \d+\.\d{{3}}, \d+\.\d s; "
                            rf"\d+\.\d s so far(, about \d+ s left)?", line), line
        assert ("left" in line) is (epoch < 3)
    assert float(lines[-1].split("train accuracy ")[1].split(",")[0]) > 0.9  # the bars are easy to tell apart
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vaelab.evaluation.classifier"):
        train_classifier(images, labels, epochs=25, min_steps=0, log_epochs=True)
    # More than 10 epochs: every third (⌈25/10⌉) and the last.
    assert [int(r.getMessage().split()[2].split("/")[0]) for r in caplog.records] == [3, 6, 9, 12, 15, 18, 21, 24, 25]


@pytest.fixture
def checkpoint(trained) -> str:
    """A VAE trained one epoch (test_eval.py's, trained once per session, in-process): its best checkpoint."""
    return json.loads((trained["vae"] / "metrics.json").read_text())["best_checkpoint"]


def _evaluate(checkpoint, log_dir, classifier_dir):
    assert run_entry_point_in_process(f"ckpt_path={checkpoint}", f"paths.log_dir={log_dir}", "eval.k=20",
                                      "eval.max_images=60", "eval.n_samples=100",
                                      f"eval.classifier_dir={classifier_dir}", script="eval.py") == 0
    (eval_dir,) = (log_dir / "evals").glob("*/*")
    (log_file,) = eval_dir.glob("*.log")
    messages = [line.split("] - ", 1)[1] for line in log_file.read_text().splitlines() if "] - " in line]
    return json.loads((eval_dir / "eval.json").read_text()), messages, (eval_dir / "report.md").read_text()


def test_eval_logs_each_stage_with_its_duration_and_records_it(checkpoint, tmp_path):
    record, messages, report = _evaluate(checkpoint, tmp_path / "first", tmp_path / "classifiers")
    assert {k for k in record if k.startswith("time/")} == {f"time/{s}_s" for s in (*VAE_STAGES, "total")}
    for stage in VAE_STAGES:
        done = [m for m in messages if m.startswith(f"{stage}: done in ")]
        assert len(done) == 1, (stage, messages)
        assert re.match(rf"{stage}: done in \d+\.\d s \(.+\)$", done[0]), done[0]
        assert 0 <= record[f"time/{stage}_s"] <= record["time/total_s"]
    assert sum(record[f"time/{s}_s"] for s in VAE_STAGES) <= record["time/total_s"] + 1e-3
    assert re.fullmatch(r"eval: done in \d+\.\d s \(load .+, write .+\)", messages[-1]), messages[-1]
    # The classifier: trained here, with its epochs and its time, and the stage says so.
    assert any(re.match(r"classifier epoch \d+/\d+: train accuracy", m) for m in messages)
    assert any(re.match(r"trained the reference classifier in \d+\.\d s", m) for m in messages)
    assert "classifier: done in" in next(m for m in messages if "trained once and cached in" in m)
    assert "## Time per stage" in report and "| nll |" in report

    record, messages, _ = _evaluate(checkpoint, tmp_path / "second", tmp_path / "classifiers")
    (line,) = [m for m in messages if m.startswith("classifier: done in ")]
    assert "loaded from the cache" in line and record["classifier/cached"] is True
    assert not any(m.startswith("classifier epoch") for m in messages)
