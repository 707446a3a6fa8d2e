"""Seconds per training epoch: vaelab against reference loops, measured side by side.

    python bench/bench_epoch.py                                  # the GPU if there is one, else CPU
    python bench/bench_epoch.py --batch-sizes 128 --epochs 3 --rounds 2
    python bench/bench_epoch.py --loops plain vaelab vaelab-ddp2 # 1 vs 2 devices (CPU: 2 processes)
    python bench/bench_epoch.py --loops vaelab-default --base .base   # this tree's default run beside another tree's

All loops train the same model (MLP 784-400-20 VAE, Adam 1e-3, bce loss) on the same 60,000
training images:
  examples      (a) pytorch/examples vae/main.py: torchvision dataset + DataLoader, loss.item() per step
  plain         (b) a plain PyTorch loop over a resident uint8 tensor, no host sync per step
  graph         (GPU) (b) with the whole step captured as one CUDA graph: the floor
  vaelab        (c) `python train.py` itself (Hydra, DataModule, LightningModule, CSV logging of
                recon/kl/loss/nelbo), validation, checkpointing, image panels and the
                progress bar off; its epochs are timed by vaelab.training.callbacks.EpochTimer
  vaelab-eager  (c) with model.cuda_graph=false
  vaelab-ddp2   (c) with trainer.devices=2
  vaelab-default  `python train.py` as shipped (5,000 validation images every epoch, checkpoints,
                latent diagnostics and panels, the progress bar, the W&B and CSV loggers,
                the default mse loss), timed by the same EpochTimer: time/epoch_s, the whole
                epoch; it also prints each epoch against its own training batches
                (time/train_epoch_s of the same epoch), what validation, panels and
                checkpoints add per epoch (issue 13's ≤ 1.15 × on a CPU, ≤ 1.3 × on a GPU)
(b), (g) and (c) use the same Adam (vaelab.training.make_optimizer: fused). Each round runs
every loop for 1 warm-up epoch + --epochs timed epochs, loops interleaved; the table gives the
median seconds per timed epoch and the ratios of the medians; with --rounds >= 2 also the
ratio within each round (loops of one round run minutes apart at most) and its median.
--base DIR adds `base-<loop>` for each vaelab loop: the same `train.py` run from the tree in DIR (an
earlier commit: `mkdir .base && git archive <commit> | tar -x -C .base`), interleaved with this
tree's, and prints this tree's epoch over the base's.
"""

import argparse
import csv
import gzip
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vaelab.data.idx import write_idx  # noqa: E402
from vaelab.models import VAE, gaussian_kl, reconstruction_loss  # noqa: E402
from vaelab.training import make_optimizer  # noqa: E402

IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# -- data -----------------------------------------------------------------------------------
def prepare_data(root: Path, data_dir: Path | None) -> tuple[str, Path]:
    """A torchvision-layout copy of real IDX data under `root`, or synthetic images; says which."""
    candidates = [(data_dir or REPO / "data") / "MNIST" / "raw", (data_dir or REPO / "data") / "FashionMNIST" / "raw",
                  REPO / ".bench-data", DEBIAN_FASHION]
    target = root / "MNIST" / "raw"  # every loop reads it as "MNIST": same shape, same code path
    target.mkdir(parents=True)
    for source in candidates:
        if all((source / f).exists() for f in IDX):
            for f in IDX:
                shutil.copy(source / f, target / f)
            return f"real IDX files from {source}", root
        if all((source / f"{f}.gz").exists() for f in IDX):
            for f in IDX:
                with gzip.open(source / f"{f}.gz", "rb") as src, (target / f).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            return f"real IDX files from {source} (decompressed)", root
    rng = np.random.default_rng(0)
    for name, n in (("train", 60000), ("t10k", 10000)):
        write_idx(target / f"{name}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(target / f"{name}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return "SYNTHETIC random images (no MNIST or Fashion-MNIST found)", root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- (a) pytorch/examples ------------------------------------------------------------------
class ExamplesVAE(nn.Module):
    """pytorch/examples vae/main.py, as published (784-400-20)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def examples_loop(data_root: Path, batch_size: int, device: torch.device):
    from torchvision import datasets, transforms

    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    loader = torch.utils.data.DataLoader(
        datasets.MNIST(str(data_root), train=True, download=False, transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=True, **kwargs)
    model = ExamplesVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch():
        model.train()
        train_loss = 0
        for data, _ in loader:
            data = data.to(device)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            bce = F.binary_cross_entropy(recon_batch, data.view(-1, 784), reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = bce + kld
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        return train_loss / len(loader.dataset)

    return epoch


# -- (b) plain loop and (g) its CUDA graph --------------------------------------------------
def resident_images(data_root: Path, device: torch.device) -> torch.Tensor:
    from torchvision import datasets

    return datasets.MNIST(str(data_root), train=True, download=False).data.to(device)  # uint8 (N, 28, 28)


def vae_step_terms(model: VAE, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    recon = reconstruction_loss(out.logits, x, "bce")
    kl = gaussian_kl(out.mu, out.logvar)
    return torch.stack([recon, kl, recon + kl])


def plain_loop(data_root: Path, batch_size: int, device: torch.device):
    images = resident_images(data_root, device)
    model = VAE((1, 28, 28), 20, [400]).to(device)
    optimizer = make_optimizer(model.parameters(), 1e-3, device)  # the same Adam as vaelab's
    n = len(images)

    def epoch():
        sums = torch.zeros(3, device=device)
        order = torch.randperm(n, device=device)
        for start in range(0, n, batch_size):
            x = images[order[start : start + batch_size]].unsqueeze(1).float().div_(255)
            optimizer.zero_grad(set_to_none=True)
            terms = vae_step_terms(model, x)
            terms[0].add(terms[1]).backward()
            optimizer.step()
            sums += terms.detach() * x.shape[0]
        return (sums / n).tolist()  # one host sync per epoch

    return epoch


def graph_loop(data_root: Path, batch_size: int, device: torch.device):
    """(b) with forward, backward and Adam captured as one CUDA graph; the ragged last batch
    is dropped, so this is the floor for full batches."""
    images = resident_images(data_root, device)
    model = VAE((1, 28, 28), 20, [400]).to(device)
    optimizer = make_optimizer(model.parameters(), 1e-3, device, capturable=True)
    n = len(images)
    static_idx = torch.zeros(batch_size, dtype=torch.long, device=device)
    sums = torch.zeros(3, device=device)

    def step():
        x = images[static_idx].unsqueeze(1).float().div_(255)
        optimizer.zero_grad(set_to_none=False)
        terms = vae_step_terms(model, x)
        terms[0].add(terms[1]).backward()
        optimizer.step()
        sums.add_(terms.detach() * batch_size)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def epoch():
        sums.zero_()
        order = torch.randperm(n, device=device)
        for start in range(0, n - batch_size + 1, batch_size):
            static_idx.copy_(order[start : start + batch_size])
            graph.replay()
        return (sums / n).tolist()

    return epoch


# -- (c) vaelab ----------------------------------------------------------------------------
def vaelab_loop(data_root: Path, batch_size: int, device: torch.device, extra: list[str], devices: int = 1,
                default: bool = False, tree: Path = REPO):
    """`python train.py` itself, in a subprocess; epoch times come from vaelab's EpochTimer.

    Stripped (validation, checkpoints, panels, progress bar off) unless `default`: then as shipped,
    and the epochs are whole (time/epoch_s); `epochs.train_parts` keeps their time/train_epoch_s.
    """
    out_dir = Path(tempfile.mkdtemp(prefix="bench-vaelab-"))
    stripped = [
        "data.val_size=1", "model.recon_loss=bce", "model.latent_dim=20", "model.hidden_dims=[400]", "logger=csv",
        "trainer.enable_progress_bar=false", "+trainer.limit_val_batches=0", "test=false",
        "callbacks.model_checkpoint=null", "callbacks.latent_panels=null",
    ]
    overrides = [
        f"data.data_dir={data_root}", "data.source=local", f"data.batch_size={batch_size}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", f"trainer.devices={devices}",
        *([] if default else stripped),
        "+callbacks.epoch_timer._target_=vaelab.training.callbacks.EpochTimer",
        f"hydra.run.dir={out_dir}/run", *extra,
    ]
    column = "time/epoch_s" if default else "time/train_epoch_s"

    def epochs(n: int) -> list[float]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env["PYTHONPATH"] = str(tree / "src")  # the tree's own vaelab, whatever is installed
        result = subprocess.run([sys.executable, str(tree / "train.py"), *overrides, f"trainer.max_epochs={n}"],
                                cwd=tree, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"train.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        with (out_dir / "run" / "csv" / "metrics.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r.get(column)]
        shutil.rmtree(out_dir / "run")
        epochs.train_parts.append([float(r["time/train_epoch_s"]) for r in rows][1:])
        return [float(r[column]) for r in rows]

    epochs.train_parts = []  # per call: the training part of each timed epoch (after the warm-up)
    return epochs


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def remove_work_dir(work: Path, keep: bool) -> None:
    """The benchmarks' temporary run directories: removed, or kept (--keep) and said where."""
    if keep:
        print(f"run directories kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, torch {torch.__version__}"


def timed_epochs(run, epochs: int, device: torch.device) -> list[float]:
    """Seconds of each epoch after one warm-up epoch."""
    if run.__name__ == "epochs":  # a train.py subprocess: it times its own epochs
        return run(1 + epochs)[1:]
    out = []
    for i in range(1 + epochs):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        if i > 0:
            out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loop per round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--loops", nargs="+", default=["examples", "plain", "graph", "vaelab"],
                        help="any of examples plain graph vaelab vaelab-eager vaelab-ddp2 vaelab-default")
    parser.add_argument("--vaelab-args", nargs="*", default=[], help="extra overrides for train.py, e.g. trainer.precision=bf16-mixed")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--base", type=Path, default=None, help="a tree whose vaelab loops run beside this one's (e.g. .base)")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    root = Path(tempfile.mkdtemp(prefix="bench-data-"))
    data_note, data_root = prepare_data(root, args.data_dir)
    print(f"machine: {describe_machine(device)}")
    print(f"data:    {data_note}; 60,000 training images")

    for batch_size in args.batch_sizes:
        factories = {
            "examples": lambda: examples_loop(data_root, batch_size, device),
            "plain": lambda: plain_loop(data_root, batch_size, device),
            "graph": lambda: graph_loop(data_root, batch_size, device),
        }
        vaelab_loops = {"vaelab": dict(extra=args.vaelab_args),
                        "vaelab-eager": dict(extra=[*args.vaelab_args, "model.cuda_graph=false"]),
                        "vaelab-ddp2": dict(extra=args.vaelab_args, devices=2),
                        "vaelab-default": dict(extra=args.vaelab_args, default=True)}
        trees = {"": REPO, **({"base-": args.base.resolve()} if args.base else {})}
        for name, settings in vaelab_loops.items():
            for prefix, tree in trees.items():  # with --base, each vaelab loop again from that tree
                factories[prefix + name] = (lambda settings=settings, tree=tree:
                                            vaelab_loop(data_root, batch_size, device, tree=tree, **settings))
        names = [n for n in args.loops if n != "graph" or device.type == "cuda"]
        names = [p + n for n in names for p in (trees if n in vaelab_loops else [""])]
        loops = {}
        for name in names:
            try:
                loops[name] = factories[name]()
            except Exception as err:  # one broken loop must not hide the others' numbers
                print(f"  {name}: could not set up: {type(err).__name__}: {err}")
        per_round = {name: [] for name in loops}  # one list of epoch times per round
        for _ in range(args.rounds):
            for name, run in loops.items():
                try:
                    per_round[name].append(timed_epochs(run, args.epochs, device))
                except Exception as err:
                    print(f"  {name}: failed: {type(err).__name__}: {str(err)[-1500:]}")
        per_round = {name: rounds for name, rounds in per_round.items() if len(rounds) == args.rounds}
        times = {name: [t for epochs in rounds for t in epochs] for name, rounds in per_round.items()}
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"\nbatch {batch_size}: seconds per epoch (median of {args.rounds * args.epochs})")
        for name in times:
            print(f"  {name:14s} {medians[name]:8.3f}   {' '.join(f'{t:.3f}' for t in times[name])}")

        def paired(ours: str, ref: str) -> str:
            # A shared machine's speed drifts over minutes: the ratio within each round is steadier.
            if args.rounds < 2:
                return ""
            ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(per_round[ours], per_round[ref])]
            return f"   (per round: {' '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f})"

        for ours in ("vaelab", "vaelab-eager"):
            for ref in ("examples", "plain", "graph"):
                if ours in medians and ref in medians:
                    faster = f" = {medians[ref] / medians[ours]:.1f}x faster" if ref == "examples" else ""
                    print(f"  {ours} / {ref:8s} = {medians[ours] / medians[ref]:.2f}{faster}{paired(ours, ref)}")
        if "vaelab" in medians and "vaelab-ddp2" in medians:
            print(f"  vaelab on 2 devices / on 1 = {medians['vaelab-ddp2'] / medians['vaelab']:.2f}")
        if "vaelab-default" in loops and "vaelab-default" in medians:
            # The same epochs of the same run: whole against their training batches.
            whole = [t for epochs in per_round["vaelab-default"] for t in epochs]
            train = [t for part in loops["vaelab-default"].train_parts for t in part]
            ratios = [w / t for w, t in zip(whole, train)]
            print(f"  vaelab-default: whole epoch / its training batches = {sum(whole) / sum(train):.3f} "
                  f"(per epoch: {' '.join(f'{r:.2f}' for r in ratios)}); training batches {statistics.median(train):.3f} s")
            # Not divided by the other loops: they train on 59,999 images, the default on 55,000.
        for name in vaelab_loops:
            if name in medians and f"base-{name}" in medians:
                print(f"  {name}: this tree / {args.base.name} = {medians[name] / medians['base-' + name]:.3f}"
                      f"{paired(name, 'base-' + name)}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
