"""What a default run prints: nothing a user cannot act on (issue 22). One real `python train.py`,
as a user runs it, on data small enough to hit the case of fewer batches than the logging interval."""

import re

from conftest import UNREACHABLE_MIRROR, run_entry_point

# What Lightning and wandb printed at every run before: each removed at its cause.
NOISE = {
    "wandb's warning about the anonymous setting Lightning passes": "anonymous setting",
    "a FLOPs count of 0 (no example input)": "Total FLOPs: 0",
    "Lightning's warning on fewer batches than the logging interval": "smaller than the logging interval",
    "Lightning's hint on a machine with SLURM installed": "`srun` command is available",
    "any Python warning": "Warning:",
    "a traceback": "Traceback",
}


def test_a_default_run_prints_nothing_a_user_cannot_act_on(shared_data_dir, tmp_path):
    # The defaults (W&B offline, the model summary, log_every_n_steps=50) on 512 training images: 4 batches an epoch.
    result = run_entry_point(f"data.data_dir={shared_data_dir}", f"data.mirrors=[{UNREACHABLE_MIRROR}]",
                             "data.val_size=128", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                             "trainer.enable_progress_bar=false", f"paths.log_dir={tmp_path}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    printed = {what: text for what, text in NOISE.items() if text in output}
    assert not printed, f"{printed}\n{output[-3000:]}"
    flops = re.search(r"Total FLOPs: ([\d.]+ ?[KMG]?)", output)
    assert flops and flops.group(1).strip() not in ("0", ""), output[-3000:]  # counted on one example image
    assert "step values: logged every 4 steps, once per epoch of 4 batches (trainer.log_every_n_steps=50)" in output
