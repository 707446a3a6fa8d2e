"""Train an AE or a (β-)VAE.

    python train.py                                  # VAE on MNIST, the defaults
    python train.py model=ae                         # plain autoencoder, same data and net
    python train.py model.beta=4 model.latent_dim=16 # β-VAE
    python train.py trainer.accelerator=cpu trainer.devices=2
"""

import os
import sys

import hydra
from omegaconf import DictConfig

os.environ.setdefault("VAELAB_ROOT", os.path.dirname(os.path.abspath(__file__)))

from vaelab.tasks.cli import (rank_overrides, refuse_unwritable_run_dir, refuse_used_run_dir,  # noqa: E402
                              report_errors, run_app, silence_known_noise)

silence_known_noise()


def check(cfg: DictConfig) -> None:
    from vaelab.config import check_train_config  # imported here so that `--help` stays fast

    check_train_config(cfg)


def train_stack(cfgs):
    from vaelab.tasks.train import train_stack  # imported here so that `--help` stays fast

    return train_stack(cfgs)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_errors(check, train_stack)
def main(cfg: DictConfig):
    from vaelab.tasks.train import run

    return run(cfg)


if __name__ == "__main__":
    sys.argv += rank_overrides(sys.argv[1:])  # srun's rank r > 0 of a single run: its own log, no .hydra/
    # refuse_unwritable_run_dir first: refuse_used_run_dir creates the directory
    run_app(main, command_line_checks=(refuse_unwritable_run_dir, refuse_used_run_dir))
