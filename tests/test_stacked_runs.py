"""Stacked runs (vaelab.tasks.train_stack): each member of a stack is the run its job makes alone.

A 2×2 grid (β ∈ {1, 4} × seed ∈ {0, 1}) trains once job by job with `vaelab.tasks.train.run` and
once as one stack; every member's metrics.json, CSV record and best checkpoint must match its
single run's. Then a stack where one member overflows (β = 1e39: its loss is inf at the first
step) and one is poisoned mid-epoch (NaN weights before step 5): both fail with the error their
single runs fail with, the others complete and still equal their single runs.
"""

import csv
import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from conftest import REPO, small_run_overrides
from vaelab.checkpoints import read_checkpoint
from vaelab.errors import NonFiniteLossError
from vaelab.naming import register_resolvers
from vaelab.tasks.eval import load_model
from vaelab.tasks.train import run
from vaelab.tasks.train_stacked import MemberResult, train_stack

GRID = [(1, 0), (4, 0), (1, 1), (4, 1)]  # (β, seed), in job order
OVERFLOW_BETA = 1e39  # inf in float32: the member's loss is inf at the first step
RTOL = 1e-4
TERMS = [f"{stage}/{term}" for stage in ("train", "val", "test") for term in ("recon", "kl", "loss", "nelbo")]
# Keys that name the run or time it: they differ between a member and its single run by design.
PER_RUN = {"run_dir", "run_name", "best_checkpoint", "last_checkpoint", "stacked", "time/data_s", "time/fit_s",
           "time/test_s"}


def _config(data_dir: Path, run_dir: Path, beta: float, seed: int):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*small_run_overrides(data_dir, run_dir.parent / "logs"),
                                                        "logger=csv", f"model.beta={beta}", f"seed={seed}"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.run_name = run_dir.name  # the run_name resolver reads Hydra's runtime config
    OmegaConf.resolve(cfg)
    run_dir.mkdir(parents=True)
    return cfg


def _record(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def _rows(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (Path(run_dir) / "csv" / "metrics.csv").open() as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _max_rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _assert_same_run(member_dir: Path, single_dir: Path) -> float:
    """The member's record and CSV equal the single run's (numbers within RTOL); the largest relative difference."""
    member, single = _record(member_dir), _record(single_dir)
    assert set(member) - PER_RUN == set(single) - PER_RUN
    worst = 0.0
    for key, value in single.items():
        if key in PER_RUN:
            continue
        if isinstance(value, float) and key != "beta":
            assert member[key] == pytest.approx(value, rel=RTOL), key
            worst = max(worst, _max_rel(member[key], value))
        else:
            assert member[key] == value, key
    columns, rows = _rows(member_dir)
    single_columns, single_rows = _rows(single_dir)
    assert columns == single_columns and len(rows) == len(single_rows)
    for row, single_row in zip(rows, single_rows):
        for column in columns:
            if single_row[column] in ("", "0", "0.0") or column in ("epoch", "step"):
                assert row[column] == single_row[column], column
            else:
                assert float(row[column]) == pytest.approx(float(single_row[column]), rel=RTOL), column
                worst = max(worst, _max_rel(float(row[column]), float(single_row[column])))
    assert sorted(p.name for p in (member_dir / "images").iterdir()) == \
        sorted(p.name for p in (single_dir / "images").iterdir())
    return worst


def _assert_same_checkpoint(member_dir: Path, single_dir: Path) -> float:
    """The member's best checkpoint is the single run's (weights within tolerance); the largest absolute difference."""
    member = read_checkpoint(_record(member_dir)["best_checkpoint"])
    single = read_checkpoint(_record(single_dir)["best_checkpoint"])
    assert Path(_record(member_dir)["best_checkpoint"]).name == Path(_record(single_dir)["best_checkpoint"]).name
    assert member["hyper_parameters"] == single["hyper_parameters"]
    assert (member["epoch"], member["global_step"]) == (single["epoch"], single["global_step"])
    assert list(member["state_dict"]) == list(single["state_dict"])
    worst = 0.0
    for name, value in single["state_dict"].items():
        torch.testing.assert_close(member["state_dict"][name], value, rtol=RTOL, atol=1e-5)
        worst = max(worst, float((member["state_dict"][name] - value).abs().max()))
    # Its Adam state has the single run's layout (a resume of the member alone could load it).
    for i, state in single["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(member["optimizer_states"][0]["state"][i]["exp_avg"], state["exp_avg"],
                                   rtol=1e-3, atol=1e-6)
    load_model(Path(_record(member_dir)["best_checkpoint"]), torch.device("cpu"))  # as eval.py loads it
    return worst


@pytest.fixture(scope="module")
def grid(shared_data_dir, tmp_path_factory):
    """The 2×2 grid run alone, job by job, and as one stack."""
    register_resolvers()
    root = tmp_path_factory.mktemp("stacked")
    singles = []
    for beta, seed in GRID:
        run(_config(shared_data_dir, root / f"single-beta{beta}-seed{seed}", beta, seed))
        singles.append(root / f"single-beta{beta}-seed{seed}")
    cfgs = [_config(shared_data_dir, root / f"member-beta{beta}-seed{seed}", beta, seed) for beta, seed in GRID]
    started = time.perf_counter()
    results = train_stack(cfgs)
    seconds = time.perf_counter() - started
    return root, singles, [Path(c.paths.output_dir) for c in cfgs], results, seconds


def test_a_stacked_grid_equals_its_single_runs(grid):
    root, singles, members, results, seconds = grid
    worst_metrics = worst_weights = 0.0
    for n, (member_dir, single_dir, result) in enumerate(zip(members, singles, results)):
        record = _record(member_dir)
        assert record["status"] == "completed" and record["stacked"] == {"members": 4, "index": n}
        assert result == MemberResult("completed", record["val/loss"], None)
        assert set(TERMS) <= set(record)
        worst_metrics = max(worst_metrics, _assert_same_run(member_dir, single_dir))
        worst_weights = max(worst_weights, _assert_same_checkpoint(member_dir, single_dir))
        assert (member_dir / "checkpoints" / "last.ckpt").is_file()
        assert sorted(p.name for p in (member_dir / "checkpoints").iterdir()) == \
            sorted(p.name for p in (single_dir / "checkpoints").iterdir())
    alone = sum(_record(d)["time/fit_s"] + _record(d)["time/test_s"] for d in singles)
    print(f"\nfit + test: stack of 4 {seconds:.1f} s (train_stack), the 4 jobs alone {alone:.1f} s; max relative "
          f"difference to the single runs: metrics {worst_metrics:.2e}; max absolute difference of the best "
          f"weights {worst_weights:.2e}")


def test_jobs_that_differ_in_more_than_member_settings_do_not_stack(shared_data_dir, tmp_path):
    register_resolvers()
    cfgs = [_config(shared_data_dir, tmp_path / f"job{i}", 1, i) for i in range(2)]
    with open_dict(cfgs[1]):
        cfgs[1].model.latent_dim = 8
    with pytest.raises(ValueError, match="per-member settings"):
        train_stack(cfgs)
    assert not (tmp_path / "job0" / "metrics.json").exists()


def _poison(step: int, member: int):
    """A before_step hook: NaN weights for `member` before training step `step`."""
    def hook(module, global_step: int) -> None:
        if global_step == step:
            with torch.no_grad():
                module.model.encoder[0].weight[member].fill_(math.nan)
    return hook


def test_b_a_failing_member_fails_alone(grid, shared_data_dir, tmp_path):
    root, singles, _, _, _ = grid
    overflow_single = tmp_path / "single-overflow"
    with pytest.raises(NonFiniteLossError):
        run(_config(shared_data_dir, overflow_single, OVERFLOW_BETA, 1))
    jobs = [(1, 0), (OVERFLOW_BETA, 1), (4, 1), (4, 0)]  # the last one is poisoned before step 5
    cfgs = [_config(shared_data_dir, tmp_path / f"member{n}", beta, seed) for n, (beta, seed) in enumerate(jobs)]
    results = train_stack(cfgs, before_step=_poison(5, member=3))
    assert [r.status for r in results] == ["completed", "failed", "completed", "failed"]

    # Members 0 and 2 are the grid's jobs (β=1, seed 0) and (β=4, seed 1): still equal to their single runs.
    _assert_same_run(tmp_path / "member0", singles[0])
    _assert_same_run(tmp_path / "member2", singles[3])
    _assert_same_checkpoint(tmp_path / "member2", singles[3])

    # The overflowing member fails as its single run does: same status, error and keys.
    member, single = _record(tmp_path / "member1"), _record(overflow_single)
    assert member["status"] == single["status"] == "failed"
    assert member["error"] == single["error"] == results[1].error
    assert set(member) - PER_RUN == set(single) - PER_RUN
    assert results[1].value is None

    # The poisoned one fails at the next check (log_every_n_steps=2: after step 6), before any checkpoint.
    poisoned = _record(tmp_path / "member3")
    assert re.fullmatch(r"the training loss became nan at step 6 \(epoch 0\); lower model.lr .*", poisoned["error"])
    assert not (tmp_path / "member3" / "checkpoints").exists()
    _, rows = _rows(tmp_path / "member3")
    assert [row["step"] for row in rows] == ["1", "3"]  # the step values logged before it broke


def test_a_member_resumes_alone_as_its_single_run_does(grid, shared_data_dir, tmp_path):
    """`train.py ckpt_path=<member>/checkpoints/last.ckpt` continues the member as the single run's
    last.ckpt continues it: the checkpoint holds its Adam state, loops, callbacks and noise generator."""
    _, singles, members, _, _ = grid
    resumed = []
    for name, source in (("from-member", members[3]), ("from-single", singles[3])):
        cfg = _config(shared_data_dir, tmp_path / name, 4, 1)
        with open_dict(cfg):
            cfg.ckpt_path = str(source / "checkpoints" / "last.ckpt")
            cfg.trainer.max_epochs = 3
        run(cfg)
        resumed.append(tmp_path / name)
    member, single = _record(resumed[0]), _record(resumed[1])
    assert (member["global_step"], member["best_epoch"]) == (single["global_step"], single["best_epoch"]) == (24, 2)
    for key in TERMS:
        assert member[key] == pytest.approx(single[key], rel=RTOL), key
