"""Experiment loggers. conf/logger/<choice>.yaml names them with `_target_`; every choice
includes the CSV record (<run dir>/csv/metrics.csv) that vaelab's own tools read.

W&B across a resume. Every checkpoint keeps the W&B run it belongs to (`wandb_run`: the run's id
and the transaction logs `<run dir>/wandb/*run-*/run-<id>.wandb` that hold its history so far).
A run resumed from it (`ckpt_path=`, in a new run directory or, requeued by SLURM, in place) logs
into that W&B run (`id=<id>`, `resume="allow"`). Offline, W&B writes one `offline-run-*` folder per
attempt, all with the same id; `wandb sync` of all of them, oldest first, makes one run online.

The history goes on from the checkpoint's step. Rows that the interrupted attempt had logged after
its checkpoint (a kill -9 mid-epoch: the steps after last.ckpt) are not logged again: the W&B run
keeps the first copy (read back from the earlier transaction logs), which the exact resume
computes again bit for bit on the CPU, so every step is in the run once. The CSV record of the new
run directory has every row from the checkpoint's step on, the replayed ones included.
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only

from vaelab.lightning_compat import (artifact_name, logged_checkpoint_times, logged_keys, set_wandb_run_id,
                                              started_wandb_run, wandb_init_arguments)

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "wandb_run"  # in a checkpoint: {"id": <W&B run id>, "logs": [<transaction log>, ...]}
LIGHTNING_STEP = "trainer/global_step"  # the step Lightning's WandbLogger adds to every row


def wandb_online() -> bool:
    """W&B goes online only when the user asks; with a key but no network, init would hang."""
    return os.environ.get("WANDB_MODE", "").lower() == "online"


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, offline unless WANDB_MODE=online, in the `group` and with the `tags`
    the train task hands it: all jobs of a sweep share one group (a `group` set in the config wins),
    and each run is tagged with its overrides (`model=ae`, `model.beta=4`) after the config's own
    `tags` (vaelab.sweeps.jobs: sweep_group, override_tags).

    `log_model=true` logs the best checkpoint (the one `trainer.test` uses) as the artifact
    `model-<run id>` (aliases `best`, `latest`) once, at the end of a fit that finished. Offline the
    artifact is recorded in the run and refers to the checkpoint file in the run directory
    (`add_file_policy: immutable`: no copy), which `wandb sync` uploads. `log_model=all` is
    Lightning's: every checkpoint as it is written, each copied to W&B's staging directory first
    (`mutable`: last.ckpt is rewritten every epoch).
    """

    def __init__(self, group: Optional[str] = None, tags: Sequence[str] = (), log_model: Union[bool, str] = False,
                 add_file_policy: Optional[str] = None, **kwargs: Any):
        online = wandb_online()
        if not online:
            os.environ["WANDB_MODE"] = "offline"
        # Lightning refuses log_model with its offline flag; W&B records artifacts offline too, so the
        # mode goes to wandb.init instead.
        super().__init__(offline=False, mode=None if online else "offline", group=group,
                         tags=list(dict.fromkeys(tags)), log_model=log_model,
                         add_file_policy=add_file_policy or ("immutable" if log_model is True else "mutable"), **kwargs)
        # Lightning hands wandb.init anonymous=None, which this wandb warns about at every run
        # ("The anonymous setting has no effect"); left out, wandb says nothing.
        if wandb_init_arguments(self).get("anonymous", "given") is None:
            del wandb_init_arguments(self)["anonymous"]
        self._best_only = log_model is True  # log the tested checkpoint once, not Lightning's choice
        self._earlier_logs: list[str] = []  # the transaction logs of the attempts this run resumes
        self._resumed_at: Optional[int] = None  # the checkpoint's global step
        self._already_logged: Optional[set[tuple[int, frozenset[str]]]] = None
        self._best_of: Optional[Any] = None  # log_model=true: the checkpoint callback whose best is logged

    def continue_run(self, state: dict[str, Any], step: int) -> None:
        """Log into the W&B run a checkpoint at global step `step` belongs to (its `wandb_run`),
        unless the config names a run id itself (`+logger.wandb.id=...`: a branch of its own)."""
        if started_wandb_run(self) is not None:
            raise RuntimeError("continue_run must come before the W&B run starts")
        init = wandb_init_arguments(self)
        if init.get("id"):
            log.info("W&B: logging into run %s (logger.wandb.id), not into the checkpoint's run %s",
                     init["id"], state["id"])
            return
        set_wandb_run_id(self, state["id"])
        init["resume"] = "allow"
        self._earlier_logs = [str(p) for p in state.get("logs", [])]
        self._resumed_at = step
        log.info("W&B: continuing run %s from step %d", state["id"], step)

    def checkpoint_state(self) -> Optional[dict[str, Any]]:
        """What a checkpoint keeps of this W&B run; None where the run has not started (other ranks)."""
        run = started_wandb_run(self)
        if run is None or not getattr(run, "id", None):
            return None
        return {"id": run.id, "logs": [*self._earlier_logs, os.path.abspath(run.settings.sync_file)]}

    def _rows_already_logged(self) -> set[tuple[int, frozenset[str]]]:
        """(step, metric names) of the rows the earlier attempts logged at or after the checkpoint."""
        if self._already_logged is None:
            from vaelab.reports.wandb_offline import history

            self._already_logged = set()
            for path in self._earlier_logs:
                if not Path(path).is_file():
                    log.warning("W&B: %s (an earlier part of run %s) is not here: steps it logged after the checkpoint "
                                "may be in the run twice", path, self.version)
                    continue
                for row in history(path):
                    step = row.get(LIGHTNING_STEP)
                    if isinstance(step, int) and step >= self._resumed_at:
                        self._already_logged.add((step, frozenset(k for k in row if k != LIGHTNING_STEP
                                                                  and not k.startswith("_"))))
            if self._already_logged:
                steps = sorted({step for step, _ in self._already_logged})
                log.info("W&B: run %s holds %d rows at steps %d-%d, logged after the checkpoint by the run it resumes; "
                         "it keeps them, and the same rows are not logged again", self.version, len(self._already_logged),
                         steps[0], steps[-1])
        return self._already_logged

    @rank_zero_only
    def log_metrics(self, metrics, step: Optional[int] = None) -> None:
        if step is not None and self._resumed_at is not None and step >= self._resumed_at:
            names = logged_keys(self, metrics)
            if (step, names) in self._rows_already_logged():
                return
        super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if self._best_only:  # the best one, at the end (finalize), whatever save_top_k
            self._best_of = checkpoint_callback
        else:
            super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "success" and self._best_of is not None and started_wandb_run(self) is not None:
            self._log_best_checkpoint(self._best_of)

    def _log_best_checkpoint(self, callback) -> None:
        if not callback.best_model_path or not Path(callback.best_model_path).is_file():
            return
        path = str(Path(callback.best_model_path).resolve())  # offline, `wandb sync` reads it from here
        written = Path(path).stat().st_mtime
        if logged_checkpoint_times(self).get(path) == written:  # fit, then test: logged once
            return
        import wandb

        score = callback.best_model_score
        metadata = {"score": score.item() if isinstance(score, torch.Tensor) else score,
                    "original_filename": Path(path).name,
                    "ModelCheckpoint": {"monitor": callback.monitor, "mode": callback.mode}}
        artifact = wandb.Artifact(name=artifact_name(self) or f"model-{self.experiment.id}", type="model",
                                  metadata=metadata)
        artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
        self.experiment.log_artifact(artifact, aliases=["best", "latest"])
        logged_checkpoint_times(self)[path] = written

    def finish(self, failed: bool = False) -> None:
        """Close the run this logger started (if it did) so its file is complete and the next sweep
        job starts a new run; the members of a stack each close their own (`reinit="create_new"`)."""
        run = started_wandb_run(self)
        if run is not None:
            state = self.checkpoint_state()
            if self._earlier_logs and state is not None and not wandb_online():
                folders = " ".join(str(Path(p).parent) for p in state["logs"])
                log.info("W&B run %s is offline in %d parts; publish it with: wandb sync %s", state["id"],
                         len(state["logs"]), folders)
            run.finish(exit_code=1 if failed else 0)


def wandb_checkpoint_state(loggers: Sequence[Logger]) -> Optional[dict[str, Any]]:
    """The checkpoint's `wandb_run` (CHECKPOINT_KEY): None without a started W&B run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            return logger.checkpoint_state()
    return None


def continue_wandb_run(loggers: Sequence[Logger], checkpoint: dict[str, Any], ckpt_path: Union[str, Path]) -> None:
    """A resume from `checkpoint` (read from `ckpt_path`) logs into its W&B run (before the run starts)."""
    wandb_loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers:
        return
    state = checkpoint.get(CHECKPOINT_KEY)
    if state is None:
        log.info("W&B: %s belongs to no W&B run (trained with another logger): this run starts a new one", ckpt_path)
        return
    for logger in wandb_loggers:
        logger.continue_run(state, int(checkpoint["global_step"]))


def log_hyperparameters(loggers: list[Logger], params: dict[str, Any]) -> None:
    for logger in loggers:
        logger.log_hyperparams(params)


def finish_loggers(loggers: list[Logger], failed: bool = False) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.finish(failed=failed)


def log_summary_to_wandb_run(checkpoint: dict[str, Any], run_dir: Path, out_dir: Path, values: dict[str, Any]) -> None:
    """Give the W&B run that trained `checkpoint` (its CHECKPOINT_KEY id) `values` as summary values,
    which W&B's run tables and charts read; offline unless WANDB_MODE=online, into <out_dir>/wandb/
    (publish it with `wandb sync` after the training run's own folders). Summary, not history: a
    resumed run's history would start again at step 0. The project and entity are the training run's
    (its saved config in `run_dir`)."""
    from vaelab.reports.summary import run_config

    state = checkpoint.get(CHECKPOINT_KEY)
    if state is None or os.environ.get("WANDB_MODE", "").lower() == "disabled":
        log.info("W&B: the checkpoint belongs to no W&B run (trained with another logger, or W&B disabled)")
        return
    import wandb

    config = run_config(run_dir) or {}
    where = {key: value for key in ("project", "entity")
             if isinstance(value := config.get(f"logger.wandb.{key}"), str) and "${" not in value}
    run = wandb.init(id=state["id"], resume="allow", mode="online" if wandb_online() else "offline", dir=str(out_dir),
                     reinit="create_new", settings=wandb.Settings(silent=True), **where)
    run.summary.update(values)
    run.finish()
    log.info("W&B: summary values logged to run %s%s", state["id"],
             "" if wandb_online() else f"; publish with: wandb sync {out_dir / 'wandb'}/offline-run-*")
