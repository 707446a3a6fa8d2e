"""Where the time of one vaelab training epoch goes, on the host: cProfile of the second epoch.

    python bench/profile_epoch.py [--batch-size 128] [--cuda-graph true|false] [--top 30]

Runs the real DataModule, LightningModule and Trainer in this process (validation, logging
and checkpointing off) and prints the functions with the most own time, then the most
cumulative time. On a GPU, time spent waiting for kernels shows up where the host syncs.
"""

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from bench_epoch import prepare_data  # noqa: E402
from vaelab.data import MNISTDataModule  # noqa: E402
from vaelab.tasks.cli import silence_known_noise  # noqa: E402
from vaelab.training import LitAutoencoder  # noqa: E402


class ProfileEpoch(pl.Callback):
    def __init__(self, epoch: int):
        self.epoch, self.profiler = epoch, cProfile.Profile()

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            self.profiler.enable()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self.profiler.disable()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cuda-graph", default="true", choices=["true", "false"])
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    silence_known_noise()
    _, data_root = prepare_data(Path(tempfile.mkdtemp()), None)
    dm = MNISTDataModule(data_dir=str(data_root), source="local", batch_size=args.batch_size, val_size=1)
    module = LitAutoencoder(recon_loss="bce", cuda_graph=args.cuda_graph == "true")
    callback = ProfileEpoch(epoch=1)
    trainer = pl.Trainer(accelerator="auto", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         callbacks=[callback])
    trainer.fit(module, datamodule=dm)
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(callback.profiler, stream=out).sort_stats(order).print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
