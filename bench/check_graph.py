"""On a GPU: the CUDA-graph training step gives the same training as the eager one.

    python bench/check_graph.py

Trains the same initial weights for 2 epochs with model.cuda_graph=true and =false through
the real DataModule, LightningModule and Trainer (batch 1024, so every epoch ends with a
ragged batch that runs eagerly), and compares:
  AE  (deterministic): every epoch-mean loss and the final weights, to float tolerance;
  VAE (sampled z, so different random draws): epoch-mean losses within 1 %;
the same with the values that change during training: a cosine learning rate with warm-up and
gradient clipping by norm (AE), and a linear KL warm-up on top (VAE), which the graph must read
from device tensors at every replay; then resumes the graphed AE from its last.ckpt for a 3rd epoch (the graph is recaptured
after the optimiser state is loaded) and checks global_step and the loss. Then stacks (issue 21):
two AEs of different learning rates on a cosine schedule with clipping (StackedAdam, clipped per
member: every member's epoch losses and final weights to float tolerance) and two VAEs of different
β sharing a rate (fused Adam; each member's noise from its own generator registered with the graph:
epoch losses within 1 %).
"""

import copy
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


class History(pl.Callback):
    """Epoch-mean training losses (callbacks' epoch-end hooks run before the module logs them)."""

    def __init__(self):
        self.losses = []

    def _record(self, trainer):
        # train/loss of a single model; train/loss@0, train/loss@1, ... of a stack's members
        losses = [float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.split("@")[0] == "train/loss"]
        if losses:
            self.losses.append(losses[0] if len(losses) == 1 else losses)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > self.first_epoch:
            self._record(trainer)

    def on_train_start(self, trainer, pl_module):
        self.first_epoch = trainer.current_epoch

    def on_train_end(self, trainer, pl_module):
        self._record(trainer)


def fit(module, data_root, epochs, run_dir=None, ckpt_path=None):
    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=str(data_root), source="local", batch_size=1024, val_size=5000)
    history = History()
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=run_dir is not None,
                         default_root_dir=run_dir, callbacks=[history], limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return history.losses, trainer


def stack(members: list[dict], cuda_graph: bool) -> LitAutoencoder:
    """A stack of LitAutoencoders (member n initialised from seed n, its noise from its own CUDA generator)."""
    built = []
    for seed, settings in enumerate(members):
        torch.manual_seed(seed)
        built.append(LitAutoencoder(recon_loss="bce", cuda_graph=cuda_graph, **settings))
    return LitAutoencoder.stack(built, [torch.Generator("cuda").manual_seed(seed) for seed in range(len(members))])


def check_stacks(data_root: Path) -> int:
    cosine = {"optimizer": {"scheduler": "cosine", "warmup_steps": 20}, "gradient_clip_val": 1.0}
    cases = {
        "stack of 2 AEs, lr 1e-3 and 3e-3 (StackedAdam), cosine lr + clipping per member":
            ("ae", [{"name": "ae", "lr": 1e-3, **cosine}, {"name": "ae", "lr": 3e-3, **cosine}]),
        "stack of 2 VAEs, beta 1 and 4, one lr (fused Adam), linear KL warm-up":
            ("vae", [{"name": "vae", "beta": beta, "kl_schedule": "linear", "kl_period": 1} for beta in (1.0, 4.0)]),
    }
    failures = 0
    for label, (model, members) in cases.items():
        graphed, eager = stack(members, True), stack(members, False)
        graph_losses, trainer = fit(graphed, data_root, 2)
        eager_losses, _ = fit(eager, data_root, 2)
        rel = max(abs(g - e) / abs(e) for ge, ee in zip(graph_losses, eager_losses) for g, e in zip(ge, ee))
        weight_diff = max((a - b).abs().max().item() for a, b in zip(graphed.parameters(), eager.parameters()))
        tolerance = 1e-4 if model == "ae" else 1e-2
        ok = (graphed._graph is not None and eager._graph is None and trainer.global_step == 2 * 54
              and rel < tolerance and (model == "vae" or weight_diff < 1e-3) and not graphed.failures)
        failures += not ok
        print(f"{label}: epoch losses per member graph {graph_losses} eager {eager_losses}; max rel diff {rel:.2e} "
              f"(tolerance {tolerance:g}); max |weight diff| {weight_diff:.2e}: {'OK' if ok else 'FAIL'}")
    return failures


def main() -> int:
    silence_known_noise()
    assert torch.cuda.is_available(), "check_graph.py needs a CUDA device"
    root = Path(tempfile.mkdtemp())
    note, data_root = prepare_data(root, None)
    print(f"data: {note}; {torch.cuda.get_device_name()}")
    failures = 0
    scheduled = {"optimizer": {"scheduler": "cosine", "warmup_steps": 20}, "gradient_clip_val": 1.0}
    cases = {
        "ae": {"name": "ae"},
        "vae": {"name": "vae"},
        "ae, cosine lr + clipping": {"name": "ae", **scheduled},
        "vae, linear KL warm-up + cosine lr + clipping": {"name": "vae", "kl_schedule": "linear", "kl_period": 1,
                                                          **scheduled},
    }
    for label, settings in cases.items():
        model = settings["name"]
        torch.manual_seed(0)
        graphed = LitAutoencoder(recon_loss="bce", cuda_graph=True, **settings)
        eager = LitAutoencoder(recon_loss="bce", cuda_graph=False, **settings)
        eager.load_state_dict(copy.deepcopy(graphed.state_dict()))
        graph_losses, graph_trainer = fit(graphed, data_root, 2, run_dir=str(root / label.replace(" ", "_")))
        eager_losses, _ = fit(eager, data_root, 2)
        assert graphed._graph is not None and eager._graph is None
        steps = graph_trainer.global_step
        rel = [abs(g - e) / abs(e) for g, e in zip(graph_losses, eager_losses)]
        weight_diff = max((a - b).abs().max().item() for a, b in zip(graphed.parameters(), eager.parameters()))
        lr = [float(m.optimizers().optimizer.param_groups[0]["lr"]) for m in (graphed, eager)]
        tolerance = 1e-4 if model == "ae" else 1e-2
        ok = (max(rel) < tolerance and steps == 2 * 54 and (model == "vae" or weight_diff < 1e-3)
              and abs(lr[0] - lr[1]) <= 1e-9)
        failures += not ok
        print(f"{label}: epoch losses graph {graph_losses} eager {eager_losses}; max rel diff {max(rel):.2e} "
              f"(tolerance {tolerance:g}); max |weight diff| {weight_diff:.2e}; final lr {lr[0]:.3g} / {lr[1]:.3g}; "
              f"global_step {steps}: {'OK' if ok else 'FAIL'}")
    failures += check_stacks(data_root)
    resumed = LitAutoencoder(name="ae", recon_loss="bce", cuda_graph=True)
    losses, trainer = fit(resumed, data_root, 3, run_dir=str(root / "ae-resumed"),
                          ckpt_path=str(next((root / "ae").rglob("*.ckpt"))))
    ok = trainer.global_step == 3 * 54 and len(losses) == 1 and resumed._graph is not None
    failures += not ok
    print(f"ae resumed for epoch 3: loss {losses}, global_step {trainer.global_step}: {'OK' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
