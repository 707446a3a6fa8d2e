"""Test NLL of vaelab against pytorch/examples' VAE: the quality protocol, side by side.

    python bench/quality.py                                   # the whole protocol; writes bench/README.md
    python bench/quality.py --epochs 1 --k 50 --n-test 200 --out /tmp/q.md   # a quick check
    python bench/quality.py --rows examples best-budget       # a subset (rows 1 and 4)
    python bench/quality.py --paper [--seeds 1 2 3] [--max-time DD:HH:MM:SS] [--runs DIR ...]
                  # the papers' protocol (bench/paper.py): experiment=fashion_vae_paper and
                  # fashion_vampprior_paper against the Exemplar-VAE paper's table, k = 5000, all test images

Protocol. Fashion-MNIST (60,000 + 10,000 images) from Debian's `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist, IDX .gz; else the copy in .bench-data/), dynamically
binarised: every training batch is drawn anew, x ~ Bernoulli(grey level). Bernoulli decoder,
Adam, 10 epochs unless the row says otherwise. Score: the importance-sampled NLL
−log p(x) with k = 1000 samples of q(z|x) per image (`vaelab.evaluation.nll`), and the test
nelbo (the mean −log w of the same samples: the one-sample ELBO, estimated with k samples), on
the first 2,000 test images. Every model is scored on the same binarised test images — one
Bernoulli draw of the grey test images with a fixed seed (TEST_DRAW_SEED), made here — with the
same function, the torch seed fixed to SCORE_SEED before each model.

Rows:
  examples      pytorch/examples vae/main.py as published (MLP 784-400-20, Adam 1e-3, batch 128):
                torchvision dataset + DataLoader with ToTensor, loss.item() per step, its test pass
                and sample images every epoch; the only change: each batch x ~ Bernoulli(x). All
                60,000 training images. Wall time: its epochs (train + its per-epoch test).
  same          `python train.py` with the same model and optimiser (55,000 training images,
                5,000 held out for validation); wall time of the whole command (startup,
                validation, checkpoints, panels, test). Scored: the checkpoint it tests (best val/loss).
  best          `python train.py experiment=fashion_best` (conf/experiment/fashion_best.yaml), same epochs.
  best-budget   `experiment=fashion_fast` (fashion_best without the IWAE bound: more epochs per second)
                for as many epochs as fit the wall time of `examples`: a 1-epoch probe measures its
                seconds per epoch; vaelab's fixed overhead, measured on the latest vaelab row of this
                invocation, is subtracted; trainer.max_time caps the fit.
"""

import argparse
import datetime
import gzip
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from bench_epoch import ExamplesVAE, remove_work_dir  # noqa: E402
from vaelab.evaluation.nll import LogPriorRatio, importance_sampled_nll, model_log_likelihood  # noqa: E402
from vaelab.models.objectives import log_prior_over_posterior  # noqa: E402

DATA_DIRS = (Path("/usr/share/datasets/fashion-mnist"), REPO / ".bench-data")
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TEST_DRAW_SEED = 2026  # the one Bernoulli draw of the test images that every model is scored on
SCORE_SEED = 0  # torch seed before scoring each model
EXAMPLES_SEED = 1  # pytorch/examples' default --seed
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as train.py's accelerator=auto
SCORE_BATCH = 100  # test images per call of importance_sampled_nll
SCORE_MAX_CODES = 20_000  # decoded codes at a time (a conv decoder's activations: about 0.5 GB)
README = REPO / "bench" / "README.md"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
ROWS = ("examples", "same", "best", "best-budget")
SAME_MODEL = ["model.recon_loss=bce", "model.net=mlp", "model.hidden_dims=[400]", "model.latent_dim=20",
              "model.lr=1e-3", "data.batch_size=128"]
FIT_CLOCK = "fit_clock.json"
BUDGET_MARGIN = 0.05  # row 4 aims this fraction below its budget, for the noise of a shared machine


@dataclass
class Row:
    """One line of the result table."""

    model: str
    what: str
    epochs: float
    wall_s: float
    nelbo: float = math.nan
    nll: float = math.nan
    note: str = ""
    extra: dict = field(default_factory=dict)


# -- data --------------------------------------------------------------------------------------
def find_gz_dir() -> Path:
    """The folder of Fashion-MNIST's four IDX .gz files: Debian's package, else .bench-data/."""
    for folder in DATA_DIRS:
        if all((folder / f"{name}.gz").exists() for name in IDX):
            return folder
    raise SystemExit(f"no Fashion-MNIST in {' or '.join(map(str, DATA_DIRS))}: apt-get install dataset-fashion-mnist")


def prepare_data(root: Path, gz_dir: Path) -> None:
    """Decompress the IDX files once into `root/FashionMNIST/raw` (vaelab's `data.data_dir=root`);
    `root/MNIST/raw` points at the same files, for torchvision's `datasets.MNIST` in the examples loop."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX:
        with gzip.open(gz_dir / f"{name}.gz", "rb") as src, (raw / name).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    (root / "MNIST").mkdir()
    (root / "MNIST" / "raw").symlink_to(raw, target_is_directory=True)


def binarised_test_images(root: Path, n: int) -> torch.Tensor:
    """The first `n` test images, (n, 1, 28, 28) float 0/1: one Bernoulli draw with TEST_DRAW_SEED."""
    raw = (root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    images = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n].copy())
    return torch.bernoulli(images.float() / 255, generator=torch.Generator().manual_seed(TEST_DRAW_SEED))


# -- scoring -----------------------------------------------------------------------------------
Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # images → (mu, logvar)
LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (codes (K,B,d), images) → (K, B)


@torch.no_grad()
def score(encode: Encode, log_likelihood: LogLikelihood, x: torch.Tensor, k: int,
          log_prior_ratio: LogPriorRatio = log_prior_over_posterior) -> dict[str, float]:
    """Mean test NLL and nelbo over images `x`, importance-sampled with k samples per image (the prior
    N(0, I) unless `log_prior_ratio` gives another's log p(z) − log q(z|x))."""
    torch.manual_seed(SCORE_SEED)
    nll, nelbo = [], []
    for batch in x.to(DEVICE).split(SCORE_BATCH):
        mu, logvar = encode(batch)
        result = importance_sampled_nll(batch, mu, logvar, log_likelihood, k, max_codes=SCORE_MAX_CODES,
                                        log_prior_ratio=log_prior_ratio)
        nll.append(result["nll"])
        nelbo.append(result["nelbo"])
    return {"nll": torch.cat(nll).mean().item(), "nelbo": torch.cat(nelbo).mean().item()}


def score_vaelab(model, x: torch.Tensor, k: int) -> dict[str, float]:
    """A vaelab VAE: its encoder's mean and log-variance, its own Bernoulli log p(x|z) and prior."""
    model.to(DEVICE).eval()
    return score(model.encode, model_log_likelihood(model), x, k, model.log_prior_over_posterior)


def score_examples(model: ExamplesVAE, x: torch.Tensor, k: int) -> dict[str, float]:
    """pytorch/examples' VAE: log p(x|z) from the logits of fc4 (its decode() is their sigmoid)."""
    model.to(DEVICE).eval()

    def log_likelihood(z: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        logits = model.fc4(F.relu(model.fc3(z)))  # (K, B, 784)
        targets = images.reshape(1, len(images), -1).expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=-1)

    return score(lambda images: model.encode(images.view(-1, 784)), log_likelihood, x, k)


# -- row 1: pytorch/examples -------------------------------------------------------------------
def train_examples(data_root: Path, epochs: int, work: Path) -> tuple[ExamplesVAE, float]:
    """pytorch/examples vae/main.py's training (batch 128, Adam 1e-3, seed 1), each batch
    binarised with torch.bernoulli; its prints go to work/examples.log and its images to
    work/results/. Returns the model and the wall time of its `epochs` epochs (train + test)."""
    from torchvision import datasets, transforms
    from torchvision.utils import save_image

    torch.manual_seed(EXAMPLES_SEED)
    batch_size, log_interval = 128, 10
    # main.py's loader settings on an accelerator (its --accel): one worker, pinned memory
    loader_options = {"num_workers": 1, "pin_memory": True} if DEVICE.type == "cuda" else {}
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(str(data_root), train=True, download=False, transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=True, **loader_options)
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(str(data_root), train=False, transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=True, **loader_options)
    model = ExamplesVAE().to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    (work / "results").mkdir(parents=True, exist_ok=True)
    log = (work / "examples.log").open("w")

    def loss_function(recon_x, x, mu, logvar):
        bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld

    def train(epoch):
        model.train()
        train_loss = 0
        for batch_idx, (data, _) in enumerate(train_loader):
            data = torch.bernoulli(data.to(DEVICE))  # dynamic binarisation (the one change)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
            if batch_idx % log_interval == 0:
                print(f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)}]"
                      f"\tLoss: {loss.item() / len(data):.6f}", file=log)
        print(f"====> Epoch: {epoch} Average loss: {train_loss / len(train_loader.dataset):.4f}", file=log)

    def test(epoch):
        model.eval()
        test_loss = 0
        with torch.no_grad():
            for i, (data, _) in enumerate(test_loader):
                data = torch.bernoulli(data.to(DEVICE))
                recon_batch, mu, logvar = model(data)
                test_loss += loss_function(recon_batch, data, mu, logvar).item()
                if i == 0:
                    n = min(data.size(0), 8)
                    comparison = torch.cat([data[:n], recon_batch.view(batch_size, 1, 28, 28)[:n]])
                    save_image(comparison, work / "results" / f"reconstruction_{epoch}.png", nrow=n)
        print(f"====> Test set loss: {test_loss / len(test_loader.dataset):.4f}", file=log)

    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train(epoch)
        test(epoch)
        with torch.no_grad():
            sample = model.decode(torch.randn(64, 20, device=DEVICE))
            save_image(sample.view(64, 1, 28, 28), work / "results" / f"sample_{epoch}.png")
    wall = time.perf_counter() - start
    log.close()
    return model, wall


# -- rows 2-4: python train.py -----------------------------------------------------------------
class FitClock(pl.Callback):
    """Writes the seconds of `Trainer.fit` (sanity check, training, validation, checkpoints, panels)
    to <run dir>/fit_clock.json, so that the rest of a train.py command (its fixed overhead:
    startup, data, test) is the wall time minus these. Given to train.py as a callback."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            fit_s = time.perf_counter() - self._start
            (Path(trainer.default_root_dir) / FIT_CLOCK).write_text(json.dumps({"fit_s": fit_s}))


def train_py(overrides: list[str], data_root: Path, gz_dir: Path, multirun: bool = False) -> float:
    """`python train.py [-m] data=fashion_mnist <the local copy> logger=csv <overrides>`, with FitClock (a
    multirun's jobs each get theirs): the wall time of the whole command."""
    command = [sys.executable, str(REPO / "train.py"), *(["-m"] if multirun else []), "data=fashion_mnist", f"data.data_dir={data_root}",
               f"data.system_dir={gz_dir}", "data.source=local", "logger=csv",
               "+callbacks.fit_clock._target_=quality.FitClock", *overrides]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "bench"), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"train.py failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return wall


def run_train_py(overrides: list[str], data_root: Path, gz_dir: Path, run_dir: Path) -> tuple[dict, float, float]:
    """`train_py` with `overrides` into `run_dir`: its metrics.json, the wall time of the whole command
    and the seconds of its fit (FitClock)."""
    wall = train_py([*overrides, f"hydra.run.dir={run_dir}"], data_root, gz_dir)
    fit_s = json.loads((run_dir / FIT_CLOCK).read_text())["fit_s"]
    return json.loads((run_dir / "metrics.json").read_text()), wall, fit_s


def load_best(record: dict):
    """The nn.Module of the checkpoint that the run tested (best val/loss)."""
    from vaelab.training import LitAutoencoder

    return LitAutoencoder.load_from_checkpoint(record["best_checkpoint"], map_location="cpu").model


def trained_epochs(record: dict, batch_size: int) -> float:
    """Epochs trained, fractional when a time limit stopped one: global steps / steps per epoch."""
    steps_per_epoch = math.ceil(record["data/train_size"] / batch_size)
    return record["global_step"] / steps_per_epoch


def batch_size_of(run_dir: Path) -> int:
    """data.batch_size of the composed config of a run."""
    import yaml

    return int(yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["data"]["batch_size"])


def vaelab_row(name: str, what: str, overrides: list[str], ctx: "Context") -> Row:
    """Train with train.py, score its tested checkpoint, and remember its fixed overhead."""
    run_dir = ctx.work / name
    record, wall, fit_s = run_train_py(overrides, ctx.data_root, ctx.gz_dir, run_dir)
    ctx.overhead_s = wall - fit_s  # startup, data, building, test, metrics.json: all but the fit
    scores = score_vaelab(load_best(record), ctx.test_x, ctx.k)
    epochs = trained_epochs(record, batch_size_of(run_dir))
    print(f"  {name}: {wall:.1f} s ({fit_s:.1f} s fit, {ctx.overhead_s:.1f} s the rest), {epochs:.2f} epochs, "
          f"best epoch {record.get('best_epoch')}, vaelab's own test/nelbo {record.get('test/nelbo', math.nan):.2f}")
    return Row(name, what, epochs, wall, scores["nelbo"], scores["nll"],
               extra={"fit_s": fit_s, "best_epoch": record.get("best_epoch"), "run_dir": str(run_dir)})


@dataclass
class Context:
    """What the rows share: the data, the scoring settings, the budget of row 4."""

    data_root: Path
    gz_dir: Path
    work: Path
    test_x: torch.Tensor
    k: int
    epochs: int
    best: str
    budget_experiment: str = "fashion_fast"
    budget_s: Optional[float] = None  # row 1's wall time (or --budget)
    overhead_s: Optional[float] = None  # the latest vaelab row's wall time minus its fit (FitClock)


def row_examples(ctx: Context) -> Row:
    model, wall = train_examples(ctx.data_root, ctx.epochs, ctx.work / "examples")
    ctx.budget_s = ctx.budget_s or wall
    scores = score_examples(model, ctx.test_x, ctx.k)
    print(f"  examples: {wall:.1f} s")
    return Row("pytorch/examples", "`vae/main.py` as published, 784-400-20, Adam 1e-3, batch 128, 60k train images",
               ctx.epochs, wall, scores["nelbo"], scores["nll"])


def row_same(ctx: Context) -> Row:
    overrides = [*SAME_MODEL, "data.binarize=dynamic", f"trainer.max_epochs={ctx.epochs}"]
    return vaelab_row("same", f"`train.py {' '.join(overrides)}`", overrides, ctx)


def row_best(ctx: Context) -> Row:
    overrides = [f"experiment={ctx.best}", f"trainer.max_epochs={ctx.epochs}"]
    row = vaelab_row("best", f"`train.py experiment={ctx.best}` ({describe_experiment(ctx.best)})", overrides, ctx)
    row.model = "vaelab best"
    return row


def row_best_budget(ctx: Context) -> Row:
    """`ctx.budget_experiment` for as many epochs as fit the reference's wall time.

    Its cosine learning rate decays over a known number of epochs, so that number is set up front:
    a one-epoch probe of the same command measures the seconds per epoch and the fixed overhead
    (not counted in the row; it is a measurement, like timing the reference), then
    epochs = ⌊(budget · (1 − margin) − overhead) / seconds per epoch⌋, and trainer.max_time caps
    the fit in case the machine slows down.
    """
    if ctx.budget_s is None:
        raise SystemExit("row best-budget needs row examples in the same invocation, or --budget SECONDS")
    probe, probe_wall, probe_fit = run_train_py([f"experiment={ctx.budget_experiment}", "trainer.max_epochs=1", "test=false"],
                                                ctx.data_root, ctx.gz_dir, ctx.work / "probe")
    overhead = (ctx.overhead_s if ctx.overhead_s is not None else probe_wall - probe_fit)
    available = ctx.budget_s * (1 - BUDGET_MARGIN) - overhead
    epochs = max(1, int(available // probe_fit))
    max_time = max(1, int(available))
    overrides = [f"experiment={ctx.budget_experiment}", f"trainer.max_epochs={epochs}", f"trainer.max_time={hms(max_time)}"]
    row = vaelab_row("best-budget", f"`train.py {' '.join(overrides)}` ({describe_experiment(ctx.budget_experiment)})",
                     overrides, ctx)
    row.model = "vaelab, within the reference's wall time"
    row.note = (f"budget {ctx.budget_s:.1f} s (the reference's 10 epochs); a 1-epoch probe took {probe_fit:.1f} s to fit; "
                f"{epochs} epochs = ⌊(budget − {BUDGET_MARGIN:.0%} − {overhead:.1f} s overhead) / {probe_fit:.1f} s⌋, "
                f"max_time {max_time} s")
    row.extra["max_time_s"] = max_time
    return row


def hms(seconds: int) -> str:
    """Lightning's max_time string DD:HH:MM:SS."""
    return "{:02d}:{:02d}:{:02d}:{:02d}".format(seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60, seconds % 60)


def describe_experiment(name: str) -> str:
    """The settings an experiment file sets, as `key=value` pairs (from conf/experiment/<name>.yaml)."""
    import yaml

    conf = yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())
    parents = [d for d in conf.get("defaults", []) if isinstance(d, str) and d != "_self_"]  # other experiments
    inherited = {}
    for parent in parents:
        for setting in describe_experiment(parent).split(", "):
            inherited[setting.split("=", 1)[0]] = setting

    def flat(d, prefix=""):
        for key, value in d.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            elif key != "defaults":
                yield f"{prefix}{key}={json.dumps(value) if isinstance(value, list) else value}".replace(" ", "")

    own = {setting.split("=", 1)[0]: setting for setting in flat({k: v for k, v in conf.items() if k not in ("defaults", "hydra")})}
    return ", ".join({**inherited, **own}.values())


# -- the report --------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def table(rows: list[Row], reference_nll: Optional[float]) -> str:
    lines = ["| model | what it is (config) | epochs | wall time (s) | test nelbo | test NLL | NLL − reference NLL |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        delta = f"{row.nll - reference_nll:+.2f}" if reference_nll is not None else "–"
        wall = f"{row.wall_s:.1f}" + (f" (budget {row.extra['budget_s']:.1f})" if "budget_s" in row.extra else "")
        epochs = f"{row.epochs:g}" if float(row.epochs).is_integer() else f"{row.epochs:.2f}"
        lines.append(f"| {row.model} | {row.what} | {epochs} | {wall} | {row.nelbo:.2f} | {row.nll:.2f} | {delta} |")
    return "\n".join(lines)


def report(rows: list[Row], args, data_note: str, started: str, total_s: float) -> str:
    reference = next((r.nll for r in rows if r.model == "pytorch/examples"), None)
    notes = "".join(f"\n- {r.model}: {r.note}" for r in rows if r.note)
    return (f"{BEGIN}\n"
            f"Measured {started} on {machine()}; data: {data_note}. `python bench/quality.py "
            f"{' '.join(sys.argv[1:])}`".rstrip() + f" ({total_s / 60:.1f} min in all): {args.epochs} epochs, "
            f"NLL with k = {args.k} on the first {args.n_test} test images (one binarised draw, seed "
            f"{TEST_DRAW_SEED}, for every model); test nelbo = the mean −log w of the same samples.\n\n"
            f"{table(rows, reference)}\n{notes}\n{END}")


def write_readme(section: str, path: Path, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers `begin` and `end` in `path` (or append it, with the markers)."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--k", type=int, help="importance samples per test image (default 1000; --paper: 5000)")
    parser.add_argument("--n-test", type=int, help="the first N test images are scored (default 2000; --paper: all 10000)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--best", default="fashion_best", help="the experiment of row best")
    parser.add_argument("--fast", default="fashion_fast", help="the experiment of row best-budget")
    parser.add_argument("--budget", type=float, help="row 4's wall-time budget in s when row examples is not run")
    parser.add_argument("--overhead", type=float, help="vaelab's fixed overhead in s when no other vaelab row runs first")
    parser.add_argument("--out", type=Path, default=README, help="the markdown file whose quality section is replaced")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    paper = parser.add_argument_group("--paper (bench/paper.py)")
    paper.add_argument("--paper", action="store_true", help="the papers' protocol instead of the rows above")
    paper.add_argument("--experiments", nargs="+", default=["fashion_vae_paper", "fashion_vampprior_paper"])
    paper.add_argument("--seeds", nargs="+", type=int, default=[1], help="two or more: one stacked sweep per experiment")
    paper.add_argument("--max-time", help="cap each fit, DD:HH:MM:SS (trainer.max_time)")
    paper.add_argument("--runs", nargs="+", type=Path, help="score these run or sweep directories instead of training")
    args = parser.parse_args()
    args.k = args.k or (5000 if args.paper else 1000)
    args.n_test = args.n_test or (10_000 if args.paper else 2000)

    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    begin = time.perf_counter()
    gz_dir = find_gz_dir()
    work = Path(tempfile.mkdtemp(prefix="vaelab-quality-"))
    data_root = work / "data"
    prepare_data(data_root, gz_dir)
    ctx = Context(data_root, gz_dir, work, binarised_test_images(data_root, args.n_test), args.k, args.epochs,
                  args.best, budget_experiment=args.fast, budget_s=args.budget, overhead_s=args.overhead)
    print(f"machine: {machine()}\ndata:    Fashion-MNIST from {gz_dir}\nwork:    {work}")
    if args.paper:
        from paper import run_paper

        run_paper(args, ctx, started, begin)
        remove_work_dir(work, args.keep)
        return
    makers = {"examples": row_examples, "same": row_same, "best": row_best, "best-budget": row_best_budget}
    rows = []
    for name in ROWS:
        if name in args.rows:
            rows.append(makers[name](ctx))
            if name == "best-budget":
                rows[-1].extra["budget_s"] = ctx.budget_s
    section = report(rows, args, f"Fashion-MNIST from `{gz_dir}`", started, time.perf_counter() - begin)
    print("\n" + section)
    write_readme(section, args.out)
    print(f"\nwritten to {args.out}")
    remove_work_dir(work, args.keep)


if __name__ == "__main__":
    main()
