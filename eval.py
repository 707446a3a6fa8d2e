"""Evaluate a checkpoint: test metrics, importance-sampled NLL, latent diagnostics, panels, report.

    python eval.py ckpt_path=outputs/runs/<date>/<time>_vae-z20-beta1/checkpoints/last.ckpt
    python eval.py ckpt_path=<...>.ckpt eval.k=5000          # tighter NLL estimate
    python eval.py ckpt_path=<...>.ckpt eval.max_images=1000 # quicker, on part of the test set
"""

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("VAELAB_ROOT", os.path.dirname(os.path.abspath(__file__)))

from vaelab.tasks.cli import refuse_unwritable_run_dir, report_errors, run_app, silence_known_noise  # noqa: E402

silence_known_noise()


def check(cfg: DictConfig) -> None:
    from vaelab.config import check_eval_config  # imported here so that `--help` stays fast

    check_eval_config(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@report_errors(check)
def main(cfg: DictConfig):
    from vaelab.tasks.eval import run

    return run(cfg)


if __name__ == "__main__":
    run_app(main, command_line_checks=(refuse_unwritable_run_dir,))
