"""What the entry points share: quiet known noise, check the config first, and turn VaelabErrors
and Hydra's own refusals into one clear line."""

import difflib
import functools
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig

from vaelab.errors import ConfigError, VaelabError
from vaelab.reports.summary import FAILED_SWEEP_EXIT_CODE
from vaelab.rundir import is_relaunched_rank, lock_run_dir, rank_hydra_settings, refuse_earlier_run
from vaelab.sweeps.jobs import describe_error, in_multirun, is_sweep_job, record_failure, run_sweep_job

log = logging.getLogger("vaelab")

# Printed by every Lightning process on these versions; nothing a user can act on. The second, on
# any machine with SLURM installed: how to run under SLURM is docs/devices.md's (srun, hydra/launcher=slurm).
# The last two, when a requeued SLURM job resumes in its own run directory: the earlier checkpoints
# are kept on purpose, and the earlier CSV record was set aside (metrics.until_restart<n>.csv);
# vaelab refuses every other run directory that holds files (vaelab.rundir.refuse_earlier_run).
_NOISE_WARNINGS = (r".*LeafSpec.*", r"The `srun` command is available on your system but is not used",
                   r"Experiment logs directory .* exists and is not empty",
                   r"Checkpoint directory .* exists and is not empty")
_NOISE_LOG_FRAGMENTS = ("litlogger", "LitLogger")


class _DropFragments(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in _NOISE_LOG_FRAGMENTS)


def silence_known_noise() -> None:
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropFragments())


# Directories that Hydra creates, and writes its log file into, before the task function runs.
_HYDRA_WRITES = ("hydra.run.dir", "hydra.sweep.dir", "paths.log_dir")


def unwritable_dir(path: Path) -> Optional[Path]:
    """What keeps this process from creating or writing into the directory `path`: `path`
    itself, or the nearest existing folder above it (where it would be created); None if nothing."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    return existing


def refuse_unwritable_run_dir(argv: list[str]) -> None:
    """ConfigError, before Hydra starts, if an explicit `hydra.run.dir` (or `hydra.sweep.dir`, or
    the `paths.log_dir` they are under) cannot be created or written: Hydra would fail in its
    logging setup with a page of traceback."""
    for arg in argv:
        key, _, value = arg.partition("=")
        key, value = key.lstrip("+"), value.strip("\"'")
        if key not in _HYDRA_WRITES or not value or "${" in value:
            continue
        blocked = unwritable_dir(Path(value))
        if blocked is not None:
            why = "is not writable by this user" if blocked.is_dir() else "is a file"
            where = "" if blocked == Path(value).absolute() else f" cannot be created: {blocked}"
            raise ConfigError(f"{key}={value}{where} {why}; give a {key} that you can write to, or leave it out")


def refuse_used_run_dir(argv: list[str]) -> None:
    """ConfigError (or the rundir check's VaelabError) before Hydra writes `.hydra/` if an explicit
    `hydra.run.dir` holds an earlier run or another process is writing it; otherwise this process
    holds it from now on.

    Default run directories are unique to the microsecond; only an explicit one can collide.
    """
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra.run.dir" and value:
            refuse_earlier_run(Path(value.strip("\"'")))
            # Before Hydra writes .hydra/ there: a second run given the same directory stops here.
            lock_run_dir(Path(value.strip("\"'")))


def rank_overrides(argv: list[str]) -> list[str]:
    """Rank r > 0 of a single run whose ranks srun started (`srun --ntasks-per-node=2 python
    train.py trainer.devices=2`): its Hydra settings (vaelab.rundir.rank_hydra_settings) as
    command-line overrides. The ranks of one srun share the run's directory (conf/hydra/default.yaml)."""
    if any(arg in ("-m", "--multirun") for arg in argv):  # a sweep's tasks get them from the SLURM launcher
        return []
    return [f"{key}={'null' if value is None else value}" for key, value in rank_hydra_settings().items()]


def hydra_refusal(err: Exception) -> Optional[str]:
    """One line for a command line that Hydra refuses before vaelab sees the config: a config
    choice or a key that does not exist, an override it cannot parse. None for any other error."""
    if isinstance(err, MissingConfigException) and err.options:
        group, _, choice = str(err.missing_cfg_file).rpartition("/")
        return f"{group}={choice}: no such choice; available: {', '.join(sorted(err.options))}"
    if isinstance(err, OverrideParseException):
        return f"{err.override}: not an override Hydra can read ({err.message.splitlines()[0]}); " \
               "the grammar: https://hydra.cc/docs/advanced/override_grammar/basic/"
    if not isinstance(err, ConfigCompositionException):
        return None
    cause = err.__cause__
    parent, key = getattr(cause, "parent_node", None), getattr(cause, "full_key", None)
    if isinstance(parent, DictConfig) and key and "not in struct" in str(cause):
        group = key.rpartition(".")[0]
        keys = [str(k) for k in parent.keys() if not str(k).startswith("_")]  # not _target_
        nearest = difflib.get_close_matches(str(cause.key), keys, n=1)
        where = f"{group}." if group else ""
        hint = f"did you mean {where}{nearest[0]}?" if nearest else \
            f"the keys {f'of {group} ' if group else ''}are {', '.join(keys)}"
        return f"{key}: no such key; {hint}"
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def run_app(main: Callable[[], Any], command_line_checks: Sequence[Callable[[list[str]], None]] = ()) -> None:
    """Run a @hydra.main function after `command_line_checks` (each given the command line, before
    Hydra starts: refuse_unwritable_run_dir, refuse_used_run_dir); what they refuse, and Hydra's
    refusals of the command line (`hydra_refusal`), end with one line and exit code 2, as vaelab's
    own do. A sweep whose sweeper re-raises a job's
    VaelabError (Hydra's basic sweeper does, for a job the stacked launcher reports failed; the
    job's record says what failed) ends with that line and the failed sweep's exit code.
    HYDRA_FULL_ERROR=1 shows Hydra's report and the traceback instead."""
    for check in command_line_checks:
        try:
            check(sys.argv[1:])
        except VaelabError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    shown = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them
    try:
        main()
    except Exception as err:
        if shown:
            raise
        message = hydra_refusal(err)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        if isinstance(err, VaelabError):  # single runs end in report_errors: this is a sweep's job
            print(f"error: {err}", file=sys.stderr)
            sys.exit(FAILED_SWEEP_EXIT_CODE)
        raise
    finally:
        if shown is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def report_errors(check: Callable[[DictConfig], None], train_stack: Optional[Callable] = None):
    """Wrap a Hydra task function: `check(cfg)` first, then the task. `train_stack(cfgs)` trains
    jobs as one stack (train.py's: vaelab.tasks.train.train_stack); the stacked launcher uses it.

    A single run that fails with a VaelabError (a value the check refuses, missing data, a NaN
    loss) ends with its message and exit code 2. A multirun job's failure is logged and recorded
    and the sweep goes on (see `vaelab.sweeps.jobs`).
    """
    # The script that a multi-device sweep job reruns as its own process (vaelab.sweeps.jobs);
    # taken now, in the launching process: joblib's and submitit's workers run other scripts.
    entry_point = os.path.abspath(sys.argv[0])

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(task)
        def wrapper(cfg: DictConfig) -> Any:
            if in_multirun():
                return run_sweep_job(check, task, cfg, entry_point)
            try:
                check(cfg)
                return task(cfg)
            except KeyboardInterrupt:  # before the fit (during it, the Preemption callback stops it)
                if not is_relaunched_rank():
                    log.error("interrupted (SIGINT) before training started; nothing was trained or saved")
                sys.exit(128 + signal.SIGINT)
            except Exception as err:
                if is_sweep_job():  # the own process of a multi-device sweep job: the sweep reads this
                    record_failure(cfg, describe_error(err))
                if not isinstance(err, VaelabError):
                    raise
                if not is_relaunched_rank():
                    log.error("%s", err)
                sys.exit(getattr(err, "exit_code", 2))  # 2, or 128 + signal for an interrupted run

        wrapper.check = check  # the stacked launcher checks each member before the stack trains
        wrapper.train_stack = train_stack  # and trains the stack with it (vaelab.sweeps.stacked)
        return wrapper

    return decorate
