"""Stacked runs (vaelab.tasks.train_stack): each member of a stack is the run its job makes alone.

A 2×2 grid (β ∈ {1, 4} × seed ∈ {0, 1}) trains once job by job with `vaelab.tasks.train.run` and
once as one stack; every member's metrics.json, CSV record and best checkpoint must match its
single run's. Then a stack where one member overflows (β = 1e39: its loss is inf at the first
step) and one is poisoned mid-epoch (NaN weights before step 5): both fail with the error their
single runs fail with, the others complete and still equal their single runs. Last, members of
different learning rates (a StackedAdam), at a constant rate and on the cosine schedule with
warm-up and a floor: each equals its job alone, its train/lr values included.
"""

import csv
import json
import math
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from conftest import REPO, small_run_overrides
from vaelab.checkpoints import read_checkpoint
from vaelab.errors import NonFiniteLossError, RunInterrupted
from vaelab.naming import register_resolvers
from vaelab.tasks.eval import load_model
from vaelab.tasks.train import MemberResult, run, train_stack

GRID = [(1, 0), (4, 0), (1, 1), (4, 1)]  # (β, seed), in job order
OVERFLOW_BETA = 1e39  # inf in float32: the member's loss is inf at the first step
RTOL = 1e-4
# nats, beside RTOL: the KL's parts (val/tc, ...) are differences of log densities of order 1 and lie near 0
# (a member's tc 2.61560e-4 against its single run's 2.61504e-4), so float32 rounding counts absolutely.
ATOL = 1e-6
TERMS = [f"{stage}/{term}" for stage in ("train", "val", "test") for term in ("recon", "kl", "loss", "nelbo")]
# Keys that name the run or time it: they differ between a member and its single run by design.
PER_RUN = {"run_dir", "run_name", "best_checkpoint", "last_checkpoint", "stacked", "time/data_s", "time/fit_s",
           "time/test_s"}


def _config(data_dir: Path, run_dir: Path, beta: float, seed: int, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*small_run_overrides(data_dir, run_dir.parent / "logs"),
                                                        "logger=csv", f"model.beta={'null' if beta is None else beta}",
                                                        f"seed={seed}", *overrides])
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
            assert member[key] == pytest.approx(value, rel=RTOL, abs=ATOL), key
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
                assert float(row[column]) == pytest.approx(float(single_row[column]), rel=RTOL, abs=ATOL), column
                worst = max(worst, _max_rel(float(row[column]), float(single_row[column])))
    assert _images(member_dir) == _images(single_dir)
    return worst


def _images(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "images").glob("*"))


def _assert_same_checkpoint(member_dir: Path, single_dir: Path, lr: float = 1e-3) -> float:
    """The member's best checkpoint is the single run's (weights within tolerance); the largest absolute difference.

    The weights' tolerance grows with the rate `lr`: where a gradient is rounding noise (the weights
    of pixels that are near 0 in every image), Adam still steps by about ±lr, whichever sign the
    noise has. At lr 3e-3 a few such weights differ by 2.7e-5, on the fused path as much as with
    StackedAdam; at lr 1e-3, one of an IWAE's 50,176 decoder weights by 1.5e-5."""
    member = read_checkpoint(_record(member_dir)["best_checkpoint"])
    single = read_checkpoint(_record(single_dir)["best_checkpoint"])
    assert Path(_record(member_dir)["best_checkpoint"]).name == Path(_record(single_dir)["best_checkpoint"]).name
    assert member["hyper_parameters"] == single["hyper_parameters"]
    assert (member["epoch"], member["global_step"]) == (single["epoch"], single["global_step"])
    assert list(member["state_dict"]) == list(single["state_dict"])
    worst = 0.0
    for name, value in single["state_dict"].items():
        torch.testing.assert_close(member["state_dict"][name], value, rtol=RTOL, atol=2e-2 * lr)
        worst = max(worst, float((member["state_dict"][name] - value).abs().max()))
    # Its Adam state has the single run's layout (a resume of the member alone could load it).
    for i, state in single["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(member["optimizer_states"][0]["state"][i]["exp_avg"], state["exp_avg"],
                                   rtol=1e-3, atol=1e-6)
    load_model(Path(_record(member_dir)["best_checkpoint"]), torch.device("cpu"))  # as eval.py loads it
    return worst


# The tests on `grid` and `rates` stay on one pytest-xdist worker (make test: --dist loadgroup): each is trained once.
on_grid = pytest.mark.xdist_group("stacked_grid")


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


@on_grid
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


# Model types, networks, objectives and likelihoods that the stack runs through the member's own code.
KINDS = {
    "ae": ["model=ae"],
    "conv": ["model.net=conv", "model.hidden_dims=[4,8]"],
    "iwae-linear": ["model.objective=iwae", "model.k=3", "model.kl_schedule=linear"],
    "gaussian-learned-sigma": ["model.recon_loss=gaussian"],
    "dynamic-binarisation": ["data.binarize=dynamic", "model.recon_loss=bce"],
    # patience 0 on val/kl, which grows in the first epochs: each member's rate halves, each at its own times
    "plateau": ["optimizer.scheduler=plateau", "optimizer.patience=0", "optimizer.monitor=val/kl", "trainer.max_epochs=3"],
    # colour images of your own (data=npz, 3×12×10, labels): the conv net on three channels
    "colour-npz": ["data=npz", "data.path={npz}", "data.mirrors=null", "data.test_size=64", "model.net=conv",
                   "model.hidden_dims=[4,8]"],
}


def _colour_npz(path: Path) -> Path:
    """A small .npz of colour images as data=npz reads it: x uint8 (N, H, W, 3), y labels."""
    generator = np.random.default_rng(0)
    np.savez(path, x=generator.integers(0, 256, (512, 12, 10, 3), dtype=np.uint8), y=generator.integers(0, 5, 512))
    return path


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_model_kind_stacks_and_each_member_equals_its_single_run(kind, shared_data_dir, tmp_path):
    register_resolvers()
    npz = _colour_npz(tmp_path / "colour.npz") if kind == "colour-npz" else None
    overrides = ["trainer.max_epochs=1", "callbacks.latent_panels.every_n_epochs=0",
                 *(o.format(npz=npz) for o in KINDS[kind])]
    jobs = [(1, 0), (4, 1)] if kind != "ae" else [(None, 0), (None, 1)]
    singles, cfgs = [], []
    for n, (beta, seed) in enumerate(jobs):
        run(_config(shared_data_dir, tmp_path / f"single{n}", beta, seed, *overrides))
        singles.append(tmp_path / f"single{n}")
        cfgs.append(_config(shared_data_dir, tmp_path / f"member{n}", beta, seed, *overrides))
    results = train_stack(cfgs)
    assert [r.status for r in results] == ["completed", "completed"]
    for member_dir, single_dir in zip([Path(c.paths.output_dir) for c in cfgs], singles):
        _assert_same_run(member_dir, single_dir)
        _assert_same_checkpoint(member_dir, single_dir)
        if kind == "colour-npz":  # trained on the colour images indeed
            assert _record(member_dir)["data/image_shape"] == [3, 12, 10]
        if kind == "plateau":  # the rate did fall, as the single run's did
            assert _record(member_dir)["train/lr"] == _record(single_dir)["train/lr"] < 1e-3


def test_jobs_that_differ_in_more_than_member_settings_do_not_stack(shared_data_dir, tmp_path):
    register_resolvers()
    cfgs = [_config(shared_data_dir, tmp_path / f"job{i}", 1, i) for i in range(2)]
    with open_dict(cfgs[1]):
        cfgs[1].model.latent_dim = 8
    with pytest.raises(ValueError, match="per-member settings"):
        train_stack(cfgs)
    assert not (tmp_path / "job0" / "metrics.json").exists()


class _Poison(pl.Callback):
    """NaN weights for `member` before training step `step`: a member that diverged."""

    def __init__(self, step: int, member: int):
        self.step, self.member = step, member

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.model.fc_mu.weight[self.member].fill_(math.nan)


@on_grid
def test_b_a_failing_member_fails_alone(grid, shared_data_dir, tmp_path):
    root, singles, _, _, _ = grid
    overflow_single = tmp_path / "single-overflow"
    with pytest.raises(NonFiniteLossError):
        run(_config(shared_data_dir, overflow_single, OVERFLOW_BETA, 1))
    jobs = [(1, 0), (OVERFLOW_BETA, 1), (4, 1), (4, 0)]  # the last one is poisoned before step 5
    cfgs = [_config(shared_data_dir, tmp_path / f"member{n}", beta, seed) for n, (beta, seed) in enumerate(jobs)]
    results = train_stack(cfgs, callbacks=[_Poison(5, member=3)])
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


def _resume_to_epoch_3(data_dir, tmp_path, member_dir, single_dir, *config_args) -> tuple[dict, dict]:
    """The records of `train.py ckpt_path=<dir>/checkpoints/last.ckpt trainer.max_epochs=3` from the
    member's run directory and from the single run's, with the same config."""
    records = []
    for name, source in (("from-member", member_dir), ("from-single", single_dir)):
        cfg = _config(data_dir, tmp_path / name, *config_args)
        with open_dict(cfg):
            cfg.ckpt_path = str(source / "checkpoints" / "last.ckpt")
            cfg.trainer.max_epochs = 3
        run(cfg)
        records.append(_record(tmp_path / name))
    return records[0], records[1]


@on_grid
def test_a_member_resumes_alone_as_its_single_run_does(grid, shared_data_dir, tmp_path):
    """`train.py ckpt_path=<member>/checkpoints/last.ckpt` continues the member as the single run's
    last.ckpt continues it: the checkpoint holds its Adam state, loops, callbacks and noise generator."""
    _, singles, members, _, _ = grid
    member, single = _resume_to_epoch_3(shared_data_dir, tmp_path, members[3], singles[3], 4, 1)
    assert (member["global_step"], member["best_epoch"]) == (single["global_step"], single["best_epoch"]) == (24, 2)
    for key in TERMS:
        assert member[key] == pytest.approx(single[key], rel=RTOL), key


def test_members_log_to_tensorboard_and_time_their_epochs_as_their_single_runs(shared_data_dir, tmp_path):
    """logger=tensorboard and EpochTimer in a stack: each member's own event file (panels included) and
    time/*_epoch_s, as its single run has them."""
    register_resolvers()
    overrides = ["logger=tensorboard", "trainer.max_epochs=1", "+callbacks.epoch_timer._target_=vaelab.training.callbacks.EpochTimer"]
    run(_config(shared_data_dir, tmp_path / "single", 1, 0, *overrides))
    cfgs = [_config(shared_data_dir, tmp_path / f"member{n}", beta, seed, *overrides) for n, (beta, seed) in enumerate(GRID[:2])]
    assert [r.status for r in train_stack(cfgs)] == ["completed", "completed"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def logged(run_dir: Path) -> tuple[set[str], set[str]]:
        scalars, images = set(), set()
        for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):  # one file per writer (fit, test)
            accumulator = EventAccumulator(str(events))
            accumulator.Reload()
            scalars |= set(accumulator.Tags()["scalars"])
            images |= set(accumulator.Tags()["images"])
        return scalars, images

    single = logged(tmp_path / "single")
    assert {"time/epoch_s", "time/train_epoch_s"} <= set(_record(tmp_path / "single"))
    for n in range(2):
        assert logged(tmp_path / f"member{n}") == single and any(tag.startswith("panels/") for tag in single[1])
        record = _record(tmp_path / f"member{n}")
        assert {"time/epoch_s", "time/train_epoch_s"} <= set(record) and record["time/epoch_s"] > 0


class _Signal(pl.Callback):
    """Sends this process `signum` before training step `step`, as a scheduler or Ctrl-C would."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@on_grid
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2], ids=lambda s: signal.Signals(s).name)
def test_a_signal_stops_the_stack_before_the_next_batch_and_each_member_resumes_alone(signum, grid, shared_data_dir,
                                                                                     tmp_path):
    """Every member leaves interrupted.ckpt and status interrupted; the member resumed alone with
    `ckpt_path=` ends where its single run, never interrupted, ends."""
    _, singles, _, _, _ = grid
    jobs = GRID[:2]
    cfgs = [_config(shared_data_dir, tmp_path / f"member{n}", beta, seed) for n, (beta, seed) in enumerate(jobs)]
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    try:  # the signal arrives during step 3, which the stack finishes; it stops before step 4
        with pytest.raises(RunInterrupted, match=f"{signal.Signals(signum).name} stopped the run at epoch 0, step 4; "
                                                 f"resume each member alone"):
            train_stack(cfgs, callbacks=[_Signal(signum, 3)])
    finally:  # Lightning leaves SIGINT ignored after it shut down on one (train.py's process ends then)
        for number, handler in handlers.items():
            signal.signal(number, handler)
    for n in range(2):
        record = _record(tmp_path / f"member{n}")
        checkpoint = tmp_path / f"member{n}" / "checkpoints" / "interrupted.ckpt"
        assert (record["status"], record["signal"], record["global_step"]) == ("interrupted", signal.Signals(signum).name, 4)
        assert record["resume_checkpoint"] == str(checkpoint) and record["stacked"] == {"members": 2, "index": n}
        saved = read_checkpoint(checkpoint)
        assert saved["global_step"] == 4 and saved["hyper_parameters"]["beta"] == jobs[n][0]
    resumed = _config(shared_data_dir, tmp_path / "resumed1", *jobs[1])
    with open_dict(resumed):
        resumed.ckpt_path = str(tmp_path / "member1" / "checkpoints" / "interrupted.ckpt")
    run(resumed)
    member, single = _record(tmp_path / "resumed1"), _record(singles[1])
    assert (member["status"], member["global_step"]) == ("completed", single["global_step"])
    for key in TERMS:
        assert member[key] == pytest.approx(single[key], rel=RTOL), key


# -- a learning rate per member ------------------------------------------------------------------

COSINE = ["optimizer.scheduler=cosine", "optimizer.warmup_steps=3", "optimizer.min_lr=5e-4"]


def _assert_own_learning_rate(member_dir: Path, single_dir: Path, lr: float) -> None:
    """train/lr is the single run's, value for value; the best and last checkpoints hold the single
    run's optimiser param group (the member's own rate) and scheduler state, so a resume goes on alike."""
    member, single = _record(member_dir), _record(single_dir)
    assert member["train/lr"] == single["train/lr"]
    (_, rows), (_, single_rows) = _rows(member_dir), _rows(single_dir)
    logged = [row["train/lr"] for row in rows if row["train/lr"]]
    assert logged and logged == [row["train/lr"] for row in single_rows if row["train/lr"]]
    for name in (Path(member["best_checkpoint"]).name, "last.ckpt"):
        own, alone = (read_checkpoint(d / "checkpoints" / name) for d in (member_dir, single_dir))
        group, single_group = own["optimizer_states"][0]["param_groups"][0], alone["optimizer_states"][0]["param_groups"][0]
        assert group == single_group
        assert group.get("initial_lr", group["lr"]) == lr  # the base rate is the member's model.lr
        assert own["lr_schedulers"] == alone["lr_schedulers"]


@pytest.fixture(scope="module")
def rates(grid, shared_data_dir, tmp_path_factory):
    """Stacks of members with model.lr 1e-3 and 3e-3: at a constant rate (with a third member, at
    3e-3, poisoned before step 5) and on the cosine schedule; and the single runs to compare with."""
    _, grid_singles, _, _, _ = grid
    root = tmp_path_factory.mktemp("rates")
    started = time.perf_counter()
    run(_config(shared_data_dir, root / "single-lr0.003", 4, 1, "model.lr=3e-3"))
    constant_singles = [grid_singles[0], root / "single-lr0.003"]  # (β=1, seed 0) at 1e-3: the grid's job
    jobs = [(1, 0, 1e-3), (4, 1, 3e-3), (4, 0, 3e-3)]
    cfgs = [_config(shared_data_dir, root / f"constant{n}", beta, seed, f"model.lr={lr}")
            for n, (beta, seed, lr) in enumerate(jobs)]
    constant = train_stack(cfgs, callbacks=[_Poison(5, member=2)])
    cosine_singles = []
    for beta, seed, lr in jobs[:2]:
        run(_config(shared_data_dir, root / f"single-cosine-lr{lr}", beta, seed, f"model.lr={lr}", *COSINE))
        cosine_singles.append(root / f"single-cosine-lr{lr}")
    cfgs = [_config(shared_data_dir, root / f"cosine{n}", beta, seed, f"model.lr={lr}", *COSINE)
            for n, (beta, seed, lr) in enumerate(jobs[:2])]
    cosine = train_stack(cfgs)
    seconds = time.perf_counter() - started
    return root, constant_singles, constant, cosine_singles, cosine, seconds


@on_grid
def test_members_of_different_learning_rates_equal_their_single_runs(rates):
    root, constant_singles, constant, cosine_singles, cosine, seconds = rates
    assert [r.status for r in constant] == ["completed", "completed", "failed"]
    assert [r.status for r in cosine] == ["completed", "completed"]
    # The poisoned member's error names its own rate, as its single run's would.
    assert re.fullmatch(r"the training loss became nan at step 6 \(epoch 0\); lower model.lr \(now 0.003\) .*",
                        _record(root / "constant2")["error"])
    worst_metrics = worst_weights = 0.0
    for kind, singles in (("constant", constant_singles), ("cosine", cosine_singles)):
        for n, (single_dir, lr) in enumerate(zip(singles, (1e-3, 3e-3))):
            member_dir = root / f"{kind}{n}"
            assert _record(member_dir)["stacked"] == {"members": 3 if kind == "constant" else 2, "index": n}
            worst_metrics = max(worst_metrics, _assert_same_run(member_dir, single_dir))
            worst_weights = max(worst_weights, _assert_same_checkpoint(member_dir, single_dir, lr))
            _assert_own_learning_rate(member_dir, single_dir, lr)
    lrs = [float(row["train/lr"]) for row in _rows(root / "cosine1")[1] if row["train/lr"]]
    # Logged after steps 1, 3, ...: warm-up (2 of 3 steps), the peak, then the decay towards the floor.
    assert lrs[:2] == pytest.approx([2e-3, 3e-3]) and 5e-4 < lrs[-1] < lrs[2] < 3e-3
    print(f"\nlr 1e-3 and 3e-3 in one stack (constant, cosine; 3 single runs and 2 stacks in {seconds:.1f} s): "
          f"max relative difference of the metrics {worst_metrics:.2e}, max absolute difference of the best weights "
          f"{worst_weights:.2e}")


@on_grid
def test_a_member_of_its_own_learning_rate_resumes_alone_as_its_single_run_does(rates, shared_data_dir, tmp_path):
    """The cosine member at 3e-3 (of a stack whose rates differ) continues from its last.ckpt as the
    single run continues from its own: the same rates and numbers (one more epoch)."""
    root, _, _, cosine_singles, _, _ = rates
    member, single = _resume_to_epoch_3(shared_data_dir, tmp_path, root / "cosine1", cosine_singles[1], 4, 1,
                                        "model.lr=3e-3", *COSINE)
    assert member["global_step"] == single["global_step"] == 24
    assert member["train/lr"] == single["train/lr"]
    for key in TERMS:
        assert member[key] == pytest.approx(single[key], rel=RTOL), key
