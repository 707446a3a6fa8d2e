"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, with every task of a job one rank
of the job's run and a failed rank ending its job and recorded (vaelab.sweeps.slurm)."""

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf, open_dict


@dataclass
class VaelabSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.vaelab_slurm_launcher.slurm_launcher.SlurmLauncher"
    # Given to srun: a task that exits with an error stops the job's other tasks.
    srun_args: List[str] = field(default_factory=lambda: ["--kill-on-bad-exit=1"])


ConfigStore.instance().store(group="hydra/launcher", name="vaelab_slurm", node=VaelabSlurmQueueConf,
                             provider="vaelab")


class SlurmLauncher(SubmititSlurmLauncher):
    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> JobReturn:
        """One task of the job, on its node (as submitit's launcher, plus vaelab.sweeps.slurm's rank settings)."""
        import submitit

        from vaelab.sweeps.slurm import end_with_failure, rank_settings

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.id = submitit.JobEnvironment().job_id
            sweep_config.hydra.job.num = job_num
        rank_settings(sweep_config)
        return end_with_failure(run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                        config=sweep_config, job_dir_key=job_dir_key,
                                        job_subdir_key="hydra.sweep.subdir"))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the jobs as one job array, as submitit's launcher does; wait for them and read
        each task's outcome with vaelab.sweeps.slurm."""
        import submitit

        from vaelab.sweeps.slurm import conclude, log, wait

        assert self.config is not None
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # submitit's names for every cluster; others get "slurm_"
        executor.update_parameters(**{key if key in shared else f"{self._EXECUTOR}_{key}": value
                                      for key, value in self.params.items() if key not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("SLURM sweep: %d jobs, output in %s", len(job_overrides), sweep_dir)
        params = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*params))
        wait(jobs)
        return [conclude(job, num, overrides, sweep_dir, functools.partial(self._job_dir, num, overrides))
                for num, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx)]

    def _job_dir(self, job_num: int, overrides: Sequence[str]) -> Path:
        """Where Hydra puts job `job_num` (hydra.sweep.dir / hydra.sweep.subdir, as run_job resolves them)."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = job_num
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)  # the subdir's ${run_name:} reads it
        try:
            return Path(str(config.hydra.sweep.dir)) / str(OmegaConf.select(config, "hydra.sweep.subdir"))
        finally:
            HydraConfig.instance().cfg = previous  # as run_job restores it
