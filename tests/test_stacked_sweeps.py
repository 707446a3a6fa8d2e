"""`hydra/launcher=stacked`: which jobs of a sweep share a stacked model, and the sweep through the
real entry point (the numbers of a stack against single runs: tests/test_stacked_runs.py).

The stacked sweeps run inside the test's process (the stacked launcher trains in the sweep's
process); the unstacked sweep they must match is the shared β × seed grid of tests/shared_runs.py.
"""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from omegaconf import open_dict

from conftest import REPO, run_entry_point_in_process, small_run_overrides
from shared_runs import grid_overrides, sweep_dirs
from vaelab.sweeps.stacked import describe_plan
from vaelab.sweeps.stacking import group_jobs, why_not_stackable
from vaelab.reports.wandb_offline import summarize


def _grid(*sweep: str) -> list:
    """The composed config of every job of the sweep `sweep`, expanded by Hydra's basic sweeper."""
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(list(sweep)), None)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return [compose(config_name="train", overrides=list(job), return_hydra_config=True) for job in jobs]


def test_jobs_that_differ_only_in_per_member_settings_share_a_stack():
    configs = _grid("model.beta=1,4", "seed=0,1", "data.batch_size=64,128", "model.free_bits=0,0.5")
    stacks, alone = group_jobs(configs)
    assert alone == {}
    assert len(stacks) == 2  # one per batch size
    for members in stacks:
        assert len(members) == 8 and len({configs[i].data.batch_size for i in members}) == 1


def test_the_jobs_the_rule_puts_in_one_stack_are_members_the_stack_takes():
    """MEMBER_KEYS (the config's per-member keys) and the model type's `per_member` say one thing: every
    job grouped into a stack builds a member that models/stack.py accepts beside the others."""
    from vaelab.models.stack import Stack
    from vaelab.tasks.build import build

    configs = _grid("model.beta=1,4", "model.free_bits=0,0.5", "model.kl_schedule=constant,capacity",
                    "model.lr=1e-3,3e-3", "model.hidden_dims=[8]")
    (members,), alone = group_jobs(configs)
    assert alone == {} and len(members) == 16
    modules = [build("model", configs[i].model, image_shape=[1, 28, 28], pixel_range=[0.0, 1.0]) for i in members]
    assert Stack([m.model for m in modules]).n == 16


def test_another_learning_rate_stacks_another_architecture_is_another_stack_and_a_lone_job_says_why():
    configs = _grid("model.lr=1e-3,3e-3", "seed=0,1", "model.latent_dim=2,8")
    stacks, alone = group_jobs(configs)
    assert alone == {} and sorted(len(s) for s in stacks) == [4, 4]  # one per latent_dim, both rates in each
    for members in stacks:
        assert len({configs[i].model.latent_dim for i in members}) == 1
        assert {configs[i].model.lr for i in members} == {1e-3, 3e-3}
    configs = _grid("model.latent_dim=2,8", "model.lr=3e-3")
    stacks, alone = group_jobs(configs)
    assert stacks == [] and set(alone) == {0, 1}
    assert all("no other job differs from it only in seed, β, free bits, the KL schedule or model.lr" in why
               for why in alone.values())


@pytest.mark.parametrize(("overrides", "reason"), [
    (["trainer.devices=2"], "trainer.devices=2: a stack trains on one device"),
    (["ckpt_path=last.ckpt"], "ckpt_path: a resumed run trains alone"),
])
def test_jobs_that_cannot_stack_are_named_with_the_reason(overrides, reason):
    (cfg,) = _grid(*overrides)
    assert reason in why_not_stackable(cfg)


@pytest.mark.parametrize("overrides", [["model=ae"], ["model.net=conv"], ["model.objective=iwae", "model.k=5"],
                                       ["model.recon_loss=gaussian"], ["model.recon_loss=cbernoulli"],
                                       ["data.binarize=dynamic"], ["optimizer.scheduler=plateau"]])
def test_every_model_type_network_objective_and_likelihood_stacks(overrides):
    configs = _grid(*overrides, "seed=0,1")
    assert why_not_stackable(configs[0]) is None
    assert group_jobs(configs) == ([[0, 1]], {})


def test_the_plan_names_every_job_once():
    configs = _grid("model.beta=1,4", "seed=0,1", "trainer.devices=1,2")
    for num, cfg in enumerate(configs):  # as the launcher numbers them
        with open_dict(cfg):
            cfg.hydra.job.num = num
    stacks, alone = group_jobs(configs)
    lines = describe_plan(configs, stacks, alone)
    assert lines[0] == "8 jobs: 1 stack(s) of 4 jobs, 4 alone"
    assert lines[1].startswith("stack 1 (4 members, one model): #0 ")
    assert sum(line.startswith("alone: ") and "trainer.devices=2: a stack trains on one device" in line for line in lines) == 4


# -- slow: through the real entry point ------------------------------------------------------

@pytest.mark.slow
def test_a_stacked_sweep_gives_each_job_its_run_dir_wandb_run_and_the_numbers_of_the_unstacked_sweep(
        beta_seed_grid, shared_data_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_dir = tmp_path / "stacked"
    # The grid's own overrides (its data is another copy of the same synthetic set), stacked.
    code = run_entry_point_in_process("-m", *grid_overrides(shared_data_dir, log_dir), "hydra/launcher=stacked")
    output = "".join(capfd.readouterr())
    assert code == 0, output[-4000:]
    # the plan, before any job trains
    assert "4 jobs: 1 stack(s) of 4 jobs, 0 alone" in output and "stack 1 (4 members, one model): #0 " in output
    (stacked_sweep,) = sweep_dirs(log_dir)
    sweeps = {"stacked": stacked_sweep, "basic": beta_seed_grid}
    assert "training 4 jobs as one stacked model" in (sweeps["stacked"] / "0_vae-z4-beta1-seed0" / "train.log").read_text()

    jobs = {launcher: sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: p.name)
            for launcher, sweep in sweeps.items()}
    assert [p.name for p in jobs["stacked"]] == [p.name for p in jobs["basic"]] == [
        "0_vae-z4-beta1-seed0", "1_vae-z4-beta1-seed1", "2_vae-z4-beta4-seed0", "3_vae-z4-beta4-seed1"]
    group = f"train-{sweeps['stacked'].parent.name}_{sweeps['stacked'].name}"
    for index, (stacked, alone) in enumerate(zip(jobs["stacked"], jobs["basic"])):
        a, b = (json.loads((d / "metrics.json").read_text()) for d in (stacked, alone))
        assert a["stacked"] == {"members": 4, "index": index} and "stacked" not in b
        assert a["status"] == b["status"] == "completed"
        assert (a["best_epoch"], a["global_step"]) == (b["best_epoch"], b["global_step"])
        for key in (k for k in b if k.startswith(("train/", "val/", "test/"))):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
        assert {p.name for p in (stacked / "checkpoints").iterdir()} == {p.name for p in (alone / "checkpoints").iterdir()}
        assert {p.name for p in (stacked / "images").iterdir()} == {p.name for p in (alone / "images").iterdir()}
        assert (stacked / "csv" / "metrics.csv").read_text().splitlines()[0] == (alone / "csv" / "metrics.csv").read_text().splitlines()[0]
        (run_file,) = stacked.glob("wandb/offline-run-*/run-*.wandb")  # its own W&B run in the sweep's group
        run = summarize(run_file)
        assert (run["name"], run["group"]) == (stacked.name.split("_", 1)[1], group)
        beta, seed = (1, 1, 4, 4)[index], index % 2
        assert {f"model.beta={beta}", f"seed={seed}"} <= set(run["tags"])
        assert not {f"model.beta={5 - beta}", f"seed={1 - seed}"} & set(run["tags"])
        tested = [row["test/loss"] for row in run["history"] if "test/loss" in row]
        assert tested == [pytest.approx(a["test/loss"])]
        # The same keys as the job's single run logs, panels and the KL histogram included, at the same steps.
        (alone_file,) = alone.glob("wandb/offline-run-*/run-*.wandb")
        single = summarize(alone_file)
        assert _logged(run) == _logged(single)
        keys = {key for key, _ in _logged(run)}
        for logged in ("panels/reconstructions", "panels/prior_samples", "val/kl_per_dim"):  # images: <key>/path, ...
            assert any(key == logged or key.startswith(logged + "/") for key in keys), logged
        # Its checkpoints as W&B artifacts (log_model), as the single run logs them.
        assert [(a["type"], sorted(a["aliases"])) for a in run["artifacts"]] == \
            [(a["type"], sorted(a["aliases"])) for a in single["artifacts"]] != []
    # The summary cannot tell them apart: the same columns and values.
    rows = {launcher: (sweep / "summary.csv").read_text().splitlines() for launcher, sweep in sweeps.items()}
    assert rows["stacked"][0] == rows["basic"][0]


def _logged(run: dict) -> set[tuple[str, int]]:
    """(key, Lightning's step) of every value a W&B run logged, less W&B's own (_runtime, ...)."""
    return {(key, row.get("trainer/global_step")) for row in run["history"] for key in row if not key.startswith("_")}


@pytest.mark.slow
def test_a_member_refused_by_the_config_check_fails_alone_and_the_other_trains_alone(shared_data_dir, tmp_path, capfd):
    log_dir = tmp_path / "outputs"
    code = run_entry_point_in_process("-m", *small_run_overrides(shared_data_dir, log_dir), "trainer.max_epochs=1", "model.beta=1,-1",
                      "logger=csv", "hydra/launcher=stacked")
    output = "".join(capfd.readouterr())
    assert code == 1, output[-3000:]  # a failed job makes the sweep's exit code 1
    assert "Traceback" not in output and "error: model.beta=-1 must be a number >= 0" in output
    assert "2 jobs: 1 stack(s) of 2 jobs, 0 alone" in output
    (sweep_dir,) = sweep_dirs(log_dir)
    first, second = (json.loads((sweep_dir / name / "metrics.json").read_text())
                     for name in ("0_vae-z4-beta1", "1_vae-z4-beta-1"))
    assert first["status"] == "completed" and "stacked" not in first  # one member left: an ordinary run
    assert second["status"] == "failed" and "model.beta=-1 must be" in second["error"]


@pytest.mark.xdist_group("slurm")  # every SLURM test of the suite on one worker: one cluster
@pytest.mark.slow
def test_a_stacked_sweep_runs_inside_one_slurm_job(slurm_cluster, shared_data_dir, tmp_path):
    """docs/devices.md's way to stack on a cluster: the whole stacked sweep as one SLURM job (here srun's)."""
    command = ["srun", "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--partition=debug", sys.executable,
               str(REPO / "train.py"), "-m", *small_run_overrides(shared_data_dir, tmp_path), "trainer.max_epochs=1",
               "logger=csv", "model.beta=1,4", "hydra/launcher=stacked"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "LOCAL_RANK", "NODE_RANK", "MASTER_"))}
    result = subprocess.run(command, env={**env, **slurm_cluster.env}, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "2 jobs: 1 stack(s) of 2 jobs, 0 alone" in output
    (sweep,) = [p for p in tmp_path.glob("multirun/*/*") if p.is_dir()]
    for index, name in enumerate(["0_vae-z4-beta1", "1_vae-z4-beta4"]):
        record = json.loads((sweep / name / "metrics.json").read_text())
        assert record["status"] == "completed" and record["stacked"] == {"members": 2, "index": index}
        assert (sweep / name / "checkpoints" / "last.ckpt").is_file()
