"""Whole commands, timed by the wall clock: where a short vaelab run spends its fixed cost.

    python bench/bench_run.py                                    # every row, 1 round
    python bench/bench_run.py --rounds 3 --out run-times.md     # medians of 3, table also as markdown
    python bench/bench_run.py --rounds 1 --only import-torch bare-lightning default-1   # quickest check
    python bench/bench_run.py --eval-args eval.max_images=1000  # a quicker eval row (say so)
    python bench/bench_run.py --rounds 5 --only import-hydra refuse help cfg-job --base .base  # fast feedback

Each row is one real subprocess, started as a user starts it, timed from start to exit; rows
run one after the other (never two at once, apart from the joblib row, which is what it
measures), --rounds times, and the table gives medians. Every train.py command gets
`logger=csv trainer.enable_progress_bar=false` and the data of bench_epoch.py's `prepare_data`
(real MNIST or Fashion-MNIST IDX files when present, e.g. Debian's dataset-fashion-mnist in
/usr/share/datasets/fashion-mnist, decompressed once into a temporary `data.data_dir` read with
`data.source=local`; else synthetic images, and it says so). Everything else is the default:
the MLP VAE 784-400-20, mse, Adam 1e-3, batch 128, validation on 5,000 images, checkpoints,
latent diagnostics and panels, test of the best checkpoint, metrics.json.

  import-hydra    python -c "import hydra": the floor of any command that reads the config
  refuse          python train.py model.beta=-1: a refused value, answered with one line (exit 2)
  help            python train.py --help
  cfg-job         python train.py --cfg job: the composed config, printed
  import-torch    python -c "import torch": the interpreter and torch, the floor of any command
  import-vaelab   python -c "import vaelab.tasks.train": + pytorch_lightning and vaelab (what
                  train.py imports to run; Hydra comes on top); once more with -X importtime
                  for the biggest imports
  bare-lightning  a bare Lightning script (written to a temporary file): the same VAE, the IDX
                  files read into tensors, a LightningModule with a plain training_step,
                  Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False).fit on a TensorDataset DataLoader, then .test
  default-1       python train.py trainer.max_epochs=1
  colour-1        python train.py data=npz data.path=<colour.npz> data.val_size=5000 trainer.max_epochs=1: a
                  colour data set of CIFAR-10's sizes (50,000 + 10,000 test images, 32×32×3, random
                  pixels and labels written once into a .npz file: the time does not depend on
                  what the pixels show), the default model otherwise (the MLP, 3,072 inputs)
  colour-conv-1   the same with model.net=conv
  default-10      python train.py trainer.max_epochs=--epochs-long (10, the default of train.py)
  eval            python eval.py ckpt_path=<default-1's best checkpoint>, its defaults (k=1000
                  importance samples on all 10,000 test images), + --eval-args; the reference
                  classifier is trained on the first eval of an invocation and cached after
                  (eval.json's time/classifier_s says which; the row prints it)
  sweep-4-serial  python train.py -m seed=0,1,2,3 trainer.max_epochs=1: Hydra's basic launcher
  sweep-4-joblib  the same with hydra/launcher=joblib (its default n_jobs: all cores)

Then: the fixed cost of a run, default-1 − (default-10 − default-1) / (E − 1), against the bare
script's (its wall − its own training epoch); the per-extra-epoch cost against the training
epoch itself (time/train_epoch_s, vaelab's EpochTimer: the epoch without validation); jobs per
hour for the sweeps; and a breakdown of default-1's wall time from what the run leaves
(time/data_s, time/fit_s, time/test_s in metrics.json): imports, data, the training epoch, the
rest of fit (Lightning's set-up, sanity check, validation, latent diagnostics, panels,
checkpoints), test, and the rest (Hydra, config check, loggers, metrics.json, exit).
Rows that a ratio needs but --only left out are marked "–".

--base DIR runs the refuse, help and cfg-job rows again from the tree in DIR (an earlier commit:
`mkdir .base && git archive <commit> | tar -x -C .base`), as base-refuse etc., and prints this
tree's time over the base's.
"""

import argparse
import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_epoch import cpu_name, prepare_data, remove_work_dir  # noqa: E402

ROWS = ["import-hydra", "refuse", "help", "cfg-job", "import-torch", "import-vaelab", "bare-lightning", "default-1", "default-10", "eval", "sweep-4-serial",
        "sweep-4-joblib", "colour-1", "colour-conv-1"]
COLOUR_ROWS = {"colour-1": [], "colour-conv-1": ["model.net=conv"]}
COLOUR_SIZES = (50_000, 10_000, 32, 32, 3)  # train, test, H, W, C: CIFAR-10's
QUICK_COMMANDS = {"refuse": ["model.beta=-1"], "help": ["--help"], "cfg-job": ["--cfg", "job"]}
QUICK_EXIT = {"refuse": 2}  # the exit code each quick row must end with (else 0)
SWEEP_SEEDS = "0,1,2,3"
EPOCH_TIMER = "vaelab.training.callbacks.EpochTimer"

BARE_LIGHTNING = r'''
"""A bare Lightning run of vaelab's default model (written and run by bench/bench_run.py)."""
import json, sys, time
started = time.perf_counter()
from pathlib import Path
import numpy as np
import torch
import pytorch_lightning as pl
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
imported = time.perf_counter()

raw = Path(sys.argv[1])
def images(name):  # IDX: 16-byte header, then uint8 pixels
    data = np.frombuffer((raw / name).read_bytes(), dtype=np.uint8, offset=16).reshape(-1, 784)
    return torch.from_numpy(data.copy()).float().div_(255)
train, test = images("train-images-idx3-ubyte"), images("t10k-images-idx3-ubyte")
train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[5000:]]  # 55,000, as vaelab
loaded = time.perf_counter()

class VAE(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40))
        self.dec = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784))
    def loss(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = ((torch.sigmoid(self.dec(z)) - x) ** 2).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()
        return recon + kl
    def training_step(self, batch, batch_idx):
        return self.loss(batch[0])
    def test_step(self, batch, batch_idx):
        self.log("test/loss", self.loss(batch[0]))
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)

class EpochClock(pl.Callback):
    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()
    def on_train_epoch_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.start

pl.seed_everything(0, verbose=False)
clock = EpochClock()
trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[clock])
model = VAE()
fit_start = time.perf_counter()
trainer.fit(model, DataLoader(TensorDataset(train), batch_size=128, shuffle=True))
test_start = time.perf_counter()
result = trainer.test(model, DataLoader(TensorDataset(test), batch_size=128), verbose=False)
done = time.perf_counter()
print("BARE " + json.dumps({"imports_s": imported - started, "data_s": loaded - imported, "fit_s": test_start - fit_start,
                            "epoch_s": clock.seconds, "test_s": done - test_start, "test_loss": result[0]["test/loss"]}))
'''


def command_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}


def timed(command: list[str], what: str, exit_code: int = 0, tree: Path = REPO) -> tuple[float, str]:
    """Wall seconds of one subprocess, from start to exit, and its output; raises if it did not end
    with `exit_code`. `tree`: the source tree whose train.py and vaelab it runs."""
    env = command_env()
    if tree != REPO:
        env["PYTHONPATH"] = str(tree / "src")  # the tree's own vaelab, whatever is installed
    start = time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != exit_code:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stdout[-1500:]}\n{result.stderr[-2500:]}")
    return wall, result.stdout + result.stderr


def epoch_times(run_dir: Path, record: dict) -> list[float]:
    """Each epoch's time/train_epoch_s: from csv/metrics.csv, else metrics.json's (the last epoch)."""
    metrics_csv = run_dir / "csv" / "metrics.csv"
    if metrics_csv.exists():
        with metrics_csv.open() as f:
            times = [float(r["time/train_epoch_s"]) for r in csv.DictReader(f) if r.get("time/train_epoch_s")]
        if times:
            return times
    return [record["time/train_epoch_s"]] if "time/train_epoch_s" in record else []


def top_imports(output: str, n: int = 8) -> list[tuple[str, float]]:
    """The packages of `python -X importtime` with the most cumulative seconds (each package's own
    first import, which includes what it imports: pytorch_lightning's includes torch)."""
    top: dict[str, float] = {}
    for line in output.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| \s*(\S+)$", line)
        if match and "." not in match.group(2) and not match.group(2).startswith("_"):
            top[match.group(2)] = max(top.get(match.group(2), 0.0), int(match.group(1)) / 1e6)
    return sorted(top.items(), key=lambda kv: -kv[1])[:n]


def write_colour_npz(path: Path) -> None:
    """Random uint8 images and labels of CIFAR-10's sizes (COLOUR_SIZES), as data=npz reads them."""
    import numpy as np

    n_train, n_test, height, width, channels = COLOUR_SIZES
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n_train, height, width, channels), dtype=np.uint8),
             y=rng.integers(0, 10, n_train), x_test=rng.integers(0, 256, (n_test, height, width, channels), dtype=np.uint8),
             y_test=rng.integers(0, 10, n_test))


def describe_machine() -> str:
    cpu = cpu_name()
    gpu = ""
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=20).stdout.split("\n")[0].strip()
        gpu = f", GPU {names}" if names else ""
    except (OSError, subprocess.SubprocessError):
        pass
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{cpu}, {os.cpu_count()} cores{gpu}, OMP_NUM_THREADS={threads}, Python {platform.python_version()}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ROWS, default=ROWS, metavar="ROW", help=" ".join(ROWS))
    parser.add_argument("--rounds", type=int, default=1, help="each row this many times; medians are reported")
    parser.add_argument("--epochs-long", type=int, default=10, help="epochs of the long run (default-10)")
    parser.add_argument("--eval-args", nargs="*", default=[], help="extra eval.py overrides, e.g. eval.max_images=1000")
    parser.add_argument("--train-args", nargs="*", default=[], help="extra train.py overrides for every train.py row")
    parser.add_argument("--data-dir", type=Path, default=None, help="where bench_epoch.prepare_data looks first")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables as markdown to this file")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    parser.add_argument("--base", type=Path, default=None, help="a tree whose quick rows run beside this one's (e.g. .base)")
    args = parser.parse_args()
    if args.epochs_long < 2:
        parser.error("--epochs-long must be at least 2")
    rows = [r for r in ROWS if r in args.only]
    if args.base:
        rows = [name for r in rows for name in ([r, f"base-{r}"] if r in QUICK_COMMANDS else [r])]
    long_name = f"default-{args.epochs_long}"

    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    data_note, data_root = prepare_data(work / "data", args.data_dir)
    raw_dir = data_root / "MNIST" / "raw"
    bare_script = work / "bare_lightning.py"
    bare_script.write_text(BARE_LIGHTNING)

    train_py = [sys.executable, str(REPO / "train.py"), f"data.data_dir={data_root}", "data.source=local", "logger=csv",
                "trainer.enable_progress_bar=false"]
    timer_note = "time/train_epoch_s from the default callbacks"
    if EPOCH_TIMER.rsplit(".", 1)[1] not in (REPO / "conf" / "callbacks" / "default.yaml").read_text():
        train_py.append(f"+callbacks.epoch_timer._target_={EPOCH_TIMER}")
        timer_note = "EpochTimer added (+callbacks.epoch_timer) for time/train_epoch_s: not in the default callbacks"
    train_py += args.train_args

    print(f"machine: {describe_machine()}")
    print(f"data:    {data_note}")
    print(f"runs:    {work}; {timer_note}")
    print(f"rows:    {' '.join(r if r != 'default-10' else long_name for r in rows)}; {args.rounds} round(s), one at a time\n")

    walls: dict[str, list[float]] = {r: [] for r in rows}
    records: dict[str, list[dict]] = {"default-1": [], "default-10": [], **{row: [] for row in COLOUR_ROWS}}
    epochs: dict[str, list[float]] = {"default-1": [], "default-10": [], **{row: [] for row in COLOUR_ROWS}}
    colour_npz = work / "colour.npz"
    bare: list[dict] = []
    evals: list[dict] = []
    importtime = ""
    checkpoint: Path | None = None

    def train_run(name: str, n_epochs: int, r: int, extra: tuple[str, ...] = ()) -> tuple[float, dict, Path]:
        run_dir = work / f"{name}-r{r}"
        wall, _ = timed([*train_py, f"trainer.max_epochs={n_epochs}", f"hydra.run.dir={run_dir}", *extra], name)
        record = json.loads((run_dir / "metrics.json").read_text())
        return wall, record, run_dir

    def sweep(name: str, r: int, launcher: list[str]) -> float:
        sweep_dir = work / f"{name}-r{r}"
        # -m before the overrides: Hydra's argparse takes one run of positional overrides.
        wall, _ = timed([*train_py[:2], "-m", *train_py[2:], f"seed={SWEEP_SEEDS}", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}",
                         *launcher], name)
        done = [p for p in sweep_dir.glob("*/metrics.json") if json.loads(p.read_text()).get("status") == "completed"]
        if len(done) != len(SWEEP_SEEDS.split(",")):
            raise RuntimeError(f"{name}: {len(done)} of 4 jobs completed; see {sweep_dir}")
        return wall

    for r in range(args.rounds):
        for row in rows:
            try:
                quick = row.removeprefix("base-")
                if quick in QUICK_COMMANDS:
                    tree = args.base.resolve() if row.startswith("base-") else REPO
                    run_dir = work / f"{row}-r{r}"  # a refused run leaves Hydra's .hydra/ there
                    wall, _ = timed([sys.executable, str(tree / "train.py"), *QUICK_COMMANDS[quick],
                                     f"hydra.run.dir={run_dir}"], row, QUICK_EXIT.get(quick, 0), tree)
                elif row == "import-hydra":
                    wall, _ = timed([sys.executable, "-c", "import hydra"], row)
                elif row == "import-torch":
                    wall, _ = timed([sys.executable, "-c", "import torch"], row)
                elif row == "import-vaelab":
                    wall, _ = timed([sys.executable, "-c", "import vaelab.tasks.train"], row)
                    if not importtime:
                        _, importtime = timed([sys.executable, "-X", "importtime", "-c", "import vaelab.tasks.train"], row)
                elif row == "bare-lightning":
                    wall, output = timed([sys.executable, str(bare_script), str(raw_dir)], row)
                    bare.append(json.loads(next(l for l in output.splitlines() if l.startswith("BARE "))[5:]))
                elif row in ("default-1", "default-10"):
                    n = 1 if row == "default-1" else args.epochs_long
                    wall, record, run_dir = train_run(row, n, r)
                    records[row].append(record)
                    epochs[row].extend(epoch_times(run_dir, record))
                    if row == "default-1" and record.get("best_checkpoint"):
                        checkpoint = Path(record["best_checkpoint"])
                elif row in COLOUR_ROWS:
                    if not colour_npz.exists():
                        write_colour_npz(colour_npz)
                    wall, record, run_dir = train_run(row, 1, r, ("data=npz", f"data.path={colour_npz}", "data.val_size=5000",
                                                                  *COLOUR_ROWS[row]))
                    records[row].append(record)
                    epochs[row].extend(epoch_times(run_dir, record))
                elif row == "eval":
                    if checkpoint is None:  # default-1 not among the rows: one untimed run for its checkpoint
                        print("  eval: an untimed 1-epoch train.py run for a checkpoint to evaluate")
                        _, record, _ = train_run("for-eval", 1, r)
                        checkpoint = Path(record["best_checkpoint"])
                    eval_dir = work / f"eval-r{r}"
                    wall, _ = timed([sys.executable, str(REPO / "eval.py"), f"ckpt_path={checkpoint}",
                                     f"hydra.run.dir={eval_dir}", *args.eval_args], row)
                    evals.append(json.loads((eval_dir / "eval.json").read_text()))
                elif row == "sweep-4-serial":
                    wall = sweep(row, r, [])
                else:
                    wall = sweep(row, r, ["hydra/launcher=joblib"])
            except Exception as err:  # one broken row must not hide the others' numbers
                print(f"  {row}: failed: {type(err).__name__}: {str(err)[-3000:]}")
                continue
            walls[row].append(wall)
            print(f"  round {r + 1}: {row if row != 'default-10' else long_name:15s} {wall:7.2f} s", flush=True)

    med = {row: median(w) for row, w in walls.items()}
    d1, d10 = med.get("default-1"), med.get("default-10")
    per_extra = (d10 - d1) / (args.epochs_long - 1) if d1 is not None and d10 is not None else None
    fixed = d1 - per_extra if per_extra is not None else None
    train_epoch = median(epochs["default-10"][1:] or epochs["default-10"]) or median(epochs["default-1"])
    bare_epoch = median([b["epoch_s"] for b in bare])
    bare_fixed = med["bare-lightning"] - bare_epoch if med.get("bare-lightning") is not None and bare_epoch else None
    torch_s = med.get("import-torch")

    def note(row: str) -> str:
        if row.removeprefix("base-") in QUICK_COMMANDS:
            over_hydra = f"{fmt(ratio(med[row], med.get('import-hydra')), '.1f')} × import-hydra"
            base = med.get(f"base-{row}")
            return over_hydra + (f"; {fmt(ratio(med[row], base))} × base-{row}" if base is not None else "")
        if row == "import-vaelab":
            return f"of which import torch {fmt(torch_s, unit=' s')}"
        if row == "bare-lightning" and bare:
            return (f"its own clocks: imports {median([b['imports_s'] for b in bare]):.2f} s, data "
                    f"{median([b['data_s'] for b in bare]):.2f} s, epoch {bare_epoch:.2f} s, fit "
                    f"{median([b['fit_s'] for b in bare]):.2f} s, test {median([b['test_s'] for b in bare]):.2f} s; "
                    f"fixed = wall − epoch = {fmt(bare_fixed, unit=' s')}")
        if row == "default-1":
            return (f"{fmt(ratio(d1, med.get('bare-lightning')))} × bare-lightning, {fmt(ratio(d1, torch_s), '.1f')} × "
                    f"import-torch; fixed cost {fmt(fixed, unit=' s')} = {fmt(ratio(fixed, bare_fixed))} × bare's fixed")
        if row == "default-10":
            return (f"per extra epoch {fmt(per_extra, unit=' s')} = {fmt(ratio(per_extra, train_epoch))} × the training "
                    f"epoch ({fmt(train_epoch, '.2f', ' s')}, time/train_epoch_s): validation, diagnostics, panels, "
                    f"checkpoints per epoch")
        if row == "eval" and evals:
            stages = {k[5:-2]: median([e[k] for e in evals if k in e]) for k in evals[0] if re.fullmatch(r"time/\w+_s", k)}
            cached = [e.get("classifier/cached") for e in evals]
            return (f"stages: {', '.join(f'{k} {v:.1f}' for k, v in stages.items() if v is not None)} s; classifier "
                    f"cached: {cached}; {' '.join(args.eval_args) or 'eval defaults'}")
        if row in COLOUR_ROWS and epochs[row]:
            def speed(name: str) -> str:
                epoch, size = median(epochs[name]), median([rec["data/train_size"] for rec in records[name]])
                return f"epoch {epoch:.2f} s, {size / epoch:,.0f} images/s ({size:,.0f} of {records[name][0]['data/image_shape']})"

            beside = f"; default-1: {speed('default-1')}" if epochs["default-1"] else ""
            return f"{speed(row)}{beside}"
        if row.startswith("sweep-4") and med.get(row):
            per_job = med[row] / 4
            return (f"{3600 * 4 / med[row]:.0f} jobs/hour; {per_job:.2f} s per job = {fmt(ratio(per_job, d1))} × "
                    f"default-1")
        return ""

    lines = ["| row | median wall s | rounds | |", "|---|---|---|---|"]
    print(f"\nwall seconds per command (median of {args.rounds})")
    for row in rows:
        name = row if row != "default-10" else long_name
        values = " ".join(f"{w:.2f}" for w in walls[row])
        print(f"  {name:15s} {fmt(med[row], '7.2f')}   [{values}]   {note(row)}")
        lines.append(f"| {name} | {fmt(med[row])} | {values} | {note(row)} |")

    breakdown: list[tuple[str, float | None]] = []
    if records["default-1"]:
        def part(key: str) -> float | None:
            return median([rec[key] for rec in records["default-1"] if key in rec])

        epoch1 = median(epochs["default-1"])
        vaelab_imports = med.get("import-vaelab")
        fit, data_s, test_s = part("time/fit_s"), part("time/data_s"), part("time/test_s")
        breakdown = [
            ("interpreter + import torch (import-torch)", torch_s),
            ("import pytorch_lightning + vaelab (import-vaelab − import-torch)",
             vaelab_imports - torch_s if vaelab_imports is not None and torch_s is not None else None),
            ("data (time/data_s)", data_s),
            ("the training epoch (time/train_epoch_s)", epoch1),
            ("rest of fit: Lightning set-up, sanity check, validation, diagnostics, panels, checkpoints "
             "(time/fit_s − the epoch)", fit - epoch1 if fit is not None and epoch1 is not None else None),
            ("test of the best checkpoint (time/test_s)", test_s),
        ]
        known = [v for _, v in breakdown]
        rest = d1 - sum(known) if d1 is not None and None not in known else None
        breakdown.append(("the rest: Hydra import and config, config check, building, loggers, metrics.json, exit", rest))
        breakdown.append(("wall of default-1", d1))
        breakdown.append((f"fixed cost = default-1 − per extra epoch ({long_name})", fixed))
        print("\ndefault-1, where the wall time goes (medians over rounds)")
        lines += ["", "| default-1 | s | share of wall |", "|---|---|---|"]
        for what, seconds in breakdown:
            share = fmt(100 * seconds / d1, '.0f', ' %') if seconds is not None and d1 else "–"
            print(f"  {fmt(seconds, '7.2f')} s  {share:>6s}  {what}")
            lines.append(f"| {what} | {fmt(seconds)} | {share} |")

    if importtime:
        top = top_imports(importtime)
        print("\nbiggest imports of `import vaelab.tasks.train` (python -X importtime, itself slower: each package's "
              "first import, cumulative s, with what it imports)")
        print("  " + ", ".join(f"{name} {s:.2f}" for name, s in top))
        lines += ["", "Biggest imports (`python -X importtime -c 'import vaelab.tasks.train'`, cumulative s): "
                  + ", ".join(f"{name} {s:.2f}" for name, s in top)]

    if args.out:
        header = [f"Machine: {describe_machine()}. Data: {data_note}. {args.rounds} round(s).", ""]
        args.out.write_text("\n".join(header + lines) + "\n")
        print(f"\nmarkdown: {args.out}")
    remove_work_dir(work, args.keep)


if __name__ == "__main__":
    main()
