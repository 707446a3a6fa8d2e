"""Early stopping (callbacks.early_stopping, training/callbacks/early_stopping.py) in a single run and
in a stack, where it stops one member alone.

A `min_delta` larger than any change makes every validation after the first one without improvement:
the run stops at epoch `patience`, deterministically. In a stack, a member of a tiny learning rate
stops that way while a member of a large one keeps improving by more than `min_delta`; each equals
its single run (records, CSV rows, checkpoints: its test draws the noise its single run's does), and
the stopped member's weights and Adam state after the fit are those of its stop.
Its settings' refusals are among the cases of tests/test_config.py.
"""

from pathlib import Path

import pytorch_lightning as pl
import torch

from test_stacked_runs import _assert_same_checkpoint, _assert_same_run, _config, _record, _rows
from vaelab.checkpoints import read_checkpoint
from vaelab.naming import register_resolvers
from vaelab.tasks.train import run, train_stack

PATIENCE = 2
NEVER_IMPROVES = ["callbacks.early_stopping.min_delta=1e9", f"callbacks.early_stopping.patience={PATIENCE}",
                  "trainer.max_epochs=6", "callbacks.latent_panels.every_n_epochs=0"]
# At lr 1e-9 val/loss moves by its validation noise (the VAE's ε, ~0.5 nats), never by 2; at 3e-3 it falls by
# 26, 5.4, 3.4 and 1.8 nats in epochs 1 to 4: one validation without improvement, fewer than the patience.
SLOW, FAST = ["model.lr=1e-9"], ["model.lr=3e-3"]
ONE_SLOW_ONE_FAST = ["callbacks.early_stopping.min_delta=2", f"callbacks.early_stopping.patience={PATIENCE}",
                     "trainer.max_epochs=5", "callbacks.latent_panels.every_n_epochs=0"]


def _validated_epochs(run_dir: Path) -> list[int]:
    _, rows = _rows(run_dir)
    return sorted({int(row["epoch"]) for row in rows if row.get("val/loss")})


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_a_single_run_stops_after_patience_validations_without_improvement(shared_data_dir, tmp_path):
    register_resolvers()
    run(_config(shared_data_dir, tmp_path / "single", 1, 0, *NEVER_IMPROVES))
    record = _record(tmp_path / "single")
    assert record["status"] == "completed"
    # Epoch 0 sets the best value; epochs 1 and 2 do not improve on it: it stops at the end of epoch 2.
    assert (record["stopped_early"], record["stopped_epoch"], record["epochs"]) == (True, PATIENCE, PATIENCE + 1)
    assert _validated_epochs(tmp_path / "single") == list(range(PATIENCE + 1))
    assert read_checkpoint(tmp_path / "single" / "checkpoints" / "last.ckpt")["epoch"] == PATIENCE


def test_off_by_default_and_recorded_as_not_stopped_when_on(shared_data_dir, tmp_path):
    register_resolvers()
    run(_config(shared_data_dir, tmp_path / "off", 1, 0, "trainer.max_epochs=1"))
    assert "stopped_early" not in _record(tmp_path / "off")
    run(_config(shared_data_dir, tmp_path / "on", 1, 0, "trainer.max_epochs=1", "callbacks.early_stopping.patience=5"))
    record = _record(tmp_path / "on")
    assert record["stopped_early"] is False and record["epochs"] == 1


def _members(pl_module: pl.LightningModule, optimizer) -> list[tuple[dict, dict]]:
    """Each member's weights and Adam state (its moments), as copies."""
    stack = pl_module.model
    return [(stack.member_state_dict(n), stack.member_optimizer_state(n, optimizer)["state"]) for n in range(stack.n)]


class _Fit(pl.Callback):
    """Each member's weights and Adam state at the end of epoch PATIENCE (after its early stopping has
    looked: this callback comes after the members' own) and as the fit leaves them (before the test
    loads the best weights)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == PATIENCE:
            self.at_stop = _members(pl_module, trainer.optimizers[0])

    def on_fit_end(self, trainer, pl_module) -> None:
        self.epochs = trainer.current_epoch
        self.after_fit = _members(pl_module, trainer.optimizers[0])


def _assert_as_at_its_stop(fit: _Fit, n: int) -> None:
    """Member n's weights and Adam moments after the fit are exactly those it had when it stopped."""
    (weights, state), (stopped_weights, stopped_state) = fit.after_fit[n], fit.at_stop[n]
    for name, value in weights.items():
        assert torch.equal(value, stopped_weights[name]), name
    for i, saved in stopped_state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[i][key], saved[key]), (i, key)


def test_a_stacked_member_stops_alone_as_its_single_run_and_keeps_its_weights(shared_data_dir, tmp_path):
    register_resolvers()
    jobs = [(1, 0, SLOW), (1, 1, FAST)]
    for n, (beta, seed, rate) in enumerate(jobs):
        run(_config(shared_data_dir, tmp_path / f"single{n}", beta, seed, *rate, *ONE_SLOW_ONE_FAST))
    cfgs = [_config(shared_data_dir, tmp_path / f"member{n}", beta, seed, *rate, *ONE_SLOW_ONE_FAST)
            for n, (beta, seed, rate) in enumerate(jobs)]
    fit = _Fit()
    assert [r.status for r in train_stack(cfgs, callbacks=[fit])] == ["completed", "completed"]
    slow, fast = _record(tmp_path / "member0"), _record(tmp_path / "member1")
    assert (slow["stopped_early"], slow["stopped_epoch"], slow["epochs"]) == (True, PATIENCE, PATIENCE + 1)
    assert (fast["stopped_early"], fast["epochs"]) == (False, 5)
    assert _validated_epochs(tmp_path / "member0") == list(range(PATIENCE + 1))
    assert _validated_epochs(tmp_path / "member1") == list(range(5))
    for n in range(2):  # each member is its single run: records, CSV rows, checkpoints
        _assert_same_run(tmp_path / f"member{n}", tmp_path / f"single{n}")
        _assert_same_checkpoint(tmp_path / f"member{n}", tmp_path / f"single{n}")
        assert _checkpoints(tmp_path / f"member{n}") == _checkpoints(tmp_path / f"single{n}")
        last, single_last = (read_checkpoint(tmp_path / f"{run}{n}" / "checkpoints" / "last.ckpt")
                             for run in ("member", "single"))
        assert (last["epoch"], last["global_step"]) == (single_last["epoch"], single_last["global_step"])
    # The stopped member was tested on its best weights; the fit left it as it was when it stopped.
    _assert_as_at_its_stop(fit, 0)
    (trained_on, _), (at_stop, _) = fit.after_fit[1], fit.at_stop[1]  # while the other trained on
    assert not all(torch.equal(value, at_stop[name]) for name, value in trained_on.items())


def test_a_stack_whose_members_all_stop_ends_its_fit(shared_data_dir, tmp_path):
    register_resolvers()
    cfgs = [_config(shared_data_dir, tmp_path / f"member{n}", 1, seed, *NEVER_IMPROVES, "test=false")
            for n, seed in enumerate((0, 1))]
    fit = _Fit()
    assert [r.status for r in train_stack(cfgs, callbacks=[fit])] == ["completed", "completed"]
    assert fit.epochs == PATIENCE + 1  # not trainer.max_epochs=6
    for n in range(2):
        record = _record(tmp_path / f"member{n}")
        assert (record["stopped_early"], record["stopped_epoch"], record["epochs"]) == (True, PATIENCE, PATIENCE + 1)
        _assert_as_at_its_stop(fit, n)
