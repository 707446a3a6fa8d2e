"""Probe: how fast N MLP VAEs train as one stack (vaelab.models.stack) against one at a time, per step.

    OMP_NUM_THREADS=1 python bench/probe_stacked.py                     # N = 4, 16 at batch 128
    OMP_NUM_THREADS=2 python bench/probe_stacked.py --members 4 --steps 10

One training step (forward, backward of the summed loss, fused Adam) of N MLP 784-400-20 VAEs
(issue 14), timed for
  single         one VAE alone, times N: N runs trained one after another
  stack          vaelab.models.stack.Stack (torch.func.vmap of the VAE's own losses), one batch
                 shared by all members
  stack-own      the same with a batch per member, (N, B, 1, 28, 28): members of different seeds
                 see different data orders
The first version of this probe (issue 14) also timed a stack written as batched linear layers
(baddbmm), 3-15 % faster than vmap on the CPU; issue 21 replaced it with the vmap of the model's
own code (bench/README.md). The loops run interleaved, --rounds times, after --warmup steps each;
the table gives the median ms per step and the per-member cost.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vaelab.models import VAE  # noqa: E402
from vaelab.models.stack import Stack  # noqa: E402

IMAGE = (1, 28, 28)


def build_members(n: int) -> list[VAE]:
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        members.append(VAE(IMAGE, 20, [400], recon_loss="mse", beta=2.0 ** (seed % 6 - 2)))
    return members


def adam(parameters) -> torch.optim.Adam:
    return torch.optim.Adam(parameters, lr=1e-3, fused=True)  # as vaelab.training.make_optimizer on the CPU


def single_step(members: list[VAE], batch: int):
    model = members[0]
    optimizer = adam(model.parameters())
    x = torch.rand(batch, *IMAGE)

    def step():
        optimizer.zero_grad()
        model.losses(x)["loss"].backward()
        optimizer.step()
    return step


def stack_step(members: list[VAE], batch: int, own_batches: bool):
    stack = Stack(members)
    optimizer = adam(stack.parameters())
    x = torch.rand(len(members), batch, *IMAGE) if own_batches else torch.rand(batch, *IMAGE)

    def step():
        optimizer.zero_grad()
        stack.objective(stack.losses(x)).backward()
        stack.mask_dead_gradients()
        optimizer.step()
    return step


def time_step(step, steps: int) -> float:
    """Mean ms per step over `steps` consecutive steps (one round)."""
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return 1e3 * (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per loop and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"MLP 784-400-20 VAE, mse, fused Adam; ms per step (median of {args.rounds} rounds)")
    print(f"{'N':>3} {'loop':<12} {'ms/step':>9} {'ms/member':>10} {'vs single×N':>12}")
    for n in args.members:
        members = build_members(n)
        loops = {"single": single_step(members, args.batch_size),
                 "stack": stack_step(members, args.batch_size, own_batches=False),
                 "stack-own": stack_step(members, args.batch_size, own_batches=True)}
        for step in loops.values():
            time_step(step, args.warmup)
        times = {name: [] for name in loops}
        for _ in range(args.rounds):  # interleaved: a busy neighbour slows every loop alike
            for name, step in loops.items():
                times[name].append(time_step(step, args.steps))
        single = statistics.median(times["single"]) * n
        for name, values in times.items():
            ms = statistics.median(values) * (n if name == "single" else 1)
            label = f"single×{n}" if name == "single" else name
            print(f"{n:>3} {label:<12} {ms:>9.1f} {ms / n:>10.2f} {single / ms:>11.2f}×")


if __name__ == "__main__":
    main()
